//! The gate's decisions, apart from its I/O: what one batch asks Redis, how Redis' replies
//! become each check's answer and the batch's give-back, and a worker's leases (how many
//! places to take ahead in a counter, and when a place already held answers a check).
//!
//! Nothing here talks to Redis, awaits or reads a clock: each check brings its own time,
//! and the replies come in already decoded into numbers ([`Replies`]). So every rule of the
//! batch and the lease is tested here by tables that need no Redis; `batch.rs` carries a
//! [`Plan`] to Redis and back, and the tests in [`super`] check the two together against a
//! real one.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use super::{GateError, GateOutcome, Limit, RateOutcome};
use crate::limits::window;

/// A check with its Redis keys, owned so that it can wait for its batch.
pub(super) struct Keyed {
    pub(super) now_ms: u64,
    /// A larger limit's counters; a small limit's log. At most one of the two.
    pub(super) rate: Option<KeyedRate>,
    pub(super) log: Option<KeyedLog>,
    /// The session's revocation key, the user's not-before key, and the token's issue time.
    pub(super) token: Option<(String, String, u64)>,
}

pub(super) struct KeyedRate {
    pub(super) current: String,
    pub(super) previous: String,
    pub(super) limit: Limit,
    pub(super) length_ms: u64,
    pub(super) elapsed_ms: u64,
    /// When the current window ends (ms, the caller's clock).
    pub(super) window_end_ms: u64,
}

/// A small limit's sliding log and this request's entry in it.
pub(super) struct KeyedLog {
    pub(super) key: String,
    pub(super) member: String,
    /// This request's time: its entry's score, and where the window ends.
    pub(super) now_ms: u64,
    pub(super) limit: Limit,
    pub(super) length_ms: u64,
}

impl KeyedRate {
    /// The windows as this check sees them, with `current` counted in this one.
    fn state(&self, previous: u64, current: u64) -> window::State {
        window::State {
            previous,
            current,
            elapsed_ms: self.elapsed_ms,
            length_ms: self.length_ms,
        }
    }

    fn limit(&self) -> u64 {
        u64::from(self.limit.requests)
    }
}

/// What one worker knows of each counter it has counted in, by key.
#[derive(Default)]
pub(super) struct Counters {
    by_key: HashMap<Box<str>, Known>,
}

/// A counter as this worker last left it, remembered until its window ends: no check counts
/// in it after that.
struct Known {
    window_end_ms: u64,
    /// Whether this worker has given the key its lifetime (`PEXPIRE`).
    lifetime_set: bool,
    lease: Lease,
}

/// Places in a counter taken ahead of need, so that the next requests of a busy bucket are
/// decided here without a round trip: each takes the next place and is decided with
/// [`window::decide`] exactly as if Redis had just handed it that place. Taking a place early
/// can only make a later request elsewhere see the count higher, so a lease may refuse a
/// request that would have been admitted, never admit one too many; it is kept small beside
/// the room the window has left (a sixteenth), so that only a busy bucket far from its limit
/// gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    /// The next place to hand out, and the last one held; none left once `next > last`.
    next: u64,
    last: u64,
    /// The previous window's count when the places were taken.
    previous: u64,
    /// How many places the last grant took; the next doubles it, up to [`MAX_LEASE`].
    grant: u64,
}

/// Places one lease holds at most.
const MAX_LEASE: u64 = 256;

/// Counters remembered per worker at most (about 6 MB), whatever the windows' length and
/// however many addresses a client sends from. Past it the ended windows' entries are
/// dropped, and if that leaves more than half, all of them: forgetting costs only `PEXPIRE`s
/// sent again and places no longer held, and at least half the cap fills between two
/// prunings, so pruning costs O(1) a batch.
#[cfg(not(test))]
pub(super) const COUNTERS_MAX: usize = 50_000;
#[cfg(test)]
pub(super) const COUNTERS_MAX: usize = 64;

impl Counters {
    /// Decides a check on a place this worker already holds, if it holds one.
    pub(super) fn decide_on_lease(&mut self, rate: &KeyedRate) -> Option<RateOutcome> {
        let lease = &mut self.by_key.get_mut(rate.current.as_str())?.lease;
        if lease.next > lease.last {
            return None;
        }
        let decision = window::decide(
            rate.state(lease.previous, lease.next - 1),
            rate.limit(),
            true,
        );
        if decision.allowed {
            lease.next += 1;
        } else {
            // At the limit (a request timed before the grant, with more weight on the
            // previous window): the places held go unused, and the next check asks Redis
            // for one place at a time again.
            lease.last = lease.next - 1;
            lease.grant = 0;
        }
        Some(rate_outcome(rate, decision))
    }

    /// How many places to take ahead in `rate`'s counter: none the first time this worker
    /// counts in it (a bucket seen once stays exact and costs no more), then twice the last
    /// grant, carried over from the previous window, and never more than a sixteenth of the
    /// room left.
    fn next_grant(&self, rate: &KeyedRate, now_ms: u64) -> u64 {
        let limit = rate.limit();
        let (wanted, room) = match self
            .by_key
            .get(rate.current.as_str())
            .map(|known| &known.lease)
        {
            // Checked while a grant was on its way: it is here now, and holds places enough.
            Some(lease) if lease.next <= lease.last => return 0,
            Some(lease) => {
                let room = window::decide(rate.state(lease.previous, lease.last), limit, false);
                ((2 * lease.grant).max(1), room.remaining)
            }
            None => match self.by_key.get(rate.previous.as_str()) {
                Some(known) if known.window_end_ms + rate.length_ms > now_ms => {
                    let room = window::decide(rate.state(known.lease.last, 0), limit, false);
                    (known.lease.grant, room.remaining)
                }
                _ => (0, limit),
            },
        };
        wanted.min(MAX_LEASE).min(room / 16)
    }

    fn lifetime_set(&self, key: &str) -> bool {
        self.by_key.get(key).is_some_and(|known| known.lifetime_set)
    }

    /// The `PEXPIRE` that was to set `key`'s lifetime again did not land: the next batch
    /// that counts in it sends one.
    pub(super) fn lifetime_lost(&mut self, key: &str) {
        if let Some(known) = self.by_key.get_mut(key) {
            known.lifetime_set = false;
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Past the cap, forgets the ended windows' counters, and if that leaves more than half,
    /// all of them.
    fn prune(&mut self, now_ms: u64) {
        if self.by_key.len() > COUNTERS_MAX {
            self.by_key.retain(|_, known| known.window_end_ms > now_ms);
            if self.by_key.len() > COUNTERS_MAX / 2 {
                self.by_key.clear();
            }
        }
    }
}

fn log_outcome(log: &KeyedLog, decided: window::LogDecision) -> RateOutcome {
    let decision = decided.decision;
    RateOutcome {
        allowed: decision.allowed,
        limit: log.limit.requests,
        remaining: u32::try_from(decision.remaining)
            .unwrap_or(u32::MAX)
            .min(log.limit.requests),
        reset: Duration::from_millis(decided.reset_ms),
        retry_after: decision.retry_after_ms.map(Duration::from_millis),
    }
}

fn rate_outcome(rate: &KeyedRate, decision: window::Decision) -> RateOutcome {
    RateOutcome {
        allowed: decision.allowed,
        limit: rate.limit.requests,
        remaining: u32::try_from(decision.remaining)
            .unwrap_or(u32::MAX)
            .min(rate.limit.requests),
        reset: Duration::from_millis(rate.length_ms - rate.elapsed_ms),
        retry_after: decision.retry_after_ms.map(Duration::from_millis),
    }
}

/// The commands one batch sends, and where each check's answers are in the replies.
/// Replies come in pipeline order: counters (`INCRBY`, with `PEXPIRE` where `expire`), logs
/// (`EVAL`), the reads (one `MGET`), the epoch (`GET`).
pub(super) struct Plan<'a> {
    checks: &'a [Keyed],
    /// The revocation epoch, read after the other keys when the batch checks a token.
    pub(super) epoch: Option<&'a str>,
    /// Each rate-limit counter the batch touches.
    pub(super) counters: Vec<Counter<'a>>,
    /// Each check of a small limit's log, in batch order.
    pub(super) logs: Vec<&'a KeyedLog>,
    /// The latest of the checks' times.
    now_ms: u64,
    /// Every other key the batch reads, once each.
    pub(super) reads: Vec<&'a str>,
    /// For each check, in batch order.
    slots: Vec<Slots>,
}

/// A rate-limit counter: the current window's key.
pub(super) struct Counter<'a> {
    pub(super) key: &'a str,
    /// The first check's: the window, the limit and the previous window's key.
    rate: &'a KeyedRate,
    /// The previous window's counter, in `reads`.
    previous: usize,
    /// How many of the batch's checks take a place in it.
    count: u64,
    /// Places taken beyond the checks', for the worker's lease.
    extra: u64,
    /// Whether the batch sets its lifetime (`PEXPIRE`) after counting.
    pub(super) expire: bool,
}

