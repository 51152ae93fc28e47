//! The shared test harness: a gateway started in-process on port 0 with its own certificates
//! in front of a real upstream, and clients that speak real TLS (HTTP/1.1 and HTTP/2) or raw
//! bytes over TLS for malformed requests.

pub mod browser;
pub mod cluster;
pub mod frameworks;
pub mod identity;
pub mod outage;
pub mod pki;
pub mod proxies;
pub mod smtp;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::app::App;
use portcullis::config::Config;
use portcullis::server::{self, Listeners};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use pki::Pki;
pub use smtp::SmtpServer;
pub use upstream::Upstream;

use std::sync::{Arc, OnceLock};

use portcullis::clock::Clock;

/// A directory of its own for each caller, under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{}-{}",
        std::process::id(),
        label,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python that has tests/python-requirements.txt installed: tests/run builds it in
/// `target/test-python` and names it in `PORTCULLIS_TEST_PYTHON`. A test that needs it fails
/// with this message rather than pass without the program it was meant to run.
pub fn test_python() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-python/bin/python")
        });
    assert!(
        path.exists(),
        "no test Python at {} (tests/run installs tests/python-requirements.txt there)",
        path.display()
    );
    path
}

/// This test run's own database (created and migrated once per test binary) and Redis key
/// prefix, so that runs never see each other's data.
pub struct RunResources {
    pub database_url: String,
    pub redis_prefix: String,
    /// A policy that lets every request through, for tests about anything but the policy.
    pub open_policy: PathBuf,
}

/// Every path public: the gateway forwards everything, as tests of forwarding need.
pub const OPEN_POLICY: &str = "version: 1
roles: [user, manager, admin]
rules:
  - name: everything
    paths: [\"/**\"]
    allow: public
";

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

pub fn run_resources() -> &'static RunResources {
    static RESOURCES: OnceLock<RunResources> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("portcullis_test_{started}_{}", std::process::id());
        let database_url = format!("{POSTGRES}/{name}");
        let url = database_url.clone();
        // Tests each run their own runtime; this one-time setup gets a thread and runtime
        // of its own so it does not depend on which test gets here first.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls)
                        .await
                        .expect("PostgreSQL answers on 127.0.0.1:5432 (see .ci/run)");
                tokio::spawn(connection);
                drop_stale_databases(&client, started).await;
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                let store =
                    portcullis::store::Store::connect(&url, 2, Duration::from_secs(5)).unwrap();
                store.migrate().await.unwrap();
            });
        })
        .join()
        .unwrap();
        let open_policy = temp_dir("policy").join("open.yaml");
        std::fs::write(&open_policy, OPEN_POLICY).unwrap();
        RunResources {
            database_url,
            redis_prefix: format!("portcullis-test:{started}-{}:", std::process::id()),
            open_policy,
        }
    })
}

/// The run's SMTP server, on a thread and runtime of its own so that it outlives the test
/// that happened to start it.
pub fn shared_smtp() -> &'static SmtpServer {
    static SMTP: OnceLock<SmtpServer> = OnceLock::new();
    SMTP.get_or_init(|| {
        let (started, server) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                started.send(SmtpServer::start().await).unwrap();
                std::future::pending::<()>().await;
            });
        });
        server.recv().unwrap()
    })
}

