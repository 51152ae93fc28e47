//! The `/auth` routes' rate limits (contract 4, "Rate limits"): each route's budget per
//! client address, and for the routes that send mail a second budget per recipient address,
//! so that no one can mail-bomb an inbox by sending from many addresses. Which route counts
//! where, and what a route answers over its recipient's budget, are pure tables below; the
//! checks themselves are the gate's.
//!
//! Logins also have a budget of failures per client address across accounts
//! (`rate_limits.login_failures_per_client`, against password spraying): a login takes a
//! place among its client's failures before its password is verified and gives it back when
//! the password matched ([`crate::limits::failures`]), so a client over it is refused before
//! any Argon2 work is spent.
//!
//! Over the recipient's budget, `register` answers 429: it already tells whether an address
//! is taken (409), so the refusal gives nothing away. `password-reset` and
//! `resend-verification` promise 202 "whether or not the email exists", so they keep that
//! answer and send nothing: a 429 there would tell a caller that someone else has been asking
//! for that address (a hint that it is a real account), and the answer would depend on the
//! address rather than on the caller's own budget. Their refusals are counted in
//! `portcullis_mail_suppressed_total` instead.

use std::sync::atomic::Ordering;

use http::StatusCode;

use super::routes::Route;
use super::session::LoginRefusal;
use super::{normalize_email, object, status_only, AuthLimits, AuthService, Call};
use crate::error::{GatewayError, RedisCheck};
use crate::limits::failures::Place;
use crate::limits::gate::{GateCheck, Limit, RateOutcome};
use crate::proxy::refusal::Refusal;
use crate::telemetry::metrics::{LoginOutcome, RefusalReason};

/// The per-client budget a route counts against: the bucket's name and its limit.
/// `resend-verification` sends the same mail as `register`, so it has register's limit (in a
/// bucket of its own, so that registering does not use up the resends).
pub(super) fn client_limit(route: Route, limits: &AuthLimits) -> (&'static str, Limit) {
    match route {
        Route::Login => ("login", limits.login),
        Route::Register => ("register", limits.register),
        Route::ResendVerification => ("resend-verification", limits.register),
        Route::PasswordReset => ("password-reset", limits.password_reset),
        _ => ("auth", limits.default),
    }
}

/// What a route that sends mail does over its recipient's budget; `None` for a route that
/// sends none to an address the caller names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OverRecipientLimit {
    /// 429 with `Retry-After`, as for any limit.
    Refuse,
    /// The route's usual 202, with no mail sent.
    AcceptWithoutMail,
}

pub(super) fn over_recipient_limit(route: Route) -> Option<OverRecipientLimit> {
    match route {
        Route::Register => Some(OverRecipientLimit::Refuse),
        Route::ResendVerification | Route::PasswordReset => {
            Some(OverRecipientLimit::AcceptWithoutMail)
        }
        _ => None,
    }
}

/// The recipient's bucket: the route's, then a hash of the normalised address, so that the
/// keys in Redis neither carry addresses nor grow with them.
fn recipient_bucket(route_bucket: &str, email: &str) -> String {
    use std::fmt::Write as _;
    let hash = crate::token::hash_opaque(&normalize_email(email));
    let mut bucket = format!("{route_bucket}:to:");
    for byte in &hash[..16] {
        // Writing to a String cannot fail.
        let _ = write!(bucket, "{byte:02x}");
    }
    bucket
}

impl AuthService {
    /// The route's per-client limit. `Err` is the 429 (or the 503 of `on_redis_error: deny`),
    /// with its reason for a silent refresh's refusal at the gateway.
    pub(super) async fn rate_limit(
        &self,
        route: Route,
        call: &Call,
    ) -> Result<Option<RateOutcome>, Refusal> {
        let (name, limit) = client_limit(route, &self.settings.limits);
        let bucket = format!("{name}:ip:{}", call.limit_key);
        // A login refused here never reaches `sign_in`, and is counted as it is refused.
        let refused_login = |outcome: LoginOutcome| {
            if route == Route::Login {
                self.metrics.login(outcome);
            }
        };
        let outcome = self.count(&bucket, limit).await.map_err(|down| {
            refused_login(LoginOutcome::Error);
            Refusal::new(RefusalReason::Unavailable, down)
        })?;
        GatewayError::over_limit(outcome).map_err(|over| {
            refused_login(LoginOutcome::RateLimited);
            Refusal::new(RefusalReason::RateLimit, over)
        })?;
        Ok(outcome)
    }

