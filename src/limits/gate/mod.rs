//! The per-request Redis check on forwarded requests and `/auth` routes: the sliding-window
//! rate limit and, for a signed-in caller, the revocation check, so that several gateway
//! instances enforce one limit and see one revocation list.
//!
//! **Batches.** A Redis round trip costs Redis about 15 µs of CPU in system calls however
//! little it carries, and each command about 0.5 µs more (measured with `redis-benchmark` on
//! the benchmark box); on a box that Redis shares with the gateway, that was most of what
//! authentication cost a request. So the checks that one worker thread has waiting are sent
//! together: the first starts a flush task, which lets the rest of the worker's ready requests
//! join (it yields to the event loop for as long as that brings new ones), then sends them all
//! as one pipeline. While that round trip is out, new checks wait for the next one, so a batch
//! grows with the load and a quiet gateway sends each check at once. A check that goes to
//! Redis goes after its request arrived, so a revocation is seen on the very next request
//! (the copy below keeps that promise its own way). In a Redis Cluster the batch goes as one
//! pipeline per hash slot, sent together ([`plan::Plan::parts`], `batch.rs`).
//!
//! **Two kinds of bucket.** A limit below [`window::EXACT_BELOW`] a window (login's 5 a
//! minute, register's 3 an hour) is a sliding log, decided exactly in Redis by a short
//! script ([`batch::LOG_SCRIPT`]) that forgets the times that have left the window and adds this
//! request's only while fewer than the limit remain; why a log and not an estimate or GCRA is
//! in [`super::window`]. Each log check is one `EVAL` in the batch's pipeline, in batch order,
//! so checks of one bucket are decided one after another there. A request whose token turns
//! out revoked had its entry added before that was read; the entry is removed (`ZREM`) in
//! the give-back round trip below. Everything else below, counters, leases and give-backs of
//! places, is about the larger limits.
//!
//! **Commands.** Native commands, not a script, for the larger limits: one `INCRBY n` per
//! rate-limit counter the batch touches (its `n` requests take places `v − n + 1 ..= v` of
//! the returned `v`), and one `MGET` of every other key the batch reads: previous windows'
//! counters, sessions' revocation keys and users' not-before times, each once. A Lua script doing one request's
//! work cost Redis 6.3 µs a call against 0.6 µs for these commands.
//!
//! A counter is given its lifetime (`PEXPIRE`, two windows) by the first batch of each worker
//! that touches it, in the same pipeline as its `INCRBY`; the worker remembers that for the
//! rest of the window and sends no more (with many callers, a `PEXPIRE` per check was a fifth
//! of Redis' work). Should the key vanish meanwhile (Redis restarted or flushed), the next
//! `INCRBY` recreates it without a lifetime and answers exactly the batch's own count: that
//! reply is how the loss shows, and the lifetime is set again at once.
//!
//! **Exactness.** `INCRBY` makes the limit exact across instances without a script: the
//! places it hands out are each request's position in the current window, so of concurrent
//! requests exactly those whose place fits are admitted, whichever instance they came
//! through. A request that turns out refused (over the limit, or its token revoked) gives its
//! place back with `DECRBY`, a second round trip paid only when something was refused. Within
//! a batch the places about to be given back are discounted, so a batch is decided as if its
//! checks came one after another; until the `DECRBY` lands, another batch sees the count
//! higher than it will be: the limiter can briefly refuse a request it would have admitted,
//! never admit one too many. The arithmetic is [`super::window`]'s.
//!
//! **Skipping the round trip.** Two things let a check be answered without Redis, each
//! only where the answer is the one Redis would give or stricter:
//! - a token is checked against the instance's pushed copy of the revocation list while that
//!   copy is trusted ([`super::feed`]); Redis is read only when it is not;
//! - a worker that keeps counting in the same counter takes places ahead ([`plan::Lease`]): the
//!   first check of a window takes none, each later grant twice the last, at most 256 and a
//!   sixteenth of the room the window has left. Its next requests are decided on those places
//!   as if Redis had just handed them out. A place taken and never used counts against the
//!   window like a request, so leases can only make the limiter refuse early, by at most a
//!   sixteenth of the room per worker holding one, and never admit one too many; small
//!   limits are logs, never leased.
//!
//! **An epoch after the reads.** With a feed, a batch that reads revocations also reads the
//! revocation epoch ([`super::durability`]), after its `MGET`: one command more per batch,
//! none per request. Finding the epoch means Redis has not lost its data since the state was
//! complete (losing the data loses the key, and only a finished rebuild from Postgres sets
//! it again), so the `MGET` before it read a complete state. Finding none, the batch's
//! token checks fail as Redis errors do (fail closed by default) and the feed is woken to
//! rebuild; until the rebuild is done, a token check waits a moment for it first.
//!
//! The time comes from the caller (the gateway's clock), not from Redis `TIME`: it keeps the
//! check a function of its arguments, which is what lets tests step through windows. Instances
//! whose clocks differ by a few milliseconds place a request a few milliseconds differently in
//! the window, which moves the estimate by a negligible fraction of a request.
//!
//! **Parts.** This file: the check callers make, its keys, and the tests against a real
//! Redis. [`plan`]: what a batch asks Redis and what the replies mean, and the leases'
//! arithmetic; pure, with table tests that need no Redis. [`batch`]: the I/O, each worker's
//! queue, the flush task and the pipelines.

