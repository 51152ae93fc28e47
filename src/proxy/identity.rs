//! What an upstream is told about the caller: the `X-Auth-*` headers of contract 6.1 and,
//! when `identity.assertion` is on, `X-Auth-Assertion`, a short-lived JWT signed with the
//! gateway's active asymmetric key (contract 8). [`Identify::set`] is the one place both are
//! set, for a forwarded request and for a forward-auth answer alike, so that the assertion
//! goes wherever the identity goes.
//!
//! A signature costs tens of microseconds, more than the rest of a forwarded request's
//! header work, so assertions are kept per worker, one per (session, upstream), and handed
//! out again while at least half of their lifetime is left ([`reusable`]); a caller sending
//! many requests pays for one signature per half lifetime. The cache is bounded: a full
//! worker's map is emptied and refilled.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::access::VerifiedToken;
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::token::{AccessClaims, AssertionClaims, TokenKeys};

/// The assertion's header. Client-sent copies go with every other `X-Auth-*` header
/// (`headers::StripList` always strips that prefix), before this is set.
pub static X_AUTH_ASSERTION: HeaderName = HeaderName::from_static("x-auth-assertion");

/// Assertions kept per worker before its map is emptied.
const ASSERTIONS_PER_WORKER: usize = 10_000;

/// Sets the caller's identity on a request headed upstream.
pub struct Identify {
    assertions: Option<Assertions>,
}

impl Identify {
    /// Identity headers only: `identity.assertion` is off.
    pub fn headers_only() -> Identify {
        Identify { assertions: None }
    }

    /// Identity headers and a signed assertion on each. `keys` must sign asymmetrically
    /// (configuration validation says so; `None` here if they somehow do not).
    pub fn with_assertions(
        keys: Arc<TokenKeys>,
        clock: Arc<Clock>,
        ttl: Duration,
        workers: usize,
    ) -> Option<Identify> {
        if !keys.signs_asymmetrically() {
            return None;
        }
        Some(Identify {
            assertions: Some(Assertions {
                keys,
                clock,
                ttl: ttl.as_secs().max(1),
                shards: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
                hasher: std::collections::hash_map::RandomState::new(),
            }),
        })
    }

    /// Sets the identity of `caller` (none for an anonymous request) for `upstream` (the
    /// upstream's name, the assertion's audience). Call it after every client-sent
    /// `X-Auth-*` header is gone. Fails only when an assertion cannot be signed: an
    /// authenticated request then is not forwarded at all rather than without it.
    pub fn set(
        &self,
        headers: &mut HeaderMap,
        caller: Option<&VerifiedToken>,
        upstream: &str,
    ) -> Result<(), GatewayError> {
        let Some(caller) = caller else {
            return Ok(());
        };
        caller.identity.insert_into(headers);
        if let Some(assertions) = &self.assertions {
            let assertion = assertions.get(&caller.claims, upstream)?;
            headers.insert(X_AUTH_ASSERTION.clone(), assertion);
        }
        Ok(())
    }
}

struct Assertions {
    keys: Arc<TokenKeys>,
    clock: Arc<Clock>,
    /// Seconds.
    ttl: u64,
    /// One map per worker: each is only ever locked by its own thread.
    shards: Vec<Mutex<HashMap<u64, Kept>>>,
    /// Keys the maps by (session, upstream); random per process.
    hasher: std::collections::hash_map::RandomState,
}

/// An assertion already signed, with everything it says, compared on every hit (the key is
/// only a hash).
struct Kept {
    sid: Box<str>,
    upstream: Box<str>,
    sub: Box<str>,
    email: Box<str>,
    role: Box<str>,
    exp: u64,
    value: HeaderValue,
}

impl Kept {
    fn says(&self, claims: &AccessClaims, upstream: &str) -> bool {
        *self.sid == *claims.sid
            && *self.upstream == *upstream
            && *self.sub == *claims.sub
            && *self.email == *claims.email
            && *self.role == *claims.role
    }
}

