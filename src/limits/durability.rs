//! Revocation durability: Postgres is the record of every revocation and Redis a copy of it,
//! so a Redis that lost its data (restarted without persistence, flushed, failed over to an
//! empty replica) is rebuilt from Postgres before anyone believes what it says.
//!
//! **The epoch.** `<prefix>{revocation}:epoch` holds a random value, set (`SET NX`, no expiry)
//! only once the revocation state in Redis is complete: after a rebuild from Postgres. Losing
//! the data loses the key, so a reading that finds the key says nothing was lost since it was
//! set, and a reading that finds none says revocations may be missing. Whoever reads
//! revocations from Redis reads the epoch after them, in the same round trip: the gate with
//! its batch, the feed with the index it loads and at each lease renewal.
//!
//! **The rebuild.** The instance that finds no epoch takes a short lock (`SET NX PX`), reads
//! from Postgres every session ended, and every user's not-before time set, within the last
//! access-token lifetime (older ones refuse nothing that has not expired), writes them with
//! the ordinary write path (the gate's keys, the index, a publication), then sets a new
//! epoch. The other instances wait for the epoch to appear. Until it does, no revocation is
//! read from Redis: signed-in requests fail closed per `revocation_on_redis_error`.
//!
//! What this does not see: a failover that keeps the epoch but loses the last few writes
//! (a replica that was slightly behind). The epoch detects a Redis that lost everything.
//!
//! In a Redis Cluster, the epoch shares the revocation keys' hash tag and so their master
//! (see `revocation_key` in `mod.rs`): what empties that master empties the epoch with it.
//! Masters holding only rate-limit counters may restart empty unnoticed; that costs a
//! window's counts, never a revocation.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use redis::AsyncCommands;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Redis, RedisError};
use crate::clock::{unix_seconds, Clock};
use crate::store::{Origin, Store};

/// What writes a rebuilt revocation state back into Redis: the revocation writer
/// (`revocation::Revocations`), which writes and publishes each entry as it would a new
/// revocation, never overwriting a newer one.
pub trait Restore: Send + Sync {
    fn restore(
        &self,
        session_ids: &[Uuid],
        user_not_befores: &[(Uuid, u64)],
    ) -> impl std::future::Future<Output = Result<(), RedisError>> + Send;
}

/// How long a rebuild may hold the lock; a holder that dies is replaced after this.
const LOCK_FOR: Duration = Duration::from_secs(15);
/// How often an instance waiting for another's rebuild looks for the new epoch.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What one reading of the epoch key means to an instance whose copy was loaded under
/// `trusted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochReading {
    /// The state the copy was loaded from: nothing was lost since.
    Same,
    /// A complete state, but not the one the copy was loaded from (or there is no copy yet):
    /// Redis may be read; a copy must be loaded again.
    Rebuilt,
    /// No epoch: Redis lost its data and is not rebuilt yet. Nothing it says about
    /// revocation is believed.
    Lost,
}

/// Decides what a reading of the epoch key means. Pure; see the table in the tests.
pub fn read_epoch(trusted: Option<&str>, seen: Option<&str>) -> EpochReading {
    match (trusted, seen) {
        (_, None) => EpochReading::Lost,
        (Some(trusted), Some(seen)) if trusted == seen => EpochReading::Same,
        (_, Some(_)) => EpochReading::Rebuilt,
    }
}

/// Where this instance stands: whether a signed-in request should wait a moment for the
/// revocation state before asking Redis.
const STARTING: u8 = 0;
/// An epoch was seen: Redis is complete as far as this instance knows.
const CONFIRMED: u8 = 1;
/// The epoch was seen missing: a rebuild is under way, here or on another instance.
const REBUILDING: u8 = 2;
/// Redis or Postgres did not answer: waiting would only delay the 503.
const UNREACHABLE: u8 = 3;

/// How many sessions and users a rebuild restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub sessions: usize,
    pub users: usize,
}

/// This instance's view of the epoch, and the rebuild. Cheap to clone.
#[derive(Clone)]
pub struct Durability {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    clock: Arc<Clock>,
    /// The access-token lifetime plus leeway: how far back a revocation still matters.
    keep: Duration,
    /// Postgres, the record rebuilt from; None (unit tests of the feed alone): there is no
    /// record, and an empty Redis is complete.
    record: Option<Store>,
    epoch_key: String,
    lock_key: String,
    /// The epoch the feed's copy was loaded under.
    trusted: Mutex<Option<Arc<str>>>,
    phase: AtomicU8,
    /// Each change of phase, for checks waiting for the state to settle.
    changed: Notify,
    /// The gate saw the epoch missing: wakes the feed to rebuild now rather than at its next
    /// lease renewal.
    lost: Notify,
    rebuilds: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("the rebuild took longer than its lock")]
    TooSlow,
    #[error("the revocation epoch in Redis is gone or changed: its data was lost")]
    EpochLost,
}

