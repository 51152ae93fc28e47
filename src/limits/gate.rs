//! One Redis round trip per forwarded request: the sliding-window rate limit and, for a
//! signed-in caller, the revocation check, together in one Lua script so that several gateway
//! instances enforce one limit and see one revocation list.
//!
//! The script runs atomically in Redis, so concurrent requests through any number of
//! instances are counted one after another and never overshoot the limit. The arithmetic is
//! [`super::window`]'s, mirrored in Lua; a test holds the two to the same answers.
//!
//! The time comes from the caller (the gateway's clock), not from Redis `TIME`: it keeps the
//! script a function of its arguments, which is what lets tests step through windows. Instances
//! whose clocks differ by a few milliseconds place a request a few milliseconds differently in
//! the window, which moves the estimate by a negligible fraction of a request.
//!
//! The script is sent as `EVALSHA`: one round trip. When Redis lacks it (first use after a
//! Redis start or a failover) the `redis` crate loads it with `SCRIPT LOAD` and retries, so
//! that one call costs three.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::window;
use super::Redis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOutcome {
    pub allowed: bool,
    pub limit: u32,
    /// How many more requests the window has room for now, this one included if it was counted.
    pub remaining: u32,
    /// Until the current fixed window ends.
    pub reset: Duration,
    /// For a refused request: until one more would be admitted if nothing else is meanwhile.
    /// Up to two windows, since a full window keeps weighing on most of the next.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOutcome {
    /// None when no limit was asked.
    pub rate: Option<RateOutcome>,
    /// False when no token was given.
    pub revoked: bool,
}

/// What to check for one request.
#[derive(Debug, Clone, Copy)]
pub struct GateCheck<'a> {
    /// The rate-limit bucket, e.g. `ip:203.0.113.9` or `user:<uuid>` or
    /// `auth-login:ip:1.2.3.4`, and its limit. None: no rate limit.
    pub bucket: Option<(&'a str, Limit)>,
    /// A signed-in caller's session id, user id and token issue time (unix seconds).
    /// None: anonymous.
    pub token: Option<(&'a str, &'a str, u64)>,
    pub now_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// KEYS, in this order, each pair only when asked for:
///   the bucket's current and previous window counters          (ARGV[1] == '1')
///   the session's revocation key and the user's not-before key  (ARGV[2] == '1')
/// ARGV[3] the limit, ARGV[4] the window length in ms, ARGV[5] the ms elapsed in the current
/// window, ARGV[6] a counter's lifetime in ms, ARGV[7] the token's issue time in unix seconds.
/// Returns {allowed, remaining, retry_after_ms, revoked} as whole numbers.
const SOURCE: &str = r#"
-- Mirrors window.rs: the estimate inequality multiplied through by the window length, so all
-- values are whole numbers, which Lua's doubles hold exactly below 2^53 (the caller bounds
-- the window so that they stay below it).

-- a / b is rounded to the nearest double, which near 2^53 can be the next whole number up;
-- step back onto the exact floor.
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- window.rs retry_after_ms: the first millisecond from now at which a request is admitted,
-- supposing nothing else is admitted meanwhile.
local function retry_after_ms(previous, current, elapsed, length, limit)
  -- Later in this window, as the previous window's share shrinks.
  if previous > 0 and current < limit then
    local slack = floor_div((limit - current - 1) * length, previous)
    if slack >= 1 then
      return length - slack - elapsed
    end
  end
  -- In the next window, where this window's count is the one that decays.
  if limit >= 1 then
    local slack = length
    if current > 0 then
      slack = math.min(floor_div((limit - 1) * length, current), length)
    end
    if slack >= 1 then
      return (length - elapsed) + (length - slack)
    end
    return 2 * length - elapsed
  end
  -- A limit of zero admits nothing, ever.
  return length
end

local rate = ARGV[1] == '1'

-- Revoked when the session is, or when the token was issued before the user's not-before
-- time: exactly revocation.rs's test.
local revoked = 0
if ARGV[2] == '1' then
  local session = rate and 3 or 1
  if redis.call('EXISTS', KEYS[session]) == 1 then
    revoked = 1
  else
    local not_before = tonumber(redis.call('GET', KEYS[session + 1]))
    if not_before and tonumber(ARGV[7]) < not_before then
      revoked = 1
    end
  end
end
if not rate then
  return {0, 0, 0, revoked}
end

local limit = tonumber(ARGV[3])
local length = tonumber(ARGV[4])
local elapsed = tonumber(ARGV[5])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
local previous = tonumber(redis.call('GET', KEYS[2])) or 0

