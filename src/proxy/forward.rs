//! Forwarding to an upstream over pooled HTTP/1.1 connections: rewriting the target,
//! streaming both bodies, mapping upstream failures to 502/504, and tunnelling WebSocket
//! upgrades for as long as the caller's token admits them.
//!
//! Requests from HTTP/2 clients are sent upstream as HTTP/1.1: upstreams are ordinary
//! applications and the gateway must not require them to speak HTTP/2.

use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::enforce::TokenWatch;
use super::headers::remove_hop_by_hop;
use super::pool::{Pool, SendError};
use super::websocket::Upgrade;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::proxy::body::{client_body_failure, ClientBody};
use crate::proxy::response_body::{ForwardedBody, GatewayBody};
use crate::telemetry::metrics::{Metrics, UpstreamErrorKind};
use crate::workers::current_worker;

/// What a forwarded request body may be: its size, and its longest silence.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub read_timeout: Duration,
}

/// How long a tunnel closed by the gateway waits for each side to take the close.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One upstream application and the connection pool to it.
pub struct Upstream {
    name: String,
    /// `Host` for the upstream when the client's is not preserved.
    host: HeaderValue,
    path_prefix: String,
    timeout: Duration,
    preserve_host: bool,
    pool: Pool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, workers: usize) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let authority = config
            .url
            .authority()
            .cloned()
            .expect("upstream URLs are validated to have a host");
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        let path_prefix = config.url.path().trim_end_matches('/').to_string();
        Upstream {
            name: config.name.clone(),
            pool: Pool::new(
                connector,
                authority,
                config.pool_idle_timeout,
                config.pool_max_idle,
                workers,
            ),
            host,
            path_prefix,
            timeout: config.timeout,
            preserve_host: config.preserve_host,
        }
    }

    /// Sends `request` (headers already rewritten for the upstream, hop-by-hop ones removed)
    /// to `target`, the normalised path and query; `upgrade` is the WebSocket upgrade the
    /// client asked for and the gateway admitted, if any.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        target: &str,
        host: HeaderValue,
        upgrade: Option<Upgrade>,
        body_limits: BodyLimits,
        metrics: &Metrics,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let upgrade = upgrade.map(|upgrade| (hyper::upgrade::on(&mut request), upgrade));

        let (mut parts, body) = request.into_parts();
        if let Some((_, upgrade)) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts
                .headers
                .insert(UPGRADE, upgrade.handshake.protocol.clone());
        }
        if self.preserve_host && !host.is_empty() {
            parts.headers.insert(HOST, host);
        } else {
            parts.headers.insert(HOST, self.host.clone());
        }
        parts.uri = self.upstream_target(target)?;
        parts.version = Version::HTTP_11;
        let body = ClientBody::new(body, body_limits.max_bytes, body_limits.read_timeout);
        let request = Request::from_parts(parts, body);

        let exchange = self.pool.send(current_worker(), request);
        let (response, lease) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(exchanged)) => exchanged,
            // The client's body failed, not the upstream: that is the client's 400, 408 or
            // 413, and the upstream connection (left mid-request) is already discarded.
            Ok(Err(SendError::Request(error))) if client_body_failure(&error).is_some() => {
                return Err(client_body_failure(&error).unwrap_or(GatewayError::Internal));
            }
            Ok(Err(error)) => {
                let (kind, chain) = match &error {
                    SendError::Connect(error) => (
                        UpstreamErrorKind::Connect,
                        crate::error::chain(error.as_ref()),
                    ),
                    SendError::Request(error) => {
                        (UpstreamErrorKind::Other, crate::error::chain(error))
                    }
                };
                metrics.upstream_error(kind);
                tracing::warn!(upstream = %self.name, error = %chain, "upstream request failed");
                return Err(GatewayError::UpstreamUnreachable);
            }
            Err(_elapsed) => {
                metrics.upstream_error(UpstreamErrorKind::Timeout);
                tracing::warn!(upstream = %self.name, timeout_ms = self.timeout.as_millis() as u64, "upstream timed out");
                return Err(GatewayError::UpstreamTimeout);
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the tunnel: it never goes back to the pool. When
            // no tunnel opens, dropping the response with it closes the connection.
            drop(lease);
            let Some((client_upgrade, upgrade)) = upgrade else {
                metrics.upstream_error(UpstreamErrorKind::Other);
                tracing::warn!(upstream = %self.name, "upstream switched protocols unasked");
                return Err(GatewayError::UpstreamUnreachable);
            };
            if let Err(why) = upgrade.handshake.agreed(response.headers()) {
                metrics.upstream_error(UpstreamErrorKind::Other);
                tracing::warn!(upstream = %self.name, why, "upstream's 101 does not complete the WebSocket handshake");
                return Err(GatewayError::UpstreamUnreachable);
            }
            return Ok(tunnel(response, client_upgrade, upgrade.watch));
        }

        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            GatewayBody::Forwarded(ForwardedBody::new(body, lease)),
        ))
    }

    /// The origin-form target the upstream is sent: its path prefix, then the client's
    /// normalised path and query.
    fn upstream_target(&self, target: &str) -> Result<Uri, GatewayError> {
        let path_and_query = if self.path_prefix.is_empty() {
            PathAndQuery::try_from(target)
        } else {
            PathAndQuery::try_from(format!("{}{}", self.path_prefix, target))
        }
        .map_err(|_| GatewayError::bad_request("Invalid request target"))?;
        Ok(Uri::from(path_and_query))
    }
}

/// Answers the client's upgrade with the upstream's 101 and, once both sides have switched,
/// copies bytes both ways until either closes or `watch` finds the caller's token no longer
/// admits the tunnel. The tunnel only opens after the upstream has said 101, so a refused
/// upgrade is an ordinary response.
fn tunnel(
    upstream_response: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    watch: Option<TokenWatch>,
) -> Response<GatewayBody> {
    let (mut parts, body) = upstream_response.into_parts();
    let upgrade_header = parts.headers.get(UPGRADE).cloned();
    let upstream_upgrade = hyper::upgrade::on(Response::from_parts(parts.clone(), body));
    remove_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(upgrade) = upgrade_header {
        parts.headers.insert(UPGRADE, upgrade);
    }
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let lapsed = async move {
            match watch {
                Some(watch) => watch.lapsed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(error) = copied {
                    tracing::debug!(%error, "tunnel closed with an error");
                }
            }
            lapse = lapsed => {
                tracing::info!(reason = lapse.as_str(), "closing a WebSocket tunnel: its token no longer admits it");
                // No close frame: the copy was cut off wherever it was, perhaps inside a
                // frame, so the client is told by the connection closing. Each side gets a
                // moment to take its close; a peer that does not read is simply dropped.
                let closing = async {
                    let _ = client.shutdown().await;
                    let _ = upstream.shutdown().await;
                };
                let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, closing).await;
            }
        }
    });
    Response::from_parts(parts, GatewayBody::empty())
}