mod batch;
pub(crate) use batch::LOG_SCRIPT;
mod plan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::batch::Queue;
use self::plan::{Keyed, KeyedLog, KeyedRate};
use super::feed::RevocationFeed;
use super::revocation;
use super::window;
use super::Redis;
use crate::telemetry::exposition::single;

/// How long a token check waits for the revocation state while it is being rebuilt (or
/// first confirmed at start) before asking Redis anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

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
    /// Until the room grows: the current fixed window's end for a larger limit, the oldest
    /// counted request's leaving the window for a small one.
    pub reset: Duration,
    /// For a refused request: until one more would be admitted if nothing else is meanwhile.
    /// At most one window (contract 4).
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOutcome {
    /// None when no limit was asked, and may be None for a revoked token (which is not
    /// counted).
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    /// Shared by every check of the batch it failed.
    #[error("redis: {0}")]
    Redis(Arc<redis::RedisError>),
    #[error("the check was dropped unanswered (shutting down)")]
    Dropped,
    /// Redis has no revocation epoch: it lost its data and the rebuild from Postgres is not
    /// done, so what it holds about revocation is not believed.
    #[error("the revocation state in Redis is being rebuilt from Postgres")]
    Rebuilding,
}

impl From<redis::RedisError> for GateError {
    fn from(error: redis::RedisError) -> GateError {
        GateError::Redis(Arc::new(error))
    }
}

/// The per-request check, shared by every connection task of one gateway instance.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// This instance's copy of the revocation list: while it is trusted, a token is checked
    /// against it and Redis is not asked.
    feed: Option<RevocationFeed>,
    /// One per worker thread, and a last one for callers outside the workers.
    queues: Box<[Mutex<Queue>]>,
    /// Pipelines sent, give-backs included, and the checks they carried: how well batches
    /// fill.
    round_trips: AtomicU64,
    checks_sent: AtomicU64,
    /// Limits below this are sliding logs: [`window::EXACT_BELOW`], except in the tests of
    /// the counters' mechanics.
    exact_below: u32,
    /// Makes each log entry's member unique across instances: random per gate, then a
    /// sequence number.
    log_nonce: String,
    log_sequence: AtomicU64,
}

impl Gate {
    pub fn new(redis: Redis) -> Gate {
        Gate::with_feed(redis, None)
    }

    pub fn with_feed(redis: Redis, feed: Option<RevocationFeed>) -> Gate {
        Gate::build(redis, feed, window::EXACT_BELOW)
    }

    /// A gate that estimates every limit, small ones included: the counters' mechanics are
    /// tested with small numbers.
    #[cfg(test)]
    fn estimating(redis: Redis) -> Gate {
        Gate::build(redis, None, 0)
    }

    fn build(redis: Redis, feed: Option<RevocationFeed>, exact_below: u32) -> Gate {
        let queues = (0..=redis.workers())
            .map(|_| Mutex::new(Queue::default()))
            .collect();
        Gate {
            inner: Arc::new(Inner {
                redis,
                feed,
                queues,
                round_trips: AtomicU64::new(0),
                checks_sent: AtomicU64::new(0),
                exact_below,
                log_nonce: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
                log_sequence: AtomicU64::new(0),
            }),
        }
    }

    /// Checks the rate limit and the revocation lists, counting the request against the limit
    /// when it is admitted.
    ///
    /// A request whose token is revoked is not counted: the gateway answers it 401 whatever the
    /// limit says, and counting it would let whoever holds a revoked token use up its owner's
    /// budget (a `user:` bucket) or a shared address's. Its `rate` then reports whether it
    /// would have been admitted and the room left, unchanged.
    ///
    /// Nothing asked (no bucket, no token): answered without touching Redis. A token the
    /// trusted revocation copy answers for is not sent to Redis: if it is revoked, the answer
    /// comes at once (with no rate).
    pub async fn check(&self, check: &GateCheck<'_>) -> Result<GateOutcome, GateError> {
        let mut check = *check;
        if let (Some(_), Some(feed)) = (check.token, &self.inner.feed) {
            let durability = feed.durability();
            if !feed.trusted() && durability.unsettled() {
                // Starting, or rebuilding after Redis lost its data: a complete state is
                // usually a moment away, and waiting for it beats a 503.
                durability.settled(SETTLE_WAIT).await;
            }
        }
        if let (Some((session_id, user_id, issued_at)), Some(feed)) =
            (check.token, &self.inner.feed)
        {
            match feed.revoked(session_id, user_id, issued_at) {
                Some(true) => {
                    return Ok(GateOutcome {
                        rate: None,
                        revoked: true,
                    })
                }
                Some(false) => check.token = None,
                None => {}
            }
        }
        if check.bucket.is_none() && check.token.is_none() {
            return Ok(GateOutcome {
                rate: None,
                revoked: false,
            });
        }
        let keyed = self.keyed(&check);
        let queue = self.queue_index();
        if let (Some(rate), None) = (&keyed.rate, &keyed.token) {
            if let Some(outcome) = self.queue(queue).counters.decide_on_lease(rate) {
                return Ok(GateOutcome {
                    rate: Some(outcome),
                    revoked: false,
                });
            }
        }
        self.batched(queue, keyed).await
    }

