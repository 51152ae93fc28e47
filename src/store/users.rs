//! Users: creation, lookup, the login counters, and the admin's changes.
//!
//! A login or password change reads the user, verifies a password (slow, outside any
//! transaction), and then decides with the row locked ([`Store::lock_user`]) by
//! [`User::commit_verdict`]: the lock and the `security_version` are judged as they are at
//! commit, not as they were read, so neither a lock set nor a change made in between is
//! missed.
//!
//! The failure count and lock are kept per account (the `users` columns) or, with
//! `lockout.key: account_and_ip`, per account and client address (`login_failures`): a
//! [`LockoutScope`] says which. Either way they are written only under the user's row lock, so
//! the same serialisation makes both exact.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use uuid::Uuid;

use super::{PostgresOperation, Store, StoreError};

pub(super) const USER_COLUMNS: &str =
    "id, email, name, password_hash, role, is_active, is_verified, \
     failed_login_attempts, locked_until, last_login, created_at, security_version";

/// `Debug` is written by hand: the password hash must never reach a log.
#[derive(Clone)]
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
    /// Bumped by every change that must end what was decided before it (new password,
    /// role, activation); see migrations/0002_security_version.sql.
    pub security_version: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("is_active", &self.is_active)
            .field("is_verified", &self.is_verified)
            .field("failed_login_attempts", &self.failed_login_attempts)
            .field("locked_until", &self.locked_until)
            .field("last_login", &self.last_login)
            .field("created_at", &self.created_at)
            .field("security_version", &self.security_version)
            .finish()
    }
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
            security_version: row.get("security_version"),
        }
    }

    /// The end of the current lockout, if the account is locked at `now`.
    pub fn locked_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.locked_until.filter(|until| *until > now)
    }

    /// Whether an attempt that verified a password against `read` may succeed now that the
    /// row, locked, reads `self`. `lockout` is false when lockout is turned off.
    pub fn commit_verdict(&self, read: &User, lockout: bool, now: SystemTime) -> CommitVerdict {
        // Only a bumped version means a change: a hash that differs under the same version
        // is a concurrent login's rehash of the same password.
        if self.security_version != read.security_version {
            if self.password_hash != read.password_hash {
                return CommitVerdict::PasswordChanged;
            }
            return CommitVerdict::AccountChanged;
        }
        if let Some(until) = self.locked_at(now).filter(|_| lockout) {
            return CommitVerdict::Locked(until);
        }
        if !self.is_active || !self.is_verified {
            // Unchanged version but not usable: changed by hand in the database.
            return CommitVerdict::AccountChanged;
        }
        CommitVerdict::Proceed
    }
}

/// What [`User::commit_verdict`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Nothing the attempt relied on changed and no lock holds: it may succeed.
    Proceed,
    /// A lock holds now, whether or not it did when the attempt read the row. A success never
    /// clears a lock.
    Locked(SystemTime),
    /// The password the attempt verified is no longer the account's.
    PasswordChanged,
    /// The role or activation changed (or the row is unusable): decide again on this row.
    AccountChanged,
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub is_verified: bool,
}

/// A new hash of a verified password, to be stored only over `verified_hash`.
#[derive(Debug, Clone, Copy)]
pub struct Rehash<'a> {
    pub new_hash: &'a str,
    pub verified_hash: &'a str,
}

/// What a login's failures are counted against and its lock is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutScope<'a> {
    /// The account as a whole: the `users` columns.
    Account,
    /// The account as used from one client address (its rate-limit key): a `login_failures`
    /// row.
    Address(&'a str),
}

/// What one failed login did to the account (or to the account's pair with the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    pub attempts: i32,
    pub locked_until: Option<SystemTime>,
    /// This very attempt locked the account (or the pair).
    pub newly_locked: bool,
    /// Another of the account's pairs was locked at the time: the owner has already been told.
    /// Always false for [`LockoutScope::Account`].
    pub other_lock_held: bool,
}

impl LoginFailure {
    /// Whether the owner is emailed about this failure: when it locks the account, and per
    /// address only when no other address's lock holds, so that a guesser with many
    /// addresses cannot flood the owner's inbox (each lock is audited all the same).
    pub fn mails_owner(&self) -> bool {
        self.newly_locked && !self.other_lock_held
    }
}

