//! The gate's I/O: each worker's queue of checks waiting for Redis, the flush task that
//! gathers them into batches, and the round trips that carry a batch's [`Plan`] to Redis
//! (one pipeline) and its give-back after (a second, only when something goes back). What
//! the batch asks and what the replies mean is decided in `plan.rs`.
//!
//! In a Redis Cluster a pipeline must keep to one slot, and a batch mixes many clients'
//! keys: it goes as one pipeline per slot ([`Plan::parts`]), all sent at once, and the
//! replies are put back in batch order before the plan reads them. Per slot rather than per
//! master because the crate routes a pipeline by slot and does not share its slot map;
//! the pipelines to one master travel on that master's one multiplexed connection, written
//! together when they are sent together. If any part fails, the whole batch fails, as a
//! batch does when a single Redis fails: its checks are answered by their fail modes.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use redis::cluster_routing::Slot;
use tokio::sync::oneshot;

use super::plan::{Answer, Counters, GiveBack, Keyed, Part, Plan, Replies};
use super::{Gate, GateError, GateOutcome};
use crate::limits::durability::EpochReading;
use crate::limits::RedisOperation;

/// A flush lets the event loop run this many more turns at most, while each brings more
/// checks, before it sends what it has.
const GATHER_TURNS: usize = 4;
/// Checks sent in one round trip at most; more wait for the next.
const MAX_BATCH: usize = 512;

/// One sliding-log check, atomically. KEYS[1]: the bucket's log, a sorted set of request
/// times (ms) by unique member. ARGV: now (ms), the window (ms), the limit, this request's
/// member. Returns the times still in the window before this request; this request is added
/// exactly when there are fewer than the limit, so the test and the add are one step and
/// requests through any number of instances never admit one too many. The log lives a window
/// past its newest entry. Sent with `EVAL` and its source rather than `EVALSHA`: a Redis that
/// restarted empty would answer `NOSCRIPT` in the middle of a pipeline whose counters had
/// already counted, and the source is a few hundred bytes.
pub(crate) const LOG_SCRIPT: &str = "\
local now = tonumber(ARGV[1])
local length = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - length)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local times = {}
for i = 2, #entries, 2 do times[#times + 1] = entries[i] end
if #times < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], length)
end
return times
";

#[derive(Default)]
pub(super) struct Queue {
    waiting: Vec<Waiting>,
    /// A flush task is running for this queue and will take what is waiting.
    flushing: bool,
    /// What this worker knows of each counter it has counted in: lifetimes and leases.
    pub(super) counters: Counters,
}

struct Waiting {
    check: Keyed,
    reply: oneshot::Sender<Result<GateOutcome, GateError>>,
}

