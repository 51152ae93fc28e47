//! Redis: the state many gateway instances share so that they act as one — revoked sessions,
//! per-user "not before" times, and the sliding-window rate-limit counters.
//!
//! Also here: [`client_key`], the one rule for which clients share a per-address budget.
//!
//! The connection is made lazily and remade by itself after an outage, so the gateway starts
//! and keeps serving while Redis is away; each caller decides what an outage means for it
//! (a revocation check fails closed by default).
//!
//! **One Redis or a Redis Cluster.** [`Connection`] is either a connection manager to the one
//! Redis at `redis.url` or the redis crate's cluster connection to the nodes of
//! `redis.cluster_nodes`, which sends each command to the master that holds its key's slot.
//! The rest of the code uses either the same way, with two rules that a cluster imposes:
//! the keys of one multi-key command or script, and of one pipeline, must share a slot; and
//! revocations are published with sharded pub/sub (`SPUBLISH`, [`Redis::publish`]), whose
//! receiver count covers every subscriber (see `subscription.rs`). The keys are laid out for
//! the first rule in a single Redis too, where hash tags cost nothing: one layout for both.
//!
//! **Keys and hash tags.** Every key starts with `redis.key_prefix`, and carries a hash tag (the
//! part in braces, which alone decides the slot in a cluster):
//! - `<prefix>rate:{<bucket>}:<window>:<index>` and `<prefix>rate-log:{<bucket>}:<window>`:
//!   a rate-limit bucket's keys share its tag, so one client's windows sit together and
//!   different clients spread over the masters;
//! - `<prefix>{revocation}:...`: every revocation key (ended sessions, not-before times), the
//!   revocation epoch and rebuild lock, the feed's index, lease, channel and acknowledgement
//!   channels: one tag, so one slot and one master ([`revocation_key`] says why).

pub mod durability;
pub mod failures;
pub mod feed;
pub mod gate;
pub mod revocation;
mod subscription;
pub mod window;

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use crate::telemetry::metrics::Timings;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis.url is not a valid Redis URL")]
    BadUrl,
    #[error("redis.cluster_nodes are not valid Redis URLs")]
    BadClusterNodes,
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    /// The revocation record in Postgres could not be written or read.
    #[error("revocation record unavailable: {0}")]
    Record(#[from] crate::store::StoreError),
}

/// The client as per-address rate limits count it: an IPv4 address is itself (an
/// IPv4-mapped IPv6 address is its IPv4 address), an IPv6 address is its network of
/// `ipv6_prefix` leading bits (1..=128), written `network/prefix`.
///
/// Why networks: one IPv6 subscriber is routinely handed a whole /64 (often far more), so
/// counting single IPv6 addresses would give each such client 2^64 budgets. A /64 is the
/// smallest block that is normally one site; `rate_limits.ipv6_prefix` moves that line.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = ipv6_prefix.clamp(1, 128);
            let mask = u128::MAX << (128 - u32::from(prefix));
            let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("{network}/{prefix}")
        }
    }
}

/// Where the gateway's Redis is: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Single(&'a str),
    Cluster(&'a [&'a str]),
}

/// A connection to the one Redis or to the cluster: commands and pipelines go through it the
/// same way (it is a [`redis::aio::ConnectionLike`]), so callers never ask which it is. A
/// cluster pipeline must keep to one slot (the crate refuses one that does not); the gate's
/// batch is split by slot for that (`gate/batch.rs`).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The Redis work whose latency `portcullis_redis_duration_seconds{operation}` records: the
/// request path's round trips (and the readiness ping). The revocation feed's background
/// subscription, leases and acknowledgements, and the rebuild after a loss, are not
/// timed: no request waits on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOperation {
    // The discriminants index `Timings`.
    /// The gate's batched rate-limit and revocation pipelines (one per slot in a cluster,
    /// timed together).
    GateCheck = 0,
    /// Giving back the places of requests a batch refused.
    GateGiveBack = 1,
    /// Writing revocations without a feed.
    RevocationWrite = 2,
    /// Writing and publishing revocations with the feed (the wait for acknowledgements not
    /// included).
    RevocationPublish = 3,
    /// Taking a place in a client's failed-login log.
    LoginFailuresTake = 4,
    LoginFailuresGiveBack = 5,
    /// `/readyz`.
    Ping = 6,
}

