//! WebSocket upgrades (contract 6.12): which upgrades are passed on, the handshake checks on
//! both sides of the gateway, and which pages may open a tunnel on the browser's cookie.
//!
//! An upgrade is judged like any request first (`enforce`); what is decided here is pure and
//! runs after. A browser sends the access cookie with a WebSocket handshake whichever page
//! opened it, and no CORS preflight guards a handshake, so a tunnel authenticated by the cookie
//! is opened only for a page of the gateway's own origin or of one the CORS settings name. The
//! tunnel itself is `forward`'s, and how long it may stay open is `enforce::TokenWatch`'s.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, Request, Version};

use super::enforce::{Enforcer, TokenWatch, Verdict};
use super::refusal::Refusal;
use crate::access::{single, CookieOrigins, TokenSource};
use crate::error::GatewayError;
use crate::telemetry::metrics::{Metrics, RefusalReason};

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A client's WebSocket handshake, checked: what to ask the upstream for, and what its `101`
/// must answer to be believed.
#[derive(Debug)]
pub struct Handshake {
    /// The client's `Upgrade` value, passed on as sent.
    pub protocol: HeaderValue,
    /// The `Sec-WebSocket-Accept` the upstream's `101` must carry.
    accept: String,
}

/// An admitted upgrade: its handshake, and the token the tunnel lives by (none for an
/// anonymous caller, whose tunnel nothing can revoke).
pub struct Upgrade {
    pub handshake: Handshake,
    pub watch: Option<TokenWatch>,
}

/// The refusal of a cookie-authenticated upgrade from a page of another origin.
pub const CROSS_ORIGIN_REFUSED: &str = "Cross-origin WebSocket not allowed";

/// The upgrade checks, built once from the configuration.
pub struct WebSockets {
    /// Shared with the CSRF check of other cookie-authenticated requests.
    cookie_origins: Arc<CookieOrigins>,
}

impl WebSockets {
    pub fn new(cookie_origins: Arc<CookieOrigins>) -> WebSockets {
        WebSockets { cookie_origins }
    }