/// A database of its own, created and migrated, for a test that must not share the run's
/// outbox (one that takes the SMTP server away).
pub async fn isolated_database(label: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let base = run_resources()
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let name = format!("{base}_{label}_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let (client, connection) =
        tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{POSTGRES}/{name}");
    portcullis::store::Store::connect(&url, 2, Duration::from_secs(5))
        .unwrap()
        .migrate()
        .await
        .unwrap();
    url
}

/// Databases of runs that started over an hour ago are leftovers; nothing runs that long.
async fn drop_stale_databases(client: &tokio_postgres::Client, now: u64) {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'portcullis_test_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let started: Option<u64> = name.split('_').nth(2).and_then(|part| part.parse().ok());
        if started.is_some_and(|started| started + 3600 < now) {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// The YAML every test gateway starts from: loopback listeners on port 0, the test
/// certificates, one upstream, this run's database and Redis prefix, fast mail retries,
/// cheap password hashing, quiet logs.
pub fn base_config_yaml(upstream_url: &str) -> String {
    config_yaml(upstream_url, 1)
}

pub fn config_yaml(upstream_url: &str, smtp_port: u16) -> String {
    let pki = Pki::shared();
    let run = run_resources();
    format!(
        r#"
server:
  https_listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  ops_listen: 127.0.0.1:0
  public_url: https://gateway.test:8443
  hosts: [gateway.test, localhost, 127.0.0.1]
  tls:
    cert_path: {cert}
    key_path: {key}
    handshake_timeout: 2s
  header_read_timeout: 2s
  drain_timeout: 5s
upstreams:
  - name: app
    url: {upstream_url}
    connect_timeout: 1s
    timeout: 5s
database:
  url: {database}
  connect_timeout: 2s
redis:
  url: {redis}
  key_prefix: "{prefix}"
  timeout: 1s
smtp:
  host: 127.0.0.1
  port: {smtp_port}
  timeout: 2s
  retry_initial: 50ms
  retry_max: 200ms
  poll_interval: 100ms
tokens:
  hs256_secret: test-secret-that-is-at-least-32-bytes-long
# Tests that are not about rate limits must never meet one.
rate_limits:
  login: {{ requests: 1000000, per: 1m }}
  register: {{ requests: 1000000, per: 1m }}
  password_reset: {{ requests: 1000000, per: 1m }}
  default: {{ requests: 1000000, per: 1m }}
  per_recipient: {{ requests: 1000000, per: 1m }}
policy:
  path: {policy}
password:
  argon2:
    memory_kib: 1024
    iterations: 1
    parallelism: 1
telemetry:
  access_log: false
"#,
        cert = pki.cert_path.display(),
        key = pki.key_path.display(),
        database = run.database_url,
        redis = REDIS_URL,
        prefix = run.redis_prefix,
        policy = run.open_policy.display(),
    )
}

pub fn base_config(upstream_url: &str, smtp_port: u16) -> Config {
    Config::from_yaml_str(&config_yaml(upstream_url, smtp_port), "test", Vec::new()).unwrap()
}

pub struct TestGateway {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub ops: SocketAddr,
    pub upstream: Upstream,
    pub smtp: &'static SmtpServer,
    pub clock: Arc<Clock>,
    /// This gateway's Redis key prefix; a second instance meant to share its rate limits and
    /// revocations is started with the same one.
    pub redis_prefix: String,
    auth: Arc<portcullis::auth::AuthService>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    /// A gateway enforcing `policy` (written to a file of its own, which the test may edit
    /// to exercise live reloads).
    pub async fn with_policy(
        policy: &str,
        configure: impl FnOnce(&mut Config),
    ) -> (TestGateway, PathBuf) {
        let path = temp_dir("policy").join("policy.yaml");
        std::fs::write(&path, policy).unwrap();
        let policy_path = path.clone();
        let gateway = Self::start_with(move |config| {
            config.policy.path = policy_path;
            configure(config);
        })
        .await;
        (gateway, path)
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestGateway {
        static GATEWAYS: AtomicUsize = AtomicUsize::new(0);
        let upstream = Upstream::start().await;
        let mut config = base_config(&upstream.url(), shared_smtp().addr.port());
        // Every client here is 127.0.0.1: gateways of concurrent tests must not share rate
        // limit buckets, so each gets a prefix of its own unless a test says otherwise.
        config.redis.key_prefix = format!(
            "{}gw{}:",
            run_resources().redis_prefix,
            GATEWAYS.fetch_add(1, Ordering::SeqCst)
        );
        configure(&mut config);
        Self::start_config(config, upstream).await
    }

    /// Every gateway of a run shares one database and so one mail outbox, and any
    /// gateway's worker may send any message: they all send to this run's one SMTP server.
    pub async fn start_config(config: Config, upstream: Upstream) -> TestGateway {
        let smtp = shared_smtp();
        let clock = Arc::new(Clock::system());
        let redis_prefix = config.redis.key_prefix.clone();
        let app = App::build_with_clock(&config, clock.clone()).unwrap();
        let auth = app.auth().clone();
        let listeners = Listeners::bind(&config).await.unwrap();
        let (https, http, ops) = (
            listeners.https_addr(),
            listeners.http_addr(),
            listeners.ops_addr(),
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(app, listeners, async {
            let _ = stopped.await;
        }));
        TestGateway {
            https,
            http,
            ops,
            upstream,
            smtp,
            clock,
            redis_prefix,
            auth,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Waits (for the feed's subscription, not for time to pass) until this instance checks
    /// tokens against its pushed copy of the revocation list rather than Redis.
    pub async fn revocation_copy_trusted(&self) {
        self.until_revocation_copy(true).await;
    }

    /// Waits until this instance has noticed its revocation feed is cut off.
    pub async fn revocation_copy_untrusted(&self) {
        self.until_revocation_copy(false).await;
    }

    async fn until_revocation_copy(&self, trusted: bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.auth.revocation_copy_trusted() != trusted {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the revocation copy never became trusted: {trusted}"));
    }

    /// Waits until the work answered requests left running (reset and verification mails
    /// are queued after the 202) has finished.
    pub async fn after_answer_settled(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.auth.after_answer_settled())
            .await
            .expect("work after the answer finishes");
    }

    /// Starts the graceful shutdown; `stopped` waits for it to finish.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub async fn stopped(&mut self) {
        let task = self.task.take().expect("not yet stopped");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the gateway stops within its drain timeout")
            .unwrap()
            .unwrap();
    }

    pub async fn h1(&self) -> Client {
        Client::connect(self.https, Protocol::Http1).await
    }

    pub async fn h2(&self) -> Client {
        Client::connect(self.https, Protocol::Http2).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.h1().await.get(path).await
    }

    /// A TLS connection (HTTP/1.1 ALPN) to write raw bytes on.
    pub async fn raw_tls(&self) -> TlsStream<TcpStream> {
        tls_connect(self.https, &[b"http/1.1"]).await
    }

    /// A counter or gauge from the ops listener's `/metrics`, by its exact name.
    pub async fn metric(&self, name: &str) -> u64 {
        let body = self.ops_get("/metrics").await.body;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    }

    /// Plain-HTTP GET on the ops listener.
    pub async fn ops_get(&self, path: &str) -> TestResponse {
        plain_get(self.ops, path).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

pub async fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_over(TcpStream::connect(addr).await.unwrap(), alpn).await
}

/// TLS with the gateway over a TCP connection already made.
pub async fn tls_over(tcp: TcpStream, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Pki::shared().client_config(alpn));
    tcp.set_nodelay(true).unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

pub type TestBody = BoxBody<Bytes, std::io::Error>;

pub fn empty() -> TestBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<TestBody>),
    Http2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// One client connection to the gateway.
pub struct Client {
    sender: Sender,
    addr: SocketAddr,
    pub protocol: Protocol,
}

impl Client {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Client {
        let alpn: &[&[u8]] = match protocol {
            Protocol::Http1 => &[b"http/1.1"],
            Protocol::Http2 => &[b"h2"],
        };
        let tls = tls_connect(addr, alpn).await;
        let io = TokioIo::new(tls);
        let sender = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection.with_upgrades());
                Sender::Http1(sender)
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                Sender::Http2(sender)
            }
        };
        Client {
            sender,
            addr,
            protocol,
        }
    }

    /// A request builder with the right target form and `Host` for this protocol.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        match self.protocol {
            Protocol::Http1 => Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("localhost:{}", self.addr.port())),
            Protocol::Http2 => Request::builder()
                .method(method)
                .uri(format!("https://localhost:{}{}", self.addr.port(), path))
                .version(http::Version::HTTP_2),
        }
    }

    pub async fn send(&mut self, request: Request<TestBody>) -> Response<Incoming> {
        self.try_send(request).await.unwrap()
    }

    pub async fn try_send(
        &mut self,
        request: Request<TestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> TestResponse {
        let request = self.request("GET", path).body(empty()).unwrap();
        TestResponse::read(self.send(request).await).await
    }

    pub async fn send_read(&mut self, request: Request<TestBody>) -> TestResponse {
        TestResponse::read(self.send(request).await).await
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub async fn read(response: Response<Incoming>) -> TestResponse {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    /// Asserts the gateway's JSON error shape and returns the detail.
    pub fn detail(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        self.json()["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail in {self:?}"))
            .to_string()
    }
}

/// Writes `raw` on a fresh TLS connection and reads until the gateway closes it or the
/// timeout passes; returns what it said.
pub async fn raw_exchange(stream: &mut TlsStream<TcpStream>, raw: &[u8], wait: Duration) -> String {
    stream.write_all(raw).await.unwrap();
    stream.flush().await.unwrap();
    read_until_closed(stream, wait).await
}

/// Everything the gateway sends until it closes the connection or `wait` runs out.
pub async fn read_until_closed(stream: &mut TlsStream<TcpStream>, wait: Duration) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// A plain HTTP/1.1 GET (no TLS), for the ops and redirect listeners.
pub async fn plain_get(addr: SocketAddr, path: &str) -> TestResponse {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(path)
        .header("host", "gateway.test")
        .body(empty())
        .unwrap();
    TestResponse::read(sender.send_request(request).await.unwrap()).await
}
