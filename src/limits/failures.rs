//! Failed logins per client address, across accounts (password spraying): an exact sliding
//! log in Redis per client, of up to `limit` entries. A login takes a place in its client's
//! log before its password is verified, and is refused (429) when the window is full; it gives
//! the place back when the password matched. What stays in the log is failures, and since the
//! test and the add are one step in Redis (the gate's log script), no more than `limit`
//! attempts of a client are ever verified and failed within a window, however many run at once
//! or through however many instances. The decision is [`window::decide_log`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::gate::{Limit, RateOutcome, LOG_SCRIPT};
use super::{window, Redis, RedisError, RedisOperation};

/// The logs of every client, in one Redis.
pub struct FailureLog {
    redis: Redis,
    /// Makes each entry's member unique across instances: random per log, then a sequence.
    nonce: String,
    sequence: AtomicU64,
}

/// A place taken in a client's log: given back when the login turns out not to be a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    key: String,
    member: String,
}

impl FailureLog {
    pub fn new(redis: Redis) -> FailureLog {
        FailureLog {
            redis,
            nonce: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Takes a place in `client`'s log at `now_ms`, unless `limit` failures fill its window:
    /// the outcome, and the place when one was taken.
    pub async fn take(
        &self,
        client: &str,
        limit: Limit,
        now_ms: u64,
    ) -> Result<(RateOutcome, Option<Place>), RedisError> {
        let length_ms = window::length_ms(limit.window);
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            key: self.redis.bucket_key("login-failures", client),
            member: format!("{now_ms}:{}:{sequence}", self.nonce),
        };
        let mut connection = self.redis.connection();
        let mut script = redis::cmd("EVAL");
        script
            .arg(LOG_SCRIPT)
            .arg(1)
            .arg(&place.key)
            .arg(now_ms)
            .arg(length_ms)
            .arg(limit.requests)
            .arg(&place.member);
        let times: Vec<f64> = self
            .redis
            .timed(
                RedisOperation::LoginFailuresTake,
                script.query_async(&mut connection),
            )
            .await?;
        let times: Vec<u64> = times.into_iter().map(|time| time as u64).collect();
        let outcome = outcome(&times, now_ms, limit);
        Ok((outcome, outcome.allowed.then_some(place)))
    }

    /// Gives a place back: the login it was taken for did not fail.
    pub async fn give_back(&self, place: &Place) -> Result<(), RedisError> {
        let mut connection = self.redis.connection();
        let mut remove = redis::cmd("ZREM");
        remove.arg(&place.key).arg(&place.member);
        self.redis
            .timed(
                RedisOperation::LoginFailuresGiveBack,
                remove.query_async::<()>(&mut connection),
            )
            .await?;
        Ok(())
    }
}

/// What a login finding `times` (ms) in its client's log at `now_ms` is answered: within the
/// limit it is admitted and counted; over it, refused until the oldest failure that fills the
/// window leaves it.
pub fn outcome(times: &[u64], now_ms: u64, limit: Limit) -> RateOutcome {
    let decided = window::decide_log(
        times,
        now_ms,
        window::length_ms(limit.window),
        u64::from(limit.requests),
        true,
    );
    RateOutcome {
        allowed: decided.decision.allowed,
        limit: limit.requests,
        remaining: u32::try_from(decided.decision.remaining)
            .unwrap_or(u32::MAX)
            .min(limit.requests),
        reset: Duration::from_millis(decided.reset_ms),
        retry_after: decided.decision.retry_after_ms.map(Duration::from_millis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (case, failures in the log (seconds), now (seconds), limit, admitted, Retry-After (s))
    #[test]
    fn outcomes() {
        let limit = |requests| Limit {
            requests,
            window: Duration::from_secs(600),
        };
        type Case = (&'static str, &'static [u64], u64, u32, bool, Option<u64>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("an empty log", &[], 1_000, 3, true, None),
            ("room for one more", &[900, 950], 1_000, 3, true, None),
            ("full: wait for the oldest", &[500, 900, 950], 1_000, 3, false, Some(100)),
            ("the oldest has left", &[300, 900, 950], 1_000, 3, true, None),
            ("leaving exactly now", &[400, 900, 950], 1_000, 3, true, None),
            ("over by concurrency: wait for enough to leave", &[500, 600, 900, 950], 1_000, 3, false, Some(200)),
            ("a limit of one", &[990], 1_000, 1, false, Some(590)),
            ("a large limit is exact too", &[1; 100], 2, 100, false, Some(599)),
        ];
        for &(case, times, now, requests, allowed, retry_after) in cases {
            let times: Vec<u64> = times.iter().map(|seconds| seconds * 1000).collect();
            let decided = outcome(&times, now * 1000, limit(requests));
            assert_eq!(decided.allowed, allowed, "{case}");
            assert_eq!(
                decided.retry_after,
                retry_after.map(Duration::from_secs),
                "{case}"
            );
        }
    }
}
