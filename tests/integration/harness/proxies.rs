//! Real proxies in front of the test upstream, asking a test gateway through forward-auth:
//! nginx (`auth_request`) and Caddy (`forward_auth`), Debian's packages, each run as this
//! test's own process on a loopback port with its configuration in a directory of its own.
//!
//! Their configurations are the templates in `tests/integration/proxies/`, with the `@...@`
//! names filled in; `docs/forward-auth.md` shows the same text. nginx cannot listen on port
//! 0, so a free port is found by binding one and letting it go, and the start is retried on
//! another should something take it in between.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{temp_dir, Pki, TestGateway};

/// The templates, as the repository holds them.
pub fn template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/proxies")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The part of a template between its snippet markers (the lines themselves excluded),
/// which the documentation shows.
pub fn snippet(template: &str) -> String {
    let begin = template
        .find("# BEGIN forward-auth snippet\n")
        .expect("the template marks its snippet");
    let end = template
        .find("# END forward-auth snippet")
        .expect("the template marks its snippet's end");
    let body = &template[begin..end];
    // From the line after the marker to the line before the end marker.
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.rfind('\n').map_or(0, |at| at + 1)];
    dedent(body)
}

/// Removes the indentation every non-empty line shares.
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|line| line.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Caddy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Caddy => "caddy",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx.conf",
            Kind::Caddy => "Caddyfile",
        }
    }
}

/// A proxy process; killed when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Proxy {
    /// Starts `kind` on a free loopback port in front of `gateway`'s upstream, asking
    /// `gateway` (which must list 127.0.0.1 in `server.trusted_proxies`).
    pub fn start(kind: Kind, gateway: &TestGateway) -> Proxy {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(kind, gateway) {
                Ok(proxy) => return proxy,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("{} did not start:\n{}", kind.name(), failures.join("\n"));
    }

    fn try_start(kind: Kind, gateway: &TestGateway) -> Result<Proxy, String> {
        let dir = temp_dir(kind.name());
        let port = free_port();
        let config = fill(
            &template(kind.template()),
            &[
                ("@DIR@", dir.display().to_string()),
                ("@LISTEN@", format!("127.0.0.1:{port}")),
                ("@LISTEN_HOST@", "127.0.0.1".to_string()),
                ("@LISTEN_PORT@", port.to_string()),
                ("@GATEWAY@", gateway.https.to_string()),
                ("@UPSTREAM@", gateway.upstream.addr.to_string()),
                ("@CA_FILE@", Pki::shared().ca_pem_path.display().to_string()),
            ],
        );
        let (config_path, mut command) = match kind {
            Kind::Nginx => {
                let path = dir.join("nginx.conf");
                let mut command = Command::new(program("nginx"));
                command
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&path);
                (path, command)
            }
            Kind::Caddy => {
                let path = dir.join("Caddyfile");
                let mut command = Command::new(program("caddy"));
                command
                    .arg("run")
                    .arg("--adapter")
                    .arg("caddyfile")
                    .arg("--config")
                    .arg(&path)
                    // Caddy keeps its state under these; the test's directory, not $HOME.
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", &dir)
                    .env("XDG_CONFIG_HOME", &dir);
                (path, command)
            }
        };
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("output.log")).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("{} could not run: {error}", kind.name()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up when it accepts connections; a collision on the port shows as an early exit.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "{} exited ({status}) on port {port}: {}",
                    kind.name(),
                    logs(&dir)
                ));
            }
            if let Ok(stream) = std::net::TcpStream::connect(addr) {
                // Something listens; make sure it is this proxy and not a process that took
                // the port in between (which this proxy would then have failed to bind).
                if answers_as(stream, kind) {
                    return Ok(Proxy { addr, child, dir });
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("port {port} answered as someone else"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} never listened: {}", kind.name(), logs(&dir)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the proxy logged so far, for a failing assertion's message.
    pub fn logs(&self) -> String {
        logs(&self.dir)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logs(dir: &Path) -> String {
    ["output.log", "error.log"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The program's path: on PATH, or in /usr/sbin (nginx), which a non-root PATH may lack.
fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.exists());
    on_path
        .unwrap_or_else(|| panic!("{name} is not installed (tests/run installs Debian's package)"))
}

/// Whether what listens on `stream` is `kind`: its `Server` header says so, on the `404`
/// both configurations answer for `/auth/forward`.
fn answers_as(mut stream: std::net::TcpStream, kind: Kind) -> bool {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = "GET /auth/forward HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    answer.starts_with("http/1.1 404") && answer.contains(&format!("server: {}", kind.name()))
}

/// A loopback port nothing listens on at this moment.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn fill(template: &str, names: &[(&str, String)]) -> String {
    let mut filled = template.to_string();
    for (name, value) in names {
        filled = filled.replace(name, value);
    }
    assert!(
        !filled.contains("@GATEWAY@") && !filled.contains("@UPSTREAM@"),
        "every name filled in"
    );
    filled
}
