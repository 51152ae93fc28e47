//! A real browser for the sign-in flows: headless Chromium driven over WebDriver by a
//! `chromedriver` this harness starts on a free loopback port, and a second origin (an
//! HTTPS server of the test's own) for pages that attack the gateway from elsewhere.
//!
//! The browser reaches the gateway at its configured `public_url` (`https://gateway.test:8443`)
//! because Chromium's `--host-resolver-rules` maps that host and port to the gateway's real
//! port 0 address; it trusts the test certificates through `acceptInsecureCerts`. Only one
//! browser runs at a time (two Chromiums on two cores make each other's timeouts), so a
//! test holds its turn from `Browser::start` until the browser is dropped.

// A harness: not every test uses every helper.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::OwnedMutexGuard;
use tokio_rustls::TlsAcceptor;

use super::upstream::Seen;
use super::{temp_dir, Pki, TestGateway};

/// Where the browser finds the gateway: the harness config's `public_url`.
pub const GATEWAY_ORIGIN: &str = "https://gateway.test:8443";
const GATEWAY_AUTHORITY: &str = "gateway.test:8443";

/// How long a page may take to load, a script to run, or an element to appear.
const BROWSER_WAIT: Duration = Duration::from_secs(20);

/// The one browser turn of the test binary.
fn turns() -> Arc<tokio::sync::Mutex<()>> {
    static TURN: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    TURN.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

pub struct Browser {
    pub client: Client,
    session: String,
    driver: Child,
    driver_addr: SocketAddr,
    /// This browser's own directory: the Chromium profile, its temp files, the driver's log.
    dir: PathBuf,
    _turn: OwnedMutexGuard<()>,
}

impl Browser {
    /// A browser that reaches the gateway listening on `gateway` at `GATEWAY_ORIGIN`.
    pub async fn start(gateway: SocketAddr) -> Browser {
        Self::start_with_hosts(gateway, &[]).await
    }

    /// As `start`, with more `host:port` authorities mapped to local addresses (second
    /// origins, see `Origin::authority`).
    pub async fn start_with_hosts(gateway: SocketAddr, hosts: &[(&str, SocketAddr)]) -> Browser {
        let turn = turns().lock_owned().await;
        let dir = temp_dir("chromium");
        let (profile, tmp) = (dir.join("profile"), dir.join("tmp"));
        std::fs::create_dir_all(&tmp).unwrap();
        let driver_port = free_port();
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], driver_port));
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .arg("--allowed-ips=127.0.0.1")
            // Chromium's scoped temp dirs land here and go with the rest, not in /tmp.
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver is installed (Debian's chromium-driver; see .ci/run)");
        let mut browser_driver = DriverGuard(Some(driver));
        wait_until_listening(driver_addr).await;

        let mut rules = vec![format!("MAP {GATEWAY_AUTHORITY} {gateway}")];
        rules.extend(hosts.iter().map(|(from, to)| format!("MAP {from} {to}")));
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            // A container's /dev/shm is 64 MiB; Chromium then keeps its shared memory in /tmp.
            "--disable-dev-shm-usage".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--window-size=1024,768".to_string(),
            format!("--user-data-dir={}", profile.display()),
            format!("--host-resolver-rules={}", rules.join(", ")),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert("acceptInsecureCerts".into(), true.into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver_addr}"))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "a Chromium session through chromedriver ({error}); its log: {}",
                    read_log(&dir)
                )
            });
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("a new session has an id");
        client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(BROWSER_WAIT),
                Some(BROWSER_WAIT),
                Some(Duration::ZERO),
            ))
            .await
            .unwrap();
        Browser {
            client,
            session,
            driver: browser_driver.0.take().unwrap(),
            driver_addr,
            dir,
            _turn: turn,
        }
    }

    /// `path` on the gateway, or any absolute URL as it is.
    pub async fn goto(&self, path_or_url: &str) {
        let url = if path_or_url.starts_with('/') {
            format!("{GATEWAY_ORIGIN}{path_or_url}")
        } else {
            path_or_url.to_string()
        };
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|error| panic!("navigate to {url}: {error}"));
    }

    /// The current page's URL as (origin, path with query, the whole URL).
    pub async fn location(&self) -> (String, String, String) {
        let url = self.client.current_url().await.unwrap();
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        (url.origin().ascii_serialization(), path, url.to_string())
    }

    /// The current page's path and query, after checking it is on the gateway's origin.
    pub async fn gateway_path(&self) -> String {
        let (origin, path, url) = self.location().await;
        assert_eq!(
            origin, GATEWAY_ORIGIN,
            "the browser left the gateway: {url}"
        );
        path
    }

    /// Waits for the current page's path and query to be `expected` (navigations that a form
    /// submission or a redirect starts finish after the command that started them).
    pub async fn wait_for_path(&self, expected: &str) {
        let mut last = String::new();
        let found = tokio::time::timeout(BROWSER_WAIT, async {
            loop {
                let (origin, path, url) = self.location().await;
                last = url;
                if origin == GATEWAY_ORIGIN && path == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "the browser never reached {GATEWAY_ORIGIN}{expected}; it is at {last}"
        );
        self.wait_until_loaded().await;
    }

    /// Waits until the current document has finished loading.
    pub async fn wait_until_loaded(&self) {
        let loaded = tokio::time::timeout(BROWSER_WAIT, async {
            while self.script("return document.readyState").await != "complete" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(loaded.is_ok(), "the page loads");
    }

    /// The visible text of the first element matching `css`, waiting for it to appear.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css} on {}: {error}", self.describe_page()))
    }

    pub async fn find_all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Types `value` into the field whose `id` is `id`, replacing what was there.
    pub async fn fill(&self, id: &str, value: &str) {
        let field = self.find(&format!("#{id}")).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Clicks the page's one submit button (the page contract gives each form exactly one)
    /// and waits until the page it leads to has loaded.
    pub async fn submit(&self) {
        let buttons = self.find_all("button[type=submit]").await;
        assert_eq!(
            buttons.len(),
            1,
            "one submit button on {}",
            self.describe_page()
        );
        let old_page = self.find("html").await;
        buttons[0].click().await.unwrap();
        // The old document's root goes stale once the next one replaces it.
        let replaced = tokio::time::timeout(BROWSER_WAIT, async {
            while old_page.tag_name().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(replaced.is_ok(), "the form submission loaded a new page");
        self.wait_until_loaded().await;
    }

    /// Runs `script` in the page and returns what it returned.
    pub async fn script(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// The HTTP status of the response the current page was loaded from.
    pub async fn status(&self) -> u16 {
        let status = self
            .script("return performance.getEntriesByType('navigation')[0].responseStatus")
            .await;
        status.as_u64().expect("a navigation status") as u16
    }

    /// The browser's cookies for the current page, name to value.
    pub async fn cookies(&self) -> Vec<(String, String)> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .map(|cookie| (cookie.name().to_string(), cookie.value().to_string()))
            .collect()
    }

    /// Forgets every cookie of the current page's origin, as a new browser would.
    pub async fn forget_cookies(&self) {
        self.client.delete_all_cookies().await.unwrap();
    }

    /// The cookie `name` with its attributes, as the browser stored it.
    pub async fn cookie_details(&self, name: &str) -> Option<fantoccini::cookies::Cookie<'static>> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .find(|cookie| cookie.name() == name)
    }

    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.cookies()
            .await
            .into_iter()
            .find(|(cookie, _)| cookie == name)
            .map(|(_, value)| value)
    }

    /// Saves a PNG of the current page to `target/screenshots/<name>.png` and returns its
    /// path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session and the driver now rather than at drop.
    pub async fn close(self) {
        // Drop does the work; an explicit end reads better in a test.
        drop(self);
    }

    fn describe_page(&self) -> String {
        format!("the page (session {})", self.session)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Synchronous, so that a panicking test (whose runtime may be gone) still ends its
        // Chromium: the session's DELETE makes chromedriver quit the browser, then the
        // driver itself is killed.
        delete_session(self.driver_addr, &self.session);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills a driver that never became a `Browser` (a failed start).
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut driver) = self.0.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

/// What the upstream saw, but for the `/favicon.ico` a browser asks for on its own after
/// loading a page that names no icon (the gateway's pages).
pub fn page_requests(gateway: &TestGateway) -> Vec<Seen> {
    gateway
        .upstream
        .seen()
        .into_iter()
        .filter(|seen| seen.target != "/favicon.ico")
        .collect()
}

/// `target/screenshots`, beside the build's other output.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default()
}

/// A port nothing listens on right now, for chromedriver (which takes a port, not a
/// listener).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until_listening(addr: SocketAddr) {
    let listening = tokio::time::timeout(BROWSER_WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(listening.is_ok(), "chromedriver listens on {addr}");
}

/// `DELETE /session/{id}` over a plain blocking socket, bounded by a timeout.
fn delete_session(driver: SocketAddr, session: &str) {
    let Ok(mut stream) = StdStream::connect_timeout(&driver, Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: {driver}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    // chromedriver answers once the browser has quit, and keeps the connection open
    // whatever `Connection` says: read the one response, not to the end of the stream.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response_complete(&answer) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Whether `answer` holds a whole HTTP/1.1 response with a `Content-Length` body.
fn response_complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|window| window == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}

/// A second origin: an HTTPS server of the test's own on 127.0.0.1:0 (with a certificate
/// from the test CA) that serves fixed HTML pages and records the paths asked for. The
/// browser reaches it at `authority` (give the pair from `host_rule` to
/// `Browser::start_with_hosts`).
pub struct Origin {
    pub addr: SocketAddr,
    /// `host:port` as the browser sees it, e.g. `evil.example:8444`.
    pub authority: String,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Origin {
    pub async fn start(authority: &str, pages: Vec<(&str, String)>) -> Origin {
        let (cert, key) = Pki::shared().issue(authority);
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pages: Arc<Vec<(String, String)>> = Arc::new(
            pages
                .into_iter()
                .map(|(path, html)| (path.to_string(), html))
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, pages, seen) = (acceptor.clone(), pages.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (pages, seen) = (pages.clone(), seen.clone());
                        async move { Ok::<_, Infallible>(serve_page(&pages, &seen, request)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            authority: authority.to_string(),
            seen,
        }
    }

    /// `https://{authority}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority)
    }

    /// The mapping that makes the browser reach this server at its authority.
    pub fn host_rule(&self) -> (&str, SocketAddr) {
        (&self.authority, self.addr)
    }

    /// The paths (with query) asked for so far, oldest first.
    pub fn seen_paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }
}

fn serve_page(
    pages: &[(String, String)],
    seen: &Mutex<Vec<(String, HeaderMap)>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    seen.lock()
        .unwrap()
        .push((target, request.headers().clone()));
    match pages.iter().find(|(path, _)| path == request.uri().path()) {
        Some((_, html)) => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(html.clone())))
            .unwrap(),
        None => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found")))
            .unwrap(),
    }
}