impl crate::telemetry::metrics::Operation for RedisOperation {
    const ALL: &'static [RedisOperation] = &[
        RedisOperation::GateCheck,
        RedisOperation::GateGiveBack,
        RedisOperation::RevocationWrite,
        RedisOperation::RevocationPublish,
        RedisOperation::LoginFailuresTake,
        RedisOperation::LoginFailuresGiveBack,
        RedisOperation::Ping,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            RedisOperation::GateCheck => "gate_check",
            RedisOperation::GateGiveBack => "gate_give_back",
            RedisOperation::RevocationWrite => "revocation_write",
            RedisOperation::RevocationPublish => "revocation_publish",
            RedisOperation::LoginFailuresTake => "login_failures_take",
            RedisOperation::LoginFailuresGiveBack => "login_failures_give_back",
            RedisOperation::Ping => "ping",
        }
    }
}

/// A shared, self-healing connection and the key prefix that keeps this deployment's (or this
/// test run's) keys apart from any other's.
#[derive(Clone)]
pub struct Redis {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    mode: Mode,
    /// One connection per worker thread, made on that thread so that its I/O runs there and
    /// a request's Redis round trip never hops threads.
    per_worker: Vec<OnceLock<Connection>>,
    /// For callers outside the workers (the ops listener, the revocation feed, tests).
    shared: OnceLock<Connection>,
    prefix: String,
    timeout: Duration,
    /// How long each kind of work took, shared by every clone.
    timings: Timings<RedisOperation>,
}

enum Mode {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        /// For the feed's subscription, a client of its own (RESP3, with a push sender).
        nodes: Vec<String>,
    },
}

impl Mode {
    fn connect(&self, timeout: Duration) -> Result<Connection, redis::RedisError> {
        match self {
            Mode::Single { client, config } => Ok(Connection::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            )),
            // Pending: the nodes are dialled in the background, and again after an outage.
            // It starts a task, so it is made on the runtime that will drive it.
            Mode::Cluster { client, .. } => Ok(Connection::Cluster(
                client.get_pending_async_connection_with_config(cluster_config(timeout)),
            )),
        }
    }
}

/// The timeouts of each cluster connection (the builder's are replaced by these).
fn cluster_config(timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
}

/// A cluster client for `nodes`: `timeout` bounds each command, retries included; one retry
/// (a `MOVED` or a reconnection) with a short wait, as the single connection makes.
fn cluster_builder(nodes: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout))
        .retries(1)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

