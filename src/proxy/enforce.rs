//! Enforcement on forwarded requests: read and verify the caller's token (`access`), ask
//! the policy, then check revocation and the rate limit together in Redis (one round trip,
//! shared with the other requests the worker has waiting: `limits::gate`).
//!
//! What the answers add up to is decided by [`verdict`], a pure function with a case table;
//! [`Enforcer::decide`] only gathers its inputs.
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
//! Browsers (contract 7): a navigation refused for lack of a token is sent to sign in
//! (`Step::SignIn`, unless its rule says `on_unauthenticated: deny`), and a browser whose
//! access cookie has expired has its session renewed from the refresh cookie first
//! ([`wants_renewal`] says when; the renewal itself is behind [`SessionRenewal`]).
//!
//! Shadow rules (`mode: report`) never change a decision: once the enforced rules have
//! decided, each shadow rule that matches the request is asked what it would have decided,
//! for the caller as the token says, and that is counted
//! (`portcullis_policy_shadow_decisions_total{rule,outcome}`) and logged beside the actual
//! outcome. A policy without shadow rules skips this entirely.
//!
//! A request that stays open (a WebSocket tunnel) is admitted once but must not outlive its
//! token: [`TokenWatch`] repeats the revocation check at `server.websocket_recheck_interval`
//! and watches the token's expiry, answering the same way `decide` would.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use http::{HeaderMap, Method};

use super::navigation::{is_navigation, sign_in_location};
use super::refusal::{denial_reason, Refusal};
use super::renewal::{Renewal, SessionRenewal};
use crate::access::{
    cleared_session_cookies, cookie, AccessVerifier, TokenSource, TokenState, VerifiedToken,
    REFRESH_COOKIE,
};
use crate::config::FailMode;
use crate::error::{GatewayError, RedisCheck};
use crate::limits::client_key;
use crate::limits::gate::{Gate, GateCheck, GateOutcome, Limit, RateOutcome};
use crate::live_policy::{LoadedPolicy, PolicySource};
use crate::policy::{Decision, Identity, OnUnauthenticated, RateKey, RateLimit, Request};
use crate::telemetry::metrics::{Metrics, RefusalReason as R};
use crate::token::AccessClaims;

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
    /// A valid token was presented, but Redis could not say whether it is revoked and
    /// `revocation_on_redis_error` is `deny`, so the request goes on without it (where
    /// anyone may go). A forward-auth refuses such a verdict rather than answer `200`
    /// without the caller's identity.
    pub revocation_unchecked: bool,
}

/// What an outage of Redis means, per kind of check (`rate_limits.on_redis_error` and
/// `rate_limits.revocation_on_redis_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailModes {
    pub rate: FailMode,
    pub revocation: FailMode,
}

/// What the request's token amounted to before Redis was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Absent,
    Invalid,
    Valid,
}

/// What Redis said of a request's rate limit and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateResult {
    /// The policy refused first: Redis was not asked.
    NotAsked,
    Answered(GateOutcome),
    Unavailable,
}

/// What to do with a request, once every answer is in.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Forward it, as the token's caller or anonymously, reporting `rate`.
    Forward {
        as_caller: bool,
        upstream: Option<String>,
        rate: Option<RateOutcome>,
    },
    /// The token is revoked but the rule lets anyone in under a rate limit: count the
    /// request anonymously (a second check, [`rate_verdict`]) and forward it anonymously.
    CountAnonymously {
        rate_limit: RateLimit,
        upstream: Option<String>,
    },
    /// An anonymous browser navigation the rule would refuse for lack of a token: send it
    /// to sign in (contract 7) instead of the 401.
    SignIn,
    Refuse(Refusal),
}

/// The detail of a refusal for a revoked token.
pub const REVOKED: &str = "Token has been revoked";

