//! Enforcement on forwarded requests: read and verify the caller's token, ask the policy,
//! then check revocation and the rate limit together in Redis (one round trip, shared with
//! the other requests the worker has waiting: `limits::gate`).
//!
//! Forwarded requests are rate limited by their rule's `rate_limit`, else the policy's
//! default; a policy with neither limits nothing (and an anonymous request then costs no
//! Redis round trip at all).
//!
//! A revoked or invalid token counts as no token: on a rule anyone may use the request goes
//! on anonymously; anywhere else it is a 401 with `error="invalid_token"`. What a Redis
//! outage means is the operator's choice: `revocation_on_redis_error` (default deny) and
//! `on_redis_error` for rate limits (default allow).
//!
//! A request that stays open (a WebSocket tunnel) is admitted once but must not outlive its
//! token: [`TokenWatch`] repeats the revocation check at `server.websocket_recheck_interval`
//! and watches the token's expiry, answering the same way `decide` would.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::auth::{AuthService, TokenSource, TokenState, VerifiedToken};
use crate::config::{Config, FailMode};
use crate::error::GatewayError;
use crate::limits::client_key;
use crate::limits::gate::{Gate, GateCheck, Limit, RateOutcome};
use crate::policy::{Decision, Identity, RateKey, RateLimit, Request};
use crate::server::policy_source::PolicySource;
use crate::telemetry::metrics::Metrics;
use crate::token::AccessClaims;

static X_AUTH_USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
static X_AUTH_EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
static X_AUTH_ROLE: HeaderName = HeaderName::from_static("x-auth-role");
static X_AUTH_SESSION_ID: HeaderName = HeaderName::from_static("x-auth-session-id");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What the gateway forwards with, once a request is allowed.
#[derive(Debug)]
pub struct Verdict {
    /// The caller, when a valid, unrevoked token was presented.
    pub identity: Option<Arc<VerifiedToken>>,
    /// Where `identity`'s token was read from; `None` exactly when `identity` is.
    pub token_source: Option<TokenSource>,
    /// The rule's upstream; `None` is the gateway's first.
    pub upstream: Option<String>,
    pub rate: Option<RateOutcome>,
}

pub struct Enforcer {
    policy: Arc<PolicySource>,
    gate: Gate,
    auth: Arc<AuthService>,
    rate_on_redis_error: FailMode,
    revocation_on_redis_error: FailMode,
    /// `rate_limits.ipv6_prefix`: how IPv6 clients are counted.
    ipv6_prefix: u8,
    /// `tokens.leeway` in whole seconds, as token verification counts it.
    leeway_secs: u64,
    recheck_interval: Duration,
}

impl Enforcer {
    pub fn new(
        config: &Config,
        policy: Arc<PolicySource>,
        gate: Gate,
        auth: Arc<AuthService>,
    ) -> Enforcer {
        Enforcer {
            policy,
            gate,
            auth,
            rate_on_redis_error: config.rate_limits.on_redis_error,
            revocation_on_redis_error: config.rate_limits.revocation_on_redis_error,
            ipv6_prefix: config.rate_limits.ipv6_prefix,
            leeway_secs: config.tokens.leeway.as_secs(),
            recheck_interval: config.server.websocket_recheck_interval,
        }
    }

    /// Watches `verified`, the token a long-lived request was admitted with.
    pub fn watch(&self, verified: Arc<VerifiedToken>, metrics: Arc<Metrics>) -> TokenWatch {
        TokenWatch {
            verified,
            gate: self.gate.clone(),
            auth: self.auth.clone(),
            leeway_secs: self.leeway_secs,
            interval: self.recheck_interval,
            revocation_on_redis_error: self.revocation_on_redis_error,
            metrics,
        }
    }

    pub fn policy(&self) -> &Arc<PolicySource> {
        &self.policy
    }