    /// A mail route's per-recipient limit, counted whenever a request names an address
    /// (whether or not it has an account, so the count says nothing about that). `Ok(None)`:
    /// go on with the route; `Ok(Some(response))`: the route's 202 without its mail; `Err`:
    /// the 429 or 503.
    pub(super) async fn recipient_limit(
        &self,
        route: Route,
        call: &Call,
    ) -> Result<Option<http::Response<crate::proxy::response_body::GatewayBody>>, GatewayError>
    {
        let Some(over) = over_recipient_limit(route) else {
            return Ok(None);
        };
        // A body without an address is the route's own 4xx to give.
        let Some(email) = object(call)
            .ok()
            .and_then(|fields| fields.string("email").ok().map(str::to_string))
        else {
            return Ok(None);
        };
        let (name, _) = client_limit(route, &self.settings.limits);
        let bucket = recipient_bucket(name, &email);
        let outcome = self
            .count(&bucket, self.settings.limits.per_recipient)
            .await?;
        match (over, GatewayError::over_limit(outcome)) {
            (_, Ok(())) => Ok(None),
            (OverRecipientLimit::Refuse, Err(refusal)) => Err(refusal),
            (OverRecipientLimit::AcceptWithoutMail, Err(_)) => {
                self.mail_suppressed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    route = name,
                    "per-recipient mail limit reached; no mail sent"
                );
                Ok(Some(status_only(StatusCode::ACCEPTED)))
            }
        }
    }

    /// Takes the caller's place among its client's failed logins, before a password is
    /// verified. `Err` is the 429 over `rate_limits.login_failures_per_client` (or the 503 of
    /// `on_redis_error: deny`); `Ok(None)` when Redis failed and the mode allows.
    pub(super) async fn take_failure_place(
        &self,
        call: &Call,
    ) -> Result<Option<Place>, LoginRefusal> {
        let Some(limit) = self.settings.limits.login_failures else {
            return Ok(None);
        };
        let taken = self
            .failures
            .take(&call.limit_key, limit, self.clock.unix_millis())
            .await;
        match taken {
            Ok((outcome, place)) => {
                if !outcome.allowed {
                    self.metrics.login_failure_limit_refusal();
                }
                GatewayError::over_limit(Some(outcome))
                    .map_err(|over| LoginRefusal::new(LoginOutcome::RateLimited, over))?;
                Ok(place)
            }
            Err(error) => {
                tracing::warn!(%error, "failed-login limit check failed");
                GatewayError::on_redis_outage(
                    RedisCheck::RateLimit,
                    self.settings.limits.on_redis_error,
                )?;
                Ok(None)
            }
        }
    }

    /// Gives back a login's place among its client's failures: its password matched. A
    /// place Redis did not take back stays a failure until it leaves the window.
    pub(super) async fn give_back_failure_place(&self, place: Option<Place>) {
        let Some(place) = place else {
            return;
        };
        if let Err(error) = self.failures.give_back(&place).await {
            tracing::warn!(%error, "could not give back a failed-login place");
        }
    }

    /// Counts one request in `bucket`; `None` when Redis failed and `on_redis_error` allows.
    async fn count(&self, bucket: &str, limit: Limit) -> Result<Option<RateOutcome>, GatewayError> {
        let check = GateCheck {
            bucket: Some((bucket, limit)),
            token: None,
            now_ms: self.clock.unix_millis(),
        };
        match self.gate.check(&check).await {
            Ok(outcome) => Ok(outcome.rate),
            Err(error) => {
                tracing::warn!(%error, "auth rate limit check failed");
                GatewayError::on_redis_outage(
                    RedisCheck::RateLimit,
                    self.settings.limits.on_redis_error,
                )?;
                Ok(None)
            }
        }
    }

    /// `/metrics` lines of the per-recipient limits.
    pub(super) fn render_mail_metrics(&self) -> String {
        let mut out = String::new();
        crate::telemetry::exposition::single(
            &mut out,
            "portcullis_mail_suppressed_total",
            "counter",
            "Requests of password-reset and resend-verification answered 202 without mail: \
             over the recipient's limit.",
            self.mail_suppressed.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> AuthLimits {
        let limit = |requests| Limit {
            requests,
            window: Duration::from_secs(60),
        };
        AuthLimits {
            login: limit(1),
            register: limit(2),
            password_reset: limit(3),
            default: limit(4),
            per_recipient: limit(5),
            login_failures: Some(limit(6)),
            ipv6_prefix: 64,
            on_redis_error: crate::config::FailMode::Allow,
        }
    }

    /// Every route: its per-client bucket and limit, and what it does over a recipient's.
    #[test]
    fn routes_table() {
        use OverRecipientLimit::*;
        #[rustfmt::skip]
        let cases: &[(Route, &str, u32, Option<OverRecipientLimit>)] = &[
            (Route::Login, "login", 1, None),
            (Route::Register, "register", 2, Some(Refuse)),
            (Route::ResendVerification, "resend-verification", 2, Some(AcceptWithoutMail)),
            (Route::PasswordReset, "password-reset", 3, Some(AcceptWithoutMail)),
            (Route::VerifyEmail, "auth", 4, None),
            (Route::Refresh, "auth", 4, None),
            (Route::Logout, "auth", 4, None),
            // Sends a confirmation, but to the token's owner, not to an address named.
            (Route::PasswordResetConfirm, "auth", 4, None),
            (Route::PasswordChange, "auth", 4, None),
            (Route::Me, "auth", 4, None),
            (Route::Sessions, "auth", 4, None),
            (Route::DeleteSession, "auth", 4, None),
            (Route::AdminUsers, "auth", 4, None),
            (Route::AdminUser, "auth", 4, None),
            (Route::AdminPatchUser, "auth", 4, None),
            (Route::AdminUnlock, "auth", 4, None),
            (Route::AdminAudit, "auth", 4, None),
            (Route::OpenApi, "auth", 4, None),
            (Route::Jwks, "auth", 4, None),
        ];
        for &(route, bucket, requests, over) in cases {
            let (name, limit) = client_limit(route, &limits());
            assert_eq!((name, limit.requests), (bucket, requests), "{route:?}");
            assert_eq!(over_recipient_limit(route), over, "{route:?}");
        }
    }

    #[test]
    fn recipient_buckets_are_per_route_and_per_normalised_address() {
        let bucket = recipient_bucket("password-reset", "Alice@Example.com ");
        assert_eq!(
            bucket,
            recipient_bucket("password-reset", "alice@example.com")
        );
        assert_ne!(bucket, recipient_bucket("register", "alice@example.com"));
        assert_ne!(
            bucket,
            recipient_bucket("password-reset", "bob@example.com")
        );
        assert!(bucket.starts_with("password-reset:to:"));
        assert!(!bucket.contains('@'), "{bucket}");
        assert_eq!(bucket.len(), "password-reset:to:".len() + 32);
    }
}