local allowed = previous * (length - elapsed) + (current + 1) * length <= limit * length
local retry = 0
if not allowed then
  retry = retry_after_ms(previous, current, elapsed, length, limit)
elseif revoked == 0 then
  -- Counted only when admitted: a refused request costs nothing, so a client that keeps
  -- knocking is back in as soon as the window has slid, and not pushed further out.
  current = redis.call('INCR', KEYS[1])
  if current == 1 then
    -- The counter is read as the previous window until the next window ends.
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end

local room = limit * length - previous * (length - elapsed) - current * length
local remaining = 0
if room > 0 then
  remaining = floor_div(room, length)
end
return {allowed and 1 or 0, remaining, retry, revoked}
"#;

/// Hashed once; every `Gate` shares it.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

/// The per-request check, shared by every connection task of one gateway instance.
#[derive(Clone)]
pub struct Gate {
    redis: Redis,
}

impl Gate {
    pub fn new(redis: Redis) -> Gate {
        Gate { redis }
    }

    /// Checks the rate limit and the revocation lists in one round trip, counting the request
    /// against the limit when it is admitted.
    ///
    /// A request whose token is revoked is not counted: the gateway answers it 401 whatever the
    /// limit says, and counting it would let whoever holds a revoked token use up its owner's
    /// budget (a `user:` bucket) or a shared address's. Its `rate` then reports whether it
    /// would have been admitted and the room left, unchanged.
    ///
    /// Nothing asked (no bucket, no token): answered without touching Redis.
    pub async fn check(&self, check: &GateCheck<'_>) -> Result<GateOutcome, GateError> {
        if check.bucket.is_none() && check.token.is_none() {
            return Ok(GateOutcome {
                rate: None,
                revoked: false,
            });
        }

        let placed = check
            .bucket
            .map(|(bucket, limit)| Placed::new(bucket, limit, check.now_ms));

        let mut invocation = SCRIPT.prepare_invoke();
        if let Some(placed) = &placed {
            let index = i128::from(placed.index);
            invocation
                .key(self.rate_key(placed.bucket, placed.length_ms, index))
                .key(self.rate_key(placed.bucket, placed.length_ms, index - 1));
        }
        if let Some((session_id, user_id, _)) = check.token {
            invocation
                .key(self.redis.key(&["revoked", "sid", session_id]))
                .key(self.redis.key(&["revoked", "user-nbf", user_id]));
        }
        let (requests, length_ms, elapsed_ms) = placed.as_ref().map_or((0, 1, 0), |placed| {
            (placed.limit.requests, placed.length_ms, placed.elapsed_ms)
        });
        invocation
            .arg(u8::from(placed.is_some()))
            .arg(u8::from(check.token.is_some()))
            .arg(requests)
            .arg(length_ms)
            .arg(elapsed_ms)
            .arg(2 * length_ms)
            .arg(check.token.map_or(0, |(_, _, issued_at)| issued_at));

        let mut connection = self.redis.connection();
        let (allowed, remaining, retry_after_ms, revoked): (u64, u64, u64, u64) =
            invocation.invoke_async(&mut connection).await?;

        let rate = placed.map(|placed| RateOutcome {
            allowed: allowed == 1,
            limit: placed.limit.requests,
            remaining: u32::try_from(remaining)
                .unwrap_or(u32::MAX)
                .min(placed.limit.requests),
            reset: Duration::from_millis(placed.length_ms - placed.elapsed_ms),
            retry_after: (allowed != 1).then(|| Duration::from_millis(retry_after_ms)),
        });
        Ok(GateOutcome {
            rate,
            revoked: revoked == 1,
        })
    }

    /// `{prefix}rate:{bucket}:{window_ms}:{window_index}`. The window length is part of the key
    /// so that changing a limit's window starts new counts instead of misreading old ones. The
    /// index is signed only so that the window before index 0 has a name (one never written).
    fn rate_key(&self, bucket: &str, length_ms: u64, index: i128) -> String {
        self.redis
            .key(&["rate", bucket, &length_ms.to_string(), &index.to_string()])
    }
}

/// Where one request falls among its bucket's fixed windows.
struct Placed<'a> {
    bucket: &'a str,
    limit: Limit,
    length_ms: u64,
    index: u64,
    elapsed_ms: u64,
}

