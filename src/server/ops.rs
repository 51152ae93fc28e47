//! The ops listener: liveness, readiness and Prometheus metrics on a separate, plain-HTTP,
//! loopback-by-default socket, so that probes and scrapes never pass through the gateway's
//! own checks or limits.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::App;
use crate::mail;
use crate::proxy::respond::json_error;
use crate::proxy::response_body::GatewayBody;
use crate::telemetry::exposition::single;
use crate::telemetry::process;

pub(super) async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, &request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(app: &App, request: &Request<Incoming>) -> Response<GatewayBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    }
    match request.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        "/readyz" => readiness(app).await,
        "/metrics" => {
            let mut response = Response::new(GatewayBody::full(app.metrics.render(&format!(
                "{}{}{}{}{}{}",
                app.policy().render_metrics(),
                app.gate.render_metrics(),
                app.auth().render_metrics(),
                outbox_metrics(app).await,
                // After the outbox's query, so that a scrape's own query is in it.
                app.store.render_timings(),
                process::render(),
            ))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => json_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// How long a scrape waits for the outbox backlog before leaving it out.
const OUTBOX_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// The mail outbox backlog, read from Postgres at scrape time rather than kept by the mail
/// worker: instances share one outbox, a worker asleep on a long backoff would report a
/// stale number, and one indexed count per scrape is cheap. With Postgres down or slow the
/// two lines are left out, so the rest of the scrape still answers (and `/readyz` says why).
async fn outbox_metrics(app: &App) -> String {
    let read = async {
        let store = app.auth.store();
        let client = store.client().await.ok()?;
        mail::backlog(store, &client).await.ok()
    };
    let Ok(Some(backlog)) = tokio::time::timeout(OUTBOX_QUERY_TIMEOUT, read).await else {
        return String::new();
    };
    let mut out = String::with_capacity(512);
    single(
        &mut out,
        "portcullis_mail_outbox_pending",
        "gauge",
        "Mail in the outbox still to be sent (unsendable mail left out).",
        backlog.pending,
    );
    single(
        &mut out,
        "portcullis_mail_outbox_oldest_age_seconds",
        "gauge",
        "How long the oldest mail still to be sent has waited; 0 when none is.",
        backlog.oldest_age_seconds,
    );
    out
}

/// Ready while the process is serving, not draining, and Postgres and Redis answer.
async fn readiness(app: &App) -> Response<GatewayBody> {
    let draining = app.draining.load(Ordering::SeqCst);
    let (postgres, redis) = app.auth.dependencies_up().await;
    let mut down = Vec::new();
    if draining {
        down.push("shutting down");
    }
    if !postgres {
        down.push("postgres");
    }
    if !redis {
        down.push("redis");
    }
    if down.is_empty() {
        json(StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "detail": format!("Not ready: {}", down.join(", ")), "down": down }),
        )
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Asks the ops listener at `listen` whether this gateway is ready, for `portcullis health`
/// (a container's health check). An unspecified listen address (`0.0.0.0`, `[::]`) is
/// reached over loopback, since a probe runs on the gateway's own host. `Ok` only for a 200
/// from `/readyz`; otherwise what is wrong, in one line.
pub async fn probe_ready(listen: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            std::net::SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let exchange = async {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(|error| format!("cannot reach the ops listener at {target}: {error}"))?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|error| format!("cannot ask {target}: {error}"))?;
        let mut answer = Vec::new();
        // The readiness answer is a few hundred bytes; more than this is not our listener.
        stream
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(|error| format!("no answer from {target}: {error}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer from {target} within {timeout:?}"))??;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        return Ok(());
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let detail = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.get("detail")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{target} answered status {status:?}"));
    Err(detail)
}