    /// Redis round trips made so far.
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// The gate's counters in Prometheus text format, for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let round_trips = self.round_trips();
        let checks = self.inner.checks_sent.load(Ordering::Relaxed);
        let trusted = u8::from(
            self.inner
                .feed
                .as_ref()
                .is_some_and(RevocationFeed::trusted),
        );
        let rebuilds = self
            .inner
            .feed
            .as_ref()
            .map_or(0, |feed| feed.durability().rebuilds());
        let mut out = String::with_capacity(1024);
        single(
            &mut out,
            "portcullis_redis_round_trips_total",
            "counter",
            "Redis round trips of the rate-limit and revocation checks, give-backs of refused \
             requests included.",
            round_trips,
        );
        single(
            &mut out,
            "portcullis_redis_checks_total",
            "counter",
            "Rate-limit and revocation checks sent to Redis; over round trips, how many share \
             one.",
            checks,
        );
        single(
            &mut out,
            "portcullis_revocation_copy_trusted",
            "gauge",
            "1 while this instance checks tokens against its pushed copy of the revocation \
             list; 0 while it reads Redis for each.",
            trusted,
        );
        single(
            &mut out,
            "portcullis_revocation_rebuilds_total",
            "counter",
            "Times this instance rebuilt the revocation state in Redis from Postgres, having \
             found Redis without its revocation epoch (at first start, or after Redis lost its \
             data).",
            rebuilds,
        );
        self.inner.redis.render_timings(&mut out);
        out
    }

    fn keyed(&self, check: &GateCheck<'_>) -> Keyed {
        let redis = &self.inner.redis;
        let exact = |limit: &Limit| limit.requests < self.inner.exact_below;
        let log = check
            .bucket
            .filter(|(_, limit)| exact(limit))
            .map(|(bucket, limit)| {
                let length_ms = window::length_ms(limit.window);
                let sequence = self.inner.log_sequence.fetch_add(1, Ordering::Relaxed);
                KeyedLog {
                    key: self.log_key(bucket, length_ms),
                    member: format!("{}:{}:{sequence}", check.now_ms, self.inner.log_nonce),
                    now_ms: check.now_ms,
                    limit,
                    length_ms,
                }
            });
        let rate = check
            .bucket
            .filter(|(_, limit)| !exact(limit))
            .map(|(bucket, limit)| {
                let length_ms = window::length_ms(limit.window);
                let (index, elapsed_ms) = window::position(check.now_ms, length_ms);
                KeyedRate {
                    current: self.rate_key(bucket, length_ms, Window::Index(index)),
                    previous: self.rate_key(bucket, length_ms, Window::Before(index)),
                    limit,
                    length_ms,
                    elapsed_ms,
                    window_end_ms: check.now_ms - elapsed_ms + length_ms,
                }
            });
        let token = check.token.map(|(session_id, user_id, issued_at)| {
            (
                revocation::session_key(redis, session_id),
                revocation::user_key(redis, user_id),
                issued_at,
            )
        });
        Keyed {
            now_ms: check.now_ms,
            rate,
            log,
            token,
        }
    }

    /// `<prefix>rate-log:{<bucket>}:<window_ms>`: a small limit's log. The window length is part
    /// of the key as in [`Gate::rate_key`]; the limit is not, since a log's times stay right
    /// whatever the limit. The bucket is the key's hash tag ([`Redis::bucket_key`]).
    fn log_key(&self, bucket: &str, length_ms: u64) -> String {
        let mut key = self.inner.redis.bucket_key("rate-log", bucket);
        key.push(':');
        key.push_str(&length_ms.to_string());
        key
    }

    /// `<prefix>rate:{<bucket>}:<window_ms>:<window_index>`. The window length is part of the
    /// key so that changing a limit's window starts new counts instead of misreading old ones.
    /// The window before index 0 is named -1 (a key never written). The bucket is the key's
    /// hash tag ([`Redis::bucket_key`]): both windows of a bucket share a slot.
    fn rate_key(&self, bucket: &str, length_ms: u64, window: Window) -> String {
        use std::fmt::Write as _;
        let mut key = self.inner.redis.bucket_key("rate", bucket);
        // The numbers straight into the key: no string of their own. Writing to a String
        // cannot fail.
        let _ = match window {
            Window::Index(index) => write!(key, ":{length_ms}:{index}"),
            Window::Before(0) => write!(key, ":{length_ms}:-1"),
            Window::Before(index) => write!(key, ":{length_ms}:{}", index - 1),
        };
        key
    }
}

