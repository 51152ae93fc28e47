//! Sessions and their rotating refresh tokens.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use uuid::Uuid;

use super::users::USER_COLUMNS;
use super::{Origin, PostgresOperation, Store, StoreError, User};

const SESSION_COLUMNS: &str =
    "id, user_id, ip_address, user_agent, created_at, last_used_at, expires_at";

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
    pub expires_at: SystemTime,
}

impl SessionRow {
    fn from_row(row: &Row) -> SessionRow {
        SessionRow {
            id: row.get("id"),
            user_id: row.get("user_id"),
            ip_address: row.get("ip_address"),
            user_agent: row.get("user_agent"),
            created_at: row.get("created_at"),
            last_used_at: row.get("last_used_at"),
            expires_at: row.get("expires_at"),
        }
    }
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The token was current: it is now spent and the new hash is the session's token.
    Rotated {
        session: SessionRow,
        user: Box<User>,
    },
    /// The token was rotated within the grace the caller allowed, and its session is live:
    /// the caller may issue an access token for the session, nothing was changed.
    Grace {
        session_id: Uuid,
        session_expires_at: SystemTime,
        user: Box<User>,
    },
    /// The token had already been rotated: someone holds a copy. The whole session is ended.
    Reused { session_id: Uuid, user_id: Uuid },
    /// Unknown, expired, or its session has ended.
    Invalid,
}