impl Assertions {
    fn get(&self, claims: &AccessClaims, upstream: &str) -> Result<HeaderValue, GatewayError> {
        let now = self.clock.unix_now();
        let exp = expiry(now, self.ttl, claims.exp);
        let key = self.hasher.hash_one((&claims.sid, upstream));
        let shard = &self.shards[crate::workers::current_worker() % self.shards.len()];
        {
            let kept = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(kept) = kept.get(&key) {
                if kept.says(claims, upstream) && reusable(kept.exp, now, exp, self.ttl) {
                    return Ok(kept.value.clone());
                }
            }
        }
        // Signed outside the lock; two requests racing here both sign, and the later wins.
        let signed = self
            .keys
            .sign_assertion(&AssertionClaims {
                iss: &self.keys.settings().issuer,
                aud: upstream,
                sub: &claims.sub,
                email: &claims.email,
                role: &claims.role,
                sid: &claims.sid,
                iat: now,
                exp,
            })
            .map_err(|error| {
                tracing::error!(%error, "identity assertion could not be signed");
                GatewayError::Internal
            })?;
        let value = HeaderValue::try_from(signed).map_err(|_| GatewayError::Internal)?;
        let mut kept = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() >= ASSERTIONS_PER_WORKER && !kept.contains_key(&key) {
            kept.clear();
        }
        kept.insert(
            key,
            Kept {
                sid: claims.sid.as_str().into(),
                upstream: upstream.into(),
                sub: claims.sub.as_str().into(),
                email: claims.email.as_str().into(),
                role: claims.role.as_str().into(),
                exp,
                value: value.clone(),
            },
        );
        Ok(value)
    }
}

/// When an assertion signed at `now` expires: `ttl` seconds on, but never after the access
/// token it speaks for (`token_exp`), and at least a second on (a token accepted within the
/// configured leeway after its `exp`).
pub fn expiry(now: u64, ttl: u64, token_exp: u64) -> u64 {
    now.saturating_add(ttl)
        .min(token_exp)
        .max(now.saturating_add(1))
}

/// Whether an assertion that expires at `kept_exp` may be handed out again at `now`, when a
/// new one would expire at `fresh_exp`: while at least half of `ttl` is left, or when a new
/// one would expire no later (the access token ends first).
pub fn reusable(kept_exp: u64, now: u64, fresh_exp: u64, ttl: u64) -> bool {
    kept_exp > now && kept_exp >= fresh_exp.min(now.saturating_add(ttl.div_ceil(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_lives_its_ttl_but_never_past_the_token() {
        // (now, ttl, token exp, expected exp)
        let cases = [
            (1000, 60, 5000, 1060),
            (1000, 60, 1030, 1030),
            (1000, 60, 1000, 1001),
            (1000, 60, 990, 1001),
            (1000, 1, 5000, 1001),
        ];
        for (now, ttl, token_exp, expected) in cases {
            assert_eq!(
                expiry(now, ttl, token_exp),
                expected,
                "{now} {ttl} {token_exp}"
            );
        }
    }

    #[test]
    fn a_kept_assertion_is_reused_while_half_its_life_is_left() {
        // (kept exp, now, fresh exp, ttl, reusable)
        let cases = [
            (1060, 1000, 1060, 60, true),
            (1060, 1030, 1090, 60, true),
            (1060, 1031, 1091, 60, false),
            (1060, 1059, 1119, 60, false),
            (1060, 1060, 1120, 60, false),
            // The access token ends at 1070: a new one would say 1070 too.
            (1070, 1050, 1070, 60, true),
            (1065, 1050, 1070, 60, false),
            // Odd lifetimes round the half up.
            (1061, 1030, 1091, 61, true),
            (1061, 1031, 1092, 61, false),
        ];
        for (kept, now, fresh, ttl, expected) in cases {
            assert_eq!(
                reusable(kept, now, fresh, ttl),
                expected,
                "kept {kept} now {now} fresh {fresh} ttl {ttl}"
            );
        }
    }
}