/// The whole enforcement decision, without I/O. `decision` is the policy's answer for the
/// caller as the token says (anonymous when there is none); `gate` is Redis' answer to the
/// check made for it (`NotAsked` unless `decision` allows); `anonymous` is the policy's
/// answer without the token, asked only when the token cannot be trusted; `counted` says
/// whether the gate check included a rate bucket; `navigation` whether the request is a
/// browser navigating (`navigation::is_navigation`), which a refusal for lack of a token
/// sends to sign in unless the rule says `on_unauthenticated: deny`. A token that failed
/// verification, or was revoked, counts as none for that too: its browser must sign in again.
pub fn verdict(
    token: TokenKind,
    decision: Decision,
    gate: GateResult,
    counted: bool,
    anonymous: impl FnOnce() -> Decision,
    fail: FailModes,
    navigation: bool,
) -> Step {
    let signs_in = |decision: &Decision| {
        navigation
            && matches!(
                decision,
                Decision::Unauthenticated {
                    on_unauthenticated: OnUnauthenticated::Redirect,
                    ..
                }
            )
    };
    if signs_in(&decision) {
        return Step::SignIn;
    }
    let upstream = match decision {
        Decision::Allow { upstream, .. } => upstream,
        Decision::Unauthenticated { .. } if token == TokenKind::Invalid => {
            return Step::Refuse(Refusal::new(
                R::BadToken,
                GatewayError::invalid_token("Invalid or expired token"),
            ));
        }
        Decision::Unauthenticated { .. } => {
            return Step::Refuse(Refusal::new(
                R::NoToken,
                GatewayError::unauthorized("Not authenticated"),
            ));
        }
        Decision::Forbidden { denial, detail, .. } => {
            let detail = detail.into();
            return Step::Refuse(Refusal::new(
                denial_reason(denial),
                if denial.insufficient_scope() {
                    GatewayError::InsufficientScope(detail)
                } else {
                    GatewayError::Forbidden(detail)
                },
            ));
        }
    };
    let as_caller = token == TokenKind::Valid;
    match gate {
        GateResult::Answered(outcome) if outcome.revoked => match anonymous() {
            // The token is revoked: go on only if the rule lets anyone in.
            Decision::Allow {
                rate_limit: Some(rate_limit),
                upstream,
                ..
            } => Step::CountAnonymously {
                rate_limit,
                upstream,
            },
            Decision::Allow { upstream, .. } => Step::Forward {
                as_caller: false,
                upstream,
                rate: None,
            },
            refused if signs_in(&refused) => Step::SignIn,
            _ => Step::Refuse(Refusal::new(
                R::Revoked,
                GatewayError::invalid_token(REVOKED),
            )),
        },
        GateResult::Answered(outcome) => match GatewayError::over_limit(outcome.rate) {
            Ok(()) => Step::Forward {
                as_caller,
                upstream,
                rate: outcome.rate,
            },
            Err(refusal) => Step::Refuse(Refusal::new(R::RateLimit, refusal)),
        },
        // Only an allowing decision asks Redis; without an answer, nothing was counted.
        GateResult::NotAsked => Step::Forward {
            as_caller,
            upstream,
            rate: None,
        },
        GateResult::Unavailable => {
            if counted {
                if let Err(refusal) =
                    GatewayError::on_redis_outage(RedisCheck::RateLimit, fail.rate)
                {
                    return Step::Refuse(Refusal::new(R::Unavailable, refusal));
                }
            }
            let revocation = GatewayError::on_redis_outage(RedisCheck::Revocation, fail.revocation);
            if let (true, Err(refusal)) = (as_caller, revocation) {
                // Revocation cannot be checked, so the token cannot be trusted: the request
                // may still go on without it where anyone is allowed.
                return match anonymous() {
                    Decision::Allow { upstream, .. } => Step::Forward {
                        as_caller: false,
                        upstream,
                        rate: None,
                    },
                    _ => Step::Refuse(Refusal::new(R::Unavailable, refusal)),
                };
            }
            Step::Forward {
                as_caller,
                upstream,
                rate: None,
            }
        }
    }
}

/// Whether to renew a browser's session before deciding its request (silent refresh): its
/// access token is absent or failed verification (expired, most often), it carries a
/// refresh cookie, it has no `Authorization` (a caller with a bearer token manages its own
/// tokens), the CSRF check lets its cookie act (`may_renew`), and the policy would refuse
/// it for lack of a token (`refused_anonymously`, asked last: it evaluates the policy).
pub fn wants_renewal(
    token: TokenKind,
    may_renew: bool,
    bearer: bool,
    refresh_cookie: bool,
    refused_anonymously: impl FnOnce() -> bool,
) -> bool {
    token != TokenKind::Valid && may_renew && !bearer && refresh_cookie && refused_anonymously()
}

/// The answer to a rate-only check: the outcome to report, or the refusal (429, or 503
/// when Redis is away and `on_redis_error` is `deny`).
pub fn rate_verdict(
    gate: GateResult,
    on_redis_error: FailMode,
) -> Result<Option<RateOutcome>, Refusal> {
    match gate {
        GateResult::Answered(outcome) => {
            GatewayError::over_limit(outcome.rate)
                .map_err(|over| Refusal::new(R::RateLimit, over))?;
            Ok(outcome.rate)
        }
        GateResult::NotAsked => Ok(None),
        GateResult::Unavailable => {
            GatewayError::on_redis_outage(RedisCheck::RateLimit, on_redis_error)
                .map_err(|down| Refusal::new(R::Unavailable, down))?;
            Ok(None)
        }
    }
}

