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

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::telemetry::metrics::{Operation, Timer, Timings};

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

/// The Postgres work whose latency `portcullis_postgres_duration_seconds{operation}` records:
/// one name per query function here (the label is the function's name, never SQL), the
/// pool, the transactions the routes open, and the mail outbox's statements. Each is timed
/// from its start to its last row, whatever the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresOperation {
    // The discriminants index `Timings`.
    Audit = 0,
    AuditEntries = 1,
    CreateEmailToken = 2,
    ConsumeEmailToken = 3,
    CreateSession = 4,
    RotateRefresh = 5,
    SessionOfRefresh = 6,
    SessionIsLive = 7,
    ListSessions = 8,
    RevokeSession = 9,
    RevokeSessionsOf = 10,
    SessionsEndedSince = 11,
    CreateUser = 12,
    RemoveLapsedUnverified = 13,
    UserByEmail = 14,
    UserById = 15,
    RecordLoginFailure = 16,
    PairLockout = 17,
    PairLockouts = 18,
    LockUser = 19,
    LockUserInScope = 20,
    ClearPairFailures = 21,
    RecordLoginSuccess = 22,
    LockActiveUsersWithRoles = 23,
    MarkVerified = 24,
    SetPassword = 25,
    ListUsers = 26,
    UpdateUser = 27,
    UnlockUser = 28,
    RecordTokenNotBefore = 29,
    TokenNotBeforesSince = 30,
    ResetTokenOwner = 31,
    /// A connection from the pool (made anew when none is idle).
    Acquire = 32,
    /// `BEGIN` of a transaction several operations run in (a route's, the mail worker's batch).
    Begin = 33,
    /// `COMMIT` of such a transaction.
    Commit = 34,
    Migrate = 35,
    /// `/readyz`.
    Ping = 36,
    EnqueueMail = 37,
    /// The backlog `/metrics` reports.
    OutboxBacklog = 38,
    /// The mail worker claiming due mail.
    OutboxClaim = 39,
    /// The mail worker marking one mail sent or failed.
    OutboxMark = 40,
    OutboxNextDue = 41,
}

