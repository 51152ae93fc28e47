//! Postgres: the queries the identity routes need, behind a pool, and the migrations.
//!
//! Every write that must be atomic is one SQL statement or one transaction here, so callers
//! never read-modify-write: the failed-login counter, refresh rotation and single-use email
//! tokens stay exact under concurrency. Times come from the caller's clock, not `now()`, so
//! tests control them. Errors distinguish "the database is unreachable" (503) from a
//! conflict the client caused (409) and from everything else (logged, 500).

mod audit;
mod email_tokens;
mod migrations;
mod sessions;
mod users;

pub use audit::AuditEntry;
pub use email_tokens::TokenPurpose;
pub use sessions::{RefreshOutcome, SessionRow};
pub use users::{
    lockout_summary, CommitVerdict, LockoutScope, LoginFailure, NewUser, Rehash, User, UserPatch,
};

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had: the route answers 503 and recovers on its own.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the write.
    #[error("conflict")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[source] tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            return StoreError::Conflict;
        }
        // A closed connection or a failed connect has no SQLSTATE: the server went away.
        if error.is_closed() || error.code().is_none() {
            return StoreError::Unavailable(error.to_string());
        }
        StoreError::Database(error)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

/// The pool and every query.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Builds the pool; no connection is made until the first query.
    pub fn connect(
        url: &str,
        max_connections: usize,
        connect_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Unavailable("database.url is not a valid connection string".into())
        })?;
        config.connect_timeout(connect_timeout);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies pending migrations under an advisory lock, so instances starting together
    /// apply each migration once. Returns the names applied.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, StoreError> {
        let mut client = self.pool.get().await?;
        migrations::apply(&mut client).await
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}