impl Redis {
    /// No connection is made until the first command.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Redis, RedisError> {
        Self::connect_for_workers(Target::Single(url), prefix, timeout, 0)
    }

    /// As `connect`, to `target`, with a connection of its own for each of `workers` worker
    /// threads.
    pub fn connect_for_workers(
        target: Target<'_>,
        prefix: &str,
        timeout: Duration,
        workers: usize,
    ) -> Result<Redis, RedisError> {
        let shared = OnceLock::new();
        let mode = match target {
            Target::Single(url) => {
                let client = redis::Client::open(url).map_err(|_| RedisError::BadUrl)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let mode = Mode::Single { client, config };
                // Made now, so a configuration the client refuses fails here rather than later.
                let _ = shared.set(mode.connect(timeout)?);
                mode
            }
            Target::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|node| (*node).to_owned()).collect();
                let client = cluster_builder(&nodes, timeout)
                    .build()
                    .map_err(|_| RedisError::BadClusterNodes)?;
                Mode::Cluster { client, nodes }
            }
        };
        Ok(Redis {
            inner: std::sync::Arc::new(Inner {
                mode,
                per_worker: (0..workers).map(|_| OnceLock::new()).collect(),
                shared,
                prefix: prefix.to_string(),
                timeout,
                timings: Timings::default(),
            }),
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.mode, Mode::Cluster { .. })
    }

    /// How many worker threads have a connection of their own.
    pub fn workers(&self) -> usize {
        self.inner.per_worker.len()
    }

    /// `<prefix><parts joined by :>`, for a key in no particular slot.
    pub fn key(&self, parts: &[&str]) -> String {
        key(&self.inner.prefix, parts)
    }

    /// `<prefix>{revocation}:<parts joined by :>`: see [`revocation_key`].
    pub fn revocation_key(&self, parts: &[&str]) -> String {
        revocation_key(&self.inner.prefix, parts)
    }

    /// `<prefix><kind>:{<bucket>}`: see [`bucket_key`].
    pub fn bucket_key(&self, kind: &str, bucket: &str) -> String {
        bucket_key(&self.inner.prefix, kind, bucket)
    }

    /// `PUBLISH` in a single Redis, `SPUBLISH` in a cluster: classic pub/sub in a cluster
    /// reaches every node, but the count it answers covers only the subscribers of the node
    /// it was sent to, and the revocation feed waits for that count of acknowledgements.
    /// A shard channel lives on the master of its slot, with its subscribers, so the count
    /// is all of them.
    pub fn publish(&self, channel: &str, message: impl redis::ToRedisArgs) -> redis::Cmd {
        let mut command = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        command.arg(channel).arg(message);
        command
    }

    /// The calling worker's connection (made on first use, on that worker), or the shared
    /// one outside the workers.
    pub fn connection(&self) -> Connection {
        let inner = &self.inner;
        let slot = crate::workers::worker_index().and_then(|index| inner.per_worker.get(index));
        let Some(slot) = slot else {
            return self.shared();
        };
        slot.get_or_init(|| {
            inner
                .mode
                .connect(inner.timeout)
                .unwrap_or_else(|_| self.shared())
        })
        .clone()
    }

    fn shared(&self) -> Connection {
        let inner = &self.inner;
        inner
            .shared
            .get_or_init(|| match inner.mode.connect(inner.timeout) {
                Ok(connection) => connection,
                // Only a single Redis can refuse, and its connection is made with the Redis.
                Err(_) => unreachable!("the shared connection to a single Redis is made first"),
            })
            .clone()
    }

    /// Whether Redis answers: every master of a cluster.
    pub async fn ping(&self) -> bool {
        let ping = async {
            match self.connection() {
                Connection::Single(mut connection) => redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok(),
                Connection::Cluster(mut connection) => {
                    masters_answer(&mut connection).await.is_ok()
                }
            }
        };
        self.timed(RedisOperation::Ping, ping).await
    }

    /// Runs `work` (Redis round trips of one kind) and records how long it took.
    pub async fn timed<F: std::future::Future>(
        &self,
        operation: RedisOperation,
        work: F,
    ) -> F::Output {
        self.inner.timings.time(operation, work).await
    }

    /// Records `latency` under `operation`, for work timed by its caller.
    pub fn record(&self, operation: RedisOperation, latency: Duration) {
        self.inner.timings.record(operation, latency);
    }

    /// `portcullis_redis_duration_seconds`, for `/metrics`.
    pub fn render_timings(&self, out: &mut String) {
        self.inner.timings.render(
            out,
            "portcullis_redis_duration_seconds",
            "Time Redis took to answer, by operation: the gate's batched rate-limit and \
             revocation pipelines, give-backs, revocation writes, the failed-login log, the \
             readiness ping.",
        );
    }
}

