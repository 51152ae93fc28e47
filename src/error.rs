//! The one place where a typed failure becomes a status code and the message a client sees
//! (`proxy::respond` renders it as the response).
//!
//! Every error the gateway produces itself is `{"detail": "..."}` JSON. The detail is written
//! for the client and never carries library, database or upstream text; what went wrong
//! internally goes to the log at the point of failure, not into the response.

use std::borrow::Cow;

use http::StatusCode;

use crate::config::FailMode;
use crate::limits::gate::RateOutcome;

/// A failure the gateway answers itself, before or instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// A path the normaliser refused; the text names the rule, never the path.
    #[error("{0}")]
    InvalidPath(&'static str),
    /// No or a bad token where one is needed, or failed credentials. `invalid_token` says a
    /// token was sent and refused, which `WWW-Authenticate` reports.
    #[error("{detail}")]
    Unauthorized {
        detail: Cow<'static, str>,
        invalid_token: bool,
    },
    /// An anonymous browser navigation to a route that needs a token (contract 7): `302` to
    /// the sign-in page, `location` (`/auth/login?rd=...`), instead of the 401 others get.
    #[error("Sign in required")]
    SignIn { location: String },
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// A 403 that more privileges would have avoided: a role or permission rule refused the
    /// caller. `WWW-Authenticate` reports it as `insufficient_scope` (RFC 6750 §3.1).
    #[error("{0}")]
    InsufficientScope(Cow<'static, str>),
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
            GatewayError::SignIn { .. } => StatusCode::FOUND,
            GatewayError::Forbidden(_)
            | GatewayError::InsufficientScope(_)
            | GatewayError::CorsRefused => StatusCode::FORBIDDEN,
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
    pub fn closes_connection(&self) -> bool {
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

impl GatewayError {
    /// 429 with the seconds until a retry can succeed, for a request over its limit; `Ok`
    /// for one within it (or not counted).
    pub fn over_limit(rate: Option<RateOutcome>) -> Result<(), GatewayError> {
        match rate {
            Some(rate) if !rate.allowed => Err(GatewayError::TooManyRequests {
                retry_after_secs: ceil_seconds(
                    rate.retry_after
                        .unwrap_or(std::time::Duration::from_secs(1)),
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Whole seconds, rounded up and at least one: what `Retry-After` and `RateLimit-Reset` say.
pub fn ceil_seconds(duration: std::time::Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1) as u64
}

/// Which check Redis could not answer, and so what the client is told when the operator's
/// `on_redis_error` / `revocation_on_redis_error` says to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCheck {
    RateLimit,
    Revocation,
}

impl GatewayError {
    /// What an unanswered Redis check means: `deny` refuses with 503 naming the service,
    /// `allow` goes on without the check. The one place this mapping is written.
    pub fn on_redis_outage(check: RedisCheck, mode: FailMode) -> Result<(), GatewayError> {
        match mode {
            FailMode::Allow => Ok(()),
            FailMode::Deny => Err(GatewayError::Unavailable(match check {
                RedisCheck::RateLimit => "Rate limiter unavailable",
                RedisCheck::Revocation => "Revocation service unavailable",
            })),
        }
    }
}