    /// Decides a forwarded request: `Ok` to forward (with whom and where), `Err` with the
    /// gateway's answer (401, 403, 429 or 503).
    pub async fn decide(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        client_ip: IpAddr,
        metrics: &Metrics,
    ) -> Result<Verdict, GatewayError> {
        let (verified, source, invalid_token) = match self.auth.read_access_token(headers) {
            TokenState::Valid(verified, source) => (Some(verified), Some(source), false),
            TokenState::Invalid => (None, None, true),
            TokenState::Absent => (None, None, false),
        };
        let claims = verified.as_ref().map(|verified| &verified.claims);
        let loaded = self.policy.current();
        let request = Request { method, host, path };
        let identity = claims.map(|claims| Identity {
            sub: &claims.sub,
            role: &claims.role,
        });
        let (rate_limit, upstream) = match loaded.policy.evaluate(&request, identity.as_ref()) {
            Decision::Allow {
                rate_limit,
                upstream,
                ..
            } => (rate_limit, upstream),
            Decision::Unauthenticated { .. } if invalid_token => {
                return Err(GatewayError::invalid_token("Invalid or expired token"));
            }
            Decision::Unauthenticated { .. } => {
                return Err(GatewayError::unauthorized("Not authenticated"))
            }
            Decision::Forbidden { detail, .. } => {
                return Err(GatewayError::Forbidden(detail.into()))
            }
        };

        let bucket = rate_limit.map(|rule| bucket_for(rule, claims, client_ip, self.ipv6_prefix));
        let token_check =
            claims.map(|claims| (claims.sid.as_str(), claims.sub.as_str(), claims.iat));
        let now_ms = self.auth.clock().unix_millis();
        let outcome = self
            .gate
            .check(&GateCheck {
                bucket: bucket
                    .as_ref()
                    .map(|(bucket, limit)| (bucket.as_str(), *limit)),
                token: token_check,
                now_ms,
            })
            .await;
        match outcome {
            Ok(outcome) if outcome.revoked => {
                // The token is revoked: go on only if the rule lets anyone in.
                match loaded.policy.evaluate(&request, None) {
                    Decision::Allow {
                        rate_limit,
                        upstream,
                        ..
                    } => {
                        let rate = match rate_limit {
                            Some(rule) => {
                                let (bucket, limit) =
                                    bucket_for(rule, None, client_ip, self.ipv6_prefix);
                                self.rate_only(&bucket, limit, now_ms, metrics).await?
                            }
                            None => None,
                        };
                        Ok(Verdict {
                            identity: None,
                            token_source: None,
                            upstream,
                            rate,
                        })
                    }
                    _ => Err(GatewayError::invalid_token("Token has been revoked")),
                }
            }
            Ok(outcome) => {
                refuse_over_limit(outcome.rate)?;
                Ok(Verdict {
                    identity: verified,
                    token_source: source,
                    upstream,
                    rate: outcome.rate,
                })
            }
            Err(error) => {
                metrics.redis_error();
                tracing::warn!(%error, "rate limit and revocation check failed");
                if bucket.is_some() && self.rate_on_redis_error == FailMode::Deny {
                    return Err(GatewayError::Unavailable("Rate limiter unavailable"));
                }
                if claims.is_some() && self.revocation_on_redis_error == FailMode::Deny {
                    // Revocation cannot be checked, so the token cannot be trusted: the
                    // request may still go on without it where anyone is allowed.
                    return match loaded.policy.evaluate(&request, None) {
                        Decision::Allow { upstream, .. } => Ok(Verdict {
                            identity: None,
                            token_source: None,
                            upstream,
                            rate: None,
                        }),
                        _ => Err(GatewayError::Unavailable("Revocation service unavailable")),
                    };
                }
                Ok(Verdict {
                    identity: verified,
                    token_source: source,
                    upstream,
                    rate: None,
                })
            }
        }
    }

    async fn rate_only(
        &self,
        bucket: &str,
        limit: Limit,
        now_ms: u64,
        metrics: &Metrics,
    ) -> Result<Option<RateOutcome>, GatewayError> {
        let check = GateCheck {
            bucket: Some((bucket, limit)),
            token: None,
            now_ms,
        };
        match self.gate.check(&check).await {
            Ok(outcome) => {
                refuse_over_limit(outcome.rate)?;
                Ok(outcome.rate)
            }
            Err(error) => {
                metrics.redis_error();
                tracing::warn!(%error, "rate limit check failed");
                match self.rate_on_redis_error {
                    FailMode::Deny => Err(GatewayError::Unavailable("Rate limiter unavailable")),
                    FailMode::Allow => Ok(None),
                }
            }
        }
    }
}

