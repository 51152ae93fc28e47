//! Redis: the state many gateway instances share so that they act as one — revoked sessions
//! and per-user "not before" times today, sliding-window rate limits next.
//!
//! The connection is made lazily and remade by itself after an outage, so the gateway starts
//! and keeps serving while Redis is away; each caller decides what an outage means for it
//! (a revocation check fails closed by default).

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
}

/// A shared, self-healing connection and the key prefix that keeps this deployment's (or this
/// test run's) keys apart from any other's.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    prefix: String,
}

impl Redis {
    /// No connection is made until the first command.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Redis, RedisError> {
        let client = redis::Client::open(url).map_err(|_| RedisError::BadUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Redis {
            connection,
            prefix: prefix.to_string(),
        })
    }

    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 48);
        key.push_str(&self.prefix);
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    pub async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
    }
}
