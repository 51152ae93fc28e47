//! The revocation list pushed to every instance, so that a signed-in request is checked
//! against a local copy instead of Redis, without giving up "revoked on one instance, refused
//! by every instance on the very next request".
//!
//! **How a revocation travels.** The writer (`revocation.rs`) sets the Redis keys the gate
//! reads, adds the revocation to an index (a sorted set scored by when it may be forgotten),
//! and publishes it, all in one pipeline. Every instance's feed is subscribed: it applies the
//! revocation to its copy, then acknowledges it to the writer. The writer answers its caller
//! (the logout, say) only once every subscriber has acknowledged, or once a lease has passed.
//!
//! **Why the copy can be trusted: a lease.** The feed confirms its subscription every quarter
//! lease: a `PING` on its subscribed connection, which Redis answers in order, so the `PONG`
//! arrives after every message published before Redis read the `PING` (in a cluster, a fence
//! published to itself and received back, to the same effect: `subscription.rs`). The feed
//! applies those messages first, then trusts its copy for one lease from when it *sent* the
//! confirmation.
//! A writer that has not heard from some subscriber waits out a whole lease after its
//! publish was answered: the longest lease any instance has announced (instances announce
//! theirs before they first trust their copy), so differently configured instances stay
//! safe. By then that subscriber has either applied the revocation (any confirmation it
//! sent since is answered after the message) or stopped trusting its copy, so the gate asks
//! Redis for it, where the keys are already set. A feed that loses its connection
//! stops trusting at once, and trusts again only after reloading the list from the index.
//!
//! **Why the copy is never loaded from a Redis that lost its data.** Before loading, the feed
//! makes sure Redis holds a revocation epoch, rebuilding the state from Postgres first if it
//! does not ([`super::durability`]); it reads the epoch again after the index, in the same
//! round trip, and at every lease renewal. A missing or different epoch ends trust at once,
//! and the feed starts over: rebuild (or wait for another instance's), then reload.
//!
//! Nothing here decides alone: an untrusted copy answers "don't know", and the gate then
//! reads Redis exactly as it does without a feed.
//!
//! **In a Redis Cluster** the same holds with sharded pub/sub: the channels, the index, the
//! lease and the epoch share the revocation hash tag, so they live on one master, whose
//! `SPUBLISH` count covers every instance's subscription (each subscribes there). A restart
//! of that master closes every subscription and takes the epoch with the data. What this
//! does not close: an instance still subscribed to a master that has just handed the slot
//! to another (a failover, a resharding) is not counted by the next publish there; Redis
//! unsubscribes it (or its connection drops) and it stops trusting at once, but a writer
//! in that instant waits for its acknowledgement no longer than for the others'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokio::sync::Notify;

use super::durability::{Durability, EpochReading, RebuildError, Restore};
use super::subscription::Subscription;
use super::{Connection, Redis, RedisOperation};
use crate::clock::Clock;
use crate::store::Store;

/// The one member of the longest-lease sorted set.
const LONGEST: &str = "longest";
/// How long the longest announced lease is remembered after the last announcement.
const LONGEST_LEASE_KEPT: Duration = Duration::from_secs(24 * 3600);

/// One revocation as published and as kept in the index: `sid|<session id>` or
/// `nbf|<user id>|<unix seconds>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Session(String),
    UserBefore(String, u64),
}

impl Revoked {
    fn encode(&self) -> String {
        match self {
            Revoked::Session(session_id) => format!("sid|{session_id}"),
            Revoked::UserBefore(user_id, not_before) => format!("nbf|{user_id}|{not_before}"),
        }
    }

    fn decode(text: &str) -> Option<Revoked> {
        let mut parts = text.split('|');
        let revoked = match (parts.next()?, parts.next()?, parts.next()) {
            ("sid", session_id, None) => Revoked::Session(session_id.to_owned()),
            ("nbf", user_id, Some(not_before)) => {
                Revoked::UserBefore(user_id.to_owned(), not_before.parse().ok()?)
            }
            _ => return None,
        };
        parts.next().is_none().then_some(revoked)
    }
}

/// The revocations still in force, and when each may be forgotten (unix ms).
#[derive(Default)]
struct Copy {
    sessions: HashMap<String, u64>,
    /// The latest not-before time of each user.
    users: HashMap<String, (u64, u64)>,
}

