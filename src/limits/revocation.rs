//! Writing revocation to Redis: a revoked session id, and a per-user "not before" time that
//! ends every token issued earlier. Keys expire on their own after the access-token
//! lifetime, when every token they could refuse has expired anyway. Reading them is the
//! gate's job (`gate.rs`), in the same round trip as the rate limit.

use std::time::Duration;

use redis::AsyncCommands;
use uuid::Uuid;

use super::{Redis, RedisError};

#[derive(Clone)]
pub struct Revocations {
    redis: Redis,
    ttl_seconds: u64,
}

impl Revocations {
    /// `token_lifetime` is the access-token lifetime plus leeway: how long a revocation must
    /// be remembered.
    pub fn new(redis: Redis, token_lifetime: Duration) -> Revocations {
        Revocations {
            redis,
            ttl_seconds: token_lifetime.as_secs().max(1),
        }
    }

    fn session_key(&self, session_id: &str) -> String {
        self.redis.key(&["revoked", "sid", session_id])
    }

    fn user_key(&self, user_id: &str) -> String {
        self.redis.key(&["revoked", "user-nbf", user_id])
    }

    /// Ends these sessions' access tokens on every instance, at once.
    pub async fn revoke_sessions(&self, session_ids: &[Uuid]) -> Result<(), RedisError> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in session_ids {
            pipe.set_ex(self.session_key(&id.to_string()), 1, self.ttl_seconds)
                .ignore();
        }
        let mut connection = self.redis.connection();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    /// Refuses every token of this user issued before `not_before` (Unix seconds).
    pub async fn set_user_not_before(
        &self,
        user_id: Uuid,
        not_before: u64,
    ) -> Result<(), RedisError> {
        let mut connection = self.redis.connection();
        connection
            .set_ex::<_, _, ()>(
                self.user_key(&user_id.to_string()),
                not_before,
                self.ttl_seconds,
            )
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        self.redis.ping().await
    }
}
