//! The `portcullis` binary as operators run it: a bad config, signals (SIGTERM drains,
//! SIGHUP reloads the certificate), and memory while a 1 GiB upload streams through.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::harness::{base_config_yaml, temp_dir, Client, Pki, Protocol, Upstream, REDIS_URL};

const BINARY: &str = env!("CARGO_BIN_EXE_portcullis");

struct GatewayProcess {
    child: Child,
    https: SocketAddr,
    ops: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `portcullis serve` on `yaml` (JSON logs) and waits for its listening line.
    fn spawn(yaml: &str) -> GatewayProcess {
        Self::spawn_logging(yaml, "info")
    }

    /// `yaml` must end in its `telemetry:` section, which this completes.
    fn spawn_logging(yaml: &str, level: &str) -> GatewayProcess {
        let dir = temp_dir("process");
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            format!("{yaml}\n  log_format: json\n  log_level: {level}\n"),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut https = None;
        let mut ops = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "portcullis listening" {
                https = Some(event["https"].as_str().unwrap().parse().unwrap());
                ops = event["ops"].as_str().and_then(|ops| ops.parse().ok());
                break;
            }
        }
        let https =
            https.unwrap_or_else(|| panic!("the gateway did not start:\n{}", log.lock().unwrap()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let ops = ops.expect("the listening line names the ops address");
        GatewayProcess {
            child,
            https,
            ops,
            log,
        }
    }

    /// The ops listener's `/metrics`, over plain HTTP/1.1.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.ops).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: ops\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Waits until this process checks tokens against its pushed revocation copy.
    async fn revocation_copy_trusted(&self) {
        for _ in 0..1000 {
            if self
                .metrics()
                .await
                .contains("\nportcullis_revocation_copy_trusted 1\n")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "the revocation copy was never trusted:\n{}",
            self.log.lock().unwrap()
        );
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// A line from /proc/PID/status, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the gateway did not exit:\n{}", self.log.lock().unwrap());
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_process_is_refused_on_the_next_request_to_another() {
    // Accounts are made through an in-process gateway; the two processes share its database
    // and its Redis prefix, and enforce a policy that needs a signed-in caller.
    let setup = crate::harness::TestGateway::start().await;
    let (_, tokens) = setup.account_with_role("processes", "user").await;
    let policy = temp_dir("process-policy").join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nroles: [user]\nrules:\n  - name: members\n    paths: [\"/**\"]\n    allow: authenticated\n",
    )
    .unwrap();
    let upstream = Upstream::start().await;
    let run = crate::harness::run_resources();
    let yaml = base_config_yaml(&upstream.url())
        .replace(
            &format!("key_prefix: \"{}\"", run.redis_prefix),
            &format!("key_prefix: \"{}\"", setup.redis_prefix),
        )
        .replace(
            &run.open_policy.display().to_string(),
            &policy.display().to_string(),
        );
    assert!(yaml.contains(&setup.redis_prefix));
    let first = GatewayProcess::spawn(&yaml);
    let second = GatewayProcess::spawn(&yaml);
    first.revocation_copy_trusted().await;
    second.revocation_copy_trusted().await;

    let call = |gateway: &GatewayProcess, method: &str, path: &str| {
        let (https, method, path, token) = (
            gateway.https,
            method.to_owned(),
            path.to_owned(),
            tokens.access.clone(),
        );
        async move {
            let mut client = Client::connect(https, Protocol::Http1).await;
            let request = client
                .request(&method, &path)
                .header("authorization", format!("Bearer {token}"))
                .body(crate::harness::empty())
                .unwrap();
            client.send_read(request).await
        }
    };
    assert_eq!(call(&second, "GET", "/members").await.status, 200);
    assert_eq!(call(&first, "POST", "/auth/logout").await.status, 204);
    let refused = call(&second, "GET", "/members").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"gateway.test\", error=\"invalid_token\"")
    );
}

/// `serve` with `config` as its file: it must exit non-zero with a one-line reason, returned.
fn refused_start(label: &str, config: &str) -> String {
    let path = temp_dir(label).join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_bad_config_exits_non_zero_with_a_one_line_reason() {
    let stderr = refused_start(
        "bad-config",
        "server:\n  https_listen: 127.0.0.1:0\n  htps_listen: 1\n",
    );
    assert!(stderr.contains("htps_listen"), "{stderr}");
    assert!(stderr.contains(":3:"), "names the line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let missing = Command::new(BINARY)
        .args(["serve", "--config", "/nonexistent/gateway.yaml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/gateway.yaml"));
}

#[test]
fn signed_assertions_with_only_an_hs256_secret_refuse_to_start() {
    let stderr = refused_start(
        "assertion-config",
        "server:\n  https_listen: 127.0.0.1:0\ntokens:\n  hs256_secret: test-secret-that-is-at-least-32-bytes-long\nidentity:\n  assertion: true\n",
    );
    assert!(
        stderr.contains("identity.assertion: needs an asymmetric signing key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_user_create_bootstrap_an_admin() {
    let database = crate::harness::isolated_database("cli").await;
    let upstream = Upstream::start().await;
    let dir = temp_dir("cli");
    let config = dir.join("gateway.yaml");
    let yaml = base_config_yaml(&upstream.url());
    std::fs::write(&config, &yaml).unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(BINARY)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("PORTCULLIS_DATABASE__URL", &database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let migrated = run(&["migrate"], None);
    assert!(migrated.status.success(), "{migrated:?}");
    assert_eq!(
        String::from_utf8_lossy(&migrated.stdout).trim(),
        "migrations: up to date"
    );

    let email = crate::harness::identity::unique_email("root");
    let created = run(
        &[
            "user",
            "create",
            "--email",
            &email,
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("Bootstrap-Admin-1\n"),
    );
    assert!(created.status.success(), "{created:?}");
    let weak = run(
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("weak\n"),
    );
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));
    let duplicate = run(
        &[
            "user",
            "create",
            "--email",
            &email,
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("Bootstrap-Admin-1\n"),
    );
    assert!(!duplicate.status.success());
    let unknown_role = run(
        &[
            "user",
            "create",
            "--email",
            "y@example.com",
            "--role",
            "emperor",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&unknown_role.stderr).contains("unknown role"));

    // The bootstrapped admin can log in (verified, admin) through a gateway on that database.
    let mut gateway_config =
        crate::harness::base_config(&upstream.url(), crate::harness::shared_smtp().addr.port());
    gateway_config.database.url = portcullis::config::Secret::new(database.clone());
    let gateway = crate::harness::TestGateway::start_config(gateway_config, upstream).await;
    let login = gateway.login(&email, "Bootstrap-Admin-1").await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.json()["user"]["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_carry_tokens_cookies_or_passwords() {
    let upstream = Upstream::start().await;
    let yaml =
        base_config_yaml(&upstream.url()).replace("  access_log: false", "  access_log: true");
    // Debug level: the gateway's own events and its libraries' (which could print SQL
    // parameters or SMTP conversations) are all let through.
    let gateway = GatewayProcess::spawn_logging(&yaml, "debug");
    let mut client = Client::connect(gateway.https, Protocol::Http1).await;
    let request = client
        .request("POST", "/auth/login?access_token=query-secret-123")
        .header("authorization", "Bearer header-secret-456")
        .header("cookie", "session=cookie-secret-789")
        .header("content-type", "application/json")
        .body(crate::harness::full(
            r#"{"email":"nobody@example.com","password":"Body-Secret-000"}"#,
        ))
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 401);
    let request = client
        .request("GET", "/app?token=query-secret-123")
        .header("authorization", "Bearer header-secret-456")
        .header("cookie", "session=cookie-secret-789")
        .body(crate::harness::empty())
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 200);
    // The access log line of the last request marks that the log has caught up.
    let mut caught_up = false;
    for _ in 0..200 {
        if gateway
            .log
            .lock()
            .unwrap()
            .matches("request finished")
            .count()
            >= 2
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = gateway.log.lock().unwrap().clone();
    assert!(caught_up, "{log}");
    for secret in [
        "query-secret-123",
        "header-secret-456",
        "cookie-secret-789",
        "Body-Secret-000",
    ] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

#[test]
fn policy_check_and_explain() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml");
    let check = Command::new(BINARY)
        .args(["policy", "check", shipped])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let dir = temp_dir("policy-check");
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "version: 1\nroles: [user]\nrules:\n  - name: x\n    paths: [\"/a/**/b\"]\n    allow: { role: emperor }\n").unwrap();
    let failed = Command::new(BINARY)
        .arg("policy")
        .arg("check")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&failed.stdout).to_string()
        + &String::from_utf8_lossy(&failed.stderr);
    let prefix = format!("{}:", broken.display());
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect();
    assert!(lines.len() >= 2, "one line per error: {stdout}");
    for line in lines {
        let rest = &line[prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
    }

    let explain = |args: &[&str]| {
        let output = Command::new(BINARY)
            .args(["policy", "explain", shipped])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let user_admin = explain(&[
        "--method",
        "GET",
        "--path",
        "/admin/x",
        "--role",
        "user",
        "--user-id",
        "u1",
    ]);
    assert!(
        user_admin.contains("admin area") && user_admin.contains("403"),
        "{user_admin}"
    );
    let anonymous = explain(&["--method", "GET", "--path", "/admin/x", "--anonymous"]);
    assert!(anonymous.contains("401"), "{anonymous}");
    let owner = explain(&[
        "--method",
        "GET",
        "--path",
        "/users/u1",
        "--role",
        "user",
        "--user-id",
        "u1",
    ]);
    assert!(
        owner.contains("own profile") && owner.contains("allow"),
        "{owner}"
    );
}

#[test]
fn policy_explain_shows_on_unauthenticated_when_the_rule_sets_it() {
    let dir = temp_dir("policy-explain");
    let file = dir.join("browser.yaml");
    std::fs::write(&file, crate::browser_enforcement::BROWSER_POLICY).unwrap();
    let explain = |path: &str| {
        let output = Command::new(BINARY)
            .args(["policy", "explain"])
            .arg(&file)
            .args(["--method", "GET", "--path", path, "--anonymous"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let api = explain("/api/items");
    assert!(
        api.contains("\"api\"") && api.contains("401") && api.contains("on_unauthenticated: deny"),
        "{api}"
    );
    let app = explain("/home");
    assert!(
        app.contains("401") && !app.contains("on_unauthenticated"),
        "{app}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("sighup-policy");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, crate::harness::OPEN_POLICY).unwrap();
    let yaml = base_config_yaml(&upstream.url())
        .replace(
            &crate::harness::run_resources()
                .open_policy
                .display()
                .to_string(),
            &policy.display().to_string(),
        )
        .replace("policy:\n", "policy:\n  watch: false\n");
    let gateway = GatewayProcess::spawn(&yaml);
    let mut client = Client::connect(gateway.https, Protocol::Http1).await;
    assert_eq!(client.get("/admin").await.status, 200);
    std::fs::write(&policy, "version: 1\nroles: [user]\nrules:\n  - name: nothing\n    paths: [\"/**\"]\n    allow: deny\n").unwrap();
    // Not watching: the edit waits for the signal.
    assert_eq!(client.get("/admin").await.status, 200);
    gateway.signal("HUP");
    let mut reloaded = false;
    for _ in 0..200 {
        if client.get("/admin").await.status == 401 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reloaded, "{}", gateway.log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let upstream = Upstream::start().await;
    let mut gateway = GatewayProcess::spawn(&base_config_yaml(&upstream.url()));
    let mut client = Client::connect(gateway.https, Protocol::Http1).await;
    assert_eq!(client.get("/").await.status, 200);
    let held = upstream.state.held.notified();
    let in_flight = tokio::spawn(async move { client.get("/hold").await });
    held.await;
    gateway.signal("TERM");
    // The in-flight request still completes once the upstream answers.
    upstream.state.release.notify_waiters();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200);
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Runs `portcullis health` against a config whose ops listener is `ops`.
fn health(ops: SocketAddr) -> std::process::Output {
    let dir = temp_dir("health");
    let config = dir.join("gateway.yaml");
    let yaml = base_config_yaml("http://127.0.0.1:1")
        .replace("ops_listen: 127.0.0.1:0", &format!("ops_listen: {ops}"));
    std::fs::write(&config, yaml).unwrap();
    Command::new(BINARY)
        .args(["health", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_while_the_gateway_answers_ready() {
    let upstream = Upstream::start().await;
    let ready = GatewayProcess::spawn(&base_config_yaml(&upstream.url()));
    let ops = ready.ops;
    let output = tokio::task::spawn_blocking(move || health(ops))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{output:?}\n{}",
        ready.log.lock().unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ready\n");

    // Redis unreachable: /readyz is 503 and the probe says why.
    let refusing = refusing_address();
    let redis_down = GatewayProcess::spawn(&base_config_yaml(&upstream.url()).replace(
        REDIS_URL,
        &format!("redis://{}/", refusing.local_addr().unwrap()),
    ));
    let ops = redis_down.ops;
    let output = tokio::task::spawn_blocking(move || health(ops))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not ready: Not ready: redis"), "{stderr}");

    // Nothing listening at all.
    let nothing = refusing.local_addr().unwrap();
    let output = tokio::task::spawn_blocking(move || health(nothing))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the ops listener"), "{stderr}");
}

/// A socket whose connections are refused: bound but never listening, so no other test can
/// take its port while it is held.
fn refusing_address() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket
}

fn write_certificate(dir: &Path, common_name: &str) -> Vec<u8> {
    let (cert, key) = Pki::shared().issue(common_name);
    std::fs::write(dir.join("server.crt"), &cert).unwrap();
    std::fs::write(dir.join("server.key"), &key).unwrap();
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .to_vec()
}

async fn served_certificate(addr: SocketAddr) -> Vec<u8> {
    let stream = crate::harness::tls_connect(addr, &[b"http/1.1"]).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("reload");
    let first = write_certificate(&dir, "first");
    let pki = Pki::shared();
    let yaml = base_config_yaml(&upstream.url())
        .replace(
            &pki.cert_path.display().to_string(),
            &dir.join("server.crt").display().to_string(),
        )
        .replace(
            &pki.key_path.display().to_string(),
            &dir.join("server.key").display().to_string(),
        );
    let gateway = GatewayProcess::spawn(&yaml);
    assert_eq!(served_certificate(gateway.https).await, first);
    let mut established = Client::connect(gateway.https, Protocol::Http1).await;
    assert_eq!(established.get("/").await.status, 200);

    let second = write_certificate(&dir, "second");
    gateway.signal("HUP");
    let mut reloaded = false;
    for _ in 0..200 {
        if served_certificate(gateway.https).await == second {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        reloaded,
        "new handshakes get the new certificate:\n{}",
        gateway.log.lock().unwrap()
    );
    assert_eq!(
        established.get("/").await.status,
        200,
        "the open connection survived the reload"
    );

    // A broken certificate file is refused and the working one stays.
    std::fs::write(dir.join("server.crt"), "not a certificate").unwrap();
    gateway.signal("HUP");
    let mut logged = false;
    for _ in 0..200 {
        if gateway.log.lock().unwrap().contains("reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(logged, "{}", gateway.log.lock().unwrap());
    assert_eq!(served_certificate(gateway.https).await, second);
}

/// `remaining` bytes of zeros in 64 KiB frames, generated as they are sent.
struct Zeros {
    remaining: u64,
    chunk: Bytes,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len as usize)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_upload_streams_in_constant_memory() {
    const GIB: u64 = 1 << 30;
    let upstream = Upstream::start().await;
    // The upstream answers once it has read the whole upload, so its timeout must allow for
    // a gigabyte through a debug build on a busy machine: what is measured here is memory.
    let yaml = base_config_yaml(&upstream.url())
        .replace(
            "  drain_timeout: 5s\n",
            "  drain_timeout: 5s\n  max_body_bytes: 2GiB\n",
        )
        .replace("    timeout: 5s\n", "    timeout: 300s\n");
    assert!(yaml.contains("timeout: 300s"), "{yaml}");
    let gateway = GatewayProcess::spawn(&yaml);
    let mut client = Client::connect(gateway.https, Protocol::Http1).await;
    let upload = |client: &Client, size: u64| {
        client
            .request("POST", "/sink")
            .body(
                Zeros {
                    remaining: size,
                    chunk: Bytes::from(vec![0u8; 64 * 1024]),
                }
                .boxed(),
            )
            .unwrap()
    };
    // Warm up the connection pools and buffers first, so the baseline is steady state.
    let warm = upload(&client, 16 << 20);
    assert_eq!(
        &client.send_read(warm).await.body[..],
        (16u64 << 20).to_string().as_bytes()
    );
    let baseline = gateway.status_kib("VmRSS:");

    let request = upload(&client, GIB);
    let response = client.send_read(request).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        &response.body[..],
        GIB.to_string().as_bytes(),
        "the upstream received every byte"
    );
    let peak = gateway.status_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!(
        "1 GiB upload: RSS baseline {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB"
    );
    assert!(
        growth_mib < 8.0,
        "memory grew by {growth_mib:.1} MiB during a 1 GiB upload"
    );
}

#[test]
fn policy_test_runs_the_cases_and_check_runs_them_too() {
    let run = |command: &str, file: &Path| {
        let output = Command::new(BINARY)
            .args(["policy", command])
            .arg(file)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    let shipped = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml"));
    let (code, stdout) = run("test", shipped);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("tests passed"), "{stdout}");

    let dir = temp_dir("policy-test");
    let file = dir.join("policy.yaml");
    std::fs::write(
        &file,
        "version: 1\nroles: [user, admin]\nrules:\n  - name: admin\n    paths: [\"/admin/**\"]\n    allow: { role: admin }\n  - name: rest\n    paths: [\"/**\"]\n    allow: public\ntests:\n  - { method: GET, path: /admin/x, role: admin, expect: allow, rule: admin }\n  - { method: GET, path: /admin/x, role: user, expect: allow }\n  - { method: GET, path: /x, expect: 401, rule: admin }\n",
    )
    .unwrap();
    let name = file.display().to_string();
    for command in ["test", "check"] {
        let (code, stdout) = run(command, &file);
        assert_eq!(code, Some(1), "{command}: {stdout}");
        let failures: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            failures,
            [
                format!("{name}:12:5: test failed: GET /admin/x as user with role user: expected allow, got 403 from rule `admin` (Requires admin role)"),
                format!("{name}:13:5: test failed: GET /x as anonymous: expected 401 from rule `admin`, got allow from rule `rest`"),
            ],
            "{command}"
        );
    }
}

#[test]
fn policy_explain_takes_the_host_and_prints_the_policy_hash() {
    let dir = temp_dir("policy-explain-host");
    let file = dir.join("policy.yaml");
    let text = "version: 1\nroles: [user]\nrules:\n  - name: intranet\n    paths: [\"/**\"]\n    hosts: [intranet.example.com]\n    allow: public\n  - name: shadow\n    paths: [\"/**\"]\n    allow: deny\n    mode: report\n";
    std::fs::write(&file, text).unwrap();
    let explain = |host: Option<&str>| {
        let mut command = Command::new(BINARY);
        command.args(["policy", "explain"]).arg(&file).args([
            "--method",
            "GET",
            "--path",
            "/page",
            "--anonymous",
        ]);
        if let Some(host) = host {
            command.args(["--host", host]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let on_host = explain(Some("Intranet.example.com:8443"));
    assert!(
        on_host.contains("matches: rule #1 \"intranet\"") && on_host.contains("decision: allow"),
        "{on_host}"
    );
    assert!(
        on_host.contains("shadow: rule #2 \"shadow\" (mode: report) would decide: 401"),
        "{on_host}"
    );
    let elsewhere = explain(None);
    assert!(
        elsewhere.contains("no rule matches") && elsewhere.contains("decision: 401"),
        "{elsewhere}"
    );
    // The hash is the one the gateway shows in /metrics (`portcullis_policy_info{hash}`).
    let hash = portcullis::live_policy::content_hash(text);
    assert!(on_host.contains(&format!("policy: {hash}\n")), "{on_host}");
}

/// Every decision is explainable (contract 5): the access log line of a request judged by
/// the policy names the rule, the outcome, the normalised path and the policy's hash, and
/// for a refusal the reason; a shadow rule's would-be decision is logged beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_explains_each_decision() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("explained-log");
    let policy = dir.join("policy.yaml");
    let text = "version: 1\nroles: [user]\nrules:\n  - name: closed\n    paths: [\"/closed/**\"]\n    allow: deny\n  - name: stricter app\n    paths: [\"/app/**\"]\n    allow: authenticated\n    mode: report\n  - name: open\n    paths: [\"/**\"]\n    allow: public\n";
    std::fs::write(&policy, text).unwrap();
    let yaml = base_config_yaml(&upstream.url())
        .replace(
            &crate::harness::run_resources()
                .open_policy
                .display()
                .to_string(),
            &policy.display().to_string(),
        )
        .replace("  access_log: false", "  access_log: true");
    let gateway = GatewayProcess::spawn(&yaml);
    let mut client = Client::connect(gateway.https, Protocol::Http1).await;
    assert_eq!(
        client.get("/app//./page?token=query-secret-1").await.status,
        200
    );
    assert_eq!(
        client.get("/closed/x?token=query-secret-2").await.status,
        401
    );

    let finished = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == "request finished")
            .collect()
    };
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = finished(&gateway.log.lock().unwrap());
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = gateway.log.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{log}");
    let hash = portcullis::live_policy::content_hash(text);

    let forwarded = &lines[0];
    assert_eq!(forwarded["status"], 200, "{forwarded}");
    assert_eq!(forwarded["rule"], "open", "{forwarded}");
    assert_eq!(forwarded["outcome"], "allow", "{forwarded}");
    assert_eq!(forwarded["normalized_path"], "/app/page", "{forwarded}");
    assert_eq!(forwarded["policy_hash"], hash.as_str(), "{forwarded}");
    assert!(forwarded.get("reason").is_none(), "{forwarded}");
    assert!(forwarded.get("refusal").is_none(), "{forwarded}");

    let refused = &lines[1];
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["rule"], "closed", "{refused}");
    assert_eq!(refused["outcome"], "401", "{refused}");
    assert_eq!(refused["normalized_path"], "/closed/x", "{refused}");
    assert_eq!(refused["policy_hash"], hash.as_str(), "{refused}");
    assert_eq!(refused["reason"], "Not authenticated", "{refused}");
    assert_eq!(refused["refusal"], "no_token", "{refused}");

    let shadow = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "shadow rule decision")
        .unwrap_or_else(|| panic!("no shadow rule decision logged:\n{log}"));
    assert_eq!(shadow["rule"], "stricter app", "{shadow}");
    assert_eq!(shadow["outcome"], "401", "{shadow}");
    assert_eq!(shadow["actual_outcome"], "allow", "{shadow}");
    assert_eq!(shadow["actual_rule"], "open", "{shadow}");
    assert!(
        !log.contains("query-secret"),
        "a query string reached the log:\n{log}"
    );
}
