//! Redis: the state many gateway instances share so that they act as one — revoked sessions,
//! per-user "not before" times, and the sliding-window rate-limit counters.
//!
//! The connection is made lazily and remade by itself after an outage, so the gateway starts
//! and keeps serving while Redis is away; each caller decides what an outage means for it
//! (a revocation check fails closed by default).

pub mod durability;
pub mod feed;
pub mod gate;
pub mod revocation;
pub mod window;

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
        let slot =
            crate::server::workers::worker_index().and_then(|index| inner.per_worker.get(index));
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
