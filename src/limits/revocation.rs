//! Writing revocation to Redis: a revoked session id, and a per-user "not before" time that
//! ends every token issued earlier. Keys expire on their own after the access-token
//! lifetime, when every token they could refuse has expired anyway. Reading them is the
//! gate's job (`gate/`), in the same round trip as the rate limit; with a feed
//! (`feed.rs`), each revocation is also pushed to every instance's copy, and the write
//! returns once they all have it.
//!
//! With a record (Postgres), a user's not-before time is written there first: Postgres is
//! the record of every revocation (ended sessions are recorded by their callers, in
//! `sessions`), and what Redis loses is rebuilt from it (`durability.rs`). The rebuild
//! writes through here too, so a rebuilt revocation is exactly one written anew.

use std::time::Duration;

use uuid::Uuid;

use super::durability::Restore;
use super::feed::{RevocationFeed, Revoked};
use super::{Redis, RedisError, RedisOperation};
use crate::store::Store;

/// Revocations written in one pipeline at most when restoring many.
const RESTORE_BATCH: usize = 512;

#[derive(Clone)]
pub struct Revocations {
    redis: Redis,
    ttl_seconds: u64,
    feed: Option<RevocationFeed>,
    /// Where not-before times are recorded; None: not recorded (tests of Redis alone).
    record: Option<Store>,
}

impl Revocations {
    /// `token_lifetime` is the access-token lifetime plus leeway: how long a revocation must
    /// be remembered. `record`: Postgres, where not-before times are recorded.
    pub fn new(
        redis: Redis,
        token_lifetime: Duration,
        feed: Option<RevocationFeed>,
        record: Option<Store>,
    ) -> Revocations {
        Revocations {
            redis,
            ttl_seconds: token_lifetime.as_secs().max(1),
            feed,
            record,
        }
    }

    /// Runs `pipe` (which sets the gate's keys), and with a feed, publishes `revoked` in the
    /// same round trip and waits for every instance to have it.
    async fn write(&self, pipe: redis::Pipeline, revoked: &[Revoked]) -> Result<(), RedisError> {
        match &self.feed {
            Some(feed) => feed.publish(pipe, revoked).await?,
            None => {
                let mut connection = self.redis.connection();
                self.redis
                    .timed(
                        RedisOperation::RevocationWrite,
                        pipe.query_async::<()>(&mut connection),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    fn session_key(&self, session_id: &str) -> String {
        session_key(&self.redis, session_id)
    }

    fn user_key(&self, user_id: &str) -> String {
        user_key(&self.redis, user_id)
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
    ///
    /// The not-before time is recorded in Postgres before Redis has it, so that no instance
    /// refuses a token on a revocation a rebuild would not restore. Should Redis then fail,
    /// the caller fails before changing anything, and the recorded time refuses only tokens
    /// issued before a request the client will retry.
    pub async fn revoke(
        &self,
        session_ids: &[Uuid],
        user_not_before: Option<(Uuid, u64)>,
    ) -> Result<(), RedisError> {
        if let (Some((user_id, not_before)), Some(record)) = (user_not_before, &self.record) {
            record
                .record_token_not_before(user_id, super::durability::time_of(not_before))
                .await?;
        }
        let users: Vec<(Uuid, u64)> = user_not_before.into_iter().collect();
        self.write_keys(session_ids, &users, Overwrite::Always)
            .await
    }

    async fn write_keys(
        &self,
        session_ids: &[Uuid],
        user_not_befores: &[(Uuid, u64)],
        overwrite: Overwrite,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let mut revoked = Vec::with_capacity(session_ids.len() + user_not_befores.len());
        for &(user_id, not_before) in user_not_befores {
            let user_id = user_id.to_string();
            pipe.cmd("SET")
                .arg(self.user_key(&user_id))
                .arg(not_before)
                .arg("EX")
                .arg(self.ttl_seconds);
            if overwrite == Overwrite::Never {
                pipe.arg("NX");
            }
            pipe.ignore();
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

/// Whether a user's not-before key already in Redis is replaced.
impl Restore for Revocations {
    /// Writes revocations read back from the record into Redis, the same way as `revoke`,
    /// a batch at a time.
    async fn restore(
        &self,
        session_ids: &[Uuid],
        user_not_befores: &[(Uuid, u64)],
    ) -> Result<(), RedisError> {
        for users in user_not_befores.chunks(RESTORE_BATCH) {
            self.write_keys(&[], users, Overwrite::Never).await?;
        }
        for sessions in session_ids.chunks(RESTORE_BATCH) {
            self.write_keys(sessions, &[], Overwrite::Never).await?;
        }
        Ok(())
    }
}

/// `<prefix>{revocation}:sid:<session id>`: set while the session's access tokens are refused.
pub(crate) fn session_key(redis: &Redis, session_id: &str) -> String {
    redis.revocation_key(&["sid", session_id])
}

/// `<prefix>{revocation}:user-nbf:<user id>`: the user's tokens issued before it are refused.
pub(crate) fn user_key(redis: &Redis, user_id: &str) -> String {
    redis.revocation_key(&["user-nbf", user_id])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overwrite {
    /// A revocation made now: its time is the latest.
    Always,
    /// A restored one: a key already there was written since Redis lost its data, by a
    /// revocation at least as late as anything the record held when it was read.
    Never,
}