/// A window by its index, or the one before it (which, before index 0, has no index of its
/// own). Spares formatting a wider signed integer for every key.
#[derive(Debug, Clone, Copy)]
enum Window {
    Index(u64),
    Before(u64),
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use redis::AsyncCommands;

    use super::plan::COUNTERS_MAX;
    use super::window::State;
    use super::*;

    /// A whole number of seconds, so that 1 s windows start here.
    const T0: u64 = 1_700_000_000_000;
    const FIVE_A_SECOND: Limit = Limit {
        requests: 5,
        window: Duration::from_secs(1),
    };

    /// Each test's keys under their own prefix, so tests run in parallel and never meet
    /// another run's keys; every key written expires on its own.
    fn prefix() -> String {
        crate::limits::test_redis::unique_prefix("gate-test")
    }

    fn redis(prefix: &str) -> Redis {
        crate::limits::test_redis::connect(prefix)
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
        let key = gate.rate_key(bucket, length_ms, Window::Index(index));
        gate.inner.redis.connection().get(key).await.expect("redis")
    }

    /// A revocation key (`<prefix>{revocation}:<parts>`), set behind the gate's back.
    async fn set(gate: &Gate, parts: &[&str], value: u64) {
        let key = gate.inner.redis.revocation_key(parts);
        let mut connection = gate.inner.redis.connection();
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
        let gate = Gate::estimating(redis(&prefix()));
        let bucket = "ip:203.0.113.9";
        for remaining in (0..5).rev() {
            assert_eq!(
                rate(&gate, bucket, FIVE_A_SECOND, T0).await,
                allowed(remaining, 1000)
            );
        }
        // The sixth would wait out this window and 200 ms of the next, until the five weigh
        // 5 × 800/1000 = 4; it is told a window at most.
        assert_eq!(
            rate(&gate, bucket, FIVE_A_SECOND, T0).await,
            refused(1000, 1000)
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
        let gate = Gate::estimating(redis(&prefix()));
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
        let gate = Gate::estimating(redis(&prefix()));
        rate(&gate, "auth-login:ip:1.2.3.4", FIVE_A_SECOND, T0 + 250).await;
        let key = format!(
            "{}rate:{{auth-login:ip:1.2.3.4}}:1000:1700000000",
            gate.inner.redis.key(&[])
        );
        let mut connection = gate.inner.redis.connection();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("redis");
        assert!((1..=2000).contains(&ttl), "{key} expires in {ttl} ms");
    }

    /// `command key` straight to Redis, behind the gate's back.
    async fn on_key<T: redis::FromRedisValue>(gate: &Gate, command: &str, key: &str) -> T {
        let mut connection = gate.inner.redis.connection();
        redis::cmd(command)
            .arg(key)
            .query_async(&mut connection)
            .await
            .expect("redis")
    }

    async fn ttl_ms(gate: &Gate, key: &str) -> i64 {
        on_key(gate, "PTTL", key).await
    }

    #[tokio::test]
    async fn a_counter_is_given_its_lifetime_once_per_window() {
        let gate = Gate::estimating(redis(&prefix()));
        let bucket = "ip:198.51.100.31";
        let key = gate.rate_key(bucket, 1000, Window::Index(1_700_000_000));
        rate(&gate, bucket, FIVE_A_SECOND, T0 + 100).await;
        assert!(ttl_ms(&gate, &key).await > 0);
        // Taken away behind the gate's back: a later check of the same window does not set it
        // again, which is how we see that it sends no second PEXPIRE.
        let _: () = on_key(&gate, "PERSIST", &key).await;
        let second = rate(&gate, bucket, FIVE_A_SECOND, T0 + 200).await;
        assert_eq!(second, allowed(3, 800));
        assert_eq!(ttl_ms(&gate, &key).await, -1, "no lifetime: none was sent");
        // The next window's counter is new, and gets one.
        rate(&gate, bucket, FIVE_A_SECOND, T0 + 1_100).await;
        let next = gate.rate_key(bucket, 1000, Window::Index(1_700_000_001));
        assert!(ttl_ms(&gate, &next).await > 0);
        let _: () = on_key(&gate, "DEL", &key).await;
    }

    #[tokio::test]
    async fn the_remembered_lifetimes_stay_bounded_and_forgetting_costs_only_a_pexpire() {
        let gate = Gate::estimating(redis(&prefix()));
        // One address after another, as from a client with many: more than the set holds.
        for n in 0..=COUNTERS_MAX {
            rate(
                &gate,
                &format!("ip:2001:db8::{n:x}"),
                FIVE_A_SECOND,
                T0 + 100,
            )
            .await;
        }
        let remembered = gate.queue(gate.queue_index()).counters.len();
        assert!(remembered <= COUNTERS_MAX, "{remembered} remembered");
        // The first address was forgotten: its next check sends PEXPIRE again, and counts on.
        let first = gate.rate_key("ip:2001:db8::0", 1000, Window::Index(1_700_000_000));
        let _: () = on_key(&gate, "PERSIST", &first).await;
        let again = rate(&gate, "ip:2001:db8::0", FIVE_A_SECOND, T0 + 200).await;
        assert_eq!(again, allowed(3, 800));
        assert!(ttl_ms(&gate, &first).await > 0);
    }

    #[tokio::test]
    async fn a_counter_that_vanished_is_given_its_lifetime_again() {
        let gate = Gate::estimating(redis(&prefix()));
        let bucket = "ip:198.51.100.32";
        let key = gate.rate_key(bucket, 1000, Window::Index(1_700_000_000));
        rate(&gate, bucket, FIVE_A_SECOND, T0 + 100).await;
        // As if Redis had restarted empty: the gate still thinks the key has its lifetime.
        let _: () = on_key(&gate, "DEL", &key).await;
        let recreated = rate(&gate, bucket, FIVE_A_SECOND, T0 + 200).await;
        assert_eq!(
            recreated,
            allowed(4, 800),
            "counted afresh from the new key"
        );
        // The lifetime goes out right after the answers; a further check is answered only
        // once that round trip is done (one flush at a time), so by then it has landed.
        rate(&gate, bucket, FIVE_A_SECOND, T0 + 300).await;
        let ttl = ttl_ms(&gate, &key).await;
        assert!((1..=2000).contains(&ttl), "{key} expires in {ttl} ms");
    }

    #[tokio::test]
    async fn window_keys_name_the_index_and_the_one_before() {
        let gate = Gate::estimating(redis("p:"));
        let key = |window| gate.rate_key("ip:1.2.3.4", 1000, window);
        assert_eq!(
            key(Window::Index(1_700_000_000)),
            "p:rate:{ip:1.2.3.4}:1000:1700000000"
        );
        assert_eq!(
            key(Window::Before(1_700_000_000)),
            "p:rate:{ip:1.2.3.4}:1000:1699999999"
        );
        assert_eq!(
            key(Window::Index(u64::MAX)),
            format!("p:rate:{{ip:1.2.3.4}}:1000:{}", u64::MAX)
        );
        assert_eq!(key(Window::Before(0)), "p:rate:{ip:1.2.3.4}:1000:-1");
    }

    #[tokio::test]
    async fn a_changed_window_length_counts_afresh() {
        let gate = Gate::estimating(redis(&prefix()));
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
        let gates = [
            Gate::estimating(redis(&prefix)),
            Gate::estimating(redis(&prefix)),
        ];
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

        set(&gate, &["sid", "session-b"], 1).await;
        assert!(revoked("session-b", 1_700_000_000).await);
        assert!(!revoked("session-a", 1_700_000_000).await);

        set(&gate, &["user-nbf", "user-1"], 1_700_000_000).await;
        assert!(revoked("session-a", 1_699_999_999).await);
        assert!(!revoked("session-a", 1_700_000_000).await);
        assert!(!revoked("session-a", 1_700_000_001).await);
    }

    #[tokio::test]
    async fn revoked_requests_are_not_counted() {
        let gate = Gate::estimating(redis(&prefix()));
        set(&gate, &["sid", "stolen"], 1).await;
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
        // Each took its place and gave it back.
        assert_eq!(counter(&gate, bucket, 1000, T0 / 1000).await, Some(0));
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

    /// What the gate answers and leaves counted in Redis is window.rs's decision on the counts
    /// it read, across small states, both sides of a window, and large counts.
    #[tokio::test]
    async fn the_gate_decides_as_window_rs_on_what_redis_holds() {
        let gate = Gate::estimating(redis(&prefix()));
        set(&gate, &["sid", "revoked-session"], 1).await;
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
        // An absurd limit and window: the window is cut to 2^40 ms.
        let max = u64::from(u32::MAX);
        cases.push((u32::MAX, Duration::MAX, max, max - 5, 12_345));
        cases.push((u32::MAX, Duration::MAX, max - 1, 0, 1));
        cases.push((u32::MAX, Duration::MAX, max, max, (1 << 40) - 1));

        for (n, &(requests, window, previous, current, elapsed_ms)) in cases.iter().enumerate() {
            let limit = Limit { requests, window };
            let length_ms = window::length_ms(window);
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
                let mut connection = gate.inner.redis.connection();
                for (index, count) in [(index, current), (index - 1, previous)] {
                    // A zero count is left as a missing key, as Redis would have it.
                    if count > 0 {
                        let key = gate.rate_key(&bucket, length_ms, Window::Index(index));
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

    /// Three an hour (contract 4): requests at 0, 20 and 40 minutes are admitted; the fourth
    /// at 50 minutes is told to wait until the first leaves the window, 10 minutes, and is
    /// admitted after that, whatever the clock's position in the hour.
    #[tokio::test]
    async fn a_small_limit_is_a_sliding_window_exact_to_the_millisecond() {
        const MINUTE: u64 = 60_000;
        let three_an_hour = Limit {
            requests: 3,
            window: Duration::from_secs(3600),
        };
        let gate = Gate::new(redis(&prefix()));
        // T0 falls 13 min 20 s into a fixed hour; the other starts test other positions.
        for (n, start) in [T0, T0 + 47 * MINUTE, T0 - T0 % (60 * MINUTE)]
            .into_iter()
            .enumerate()
        {
            let bucket = format!("ip:192.0.2.{n}");
            for (minute, remaining) in [(0, 2), (20, 1), (40, 0)] {
                let outcome = rate(&gate, &bucket, three_an_hour, start + minute * MINUTE).await;
                assert!(outcome.allowed, "start {n}, minute {minute}");
                assert_eq!(outcome.remaining, remaining, "start {n}, minute {minute}");
            }
            let refused = rate(&gate, &bucket, three_an_hour, start + 50 * MINUTE).await;
            assert!(!refused.allowed, "start {n}");
            assert_eq!(
                refused.retry_after,
                Some(Duration::from_millis(10 * MINUTE)),
                "start {n}"
            );
            let just_before = rate(&gate, &bucket, three_an_hour, start + 60 * MINUTE - 1).await;
            assert_eq!(just_before.retry_after, Some(Duration::from_millis(1)));
            assert!(
                rate(&gate, &bucket, three_an_hour, start + 60 * MINUTE)
                    .await
                    .allowed,
                "start {n}: the request at 0 has left the window"
            );
            assert!(
                !rate(&gate, &bucket, three_an_hour, start + 61 * MINUTE)
                    .await
                    .allowed
            );
            assert!(
                rate(&gate, &bucket, three_an_hour, start + 80 * MINUTE)
                    .await
                    .allowed
            );
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

    /// Checks that become ready together go in one round trip, and the places INCRBY hands
    /// out keep the limit exact: of forty at a limit of fifteen, fifteen get through, each
    /// told a different remaining count.
    #[tokio::test]
    async fn concurrent_checks_share_a_round_trip_and_the_limit_stays_exact() {
        let gate = Gate::estimating(redis(&prefix()));
        let fifteen = Limit {
            requests: 15,
            window: Duration::from_secs(1),
        };
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { rate(&gate, "ip:192.0.2.40", fifteen, T0).await })
            })
            .collect();
        let mut remaining_of_admitted = Vec::new();
        for task in tasks {
            let outcome = task.await.expect("task");
            if outcome.allowed {
                remaining_of_admitted.push(outcome.remaining);
            } else {
                assert_eq!(outcome.remaining, 0);
                // 1067 ms by the estimate, capped at the window.
                assert_eq!(outcome.retry_after, Some(Duration::from_millis(1000)));
            }
        }
        remaining_of_admitted.sort_unstable();
        assert_eq!(remaining_of_admitted, (0..15).collect::<Vec<_>>());
        assert_eq!(
            counter(&gate, "ip:192.0.2.40", 1000, T0 / 1000).await,
            Some(15)
        );
        // The forty in one pipeline, and the twenty-five refused places given back in one more.
        assert_eq!(gate.round_trips(), 2);
    }

    /// One batch mixing buckets, sessions and users answers each check for its own.
    #[tokio::test]
    async fn a_batch_answers_each_check_for_its_own_token_and_bucket() {
        let gate = Gate::estimating(redis(&prefix()));
        set(&gate, &["sid", "stolen"], 1).await;
        set(&gate, &["user-nbf", "carol"], 1_700_000_000).await;
        let two = Limit {
            requests: 2,
            window: Duration::from_secs(1),
        };
        type Case = (
            Option<(&'static str, Limit)>,
            Option<(&'static str, &'static str, u64)>,
        );
        let cases: Vec<Case> = vec![
            (
                Some(("user:alice", two)),
                Some(("alice-1", "alice", 1_700_000_000)),
            ),
            (
                Some(("user:alice", two)),
                Some(("alice-1", "alice", 1_700_000_000)),
            ),
            (
                Some(("user:alice", two)),
                Some(("alice-1", "alice", 1_700_000_000)),
            ),
            (
                Some(("user:bob", FIVE_A_SECOND)),
                Some(("stolen", "bob", 1_700_000_000)),
            ),
            (Some(("user:bob", FIVE_A_SECOND)), None),
            (None, Some(("carol-old", "carol", 1_699_999_999))),
            (None, Some(("carol-new", "carol", 1_700_000_000))),
        ];
        let tasks: Vec<_> = cases
            .into_iter()
            .map(|(bucket, token)| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.check(&GateCheck {
                        bucket,
                        token,
                        now_ms: T0,
                    })
                    .await
                    .expect("redis")
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("task"));
        }
        let limited = |remaining, allowed: bool, limit| {
            Some(RateOutcome {
                allowed,
                limit,
                remaining,
                reset: Duration::from_millis(1000),
                // Two counted at the start of the window: the next one fits when they weigh
                // one, halfway through the next window; the wait given is capped at a window.
                retry_after: (!allowed).then(|| Duration::from_millis(1000)),
            })
        };
        let expected = [
            GateOutcome {
                rate: limited(1, true, 2),
                revoked: false,
            },
            GateOutcome {
                rate: limited(0, true, 2),
                revoked: false,
            },
            GateOutcome {
                rate: limited(0, false, 2),
                revoked: false,
            },
            // Revoked: not counted, so its room is the whole limit.
            GateOutcome {
                rate: limited(5, true, 5),
                revoked: true,
            },
            // Placed after the revoked one, whose place this batch gives back.
            GateOutcome {
                rate: limited(4, true, 5),
                revoked: false,
            },
            GateOutcome {
                rate: None,
                revoked: true,
            },
            GateOutcome {
                rate: None,
                revoked: false,
            },
        ];
        assert_eq!(outcomes, expected);
        assert_eq!(counter(&gate, "user:alice", 1000, T0 / 1000).await, Some(2));
        assert_eq!(counter(&gate, "user:bob", 1000, T0 / 1000).await, Some(1));
        assert_eq!(gate.round_trips(), 2, "the batch and one give-back");
    }

    /// A Redis outage fails every check of the batch, each with the error.
    #[tokio::test]
    async fn redis_down_fails_the_whole_batch() {
        let gate = Gate::new(unreachable_redis());
        let tasks: Vec<_> = (0..5)
            .map(|n| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let bucket = format!("ip:198.51.100.{n}");
                    gate.check(&rate_check(&bucket, FIVE_A_SECOND, T0)).await
                })
            })
            .collect();
        for task in tasks {
            let result = task.await.expect("task");
            assert!(matches!(result, Err(GateError::Redis(_))), "{result:?}");
        }
        assert_eq!(gate.round_trips(), 1);
    }

    const THOUSAND_A_MINUTE: Limit = Limit {
        requests: 1000,
        window: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn a_busy_bucket_is_decided_on_places_held_ahead_with_few_round_trips() {
        let gate = Gate::new(redis(&prefix()));
        let mut admitted = 0;
        for step in 0..600 {
            let outcome = rate(&gate, "busy", THOUSAND_A_MINUTE, T0 + step).await;
            assert!(outcome.allowed, "request {step}");
            assert_eq!(outcome.remaining, 1000 - step as u32 - 1, "request {step}");
            admitted += 1;
        }
        // Grants of 0, 1, 2, 4, ... places, never more than a sixteenth of the room left: a
        // round trip per grant, not per request (20 here).
        let round_trips = gate.round_trips();
        assert!(
            round_trips <= 30,
            "{round_trips} round trips for 600 checks"
        );
        // The places held are counted in Redis, unused ones included, never fewer than used.
        let counted = counter(&gate, "busy", 60_000, T0 / 60_000).await.unwrap();
        assert!(
            (admitted..=admitted + 1000 / 16).contains(&counted),
            "{counted} counted for {admitted}"
        );
    }

    #[tokio::test]
    async fn a_bucket_seen_once_takes_no_places_ahead() {
        let gate = Gate::new(redis(&prefix()));
        rate(&gate, "once", THOUSAND_A_MINUTE, T0).await;
        assert_eq!(counter(&gate, "once", 60_000, T0 / 60_000).await, Some(1));
    }

    /// Small limits are logs: no counter, no places held ahead, and a refusal needs no
    /// give-back.
    #[tokio::test]
    async fn small_limits_are_never_leased_and_stay_exact() {
        let gate = Gate::new(redis(&prefix()));
        for step in 0..5 {
            assert!(rate(&gate, "small", FIVE_A_SECOND, T0 + step).await.allowed);
        }
        let refused = rate(&gate, "small", FIVE_A_SECOND, T0 + 5).await;
        assert!(!refused.allowed);
        // Until the first, at T0, leaves the window.
        assert_eq!(refused.retry_after, Some(Duration::from_millis(995)));
        assert_eq!(gate.round_trips(), 6, "six checks, nothing to give back");
        assert_eq!(counter(&gate, "small", 1000, T0 / 1000).await, None);
        assert_eq!(log_len(&gate, "small", 1000).await, 5);
        let ttl = ttl_ms(&gate, &gate.log_key("small", 1000)).await;
        assert!((1..=1000).contains(&ttl), "the log expires in {ttl} ms");
    }

    async fn log_len(gate: &Gate, bucket: &str, length_ms: u64) -> u64 {
        on_key(gate, "ZCARD", &gate.log_key(bucket, length_ms)).await
    }

    /// Forty checks at once through two instances, a limit of fifteen: exactly fifteen get
    /// in, and each refused one is told to wait a window at most.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_log_admits_exactly_its_limit_across_instances() {
        let prefix = prefix();
        let gates = [Gate::new(redis(&prefix)), Gate::new(redis(&prefix))];
        let fifteen = Limit {
            requests: 15,
            window: Duration::from_secs(60),
        };
        let tasks: Vec<_> = (0..40u64)
            .map(|n| {
                let gate = gates[(n % 2) as usize].clone();
                tokio::spawn(async move { rate(&gate, "ip:192.0.2.41", fifteen, T0 + n).await })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            let outcome = task.await.expect("task");
            if outcome.allowed {
                admitted += 1;
            } else {
                let retry = outcome.retry_after.expect("refused");
                assert!(retry <= Duration::from_secs(60), "{retry:?}");
            }
        }
        assert_eq!(admitted, 15);
        assert_eq!(log_len(&gates[0], "ip:192.0.2.41", 60_000).await, 15);
    }

    /// A request whose token is revoked takes no room in a log, even when it was checked in
    /// the same batch as the owner's.
    #[tokio::test]
    async fn revoked_requests_take_no_room_in_a_log() {
        let gate = Gate::new(redis(&prefix()));
        set(&gate, &["sid", "stolen"], 1).await;
        let check = |session_id| GateCheck {
            bucket: Some(("user:owner", FIVE_A_SECOND)),
            token: Some((session_id, "owner", 1_700_000_000)),
            now_ms: T0,
        };
        for _ in 0..8 {
            let outcome = gate.check(&check("stolen")).await.expect("redis");
            assert!(outcome.revoked);
            assert_eq!(outcome.rate.map(|rate| rate.remaining), Some(5));
        }
        assert_eq!(log_len(&gate, "user:owner", 1000).await, 0);
        for remaining in (0..5).rev() {
            let outcome = gate.check(&check("current")).await.expect("redis");
            assert!(!outcome.revoked);
            assert_eq!(outcome.rate, Some(allowed(remaining, 1000)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_holding_places_ahead_never_admit_more_than_the_limit_together() {
        let prefix = prefix();
        let limit = Limit {
            requests: 200,
            window: Duration::from_secs(60),
        };
        let gates = [Gate::new(redis(&prefix)), Gate::new(redis(&prefix))];
        let mut admitted = 0;
        for step in 0..600u64 {
            let gate = &gates[(step % 2) as usize];
            if rate(gate, "shared", limit, T0 + step).await.allowed {
                admitted += 1;
            }
        }
        assert!(admitted <= 200, "{admitted} admitted, limit 200");
        // Near the limit the grants shrink to nothing: at most a few places are stranded.
        assert!(admitted >= 190, "{admitted} admitted, limit 200");
        // Places taken ahead that no longer fitted (the other instance had counted
        // meanwhile) went back: the count never passes the limit.
        let counted = counter(&gates[0], "shared", 60_000, T0 / 60_000)
            .await
            .unwrap();
        assert!(
            (admitted..=200).contains(&counted),
            "{counted} counted for {admitted} admitted"
        );
    }

    #[tokio::test]
    async fn places_taken_ahead_that_no_longer_fit_go_back_at_once() {
        let gate = Gate::new(redis(&prefix()));
        let limit = Limit {
            requests: 320,
            window: Duration::from_secs(60),
        };
        let mut admitted = 0u64;
        for step in 0..40 {
            assert!(rate(&gate, "crowded", limit, T0 + step).await.allowed);
            admitted += 1;
        }
        // Other instances count until five places are left.
        let key = gate.rate_key("crowded", 60_000, Window::Index(T0 / 60_000));
        let counted: u64 = gate.inner.redis.connection().get(&key).await.unwrap();
        let elsewhere = 315 - counted;
        let _: u64 = gate
            .inner
            .redis
            .connection()
            .incr(&key, elsewhere)
            .await
            .unwrap();
        let mut step = 40;
        while rate(&gate, "crowded", limit, T0 + step).await.allowed {
            admitted += 1;
            step += 1;
        }
        // This worker's next grant was sized on the count it had seen (about 40): the places
        // past the limit went back, and the count never passes it.
        let counted: u64 = gate.inner.redis.connection().get(&key).await.unwrap();
        assert!(counted <= 320, "{counted} counted");
        assert!(
            admitted + elsewhere <= 320,
            "{admitted} admitted here, {elsewhere} elsewhere"
        );
    }
}
