//! Redis: the state many gateway instances share so that they act as one — revoked sessions,
//! per-user "not before" times, and the sliding-window rate-limit counters.
//!
//! Also here: [`client_key`], the one rule for which clients share a per-address budget.
//!
//! The connection is made lazily and remade by itself after an outage, so the gateway starts
//! and keeps serving while Redis is away; each caller decides what an outage means for it
//! (a revocation check fails closed by default).

pub mod durability;
pub mod feed;
pub mod gate;
pub mod revocation;
pub mod window;

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis.url is not a valid Redis URL")]
    BadUrl,
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

/// A shared, self-healing connection and the key prefix that keeps this deployment's (or this
/// test run's) keys apart from any other's.
#[derive(Clone)]
pub struct Redis {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// One connection per worker thread, made on that thread so that its I/O runs there and
    /// a request's Redis round trip never hops threads.
    per_worker: Vec<std::sync::OnceLock<ConnectionManager>>,
    /// For callers outside the workers (the ops listener, tests).
    shared: ConnectionManager,
    prefix: String,
}

impl Redis {
    /// No connection is made until the first command.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Redis, RedisError> {
        Self::connect_for_workers(url, prefix, timeout, 0)
    }

    /// As `connect`, with a connection of its own for each of `workers` worker threads.
    pub fn connect_for_workers(
        url: &str,
        prefix: &str,
        timeout: Duration,
        workers: usize,
    ) -> Result<Redis, RedisError> {
        let client = redis::Client::open(url).map_err(|_| RedisError::BadUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        // Made now, so a configuration the client refuses fails here rather than later.
        let shared = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Redis {
            inner: std::sync::Arc::new(Inner {
                client,
                config,
                per_worker: (0..workers).map(|_| std::sync::OnceLock::new()).collect(),
                shared,
                prefix: prefix.to_string(),
            }),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// How many worker threads have a connection of their own.
    pub fn workers(&self) -> usize {
        self.inner.per_worker.len()
    }

    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(self.inner.prefix.len() + 48);
        key.push_str(&self.inner.prefix);
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// The calling worker's connection (made on first use, on that worker), or the shared
    /// one outside the workers.
    pub fn connection(&self) -> ConnectionManager {
        let inner = &self.inner;
        let slot = crate::workers::worker_index().and_then(|index| inner.per_worker.get(index));
        let Some(slot) = slot else {
            return inner.shared.clone();
        };
        slot.get_or_init(|| {
            ConnectionManager::new_lazy_with_config(inner.client.clone(), inner.config.clone())
                .unwrap_or_else(|_| inner.shared.clone())
        })
        .clone()
    }

    pub async fn ping(&self) -> bool {
        let mut connection = self.connection();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
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
