//! Which fixed reason (`portcullis_refusals_total{reason}`) a refusal of the gateway's own
//! is counted under. Pure: it reads the refusal and nothing else.
//!
//! The forbidden kinds (role, permission, owner, deny, no rule) are told apart by the
//! policy's fixed detail texts (`policy::evaluate`); the integration tests check that a
//! role refusal lands under `role`, which is what keeps the two in step.

use crate::error::GatewayError;
use crate::proxy::enforce::REVOKED;
use crate::telemetry::metrics::RefusalReason;

/// The reason `refusal` is counted under; `None` for what is not a refusal of the request
/// (the upstream failing, an internal error).
pub fn reason(refusal: &GatewayError) -> Option<RefusalReason> {
    use RefusalReason as R;
    Some(match refusal {
        GatewayError::Unauthorized {
            invalid_token: false,
            ..
        }
        | GatewayError::SignIn { .. } => R::NoToken,
        GatewayError::Unauthorized { detail, .. } if detail == REVOKED => R::Revoked,
        GatewayError::Unauthorized { .. } => R::BadToken,
        GatewayError::Forbidden(detail) | GatewayError::InsufficientScope(detail) => {
            forbidden(detail)
        }
        GatewayError::TooManyRequests { .. } => R::RateLimit,
        GatewayError::MisdirectedRequest => R::Host,
        GatewayError::MethodNotAllowed => R::Method,
        GatewayError::InvalidPath(_) => R::Path,
        GatewayError::BadRequest(_)
        | GatewayError::HeadersTooLarge
        | GatewayError::PayloadTooLarge => R::Malformed,
        GatewayError::Unavailable(_) => R::Unavailable,
        GatewayError::CorsRefused => R::Cors,
        _ => return None,
    })
}

fn forbidden(detail: &str) -> RefusalReason {
    use RefusalReason as R;
    if detail.starts_with("Requires ") {
        R::Role
    } else if detail.starts_with("Missing permission") {
        R::Permission
    } else if detail == "Not the owner" {
        R::Owner
    } else if detail == "No rule allows this request" {
        R::NoRule
    } else if detail == crate::access::CROSS_SITE_REFUSED {
        R::CrossSite
    } else {
        // `access: deny`, and any forbidding this table does not know yet.
        R::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefusalReason as R;

    #[test]
    fn refusals_and_their_reasons() {
        #[rustfmt::skip]
        let cases: Vec<(GatewayError, Option<RefusalReason>)> = vec![
            (GatewayError::unauthorized("Not authenticated"), Some(R::NoToken)),
            (GatewayError::SignIn { location: "/auth/login".into() }, Some(R::NoToken)),
            (GatewayError::invalid_token("Invalid or expired token"), Some(R::BadToken)),
            (GatewayError::invalid_token(REVOKED), Some(R::Revoked)),
            (GatewayError::InsufficientScope("Requires admin role".into()), Some(R::Role)),
            (GatewayError::InsufficientScope("Missing permission: reports:read".into()), Some(R::Permission)),
            (GatewayError::Forbidden("Not the owner".into()), Some(R::Owner)),
            (GatewayError::Forbidden("Access denied".into()), Some(R::Denied)),
            (GatewayError::Forbidden("No rule allows this request".into()), Some(R::NoRule)),
            (GatewayError::Forbidden(crate::access::CROSS_SITE_REFUSED.into()), Some(R::CrossSite)),
            (GatewayError::TooManyRequests { retry_after_secs: 3 }, Some(R::RateLimit)),
            (GatewayError::MisdirectedRequest, Some(R::Host)),
            (GatewayError::MethodNotAllowed, Some(R::Method)),
            (GatewayError::InvalidPath("Invalid path"), Some(R::Path)),
            (GatewayError::bad_request("Duplicate Authorization header"), Some(R::Malformed)),
            (GatewayError::HeadersTooLarge, Some(R::Malformed)),
            (GatewayError::PayloadTooLarge, Some(R::Malformed)),
            (GatewayError::Unavailable("Rate limiter unavailable"), Some(R::Unavailable)),
            (GatewayError::CorsRefused, Some(R::Cors)),
            (GatewayError::UpstreamUnreachable, None),
            (GatewayError::UpstreamTimeout, None),
            (GatewayError::Internal, None),
        ];
        for (refusal, expected) in cases {
            assert_eq!(reason(&refusal), expected, "{refusal:?}");
        }
    }
}
