//! The one place where a typed failure becomes a status code and the message a client sees.
//!
//! Every error the gateway produces itself is `{"detail": "..."}` JSON. The detail is written
//! for the client and never carries library, database or upstream text; what went wrong
//! internally goes to the log at the point of failure, not into the response.

use std::borrow::Cow;

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::proxy::body::GatewayBody;
use crate::proxy::path::PathError;

/// A failure the gateway answers itself, before or instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    #[error("{0}")]
    InvalidPath(PathError),
    /// No or a bad token where one is needed, or failed credentials. `invalid_token` says a
    /// token was sent and refused, which `WWW-Authenticate` reports.
    #[error("{detail}")]
    Unauthorized {
        detail: Cow<'static, str>,
        invalid_token: bool,
    },
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    #[error("Not found")]
    NotFound,
    #[error("{0}")]
    NotFoundDetail(&'static str),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("CORS request not allowed")]
    CorsRefused,
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unprocessable(Cow<'static, str>),
    #[error("Request headers too large")]
    HeadersTooLarge,
    /// `Host` names a host the gateway does not serve.
    #[error("Host not served by this gateway")]
    MisdirectedRequest,
    /// The request body stayed silent for `server.body_read_timeout`.
    #[error("Request body timed out")]
    RequestTimeout,
    /// Over a rate limit; the client may retry after this many seconds.
    #[error("Too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// Something the client did not cause; the cause is logged where it happened.
    #[error("Internal server error")]
    Internal,
    #[error("Upstream unreachable")]
    UpstreamUnreachable,
    #[error("Upstream timed out")]
    UpstreamTimeout,
    #[error("{0}")]
    Unavailable(&'static str),
}

impl GatewayError {
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> GatewayError {
        GatewayError::BadRequest(detail.into())
    }

    pub fn unprocessable(detail: impl Into<Cow<'static, str>>) -> GatewayError {
        GatewayError::Unprocessable(detail.into())
    }

    pub fn unauthorized(detail: impl Into<Cow<'static, str>>) -> GatewayError {
        GatewayError::Unauthorized {
            detail: detail.into(),
            invalid_token: false,
        }
    }

    pub fn invalid_token(detail: impl Into<Cow<'static, str>>) -> GatewayError {
        GatewayError::Unauthorized {
            detail: detail.into(),
            invalid_token: true,
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) | GatewayError::CorsRefused => StatusCode::FORBIDDEN,
            GatewayError::NotFound | GatewayError::NotFoundDetail(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Errors found while the request body may still be unread. Answering them on a
    /// kept-alive HTTP/1 connection would let the unread body be parsed as the next
    /// request, so the connection is closed instead.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_)
                | GatewayError::InvalidPath(_)
                | GatewayError::PayloadTooLarge
                | GatewayError::HeadersTooLarge
                | GatewayError::MisdirectedRequest
                | GatewayError::RequestTimeout
                | GatewayError::MethodNotAllowed
        )
    }

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

/// An error and its causes on one line, for the log only: a library's own message is often
/// a category ("db error") and the cause says what happened.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
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
                GatewayError::InvalidPath(PathError::EncodedSlash),
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
    fn errors_before_the_body_is_read_close_the_connection() {
        let response = GatewayError::PayloadTooLarge.into_response();
        assert_eq!(response.headers()[CONNECTION], "close");
        let response = GatewayError::UpstreamTimeout.into_response();
        assert!(response.headers().get(CONNECTION).is_none());
    }
}