pub struct Enforcer {
    policy: Arc<PolicySource>,
    gate: Gate,
    access: Arc<AccessVerifier>,
    fail: FailModes,
    /// `rate_limits.ipv6_prefix`: how IPv6 clients are counted.
    ipv6_prefix: u8,
    recheck_interval: Duration,
    /// Silent refresh, in cookie mode: `None` when the gateway has no cookie sessions.
    renewal: Option<Arc<dyn SessionRenewal>>,
}

/// What enforcement is asked about one forwarded request.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub host: Option<&'a str>,
    /// Normalised, without the query: what the policy matches.
    pub path: &'a str,
    /// The normalised path and query: where a browser sent to sign in comes back to.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// Whether the session cookie may act for this request at all (the CSRF check passes):
    /// a session is never renewed for a request that would then be refused as cross-site.
    pub may_renew: bool,
}

/// The decision, and the session cookies the response must set whatever it is: the
/// rotation of a renewal has happened (its new refresh token exists only in these cookies),
/// so even a refusal or an upstream failure must hand them to the browser.
pub struct Decided {
    pub outcome: Result<Verdict, Refusal>,
    pub set_cookies: Vec<HeaderValue>,
    /// What the policy said, for the access log; None when the request was answered before
    /// the policy was asked (the session store was down during a renewal).
    pub explained: Option<Explained>,
}

/// Which policy judged a request and which of its rules decided.
#[derive(Clone)]
pub struct Explained {
    pub policy: Arc<LoadedPolicy>,
    /// None when no rule matched.
    pub rule: Option<usize>,
}

impl Explained {
    /// The deciding rule's name; None when no rule matched.
    pub fn rule_name(&self) -> Option<&str> {
        self.rule.map(|index| self.policy.policy.rule_name(index))
    }

    /// The hash `/metrics` shows for the policy (`portcullis_policy_info{hash}`).
    pub fn policy_hash(&self) -> &str {
        &self.policy.hash
    }
}

/// The settings enforcement takes from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct EnforcerSettings {
    pub fail: FailModes,
    pub ipv6_prefix: u8,
    pub websocket_recheck_interval: Duration,
}

impl Enforcer {
    pub fn new(
        settings: EnforcerSettings,
        policy: Arc<PolicySource>,
        gate: Gate,
        access: Arc<AccessVerifier>,
    ) -> Enforcer {
        Enforcer {
            policy,
            gate,
            access,
            fail: settings.fail,
            ipv6_prefix: settings.ipv6_prefix,
            recheck_interval: settings.websocket_recheck_interval,
            renewal: None,
        }
    }

    /// Renews expired cookie sessions with `renewal` (silent refresh, contract 7).
    pub fn with_renewal(mut self, renewal: Arc<dyn SessionRenewal>) -> Enforcer {
        self.renewal = Some(renewal);
        self
    }

    /// Watches `verified`, the token a long-lived request was admitted with.
    pub fn watch(&self, verified: Arc<VerifiedToken>, metrics: Arc<Metrics>) -> TokenWatch {
        TokenWatch {
            verified,
            access: self.access.clone(),
            interval: self.recheck_interval,
            revocation_on_redis_error: self.fail.revocation,
            metrics,
        }
    }

    pub fn policy(&self) -> &Arc<PolicySource> {
        &self.policy
    }

    /// The token verifier enforcement reads callers with.
    pub fn access(&self) -> &Arc<AccessVerifier> {
        &self.access
    }

    /// Decides a forwarded request: `Ok` to forward (with whom and where), `Err` with the
    /// gateway's answer (302 to sign in, 401, 403, 429 or 503). Gathers what [`verdict`]
    /// needs, renewing the session first when the request has only a refresh cookie to go
    /// by and the policy would refuse it for lack of a token.
    ///
    /// Renewal is tried only then, not on every request with an expired access cookie: on
    /// a public rule the request goes on anonymously, as it would have, and a browser
    /// fetching public assets costs no Postgres write per request. The price is that a
    /// public page is served anonymously until the browser asks for a protected one.
    pub async fn decide(&self, asked: &Asked<'_>, metrics: &Metrics) -> Decided {
        let (mut verified, mut source, mut token) = match self.access.read(asked.headers) {
            TokenState::Valid(verified, source) => (Some(verified), Some(source), TokenKind::Valid),
            TokenState::Invalid => (None, None, TokenKind::Invalid),
            TokenState::Absent => (None, None, TokenKind::Absent),
        };
        let mut set_cookies = Vec::new();
        let wanted = self.renewal.is_some()
            && wants_renewal(
                token,
                asked.may_renew,
                asked.headers.contains_key(AUTHORIZATION),
                cookie(asked.headers, REFRESH_COOKIE).is_some_and(|token| !token.is_empty()),
                || self.refused_anonymously(asked),
            );
        if wanted {
            match self.renew(asked).await {
                None => {}
                Some(Renewal::Renewed(renewed)) => {
                    verified = Some(renewed.verified);
                    source = Some(TokenSource::Cookie);
                    token = TokenKind::Valid;
                    set_cookies = renewed.set_cookies;
                }
                Some(Renewal::Refused) => set_cookies = cleared_session_cookies().to_vec(),
                Some(Renewal::Unavailable) => {
                    return Decided {
                        outcome: Err(Refusal::new(
                            R::Unavailable,
                            GatewayError::Unavailable("Session store unavailable"),
                        )),
                        set_cookies,
                        explained: None,
                    }
                }
                Some(Renewal::Refusal(refusal)) => {
                    return Decided {
                        outcome: Err(refusal),
                        set_cookies,
                        explained: None,
                    }
                }
            }
        }
        let mut explained = Explained {
            policy: self.policy.current(),
            rule: None,
        };
        let outcome = self
            .judge(asked, verified, source, token, metrics, &mut explained)
            .await;
        Decided {
            outcome,
            set_cookies,
            explained: Some(explained),
        }
    }