    /// Checks a request the enforcer has allowed: `Ok(None)` when it is not a WebSocket
    /// upgrade, `400` for a malformed handshake, `403` for an upgrade the access cookie
    /// authenticated from a page of another origin.
    pub fn admit<B>(
        &self,
        request: &Request<B>,
        verdict: &Verdict,
        enforcer: &Enforcer,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Upgrade>, Refusal> {
        let handshake =
            handshake(request).map_err(|error| Refusal::new(RefusalReason::Malformed, error))?;
        let Some(handshake) = handshake else {
            return Ok(None);
        };
        // Only a cookie that authenticated the caller matters: an invalid or revoked one
        // made the request anonymous, and the tunnel then carries nobody's authority.
        if verdict.token_source == Some(TokenSource::Cookie)
            && !self.cookie_origins.allows(request.headers())
        {
            return Err(Refusal::new(
                RefusalReason::CrossSite,
                GatewayError::Forbidden(CROSS_ORIGIN_REFUSED.into()),
            ));
        }
        let watch = verdict
            .identity
            .as_ref()
            .map(|verified| enforcer.watch(verified.clone(), metrics.clone()));
        Ok(Some(Upgrade { handshake, watch }))
    }
}

/// The protocol a client asks to upgrade to, when it is a WebSocket over HTTP/1.1. Other
/// upgrades are not passed on: `h2c` in particular would let a client talk to the upstream
/// past the gateway's checks.
pub fn websocket_upgrade<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = request.headers().get(UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let asks_upgrade = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks_upgrade.then(|| upgrade.clone())
}

/// The WebSocket handshake a request asks for: `Ok(None)` when it is not an upgrade, `400`
/// when it is one without a valid `Sec-WebSocket-Key` (base64 of 16 bytes) or without
/// `Sec-WebSocket-Version: 13`.
pub fn handshake<B>(request: &Request<B>) -> Result<Option<Handshake>, GatewayError> {
    let Some(protocol) = websocket_upgrade(request) else {
        return Ok(None);
    };
    let headers = request.headers();
    let key = single(headers, &SEC_WEBSOCKET_KEY)
        .filter(|key| {
            BASE64
                .decode(key.as_bytes())
                .is_ok_and(|bytes| bytes.len() == 16)
        })
        .ok_or_else(|| GatewayError::bad_request("Invalid Sec-WebSocket-Key"))?;
    if single(headers, &SEC_WEBSOCKET_VERSION).is_none_or(|version| version != "13") {
        return Err(GatewayError::bad_request(
            "Unsupported Sec-WebSocket-Version",
        ));
    }
    Ok(Some(Handshake {
        protocol,
        accept: accept_key(key.as_bytes()),
    }))
}

impl Handshake {
    /// Whether the upstream's `101` completes this handshake; `Err` says why not, for the
    /// log. A `101` that does not is not a WebSocket server answering this client (a
    /// misrouted request, or an upstream that switched to something else).
    pub fn agreed(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let upgrade = single(headers, &UPGRADE).ok_or("no single Upgrade header")?;
        if !upgrade
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket")
        {
            return Err("Upgrade is not websocket");
        }
        let accept =
            single(headers, &SEC_WEBSOCKET_ACCEPT).ok_or("no single Sec-WebSocket-Accept")?;
        if accept.as_bytes() != self.accept.as_bytes() {
            return Err("wrong Sec-WebSocket-Accept");
        }
        Ok(())
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the SHA-1 of the key
/// and the protocol's GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(ACCEPT_GUID);
    BASE64.encode(context.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn upgrade_request(key: Option<&str>, version: Option<&str>) -> Request<()> {
        let mut request = Request::builder()
            .uri("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket");
        if let Some(key) = key {
            request = request.header("sec-websocket-key", key);
        }
        if let Some(version) = version {
            request = request.header("sec-websocket-version", version);
        }
        request.body(()).expect("a valid request")
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_handshake_needs_a_16_byte_key_and_version_13() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some(key), Some("13"), true),
            (None, Some("13"), false),
            (Some(""), Some("13"), false),
            (Some("not base64!"), Some("13"), false),
            // Base64, but of 15 and 17 bytes.
            (Some("dGhlIHNhbXBsZSBub25j"), Some("13"), false),
            (Some("dGhlIHNhbXBsZSBub25jZXg="), Some("13"), false),
            (Some(key), None, false),
            (Some(key), Some("8"), false),
            (Some(key), Some("13, 8"), false),
        ];
        for (key, version, valid) in cases {
            let checked = handshake(&upgrade_request(*key, *version));
            assert_eq!(
                matches!(checked, Ok(Some(_))),
                *valid,
                "{key:?} {version:?}: {checked:?}"
            );
            if !valid {
                assert!(matches!(checked, Err(GatewayError::BadRequest(_))));
            }
        }
        let plain = Request::builder().uri("/ws").body(()).expect("valid");
        assert!(matches!(handshake(&plain), Ok(None)));
    }

    #[test]
    fn the_upstream_must_answer_the_clients_key() {
        let checked = handshake(&upgrade_request(
            Some("dGhlIHNhbXBsZSBub25jZQ=="),
            Some("13"),
        ))
        .expect("valid")
        .expect("an upgrade");
        let right = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[("upgrade", "websocket"), ("sec-websocket-accept", right)],
                true,
            ),
            (
                &[("upgrade", "WebSocket"), ("sec-websocket-accept", right)],
                true,
            ),
            (&[("sec-websocket-accept", right)], false),
            (
                &[("upgrade", "h2c"), ("sec-websocket-accept", right)],
                false,
            ),
            (&[("upgrade", "websocket")], false),
            (
                &[
                    ("upgrade", "websocket"),
                    ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo"),
                ],
                false,
            ),
            (
                &[
                    ("upgrade", "websocket"),
                    ("sec-websocket-accept", "S3PPLMBITXAQ9KYGZZHZRBK+XOO="),
                ],
                false,
            ),
            (
                &[
                    ("upgrade", "websocket"),
                    ("sec-websocket-accept", right),
                    ("sec-websocket-accept", right),
                ],
                false,
            ),
        ];
        for (sent, agreed) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in *sent {
                headers.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            assert_eq!(checked.agreed(&headers).is_ok(), *agreed, "{sent:?}");
        }
    }
}