impl Counter<'_> {
    /// Two windows: it is read as the previous window until the next one ends.
    pub(super) fn lifetime_ms(&self) -> u64 {
        2 * self.rate.length_ms
    }

    /// The places the batch takes: its checks' and the lease's.
    pub(super) fn places(&self) -> u64 {
        self.count + self.extra
    }
}

/// What a batch's pipeline answered, decoded but not yet read for meaning.
pub(super) struct Replies {
    /// Each counter's value after the batch's `INCRBY`, in `counters` order.
    pub(super) totals: Vec<u64>,
    /// Each key in `reads`; None for a key that does not exist.
    pub(super) values: Vec<Option<u64>>,
    /// Each log check's times still in its window, before it.
    pub(super) logs: Vec<Vec<u64>>,
    /// The revocation epoch, when it was asked for: `Some(None)` is an epoch that is gone.
    pub(super) epoch: Option<Option<String>>,
}

impl Replies {
    /// Room for every reply `plan` asks for, filled in part by part.
    pub(super) fn for_plan(plan: &Plan<'_>) -> Replies {
        Replies {
            totals: vec![0; plan.counters.len()],
            values: vec![None; plan.reads.len()],
            logs: vec![Vec::new(); plan.logs.len()],
            epoch: None,
        }
    }
}

#[derive(Clone, Copy)]
struct Slots {
    /// The check's counter in `counters`, and its previous window's counter in `reads`.
    rate: Option<(usize, usize)>,
    /// The check's place in `logs`.
    log: Option<usize>,
    /// The session's revocation key and the user's not-before key, in `reads`.
    token: Option<(usize, usize)>,
}

/// A batch's answers once Redis has replied, and what goes back to Redis after.
pub(super) struct Settled<'a> {
    /// For each check, in batch order.
    pub(super) answers: Vec<Answer>,
    pub(super) give_back: GiveBack<'a>,
}

#[derive(Debug)]
pub(super) enum Answer {
    /// Nothing it took goes back, or it is not answered on what Redis holds (`Rebuilding`).
    Now(Result<GateOutcome, GateError>),
    /// A refused check, or a revoked one that took room: told only after the give-back, so
    /// that whoever it answers sees the count it left.
    AfterGiveBack(GateOutcome),
}

/// The batch's second round trip, sent only when something is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GiveBack<'a> {
    /// Places taken and not kept, by counter key (`DECRBY`): those of checks refused, revoked
    /// or not answered for a lost epoch, and places taken ahead that did not fit.
    pub(super) places: Vec<(&'a str, u64)>,
    /// Log entries of revoked requests, added before their revocation was read (`ZREM`), by
    /// key and member.
    pub(super) log_entries: Vec<(&'a str, &'a str)>,
    /// Counters whose key vanished since this worker gave it a lifetime: the `INCRBY` made
    /// it anew, without one (`PEXPIRE`, key and milliseconds).
    pub(super) lifetimes: Vec<(&'a str, u64)>,
}

impl<'a> GiveBack<'a> {
    pub(super) fn is_empty(&self) -> bool {
        self.places.is_empty() && self.log_entries.is_empty() && self.lifetimes.is_empty()
    }

    /// The give-back split into one per `group` of keys (a key's slot in a cluster: one
    /// pipeline keeps to one), in the order groups first appear, each command kept in order.
    pub(super) fn split<G: Eq + Hash>(&self, group: impl Fn(&str) -> G) -> Vec<GiveBack<'a>> {
        let mut parts: Grouped<G, _, GiveBack<'a>> = Grouped::new(group);
        for &(key, count) in &self.places {
            parts.of(key).places.push((key, count));
        }
        for &(key, member) in &self.log_entries {
            parts.of(key).log_entries.push((key, member));
        }
        for &(key, lifetime_ms) in &self.lifetimes {
            parts.of(key).lifetimes.push((key, lifetime_ms));
        }
        parts.parts
    }
}

/// Parts by group of keys, in the order the groups first appear.
struct Grouped<G, F, P> {
    group: F,
    part_of: HashMap<G, usize>,
    parts: Vec<P>,
}

impl<G: Eq + Hash, F: Fn(&str) -> G, P: Default> Grouped<G, F, P> {
    fn new(group: F) -> Self {
        Grouped {
            group,
            part_of: HashMap::new(),
            parts: Vec::new(),
        }
    }

    /// The part of `key`'s group, new if it is the first of its group.
    fn of(&mut self, key: &str) -> &mut P {
        let parts = &mut self.parts;
        let index = *self.part_of.entry((self.group)(key)).or_insert_with(|| {
            parts.push(P::default());
            parts.len() - 1
        });
        &mut self.parts[index]
    }
}

/// The commands of one pipeline of a batch, as indexes into the plan's `counters`, `logs`
/// and `reads` (in ascending order, so in batch order), and whether it reads the epoch last.
/// A Redis Cluster takes a pipeline only when all its keys share a slot, so a batch, which
/// mixes the keys of many clients, is split by slot; in a single Redis it is one part.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) counters: Vec<usize>,
    pub(super) logs: Vec<usize>,
    pub(super) reads: Vec<usize>,
    pub(super) epoch: bool,
}