    /// Whether the policy refuses the request to an anonymous caller for lack of a token.
    fn refused_anonymously(&self, asked: &Asked<'_>) -> bool {
        let request = Request {
            method: asked.method.as_str(),
            host: asked.host,
            path: asked.path,
        };
        matches!(
            self.policy.current().policy.evaluate(&request, None),
            Decision::Unauthenticated { .. }
        )
    }

    /// Renews the session from the request's refresh cookie: `None` when there is no
    /// renewal or no cookie.
    async fn renew(&self, asked: &Asked<'_>) -> Option<Renewal> {
        let renewal = self.renewal.as_ref()?;
        let refresh_token = cookie(asked.headers, REFRESH_COOKIE)?;
        let user_agent = asked
            .headers
            .get(USER_AGENT)
            .and_then(|agent| agent.to_str().ok());
        Some(
            renewal
                .renew(refresh_token, asked.client_ip, user_agent)
                .await,
        )
    }

    /// The policy, Redis and [`verdict`] for the request's caller, once it is known.
    /// `explained` holds the policy in force, which this judges by, and gets the rule.
    async fn judge(
        &self,
        asked: &Asked<'_>,
        verified: Option<Arc<VerifiedToken>>,
        source: Option<TokenSource>,
        token: TokenKind,
        metrics: &Metrics,
        explained: &mut Explained,
    ) -> Result<Verdict, Refusal> {
        let loaded = explained.policy.clone();
        let (method, host, path, target, headers, client_ip) = (
            asked.method,
            asked.host,
            asked.path,
            asked.target,
            asked.headers,
            asked.client_ip,
        );
        let claims = verified.as_ref().map(|verified| &verified.claims);
        let request = Request {
            method: method.as_str(),
            host,
            path,
        };
        let identity = claims.map(|claims| Identity {
            sub: &claims.sub,
            role: &claims.role,
        });
        let decision = loaded.policy.evaluate(&request, identity.as_ref());
        // The rule depends on the request alone, not on who asks: a caller judged again
        // anonymously below (a revoked token) is decided by the same rule.
        explained.rule = decision.rule();
        if loaded.policy.has_shadow_rules() {
            report_shadows(&loaded, &request, identity.as_ref(), &decision, metrics);
        }
        let now_ms = self.access.clock().unix_millis();
        let mut counted = false;
        let gate = match &decision {
            Decision::Allow { rate_limit, .. } => {
                let bucket =
                    rate_limit.map(|rule| bucket_for(rule, claims, client_ip, self.ipv6_prefix));
                counted = bucket.is_some();
                let check = GateCheck {
                    bucket: bucket
                        .as_ref()
                        .map(|(bucket, limit)| (bucket.as_str(), *limit)),
                    token: verified.as_deref().map(VerifiedToken::revocation_key),
                    now_ms,
                };
                self.ask(&check, metrics).await
            }
            _ => GateResult::NotAsked,
        };
        let anonymous = || loaded.policy.evaluate(&request, None);
        let navigation = is_navigation(method, headers);
        // The token was dropped for want of an answer on its revocation, not for being revoked.
        let unchecked = token == TokenKind::Valid && gate == GateResult::Unavailable;
        match verdict(
            token, decision, gate, counted, anonymous, self.fail, navigation,
        ) {
            Step::Forward {
                as_caller,
                upstream,
                rate,
            } => Ok(if as_caller {
                Verdict {
                    identity: verified,
                    token_source: source,
                    upstream,
                    rate,
                    revocation_unchecked: false,
                }
            } else {
                Verdict {
                    identity: None,
                    token_source: None,
                    upstream,
                    rate,
                    revocation_unchecked: unchecked,
                }
            }),
            Step::CountAnonymously {
                rate_limit,
                upstream,
            } => {
                let (bucket, limit) = bucket_for(rate_limit, None, client_ip, self.ipv6_prefix);
                let check = GateCheck {
                    bucket: Some((&bucket, limit)),
                    token: None,
                    now_ms,
                };
                let rate = rate_verdict(self.ask(&check, metrics).await, self.fail.rate)?;
                Ok(Verdict {
                    identity: None,
                    token_source: None,
                    upstream,
                    rate,
                    revocation_unchecked: false,
                })
            }
            Step::SignIn => Err(Refusal::new(
                R::NoToken,
                GatewayError::SignIn {
                    location: sign_in_location(target),
                },
            )),
            Step::Refuse(refusal) => Err(refusal),
        }
    }