impl<'a> Placed<'a> {
    fn new(bucket: &'a str, limit: Limit, now_ms: u64) -> Placed<'a> {
        let length_ms = window::length_ms(limit.window, limit.requests);
        let (index, elapsed_ms) = window::position(now_ms, length_ms);
        Placed {
            bucket,
            limit,
            length_ms,
            index,
            elapsed_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use redis::AsyncCommands;

    use super::window::State;
    use super::*;

    const REDIS_URL: &str = "redis://127.0.0.1:6379/";
    /// A whole number of seconds, so that 1 s windows start here.
    const T0: u64 = 1_700_000_000_000;
    const FIVE_A_SECOND: Limit = Limit {
        requests: 5,
        window: Duration::from_secs(1),
    };

    /// Each test's keys under their own prefix, so tests run in parallel and never meet
    /// another run's keys; every key written expires on its own.
    fn prefix() -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "gate-test:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn redis(prefix: &str) -> Redis {
        Redis::connect(REDIS_URL, prefix, Duration::from_secs(2)).expect("valid url")
    }

    fn unreachable_redis() -> Redis {
        Redis::connect(
            "redis://127.0.0.1:1/",
            &prefix(),
            Duration::from_millis(200),
        )
        .expect("valid url")
    }

    fn rate_check(bucket: &str, limit: Limit, now_ms: u64) -> GateCheck<'_> {
        GateCheck {
            bucket: Some((bucket, limit)),
            token: None,
            now_ms,
        }
    }

    async fn rate(gate: &Gate, bucket: &str, limit: Limit, now_ms: u64) -> RateOutcome {
        let outcome = gate
            .check(&rate_check(bucket, limit, now_ms))
            .await
            .expect("redis");
        assert!(!outcome.revoked);
        outcome.rate.expect("a limit was asked")
    }

    async fn counter(gate: &Gate, bucket: &str, length_ms: u64, index: u64) -> Option<u64> {
        let key = gate.rate_key(bucket, length_ms, i128::from(index));
        gate.redis.connection().get(key).await.expect("redis")
    }

    async fn set(gate: &Gate, parts: &[&str], value: u64) {
        let key = gate.redis.key(parts);
        let mut connection = gate.redis.connection();
        connection
            .set_ex::<_, _, ()>(key, value, 60)
            .await
            .expect("redis");
    }

    fn allowed(remaining: u32, reset_ms: u64) -> RateOutcome {
        RateOutcome {
            allowed: true,
            limit: 5,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: None,
        }
    }

    fn refused(reset_ms: u64, retry_after_ms: u64) -> RateOutcome {
        RateOutcome {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset: Duration::from_millis(reset_ms),
            retry_after: Some(Duration::from_millis(retry_after_ms)),
        }
    }

    #[tokio::test]
    async fn five_a_second_then_one_every_fifth_of_a_second() {
        let gate = Gate::new(redis(&prefix()));
        let bucket = "ip:203.0.113.9";
        for remaining in (0..5).rev() {
            assert_eq!(
                rate(&gate, bucket, FIVE_A_SECOND, T0).await,
                allowed(remaining, 1000)
            );
        }
        // The sixth waits out this window and 200 ms of the next, until the five weigh
        // 5 × 800/1000 = 4.
        assert_eq!(
            rate(&gate, bucket, FIVE_A_SECOND, T0).await,
            refused(1000, 1200)
        );
        assert_eq!(
            rate(&gate, bucket, FIVE_A_SECOND, T0 + 1199).await,
            refused(801, 1)
        );
        assert_eq!(
            rate(&gate, bucket, FIVE_A_SECOND, T0 + 1200).await,
            allowed(0, 800)
        );
        // From here the old window frees one request per 200 ms (1000 ms / 5), and each is
        // taken at once.
        for at in [T0 + 1200, T0 + 1400, T0 + 1600] {
            let reset = 2000 - (at - T0);
            assert_eq!(
                rate(&gate, bucket, FIVE_A_SECOND, at).await,
                refused(reset, 200)
            );
            assert_eq!(
                rate(&gate, bucket, FIVE_A_SECOND, at + 199).await,
                refused(reset - 199, 1)
            );
            assert_eq!(
                rate(&gate, bucket, FIVE_A_SECOND, at + 200).await,
                allowed(0, reset - 200)
            );
        }
        assert_eq!(counter(&gate, bucket, 1000, T0 / 1000).await, Some(5));
        assert_eq!(counter(&gate, bucket, 1000, T0 / 1000 + 1).await, Some(4));
    }

    #[tokio::test]
    async fn refused_requests_are_not_counted() {
        let gate = Gate::new(redis(&prefix()));
        let bucket = "user:6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d";
        for _ in 0..5 {
            assert!(rate(&gate, bucket, FIVE_A_SECOND, T0).await.allowed);
        }
        for _ in 0..20 {
            assert!(!rate(&gate, bucket, FIVE_A_SECOND, T0 + 500).await.allowed);
        }
        assert_eq!(counter(&gate, bucket, 1000, T0 / 1000).await, Some(5));
        // Admitted exactly when it would have been without the knocking.
        assert_eq!(
            rate(&gate, bucket, FIVE_A_SECOND, T0 + 1200).await,
            allowed(0, 800)
        );
    }

    #[tokio::test]
    async fn counters_live_two_windows_under_the_documented_key() {
        let gate = Gate::new(redis(&prefix()));
        rate(&gate, "auth-login:ip:1.2.3.4", FIVE_A_SECOND, T0 + 250).await;
        let key = gate
            .redis
            .key(&["rate", "auth-login:ip:1.2.3.4", "1000", "1700000000"]);
        let mut connection = gate.redis.connection();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("redis");
        assert!((1..=2000).contains(&ttl), "{key} expires in {ttl} ms");
    }

    #[tokio::test]
    async fn a_changed_window_length_counts_afresh() {
        let gate = Gate::new(redis(&prefix()));
        for _ in 0..5 {
            assert!(rate(&gate, "ip:10.0.0.1", FIVE_A_SECOND, T0).await.allowed);
        }
        let two_seconds = Limit {
            window: Duration::from_secs(2),
            ..FIVE_A_SECOND
        };
        assert_eq!(
            rate(&gate, "ip:10.0.0.1", two_seconds, T0).await,
            allowed(4, 2000)
        );
    }

    /// Two instances, each with its own connection, share one limit: of ten simultaneous
    /// requests at a limit of five, exactly five get through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_enforce_one_limit() {
        let prefix = prefix();
        let gates = [Gate::new(redis(&prefix)), Gate::new(redis(&prefix))];
        let tasks: Vec<_> = (0..10)
            .map(|n| {
                let gate = gates[n % 2].clone();
                tokio::spawn(async move { rate(&gate, "ip:198.51.100.7", FIVE_A_SECOND, T0).await })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.expect("task").allowed);
        }
        assert_eq!(admitted, 5);
        assert_eq!(
            counter(&gates[0], "ip:198.51.100.7", 1000, T0 / 1000).await,
            Some(5)
        );
    }

