//! The gateway's own answers as responses: a [`GatewayError`] with its status, JSON detail and
//! the headers its kind needs (`WWW-Authenticate`, `Retry-After`, `Connection: close`).

use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use super::response_body::GatewayBody;
use crate::error::GatewayError;

impl GatewayError {
    pub fn into_response(self) -> Response<GatewayBody> {
        let mut response = json_error(self.status(), &self.to_string());
        if let GatewayError::Unauthorized {
            invalid_token: true,
            ..
        } = self
        {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
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
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
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
    fn a_refused_token_is_reported_in_www_authenticate() {
        let response = GatewayError::invalid_token("Invalid or expired token").into_response();
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let response = GatewayError::unauthorized("Not authenticated").into_response();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
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