/// Why a token no longer admits the request it was checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    Expired,
    Revoked,
    /// Revocation cannot be checked and `revocation_on_redis_error` is `deny`.
    Unverifiable,
}

impl Lapse {
    pub fn as_str(self) -> &'static str {
        match self {
            Lapse::Expired => "expired",
            Lapse::Revoked => "revoked",
            Lapse::Unverifiable => "revocation unverifiable",
        }
    }
}

/// The token of an open tunnel, checked again and again with the check that admitted it.
pub struct TokenWatch {
    verified: Arc<VerifiedToken>,
    gate: Gate,
    auth: Arc<AuthService>,
    leeway_secs: u64,
    interval: Duration,
    revocation_on_redis_error: FailMode,
    metrics: Arc<Metrics>,
}

impl TokenWatch {
    /// Resolves when the token no longer admits its request, saying why. It wakes every
    /// interval, and at the expiry if that comes first; the expiry is read from the gateway's
    /// clock at each wake, so a clock moved forward is noticed at the next one.
    pub async fn lapsed(self) -> Lapse {
        let claims = &self.verified.claims;
        // Verification accepts a token while `now < exp + leeway` in whole seconds.
        let expires_ms = claims
            .exp
            .saturating_add(self.leeway_secs)
            .saturating_mul(1000);
        loop {
            let until_expiry = expires_ms.saturating_sub(self.auth.clock().unix_millis());
            tokio::time::sleep(self.interval.min(Duration::from_millis(until_expiry))).await;
            let now_ms = self.auth.clock().unix_millis();
            if now_ms >= expires_ms {
                return Lapse::Expired;
            }
            let check = GateCheck {
                bucket: None,
                token: Some((claims.sid.as_str(), claims.sub.as_str(), claims.iat)),
                now_ms,
            };
            let revoked = match self.gate.check(&check).await {
                Ok(outcome) => Some(outcome.revoked),
                Err(error) => {
                    self.metrics.redis_error();
                    tracing::warn!(%error, "revocation recheck of an open tunnel failed");
                    None
                }
            };
            if let Some(lapse) = recheck_lapse(revoked, self.revocation_on_redis_error) {
                return lapse;
            }
        }
    }
}

/// What a recheck's revocation answer (`None`: Redis could not say) means for an open
/// tunnel: the same as for a new request, which such a token could not make either.
fn recheck_lapse(revoked: Option<bool>, on_redis_error: FailMode) -> Option<Lapse> {
    match (revoked, on_redis_error) {
        (Some(true), _) => Some(Lapse::Revoked),
        (Some(false), _) | (None, FailMode::Allow) => None,
        (None, FailMode::Deny) => Some(Lapse::Unverifiable),
    }
}

/// The bucket a request counts against: per user when the rule says so and the caller is
/// known, per client address otherwise (an IPv6 client's network: [`client_key`]).
fn bucket_for(
    rule: RateLimit,
    claims: Option<&AccessClaims>,
    client_ip: IpAddr,
    ipv6_prefix: u8,
) -> (String, Limit) {
    let limit = Limit {
        requests: rule.requests,
        window: rule.per,
    };
    let bucket = match (rule.key, claims) {
        (RateKey::User, Some(claims)) => format!("user:{}", claims.sub),
        _ => format!("ip:{}", client_key(client_ip, ipv6_prefix)),
    };
    (bucket, limit)
}

/// 429 with `Retry-After` for a request over its limit; `Ok` otherwise.
pub(crate) fn refuse_over_limit(rate: Option<RateOutcome>) -> Result<(), GatewayError> {
    match rate {
        Some(rate) if !rate.allowed => Err(GatewayError::TooManyRequests {
            retry_after_secs: ceil_seconds(rate.retry_after.unwrap_or(Duration::from_secs(1))),
        }),
        _ => Ok(()),
    }
}

fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1) as u64
}

/// The identity headers of contract 6.1 for one token, made when it is first verified.
#[derive(Debug)]
pub struct IdentityHeaders {
    /// A claim that cannot be a header value (a control character, say) is left out.
    values: [Option<HeaderValue>; 4],
}