impl Copy {
    fn apply(&mut self, revoked: Revoked, forget_at_ms: u64) {
        match revoked {
            Revoked::Session(session_id) => {
                let at = self.sessions.entry(session_id).or_insert(0);
                *at = (*at).max(forget_at_ms);
            }
            Revoked::UserBefore(user_id, not_before) => {
                let (latest, at) = self.users.entry(user_id).or_insert((0, 0));
                *latest = (*latest).max(not_before);
                *at = (*at).max(forget_at_ms);
            }
        }
    }

    fn forget_until(&mut self, now_ms: u64) {
        self.sessions.retain(|_, at| *at > now_ms);
        self.users.retain(|_, (_, at)| *at > now_ms);
    }
}

/// This instance's copy of the revocation list, and the acknowledgements its own
/// revocations wait for. Cheap to clone.
#[derive(Clone)]
pub struct RevocationFeed {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    clock: Arc<Clock>,
    /// `<prefix>{revocation}:feed`, where revocations are published.
    channel: String,
    /// `<prefix>{revocation}:acks:<instance>`, where this instance's revocations are
    /// acknowledged.
    acks_channel: String,
    /// `<prefix>{revocation}:index`: every revocation in force, scored by when it may be
    /// forgotten (unix ms).
    index: String,
    /// `<prefix>{revocation}:lease`: the longest lease any instance has announced (ms), which
    /// is how long a writer must wait for an instance that does not acknowledge.
    longest_lease: String,
    instance: String,
    /// Whether tokens are checked against the copy. Without, the feed still follows and
    /// acknowledges, so that instances which do check see this one's revocations in time.
    check_tokens: bool,
    lease: Duration,
    /// How long a revocation is kept: the access-token lifetime plus leeway.
    keep: Duration,
    /// For the lease, which is measured on this monotonic clock (real time, whatever a test
    /// does to `clock`).
    started: Instant,
    /// Milliseconds since `started` until which the copy may be trusted; 0: not trusted.
    trusted_until_ms: AtomicU64,
    copy: RwLock<Copy>,
    next_publication: AtomicU64,
    /// Each waiting publication's acknowledgements so far.
    acks: Mutex<HashMap<u64, usize>>,
    acked: Notify,
    /// The revocation epoch, and the rebuild from Postgres when Redis lost its data.
    durability: Durability,
}

