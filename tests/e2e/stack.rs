//! A compose project of the tests' own: brought up from the repository's docker-compose.yml
//! with the local image sources (compose.local.yml), torn down with its volumes when dropped,
//! even after a failed assertion. Every container is reached at its own address on the
//! project's network, so no host port is shared with anything else on the machine.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The machine's compose tool: Compose v2's `docker compose`, or v1's `docker-compose`.
fn compose_tool() -> &'static [&'static str] {
    static TOOL: OnceLock<&'static [&'static str]> = OnceLock::new();
    TOOL.get_or_init(|| {
        let v2 = Command::new("docker").args(["compose", "version"]).output();
        if v2.is_ok_and(|output| output.status.success()) {
            &["docker", "compose"]
        } else {
            &["docker-compose"]
        }
    })
}

/// Fails the test, saying what is missing, when there is no Docker engine: the e2e tests
/// never pass by skipping.
fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(output) if output.status.success() => {}
        _ => panic!(
            "the e2e tests need a running Docker engine and a compose tool (`docker compose` \
             or `docker-compose`); without them run the rest alone: \
             cargo test --lib --test integration"
        ),
    }
}

/// Builds the images once per test run (tests/e2e/images.sh: cached by content, so this
/// takes seconds when nothing changed).
pub fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_docker();
        let mut command = Command::new(repo().join("tests/e2e/images.sh"));
        // What cargo tells a test about its package would reach the script's own
        // `cargo build --release` and, through build scripts that watch such variables
        // (ring's does), rebuild the release profile on every run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                command.env_remove(name.as_ref());
            }
        }
        let status = command.status().expect("run tests/e2e/images.sh");
        assert!(status.success(), "tests/e2e/images.sh failed: {status}");
    });
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub struct Stack {
    pub project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// The gateway's config directory, a copy the test may edit (mounted read-only).
    pub config_dir: PathBuf,
    down_on_drop: bool,
    /// One stack at a time: each is a dozen processes on a machine of two cores, and the
    /// tests measure how the stack behaves, not how it shares a CPU.
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Stack {
    /// A stack named after `label` and this process, with a copy of config/ to mount, the
    /// user's compose file, the local image sources and `extra_files` (repository paths).
    pub fn new(label: &str, extra_files: &[&str]) -> Stack {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A test that failed with its stack up poisons the lock; the next one still runs.
        let alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        images();
        let project = format!("pce2e{}{}", label, std::process::id());
        let config_dir = std::env::temp_dir().join(format!("{project}-config"));
        let _ = std::fs::remove_dir_all(&config_dir);
        std::fs::create_dir_all(&config_dir).unwrap();
        for entry in std::fs::read_dir(repo().join("config")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), config_dir.join(entry.file_name())).unwrap();
        }
        // Mounted read-only, read by the container's unprivileged user.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&config_dir)
            .status();
        let mut files = vec![
            repo().join("docker-compose.yml"),
            repo().join("tests/e2e/compose.local.yml"),
        ];
        files.extend(extra_files.iter().map(|file| repo().join(file)));
        let env = vec![
            (
                "GATEWAY_CONFIG_DIR".to_string(),
                config_dir.display().to_string(),
            ),
            // Published on ports the system picks, so stacks never collide with each other
            // or with anything on the host; the tests use the containers' own addresses.
            ("GATEWAY_HTTPS_PORT".to_string(), "0".to_string()),
            ("GATEWAY_HTTP_PORT".to_string(), "0".to_string()),
            ("GATEWAY_OPS_PORT".to_string(), "0".to_string()),
            ("MAILPIT_UI_PORT".to_string(), "0".to_string()),
        ];
        Stack {
            project,
            files,
            env,
            config_dir,
            down_on_drop: std::env::var_os("PORTCULLIS_E2E_KEEP").is_none(),
            _alone: alone,
        }
    }

    /// Sets PORTCULLIS_HS256_SECRET, as several gateways need (they must sign and check with
    /// one key). Without it, as the README's command runs, each start makes up its own.
    pub fn shared_secret(mut self) -> Stack {
        let secret = format!("e2e-secret-{}-0123456789abcdef0123456789", self.project);
        self.env
            .push(("PORTCULLIS_HS256_SECRET".to_string(), secret));
        self
    }

    /// Edits the config copy's gateway.compose.yaml: each `(from, to)` must be found.
    pub fn edit_config(&self, replacements: &[(&str, &str)]) {
        let path = self.config_dir.join("gateway.compose.yaml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (from, to) in replacements {
            assert!(text.contains(from), "gateway.compose.yaml has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        std::fs::write(&path, text).unwrap();
    }

    /// Runs the compose tool on this project; panics with its output when it fails.
    pub fn compose(&self, args: &[&str]) -> String {
        let output = self.try_compose(args);
        assert!(
            output.status.success(),
            "compose {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    }

    pub fn try_compose(&self, args: &[&str]) -> Output {
        let tool = compose_tool();
        let mut command = Command::new(tool[0]);
        command.args(&tool[1..]).args(["-p", &self.project]);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        // Relative paths in the compose file are the repository's, as for a user.
        command.arg("--project-directory").arg(repo());
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().expect("run the compose tool")
    }

    /// `up -d` of `services` (all when empty) with `scale` replicas of the gateway, then
    /// waits until every container with a health check is healthy.
    pub fn up(&self, gateways: usize, services: &[&str]) {
        let scale = format!("gateway={gateways}");
        let mut args = vec!["up", "-d", "--no-build", "--scale", &scale];
        args.extend_from_slice(services);
        self.compose(&args);
        self.wait_healthy(Duration::from_secs(180));
    }

    /// The ids of a service's containers, in replica order.
    pub fn containers(&self, service: &str) -> Vec<String> {
        let mut ids: Vec<(String, String)> = self
            .compose(&["ps", "-q", service])
            .lines()
            .map(|id| {
                let name = stdout(&run("docker", &["inspect", "-f", "{{.Name}}", id]));
                (name, id.to_string())
            })
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub fn container(&self, service: &str) -> String {
        let ids = self.containers(service);
        assert_eq!(ids.len(), 1, "{service}: {ids:?}");
        ids.into_iter().next().unwrap()
    }

    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// A container's address on the project's network.
    pub fn ip(&self, container: &str) -> IpAddr {
        let template = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network()
        );
        let ip = stdout(&run("docker", &["inspect", "-f", &template, container]));
        ip.parse()
            .unwrap_or_else(|_| panic!("{container} has no address on the network: {ip:?}"))
    }

    pub fn addr(&self, container: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(container), port)
    }

    pub fn health(&self, container: &str) -> String {
        stdout(&run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}\
                 {{if eq .State.Status \"exited\"}}:{{.State.ExitCode}}{{end}}{{end}}",
                container,
            ],
        ))
    }

    /// Waits until every container that has a health check reports healthy, and every
    /// one-shot container has exited with 0.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ids = self.compose(&["ps", "-q"]);
            let states: Vec<(String, String)> = ids
                .lines()
                .map(|id| (id.to_string(), self.health(id)))
                .collect();
            if !states.is_empty()
                && states
                    .iter()
                    .all(|(_, state)| ["healthy", "running", "exited:0"].contains(&state.as_str()))
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the stack did not become healthy: {states:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `container` reports `state` (healthy, unhealthy, running, exited).
    pub fn wait_state(&self, container: &str, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.health(container) != state {
            assert!(
                Instant::now() < deadline,
                "{container} never became {state} (is {})",
                self.health(container)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn docker(&self, args: &[&str]) -> String {
        let output = run("docker", args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    }

    pub fn logs(&self) -> String {
        let output = self.try_compose(&["logs", "--no-color", "--tail", "60"]);
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    pub fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(name)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs of {} ---\n{}", self.project, self.logs());
        }
        if self.down_on_drop {
            let _ = self.try_compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
            let _ = std::fs::remove_dir_all(&self.config_dir);
        }
    }
}

pub fn write(path: &Path, text: &str) {
    // Write-and-rename, as editors do: the gateway must see the new file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    let _ = Command::new("chmod").arg("a+r").arg(&temporary).status();
    std::fs::rename(&temporary, path).unwrap();
}
