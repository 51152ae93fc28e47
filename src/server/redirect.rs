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
use tokio::net::TcpListener;

use super::Drain;
use crate::app::App;
use crate::proxy::respond::json_error;
use crate::proxy::response_body::GatewayBody;

pub(super) async fn serve(listener: TcpListener, app: Arc<App>, drain: Arc<Drain>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let drain = drain.clone();
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
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = drain
                .watch(connection, |connection| connection.graceful_shutdown())
                .await;
        });
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
