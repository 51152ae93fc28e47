//! A real upstream application on 127.0.0.1:0 that records what reached it.
//!
//! Routes: `/ws` and `/ws/...` (WebSocket echo), `/no-upgrade` (answers 200 even to an upgrade),
//! `/ws-bad/accept`, `/ws-bad/other-upgrade` and `/ws-bad/no-upgrade` (a 101 with a wrong
//! `Sec-WebSocket-Accept`, with `Upgrade: h2c`, and with no `Upgrade`),
//! `/hold` (answers only when the test releases it), `/never` (never answers),
//! `/download/N` (streams N bytes), `/sink` (reads and counts the body), and everything else
//! reads the whole body, records it, and echoes the request as JSON: method, target, headers,
//! body length (under `/page`, as an HTML page for the browser tests).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    /// The body as received, once the echo route has read all of it (empty until then, and
    /// always for the streaming routes).
    pub body: Bytes,
}

#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// Signalled when a `/hold` request has arrived.
    pub held: Notify,
    /// Releases every waiting `/hold` request.
    pub release: Notify,
    pub connections: std::sync::atomic::AtomicUsize,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn seen_count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn last_seen(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into()).boxed()
}

async fn handle(
    state: Arc<UpstreamState>,
    mut request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    // Recorded before the body is read, so that `/hold` and `/never` are seen too; the index
    // finds this request's entry again when its body has arrived.
    let index = {
        let mut seen = state.seen.lock().unwrap();
        seen.push(Seen {
            method: request.method().to_string(),
            target: target.clone(),
            headers: request.headers().clone(),
            body: Bytes::new(),
        });
        seen.len() - 1
    };
    let path = request.uri().path().to_string();

    if path == "/ws" || path.starts_with("/ws/") {
        let key = request.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let mut socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(full(Bytes::new()))
            .unwrap();
        return Ok(response);
    }
    if let Some(flaw) = path.strip_prefix("/ws-bad/") {
        let key = request
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""));
        let accept = derive_accept_key(key.as_bytes());
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade");
        response = match flaw {
            "accept" => response
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(b"another key")),
            "other-upgrade" => response
                .header("upgrade", "h2c")
                .header("sec-websocket-accept", accept),
            "no-upgrade" => response.header("sec-websocket-accept", accept),
            other => panic!("no such flaw: {other}"),
        };
        return Ok(response.body(full(Bytes::new())).unwrap());
    }
    if path == "/hold" {
        let released = state.release.notified();
        state.held.notify_one();
        released.await;
        return Ok(Response::new(full("released")));
    }
    if path == "/never" {
        std::future::pending::<()>().await;
    }
    if let Some(size) = path.strip_prefix("/download/") {
        let size: u64 = size.parse().unwrap();
        return Ok(Response::new(download(size)));
    }

    // `/sink` takes large uploads and only counts them; the echo keeps what it read.
    let keep = path != "/sink";
    let mut body_len = 0u64;
    let mut received = Vec::new();
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                    if keep {
                        received.extend_from_slice(data);
                    }
                }
            }
            Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
        }
    }
    if path == "/sink" {
        return Ok(Response::new(full(body_len.to_string())));
    }
    let seen = {
        let mut seen = state.seen.lock().unwrap();
        seen[index].body = Bytes::from(received);
        seen[index].clone()
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &seen.headers {
        headers
            .entry(name.to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = serde_json::json!({
        "method": seen.method,
        "target": target,
        "headers": headers,
        "body_len": body_len,
    });
    if path == "/page" || path.starts_with("/page/") {
        return Ok(page(&seen, &echo));
    }
    let response = Response::builder()
        .header("content-type", "application/json")
        // Software banners the gateway must not pass on.
        .header("server", "nginx/1.25.3")
        .header("x-powered-by", "Express 4.18.2")
        // A hop-by-hop header named in Connection must not reach the client.
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "secret")
        .body(full(echo.to_string()))
        .unwrap();
    Ok(response)
}

/// The echo as an HTML page, for the browser tests: the target in the `<h1>`, who the
/// gateway said the caller is in `#user`, a form that posts to the page itself (a
/// same-origin POST), and the whole echo in `#echo`.
fn page(seen: &Seen, echo: &serde_json::Value) -> Response<UpstreamBody> {
    let user = seen
        .headers
        .get("x-auth-email")
        .map_or("anonymous".to_string(), |email| {
            String::from_utf8_lossy(email.as_bytes()).into_owned()
        });
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Upstream page</title>\
         <link rel=\"icon\" href=\"data:,\"></head>\
         <body><h1 id=\"target\">{}</h1><p id=\"user\">{}</p>\
         <form method=\"post\"><input type=\"hidden\" name=\"note\" value=\"same-origin\">\
         <button type=\"submit\">Post to this page</button></form>\
         <pre id=\"echo\">{}</pre></body></html>",
        escape_html(&seen.target),
        escape_html(&user),
        escape_html(&serde_json::to_string_pretty(echo).unwrap()),
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(full(html))
        .unwrap()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn status(status: StatusCode) -> Response<UpstreamBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// `size` bytes in 64 KiB chunks, produced lazily.
fn download(size: u64) -> UpstreamBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = futures_util::stream::unfold(size, move |remaining| {
        let chunk = chunk.clone();
        async move {
            if remaining == 0 {
                return None;
            }
            let len = remaining.min(CHUNK as u64);
            let frame = Frame::data(chunk.slice(..len as usize));
            Some((Ok::<_, Infallible>(frame), remaining - len))
        }
    });
    BodyExt::boxed(StreamBody::new(chunks))
}