impl<'a> Plan<'a> {
    /// The keys stay the checks': the plan only points at them. `worker`'s counters say
    /// which already have their lifetime and how many places to take ahead in each.
    pub(super) fn new(checks: &'a [Keyed], epoch: Option<&'a str>, worker: &Counters) -> Plan<'a> {
        // Sized for the batch up front: growing the maps while filling them showed in profiles.
        let mut counters: Vec<Counter<'a>> = Vec::with_capacity(checks.len());
        let mut logs: Vec<&'a KeyedLog> = Vec::new();
        let mut reads: Vec<&'a str> = Vec::with_capacity(3 * checks.len());
        let mut counter_at: HashMap<&'a str, usize> = HashMap::with_capacity(checks.len());
        let mut read_at: HashMap<&'a str, usize> = HashMap::with_capacity(3 * checks.len());
        fn read<'a>(
            key: &'a str,
            at: &mut HashMap<&'a str, usize>,
            reads: &mut Vec<&'a str>,
        ) -> usize {
            *at.entry(key).or_insert_with(|| {
                reads.push(key);
                reads.len() - 1
            })
        }
        let mut slots = Vec::with_capacity(checks.len());
        for check in checks {
            let rate = check.rate.as_ref().map(|rate| {
                let previous = read(&rate.previous, &mut read_at, &mut reads);
                let counter = *counter_at.entry(&rate.current).or_insert_with(|| {
                    counters.push(Counter {
                        key: &rate.current,
                        rate,
                        previous,
                        count: 0,
                        extra: 0,
                        expire: true,
                    });
                    counters.len() - 1
                });
                counters[counter].count += 1;
                (counter, previous)
            });
            let log = check.log.as_ref().map(|log| {
                logs.push(log);
                logs.len() - 1
            });
            let token = check.token.as_ref().map(|(session, not_before, _)| {
                (
                    read(session, &mut read_at, &mut reads),
                    read(not_before, &mut read_at, &mut reads),
                )
            });
            slots.push(Slots { rate, log, token });
        }
        let epoch = epoch.filter(|_| checks.iter().any(|check| check.token.is_some()));
        let now_ms = checks.iter().map(|check| check.now_ms).max().unwrap_or(0);
        for counter in &mut counters {
            counter.expire = !worker.lifetime_set(counter.key);
            counter.extra = worker.next_grant(counter.rate, now_ms);
        }
        Plan {
            checks,
            epoch,
            counters,
            logs,
            now_ms,
            reads,
            slots,
        }
    }

    /// The batch's commands split into one [`Part`] per `group` of keys (a key's slot in a
    /// cluster), in the order the groups first appear.
    ///
    /// Every command lands in the part of its key, and the epoch in the part of its key,
    /// which (the revocation hash tag) is the part of every revocation key: read in the same
    /// pipeline, after the `MGET` of the revocations, as in one Redis. A log's checks of one
    /// bucket stay in batch order, in one part.
    pub(super) fn parts<G: Eq + Hash>(&self, group: impl Fn(&str) -> G) -> Vec<Part> {
        let mut parts: Grouped<G, _, Part> = Grouped::new(group);
        for (index, counter) in self.counters.iter().enumerate() {
            parts.of(counter.key).counters.push(index);
        }
        for (index, log) in self.logs.iter().enumerate() {
            parts.of(&log.key).logs.push(index);
        }
        for (index, key) in self.reads.iter().enumerate() {
            parts.of(key).reads.push(index);
        }
        if let Some(epoch) = self.epoch {
            parts.of(epoch).epoch = true;
        }
        parts.parts
    }

    /// The whole batch as one part: what [`Plan::parts`] makes when every key is in one
    /// group, without grouping anything.
    pub(super) fn whole(&self) -> Part {
        Part {
            counters: (0..self.counters.len()).collect(),
            logs: (0..self.logs.len()).collect(),
            reads: (0..self.reads.len()).collect(),
            epoch: self.epoch.is_some(),
        }
    }

    /// Each check's answer from what Redis replied, `worker`'s leases updated to the places
    /// this batch took ahead, and what goes back. `intact`: whether the revocations read can
    /// be believed (Redis still held the epoch); when not, token checks fail as `Rebuilding`
    /// and the room they took goes back.
    pub(super) fn settle(
        &self,
        replies: &Replies,
        intact: bool,
        worker: &mut Counters,
    ) -> Settled<'a> {
        let Replies { values, logs, .. } = replies;
        // Each counter's next place to hand out, in batch order: the `INCRBY` handed this
        // batch the places up to the total it returned.
        let mut next_place: Vec<u64> = self
            .counters
            .iter()
            .zip(&replies.totals)
            .map(|(counter, &total)| (total + 1).saturating_sub(counter.places()))
            .collect();
        // The key had vanished since this worker gave it a lifetime: the INCRBY made it anew,
        // without one (its first place is 1, the batch's count is all of it).
        let lost_lifetime: Vec<usize> = (0..self.counters.len())
            .filter(|&index| !self.counters[index].expire && next_place[index] == 1)
            .collect();

        let mut given_back = vec![0u64; self.counters.len()];
        let mut removed: Vec<&'a KeyedLog> = Vec::new();
        let mut answers = Vec::with_capacity(self.checks.len());
        for (check, slots) in self.checks.iter().zip(&self.slots) {
            if check.token.is_some() && !intact {
                // Not answered on what Redis holds; its place, if it took one, goes back,
                // and so does its log entry, if the script added one.
                if let Some((counter, _)) = slots.rate {
                    next_place[counter] += 1;
                    given_back[counter] += 1;
                }
                if let (Some(log), Some(index)) = (&check.log, slots.log) {
                    let limit = u64::from(log.limit.requests);
                    let added =
                        window::decide_log(&logs[index], log.now_ms, log.length_ms, limit, false)
                            .decision
                            .allowed;
                    if added {
                        removed.push(log);
                    }
                }
                answers.push(Answer::Now(Err(GateError::Rebuilding)));
                continue;
            }
            let revoked = check.token.as_ref().is_some_and(|(_, _, issued_at)| {
                let (session, not_before) = slots.token.expect("a token's keys were read");
                // Revocation's own test (revocation.rs): the session's key exists, or the
                // token was issued before the user's not-before time.
                values[session].is_some()
                    || values[not_before].is_some_and(|not_before| *issued_at < not_before)
            });
            let rate = match (&check.rate, slots.rate) {
                (Some(rate), Some((counter, previous))) => {
                    let place = next_place[counter];
                    next_place[counter] += 1;
                    // Those counted before this request, less the places this batch is
                    // about to give back: within a batch, as if one after another.
                    let current = place.saturating_sub(1 + given_back[counter]);
                    let state = rate.state(values[previous].unwrap_or(0), current);
                    let decision = window::decide(state, rate.limit(), !revoked);
                    if !decision.allowed || revoked {
                        given_back[counter] += 1;
                    }
                    Some(rate_outcome(rate, decision))
                }
                _ => None,
            };
            let log = match (&check.log, slots.log) {
                (Some(log), Some(index)) => {
                    let decided = window::decide_log(
                        &logs[index],
                        log.now_ms,
                        log.length_ms,
                        u64::from(log.limit.requests),
                        !revoked,
                    );
                    // The script added the entry exactly when it admitted the request.
                    if decided.decision.allowed && revoked {
                        removed.push(log);
                    }
                    Some(log_outcome(log, decided))
                }
                _ => None,
            };
            let rate = rate.or(log);
            let outcome = GateOutcome { rate, revoked };
            let log_entry_to_remove = revoked && log.is_some_and(|log| log.allowed);
            answers.push(if log.is_some() && !log_entry_to_remove {
                // A log check left nothing to take back: answered at once.
                Answer::Now(Ok(outcome))
            } else if rate.is_some_and(|rate| !rate.allowed) || (revoked && rate.is_some()) {
                Answer::AfterGiveBack(outcome)
            } else {
                Answer::Now(Ok(outcome))
            });
        }

        for (index, counter) in self.counters.iter().enumerate() {
            let first_extra = next_place[index];
            if let Some(held) = worker.by_key.get_mut(counter.key) {
                if counter.extra == 0 && held.lease.next <= held.lease.last {
                    // Sent before the lease it holds now came back: keep that one.
                    held.lifetime_set = true;
                    continue;
                }
            }
            let rate = counter.rate;
            let previous = values[counter.previous].unwrap_or(0);
            // Only the places the window admits now are kept; the rest go back at once.
            // A refused check means the window is at its limit: all of them go back.
            let keep = if given_back[index] > 0 {
                0
            } else {
                let room =
                    window::decide(rate.state(previous, first_extra - 1), rate.limit(), false);
                counter.extra.min(room.remaining)
            };
            given_back[index] += counter.extra - keep;
            // Its lifetime is set: by this batch, earlier, or (lost) by the give-back.
            worker.by_key.insert(
                counter.key.into(),
                Known {
                    window_end_ms: rate.window_end_ms,
                    lifetime_set: true,
                    lease: Lease {
                        next: first_extra,
                        last: first_extra + keep - 1,
                        previous,
                        grant: keep,
                    },
                },
            );
        }
        worker.prune(self.now_ms);

        let give_back = GiveBack {
            places: self
                .counters
                .iter()
                .zip(given_back)
                .filter(|&(_, count)| count > 0)
                .map(|(counter, count)| (counter.key, count))
                .collect(),
            log_entries: removed
                .into_iter()
                .map(|log| (log.key.as_str(), log.member.as_str()))
                .collect(),
            lifetimes: lost_lifetime
                .into_iter()
                .map(|index| {
                    let counter = &self.counters[index];
                    (counter.key, counter.lifetime_ms())
                })
                .collect(),
        };
        Settled { answers, give_back }
    }
}