impl Gate {
    /// Waits for `check`'s turn in the worker's next batch, and its answer.
    pub(super) async fn batched(
        &self,
        queue: usize,
        check: Keyed,
    ) -> Result<GateOutcome, GateError> {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting { check, reply };
        let start_flush = {
            let mut queue = self.queue(queue);
            queue.waiting.push(waiting);
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start_flush {
            tokio::spawn(self.clone().flush(queue));
        }
        answer.await.unwrap_or(Err(GateError::Dropped))
    }

    /// The calling worker's queue, or the shared one outside the workers.
    pub(super) fn queue_index(&self) -> usize {
        let last = self.inner.queues.len() - 1;
        crate::workers::worker_index().map_or(last, |index| index.min(last))
    }

    pub(super) fn queue(&self, index: usize) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a queue that is still consistent (a Vec and a
        // flag), so a poisoned lock is taken over rather than propagated.
        self.inner.queues[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the queue's waiting checks, a batch per round trip, until none are left.
    async fn flush(self, queue: usize) {
        // Answers (with `Dropped`) whatever is left if this task is dropped, as at shutdown,
        // and lets the next check start a new flush.
        let mut unstuck = Unstuck {
            gate: &self,
            queue,
            armed: true,
        };
        loop {
            // Let this turn's other ready requests reach their checks first.
            let mut seen = self.queue(queue).waiting.len();
            for _ in 0..GATHER_TURNS {
                if seen >= MAX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
                let now = self.queue(queue).waiting.len();
                if now == seen {
                    break;
                }
                seen = now;
            }
            let batch = {
                let mut waiting = self.queue(queue);
                if waiting.waiting.is_empty() {
                    waiting.flushing = false;
                    unstuck.armed = false;
                    return;
                }
                let take = waiting.waiting.len().min(MAX_BATCH);
                waiting.waiting.drain(..take).collect::<Vec<_>>()
            };
            self.send(queue, batch).await;
        }
    }

    /// One round trip for the whole batch (two when something goes back), then each check's
    /// answer: the plan, the pipeline, the plan's reading of the replies.
    async fn send(&self, queue: usize, batch: Vec<Waiting>) {
        let (checks, replies): (Vec<Keyed>, Vec<_>) = batch
            .into_iter()
            .map(|waiting| (waiting.check, waiting.reply))
            .unzip();
        let epoch_key = self
            .inner
            .feed
            .as_ref()
            .map(|feed| feed.durability().epoch_key());
        let plan = Plan::new(&checks, epoch_key, &self.queue(queue).counters);

        let redis = &self.inner.redis;
        let connection = redis.connection();
        // A single Redis takes the batch whole: no key is hashed for it.
        let parts = match redis.is_cluster() {
            true => plan.parts(|key| Slot::for_key(key)),
            false => vec![plan.whole()],
        };
        self.inner
            .round_trips
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        self.inner
            .checks_sent
            .fetch_add(checks.len() as u64, Ordering::Relaxed);
        let sent = std::time::Instant::now();
        let answered = futures_util::future::join_all(parts.iter().map(|part| {
            let mut connection = connection.clone();
            let pipe = pipeline(&plan, part);
            async move { pipe.query_async(&mut connection).await }
        }))
        .await;
        redis.record(RedisOperation::GateCheck, sent.elapsed());
        let read = parts.iter().zip(answered).try_fold(
            Replies::for_plan(&plan),
            |mut read, (part, values)| -> Result<_, GateError> {
                decode(&plan, part, values?, &mut read)?;
                Ok(read)
            },
        );
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };

        // Whether the revocations read can be believed: Redis still holds an epoch.
        let intact = match (&self.inner.feed, &read.epoch) {
            (Some(feed), Some(seen)) => {
                let reading = feed.durability().read(seen.as_deref());
                if reading == EpochReading::Lost {
                    feed.durability().seen_lost();
                }
                reading != EpochReading::Lost
            }
            _ => true,
        };
        let settled = plan.settle(&read, intact, &mut self.queue(queue).counters);

        let mut after_give_back = Vec::new();
        for (reply, answer) in replies.into_iter().zip(settled.answers) {
            match answer {
                Answer::Now(result) => {
                    let _ = reply.send(result);
                }
                Answer::AfterGiveBack(outcome) => after_give_back.push((reply, outcome)),
            }
        }
        let give_back = settled.give_back;
        if give_back.is_empty() {
            return;
        }
        let parts = match redis.is_cluster() {
            true => give_back.split(|key| Slot::for_key(key)),
            false => vec![give_back],
        };
        self.inner
            .round_trips
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let sent = std::time::Instant::now();
        let answered = futures_util::future::join_all(parts.iter().map(|part| {
            let mut connection = connection.clone();
            let pipe = give_back_pipeline(part);
            async move { pipe.query_async::<()>(&mut connection).await }
        }))
        .await;
        redis.record(RedisOperation::GateGiveBack, sent.elapsed());
        // If Redis fails here the count stays too high until the window slides past it, which
        // errs on the side of refusing.
        for (part, answer) in parts.iter().zip(answered) {
            if let Err(error) = answer {
                tracing::debug!(%error, "could not give back refused requests' places");
                // A lifetime that did not land is set by the next batch instead.
                let mut queue = self.queue(queue);
                for (key, _) in &part.lifetimes {
                    queue.counters.lifetime_lost(key);
                }
            }
        }
        for (reply, outcome) in after_give_back {
            let _ = reply.send(Ok(outcome));
        }
    }
}

/// One part's commands, in the order [`decode`] reads their replies: counters, logs, the
/// reads (one `MGET`), the epoch.
fn pipeline(plan: &Plan<'_>, part: &Part) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for &index in &part.counters {
        let counter = &plan.counters[index];
        pipe.cmd("INCRBY").arg(counter.key).arg(counter.places());
        if counter.expire {
            pipe.cmd("PEXPIRE")
                .arg(counter.key)
                .arg(counter.lifetime_ms())
                .ignore();
        }
    }
    for &index in &part.logs {
        let log = plan.logs[index];
        pipe.cmd("EVAL")
            .arg(LOG_SCRIPT)
            .arg(1)
            .arg(&log.key)
            .arg(log.now_ms)
            .arg(log.length_ms)
            .arg(log.limit.requests)
            .arg(&log.member);
    }
    if !part.reads.is_empty() {
        let mget = pipe.cmd("MGET");
        for &index in &part.reads {
            mget.arg(plan.reads[index]);
        }
    }
    if part.epoch {
        if let Some(epoch) = plan.epoch {
            pipe.cmd("GET").arg(epoch);
        }
    }
    pipe
}

/// Puts one part's replies in their places in `into`: each counter's total after its
/// `INCRBY`, the values read, the times each log check found in its window, and the epoch
/// read (when this part asked for it). Replies come in pipeline order: counters, logs, the
/// reads, the epoch.
fn decode(
    plan: &Plan<'_>,
    part: &Part,
    mut replies: Vec<redis::Value>,
    into: &mut Replies,
) -> Result<(), GateError> {
    fn read<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, GateError> {
        redis::from_redis_value(value)
            .map_err(|error| GateError::from(redis::RedisError::from(error)))
    }
    let expected = part.counters.len()
        + part.logs.len()
        + usize::from(!part.reads.is_empty())
        + usize::from(part.epoch && plan.epoch.is_some());
    if replies.len() != expected {
        return Err(unexpected());
    }
    if part.epoch && plan.epoch.is_some() {
        into.epoch = Some(read::<Option<String>>(
            replies.pop().unwrap_or(redis::Value::Nil),
        )?);
    }
    if !part.reads.is_empty() {
        let values: Vec<Option<u64>> = read(replies.pop().unwrap_or(redis::Value::Nil))?;
        if values.len() != part.reads.len() {
            return Err(unexpected());
        }
        for (&index, value) in part.reads.iter().zip(values) {
            into.values[index] = value;
        }
    }
    let log_replies = replies.split_off(part.counters.len());
    for (&index, reply) in part.counters.iter().zip(replies) {
        into.totals[index] = read(reply)?;
    }
    for (&index, reply) in part.logs.iter().zip(log_replies) {
        // Scores come back as text; milliseconds since 1970 are exact in a double.
        let times: Vec<f64> = read(reply)?;
        into.logs[index] = times.into_iter().map(|time| time as u64).collect();
    }
    Ok(())
}

fn unexpected() -> GateError {
    GateError::from(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "a reply for each command",
    )))
}

/// The refused requests' places (and the places taken ahead that did not fit), the revoked
/// requests' log entries, and the lifetimes of counters that vanished.
fn give_back_pipeline(give_back: &GiveBack<'_>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for &(key, count) in &give_back.places {
        pipe.cmd("DECRBY").arg(key).arg(count).ignore();
    }
    for &(key, member) in &give_back.log_entries {
        pipe.cmd("ZREM").arg(key).arg(member).ignore();
    }
    for &(key, lifetime_ms) in &give_back.lifetimes {
        pipe.cmd("PEXPIRE").arg(key).arg(lifetime_ms).ignore();
    }
    pipe
}

/// Answers whatever is still waiting with `Dropped` if a flush task is dropped part way (at
/// shutdown), so that no check waits forever, and lets the next check start a new flush.
struct Unstuck<'a> {
    gate: &'a Gate,
    queue: usize,
    armed: bool,
}

impl Drop for Unstuck<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut queue = self.gate.queue(self.queue);
            queue.flushing = false;
            queue.waiting.clear();
        }
    }
}