impl From<redis::RedisError> for RebuildError {
    fn from(error: redis::RedisError) -> RebuildError {
        RebuildError::Redis(RedisError::Unavailable(error))
    }
}

impl From<crate::store::StoreError> for RebuildError {
    fn from(error: crate::store::StoreError) -> RebuildError {
        RebuildError::Redis(RedisError::Record(error))
    }
}

impl Durability {
    pub fn new(redis: Redis, clock: Arc<Clock>, keep: Duration, record: Option<Store>) -> Self {
        Durability {
            inner: Arc::new(Inner {
                epoch_key: redis.revocation_key(&["epoch"]),
                lock_key: redis.revocation_key(&["rebuild-lock"]),
                redis,
                clock,
                keep,
                record,
                trusted: Mutex::new(None),
                phase: AtomicU8::new(STARTING),
                changed: Notify::new(),
                lost: Notify::new(),
                rebuilds: AtomicU64::new(0),
            }),
        }
    }

    /// `<prefix>{revocation}:epoch`, which readers of revocations read after them.
    pub fn epoch_key(&self) -> &str {
        &self.inner.epoch_key
    }

    /// Rebuilds done by this instance.
    pub fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    /// What `seen` means against the epoch the copy was loaded under.
    pub fn read(&self, seen: Option<&str>) -> EpochReading {
        let trusted = self.lock_trusted().clone();
        read_epoch(trusted.as_deref(), seen)
    }

    /// The copy is now loaded under `epoch`.
    pub(crate) fn trust(&self, epoch: Option<Arc<str>>) {
        *self.lock_trusted() = epoch;
    }