impl Store {
    /// Starts a session with its first refresh token, in the caller's transaction: the
    /// login commits it together with the verdict on the locked user row, so a change of the
    /// account either comes first (and the login fails) or comes after (and ends the session).
    pub async fn create_session(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user_id: Uuid,
        refresh_hash: &[u8],
        origin: Origin<'_>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SessionRow, StoreError> {
        let _timer = self.timer(PostgresOperation::CreateSession);
        let expires_at = now + ttl;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO sessions (id, user_id, ip_address, user_agent, created_at, last_used_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $5, $6) RETURNING {SESSION_COLUMNS}"
                ),
                &[&Uuid::new_v4(), &user_id, &origin.ip_address, &origin.user_agent, &now, &expires_at],
            )
            .await?;
        let session = SessionRow::from_row(&row);
        client
            .execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&refresh_hash, &session.id, &now, &expires_at],
            )
            .await?;
        Ok(session)
    }

    /// Spends `old_hash` and makes `new_hash` the session's refresh token, in one
    /// transaction with the rows locked, so of two concurrent uses of one token at most one
    /// rotates and the other is seen as reuse.
    ///
    /// The new token expires with the session, whose end was fixed at login: rotation never
    /// extends it (contract 4), else a token refreshed every few days would never expire.
    ///
    /// `grace`: a token rotated less than this long ago, whose session is live and whose
    /// user is active, is [`RefreshOutcome::Grace`] rather than reuse; nothing is written
    /// then (no second rotation: the token the first one made stays the only live one).
    /// The decision is made on the locked rows, so a use racing the rotation waits for it
    /// and then sees it. `Duration::ZERO` is strict reuse detection.
    pub async fn rotate_refresh(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now: SystemTime,
        grace: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        let _timer = self.timer(PostgresOperation::RotateRefresh);
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let Some(row) = transaction
            .query_opt(
                "SELECT t.session_id, t.rotated_at, t.expires_at, s.user_id, s.revoked_at, s.expires_at AS session_expires_at
                 FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
                 WHERE t.token_hash = $1
                 FOR UPDATE OF t, s",
                &[&old_hash],
            )
            .await?
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        let session_id: Uuid = row.get("session_id");
        let user_id: Uuid = row.get("user_id");
        let rotated_at: Option<SystemTime> = row.get("rotated_at");
        let revoked_at: Option<SystemTime> = row.get("revoked_at");
        let token_expires_at: SystemTime = row.get("expires_at");
        let session_expires_at: SystemTime = row.get("session_expires_at");

        let live = revoked_at.is_none() && token_expires_at > now && session_expires_at > now;
        let within_grace = rotated_at
            .and_then(|rotated_at| rotated_at.checked_add(grace))
            .is_some_and(|grace_ends| now < grace_ends);
        if within_grace && live {
            let user = transaction
                .query_opt(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                    &[&user_id],
                )
                .await?;
            return Ok(match user.as_ref().map(User::from_row) {
                Some(user) if user.is_active => RefreshOutcome::Grace {
                    session_id,
                    session_expires_at,
                    user: Box::new(user),
                },
                _ => RefreshOutcome::Invalid,
            });
        }
        if rotated_at.is_some() {
            if revoked_at.is_none() {
                transaction
                    .execute(
                        "UPDATE sessions SET revoked_at = $2, revoked_reason = 'refresh token reuse' WHERE id = $1",
                        &[&session_id, &now],
                    )
                    .await?;
            }
            transaction.commit().await?;
            return Ok(RefreshOutcome::Reused {
                session_id,
                user_id,
            });
        }
        if !live {
            return Ok(RefreshOutcome::Invalid);
        }

        let user = transaction
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                &[&user_id],
            )
            .await?;
        let Some(user) = user.as_ref().map(User::from_row) else {
            return Ok(RefreshOutcome::Invalid);
        };
        if !user.is_active {
            return Ok(RefreshOutcome::Invalid);
        }
        let expires_at = session_expires_at;
        transaction
            .execute(
                "UPDATE refresh_tokens SET rotated_at = $2 WHERE token_hash = $1",
                &[&old_hash, &now],
            )
            .await?;
        transaction
            .execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&new_hash, &session_id, &now, &expires_at],
            )
            .await?;
        let row = transaction
            .query_one(
                &format!(
                    "UPDATE sessions SET last_used_at = $2 WHERE id = $1 RETURNING {SESSION_COLUMNS}"
                ),
                &[&session_id, &now],
            )
            .await?;
        transaction.commit().await?;
        Ok(RefreshOutcome::Rotated {
            session: SessionRow::from_row(&row),
            user: Box::new(user),
        })
    }

    /// The session a refresh token belongs to, and its owner, if the session is live.
    pub async fn session_of_refresh(
        &self,
        hash: &[u8],
        now: SystemTime,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let _timer = self.timer(PostgresOperation::SessionOfRefresh);
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.id, s.user_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
                 WHERE t.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
                &[&hash, &now],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// Whether a session is live (not revoked, not expired).
    pub async fn session_is_live(
        &self,
        session_id: Uuid,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer(PostgresOperation::SessionIsLive);
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
                &[&session_id, &now],
            )
            .await?;
        Ok(row.is_some())
    }

    pub async fn list_sessions(
        &self,
        user_id: Uuid,
        now: SystemTime,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let _timer = self.timer(PostgresOperation::ListSessions);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
                     ORDER BY created_at DESC"
                ),
                &[&user_id, &now],
            )
            .await?;
        Ok(rows.iter().map(SessionRow::from_row).collect())
    }

    /// Ends one of the user's own live sessions; false when there is no such session for
    /// this user (another user's session is indistinguishable from a missing one).
    pub async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer(PostgresOperation::RevokeSession);
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = $4
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                &[&session_id, &user_id, &now, &reason],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Ends every live session of a user except `keep`, returning the ids ended.
    pub async fn revoke_sessions_of(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user_id: Uuid,
        keep: Option<Uuid>,
        reason: &str,
        now: SystemTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        let _timer = self.timer(PostgresOperation::RevokeSessionsOf);
        let rows = client
            .query(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = $4
                 WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)
                 RETURNING id",
                &[&user_id, &keep, &now, &reason],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The sessions ended after `since`: with `since` one access-token lifetime ago, every
    /// session that could still have a live access token to refuse. For rebuilding the
    /// revocation state in Redis.
    pub async fn sessions_ended_since(&self, since: SystemTime) -> Result<Vec<Uuid>, StoreError> {
        let _timer = self.timer(PostgresOperation::SessionsEndedSince);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at > $1",
                &[&since],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