/// Every expected value here is worked out by hand from the rules above and in `window.rs`;
/// none needs Redis or a runtime.
#[cfg(test)]
mod tests {
    use super::*;

    /// A whole second: 1 s windows start here, with index 1_700_000_000.
    const T0: u64 = 1_700_000_000_000;
    /// Where the batch tables' checks fall: 250 ms into T0's window, 750 ms before its end.
    const NOW: u64 = T0 + 250;
    const ISSUED: u64 = 1_699_999_000;

    /// `bucket`'s counters for a check at `now_ms`, `requests` a second.
    fn rate(bucket: &str, requests: u32, now_ms: u64) -> KeyedRate {
        let index = now_ms / 1000;
        KeyedRate {
            current: format!("rate:{bucket}:{index}"),
            previous: format!("rate:{bucket}:{}", index - 1),
            limit: Limit {
                requests,
                window: Duration::from_secs(1),
            },
            length_ms: 1000,
            elapsed_ms: now_ms % 1000,
            window_end_ms: (index + 1) * 1000,
        }
    }

    fn counted(bucket: &str, requests: u32) -> Option<KeyedRate> {
        Some(rate(bucket, requests, NOW))
    }

    fn logged(bucket: &str, requests: u32, member: &str) -> Option<KeyedLog> {
        Some(KeyedLog {
            key: format!("rate-log:{bucket}"),
            member: member.to_string(),
            now_ms: NOW,
            limit: Limit {
                requests,
                window: Duration::from_secs(1),
            },
            length_ms: 1000,
        })
    }

    fn token(session: &str, user: &str, issued_at: u64) -> Option<(String, String, u64)> {
        Some((
            format!("revoked:sid:{session}"),
            format!("revoked:user-nbf:{user}"),
            issued_at,
        ))
    }

    fn keyed(
        rate: Option<KeyedRate>,
        log: Option<KeyedLog>,
        token: Option<(String, String, u64)>,
    ) -> Keyed {
        Keyed {
            now_ms: NOW,
            rate,
            log,
            token,
        }
    }

    fn lease(next: u64, last: u64, previous: u64, grant: u64) -> Lease {
        Lease {
            next,
            last,
            previous,
            grant,
        }
    }

    /// A counter of T0's window, its lifetime set.
    fn held(lease: Lease) -> Known {
        Known {
            window_end_ms: T0 + 1000,
            lifetime_set: true,
            lease,
        }
    }

    fn counters(held: Vec<(&str, Known)>) -> Counters {
        Counters {
            by_key: held
                .into_iter()
                .map(|(key, known)| (key.into(), known))
                .collect(),
        }
    }

    fn admitted(limit: u32, remaining: u32, reset_ms: u64) -> Option<RateOutcome> {
        Some(RateOutcome {
            allowed: true,
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: None,
        })
    }

    fn refused(limit: u32, reset_ms: u64, retry_after_ms: u64) -> Option<RateOutcome> {
        Some(RateOutcome {
            allowed: false,
            limit,
            remaining: 0,
            reset: Duration::from_millis(reset_ms),
            retry_after: Some(Duration::from_millis(retry_after_ms)),
        })
    }

    #[test]
    fn deciding_on_a_lease() {
        struct Row {
            label: &'static str,
            requests: u32,
            now_ms: u64,
            /// Held in bucket `a`'s counter of T0's window, whose previous window counted
            /// `lease.previous`.
            before: Option<Lease>,
            outcome: Option<RateOutcome>,
            after: Option<Lease>,
        }
        #[rustfmt::skip]
        let rows = [
            Row {
                label: "no lease held: Redis is asked",
                requests: 100, now_ms: T0 + 100, before: None, outcome: None, after: None,
            },
            Row {
                // Places 1..=10 were counted before: this is the 11th of 100.
                label: "a fresh lease answers with its next place",
                requests: 100, now_ms: T0 + 100, before: Some(lease(11, 14, 0, 4)),
                outcome: admitted(100, 89, 900), after: Some(lease(12, 14, 0, 4)),
            },
            Row {
                label: "the last place held is used, and the lease is spent",
                requests: 100, now_ms: T0 + 100, before: Some(lease(14, 14, 0, 4)),
                outcome: admitted(100, 86, 900), after: Some(lease(15, 14, 0, 4)),
            },
            Row {
                label: "a spent lease: Redis is asked",
                requests: 100, now_ms: T0 + 100, before: Some(lease(15, 14, 0, 4)),
                outcome: None, after: Some(lease(15, 14, 0, 4)),
            },
            Row {
                // The next window's counter has another key: the places of T0's are no
                // use to it.
                label: "a lease of an ended window: Redis is asked",
                requests: 100, now_ms: T0 + 1005, before: Some(lease(11, 14, 0, 4)),
                outcome: None, after: Some(lease(11, 14, 0, 4)),
            },
            Row {
                // 100 × 950/1000 + 10 + 1 = 106 > 100. Room for one more once the previous
                // window weighs 89, at elapsed 110: 60 ms. The places held go unused.
                label: "the previous window weighs more than the lease allowed for: refused",
                requests: 100, now_ms: T0 + 50, before: Some(lease(11, 14, 100, 4)),
                outcome: refused(100, 950, 60), after: Some(lease(11, 10, 100, 0)),
            },
            Row {
                // 100 × 1000/1000 + 1 > 100; at elapsed 10 the previous weighs 99.
                label: "a window's first millisecond: a full previous window refuses",
                requests: 100, now_ms: T0, before: Some(lease(1, 4, 100, 4)),
                outcome: refused(100, 1000, 10), after: Some(lease(1, 0, 100, 0)),
            },
            Row {
                // 100 × 1/1000 + 1 = 1.1: room for 98 more, the window ends in 1 ms.
                label: "a window's last millisecond: the previous window weighs a thousandth",
                requests: 100, now_ms: T0 + 999, before: Some(lease(1, 4, 100, 4)),
                outcome: admitted(100, 98, 1), after: Some(lease(2, 4, 100, 4)),
            },
            Row {
                label: "a limit of one with its one place held",
                requests: 1, now_ms: T0, before: Some(lease(1, 1, 0, 1)),
                outcome: admitted(1, 0, 1000), after: Some(lease(2, 1, 0, 1)),
            },
            Row {
                // 1 × 500/1000 + 1 > 1. This window has counted nothing, so the next one
                // admits at once: 500 ms.
                label: "a limit of one while the previous window's request still weighs",
                requests: 1, now_ms: T0 + 500, before: Some(lease(1, 1, 1, 1)),
                outcome: refused(1, 500, 500), after: Some(lease(1, 0, 1, 0)),
            },
            Row {
                // 100 counted: the estimate admits one 10 ms into the next window, 1010 ms
                // away, but no wait is longer than the window.
                label: "over the limit: remaining is zero, the wait at most a window",
                requests: 100, now_ms: T0, before: Some(lease(101, 104, 0, 4)),
                outcome: refused(100, 1000, 1000), after: Some(lease(101, 100, 0, 0)),
            },
        ];
        let key = "rate:a:1700000000";
        for row in rows {
            let mut worker = counters(
                row.before
                    .map(|lease| (key, held(lease)))
                    .into_iter()
                    .collect(),
            );
            let outcome = worker.decide_on_lease(&rate("a", row.requests, row.now_ms));
            assert_eq!(outcome, row.outcome, "{}", row.label);
            let after = worker.by_key.get(key).map(|known| known.lease);
            assert_eq!(after, row.after, "{}", row.label);
        }
    }