    fn lock_trusted(&self) -> std::sync::MutexGuard<'_, Option<Arc<str>>> {
        self.inner.trusted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: u8) {
        if self.inner.phase.swap(phase, Ordering::AcqRel) != phase {
            self.inner.changed.notify_waiters();
        }
    }

    /// The feed could not reach Redis before confirming anything: token checks stop waiting
    /// for a state that will not come soon (a Redis down at start would add the wait to
    /// every 503).
    pub(crate) fn unreachable_at_start(&self) {
        if self
            .inner
            .phase
            .compare_exchange(STARTING, UNREACHABLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inner.changed.notify_waiters();
        }
    }

    /// A reader found no epoch: wait for the rebuild, and have the feed start it now.
    pub fn seen_lost(&self) {
        self.set_phase(REBUILDING);
        self.inner.lost.notify_one();
    }

    /// Resolves when a reader has seen the epoch missing.
    pub(crate) async fn lost(&self) {
        self.inner.lost.notified().await;
    }

    /// Whether a signed-in request would only find the state incomplete now: this instance
    /// has not confirmed it since it started, or a rebuild is under way.
    pub fn unsettled(&self) -> bool {
        matches!(
            self.inner.phase.load(Ordering::Acquire),
            STARTING | REBUILDING
        )
    }

    /// Waits, for `limit` at most, until the state is no longer being started or rebuilt.
    pub async fn settled(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let changed = self.inner.changed.notified();
                if !self.unsettled() {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }

    /// Returns the epoch Redis holds, rebuilding the revocation state from Postgres first
    /// when there is none (or waiting while another instance does).
    pub async fn ensure<W: Restore>(&self, writer: &W) -> Result<Arc<str>, RebuildError> {
        let result = self.ensure_once(writer).await;
        match &result {
            Ok(_) => self.set_phase(CONFIRMED),
            Err(_) => self.set_phase(UNREACHABLE),
        }
        result
    }

    async fn ensure_once<W: Restore>(&self, writer: &W) -> Result<Arc<str>, RebuildError> {
        let inner = &self.inner;
        let mut connection = inner.redis.connection();
        loop {
            let seen: Option<String> = connection.get(&inner.epoch_key).await?;
            if let Some(epoch) = seen {
                return Ok(epoch.into());
            }
            self.set_phase(REBUILDING);
            let holder = Uuid::new_v4().simple().to_string();
            let locked: Option<String> = redis::cmd("SET")
                .arg(&inner.lock_key)
                .arg(&holder)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_FOR.as_millis() as u64)
                .query_async(&mut connection)
                .await?;
            if locked.is_none() {
                // Another instance is rebuilding: its epoch appears when it is done, or its
                // lock lapses and the next look takes it over.
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            // Another instance may have finished, and let its lock go, between the look
            // above and this lock: its epoch stands, and nothing is rebuilt twice.
            let finished: Option<String> = connection.get(&inner.epoch_key).await?;
            if let Some(epoch) = finished {
                let _: Result<(), _> = connection.del(&inner.lock_key).await;
                return Ok(epoch.into());
            }
            // Half the lock's time, so that no second instance starts while this one writes.
            let rebuilt = tokio::time::timeout(LOCK_FOR / 2, self.rebuild(writer))
                .await
                .unwrap_or(Err(RebuildError::TooSlow));
            let rebuilt = match rebuilt {
                Ok(rebuilt) => rebuilt,
                Err(error) => {
                    let _: Result<(), _> = connection.del(&inner.lock_key).await;
                    return Err(error);
                }
            };
            // Only now is the state complete: the epoch says so to every reader.
            let epoch = Uuid::new_v4().simple().to_string();
            redis::pipe()
                .cmd("SET")
                .arg(&inner.epoch_key)
                .arg(&epoch)
                .arg("NX")
                .ignore()
                .del(&inner.lock_key)
                .ignore()
                .query_async::<()>(&mut connection)
                .await?;
            self.report(rebuilt).await;
        }
    }

    /// Writes every revocation that can still refuse a live token from Postgres into Redis.
    async fn rebuild<W: Restore>(&self, writer: &W) -> Result<Rebuilt, RebuildError> {
        let inner = &self.inner;
        let since = inner.clock.now() - inner.keep;
        let (sessions, users) = match &inner.record {
            Some(store) => (
                store.sessions_ended_since(since).await?,
                store.token_not_befores_since(since).await?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let users: Vec<(Uuid, u64)> = users
            .into_iter()
            .map(|(user_id, not_before)| (user_id, unix_seconds(not_before)))
            .collect();
        writer.restore(&sessions, &users).await?;
        Ok(Rebuilt {
            sessions: sessions.len(),
            users: users.len(),
        })
    }

    async fn report(&self, rebuilt: Rebuilt) {
        let inner = &self.inner;
        inner.rebuilds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            sessions = rebuilt.sessions,
            users = rebuilt.users,
            "revocations rebuilt from Postgres: Redis had no revocation epoch"
        );
        let Some(store) = &inner.record else {
            return;
        };
        let audited = async {
            let client = store.client().await?;
            store
                .audit(
                    &client,
                    "revocations_rebuilt",
                    None,
                    Origin::NONE,
                    &serde_json::json!({ "sessions": rebuilt.sessions, "users": rebuilt.users }),
                    inner.clock.now(),
                )
                .await
        };
        if let Err(error) = audited.await {
            tracing::warn!(%error, "could not audit a revocation rebuild");
        }
    }
}

/// Unix seconds as a time, for the record.
pub(crate) fn time_of(unix_seconds: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds)
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;
    use crate::limits::feed::RevocationFeed;
    use crate::limits::gate::{Gate, GateCheck, GateError};
    use crate::limits::revocation::Revocations;
    use crate::limits::test_redis;

    const KEEP: Duration = Duration::from_secs(60);

    fn durability(prefix: &str) -> (Durability, Revocations) {
        let redis = test_redis::connect(prefix);
        let writer = Revocations::new(redis.clone(), KEEP, None, None);
        let durability = Durability::new(redis, Arc::new(Clock::system()), KEEP, None);
        (durability, writer)
    }

    /// What a Redis that restarted empty has lost, for this test's keys alone.
    async fn lose_epoch(prefix: &str) {
        let mut connection = test_redis::connect(prefix).connection();
        let _: () = connection
            .del(format!("{prefix}{{revocation}}:epoch"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_epoch_is_set_once_and_set_anew_after_a_loss() {
        let prefix = test_redis::unique_prefix("durability-test");
        let (durability, writer) = durability(&prefix);
        let first = durability.ensure(&writer).await.unwrap();
        assert_eq!(durability.ensure(&writer).await.unwrap(), first);
        assert_eq!(
            durability.rebuilds(),
            1,
            "rebuilt once, when there was no epoch"
        );

        lose_epoch(&prefix).await;
        let second = durability.ensure(&writer).await.unwrap();
        assert_ne!(second, first);
        assert_eq!(durability.rebuilds(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_finding_no_epoch_together_rebuild_once() {
        let prefix = test_redis::unique_prefix("durability-test");
        let instances: Vec<_> = (0..4).map(|_| durability(&prefix)).collect();
        let epochs = futures_util::future::join_all(
            instances
                .iter()
                .map(|(durability, writer)| durability.ensure(writer)),
        )
        .await;
        let first = epochs[0].as_ref().unwrap();
        assert!(epochs.iter().all(|epoch| epoch.as_ref().unwrap() == first));
        let rebuilds: u64 = instances.iter().map(|(d, _)| d.rebuilds()).sum();
        assert_eq!(rebuilds, 1, "the others waited for the lock holder's epoch");
    }

    /// A gate over a feed that is not followed: its copy is never trusted, so every token
    /// check reads Redis.
    fn unfollowed_gate(prefix: &str) -> (RevocationFeed, Revocations, Gate) {
        let redis = test_redis::connect(prefix);
        let feed = RevocationFeed::new(
            redis.clone(),
            Arc::new(Clock::system()),
            KEEP,
            Duration::from_secs(2),
            true,
            None,
        );
        let writer = Revocations::new(redis.clone(), KEEP, None, None);
        let gate = Gate::with_feed(redis, Some(feed.clone()));
        (feed, writer, gate)
    }

    #[tokio::test]
    async fn the_gate_does_not_believe_a_redis_without_its_epoch() {
        let prefix = test_redis::unique_prefix("durability-test");
        let (feed, writer, gate) = unfollowed_gate(&prefix);
        feed.durability().ensure(&writer).await.unwrap();
        let check = GateCheck {
            bucket: None,
            token: Some(("s", "u", 100)),
            now_ms: 1_700_000_000_000,
        };
        assert!(!gate.check(&check).await.unwrap().revoked);

        lose_epoch(&prefix).await;
        assert!(matches!(
            gate.check(&check).await,
            Err(GateError::Rebuilding)
        ));
        assert!(feed.durability().unsettled(), "waiting for the rebuild");

        feed.durability().ensure(&writer).await.unwrap();
        assert!(!gate.check(&check).await.unwrap().revoked);
    }

    #[tokio::test]
    async fn a_request_refused_while_rebuilding_takes_no_room_in_a_small_limit() {
        let prefix = test_redis::unique_prefix("durability-test");
        let (feed, writer, gate) = unfollowed_gate(&prefix);
        let three_a_minute = crate::limits::gate::Limit {
            requests: 3,
            window: Duration::from_secs(60),
        };
        let check = |now_ms| GateCheck {
            bucket: Some(("rebuild-log", three_a_minute)),
            token: Some(("s", "u", 100)),
            now_ms,
        };
        let start = 1_700_000_000_000;
        // No epoch yet: refused while the state is rebuilt, as a request would be.
        assert!(matches!(
            gate.check(&check(start)).await,
            Err(GateError::Rebuilding)
        ));
        feed.durability().ensure(&writer).await.unwrap();
        for step in 1..=3 {
            let outcome = gate.check(&check(start + step)).await.unwrap();
            assert!(
                outcome.rate.unwrap().allowed,
                "request {step} of 3: the refused one left no entry"
            );
        }
        let fourth = gate.check(&check(start + 4)).await.unwrap();
        assert!(!fourth.rate.unwrap().allowed);
    }

    /// (epoch the copy was loaded under, epoch read, what it means).
    const READINGS: &[(Option<&str>, Option<&str>, EpochReading)] = &[
        // Nothing lost since the copy was loaded.
        (Some("a"), Some("a"), EpochReading::Same),
        // Redis lost its data and another instance rebuilt it: readable, copy reloaded.
        (Some("a"), Some("b"), EpochReading::Rebuilt),
        // No copy yet (starting): a complete state to load from.
        (None, Some("a"), EpochReading::Rebuilt),
        // Redis restarted empty, not rebuilt yet: nothing it says is believed.
        (Some("a"), None, EpochReading::Lost),
        (None, None, EpochReading::Lost),
    ];

    #[test]
    fn what_a_reading_of_the_epoch_means() {
        for &(trusted, seen, expected) in READINGS {
            assert_eq!(
                read_epoch(trusted, seen),
                expected,
                "trusted {trusted:?}, seen {seen:?}"
            );
        }
    }
}