    #[tokio::test]
    async fn revocation_by_session_and_by_user_not_before() {
        let gate = Gate::new(redis(&prefix()));
        let token_check = |session_id, issued_at| GateCheck {
            bucket: None,
            token: Some((session_id, "user-1", issued_at)),
            now_ms: T0,
        };
        let revoked = |session_id, issued_at| {
            let gate = gate.clone();
            async move {
                let outcome = gate.check(&token_check(session_id, issued_at)).await;
                let outcome = outcome.expect("redis");
                assert_eq!(outcome.rate, None, "no limit was asked");
                outcome.revoked
            }
        };

        assert!(!revoked("session-a", 1_700_000_000).await);

        set(&gate, &["revoked", "sid", "session-b"], 1).await;
        assert!(revoked("session-b", 1_700_000_000).await);
        assert!(!revoked("session-a", 1_700_000_000).await);

        set(&gate, &["revoked", "user-nbf", "user-1"], 1_700_000_000).await;
        assert!(revoked("session-a", 1_699_999_999).await);
        assert!(!revoked("session-a", 1_700_000_000).await);
        assert!(!revoked("session-a", 1_700_000_001).await);
    }

    #[tokio::test]
    async fn revoked_requests_are_not_counted() {
        let gate = Gate::new(redis(&prefix()));
        set(&gate, &["revoked", "sid", "stolen"], 1).await;
        let bucket = "user:owner";
        for _ in 0..8 {
            let outcome = gate
                .check(&GateCheck {
                    bucket: Some((bucket, FIVE_A_SECOND)),
                    token: Some(("stolen", "owner", 1_700_000_000)),
                    now_ms: T0,
                })
                .await
                .expect("redis");
            assert!(outcome.revoked);
            assert_eq!(outcome.rate, Some(allowed(5, 1000)));
        }
        assert_eq!(counter(&gate, bucket, 1000, T0 / 1000).await, None);
        // The owner's own session still has the whole budget.
        for remaining in (0..5).rev() {
            let outcome = gate
                .check(&GateCheck {
                    bucket: Some((bucket, FIVE_A_SECOND)),
                    token: Some(("current", "owner", 1_700_000_000)),
                    now_ms: T0,
                })
                .await
                .expect("redis");
            assert!(!outcome.revoked);
            assert_eq!(outcome.rate, Some(allowed(remaining, 1000)));
        }
    }