    #[test]
    fn places_taken_ahead() {
        struct Row {
            label: &'static str,
            requests: u32,
            now_ms: u64,
            held: Vec<(&'static str, Known)>,
            grant: u64,
        }
        let a = "rate:a:1700000000";
        #[rustfmt::skip]
        let rows = [
            Row {
                label: "the first count in a bucket takes none: a bucket seen once stays exact",
                requests: 1000, now_ms: T0, held: vec![], grant: 0,
            },
            Row {
                label: "a lease still holding places takes none more",
                requests: 1000, now_ms: T0, held: vec![(a, held(lease(5, 8, 0, 4)))], grant: 0,
            },
            Row {
                // Room 980: a sixteenth is 61, more than the doubled 8.
                label: "a spent lease doubles its grant",
                requests: 1000, now_ms: T0, held: vec![(a, held(lease(21, 20, 0, 4)))],
                grant: 8,
            },
            Row {
                label: "after a refusal on the lease (grant 0), one place",
                requests: 1000, now_ms: T0, held: vec![(a, held(lease(101, 100, 0, 0)))],
                grant: 1,
            },
            Row {
                label: "never more than 256",
                requests: 1_000_000, now_ms: T0,
                held: vec![(a, held(lease(1001, 1000, 0, 256)))], grant: 256,
            },
            Row {
                // Room 100: 6, not the doubled 128.
                label: "never more than a sixteenth of the room left",
                requests: 1000, now_ms: T0, held: vec![(a, held(lease(901, 900, 0, 64)))],
                grant: 6,
            },
            Row {
                label: "near the limit, none: a sixteenth of a room of 10 is no place",
                requests: 1000, now_ms: T0, held: vec![(a, held(lease(991, 990, 0, 8)))],
                grant: 0,
            },
            Row {
                // Room 1000 − 800 × 500/1000 − 100 = 500: a sixteenth is 31.
                label: "the previous window's count takes its share of the room",
                requests: 1000, now_ms: T0 + 500,
                held: vec![(a, held(lease(101, 100, 800, 64)))], grant: 31,
            },
            Row {
                // 200 ms into the next window: room 1000 − 300 × 800/1000 = 760, a
                // sixteenth is 47; the grant of 16 carries over as it was.
                label: "a new window carries over the last window's grant",
                requests: 1000, now_ms: T0 + 1200,
                held: vec![(a, held(lease(301, 300, 0, 16)))], grant: 16,
            },
            Row {
                // At the new window's start the last one weighs 990 whole: room 10.
                label: "a new window after a crowded one: the carried grant is cut to none",
                requests: 1000, now_ms: T0 + 1000,
                held: vec![(a, held(lease(991, 990, 0, 32)))], grant: 0,
            },
            Row {
                label: "a limit of one never takes a place ahead",
                requests: 1, now_ms: T0, held: vec![(a, held(lease(1, 0, 0, 0)))], grant: 0,
            },
        ];
        for row in rows {
            let worker = counters(row.held);
            let grant = worker.next_grant(&rate("a", row.requests, row.now_ms), row.now_ms);
            assert_eq!(grant, row.grant, "{}", row.label);
        }
    }

    /// How a check of a batch is told.
    #[derive(Debug)]
    enum Told {
        Now(GateOutcome),
        AfterGiveBack(GateOutcome),
        Rebuilding,
    }

    fn told_as(answer: &Answer, expected: &Told) -> bool {
        match (answer, expected) {
            (Answer::Now(Ok(got)), Told::Now(expected)) => got == expected,
            (Answer::AfterGiveBack(got), Told::AfterGiveBack(expected)) => got == expected,
            (Answer::Now(Err(GateError::Rebuilding)), Told::Rebuilding) => true,
            _ => false,
        }
    }

    fn live(rate: Option<RateOutcome>) -> GateOutcome {
        GateOutcome {
            rate,
            revoked: false,
        }
    }

    fn revoked(rate: Option<RateOutcome>) -> GateOutcome {
        GateOutcome {
            rate,
            revoked: true,
        }
    }

    struct Batch {
        label: &'static str,
        /// The worker's counters before the batch.
        held: Vec<(&'static str, Known)>,
        checks: Vec<Keyed>,
        /// Asked of Redis: `INCRBY key n` (with `PEXPIRE` when true), how many `EVAL`s, the
        /// `MGET`'s keys, whether the epoch is read.
        increments: Vec<(&'static str, u64, bool)>,
        evals: usize,
        reads: Vec<&'static str>,
        epoch_read: bool,
        /// Redis' replies; `intact`: whether it still held the epoch.
        totals: Vec<u64>,
        values: Vec<Option<u64>>,
        log_times: Vec<Vec<u64>>,
        intact: bool,
        /// What the batch comes to.
        told: Vec<Told>,
        give_back: GiveBack<'static>,
        leases: Vec<(&'static str, Lease)>,
    }

    fn batches() -> Vec<Batch> {
        let nothing_back = GiveBack::default;
        vec![
            Batch {
                label: "revocation only: a live token",
                held: vec![],
                checks: vec![keyed(None, None, token("s1", "u1", ISSUED))],
                increments: vec![],
                evals: 0,
                reads: vec!["revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![],
                values: vec![None, None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(None))],
                give_back: nothing_back(),
                leases: vec![],
            },
            Batch {
                label: "revocation only: the session revoked",
                held: vec![],
                checks: vec![keyed(None, None, token("s1", "u1", ISSUED))],
                increments: vec![],
                evals: 0,
                reads: vec!["revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![],
                values: vec![Some(1), None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(revoked(None))],
                give_back: nothing_back(),
                leases: vec![],
            },
            Batch {
                // The user's key is read once for both; only a token issued strictly before
                // the not-before time is revoked.
                label: "revocation only: one user's not-before, before and at it",
                held: vec![],
                checks: vec![
                    keyed(None, None, token("s1", "u1", ISSUED)),
                    keyed(None, None, token("s2", "u1", ISSUED + 1)),
                ],
                increments: vec![],
                evals: 0,
                reads: vec!["revoked:sid:s1", "revoked:user-nbf:u1", "revoked:sid:s2"],
                epoch_read: true,
                totals: vec![],
                values: vec![None, Some(ISSUED + 1), None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(revoked(None)), Told::Now(live(None))],
                give_back: nothing_back(),
                leases: vec![],
            },
            Batch {
                // No token: the epoch is not read, whatever the feed.
                label: "rate only: a bucket's first count, its lifetime set, no places ahead",
                held: vec![],
                checks: vec![keyed(counted("a", 100), None, None)],
                increments: vec![("rate:a:1700000000", 1, true)],
                evals: 0,
                reads: vec!["rate:a:1699999999"],
                epoch_read: false,
                totals: vec![1],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(100, 99, 750)))],
                give_back: nothing_back(),
                leases: vec![("rate:a:1700000000", lease(2, 1, 0, 0))],
            },
            Batch {
                // Place 101 of 100. With nothing in the previous window, one more fits once
                // this window's 100 weigh 99, 10 ms into the next: 750 + 10 ms.
                label: "rate only: over the limit, refused, its place given back",
                held: vec![],
                checks: vec![keyed(counted("a", 100), None, None)],
                increments: vec![("rate:a:1700000000", 1, true)],
                evals: 0,
                reads: vec!["rate:a:1699999999"],
                epoch_read: false,
                totals: vec![101],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![Told::AfterGiveBack(live(refused(100, 750, 760)))],
                give_back: GiveBack {
                    places: vec![("rate:a:1700000000", 1)],
                    ..nothing_back()
                },
                leases: vec![("rate:a:1700000000", lease(102, 101, 0, 0))],
            },
            Batch {
                // 80 × 750/1000 + 29 + 1 = 90: room for 10 more.
                label: "rate only: the previous window's count weighs on the check",
                held: vec![],
                checks: vec![keyed(counted("h", 100), None, None)],
                increments: vec![("rate:h:1700000000", 1, true)],
                evals: 0,
                reads: vec!["rate:h:1699999999"],
                epoch_read: false,
                totals: vec![30],
                values: vec![Some(80)],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(100, 10, 750)))],
                give_back: nothing_back(),
                leases: vec![("rate:h:1700000000", lease(31, 30, 80, 0))],
            },
            Batch {
                label: "rate and token, live: counted",
                held: vec![],
                checks: vec![keyed(counted("a", 100), None, token("s1", "u1", ISSUED))],
                increments: vec![("rate:a:1700000000", 1, true)],
                evals: 0,
                reads: vec!["rate:a:1699999999", "revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![1],
                values: vec![None, None, None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(100, 99, 750)))],
                give_back: nothing_back(),
                leases: vec![("rate:a:1700000000", lease(2, 1, 0, 0))],
            },
            Batch {
                // Not counted: the room it reports is the whole limit, and the place the
                // INCRBY gave it goes back before it is told.
                label: "rate and token, revoked: not counted, its place given back",
                held: vec![],
                checks: vec![keyed(counted("a", 100), None, token("s1", "u1", ISSUED))],
                increments: vec![("rate:a:1700000000", 1, true)],
                evals: 0,
                reads: vec!["rate:a:1699999999", "revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![1],
                values: vec![None, Some(1), None],
                log_times: vec![],
                intact: true,
                told: vec![Told::AfterGiveBack(revoked(admitted(100, 100, 750)))],
                give_back: GiveBack {
                    places: vec![("rate:a:1700000000", 1)],
                    ..nothing_back()
                },
                leases: vec![("rate:a:1700000000", lease(2, 1, 0, 0))],
            },
            Batch {
                // One INCRBY 3 returns 17: places 15, 16, 17 in batch order. The third is
                // over 16; one more fits 63 ms into the next window, when 16 weigh 15 (750 +
                // 63 ms).
                label: "several checks on one bucket: places in batch order",
                held: vec![],
                checks: vec![
                    keyed(counted("b", 16), None, None),
                    keyed(counted("b", 16), None, None),
                    keyed(counted("b", 16), None, None),
                ],
                increments: vec![("rate:b:1700000000", 3, true)],
                evals: 0,
                reads: vec!["rate:b:1699999999"],
                epoch_read: false,
                totals: vec![17],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![
                    Told::Now(live(admitted(16, 1, 750))),
                    Told::Now(live(admitted(16, 0, 750))),
                    Told::AfterGiveBack(live(refused(16, 750, 813))),
                ],
                give_back: GiveBack {
                    places: vec![("rate:b:1700000000", 1)],
                    ..nothing_back()
                },
                leases: vec![("rate:b:1700000000", lease(18, 17, 0, 0))],
            },
            Batch {
                // The second holds place 2, but the first's goes back: it is decided as the
                // first counted.
                label: "a revoked check's place is not counted against the next on its bucket",
                held: vec![],
                checks: vec![
                    keyed(counted("c", 100), None, token("stolen", "u1", ISSUED)),
                    keyed(counted("c", 100), None, None),
                ],
                increments: vec![("rate:c:1700000000", 2, true)],
                evals: 0,
                reads: vec![
                    "rate:c:1699999999",
                    "revoked:sid:stolen",
                    "revoked:user-nbf:u1",
                ],
                epoch_read: true,
                totals: vec![2],
                values: vec![None, Some(1), None],
                log_times: vec![],
                intact: true,
                told: vec![
                    Told::AfterGiveBack(revoked(admitted(100, 100, 750))),
                    Told::Now(live(admitted(100, 99, 750))),
                ],
                give_back: GiveBack {
                    places: vec![("rate:c:1700000000", 1)],
                    ..nothing_back()
                },
                leases: vec![("rate:c:1700000000", lease(3, 2, 0, 0))],
            },
            Batch {
                // The one logged 500 ms ago is in the window and leaves it in 500 ms.
                label: "a small limit: its log decides, nothing to give back",
                held: vec![],
                checks: vec![keyed(None, logged("l", 3, "m1"), None)],
                increments: vec![],
                evals: 1,
                reads: vec![],
                epoch_read: false,
                totals: vec![],
                values: vec![],
                log_times: vec![vec![NOW - 500]],
                intact: true,
                told: vec![Told::Now(live(admitted(3, 1, 500)))],
                give_back: nothing_back(),
                leases: vec![],
            },
            Batch {
                label: "a small limit, revoked: the entry the script added comes out",
                held: vec![],
                checks: vec![keyed(None, logged("l", 3, "m1"), token("s1", "u1", ISSUED))],
                increments: vec![],
                evals: 1,
                reads: vec!["revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![],
                values: vec![Some(1), None],
                log_times: vec![vec![NOW - 500]],
                intact: true,
                told: vec![Told::AfterGiveBack(revoked(admitted(3, 2, 500)))],
                give_back: GiveBack {
                    log_entries: vec![("rate-log:l", "m1")],
                    ..nothing_back()
                },
                leases: vec![],
            },
            Batch {
                // Three in the window: the script added nothing. The oldest leaves in 100 ms.
                label: "a small limit full, revoked: nothing was added, told at once",
                held: vec![],
                checks: vec![keyed(None, logged("l", 3, "m1"), token("s1", "u1", ISSUED))],
                increments: vec![],
                evals: 1,
                reads: vec!["revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![],
                values: vec![Some(1), None],
                log_times: vec![vec![NOW - 900, NOW - 600, NOW - 300]],
                intact: true,
                told: vec![Told::Now(revoked(refused(3, 100, 100)))],
                give_back: nothing_back(),
                leases: vec![],
            },
            Batch {
                // The token checks' room goes back: the counter's place, the log's entry.
                // The check without a token is decided as the bucket's first.
                label: "the epoch gone: token checks fail as rebuilding, the others are answered",
                held: vec![],
                checks: vec![
                    keyed(counted("d", 100), None, token("s1", "u1", ISSUED)),
                    keyed(counted("d", 100), None, None),
                    keyed(None, logged("l", 3, "m1"), token("s2", "u1", ISSUED)),
                ],
                increments: vec![("rate:d:1700000000", 2, true)],
                evals: 1,
                reads: vec![
                    "rate:d:1699999999",
                    "revoked:sid:s1",
                    "revoked:user-nbf:u1",
                    "revoked:sid:s2",
                ],
                epoch_read: true,
                totals: vec![2],
                values: vec![None, None, None, None],
                log_times: vec![vec![]],
                intact: false,
                told: vec![
                    Told::Rebuilding,
                    Told::Now(live(admitted(100, 99, 750))),
                    Told::Rebuilding,
                ],
                give_back: GiveBack {
                    places: vec![("rate:d:1700000000", 1)],
                    log_entries: vec![("rate-log:l", "m1")],
                    ..nothing_back()
                },
                leases: vec![("rate:d:1700000000", lease(3, 2, 0, 0))],
            },
            Batch {
                // The lifetime is known set, so no PEXPIRE; a grant of 1 (after grant 0, room
                // 95) makes INCRBY 2. Its answer 2 means the key was made anew: the batch's
                // are places 1 and 2, and the lifetime goes out with the give-back.
                label: "a counter that vanished is given its lifetime again",
                held: vec![("rate:e:1700000000", held(lease(6, 5, 0, 0)))],
                checks: vec![keyed(counted("e", 100), None, None)],
                increments: vec![("rate:e:1700000000", 2, false)],
                evals: 0,
                reads: vec!["rate:e:1699999999"],
                epoch_read: false,
                totals: vec![2],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(100, 99, 750)))],
                give_back: GiveBack {
                    lifetimes: vec![("rate:e:1700000000", 2000)],
                    ..nothing_back()
                },
                leases: vec![("rate:e:1700000000", lease(2, 2, 0, 1))],
            },
            Batch {
                // Grant 16 (doubled 8; room 960 allows 60): INCRBY 17 answers 1010, others
                // having counted meanwhile. The check takes place 994, leaving room for 6:
                // 6 of the 16 are kept, 10 go back.
                label: "places taken ahead that no longer fit go back at once",
                held: vec![("rate:f:1700000000", held(lease(41, 40, 0, 8)))],
                checks: vec![keyed(counted("f", 1000), None, None)],
                increments: vec![("rate:f:1700000000", 17, false)],
                evals: 0,
                reads: vec!["rate:f:1699999999"],
                epoch_read: false,
                totals: vec![1010],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(1000, 6, 750)))],
                give_back: GiveBack {
                    places: vec![("rate:f:1700000000", 10)],
                    ..nothing_back()
                },
                leases: vec![("rate:f:1700000000", lease(995, 1000, 0, 6))],
            },
            Batch {
                // Place 1004 of 1000: refused, and with it all 16 places ahead go back. One
                // more fits 4 ms into the next window, when 1003 weigh 999 (750 + 4 ms).
                label: "a refusal in the batch: every place taken ahead goes back",
                held: vec![("rate:f:1700000000", held(lease(41, 40, 0, 8)))],
                checks: vec![keyed(counted("f", 1000), None, None)],
                increments: vec![("rate:f:1700000000", 17, false)],
                evals: 0,
                reads: vec!["rate:f:1699999999"],
                epoch_read: false,
                totals: vec![1020],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![Told::AfterGiveBack(live(refused(1000, 750, 754)))],
                give_back: GiveBack {
                    places: vec![("rate:f:1700000000", 17)],
                    ..nothing_back()
                },
                leases: vec![("rate:f:1700000000", lease(1005, 1004, 0, 0))],
            },
            Batch {
                // A check with a token always goes to Redis; the lease holding places 5..=8
                // is left as it is, and no places are taken ahead.
                label: "a check sent while the worker holds a lease keeps that lease",
                held: vec![("rate:g:1700000000", held(lease(5, 8, 0, 4)))],
                checks: vec![keyed(counted("g", 100), None, token("s1", "u1", ISSUED))],
                increments: vec![("rate:g:1700000000", 1, false)],
                evals: 0,
                reads: vec!["rate:g:1699999999", "revoked:sid:s1", "revoked:user-nbf:u1"],
                epoch_read: true,
                totals: vec![13],
                values: vec![None, None, None],
                log_times: vec![],
                intact: true,
                told: vec![Told::Now(live(admitted(100, 87, 750)))],
                give_back: nothing_back(),
                leases: vec![("rate:g:1700000000", lease(5, 8, 0, 4))],
            },
            Batch {
                // A limit of one with one counted: free only once this window has slid out,
                // 1750 ms away; told a window.
                label: "a limit of one: the second in the batch is refused for a window",
                held: vec![],
                checks: vec![
                    keyed(counted("one", 1), None, None),
                    keyed(counted("one", 1), None, None),
                ],
                increments: vec![("rate:one:1700000000", 2, true)],
                evals: 0,
                reads: vec!["rate:one:1699999999"],
                epoch_read: false,
                totals: vec![2],
                values: vec![None],
                log_times: vec![],
                intact: true,
                told: vec![
                    Told::Now(live(admitted(1, 0, 750))),
                    Told::AfterGiveBack(live(refused(1, 750, 1000))),
                ],
                give_back: GiveBack {
                    places: vec![("rate:one:1700000000", 1)],
                    ..nothing_back()
                },
                leases: vec![("rate:one:1700000000", lease(3, 2, 0, 0))],
            },
        ]
    }

    #[test]
    fn a_batch_plan_and_its_replies() {
        for batch in batches() {
            let label = batch.label;
            let mut worker = counters(batch.held);
            let plan = Plan::new(&batch.checks, Some("epoch"), &worker);

            let increments: Vec<_> = plan
                .counters
                .iter()
                .map(|counter| (counter.key, counter.places(), counter.expire))
                .collect();
            assert_eq!(increments, batch.increments, "{label}: INCRBY");
            assert_eq!(plan.logs.len(), batch.evals, "{label}: EVAL");
            assert_eq!(plan.reads, batch.reads, "{label}: MGET");
            assert_eq!(plan.epoch.is_some(), batch.epoch_read, "{label}: epoch");

            let replies = Replies {
                totals: batch.totals,
                values: batch.values,
                logs: batch.log_times,
                epoch: None,
            };
            let settled = plan.settle(&replies, batch.intact, &mut worker);
            assert_eq!(settled.answers.len(), batch.told.len(), "{label}");
            for (n, (answer, told)) in settled.answers.iter().zip(&batch.told).enumerate() {
                assert!(
                    told_as(answer, told),
                    "{label}: check {n} was told {answer:?}, not {told:?}"
                );
            }
            assert_eq!(settled.give_back, batch.give_back, "{label}: give-back");
            // Whoever waits for the give-back has one to wait for.
            if settled
                .answers
                .iter()
                .any(|answer| matches!(answer, Answer::AfterGiveBack(_)))
            {
                assert!(!settled.give_back.is_empty(), "{label}");
            }
            for (key, lease) in batch.leases {
                let kept = worker.by_key.get(key).map(|known| known.lease);
                assert_eq!(kept, Some(lease), "{label}: lease of {key}");
                assert!(worker.lifetime_set(key), "{label}: lifetime of {key}");
            }
        }
    }

    /// Whatever the counts, a check's room is between zero and the limit and a refused one
    /// waits between 1 ms and a window.
    #[test]
    fn remaining_stays_within_the_limit_and_the_wait_within_the_window() {
        for requests in [1, 2, 16, 100] {
            let limit = u64::from(requests);
            for elapsed in [0, 1, 500, 999] {
                for previous in [0, limit / 2, limit, 3 * limit] {
                    for total in 1..=3 * limit + 1 {
                        let checks = [Keyed {
                            now_ms: T0 + elapsed,
                            rate: Some(rate("x", requests, T0 + elapsed)),
                            log: None,
                            token: None,
                        }];
                        let mut worker = Counters::default();
                        let plan = Plan::new(&checks, None, &worker);
                        let replies = Replies {
                            totals: vec![total],
                            values: vec![Some(previous)],
                            logs: vec![],
                            epoch: None,
                        };
                        let settled = plan.settle(&replies, true, &mut worker);
                        let case = format!(
                            "limit {requests}, elapsed {elapsed}, previous {previous}, place {total}"
                        );
                        let outcome = match &settled.answers[0] {
                            Answer::Now(Ok(outcome)) | Answer::AfterGiveBack(outcome) => {
                                outcome.rate.expect("a limit was asked")
                            }
                            Answer::Now(Err(error)) => panic!("{case}: {error}"),
                        };
                        assert!(outcome.remaining <= requests, "{case}");
                        match outcome.retry_after {
                            Some(wait) => {
                                assert!(!outcome.allowed, "{case}");
                                assert_eq!(outcome.remaining, 0, "{case}");
                                assert!(
                                    (Duration::from_millis(1)..=Duration::from_secs(1))
                                        .contains(&wait),
                                    "{case}: {wait:?}"
                                );
                            }
                            None => assert!(outcome.allowed, "{case}"),
                        }
                    }
                }
            }
        }
    }

    /// A batch as a cluster sees it: each bucket's keys tagged with the bucket, every
    /// revocation key and the epoch with `{revocation}` (the layout of `limits/mod.rs`).
    fn tagged_batch() -> (Vec<Keyed>, &'static str) {
        let tagged_rate = |bucket: &str| {
            let mut rate = rate(bucket, 100, NOW);
            rate.current = format!("rate:{{{bucket}}}:1000:{}", NOW / 1000);
            rate.previous = format!("rate:{{{bucket}}}:1000:{}", NOW / 1000 - 1);
            Some(rate)
        };
        let tagged_log = |bucket: &str, member: &str| {
            let mut log = logged(bucket, 5, member).unwrap();
            log.key = format!("rate-log:{{{bucket}}}:1000");
            Some(log)
        };
        let tagged_token = |session: &str, user: &str| {
            Some((
                format!("{{revocation}}:sid:{session}"),
                format!("{{revocation}}:user-nbf:{user}"),
                ISSUED,
            ))
        };
        let checks = vec![
            keyed(tagged_rate("ip:198.51.100.1"), None, None),
            keyed(
                tagged_rate("ip:198.51.100.2"),
                None,
                tagged_token("s1", "u1"),
            ),
            keyed(None, tagged_log("auth-login:ip:198.51.100.3", "m1"), None),
            keyed(
                tagged_rate("ip:198.51.100.1"),
                None,
                tagged_token("s2", "u2"),
            ),
            keyed(None, tagged_log("auth-login:ip:198.51.100.4", "m2"), None),
            keyed(None, tagged_log("auth-login:ip:198.51.100.3", "m3"), None),
            keyed(tagged_rate("user:u1"), None, tagged_token("s1", "u1")),
        ];
        (checks, "{revocation}:epoch")
    }

    #[test]
    fn in_a_single_redis_a_batch_is_one_pipeline_in_batch_order() {
        let (checks, epoch) = tagged_batch();
        let plan = Plan::new(&checks, Some(epoch), &Counters::default());
        let whole = Part {
            counters: (0..plan.counters.len()).collect(),
            logs: (0..plan.logs.len()).collect(),
            reads: (0..plan.reads.len()).collect(),
            epoch: true,
        };
        assert_eq!(plan.parts(|_| ()), std::slice::from_ref(&whole));
        assert_eq!(plan.whole(), whole);
    }

    #[test]
    fn in_a_cluster_a_batch_is_split_by_slot_and_the_epoch_goes_with_the_revocations() {
        use redis::cluster_routing::Slot;

        let (checks, epoch) = tagged_batch();
        let plan = Plan::new(&checks, Some(epoch), &Counters::default());
        let parts = plan.parts(|key| Slot::for_key(key));
        // Every command is in exactly one part, once, and parts keep batch order.
        let mut counters: Vec<usize> = parts.iter().flat_map(|p| p.counters.clone()).collect();
        let mut logs: Vec<usize> = parts.iter().flat_map(|p| p.logs.clone()).collect();
        let mut reads: Vec<usize> = parts.iter().flat_map(|p| p.reads.clone()).collect();
        for part in &parts {
            for indexes in [&part.counters, &part.logs, &part.reads] {
                assert!(indexes.windows(2).all(|pair| pair[0] < pair[1]), "{part:?}");
            }
        }
        counters.sort_unstable();
        logs.sort_unstable();
        reads.sort_unstable();
        assert_eq!(counters, (0..plan.counters.len()).collect::<Vec<_>>());
        assert_eq!(logs, (0..plan.logs.len()).collect::<Vec<_>>());
        assert_eq!(reads, (0..plan.reads.len()).collect::<Vec<_>>());
        // Each part keeps to one slot, and no two parts share one.
        let slot_of = |part: &Part| -> Vec<Slot> {
            let keys = part
                .counters
                .iter()
                .map(|&i| plan.counters[i].key)
                .chain(part.logs.iter().map(|&i| plan.logs[i].key.as_str()))
                .chain(part.reads.iter().map(|&i| plan.reads[i]))
                .chain(part.epoch.then_some(epoch));
            let mut slots: Vec<Slot> = keys.map(Slot::for_key).collect();
            slots.dedup();
            slots
        };
        let slots: Vec<Slot> = parts
            .iter()
            .map(|part| {
                let slots = slot_of(part);
                assert_eq!(slots.len(), 1, "{part:?} spans slots {slots:?}");
                slots[0]
            })
            .collect();
        let distinct: std::collections::HashSet<_> = slots.iter().collect();
        assert_eq!(distinct.len(), parts.len(), "one part per slot");
        // Five buckets and the revocations: six slots (none of these happen to collide).
        assert_eq!(parts.len(), 6, "{parts:?}");
        // The epoch is read in the part that reads every revocation key, after them.
        let with_epoch: Vec<&Part> = parts.iter().filter(|part| part.epoch).collect();
        assert_eq!(with_epoch.len(), 1);
        let revocation_reads: Vec<usize> = (0..plan.reads.len())
            .filter(|&i| plan.reads[i].starts_with("{revocation}"))
            .collect();
        assert_eq!(revocation_reads.len(), 4, "s1, u1, s2, u2, each read once");
        assert_eq!(with_epoch[0].reads, revocation_reads);
        // A bucket's log checks share a part, in batch order (the script decides them so).
        let first_bucket: Vec<&Part> = parts
            .iter()
            .filter(|part| {
                part.logs
                    .iter()
                    .any(|&i| plan.logs[i].key.contains("198.51.100.3"))
            })
            .collect();
        assert_eq!(first_bucket.len(), 1);
        let members: Vec<&str> = first_bucket[0]
            .logs
            .iter()
            .map(|&i| plan.logs[i].member.as_str())
            .filter(|member| *member != "m2")
            .collect();
        assert_eq!(members, ["m1", "m3"]);
    }

    #[test]
    fn a_give_back_is_split_by_slot_too() {
        use redis::cluster_routing::Slot;

        let give_back = GiveBack {
            places: vec![
                ("rate:{a}:1:1", 2),
                ("rate:{b}:1:1", 1),
                ("rate:{a}:1:2", 3),
            ],
            log_entries: vec![("rate-log:{c}:1", "m1"), ("rate-log:{a}:1", "m2")],
            lifetimes: vec![("rate:{b}:1:1", 2000)],
        };
        assert_eq!(give_back.split(|_| ()), std::slice::from_ref(&give_back));
        assert_eq!(
            give_back.split(|key| Slot::for_key(key)),
            [
                GiveBack {
                    places: vec![("rate:{a}:1:1", 2), ("rate:{a}:1:2", 3)],
                    log_entries: vec![("rate-log:{a}:1", "m2")],
                    lifetimes: vec![],
                },
                GiveBack {
                    places: vec![("rate:{b}:1:1", 1)],
                    log_entries: vec![],
                    lifetimes: vec![("rate:{b}:1:1", 2000)],
                },
                GiveBack {
                    places: vec![],
                    log_entries: vec![("rate-log:{c}:1", "m1")],
                    lifetimes: vec![],
                },
            ]
        );
    }
}