impl Operation for PostgresOperation {
    const ALL: &'static [PostgresOperation] = &[
        PostgresOperation::Audit,
        PostgresOperation::AuditEntries,
        PostgresOperation::CreateEmailToken,
        PostgresOperation::ConsumeEmailToken,
        PostgresOperation::CreateSession,
        PostgresOperation::RotateRefresh,
        PostgresOperation::SessionOfRefresh,
        PostgresOperation::SessionIsLive,
        PostgresOperation::ListSessions,
        PostgresOperation::RevokeSession,
        PostgresOperation::RevokeSessionsOf,
        PostgresOperation::SessionsEndedSince,
        PostgresOperation::CreateUser,
        PostgresOperation::RemoveLapsedUnverified,
        PostgresOperation::UserByEmail,
        PostgresOperation::UserById,
        PostgresOperation::RecordLoginFailure,
        PostgresOperation::PairLockout,
        PostgresOperation::PairLockouts,
        PostgresOperation::LockUser,
        PostgresOperation::LockUserInScope,
        PostgresOperation::ClearPairFailures,
        PostgresOperation::RecordLoginSuccess,
        PostgresOperation::LockActiveUsersWithRoles,
        PostgresOperation::MarkVerified,
        PostgresOperation::SetPassword,
        PostgresOperation::ListUsers,
        PostgresOperation::UpdateUser,
        PostgresOperation::UnlockUser,
        PostgresOperation::RecordTokenNotBefore,
        PostgresOperation::TokenNotBeforesSince,
        PostgresOperation::ResetTokenOwner,
        PostgresOperation::Acquire,
        PostgresOperation::Begin,
        PostgresOperation::Commit,
        PostgresOperation::Migrate,
        PostgresOperation::Ping,
        PostgresOperation::EnqueueMail,
        PostgresOperation::OutboxBacklog,
        PostgresOperation::OutboxClaim,
        PostgresOperation::OutboxMark,
        PostgresOperation::OutboxNextDue,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            PostgresOperation::Audit => "audit",
            PostgresOperation::AuditEntries => "audit_entries",
            PostgresOperation::CreateEmailToken => "create_email_token",
            PostgresOperation::ConsumeEmailToken => "consume_email_token",
            PostgresOperation::CreateSession => "create_session",
            PostgresOperation::RotateRefresh => "rotate_refresh",
            PostgresOperation::SessionOfRefresh => "session_of_refresh",
            PostgresOperation::SessionIsLive => "session_is_live",
            PostgresOperation::ListSessions => "list_sessions",
            PostgresOperation::RevokeSession => "revoke_session",
            PostgresOperation::RevokeSessionsOf => "revoke_sessions_of",
            PostgresOperation::SessionsEndedSince => "sessions_ended_since",
            PostgresOperation::CreateUser => "create_user",
            PostgresOperation::RemoveLapsedUnverified => "remove_lapsed_unverified",
            PostgresOperation::UserByEmail => "user_by_email",
            PostgresOperation::UserById => "user_by_id",
            PostgresOperation::RecordLoginFailure => "record_login_failure",
            PostgresOperation::PairLockout => "pair_lockout",
            PostgresOperation::PairLockouts => "pair_lockouts",
            PostgresOperation::LockUser => "lock_user",
            PostgresOperation::LockUserInScope => "lock_user_in_scope",
            PostgresOperation::ClearPairFailures => "clear_pair_failures",
            PostgresOperation::RecordLoginSuccess => "record_login_success",
            PostgresOperation::LockActiveUsersWithRoles => "lock_active_users_with_roles",
            PostgresOperation::MarkVerified => "mark_verified",
            PostgresOperation::SetPassword => "set_password",
            PostgresOperation::ListUsers => "list_users",
            PostgresOperation::UpdateUser => "update_user",
            PostgresOperation::UnlockUser => "unlock_user",
            PostgresOperation::RecordTokenNotBefore => "record_token_not_before",
            PostgresOperation::TokenNotBeforesSince => "token_not_befores_since",
            PostgresOperation::ResetTokenOwner => "reset_token_owner",
            PostgresOperation::Acquire => "acquire",
            PostgresOperation::Begin => "begin",
            PostgresOperation::Commit => "commit",
            PostgresOperation::Migrate => "migrate",
            PostgresOperation::Ping => "ping",
            PostgresOperation::EnqueueMail => "enqueue_mail",
            PostgresOperation::OutboxBacklog => "outbox_backlog",
            PostgresOperation::OutboxClaim => "outbox_claim",
            PostgresOperation::OutboxMark => "outbox_mark",
            PostgresOperation::OutboxNextDue => "outbox_next_due",
        }
    }
}

/// Where a request came from, as audit entries and sessions record it; `NONE` for what the
/// gateway does on its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    pub ip_address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

impl Origin<'_> {
    pub const NONE: Origin<'static> = Origin {
        ip_address: None,
        user_agent: None,
    };
}

/// The pool and every query.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// How long each operation took, shared by every clone.
    timings: Arc<Timings<PostgresOperation>>,
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
        Ok(Store {
            pool,
            timings: Arc::default(),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies pending migrations under an advisory lock, so instances starting together
    /// apply each migration once. Returns the names applied.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, StoreError> {
        let _timer = self.timer(PostgresOperation::Migrate);
        let mut client = self.pool.get().await?;
        migrations::apply(&mut client).await
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        let _timer = self.timer(PostgresOperation::Ping);
        match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let _timer = self.timer(PostgresOperation::Acquire);
        Ok(self.pool.get().await?)
    }

    /// Opens a transaction on `client`, timed as `begin`.
    pub(crate) async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'c>, tokio_postgres::Error> {
        let _timer = self.timer(PostgresOperation::Begin);
        client.transaction().await
    }

    /// Commits `transaction`, timed as `commit`.
    pub(crate) async fn commit(
        &self,
        transaction: deadpool_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let _timer = self.timer(PostgresOperation::Commit);
        transaction.commit().await
    }

    /// Starts timing `operation` until the returned guard is dropped: every query function
    /// opens with one, and the mail outbox (which owns its own statements) times its own.
    pub(crate) fn timer(&self, operation: PostgresOperation) -> Timer<'_, PostgresOperation> {
        self.timings.start(operation)
    }

    /// `portcullis_postgres_duration_seconds`, for `/metrics`.
    pub fn render_timings(&self) -> String {
        let mut out = String::new();
        self.timings.render(
            &mut out,
            "portcullis_postgres_duration_seconds",
            "Time Postgres work took, by operation (a query function of the store, the pool, \
             a transaction's begin or commit, the mail outbox's statements).",
        );
        out
    }
}