    /// The Lua script and window.rs give the same answers, across small states, both sides of
    /// a window, and values near the 2^53 Lua bound.
    #[tokio::test]
    async fn the_script_agrees_with_window_rs() {
        let gate = Gate::new(redis(&prefix()));
        set(&gate, &["revoked", "sid", "revoked-session"], 1).await;
        let mut cases = Vec::new();
        for (window, length) in [
            (Duration::from_secs(1), 1000),
            (Duration::from_millis(997), 997),
        ] {
            for requests in [1, 2, 5] {
                for previous in 0..=u64::from(requests) {
                    for current in 0..=u64::from(requests) {
                        for elapsed in [0, 1, length / 2, length - 1] {
                            cases.push((requests, window, previous, current, elapsed));
                        }
                    }
                }
            }
        }
        let day = Duration::from_secs(86_400);
        cases.push((1_000_000, day, 1_000_000, 0, 43_200_000));
        cases.push((1_000_000, day, 1_000_000, 500_000, 43_200_000));
        cases.push((1_000_000, day, 999_999, 1, 86_399_999));
        // An absurd limit: the window is cut to 2^20 ms and the products reach 2^52.
        let max = u64::from(u32::MAX);
        cases.push((u32::MAX, Duration::MAX, max, max - 5, 12_345));
        cases.push((u32::MAX, Duration::MAX, max - 1, 0, 1));
        cases.push((u32::MAX, Duration::MAX, max, max, (1 << 20) - 1));

        for (n, &(requests, window, previous, current, elapsed_ms)) in cases.iter().enumerate() {
            let limit = Limit { requests, window };
            let length_ms = window::length_ms(window, requests);
            let index = T0 / length_ms + 7;
            let now_ms = index * length_ms + elapsed_ms;
            let state = State {
                previous,
                current,
                elapsed_ms,
                length_ms,
            };
            for revoked in [false, true] {
                let bucket = format!("agree:{n}:{revoked}");
                let mut connection = gate.redis.connection();
                for (index, count) in [(index, current), (index - 1, previous)] {
                    // A zero count is left as a missing key, as Redis would have it.
                    if count > 0 {
                        let key = gate.rate_key(&bucket, length_ms, i128::from(index));
                        connection
                            .pset_ex::<_, _, ()>(key, count, 60_000)
                            .await
                            .expect("redis");
                    }
                }
                let session_id = if revoked {
                    "revoked-session"
                } else {
                    "live-session"
                };
                let outcome = gate
                    .check(&GateCheck {
                        bucket: Some((&bucket, limit)),
                        token: Some((session_id, "someone", 1_700_000_000)),
                        now_ms,
                    })
                    .await
                    .expect("redis");
                let expected = window::decide(state, u64::from(requests), !revoked);
                let got = outcome.rate.expect("a limit was asked");
                let case = format!("{state:?} limit {requests} revoked {revoked}");
                assert_eq!(outcome.revoked, revoked, "{case}");
                assert_eq!(got.allowed, expected.allowed, "{case}");
                assert_eq!(u64::from(got.remaining), expected.remaining, "{case}");
                assert_eq!(
                    got.retry_after,
                    expected.retry_after_ms.map(Duration::from_millis),
                    "{case}"
                );
                assert_eq!(
                    got.reset,
                    Duration::from_millis(length_ms - elapsed_ms),
                    "{case}"
                );
                let counted = u64::from(expected.allowed && !revoked);
                let stored = counter(&gate, &bucket, length_ms, index).await;
                assert_eq!(stored.unwrap_or(0), current + counted, "{case}");
            }
        }
    }

    #[tokio::test]
    async fn nothing_asked_does_not_touch_redis() {
        let gate = Gate::new(unreachable_redis());
        let outcome = gate
            .check(&GateCheck {
                bucket: None,
                token: None,
                now_ms: T0,
            })
            .await
            .expect("no Redis call to fail");
        assert_eq!(
            outcome,
            GateOutcome {
                rate: None,
                revoked: false
            }
        );
    }

    #[tokio::test]
    async fn redis_down_is_an_error_and_a_quick_one() {
        let gate = Gate::new(unreachable_redis());
        let checks = [
            rate_check("ip:203.0.113.9", FIVE_A_SECOND, T0),
            GateCheck {
                bucket: None,
                token: Some(("session", "user", 1_700_000_000)),
                now_ms: T0,
            },
        ];
        for check in checks {
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(5), gate.check(&check))
                .await
                .expect("fails within 5 s rather than hanging");
            assert!(matches!(result, Err(GateError::Redis(_))), "{result:?}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
}