/// Every master answers a `PING`, sent to each by the address `CLUSTER SLOTS` names for it.
/// Not the crate's own `PING` to all masters, nor one routed by slot: the first skips a master
/// it has lost its connection to, the second falls back to another node, and both then
/// answer for a cluster with a master down. By address, a lost master is an error until
/// the crate's background repair has connected to it again.
async fn masters_answer(connection: &mut ClusterConnection) -> redis::RedisResult<()> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    // Each range: its first slot, its last, its master as [host, port, id, ...], replicas.
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await?;
    let mut masters = std::collections::BTreeSet::new();
    for range in ranges {
        let master = range.into_iter().nth(2).unwrap_or(redis::Value::Nil);
        let mut address = redis::from_redis_value::<Vec<redis::Value>>(master)?.into_iter();
        let host: String = redis::from_redis_value(address.next().unwrap_or(redis::Value::Nil))?;
        let port: u16 = redis::from_redis_value(address.next().unwrap_or(redis::Value::Nil))?;
        masters.insert((host, port));
    }
    if masters.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::ClusterConnectionNotFound,
            "the cluster serves no slots",
        )));
    }
    let pings = masters.into_iter().map(|(host, port)| {
        let mut connection = connection.clone();
        async move {
            let to_master =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            connection
                .route_command(redis::cmd("PING"), to_master)
                .await
        }
    });
    for answer in futures_util::future::join_all(pings).await {
        answer?;
    }
    Ok(())
}

/// `<prefix><parts joined by :>`.
fn key(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::with_capacity(prefix.len() + 48);
    key.push_str(prefix);
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            key.push(':');
        }
        key.push_str(part);
    }
    key
}

/// `<prefix>{revocation}:<parts joined by :>`: every revocation key, the revocation epoch and
/// rebuild lock, and the feed's index, lease and channels.
///
/// One hash tag, so one slot and one master, for two reasons. Their multi-key commands and
/// pipelines (a revocation's keys with its index update and publication; the gate's `MGET`
/// of revocation keys followed by the epoch) must stay in one slot. And the epoch must live
/// where the revocations live: it says "nothing was lost since the state was complete" only
/// of the data beside it. Were it on another master, a restart that emptied the master
/// holding the revocations would leave the epoch standing, and the emptied keys would be
/// believed; beside them, the restart takes the epoch too, and the next read sees it gone
/// and has the state rebuilt from Postgres.
fn revocation_key(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::with_capacity(prefix.len() + 64);
    key.push_str(prefix);
    key.push_str("{revocation}");
    for part in parts {
        key.push(':');
        key.push_str(part);
    }
    key
}

/// `<prefix><kind>:{<bucket>}`, to which the caller appends the window: a rate-limit
/// bucket's keys are tagged with the bucket, so each bucket's windows share a slot and the
/// buckets of many clients spread over a cluster's masters.
///
/// A bucket with a `}` of its own (a recipient address may have one) ends the tag early,
/// at the same place in every key of that bucket: they still share a slot.
fn bucket_key(prefix: &str, kind: &str, bucket: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + kind.len() + bucket.len() + 32);
    key.push_str(prefix);
    key.push_str(kind);
    key.push_str(":{");
    key.push_str(bucket);
    key.push('}');
    key
}

#[cfg(test)]
mod key_tests {
    use redis::cluster_routing::Slot;

    use super::{bucket_key, revocation_key};

    #[test]
    fn revocation_keys_share_one_slot_whatever_follows_the_tag() {
        let prefix = "portcullis:";
        let keys = [
            revocation_key(prefix, &["sid", "0b9e3c1a-3f1e-4c55-9a55-0c1f8a1b2c3d"]),
            revocation_key(
                prefix,
                &["user-nbf", "6f1c0c4e-6b8e-4a55-9a55-0c1f8a1b2c3d"],
            ),
            revocation_key(prefix, &["epoch"]),
            revocation_key(prefix, &["rebuild-lock"]),
            revocation_key(prefix, &["index"]),
            revocation_key(prefix, &["lease"]),
            revocation_key(prefix, &["feed"]),
            revocation_key(prefix, &["acks", "5d2c"]),
        ];
        assert_eq!(keys[2], "portcullis:{revocation}:epoch");
        for key in &keys {
            assert!(key.starts_with(prefix), "{key}");
            assert_eq!(Slot::for_key(key), Slot::for_key(&keys[0]), "{key}");
        }
        // Another prefix (another deployment, or test run) keeps apart by name, not by slot.
        assert_eq!(
            Slot::for_key(revocation_key("other:", &["epoch"])),
            Slot::for_key(&keys[0])
        );
    }