impl RevocationFeed {
    /// `keep`: how long a revocation must be remembered (the access-token lifetime plus
    /// leeway). `lease`: how long the copy is trusted after each confirmation, and the
    /// longest a revocation can wait for a silent instance.
    ///
    /// `check_tokens: false` keeps the feed following and acknowledging (an instance that
    /// writes revocations needs its subscription for the acknowledgements, and the others
    /// need its) but never answers from the copy.
    ///
    /// `record`: Postgres, from which the revocation state is rebuilt when Redis lost it.
    pub fn new(
        redis: Redis,
        clock: Arc<Clock>,
        keep: Duration,
        lease: Duration,
        check_tokens: bool,
        record: Option<Store>,
    ) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        RevocationFeed {
            inner: Arc::new(Inner {
                durability: Durability::new(redis.clone(), clock.clone(), keep, record),
                channel: redis.revocation_key(&["feed"]),
                acks_channel: redis.revocation_key(&["acks", &instance]),
                index: redis.revocation_key(&["index"]),
                longest_lease: redis.revocation_key(&["lease"]),
                redis,
                clock,
                instance,
                check_tokens,
                lease,
                keep,
                started: Instant::now(),
                trusted_until_ms: AtomicU64::new(0),
                copy: RwLock::new(Copy::default()),
                next_publication: AtomicU64::new(1),
                acks: Mutex::new(HashMap::new()),
                acked: Notify::new(),
            }),
        }
    }

    /// The revocation epoch this instance reads Redis under.
    pub fn durability(&self) -> &Durability {
        &self.inner.durability
    }

    /// Whether a token of this session and user, issued at `issued_at` (unix seconds), is
    /// revoked; `None` while the copy is not trusted, when only Redis can say.
    pub fn revoked(&self, session_id: &str, user_id: &str, issued_at: u64) -> Option<bool> {
        if !self.trusted() {
            return None;
        }
        let copy = self.inner.copy.read().unwrap_or_else(|e| e.into_inner());
        let revoked = copy.sessions.contains_key(session_id)
            || copy
                .users
                .get(user_id)
                .is_some_and(|(not_before, _)| issued_at < *not_before);
        // Trust is checked again after reading: a copy that lost trust meanwhile may have
        // missed what was published since.
        self.trusted().then_some(revoked)
    }

    /// Whether tokens are checked against the copy now: it is up to date under a lease, and
    /// checking against it is on.
    pub fn trusted(&self) -> bool {
        self.inner.check_tokens && self.following()
    }

    /// Whether the copy is up to date under a lease.
    pub fn following(&self) -> bool {
        self.inner.trusted_until_ms.load(Ordering::Acquire) > self.elapsed_ms()
    }

    fn elapsed_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Adds `pipe`'s revocations to the index and publishes them, after the commands already
    /// in it (which set the gate's keys), then waits until every subscribed instance has
    /// acknowledged them, for one lease at most.
    pub async fn publish(
        &self,
        mut pipe: redis::Pipeline,
        revoked: &[Revoked],
    ) -> Result<(), redis::RedisError> {
        let inner = &self.inner;
        let now_ms = inner.clock.unix_millis();
        let forget_at_ms = now_ms + inner.keep.as_millis() as u64;
        for revocation in revoked {
            pipe.zadd(&inner.index, revocation.encode(), forget_at_ms)
                .ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&inner.index)
            .arg("-inf")
            .arg(now_ms)
            .ignore()
            .pexpire(&inner.index, inner.keep.as_millis() as i64)
            .ignore();
        let publication = inner.next_publication.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "{}|{publication}|{forget_at_ms}|{}",
            inner.instance,
            revoked
                .iter()
                .map(Revoked::encode)
                .collect::<Vec<_>>()
                .join(";")
        );
        pipe.zscore(&inner.longest_lease, LONGEST)
            .add_command(inner.redis.publish(&inner.channel, message));
        self.lock_acks().insert(publication, 0);
        let mut connection = inner.redis.connection();
        let receivers = inner
            .redis
            .timed(
                RedisOperation::RevocationPublish,
                pipe.query_async::<(Option<u64>, usize)>(&mut connection),
            )
            .await;
        let result = match receivers {
            Ok((longest_ms, receivers)) => {
                // Whoever is silent may trust its copy for as long as its own lease.
                let wait = inner
                    .lease
                    .max(Duration::from_millis(longest_ms.unwrap_or(0)));
                let acknowledged = async {
                    loop {
                        let notified = inner.acked.notified();
                        if self.lock_acks().get(&publication).copied().unwrap_or(0) >= receivers {
                            return;
                        }
                        notified.await;
                    }
                };
                if tokio::time::timeout(wait, acknowledged).await.is_err() {
                    tracing::warn!(
                        receivers,
                        "a revocation was not acknowledged by every instance; waited out the lease"
                    );
                }
                Ok(())
            }
            Err(error) => Err(error),
        };
        self.lock_acks().remove(&publication);
        result
    }

    fn lock_acks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.inner.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the copy up to date for as long as it runs: subscribes, loads the index, and
    /// renews the lease; after a lost connection, the same again. What Redis lost is
    /// rebuilt through `writer` (the revocation writer that publishes through this feed).
    pub async fn run<W: Restore>(self, writer: W) {
        const FIRST_RETRY: Duration = Duration::from_millis(50);
        let mut backoff = FIRST_RETRY;
        loop {
            let error = self.follow(&writer).await;
            // Zero unless this attempt got as far as trusting its copy: then the next outage
            // starts its retries quickly again.
            if self.inner.trusted_until_ms.swap(0, Ordering::AcqRel) != 0 {
                backoff = FIRST_RETRY;
            }
            tracing::warn!(%error, "revocation feed interrupted; checking revocations in Redis until it is back");
            self.inner.durability.unreachable_at_start();
            // A reader that finds the epoch gone wakes the feed to rebuild at once.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.inner.durability.lost() => {}
            }
            backoff = (backoff * 2).min(self.inner.lease);
        }
    }

    async fn follow<W: Restore>(&self, writer: &W) -> RebuildError {
        match self.follow_once(writer).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn follow_once<W: Restore>(
        &self,
        writer: &W,
    ) -> Result<std::convert::Infallible, RebuildError> {
        let inner = &self.inner;
        let timeout = inner.lease;
        // Announced before this copy is ever trusted, so that no writer waits less than it.
        within(timeout, self.announce_lease()).await?;
        // A complete state first, rebuilt from Postgres if Redis lost it. Not subscribed yet,
        // so the rebuild's own publications wait for no acknowledgement of this instance's.
        let epoch = inner.durability.ensure(writer).await?;
        let mut subscription = within(
            timeout,
            Subscription::open(&inner.redis, &inner.channel, &inner.acks_channel),
        )
        .await?;
        // Subscribed first, then the index: a revocation published meanwhile is in one or the
        // other (or both; applying one twice changes nothing).
        let now_ms = inner.clock.unix_millis();
        let mut connection = inner.redis.connection();
        // The epoch after the index: if it is still the one ensured, the index was read
        // from a complete state.
        let (listed, seen): (Vec<(String, u64)>, Option<String>) = within(
            timeout,
            redis::pipe()
                .cmd("ZRANGEBYSCORE")
                .arg(&inner.index)
                .arg(now_ms)
                .arg("+inf")
                .arg("WITHSCORES")
                .get(inner.durability.epoch_key())
                .query_async(&mut connection),
        )
        .await?;
        if seen.as_deref() != Some(&*epoch) {
            return Err(RebuildError::EpochLost);
        }
        {
            let mut copy = inner.copy.write().unwrap_or_else(|e| e.into_inner());
            *copy = Copy::default();
            for (member, forget_at_ms) in listed {
                if let Some(revoked) = Revoked::decode(&member) {
                    copy.apply(revoked, forget_at_ms);
                }
            }
        }
        inner.durability.trust(Some(epoch));
        let renew_every = inner.lease / 4;
        let mut next_ping = tokio::time::Instant::now();
        loop {
            // Not biased: a steady stream of revocations must not hold off the lease renewal.
            tokio::select! {
                message = subscription.next() => self.receive(&message?),
                () = inner.durability.lost() => self.epoch_unchanged(&mut connection).await?,
                () = tokio::time::sleep_until(next_ping) => {
                    let sent_ms = self.elapsed_ms();
                    within(timeout, subscription.confirm(|message| self.receive(message)))
                        .await?;
                    // One GET a quarter lease, off the requests' path: a Redis that lost its
                    // data while this connection stayed up (a flush, a failover behind a
                    // proxy) ends trust here, before it is renewed. A restart needs no GET:
                    // it closes the subscription.
                    self.epoch_unchanged(&mut connection).await?;
                    // Every message published before the confirmation is received now:
                    // apply them before extending the lease.
                    subscription.drain(|message| self.receive(message)).await?;
                    inner.copy.write().unwrap_or_else(|e| e.into_inner())
                        .forget_until(inner.clock.unix_millis());
                    inner
                        .trusted_until_ms
                        .store(sent_ms + inner.lease.as_millis() as u64, Ordering::Release);
                    next_ping = tokio::time::Instant::now() + renew_every;
                    // Kept from expiring for as long as an instance with this lease runs.
                    let feed = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = feed.announce_lease().await {
                            tracing::debug!(%error, "could not announce the revocation lease");
                        }
                    });
                }
            }
        }
    }

    /// Reads the epoch: an error unless it is the one the copy was loaded under.
    async fn epoch_unchanged(&self, connection: &mut Connection) -> Result<(), RebuildError> {
        let durability = &self.inner.durability;
        let seen: Option<String> =
            within(self.inner.lease, connection.get(durability.epoch_key())).await?;
        match durability.read(seen.as_deref()) {
            EpochReading::Same => Ok(()),
            EpochReading::Rebuilt | EpochReading::Lost => {
                durability.trust(None);
                Err(RebuildError::EpochLost)
            }
        }
    }

    /// Raises the longest announced lease to this instance's if it is longer (`ZADD GT`,
    /// Redis 6.2 or later). It does not come down when such an instance leaves, only when no
    /// instance has announced it for a day: a writer may then wait longer than needed for a
    /// silent instance, never shorter.
    async fn announce_lease(&self) -> redis::RedisResult<()> {
        let inner = &self.inner;
        let mut connection = inner.redis.connection();
        redis::pipe()
            .cmd("ZADD")
            .arg(&inner.longest_lease)
            .arg("GT")
            .arg(inner.lease.as_millis() as u64)
            .arg(LONGEST)
            .ignore()
            .pexpire(&inner.longest_lease, LONGEST_LEASE_KEPT.as_millis() as i64)
            .ignore()
            .query_async(&mut connection)
            .await
    }

    fn receive(&self, message: &redis::Msg) {
        let inner = &self.inner;
        let Ok(payload) = message.get_payload::<String>() else {
            return;
        };
        if message.get_channel_name() == inner.acks_channel {
            if let Ok(publication) = payload.parse::<u64>() {
                if let Some(count) = self.lock_acks().get_mut(&publication) {
                    *count += 1;
                }
                inner.acked.notify_waiters();
            }
            return;
        }
        // `{instance}|{publication}|{forget_at_ms}|{revocation};{revocation}...`
        let mut parts = payload.splitn(4, '|');
        let (Some(origin), Some(publication), Some(forget_at_ms), Some(list)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            tracing::warn!("ignoring a malformed revocation message");
            return;
        };
        let Ok(forget_at_ms) = forget_at_ms.parse::<u64>() else {
            tracing::warn!("ignoring a malformed revocation message");
            return;
        };
        {
            let mut copy = inner.copy.write().unwrap_or_else(|e| e.into_inner());
            for revoked in list.split(';').filter_map(Revoked::decode) {
                copy.apply(revoked, forget_at_ms);
            }
        }
        // Applied: now the writer may be told. Sent from a task of its own so that the next
        // message is not held up by this round trip.
        let acknowledgement = inner
            .redis
            .publish(&inner.redis.revocation_key(&["acks", origin]), publication);
        let mut connection = inner.redis.connection();
        tokio::spawn(async move {
            if let Err(error) = acknowledgement.query_async::<()>(&mut connection).await {
                tracing::debug!(%error, "could not acknowledge a revocation");
            }
        });
    }
}

