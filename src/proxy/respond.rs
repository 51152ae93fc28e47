//! The gateway's own answers as responses: a [`GatewayError`] with its status, JSON detail and
//! the headers its kind needs (`Retry-After`, `Connection: close`, and the [`Challenge`] that
//! becomes `WWW-Authenticate`).
//!
//! `WWW-Authenticate` names the configured realm, which an error does not know: a refusal
//! carries its [`Challenge`] as a response extension, and the gateway, which answers every
//! request, writes the header from it with [`Challenges`] as the response leaves. An
//! upstream's own responses never carry the extension, so their headers are left alone.

use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use super::response_body::GatewayBody;
use crate::error::GatewayError;

impl GatewayError {
    pub fn into_response(self) -> Response<GatewayBody> {
        let mut response = json_error(self.status(), &self.to_string());
        match self {
            GatewayError::Unauthorized {
                invalid_token: true,
                ..
            } => {
                response.extensions_mut().insert(Challenge::InvalidToken);
            }
            GatewayError::InsufficientScope(_) => {
                response
                    .extensions_mut()
                    .insert(Challenge::InsufficientScope);
            }
            _ => {}
        }
        if let GatewayError::SignIn { location } = &self {
            let location = HeaderValue::from_str(location)
                .unwrap_or_else(|_| HeaderValue::from_static(super::navigation::SIGN_IN_PATH));
            response.headers_mut().insert(LOCATION, location);
            // Whether a page redirects depends on the caller's cookies: never cache it.
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let GatewayError::TooManyRequests { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        if self.closes_connection() {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Builds the gateway's JSON error shape for any status.
pub fn json_error(status: StatusCode, detail: &str) -> Response<GatewayBody> {
    let body = serde_json::to_vec(&serde_json::json!({ "detail": detail }))
        .expect("a JSON object of one string always serialises");
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        response.extensions_mut().insert(Challenge::Bearer);
    }
    response
}

/// What a refusal's `WWW-Authenticate` says (RFC 6750 §3): every 401 asks for a bearer
/// token, with `error="invalid_token"` when the one sent was refused; a 403 that more
/// privileges would have avoided (a role or permission rule) says `insufficient_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Bearer,
    InvalidToken,
    InsufficientScope,
}

/// The `WWW-Authenticate` values for one realm, made once when the gateway is built.
#[derive(Debug, Clone)]
pub struct Challenges {
    bearer: HeaderValue,
    invalid_token: HeaderValue,
    insufficient_scope: HeaderValue,
}

impl Challenges {
    /// `realm` is validated configuration (no `"`, `\` or control characters); one that
    /// still cannot be a header value is left out rather than breaking every refusal.
    pub fn new(realm: &str) -> Challenges {
        let value = |error: Option<&str>| {
            let mut text = format!("Bearer realm=\"{realm}\"");
            if let Some(error) = error {
                text.push_str(&format!(", error=\"{error}\""));
            }
            HeaderValue::try_from(text).unwrap_or_else(|_| match error {
                None => HeaderValue::from_static("Bearer"),
                Some("invalid_token") => HeaderValue::from_static("Bearer error=\"invalid_token\""),
                Some(_) => HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            })
        };
        Challenges {
            bearer: value(None),
            invalid_token: value(Some("invalid_token")),
            insufficient_scope: value(Some("insufficient_scope")),
        }
    }

    pub fn value(&self, challenge: Challenge) -> &HeaderValue {
        match challenge {
            Challenge::Bearer => &self.bearer,
            Challenge::InvalidToken => &self.invalid_token,
            Challenge::InsufficientScope => &self.insufficient_scope,
        }
    }

    /// Writes the header of the challenge `response` carries, if it carries one.
    pub fn apply<B>(&self, response: &mut Response<B>) {
        if let Some(challenge) = response.extensions().get::<Challenge>().copied() {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, self.value(challenge).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::path::PathError;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_error_is_json_with_a_detail() {
        let cases = [
            (
                GatewayError::bad_request("Missing Host header"),
                400,
                "Missing Host header",
            ),
            (
                GatewayError::InvalidPath(PathError::EncodedSlash.message()),
                400,
                "Invalid request path: encoded slash",
            ),
            (GatewayError::NotFound, 404, "Not found"),
            (GatewayError::MethodNotAllowed, 405, "Method not allowed"),
            (GatewayError::PayloadTooLarge, 413, "Request body too large"),
            (
                GatewayError::HeadersTooLarge,
                431,
                "Request headers too large",
            ),
            (
                GatewayError::UpstreamUnreachable,
                502,
                "Upstream unreachable",
            ),
            (GatewayError::UpstreamTimeout, 504, "Upstream timed out"),
        ];
        for (error, status, detail) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["detail"], detail);
        }
    }

    #[test]
    fn refusals_carry_their_challenge_and_the_realm_is_written_once_they_leave() {
        let challenges = Challenges::new("gateway.example");
        let cases: Vec<(GatewayError, Option<&str>)> = vec![
            (
                GatewayError::invalid_token("Invalid or expired token"),
                Some("Bearer realm=\"gateway.example\", error=\"invalid_token\""),
            ),
            (
                GatewayError::unauthorized("Not authenticated"),
                Some("Bearer realm=\"gateway.example\""),
            ),
            (
                GatewayError::InsufficientScope("Missing permission: write:project".into()),
                Some("Bearer realm=\"gateway.example\", error=\"insufficient_scope\""),
            ),
            (GatewayError::Forbidden("Not the owner".into()), None),
            (
                GatewayError::TooManyRequests {
                    retry_after_secs: 1,
                },
                None,
            ),
        ];
        for (error, expected) in cases {
            let status = error.status();
            let mut response = error.into_response();
            assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
            challenges.apply(&mut response);
            let got = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|value| value.to_str().unwrap());
            assert_eq!(got, expected, "{status}");
        }
        // A 401 made by hand is a bearer challenge too.
        let mut response = json_error(StatusCode::UNAUTHORIZED, "Invalid email or password");
        challenges.apply(&mut response);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"gateway.example\""
        );
        // An upstream's response carries no challenge: its own header stays as it was.
        let mut upstream = Response::new(());
        upstream
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        challenges.apply(&mut upstream);
        assert_eq!(upstream.headers()[WWW_AUTHENTICATE], "Basic");
    }

    #[test]
    fn a_sign_in_is_a_302_to_its_location_never_cached() {
        let response = GatewayError::SignIn {
            location: "/auth/login?rd=/app%3Fx%3D1".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/auth/login?rd=/app%3Fx%3D1");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        assert!(response.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn errors_before_the_body_is_read_close_the_connection() {
        let response = GatewayError::PayloadTooLarge.into_response();
        assert_eq!(response.headers()[CONNECTION], "close");
        let response = GatewayError::UpstreamTimeout.into_response();
        assert!(response.headers().get(CONNECTION).is_none());
    }
}
