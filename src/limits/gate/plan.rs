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
    known: HashMap<Box<str>, Known>,
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
        let lease = &mut self.known.get_mut(rate.current.as_str())?.lease;
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
            .known
            .get(rate.current.as_str())
            .map(|known| &known.lease)
        {
            // Checked while a grant was on its way: it is here now, and holds places enough.
            Some(lease) if lease.next <= lease.last => return 0,
            Some(lease) => {
                let room = window::decide(rate.state(lease.previous, lease.last), limit, false);
                ((2 * lease.grant).max(1), room.remaining)
            }
            None => match self.known.get(rate.previous.as_str()) {
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
        self.known.get(key).is_some_and(|known| known.lifetime_set)
    }

    /// The `PEXPIRE` that was to set `key`'s lifetime again did not land: the next batch
    /// that counts in it sends one.
    pub(super) fn lifetime_lost(&mut self, key: &str) {
        if let Some(known) = self.known.get_mut(key) {
            known.lifetime_set = false;
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.known.len()
    }

    /// Past the cap, forgets the ended windows' counters, and if that leaves more than half,
    /// all of them.
    fn prune(&mut self, now_ms: u64) {
        if self.known.len() > COUNTERS_MAX {
            self.known.retain(|_, known| known.window_end_ms > now_ms);
            if self.known.len() > COUNTERS_MAX / 2 {
                self.known.clear();
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
    Now(Result<GateOutcome, GateError>),
    /// A refused check, or a revoked one that took room: told only after the give-back, so
    /// that whoever it answers sees the count it left.
    AfterGiveBack(GateOutcome),
}

/// The batch's second round trip, sent only when something is in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct GiveBack<'a> {
    /// Places taken and not kept, by counter key (`DECRBY`): refused and revoked checks', and
    /// places taken ahead that did not fit.
    pub(super) places: Vec<(&'a str, u64)>,
    /// Log entries of revoked requests, added before their revocation was read (`ZREM`), by
    /// key and member.
    pub(super) log_entries: Vec<(&'a str, &'a str)>,
    /// Counters whose key vanished since this worker gave it a lifetime: the `INCRBY` made
    /// it anew, without one (`PEXPIRE`, key and milliseconds).
    pub(super) lifetimes: Vec<(&'a str, u64)>,
}

impl GiveBack<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.places.is_empty() && self.log_entries.is_empty() && self.lifetimes.is_empty()
    }
}

impl<'a> Plan<'a> {
    /// The keys stay the checks': the plan only points at them. `counters`, the worker's,
    /// says which counters already have their lifetime and how many places to take ahead.
    pub(super) fn new(checks: &'a [Keyed], epoch: Option<&'a str>, known: &Counters) -> Plan<'a> {
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
            counter.expire = !known.lifetime_set(counter.key);
            counter.extra = known.next_grant(counter.rate, now_ms);
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

    /// Each check's answer from what Redis replied, the worker's leases updated to the places
    /// this batch took ahead, and what goes back. `intact`: whether the revocations read can
    /// be believed (Redis still held the epoch); when not, token checks fail as `Rebuilding`
    /// and the room they took goes back.
    pub(super) fn settle(
        &self,
        replies: &Replies,
        intact: bool,
        known: &mut Counters,
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
            if let Some(held) = known.known.get_mut(counter.key) {
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
            known.known.insert(
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
        known.prune(self.now_ms);

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
