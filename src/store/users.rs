//! Users: creation, lookup, the login counters, and the admin's changes.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, StoreError};

pub(super) const USER_COLUMNS: &str =
    "id, email, name, password_hash, role, is_active, is_verified, \
     failed_login_attempts, locked_until, last_login, created_at";

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub is_active: bool,
    pub is_verified: bool,
    pub failed_login_attempts: i32,
    pub locked_until: Option<SystemTime>,
    pub last_login: Option<SystemTime>,
    pub created_at: SystemTime,
}

impl User {
    pub(super) fn from_row(row: &Row) -> User {
        User {
            id: row.get("id"),
            email: row.get("email"),
            name: row.get("name"),
            password_hash: row.get("password_hash"),
            role: row.get("role"),
            is_active: row.get("is_active"),
            is_verified: row.get("is_verified"),
            failed_login_attempts: row.get("failed_login_attempts"),
            locked_until: row.get("locked_until"),
            last_login: row.get("last_login"),
            created_at: row.get("created_at"),
        }
    }

    /// The end of the current lockout, if the account is locked at `now`.
    pub fn locked_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.locked_until.filter(|until| *until > now)
    }
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub is_verified: bool,
}

/// What one failed login did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    pub attempts: i32,
    pub locked_until: Option<SystemTime>,
    /// This very attempt locked the account.
    pub newly_locked: bool,
}

#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub role: Option<String>,
    pub is_active: Option<bool>,
    pub name: Option<String>,
}

impl Store {
    /// Inserts a user in the caller's transaction. A taken email is `Conflict`.
    pub async fn create_user(
        client: &impl deadpool_postgres::GenericClient,
        user: &NewUser<'_>,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO users (id, email, name, password_hash, role, is_verified, \
                     password_changed_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7) RETURNING {USER_COLUMNS}"
                ),
                &[
                    &Uuid::new_v4(),
                    &user.email,
                    &user.name,
                    &user.password_hash,
                    &user.role,
                    &user.is_verified,
                    &now,
                ],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"),
                &[&email],
            )
            .await?;
        Ok(row.as_ref().map(User::from_row))
    }

    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(User::from_row))
    }

    /// Counts one failed login in a single statement, so concurrent failures are all
    /// counted; `None` when there is no such user. A lockout that has expired starts the count again; while the account is
    /// locked the count still grows but the lockout is not extended.
    pub async fn record_login_failure(
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        max_failures: i32,
        lock_for: Duration,
        now: SystemTime,
    ) -> Result<Option<LoginFailure>, StoreError> {
        let lock_end = now + lock_for;
        let row = client
            .query_opt(
                "UPDATE users SET
                    failed_login_attempts = CASE
                        WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN 1
                        ELSE failed_login_attempts + 1 END,
                    locked_until = CASE
                        WHEN locked_until IS NOT NULL AND locked_until > $2 THEN locked_until
                        WHEN (CASE WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN 1
                                   ELSE failed_login_attempts + 1 END) >= $3 THEN $4
                        ELSE NULL END,
                    updated_at = $2
                 WHERE id = $1
                 RETURNING failed_login_attempts, locked_until, locked_until IS NOT DISTINCT FROM $4",
                &[&id, &now, &max_failures, &lock_end],
            )
            .await?;
        // The lock end this attempt would set is unique to it (it derives from its own
        // `now`), so finding it stored means this attempt is the one that locked.
        Ok(row.map(|row| LoginFailure {
            attempts: row.get(0),
            locked_until: row.get(1),
            newly_locked: row.get(2),
        }))
    }

    /// A successful login: clear the counters, stamp `last_login`, and store a rehash when
    /// the parameters changed.
    pub async fn record_login_success(
        &self,
        id: Uuid,
        rehash: Option<&str>,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "UPDATE users SET failed_login_attempts = 0, locked_until = NULL, last_login = $2,
                        password_hash = COALESCE($3, password_hash), updated_at = $2
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &now, &rehash],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    pub async fn mark_verified(
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let row = client
            .query_one(
                &format!("UPDATE users SET is_verified = true, updated_at = $2 WHERE id = $1 RETURNING {USER_COLUMNS}"),
                &[&id, &now],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    /// Sets a new password hash; also clears a lockout, since the owner proved control.
    pub async fn set_password(
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        password_hash: &str,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let row = client
            .query_one(
                &format!(
                    "UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3,
                        failed_login_attempts = 0, locked_until = NULL
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &password_hash, &now],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    /// A page of users, newest first, optionally filtered by a case-insensitive substring of
    /// email or name, and the total matching.
    pub async fn list_users(
        &self,
        query: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<User>, i64), StoreError> {
        let client = self.client().await?;
        let pattern = query.map(|q| format!("%{}%", escape_like(q)));
        let rows = client
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users
                     WHERE $1::text IS NULL OR email ILIKE $1 OR name ILIKE $1
                     ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
                ),
                &[&pattern, &limit, &offset],
            )
            .await?;
        let total: i64 = client
            .query_one(
                "SELECT count(*) FROM users WHERE $1::text IS NULL OR email ILIKE $1 OR name ILIKE $1",
                &[&pattern],
            )
            .await?
            .get(0);
        Ok((rows.iter().map(User::from_row).collect(), total))
    }

    /// Applies an admin's change; `None` when there is no such user.
    pub async fn update_user(
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        patch: &UserPatch,
        now: SystemTime,
    ) -> Result<Option<User>, StoreError> {
        let row = client
            .query_opt(
                &format!(
                    "UPDATE users SET role = COALESCE($2, role), is_active = COALESCE($3, is_active),
                        name = COALESCE($4, name), updated_at = $5
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &patch.role, &patch.is_active, &patch.name, &now],
            )
            .await?;
        Ok(row.as_ref().map(User::from_row))
    }

    /// Clears a lockout; false when there is no such user.
    pub async fn unlock_user(&self, id: Uuid, now: SystemTime) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE users SET failed_login_attempts = 0, locked_until = NULL, updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Records that the user's tokens issued before `not_before` are refused, keeping the
    /// later time if one is already recorded: the durable copy of what Redis holds.
    pub async fn record_token_not_before(
        &self,
        user_id: Uuid,
        not_before: SystemTime,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO token_not_before (user_id, not_before) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE
                 SET not_before = GREATEST(token_not_before.not_before, EXCLUDED.not_before)",
                &[&user_id, &not_before],
            )
            .await?;
        Ok(())
    }

    /// The not-before times later than `since`, by user.
    pub async fn token_not_befores_since(
        &self,
        since: SystemTime,
    ) -> Result<Vec<(Uuid, SystemTime)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT user_id, not_before FROM token_not_before WHERE not_before > $1",
                &[&since],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

/// `%`, `_` and `\` in a search are literal characters, not patterns.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