    #[test]
    fn a_buckets_keys_share_a_slot_and_buckets_spread() {
        let prefix = "portcullis:";
        let current = format!(
            "{}:60000:28333333",
            bucket_key(prefix, "rate", "ip:203.0.113.9")
        );
        let previous = format!(
            "{}:60000:28333332",
            bucket_key(prefix, "rate", "ip:203.0.113.9")
        );
        assert_eq!(current, "portcullis:rate:{ip:203.0.113.9}:60000:28333333");
        assert_eq!(Slot::for_key(&current), Slot::for_key(&previous));
        // A bucket carrying braces of its own still keeps its keys together.
        let odd = bucket_key(prefix, "rate", "mail:a}b{c@example.com");
        assert_eq!(
            Slot::for_key(format!("{odd}:1:1")),
            Slot::for_key(format!("{odd}:1:0"))
        );
        let slots: std::collections::HashSet<_> = (0..32)
            .map(|n| Slot::for_key(bucket_key(prefix, "rate", &format!("ip:198.51.100.{n}"))))
            .collect();
        assert!(
            slots.len() > 16,
            "clients spread over the slots: {}",
            slots.len()
        );
    }
}

#[cfg(test)]
mod client_key_tests {
    use super::client_key;

    #[test]
    fn table() {
        #[rustfmt::skip]
        let cases: &[(&str, u8, &str)] = &[
            // IPv4 is counted per address, whatever the IPv6 prefix.
            ("203.0.113.9", 64, "203.0.113.9"),
            ("203.0.113.9", 1, "203.0.113.9"),
            // An IPv4-mapped address is the IPv4 client it stands for.
            ("::ffff:203.0.113.9", 64, "203.0.113.9"),
            // IPv6: the /64 by default, so a host's addresses share one budget...
            ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
            // ...and the next /64 has its own.
            ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
            // Other prefixes, down to single addresses and up to half the space.
            ("2001:db8:1:2::1", 48, "2001:db8:1::/48"),
            ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"),
            ("2001:db8:1:2:3:4:5:6", 127, "2001:db8:1:2:3:4:5:6/127"),
            ("2001:db8:1:2:3:4:5:7", 127, "2001:db8:1:2:3:4:5:6/127"),
            ("ffff::1", 1, "8000::/1"),
            // The loopback and the unspecified address are IPv6 addresses like any other.
            ("::1", 64, "::/64"),
            ("::", 64, "::/64"),
            // Out-of-range prefixes (refused by config validation) are clamped, not a panic.
            ("2001:db8::1", 0, "::/1"),
            ("2001:db8::1", 200, "2001:db8::1/128"),
        ];
        for &(ip, prefix, expected) in cases {
            assert_eq!(
                client_key(ip.parse().unwrap(), prefix),
                expected,
                "{ip} /{prefix}"
            );
        }
    }
}

/// The real Redis the unit tests talk to, and a key prefix of each test's own so that tests
/// (and concurrent runs) never meet each other's keys.
#[cfg(test)]
pub(crate) mod test_redis {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::Redis;

    pub const URL: &str = "redis://127.0.0.1:6379/";

    /// `{label}:{process}:{n}:`, new for every call.
    pub fn unique_prefix(label: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "{label}:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn connect(prefix: &str) -> Redis {
        Redis::connect(URL, prefix, Duration::from_secs(2)).expect("valid url")
    }
}
