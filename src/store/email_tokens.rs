//! Single-use email tokens (verification, password reset), stored as hashes.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::{PostgresOperation, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    VerifyEmail,
    PasswordReset,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::PasswordReset => "password_reset",
        }
    }
}

impl Store {
    /// Stores a new token for `user_id` in the caller's transaction. Earlier unused tokens
    /// of the same purpose are spent, so only the newest link works.
    pub async fn create_email_token(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        user_id: Uuid,
        purpose: TokenPurpose,
        hash: &[u8],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(PostgresOperation::CreateEmailToken);
        client
            .execute(
                "UPDATE email_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
                &[&user_id, &purpose.as_str(), &now],
            )
            .await?;
        client
            .execute(
                "INSERT INTO email_tokens (id, user_id, purpose, token_hash, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&Uuid::new_v4(), &user_id, &purpose.as_str(), &hash, &(now + ttl), &now],
            )
            .await?;
        Ok(())
    }

    /// Spends a token in one statement, returning its user; `None` when it is unknown,
    /// expired, already used, or for another purpose. Two concurrent uses: one wins.
    pub async fn consume_email_token(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        purpose: TokenPurpose,
        hash: &[u8],
        now: SystemTime,
    ) -> Result<Option<Uuid>, StoreError> {
        let _timer = self.timer(PostgresOperation::ConsumeEmailToken);
        let row = client
            .query_opt(
                "UPDATE email_tokens SET used_at = $3
                 WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3
                 RETURNING user_id",
                &[&hash, &purpose.as_str(), &now],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The email of the user an unspent, unexpired password-reset token belongs to, without
    /// spending it (its password is checked against the owner's rules first).
    pub async fn reset_token_owner(
        &self,
        hash: &[u8],
        now: SystemTime,
    ) -> Result<Option<String>, StoreError> {
        let _timer = self.timer(PostgresOperation::ResetTokenOwner);
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT u.email FROM email_tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.token_hash = $1 AND t.purpose = 'password_reset' AND t.used_at IS NULL AND t.expires_at > $2",
                &[&hash, &now],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }
}