/// An account's failures and lock as the admin API shows them: in per-address mode, the sum
/// of its pairs' counts and the latest lock that holds for any of its addresses.
pub fn lockout_summary(
    pairs: &[(i32, Option<SystemTime>)],
    now: SystemTime,
) -> (i32, Option<SystemTime>) {
    let attempts = pairs
        .iter()
        .fold(0i32, |sum, (attempts, _)| sum.saturating_add(*attempts));
    let locked_until = pairs
        .iter()
        .filter_map(|(_, until)| until.filter(|until| *until > now))
        .max();
    (attempts, locked_until)
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
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user: &NewUser<'_>,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let _timer = self.timer(PostgresOperation::CreateUser);
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

    /// Removes the account registered under `email` if it was never verified and no
    /// verification link for it is still valid at `now`, so that an address cannot be held
    /// by someone who never proved they own it. Returns the removed account's id.
    pub async fn remove_lapsed_unverified(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        email: &str,
        now: SystemTime,
    ) -> Result<Option<Uuid>, StoreError> {
        let _timer = self.timer(PostgresOperation::RemoveLapsedUnverified);
        let row = client
            .query_opt(
                "DELETE FROM users u WHERE lower(u.email) = lower($1) AND NOT u.is_verified \
                 AND NOT EXISTS (SELECT 1 FROM email_tokens t WHERE t.user_id = u.id \
                   AND t.purpose = 'verify_email' AND t.used_at IS NULL AND t.expires_at > $2) \
                 RETURNING u.id",
                &[&email, &now],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let _timer = self.timer(PostgresOperation::UserByEmail);
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
        let _timer = self.timer(PostgresOperation::UserById);
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
    /// counted; `None` when there is no such user. A lockout that has expired starts the
    /// count again; while the account is locked the count still grows but the lockout is not
    /// extended. `max_failures` 0 turns lockout off: the count grows, nothing locks.
    ///
    /// With [`LockoutScope::Address`] the same is done to the pair's row, with the user's row
    /// locked first (as a login's decision and an unlock lock it), in the caller's
    /// transaction.
    pub async fn record_login_failure(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        scope: LockoutScope<'_>,
        max_failures: i32,
        lock_for: Duration,
        now: SystemTime,
    ) -> Result<Option<LoginFailure>, StoreError> {
        let _timer = self.timer(PostgresOperation::RecordLoginFailure);
        if let LockoutScope::Address(key) = scope {
            return record_pair_failure(client, id, key, max_failures, lock_for, now).await;
        }
        let lock_end = now + lock_for;
        let row = client
            .query_opt(
                "UPDATE users SET
                    failed_login_attempts = CASE
                        WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN 1
                        ELSE failed_login_attempts + 1 END,
                    locked_until = CASE
                        WHEN locked_until IS NOT NULL AND locked_until > $2 THEN locked_until
                        WHEN $3 > 0 AND (CASE WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN 1
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
            other_lock_held: false,
        }))
    }

    /// The failure count and lock end of `id`'s pair with the client address `key`, without
    /// locking anything: (0, None) when it has none (or there is no such user).
    pub async fn pair_lockout(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        key: &str,
    ) -> Result<(i32, Option<SystemTime>), StoreError> {
        let _timer = self.timer(PostgresOperation::PairLockout);
        let row = client
            .query_opt(
                "SELECT failed_login_attempts, locked_until FROM login_failures
                 WHERE user_id = $1 AND client_key = $2",
                &[&id, &key],
            )
            .await?;
        Ok(row.map_or((0, None), |row| (row.get(0), row.get(1))))
    }

    /// Every pair's failure count and lock end of `id`.
    pub async fn pair_lockouts(
        &self,
        id: Uuid,
    ) -> Result<Vec<(i32, Option<SystemTime>)>, StoreError> {
        let _timer = self.timer(PostgresOperation::PairLockouts);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT failed_login_attempts, locked_until FROM login_failures WHERE user_id = $1",
                &[&id],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Reads the user with the row locked until the caller's transaction ends: every
    /// failure, success, password change and admin change of this user waits for it.
    pub async fn lock_user(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let _timer = self.timer(PostgresOperation::LockUser);
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(User::from_row))
    }

    /// [`Store::lock_user`], with the failure count and lock of `scope` in the user's
    /// `failed_login_attempts` and `locked_until`. The pair's row is read by a statement of
    /// its own after the lock is granted: a join would read it in the snapshot taken before
    /// waiting, and miss a lock set by the failure it waited for.
    pub async fn lock_user_in_scope(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        scope: LockoutScope<'_>,
    ) -> Result<Option<User>, StoreError> {
        let _timer = self.timer(PostgresOperation::LockUserInScope);
        let Some(mut user) = self.lock_user(client, id).await? else {
            return Ok(None);
        };
        if let LockoutScope::Address(key) = scope {
            (user.failed_login_attempts, user.locked_until) =
                self.pair_lockout(client, id, key).await?;
        }
        Ok(Some(user))
    }

    /// Forgets the failures of `id`'s pair with `key` (a success from that address), in the
    /// caller's transaction, which holds the user's row lock.
    pub async fn clear_pair_failures(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        key: &str,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(PostgresOperation::ClearPairFailures);
        client
            .execute(
                "DELETE FROM login_failures WHERE user_id = $1 AND client_key = $2",
                &[&id, &key],
            )
            .await?;
        Ok(())
    }

    /// A successful login, in the caller's transaction after [`User::commit_verdict`] said
    /// `Proceed` on the locked row: reset the count, stamp `last_login`, and store a rehash
    /// (the parameters changed) only over the very hash that was verified, so a new
    /// password is never overwritten with the old one.
    pub async fn record_login_success(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        rehash: Option<Rehash<'_>>,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let _timer = self.timer(PostgresOperation::RecordLoginSuccess);
        let (new_hash, verified_hash) = match rehash {
            Some(rehash) => (Some(rehash.new_hash), Some(rehash.verified_hash)),
            None => (None, None),
        };
        let row = client
            .query_one(
                &format!(
                    "UPDATE users SET failed_login_attempts = 0, locked_until = NULL, last_login = $2,
                        password_hash = CASE WHEN $3::text IS NOT NULL AND password_hash = $4
                            THEN $3 ELSE password_hash END,
                        updated_at = $2
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &now, &new_hash, &verified_hash],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    /// The active users holding one of `roles`, their rows locked until the caller's
    /// transaction ends (in id order, so two admins' changes cannot deadlock).
    pub async fn lock_active_users_with_roles(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        roles: &[String],
    ) -> Result<Vec<Uuid>, StoreError> {
        let _timer = self.timer(PostgresOperation::LockActiveUsersWithRoles);
        let rows = client
            .query(
                "SELECT id FROM users WHERE is_active AND role = ANY($1) ORDER BY id FOR UPDATE",
                &[&roles],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub async fn mark_verified(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let _timer = self.timer(PostgresOperation::MarkVerified);
        let row = client
            .query_one(
                &format!("UPDATE users SET is_verified = true, updated_at = $2 WHERE id = $1 RETURNING {USER_COLUMNS}"),
                &[&id, &now],
            )
            .await?;
        Ok(User::from_row(&row))
    }

    /// Sets a new password hash; also clears a lockout, since the owner proved control, and
    /// bumps the security version, so a login that verified the old password fails.
    pub async fn set_password(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        password_hash: &str,
        now: SystemTime,
    ) -> Result<User, StoreError> {
        let _timer = self.timer(PostgresOperation::SetPassword);
        let row = client
            .query_one(
                &format!(
                    "UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3,
                        failed_login_attempts = 0, locked_until = NULL,
                        security_version = security_version + 1
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &password_hash, &now],
            )
            .await?;
        // After the update, which holds the user's row lock: no failure slips in between.
        client
            .execute("DELETE FROM login_failures WHERE user_id = $1", &[&id])
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
        let _timer = self.timer(PostgresOperation::ListUsers);
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

    /// Applies an admin's change; `None` when there is no such user. A role or activation
    /// that actually changes bumps the security version.
    pub async fn update_user(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        id: Uuid,
        patch: &UserPatch,
        now: SystemTime,
    ) -> Result<Option<User>, StoreError> {
        let _timer = self.timer(PostgresOperation::UpdateUser);
        let row = client
            .query_opt(
                &format!(
                    "UPDATE users SET role = COALESCE($2, role), is_active = COALESCE($3, is_active),
                        name = COALESCE($4, name), updated_at = $5,
                        security_version = security_version
                            + CASE WHEN COALESCE($2, role) <> role
                                   OR COALESCE($3, is_active) <> is_active THEN 1 ELSE 0 END
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &patch.role, &patch.is_active, &patch.name, &now],
            )
            .await?;
        Ok(row.as_ref().map(User::from_row))
    }

    /// Clears a lockout: the account's and every one of its address pairs', whichever
    /// `lockout.key` is in use (so a change of key leaves nothing locked behind an unlock).
    /// False when there is no such user.
    pub async fn unlock_user(&self, id: Uuid, now: SystemTime) -> Result<bool, StoreError> {
        let _timer = self.timer(PostgresOperation::UnlockUser);
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // The user's row first, as every failure takes it: a failure commits wholly before
        // the unlock or wholly after it.
        let updated = transaction
            .execute(
                "UPDATE users SET failed_login_attempts = 0, locked_until = NULL, updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
        transaction
            .execute("DELETE FROM login_failures WHERE user_id = $1", &[&id])
            .await?;
        transaction.commit().await?;
        Ok(updated == 1)
    }

    /// Records that the user's tokens issued before `not_before` are refused, keeping the
    /// later time if one is already recorded: the durable copy of what Redis holds.
    pub async fn record_token_not_before(
        &self,
        user_id: Uuid,
        not_before: SystemTime,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(PostgresOperation::RecordTokenNotBefore);
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
        let _timer = self.timer(PostgresOperation::TokenNotBeforesSince);
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

/// [`Store::record_login_failure`] for one (account, address) pair: the same arithmetic in
/// one upsert, after the user's row is locked. No row is written for a user that does not
/// exist (the insert selects nothing), so an unknown email runs the same statements.
async fn record_pair_failure(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    key: &str,
    max_failures: i32,
    lock_for: Duration,
    now: SystemTime,
) -> Result<Option<LoginFailure>, StoreError> {
    let lock_end = now + lock_for;
    client
        .execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&id])
        .await?;
    let row = client
        .query_opt(
            "INSERT INTO login_failures AS f
                (user_id, client_key, failed_login_attempts, locked_until, updated_at)
             SELECT id, $5::text, 1,
                 CASE WHEN $3::int4 > 0 AND 1 >= $3::int4 THEN $4::timestamptz END, $2::timestamptz
             FROM users WHERE id = $1
             ON CONFLICT (user_id, client_key) DO UPDATE SET
                failed_login_attempts = CASE
                    WHEN f.locked_until IS NOT NULL AND f.locked_until <= $2 THEN 1
                    ELSE f.failed_login_attempts + 1 END,
                locked_until = CASE
                    WHEN f.locked_until IS NOT NULL AND f.locked_until > $2 THEN f.locked_until
                    WHEN $3 > 0 AND (CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= $2 THEN 1
                               ELSE f.failed_login_attempts + 1 END) >= $3 THEN $4
                    ELSE NULL END,
                updated_at = $2
             RETURNING failed_login_attempts, locked_until, locked_until IS NOT DISTINCT FROM $4,
                EXISTS (SELECT 1 FROM login_failures o WHERE o.user_id = $1
                        AND o.client_key <> $5 AND o.locked_until > $2)",
            &[&id, &now, &max_failures, &lock_end, &key],
        )
        .await?;
    Ok(row.map(|row| LoginFailure {
        attempts: row.get(0),
        locked_until: row.get(1),
        newly_locked: row.get(2),
        other_lock_held: row.get(3),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: Uuid::nil(),
            email: "a@example.com".into(),
            name: String::new(),
            password_hash: "$argon2id$old".into(),
            role: "user".into(),
            is_active: true,
            is_verified: true,
            failed_login_attempts: 0,
            locked_until: None,
            last_login: None,
            created_at: SystemTime::UNIX_EPOCH,
            security_version: 7,
        }
    }

    /// (case, newly locked, another address's lock held, the owner is mailed)
    #[test]
    fn the_owner_is_mailed_once_per_lockout() {
        let cases: &[(&str, bool, bool, bool)] = &[
            ("not locked", false, false, false),
            ("locks the account", true, false, true),
            ("locks a pair, no other lock holds", true, false, true),
            ("locks a pair while another holds", true, true, false),
            ("counted while another pair is locked", false, true, false),
        ];
        for &(case, newly_locked, other_lock_held, mailed) in cases {
            let failure = LoginFailure {
                attempts: 5,
                locked_until: None,
                newly_locked,
                other_lock_held,
            };
            assert_eq!(failure.mails_owner(), mailed, "{case}");
        }
    }

    /// (case, the pairs' counts and lock ends in seconds from now, the admin's view)
    #[test]
    fn lockout_summaries() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |seconds: i64| match u64::try_from(seconds) {
            Ok(ahead) => now + Duration::from_secs(ahead),
            Err(_) => now - Duration::from_secs(seconds.unsigned_abs()),
        };
        type Pair = (i32, Option<i64>);
        type Case = (&'static str, &'static [Pair], Pair);
        let cases: &[Case] = &[
            ("no pair", &[], (0, None)),
            ("one pair counting", &[(3, None)], (3, None)),
            ("counts add up", &[(3, None), (2, None)], (5, None)),
            (
                "one pair locked",
                &[(5, Some(600)), (1, None)],
                (6, Some(600)),
            ),
            (
                "the latest lock",
                &[(5, Some(600)), (7, Some(1200))],
                (12, Some(1200)),
            ),
            ("an expired lock is not shown", &[(5, Some(-60))], (5, None)),
            (
                "a lock ending now has ended",
                &[(5, Some(0)), (5, Some(30))],
                (10, Some(30)),
            ),
        ];
        for (case, pairs, (attempts, until)) in cases {
            let pairs: Vec<_> = pairs
                .iter()
                .map(|(count, until)| (*count, until.map(at)))
                .collect();
            assert_eq!(
                lockout_summary(&pairs, now),
                (*attempts, until.map(at)),
                "{case}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_password_hash() {
        let printed = format!("{:?}", user());
        assert!(!printed.contains("argon2id"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("a@example.com"), "{printed}");
    }

    /// (case, change from what was read to the locked row, lockout on, verdict)
    #[test]
    fn commit_verdicts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = now + Duration::from_secs(60);
        let earlier = now - Duration::from_secs(60);
        type Change = fn(&mut User, SystemTime, SystemTime);
        let cases: &[(&str, Change, bool, CommitVerdict)] = &[
            ("unchanged", |_, _, _| {}, true, CommitVerdict::Proceed),
            (
                "locked since the read",
                |u, later, _| u.locked_until = Some(later),
                true,
                CommitVerdict::Locked(later),
            ),
            (
                "lockout off ignores a lock",
                |u, later, _| u.locked_until = Some(later),
                false,
                CommitVerdict::Proceed,
            ),
            (
                "an expired lock does not hold",
                |u, _, earlier| u.locked_until = Some(earlier),
                true,
                CommitVerdict::Proceed,
            ),
            (
                "failures counted since the read, no lock",
                |u, _, _| u.failed_login_attempts = 3,
                true,
                CommitVerdict::Proceed,
            ),
            (
                "password reset or changed",
                |u, _, _| {
                    u.password_hash = "$argon2id$new".into();
                    u.security_version += 1;
                },
                true,
                CommitVerdict::PasswordChanged,
            ),
            (
                "password changed and locked since the read",
                |u, later, _| {
                    u.password_hash = "$argon2id$new".into();
                    u.security_version += 1;
                    u.locked_until = Some(later);
                },
                true,
                CommitVerdict::PasswordChanged,
            ),
            (
                "another login's rehash of the same password",
                |u, _, _| u.password_hash = "$argon2id$rehashed".into(),
                true,
                CommitVerdict::Proceed,
            ),
            (
                "role changed",
                |u, _, _| {
                    u.role = "admin".into();
                    u.security_version += 1;
                },
                true,
                CommitVerdict::AccountChanged,
            ),
            (
                "deactivated",
                |u, _, _| {
                    u.is_active = false;
                    u.security_version += 1;
                },
                true,
                CommitVerdict::AccountChanged,
            ),
            (
                "deactivated and reactivated",
                |u, _, _| u.security_version += 2,
                true,
                CommitVerdict::AccountChanged,
            ),
            (
                "deactivated by hand, no version bump",
                |u, _, _| u.is_active = false,
                true,
                CommitVerdict::AccountChanged,
            ),
            (
                "a change wins over a lock",
                |u, later, _| {
                    u.security_version += 1;
                    u.locked_until = Some(later);
                },
                true,
                CommitVerdict::AccountChanged,
            ),
        ];
        for (case, change, lockout, expected) in cases {
            let read = user();
            let mut current = user();
            change(&mut current, later, earlier);
            assert_eq!(
                current.commit_verdict(&read, *lockout, now),
                *expected,
                "{case}"
            );
        }
    }
}
