//! A refusal of the gateway's own and why it was made: the answer the client gets and the
//! fixed reason (`portcullis_refusals_total{reason}`, the access log's `refusal`) it is
//! counted under. The reason is set where the refusal is decided (the checks every request
//! passes, `enforce::verdict`, the policy's [`Denial`]) and travels with the answer to the
//! counter and the log line; nothing reads it back from the answer's text.

use crate::error::GatewayError;
use crate::policy::Denial;
use crate::telemetry::metrics::RefusalReason;

/// The gateway's answer to a request it refused, and the reason it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub error: GatewayError,
}

impl Refusal {
    pub fn new(reason: RefusalReason, error: GatewayError) -> Refusal {
        Refusal { reason, error }
    }
}

/// The answer alone, where the reason has been counted already or is not counted (the
/// `/auth` routes).
impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> GatewayError {
        refusal.error
    }
}

/// The reason a policy's 403 is counted under.
pub fn denial_reason(denial: Denial) -> RefusalReason {
    match denial {
        Denial::Role => RefusalReason::Role,
        Denial::Permission => RefusalReason::Permission,
        Denial::Owner => RefusalReason::Owner,
        Denial::Deny => RefusalReason::Denied,
        Denial::NoRule => RefusalReason::NoRule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefusalReason as R;

    #[test]
    fn policy_denials_and_their_reasons() {
        let cases = [
            (Denial::Role, R::Role, "role"),
            (Denial::Permission, R::Permission, "permission"),
            (Denial::Owner, R::Owner, "owner"),
            (Denial::Deny, R::Denied, "denied"),
            (Denial::NoRule, R::NoRule, "no_rule"),
        ];
        for (denial, reason, label) in cases {
            assert_eq!(denial_reason(denial), reason, "{denial:?}");
            assert_eq!(reason.label(), label, "{denial:?}");
        }
    }

    /// The label values operators alert on (`portcullis_refusals_total{reason}`): one per
    /// reason, none renamed.
    #[test]
    fn every_reason_keeps_its_label() {
        #[rustfmt::skip]
        let labels = [
            (R::NoToken, "no_token"), (R::BadToken, "bad_token"), (R::Revoked, "revoked"),
            (R::Role, "role"), (R::Permission, "permission"), (R::Owner, "owner"),
            (R::Denied, "denied"), (R::NoRule, "no_rule"), (R::RateLimit, "rate_limit"),
            (R::CrossSite, "cross_site"), (R::Host, "host"), (R::Method, "method"),
            (R::Path, "path"), (R::Malformed, "malformed"), (R::Unavailable, "unavailable"),
            (R::Cors, "cors"),
        ];
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        for ((reason, label), listed) in labels.iter().zip(RefusalReason::ALL) {
            assert_eq!(*reason, listed, "ALL is in label order");
            assert_eq!(reason.label(), *label);
        }
    }
}
