//! Writing revocation to Redis: a revoked session id, and a per-user "not before" time that
//! ends every token issued earlier. Keys expire on their own after the access-token
//! lifetime, when every token they could refuse has expired anyway. Reading them is the
//! gate's job (`gate.rs`), in the same round trip as the rate limit; with a feed
//! (`feed.rs`), each revocation is also pushed to every instance's copy, and the write
//! returns once they all have it.

use std::time::Duration;

use uuid::Uuid;

use super::feed::{RevocationFeed, Revoked};
use super::{Redis, RedisError};

#[derive(Clone)]
pub struct Revocations {
    redis: Redis,
    ttl_seconds: u64,
    feed: Option<RevocationFeed>,
}

impl Revocations {
    /// `token_lifetime` is the access-token lifetime plus leeway: how long a revocation must
    /// be remembered.
    pub fn new(
        redis: Redis,
        token_lifetime: Duration,
        feed: Option<RevocationFeed>,
    ) -> Revocations {
        Revocations {
            redis,
            ttl_seconds: token_lifetime.as_secs().max(1),
            feed,
        }
    }

    /// Runs `pipe` (which sets the gate's keys), and with a feed, publishes `revoked` in the
    /// same round trip and waits for every instance to have it.
    async fn write(&self, pipe: redis::Pipeline, revoked: &[Revoked]) -> Result<(), RedisError> {
        match &self.feed {
            Some(feed) => feed.publish(pipe, revoked).await?,
            None => {
                let mut connection = self.redis.connection();
                pipe.query_async::<()>(&mut connection).await?;
            }
        }
        Ok(())
    }

    fn session_key(&self, session_id: &str) -> String {
        self.redis.key(&["revoked", "sid", session_id])
    }

    fn user_key(&self, user_id: &str) -> String {
        self.redis.key(&["revoked", "user-nbf", user_id])
    }

    /// Ends these sessions' access tokens on every instance, at once.
    pub async fn revoke_sessions(&self, session_ids: &[Uuid]) -> Result<(), RedisError> {
        self.revoke(session_ids, None).await
    }

    /// Refuses every token of this user issued before `not_before` (Unix seconds).
    pub async fn set_user_not_before(
        &self,
        user_id: Uuid,
        not_before: u64,
    ) -> Result<(), RedisError> {
        self.revoke(&[], Some((user_id, not_before))).await
    }

    /// Both at once: one write, and with a feed one publication to wait for.
    pub async fn revoke(
        &self,
        session_ids: &[Uuid],
        user_not_before: Option<(Uuid, u64)>,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let mut revoked = Vec::with_capacity(session_ids.len() + 1);
        if let Some((user_id, not_before)) = user_not_before {
            let user_id = user_id.to_string();
            pipe.set_ex(self.user_key(&user_id), not_before, self.ttl_seconds)
                .ignore();
            revoked.push(Revoked::UserBefore(user_id, not_before));
        }
        for id in session_ids {
            let id = id.to_string();
            pipe.set_ex(self.session_key(&id), 1, self.ttl_seconds)
                .ignore();
            revoked.push(Revoked::Session(id));
        }
        if revoked.is_empty() {
            return Ok(());
        }
        self.write(pipe, &revoked).await
    }

    pub async fn ping(&self) -> bool {
        self.redis.ping().await
    }
}