static IDENTITY_NAMES: [&HeaderName; 4] = [
    &X_AUTH_USER_ID,
    &X_AUTH_EMAIL,
    &X_AUTH_ROLE,
    &X_AUTH_SESSION_ID,
];

impl IdentityHeaders {
    pub fn new(claims: &AccessClaims) -> IdentityHeaders {
        // Cloning a value onto a request shares its bytes (a reference count), not a copy.
        let value = |claim: &str| HeaderValue::from_str(claim).ok();
        IdentityHeaders {
            values: [
                value(&claims.sub),
                value(&claims.email),
                value(&claims.role),
                value(&claims.sid),
            ],
        }
    }

    /// Sets them, after every client-sent `X-Auth-*` is gone.
    pub fn set(&self, headers: &mut HeaderMap) {
        for (name, value) in IDENTITY_NAMES.iter().zip(&self.values) {
            if let Some(value) = value {
                headers.insert((*name).clone(), value.clone());
            }
        }
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) on an allowed response.
pub fn set_rate_headers(headers: &mut HeaderMap, rate: &RateOutcome) {
    headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(rate.limit));
    headers.insert(
        RATELIMIT_REMAINING.clone(),
        HeaderValue::from(rate.remaining),
    );
    headers.insert(
        RATELIMIT_RESET.clone(),
        HeaderValue::from(ceil_seconds(rate.reset)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(email: &str) -> AccessClaims {
        AccessClaims {
            sub: "6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d".into(),
            email: email.into(),
            role: "admin".into(),
            sid: "0b5e7f3a-1d2c-4e5f-8a9b-0c1d2e3f4a5b".into(),
            jti: "j".into(),
            iat: 0,
            exp: 10,
            nbf: None,
            iss: "portcullis".into(),
            aud: "portcullis".into(),
            token_type: "access".into(),
        }
    }

    #[test]
    fn a_recheck_lapses_as_a_new_request_would_be_refused() {
        let cases = [
            (Some(false), FailMode::Deny, None),
            (Some(false), FailMode::Allow, None),
            (Some(true), FailMode::Deny, Some(Lapse::Revoked)),
            (Some(true), FailMode::Allow, Some(Lapse::Revoked)),
            (None, FailMode::Deny, Some(Lapse::Unverifiable)),
            (None, FailMode::Allow, None),
        ];
        for (revoked, on_redis_error, expected) in cases {
            assert_eq!(
                recheck_lapse(revoked, on_redis_error),
                expected,
                "{revoked:?} {on_redis_error:?}"
            );
        }
    }

    #[test]
    fn identity_headers_replace_whatever_was_there() {
        let identity = IdentityHeaders::new(&claims("ada@example.com"));
        let mut headers = HeaderMap::new();
        headers.append(&X_AUTH_ROLE, HeaderValue::from_static("spoofed"));
        headers.append(&X_AUTH_ROLE, HeaderValue::from_static("spoofed-too"));
        identity.set(&mut headers);
        let one = |name: &HeaderName| {
            let values: Vec<_> = headers.get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{name}");
            values[0].to_str().expect("ascii").to_string()
        };
        assert_eq!(one(&X_AUTH_USER_ID), "6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d");
        assert_eq!(one(&X_AUTH_EMAIL), "ada@example.com");
        assert_eq!(one(&X_AUTH_ROLE), "admin");
        assert_eq!(
            one(&X_AUTH_SESSION_ID),
            "0b5e7f3a-1d2c-4e5f-8a9b-0c1d2e3f4a5b"
        );
    }

    #[test]
    fn a_claim_that_cannot_be_a_header_value_is_left_out() {
        for email in ["ada@example.com\r\nX-Evil: 1", "ada\0@example.com"] {
            let identity = IdentityHeaders::new(&claims(email));
            let mut headers = HeaderMap::new();
            identity.set(&mut headers);
            assert!(headers.get(&X_AUTH_EMAIL).is_none(), "{email:?}");
            assert_eq!(headers.get(&X_AUTH_ROLE).expect("set"), "admin");
        }
    }
}
