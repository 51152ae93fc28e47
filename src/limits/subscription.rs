//! The revocation feed's transport: a subscription to the feed's channel and this instance's
//! acknowledgement channel, and the confirmation that every message published before it has
//! arrived, on which the feed renews its lease (`feed.rs` has the why; this is only the how).
//!
//! - **One Redis**: a pub/sub connection of its own (`SUBSCRIBE`). Redis answers a `PING` on
//!   it in order with the messages, so once the `PONG` is in, every earlier message is queued.
//! - **A cluster**: the crate's cluster connection in RESP3, subscribed to the two shard
//!   channels (`SSUBSCRIBE`) on the master of their slot, the messages arriving on a push
//!   channel. A `PING`'s answer there travels another path than the pushes (the crate
//!   forwards pushes through a task of its own), so its order proves nothing. Instead a
//!   fence is published to this instance's own acknowledgement channel and waited for: Redis
//!   hands one subscriber its channels' messages in the order it published them, and the
//!   push channel keeps that order, so every message published before the fence was
//!   received before it.
//!
//! The crate resubscribes by itself after a lost connection, which would hide what was
//! published meanwhile. Its `Disconnection` push (from any node) arrives first and ends the
//! subscription here instead, as a closed connection does in one Redis; so does a
//! `sunsubscribe` from Redis, sent when the slot moves to another master. The feed then
//! starts over: reload, resubscribe.

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{cluster_builder, Mode, Redis};

/// What a fence's payload starts with; an acknowledgement is a publication number.
const FENCE: &str = "fence:";

pub(super) enum Subscription {
    Single {
        sink: PubSubSink,
        messages: PubSubStream,
    },
    Cluster {
        connection: ClusterConnection,
        pushes: UnboundedReceiver<PushInfo>,
        acks_channel: String,
        fences: u64,
    },
}

impl Subscription {
    /// Subscribed to `channel` and `acks_channel` once this returns.
    pub(super) async fn open(
        redis: &Redis,
        channel: &str,
        acks_channel: &str,
    ) -> RedisResult<Subscription> {
        match &redis.inner.mode {
            Mode::Single { client, .. } => {
                let (mut sink, messages) = client.get_async_pubsub().await?.split();
                sink.subscribe(&[channel, acks_channel]).await?;
                Ok(Subscription::Single { sink, messages })
            }
            Mode::Cluster { nodes, .. } => {
                let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
                let client = cluster_builder(nodes, redis.inner.timeout)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build()?;
                let mut connection = client.get_async_connection().await?;
                // Both channels carry the one revocation hash tag: one slot, one master.
                connection.ssubscribe(&[channel, acks_channel]).await?;
                Ok(Subscription::Cluster {
                    connection,
                    pushes,
                    acks_channel: acks_channel.to_owned(),
                    fences: 0,
                })
            }
        }
    }

    /// The next message; an error once the subscription is lost.
    pub(super) async fn next(&mut self) -> RedisResult<Msg> {
        match self {
            Subscription::Single { messages, .. } => messages.next().await.ok_or_else(closed),
            Subscription::Cluster {
                pushes,
                acks_channel,
                ..
            } => loop {
                let push = pushes.recv().await.ok_or_else(closed)?;
                match read_push(push, acks_channel)? {
                    Pushed::Message(message) => return Ok(message),
                    // A fence whose confirmation timed out, or a subscription's confirmation.
                    Pushed::Fence(_) | Pushed::Nothing => {}
                }
            },
        }
    }

    /// Returns once every message published before it was called has been received: each is
    /// either handed to `apply` here or waiting for [`Subscription::drain`].
    pub(super) async fn confirm(&mut self, mut apply: impl FnMut(&Msg)) -> RedisResult<()> {
        match self {
            Subscription::Single { sink, .. } => sink.ping::<redis::Value>().await.map(drop),
            Subscription::Cluster {
                connection,
                pushes,
                acks_channel,
                fences,
            } => {
                *fences += 1;
                let fence = format!("{FENCE}{fences}");
                redis::cmd("SPUBLISH")
                    .arg(&*acks_channel)
                    .arg(&fence)
                    .query_async::<()>(connection)
                    .await?;
                loop {
                    let push = pushes.recv().await.ok_or_else(closed)?;
                    match read_push(push, acks_channel)? {
                        Pushed::Message(message) => apply(&message),
                        Pushed::Fence(payload) if payload == fence => return Ok(()),
                        Pushed::Fence(_) | Pushed::Nothing => {}
                    }
                }
            }
        }
    }

    /// Hands every message already received to `apply`, without waiting for more; an error if
    /// the subscription was lost meanwhile.
    pub(super) async fn drain(&mut self, mut apply: impl FnMut(&Msg)) -> RedisResult<()> {
        match self {
            Subscription::Single { messages, .. } => loop {
                // Unconstrained: with the task's budget spent, a ready message could read as
                // not ready, and the lease would cover what was not applied.
                let ready = tokio::task::unconstrained(tokio::time::timeout(
                    std::time::Duration::ZERO,
                    messages.next(),
                ))
                .await;
                match ready {
                    Ok(Some(message)) => apply(&message),
                    Ok(None) => return Err(closed()),
                    Err(_) => return Ok(()),
                }
            },
            Subscription::Cluster {
                pushes,
                acks_channel,
                ..
            } => loop {
                let push = match pushes.try_recv() {
                    Ok(push) => push,
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(()),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        return Err(closed())
                    }
                };
                if let Pushed::Message(message) = read_push(push, acks_channel)? {
                    apply(&message);
                }
            },
        }
    }
}

/// A push, as the feed sees it.
enum Pushed {
    Message(Msg),
    /// A fence's payload.
    Fence(String),
    /// A subscription's confirmation, or a kind the feed does not use.
    Nothing,
}

/// Sorts a cluster push; an error for a lost connection or a subscription Redis ended.
fn read_push(push: PushInfo, acks_channel: &str) -> RedisResult<Pushed> {
    match push.kind {
        PushKind::Disconnection | PushKind::SUnsubscribe | PushKind::Unsubscribe => Err(closed()),
        PushKind::SMessage | PushKind::Message => {
            let Some(message) = Msg::from_push_info(push) else {
                return Ok(Pushed::Nothing);
            };
            if message.get_channel_name() == acks_channel {
                if let Ok(payload) = message.get_payload::<String>() {
                    if payload.starts_with(FENCE) {
                        return Ok(Pushed::Fence(payload));
                    }
                }
            }
            Ok(Pushed::Message(message))
        }
        _ => Ok(Pushed::Nothing),
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}