async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

#[cfg(test)]
mod tests {

    use uuid::Uuid;

    use super::*;
    use crate::limits::gate::{Gate, GateCheck};
    use crate::limits::revocation::Revocations;
    use crate::limits::test_redis::URL as REDIS_URL;

    const KEEP: Duration = Duration::from_secs(60);

    /// Each test's instances share a prefix of their own.
    fn prefix() -> String {
        crate::limits::test_redis::unique_prefix("feed-test")
    }

    fn redis(prefix: &str) -> Redis {
        crate::limits::test_redis::connect(prefix)
    }

    fn feed(prefix: &str, lease: Duration) -> RevocationFeed {
        RevocationFeed::new(
            redis(prefix),
            Arc::new(Clock::system()),
            KEEP,
            lease,
            true,
            None,
        )
    }

    /// An instance: its feed followed until trusted, and its writer.
    async fn instance(prefix: &str) -> (RevocationFeed, Revocations) {
        started(feed(prefix, Duration::from_secs(2))).await
    }

    async fn started(feed: RevocationFeed) -> (RevocationFeed, Revocations) {
        let prefix = feed.inner.redis.key(&[]);
        let revocations = Revocations::new(redis(&prefix), KEEP, Some(feed.clone()), None);
        tokio::spawn(feed.clone().run(revocations.clone()));
        tokio::time::timeout(Duration::from_secs(5), async {
            while !feed.following() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("trusted once subscribed");
        (feed, revocations)
    }

    /// Something subscribed to the revocations that is not a gateway: counted by `PUBLISH`,
    /// never acknowledging.
    async fn silent_subscriber(prefix: &str) -> redis::aio::PubSub {
        let mut silent = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        silent
            .subscribe(format!("{prefix}{{revocation}}:feed"))
            .await
            .unwrap();
        silent
    }

    #[test]
    fn revocations_read_back_from_their_text_and_malformed_text_is_nothing() {
        for revoked in [
            Revoked::Session("a1".into()),
            Revoked::UserBefore("u1".into(), 1_700_000_000),
        ] {
            assert_eq!(Revoked::decode(&revoked.encode()), Some(revoked));
        }
        for malformed in [
            "",
            "sid",
            "sid|a|b",
            "nbf|u",
            "nbf|u|soon",
            "nbf|u|1|2",
            "x|a",
        ] {
            assert_eq!(Revoked::decode(malformed), None, "{malformed:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_is_in_every_copy_when_its_write_returns() {
        let prefix = prefix();
        let (first, writer) = instance(&prefix).await;
        let (second, _) = instance(&prefix).await;
        let (session, other_session, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (session, other_session, user_id) = (
            session.to_string(),
            other_session.to_string(),
            user.to_string(),
        );
        assert_eq!(second.revoked(&session, &user_id, 10), Some(false));

        writer
            .revoke_sessions(&[Uuid::parse_str(&session).unwrap()])
            .await
            .unwrap();
        for copy in [&first, &second] {
            assert_eq!(copy.revoked(&session, &user_id, 10), Some(true));
            assert_eq!(copy.revoked(&other_session, &user_id, 10), Some(false));
        }

        writer.set_user_not_before(user, 1_000).await.unwrap();
        for copy in [&first, &second] {
            assert_eq!(copy.revoked(&other_session, &user_id, 999), Some(true));
            assert_eq!(copy.revoked(&other_session, &user_id, 1_000), Some(false));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_starting_later_loads_what_was_revoked_before() {
        let prefix = prefix();
        let (_, writer) = instance(&prefix).await;
        let session = Uuid::new_v4();
        let user = Uuid::new_v4();
        writer.revoke_sessions(&[session]).await.unwrap();
        writer.set_user_not_before(user, 500).await.unwrap();

        let (later, _) = instance(&prefix).await;
        assert_eq!(later.revoked(&session.to_string(), "x", 10), Some(true));
        assert_eq!(later.revoked("y", &user.to_string(), 499), Some(true));
        assert_eq!(later.revoked("y", &user.to_string(), 500), Some(false));
    }

    #[tokio::test]
    async fn a_copy_that_is_not_following_redis_answers_nothing() {
        let idle = feed(&prefix(), Duration::from_secs(2));
        assert_eq!(idle.revoked("s", "u", 1), None);

        let unreachable = RevocationFeed::new(
            Redis::connect(
                "redis://127.0.0.1:1/",
                &prefix(),
                Duration::from_millis(100),
            )
            .unwrap(),
            Arc::new(Clock::system()),
            KEEP,
            Duration::from_millis(100),
            true,
            None,
        );
        let writer = Revocations::new(unreachable.inner.redis.clone(), KEEP, None, None);
        let following = tokio::spawn(unreachable.clone().run(writer));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(unreachable.revoked("s", "u", 1), None);
        following.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_never_acknowledges_holds_a_revocation_for_one_lease() {
        let prefix = prefix();
        let lease = Duration::from_millis(300);
        let writer_feed = feed(&prefix, lease);
        let writer = Revocations::new(redis(&prefix), KEEP, Some(writer_feed.clone()), None);
        tokio::spawn(writer_feed.run(writer.clone()));
        let _silent = silent_subscriber(&prefix).await;

        let started = Instant::now();
        writer.revoke_sessions(&[Uuid::new_v4()]).await.unwrap();
        assert!(
            started.elapsed() >= lease,
            "returned after {:?}, before the silent instance's lease could end",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_checks_a_token_against_a_trusted_copy_without_redis() {
        let prefix = prefix();
        let (feed, writer) = instance(&prefix).await;
        let gate = Gate::with_feed(redis(&prefix), Some(feed));
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        let (session_id, user_id) = (session.to_string(), user.to_string());
        let check = GateCheck {
            bucket: None,
            token: Some((&session_id, &user_id, 100)),
            now_ms: 1_700_000_000_000,
        };
        assert!(!gate.check(&check).await.unwrap().revoked);
        writer.revoke_sessions(&[session]).await.unwrap();
        assert!(gate.check(&check).await.unwrap().revoked);
        assert_eq!(gate.round_trips(), 0, "answered from the copy");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_not_checking_against_its_copy_still_publishes_and_acknowledges() {
        let prefix = prefix();
        let (checking, _) = instance(&prefix).await;
        let (not_checking, writer) = started(RevocationFeed::new(
            redis(&prefix),
            Arc::new(Clock::system()),
            KEEP,
            Duration::from_secs(2),
            false,
            None,
        ))
        .await;
        assert_eq!(not_checking.revoked("s", "u", 1), None, "never answers");
        let session = Uuid::new_v4();
        let started = Instant::now();
        writer.revoke_sessions(&[session]).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "acknowledged");
        assert_eq!(checking.revoked(&session.to_string(), "u", 1), Some(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_waits_out_the_longest_lease_any_instance_announced() {
        let prefix = prefix();
        // An instance with a long lease announces it, then falls silent (never acknowledges).
        let long = feed(&prefix, Duration::from_millis(400));
        long.announce_lease().await.unwrap();
        let _silent = silent_subscriber(&prefix).await;
        let (_, writer) = started(feed(&prefix, Duration::from_millis(50))).await;

        let started = Instant::now();
        writer.revoke_sessions(&[Uuid::new_v4()]).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "returned after {:?}, inside the silent instance's lease",
            started.elapsed()
        );
    }
}