    async fn ask(&self, check: &GateCheck<'_>, metrics: &Metrics) -> GateResult {
        match self.gate.check(check).await {
            Ok(outcome) => GateResult::Answered(outcome),
            Err(error) => {
                metrics.redis_error();
                tracing::warn!(%error, "rate limit and revocation check failed");
                GateResult::Unavailable
            }
        }
    }
}

/// Counts and logs what each shadow rule that matches the request would have decided,
/// beside what the enforced rules did decide.
fn report_shadows(
    loaded: &LoadedPolicy,
    request: &Request<'_>,
    identity: Option<&Identity<'_>>,
    decision: &Decision,
    metrics: &Metrics,
) {
    let policy = &loaded.policy;
    let actual_rule = decision.rule().map(|index| policy.rule_name(index));
    for (rule, would) in policy.shadow_decisions(request, identity) {
        let name = policy.rule_name(rule);
        let outcome = would.outcome();
        metrics.shadow_decision(name, outcome);
        tracing::info!(
            rule = name,
            outcome = outcome.as_str(),
            actual_outcome = decision.outcome().as_str(),
            actual_rule,
            path = request.path,
            policy_hash = %loaded.hash,
            "shadow rule decision"
        );
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
    access: Arc<AccessVerifier>,
    interval: Duration,
    revocation_on_redis_error: FailMode,
    metrics: Arc<Metrics>,
}

impl TokenWatch {
    /// Resolves when the token no longer admits its request, saying why. It wakes every
    /// interval, and at the expiry if that comes first; the expiry is read from the gateway's
    /// clock at each wake, so a clock moved forward is noticed at the next one.
    pub async fn lapsed(self) -> Lapse {
        let expires_ms = self.access.expires_at_ms(&self.verified);
        loop {
            let until_expiry = expires_ms.saturating_sub(self.access.clock().unix_millis());
            tokio::time::sleep(self.interval.min(Duration::from_millis(until_expiry))).await;
            if self.access.clock().unix_millis() >= expires_ms {
                return Lapse::Expired;
            }
            let revoked = match self.access.revoked(&self.verified).await {
                Ok(revoked) => Some(revoked),
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
    match revoked {
        Some(true) => Some(Lapse::Revoked),
        Some(false) => None,
        None => GatewayError::on_redis_outage(RedisCheck::Revocation, on_redis_error)
            .err()
            .map(|_| Lapse::Unverifiable),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RateKey;

    /// The kinds of rule a request can meet, by what the policy answers with the token's
    /// caller and without anyone.
    #[derive(Debug, Clone, Copy)]
    enum Rule {
        /// `allow: anyone`, no rate limit.
        Public,
        /// `allow: anyone` under a rate limit.
        PublicLimited,
        /// Any signed-in user.
        SignedIn,
        SignedInLimited,
        /// A role the caller does not have.
        OtherRole,
        /// Any signed-in user, with `on_unauthenticated: deny` (an API under a browser app).
        SignedInDeny,
    }

    const LIMIT: RateLimit = RateLimit {
        requests: 10,
        per: Duration::from_secs(60),
        key: RateKey::Ip,
    };

    fn decision(rule: Rule, signed_in: bool) -> Decision {
        let allow = |rate_limit| Decision::Allow {
            rule: 0,
            rate_limit,
            upstream: Some("app".into()),
        };
        match (rule, signed_in) {
            (Rule::Public, _) => allow(None),
            (Rule::PublicLimited, _) => allow(Some(LIMIT)),
            (Rule::SignedIn, true) => allow(None),
            (Rule::SignedInLimited, true) => allow(Some(LIMIT)),
            (Rule::OtherRole, true) => Decision::Forbidden {
                rule: Some(0),
                denial: crate::policy::Denial::Role,
                detail: "Requires role admin".into(),
            },
            (Rule::SignedInDeny, true) => allow(None),
            (Rule::SignedInDeny, false) => Decision::Unauthenticated {
                rule: Some(0),
                on_unauthenticated: OnUnauthenticated::Deny,
            },
            (_, false) => Decision::Unauthenticated {
                rule: Some(0),
                on_unauthenticated: OnUnauthenticated::Redirect,
            },
        }
    }

    fn rate(allowed: bool) -> RateOutcome {
        RateOutcome {
            allowed,
            limit: 10,
            remaining: if allowed { 4 } else { 0 },
            reset: Duration::from_secs(30),
            retry_after: (!allowed).then_some(Duration::from_millis(2_500)),
        }
    }

    fn refuse(reason: R, error: GatewayError) -> Step {
        Step::Refuse(Refusal::new(reason, error))
    }

    fn answered(revoked: bool, rate: Option<RateOutcome>) -> GateResult {
        GateResult::Answered(GateOutcome { rate, revoked })
    }

    fn forward(as_caller: bool, rate: Option<RateOutcome>) -> Step {
        Step::Forward {
            as_caller,
            upstream: Some("app".into()),
            rate,
        }
    }

    /// What, the token, the rule, Redis' answer, `on_redis_error` for rate and revocation,
    /// and the verdict.
    type Case = (
        &'static str,
        TokenKind,
        Rule,
        GateResult,
        [FailMode; 2],
        Step,
    );

    const DENY: FailMode = FailMode::Deny;
    const ALLOW: FailMode = FailMode::Allow;

    #[test]
    fn every_token_rule_and_gate_answer_has_one_verdict() {
        use GatewayError as E;
        use Rule::*;
        use TokenKind::{Absent, Invalid, Valid};
        let not_authenticated = || refuse(R::NoToken, E::unauthorized("Not authenticated"));
        let bad_token = || refuse(R::BadToken, E::invalid_token("Invalid or expired token"));
        let revoked = || refuse(R::Revoked, E::invalid_token("Token has been revoked"));
        let rate_down = || refuse(R::Unavailable, E::Unavailable("Rate limiter unavailable"));
        let revocation_down = || {
            refuse(
                R::Unavailable,
                E::Unavailable("Revocation service unavailable"),
            )
        };
        let too_many = || {
            refuse(
                R::RateLimit,
                E::TooManyRequests {
                    retry_after_secs: 3,
                },
            )
        };
        let count_anonymously = || Step::CountAnonymously {
            rate_limit: LIMIT,
            upstream: Some("app".into()),
        };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Nobody signed in.
            ("anonymous, public", Absent, Public, answered(false, None), [DENY, DENY], forward(false, None)),
            ("anonymous, within limit", Absent, PublicLimited, answered(false, Some(rate(true))), [DENY, DENY], forward(false, Some(rate(true)))),
            ("anonymous, over limit", Absent, PublicLimited, answered(false, Some(rate(false))), [ALLOW, ALLOW], too_many()),
            ("anonymous, signed-in rule", Absent, SignedIn, GateResult::NotAsked, [ALLOW, ALLOW], not_authenticated()),
            ("anonymous, role rule", Absent, OtherRole, GateResult::NotAsked, [ALLOW, ALLOW], not_authenticated()),
            ("anonymous, public, Redis down", Absent, Public, GateResult::Unavailable, [DENY, DENY], forward(false, None)),
            ("anonymous, limited, Redis down, rate deny", Absent, PublicLimited, GateResult::Unavailable, [DENY, ALLOW], rate_down()),
            ("anonymous, limited, Redis down, rate allow", Absent, PublicLimited, GateResult::Unavailable, [ALLOW, DENY], forward(false, None)),
            // A token that failed verification counts as none, but says so where one is needed.
            ("bad token, signed-in rule", Invalid, SignedIn, GateResult::NotAsked, [ALLOW, ALLOW], bad_token()),
            ("bad token, role rule", Invalid, OtherRole, GateResult::NotAsked, [ALLOW, ALLOW], bad_token()),
            ("bad token, public", Invalid, Public, answered(false, None), [DENY, DENY], forward(false, None)),
            ("bad token, public, Redis down", Invalid, PublicLimited, GateResult::Unavailable, [ALLOW, DENY], forward(false, None)),
            // A verified token.
            ("signed in", Valid, SignedIn, answered(false, None), [DENY, DENY], forward(true, None)),
            ("signed in, within limit", Valid, SignedInLimited, answered(false, Some(rate(true))), [DENY, DENY], forward(true, Some(rate(true)))),
            ("signed in, over limit", Valid, SignedInLimited, answered(false, Some(rate(false))), [DENY, DENY], too_many()),
            ("signed in, wrong role", Valid, OtherRole, GateResult::NotAsked, [DENY, DENY], refuse(R::Role, E::InsufficientScope("Requires role admin".into()))),
            ("signed in, public", Valid, Public, answered(false, None), [DENY, DENY], forward(true, None)),
            // Revoked: on as nobody where anyone may go, refused elsewhere.
            ("revoked, signed-in rule", Valid, SignedIn, answered(true, None), [ALLOW, ALLOW], revoked()),
            ("revoked, limited signed-in rule", Valid, SignedInLimited, answered(true, None), [ALLOW, ALLOW], revoked()),
            ("revoked, public", Valid, Public, answered(true, None), [DENY, DENY], forward(false, None)),
            ("revoked, limited public", Valid, PublicLimited, answered(true, None), [DENY, DENY], count_anonymously()),
            // Redis down with a verified token, for every kind of rule.
            ("Redis down, signed-in, revocation deny", Valid, SignedIn, GateResult::Unavailable, [ALLOW, DENY], revocation_down()),
            ("Redis down, signed-in, revocation allow", Valid, SignedIn, GateResult::Unavailable, [DENY, ALLOW], forward(true, None)),
            ("Redis down, limited signed-in, rate deny", Valid, SignedInLimited, GateResult::Unavailable, [DENY, ALLOW], rate_down()),
            ("Redis down, limited signed-in, rate deny first", Valid, SignedInLimited, GateResult::Unavailable, [DENY, DENY], rate_down()),
            ("Redis down, limited signed-in, revocation deny", Valid, SignedInLimited, GateResult::Unavailable, [ALLOW, DENY], revocation_down()),
            ("Redis down, limited signed-in, both allow", Valid, SignedInLimited, GateResult::Unavailable, [ALLOW, ALLOW], forward(true, None)),
            ("Redis down, public, revocation deny", Valid, Public, GateResult::Unavailable, [DENY, DENY], forward(false, None)),
            ("Redis down, public, revocation allow", Valid, Public, GateResult::Unavailable, [DENY, ALLOW], forward(true, None)),
            ("Redis down, limited public, rate deny", Valid, PublicLimited, GateResult::Unavailable, [DENY, ALLOW], rate_down()),
            ("Redis down, limited public, revocation deny", Valid, PublicLimited, GateResult::Unavailable, [ALLOW, DENY], forward(false, None)),
            ("Redis down, limited public, both allow", Valid, PublicLimited, GateResult::Unavailable, [ALLOW, ALLOW], forward(true, None)),
            ("Redis down, wrong role", Valid, OtherRole, GateResult::NotAsked, [DENY, DENY], refuse(R::Role, E::InsufficientScope("Requires role admin".into()))),
        ];
        run(cases, false);
    }

    fn run(cases: Vec<Case>, navigation: bool) {
        for (what, token, rule, gate, [rate, revocation], expected) in cases {
            let signed_in = token == TokenKind::Valid;
            let decided = decision(rule, signed_in);
            let counted = matches!(
                decided,
                Decision::Allow {
                    rate_limit: Some(_),
                    ..
                }
            );
            let step = verdict(
                token,
                decided,
                gate,
                counted,
                || decision(rule, false),
                FailModes { rate, revocation },
                navigation,
            );
            assert_eq!(step, expected, "{what} (navigation: {navigation})");
        }
    }

    /// The same questions asked by a browser navigating (`navigation::is_navigation`): where
    /// an API client gets 401, the browser is sent to sign in, unless the rule says
    /// `on_unauthenticated: deny`. Everything a token or Redis decides is as before.
    #[test]
    fn a_browser_navigation_refused_for_lack_of_a_token_is_sent_to_sign_in() {
        use GatewayError as E;
        use Rule::*;
        use TokenKind::{Absent, Invalid, Valid};
        let sign_in = || Step::SignIn;
        let not_authenticated = || refuse(R::NoToken, E::unauthorized("Not authenticated"));
        let bad_token = || refuse(R::BadToken, E::invalid_token("Invalid or expired token"));
        let revoked = || refuse(R::Revoked, E::invalid_token("Token has been revoked"));
        let revocation_down = || {
            refuse(
                R::Unavailable,
                E::Unavailable("Revocation service unavailable"),
            )
        };
        let forbidden = || refuse(R::Role, E::InsufficientScope("Requires role admin".into()));
        let too_many = || {
            refuse(
                R::RateLimit,
                E::TooManyRequests {
                    retry_after_secs: 3,
                },
            )
        };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Nobody signed in, or a cookie that failed verification (expired, forged) and
            // could not be renewed: sign in, wherever a token is needed.
            ("anonymous, signed-in rule", Absent, SignedIn, GateResult::NotAsked, [ALLOW, ALLOW], sign_in()),
            ("anonymous, limited signed-in rule", Absent, SignedInLimited, GateResult::NotAsked, [ALLOW, ALLOW], sign_in()),
            ("anonymous, role rule", Absent, OtherRole, GateResult::NotAsked, [ALLOW, ALLOW], sign_in()),
            ("bad token, signed-in rule", Invalid, SignedIn, GateResult::NotAsked, [ALLOW, ALLOW], sign_in()),
            ("bad token, role rule", Invalid, OtherRole, GateResult::NotAsked, [ALLOW, ALLOW], sign_in()),
            // `on_unauthenticated: deny` keeps the 401 for browsers too.
            ("anonymous, deny rule", Absent, SignedInDeny, GateResult::NotAsked, [ALLOW, ALLOW], not_authenticated()),
            ("bad token, deny rule", Invalid, SignedInDeny, GateResult::NotAsked, [ALLOW, ALLOW], bad_token()),
            // Public rules never need a token.
            ("anonymous, public", Absent, Public, answered(false, None), [DENY, DENY], forward(false, None)),
            ("bad token, public", Invalid, Public, answered(false, None), [DENY, DENY], forward(false, None)),
            ("anonymous, over limit", Absent, PublicLimited, answered(false, Some(rate(false))), [ALLOW, ALLOW], too_many()),
            // Signed in: signing in again would not help a 403.
            ("signed in", Valid, SignedIn, answered(false, None), [DENY, DENY], forward(true, None)),
            ("signed in, wrong role", Valid, OtherRole, GateResult::NotAsked, [DENY, DENY], forbidden()),
            ("signed in, deny rule", Valid, SignedInDeny, answered(false, None), [DENY, DENY], forward(true, None)),
            // Revoked (signed out elsewhere): the browser signs in again, unless the rule
            // says deny; where anyone may go, it goes on anonymously.
            ("revoked, signed-in rule", Valid, SignedIn, answered(true, None), [ALLOW, ALLOW], sign_in()),
            ("revoked, role rule", Valid, OtherRole, GateResult::NotAsked, [ALLOW, ALLOW], forbidden()),
            ("revoked, deny rule", Valid, SignedInDeny, answered(true, None), [ALLOW, ALLOW], revoked()),
            ("revoked, public", Valid, Public, answered(true, None), [DENY, DENY], forward(false, None)),
            // Redis down: a dependency is missing, which signing in would not fix.
            ("Redis down, signed-in, revocation deny", Valid, SignedIn, GateResult::Unavailable, [ALLOW, DENY], revocation_down()),
            ("Redis down, signed-in, revocation allow", Valid, SignedIn, GateResult::Unavailable, [DENY, ALLOW], forward(true, None)),
        ];
        run(cases, true);
    }

    #[test]
    fn a_session_is_renewed_only_where_a_missing_token_is_all_that_refuses_it() {
        use TokenKind::{Absent, Invalid, Valid};
        // (what, token, may renew, Authorization, refresh cookie, refused anonymously, renew?)
        #[rustfmt::skip]
        let cases = [
            ("expired cookie, protected",        Invalid, true,  false, true,  true,  true),
            ("only the refresh cookie",          Absent,  true,  false, true,  true,  true),
            ("valid token",                      Valid,   true,  false, true,  true,  false),
            ("no refresh cookie",                Invalid, true,  false, false, true,  false),
            ("public rule",                      Invalid, true,  false, true,  false, false),
            ("a bearer caller",                  Invalid, true,  true,  true,  true,  false),
            ("cross-site unsafe request",        Invalid, false, false, true,  true,  false),
        ];
        for (what, token, may_renew, bearer, refresh, refused, expected) in cases {
            assert_eq!(
                wants_renewal(token, may_renew, bearer, refresh, || refused),
                expected,
                "{what}"
            );
        }
        // The policy is asked only when everything else already says yes.
        let asked = std::cell::Cell::new(false);
        wants_renewal(Valid, true, false, true, || {
            asked.set(true);
            true
        });
        assert!(!asked.get());
    }

    #[test]
    fn an_anonymous_recount_is_judged_like_any_rate_check() {
        let cases = [
            (
                "within",
                answered(false, Some(rate(true))),
                DENY,
                Ok(Some(rate(true))),
            ),
            (
                "over",
                answered(false, Some(rate(false))),
                ALLOW,
                Err(Refusal::new(
                    R::RateLimit,
                    GatewayError::TooManyRequests {
                        retry_after_secs: 3,
                    },
                )),
            ),
            (
                "Redis down, deny",
                GateResult::Unavailable,
                DENY,
                Err(Refusal::new(
                    R::Unavailable,
                    GatewayError::Unavailable("Rate limiter unavailable"),
                )),
            ),
            (
                "Redis down, allow",
                GateResult::Unavailable,
                ALLOW,
                Ok(None),
            ),
            ("not asked", GateResult::NotAsked, DENY, Ok(None)),
        ];
        for (what, gate, on_redis_error, expected) in cases {
            assert_eq!(rate_verdict(gate, on_redis_error), expected, "{what}");
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
}
