//! The plain-HTTP listener. It serves nothing but a `308` to the same path and query on the
//! HTTPS origin named by `public_url`; the request's own `Host` is never used to build the
//! location, so it cannot be turned into an open redirect.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{queued_connection, Drain};
use crate::app::App;
use crate::proxy::respond::json_error;
use crate::proxy::response_body::GatewayBody;

pub(super) async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    let admit = |stream: TcpStream| {
        let ticket = drain.ticket();
        let app = app.clone();
        tokio::spawn(async move {
            let public_url: Arc<str> = app.server.public_url.as_str().into();
            let service = service_fn(move |request: Request<Incoming>| {
                let mut response = redirect(&public_url, &request);
                app.gateway.security_headers().apply(response.headers_mut());
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if ticket.accepted_while_draining() {
                // One answer, then close: see serve_https_connection.
                builder.keep_alive(false);
                let _ = ticket
                    .hold(builder.serve_connection(TokioIo::new(stream), service))
                    .await;
            } else {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let _ = ticket
                    .watch(connection, |connection| connection.graceful_shutdown())
                    .await;
            }
        });
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _peer)) => admit(stream),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    while let Some((stream, _peer)) = queued_connection(&listener).await {
        admit(stream);
    }
}

/// The `308` answer for one request.
pub fn redirect<B>(public_url: &str, request: &Request<B>) -> Response<GatewayBody> {
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // An asterisk-form or otherwise non-path target redirects to the root.
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let location = format!("{public_url}{path_and_query}");
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut response = Response::new(GatewayBody::empty());
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(LOCATION, location);
            response
        }
        Err(_) => json_error(StatusCode::BAD_REQUEST, "Invalid request target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_to_the_public_origin_keeping_path_and_query() {
        let cases = [
            (
                "http://evil.example/a/b?x=1&y=2",
                "https://gw.example:8443/a/b?x=1&y=2",
            ),
            ("/", "https://gw.example:8443/"),
            (
                "//evil.example/path",
                "https://gw.example:8443//evil.example/path",
            ),
            ("*", "https://gw.example:8443/"),
        ];
        for (target, location) in cases {
            let request = Request::builder().uri(target).body(()).unwrap();
            let response = redirect("https://gw.example:8443", &request);
            assert_eq!(
                response.status(),
                StatusCode::PERMANENT_REDIRECT,
                "{target}"
            );
            assert_eq!(response.headers()[LOCATION], location, "{target}");
        }
    }
}
