//! The rate limits' arithmetic, kept pure so that it can be tested exhaustively. The gate
//! (`gate/`) reads what Redis holds for a bucket and decides with [`decide`] or
//! [`decide_log`].
//!
//! **Small limits: a sliding log.** A limit below [`EXACT_BELOW`] requests a window is
//! decided on the times of the requests it counted in the window that ends now: a request is
//! admitted while fewer than the limit are in it, and a refused one waits until the oldest
//! that must leave has left, never longer than the window. It is exact: N per window always
//! admits N requests however they are spread, and never N + 1. The cost, a time stored per
//! request, is at most the limit per bucket. GCRA would be cheaper (one number per bucket),
//! but it refills continuously (a request every window ÷ N) rather than sliding, so it admits
//! more than N in some window: at 3 an hour it lets a fourth through 50 minutes after three
//! at 0, 20 and 40 minutes, which is not the contract's sliding window.
//!
//! **Larger limits: two counters.** Storing a time per request stops being cheap at
//! thousands an hour, so larger limits keep two fixed windows of `length_ms`, the current
//! one and the one before, and estimate the count over the sliding window that ends now as
//!
//! ```text
//! previous × (length − elapsed) / length + current
//! ```
//!
//! — the previous window's count weighted by how much of it the sliding window still covers.
//! A request is allowed when the estimate plus that request stays within the limit. The
//! estimate takes the previous window's requests as spread evenly; when they came in a burst
//! it can refuse for a little longer than the window (by at most a window ÷ limit, a
//! sixteenth at most here), so the `Retry-After` it gives is capped at the window and a
//! client retrying then is, in that worst case, asked for that sliver more.
//!
//! Everything is computed on integers multiplied through by `length_ms` instead of on
//! fractions, so the answers are exact to the millisecond rather than to within rounding.

use std::time::Duration;

/// About 35 years: longer windows are cut to this, which keeps a counter's lifetime (two
/// windows, in milliseconds) a number Redis accepts.
const LONGEST_MS: u64 = 1 << 40;

/// The two windows' counts and where in the current window the request falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Requests counted in the window before the current one.
    pub previous: u64,
    /// Requests counted so far in the current window.
    pub current: u64,
    /// Milliseconds since the current window began: below `length_ms`.
    pub elapsed_ms: u64,
    /// The window length in milliseconds: at least 1.
    pub length_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// How many more requests the window leaves room for, after this one if it was counted.
    pub remaining: u64,
    /// For a refused request: how long until one would be admitted, if nothing else is
    /// admitted meanwhile. Between 1 ms and one window.
    pub retry_after_ms: Option<u64>,
}

/// Limits of fewer requests than this a window are counted exactly, in a sliding log; from
/// here on, the two-counter estimate (and the gate's leases) take over. At sixteen the log
/// holds at most fifteen times a bucket, and the estimate's worst overshoot of the window is
/// a sixteenth of it.
pub const EXACT_BELOW: u32 = 16;

/// Whether a limit of `requests` a window is decided on a sliding log.
pub fn is_exact(requests: u32) -> bool {
    requests < EXACT_BELOW
}

/// A sliding log's decision, and when its oldest counted request leaves the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDecision {
    pub decision: Decision,
    /// Until the oldest request counted in the window (this one included, if counted)
    /// leaves it and makes room: between 1 ms and one window; the whole window when nothing
    /// is counted.
    pub reset_ms: u64,
}

/// Decides one request on a sliding log: `times` are the requests counted so far (ms, any
/// order); those at or before `now_ms − length_ms` have left the window. `count`: whether an
/// allowed request is added (as in [`decide`]).
pub fn decide_log(
    times: &[u64],
    now_ms: u64,
    length_ms: u64,
    limit: u64,
    count: bool,
) -> LogDecision {
    let mut inside: Vec<u64> = times
        .iter()
        .copied()
        .filter(|&time| time.saturating_add(length_ms) > now_ms)
        .collect();
    inside.sort_unstable();
    let held = inside.len() as u64;
    let allowed = held < limit;
    let counted = held + u64::from(allowed && count);
    // When `time` leaves the window; a time ahead of this clock (another instance's) is
    // taken as now, so no wait is longer than the window.
    let leaves = |time: u64| (time.min(now_ms) + length_ms - now_ms).max(1);
    let retry_after_ms = (!allowed).then(|| match limit {
        // A limit of zero admits nothing, ever: a window is as good a pause as any.
        0 => length_ms,
        // Room for one more once all but `limit − 1` have left: the oldest `held − limit + 1`.
        _ => leaves(inside[(held - limit) as usize]),
    });
    // Nothing held before: this request, if counted, leaves a whole window from now.
    let reset_ms = inside.first().map_or(length_ms, |&oldest| leaves(oldest));
    LogDecision {
        decision: Decision {
            allowed,
            remaining: limit.saturating_sub(counted),
            retry_after_ms,
        },
        reset_ms,
    }
}

/// The window length, in milliseconds, used for a limit: at least 1 ms and at most
/// [`LONGEST_MS`].
pub fn length_ms(window: Duration) -> u64 {
    let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    millis.clamp(1, LONGEST_MS)
}

/// The index of the fixed window `now_ms` falls in, and the milliseconds elapsed in it.
pub fn position(now_ms: u64, length_ms: u64) -> (u64, u64) {
    (now_ms / length_ms, now_ms % length_ms)
}

/// Whether one more request fits: `previous × (length − elapsed) + (current + 1) × length ≤
/// limit × length`, the estimate inequality multiplied through by the length.
fn admits(state: State, limit: u64) -> bool {
    let (previous, current, elapsed, length, limit) = widen(state, limit);
    previous * (length - elapsed) + (current + 1) * length <= limit * length
}

/// Decides one request. `count`: whether an allowed request is added to the current window
/// (the gate does not count a request it will refuse for another reason); either way
/// `remaining` describes the windows as they are left.
pub fn decide(state: State, limit: u64, count: bool) -> Decision {
    let allowed = admits(state, limit);
    let current = state.current + u64::from(allowed && count);
    let (previous, current, elapsed, length, limit) = widen(State { current, ..state }, limit);
    // remaining = floor(limit − estimate), never below zero.
    let room = (limit * length).checked_sub(previous * (length - elapsed) + current * length);
    let remaining = room.map_or(0, |room| narrow(room / length));
    Decision {
        allowed,
        remaining,
        // Capped at the window (contract 4); see the module's opening on why the estimate
        // alone can ask for more.
        retry_after_ms: (!allowed).then(|| retry_after_ms(state, limit).min(state.length_ms)),
    }
}

/// For a refused request, the first moment, counted in whole milliseconds from now, at which
/// the estimate admits a request again, supposing nothing else is admitted meanwhile: up to
/// two windows, since a full window keeps weighing on most of the next.
fn retry_after_ms(state: State, limit: u128) -> u64 {
    let (previous, current, elapsed, length, _) = widen(state, 0);
    // Later in this window, as the previous window's weight shrinks: the first elapsed time e
    // with previous × (length − e) ≤ (limit − current − 1) × length, that is
    // length − e ≤ slack. A request refused now has length − elapsed > slack, so the answer
    // is later than now. With no previous count, only the next window can help.
    if previous > 0 && current < limit {
        let slack = (limit - current - 1) * length / previous;
        if slack >= 1 {
            return narrow(length - slack - elapsed);
        }
    }
    // In the next window, where this window's count is the one that decays and the new
    // current count is zero: the first elapsed time f there with
    // current × (length − f) ≤ (limit − 1) × length.
    if limit >= 1 {
        // With nothing counted in this window there is nothing to decay: the whole window.
        let slack = ((limit - 1) * length)
            .checked_div(current)
            .map_or(length, |slack| slack.min(length));
        if slack >= 1 {
            return narrow((length - elapsed) + (length - slack));
        }
        // A limit of one with a request already counted here: this window must have slid
        // out entirely, at the start of the window after next.
        return narrow(2 * length - elapsed);
    }
    // A limit of zero admits nothing, ever: a window is as good a pause as any.
    narrow(length)
}

/// The arithmetic in u128: products of u64 counts and lengths cannot overflow it.
fn widen(state: State, limit: u64) -> (u128, u128, u128, u128, u128) {
    (
        u128::from(state.previous),
        u128::from(state.current),
        u128::from(state.elapsed_ms),
        u128::from(state.length_ms),
        u128::from(limit),
    )
}

/// Results are bounded by a count or by two window lengths, so they fit a u64.
fn narrow(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(previous: u64, current: u64, elapsed_ms: u64, length_ms: u64) -> State {
        State {
            previous,
            current,
            elapsed_ms,
            length_ms,
        }
    }

    /// The same windows `ms` later, when nothing has been counted meanwhile.
    fn later(state: State, ms: u64) -> State {
        let elapsed = state.elapsed_ms + ms;
        let length = state.length_ms;
        if elapsed < length {
            State {
                elapsed_ms: elapsed,
                ..state
            }
        } else if elapsed < 2 * length {
            State {
                previous: state.current,
                current: 0,
                elapsed_ms: elapsed - length,
                length_ms: length,
            }
        } else {
            State {
                previous: 0,
                current: 0,
                elapsed_ms: elapsed % length,
                length_ms: length,
            }
        }
    }

    #[test]
    fn table() {
        /// (previous, current, elapsed, length, limit)
        type Given = (u64, u64, u64, u64, u64);
        /// (allowed, remaining, retry_after)
        type Expected = (bool, u64, Option<u64>);
        #[rustfmt::skip]
        let cases: &[(Given, Expected)] = &[
            // Empty windows: the first request of five leaves four.
            ((0, 0, 0, 1000, 5), (true, 4, None)),
            // The fifth request in one window leaves none; the sixth would be admitted once
            // this window ends and the next slides 200 ms (5 × 800/1000 + 1 = 5), but is told
            // to wait a window at most.
            ((0, 4, 0, 1000, 5), (true, 0, None)),
            ((0, 5, 0, 1000, 5), (false, 0, Some(1000))),
            ((0, 5, 300, 1000, 5), (false, 0, Some(900))),
            // A full previous window at the start of this one: 5 × 1000/1000 = 5, refused
            // until the weight falls to 4 × 1000 / 5, at elapsed 200.
            ((5, 0, 0, 1000, 5), (false, 0, Some(200))),
            ((5, 0, 200, 1000, 5), (true, 0, None)),
            // Halfway: 4 × 0.5 + 1 = 3, plus this one is 4, leaving 1.
            ((4, 1, 500, 1000, 5), (true, 1, None)),
            // Fractional estimates round the remainder down: 3 × 0.7 + 0 + 1 = 3.1 → 1.
            ((3, 0, 300, 1000, 5), (true, 1, None)),
            // Both windows contribute: 5 × 0.5 + 3 + 1 = 6.5, refused until the previous
            // window's share is down to 1, at elapsed 800: 5 × 0.2 + 3 + 1 = 5.
            ((5, 3, 500, 1000, 5), (false, 0, Some(300))),
            // Current window full: only the next window helps, after the count decays
            // (1100 ms), capped at the window.
            ((2, 5, 100, 1000, 5), (false, 0, Some(1000))),
            // A limit of one, used at elapsed 0: free again only when this window has slid
            // out entirely, two windows later; capped at the window.
            ((0, 1, 0, 1000, 1), (false, 0, Some(1000))),
            ((0, 1, 999, 1000, 1), (false, 0, Some(1000))),
            // Any share of a previous request fills a limit of one: wait for it to slide out.
            ((1, 0, 0, 1000, 1), (false, 0, Some(1000))),
            // A limit of zero refuses everything and suggests a window's pause.
            ((0, 0, 0, 1000, 0), (false, 0, Some(1000))),
            // One-millisecond windows.
            ((1, 1, 0, 1, 1), (false, 0, Some(1))),
            ((1, 0, 0, 1, 2), (true, 0, None)),
            // A day's window with a large limit.
            ((1_000_000, 0, 43_200_000, 86_400_000, 1_000_000), (true, 499_999, None)),
            // Full: the previous share must fall from 500,000 to 499,999; a million requests
            // over a day decay one per 86.4 ms, rounded up to whole milliseconds: 87.
            ((1_000_000, 500_000, 43_200_000, 86_400_000, 1_000_000), (false, 0, Some(87))),
        ];
        for &((previous, current, elapsed, length, limit), (allowed, remaining, retry)) in cases {
            let got = decide(state(previous, current, elapsed, length), limit, true);
            assert_eq!(
                got,
                Decision {
                    allowed,
                    remaining,
                    retry_after_ms: retry
                },
                "previous {previous}, current {current}, elapsed {elapsed}, length {length}, limit {limit}"
            );
        }
    }

    /// The estimate's own wait, before the cap: the first admitting millisecond.
    #[test]
    fn retry_after_admits_exactly_when_it_says() {
        let cases = [
            (5, 0, 0, 1000, 5),
            (0, 5, 0, 1000, 5),
            (5, 3, 500, 1000, 5),
            (2, 5, 100, 1000, 5),
            (0, 1, 0, 1000, 1),
            (1, 1, 0, 1, 1),
            (7, 2, 100, 997, 8),
            (1_000_000, 500_000, 43_200_000, 86_400_000, 1_000_000),
        ];
        for (previous, current, elapsed, length, limit) in cases {
            let now = state(previous, current, elapsed, length);
            assert!(!decide(now, limit, true).allowed, "these cases are refused");
            let retry = retry_after_ms(now, u128::from(limit));
            assert!(
                !decide(later(now, retry - 1), limit, true).allowed,
                "{now:?}"
            );
            assert!(decide(later(now, retry), limit, true).allowed, "{now:?}");
        }
    }

    /// Every state of small windows and limits: the estimate's wait is the first admitting
    /// millisecond found by walking forward, is at least 1, and at most two windows; the
    /// `retry_after` given is that, capped at one window.
    #[test]
    fn retry_after_matches_a_walk_forward_everywhere() {
        for length in [1, 2, 3, 5, 10, 97] {
            for limit in 1..=6 {
                for previous in 0..=limit + 1 {
                    for current in 0..=limit + 1 {
                        for elapsed in 0..length {
                            let now = state(previous, current, elapsed, length);
                            let decision = decide(now, limit, true);
                            if decision.allowed {
                                assert_eq!(decision.retry_after_ms, None);
                                continue;
                            }
                            let walked = (1..=2 * length)
                                .find(|&ms| decide(later(now, ms), limit, true).allowed)
                                .expect("two windows later both are empty");
                            assert_eq!(
                                retry_after_ms(now, u128::from(limit)),
                                walked,
                                "{now:?} limit {limit}"
                            );
                            assert_eq!(
                                decision.retry_after_ms,
                                Some(walked.min(length)),
                                "{now:?} limit {limit}"
                            );
                            assert!((1..=2 * length).contains(&walked));
                        }
                    }
                }
            }
        }
    }

    /// Contract 4: a limit never asks a client to wait longer than its window.
    #[test]
    fn retry_after_is_never_more_than_the_window() {
        for length in [1, 2, 10, 97, 1000] {
            for limit in 0..=20 {
                for previous in 0..=limit + 1 {
                    for current in 0..=limit + 1 {
                        for elapsed in [0, 1, length / 3, length / 2, length - 1] {
                            let now = state(previous, current, elapsed, length);
                            if let Some(retry) = decide(now, limit, true).retry_after_ms {
                                assert!(
                                    (1..=length).contains(&retry),
                                    "{now:?} limit {limit}: {retry}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn remaining_never_exceeds_the_limit_and_is_zero_when_refused() {
        for limit in 0..=6 {
            for previous in 0..=limit + 1 {
                for current in 0..=limit + 1 {
                    for elapsed in 0..10 {
                        let decision = decide(state(previous, current, elapsed, 10), limit, true);
                        assert!(decision.remaining <= limit);
                        if !decision.allowed {
                            assert_eq!(decision.remaining, 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_uncounted_request_leaves_the_windows_as_they_were() {
        let now = state(0, 2, 0, 1000);
        assert_eq!(
            decide(now, 5, false),
            Decision {
                allowed: true,
                remaining: 3,
                retry_after_ms: None
            }
        );
        assert_eq!(decide(now, 5, true).remaining, 2);
    }

    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;

    #[test]
    fn sliding_log_table() {
        /// (times counted, now, length, limit)
        type Given = (&'static [u64], u64, u64, u64);
        /// (allowed, remaining, retry_after, reset)
        type Expected = (bool, u64, Option<u64>, u64);
        #[rustfmt::skip]
        let cases: &[(Given, Expected)] = &[
            // Three an hour (contract 4), spread: 0, 20 and 40 minutes are admitted.
            ((&[], 0, HOUR, 3), (true, 2, None, HOUR)),
            ((&[0], 20 * MINUTE, HOUR, 3), (true, 1, None, 40 * MINUTE)),
            ((&[0, 20 * MINUTE], 40 * MINUTE, HOUR, 3), (true, 0, None, 20 * MINUTE)),
            // The fourth, at 50 minutes, waits until the one at 0 leaves: 10 minutes.
            ((&[0, 20 * MINUTE, 40 * MINUTE], 50 * MINUTE, HOUR, 3),
             (false, 0, Some(10 * MINUTE), 10 * MINUTE)),
            ((&[0, 20 * MINUTE, 40 * MINUTE], HOUR - 1, HOUR, 3), (false, 0, Some(1), 1)),
            // At 60 minutes the one at 0 has left; at 61 it is admitted as well.
            ((&[0, 20 * MINUTE, 40 * MINUTE], HOUR, HOUR, 3), (true, 0, None, 20 * MINUTE)),
            ((&[0, 20 * MINUTE, 40 * MINUTE], 61 * MINUTE, HOUR, 3), (true, 0, None, 19 * MINUTE)),
            // Times in any order; the refusal waits for the oldest that must leave.
            ((&[40 * MINUTE, 0, 20 * MINUTE], 50 * MINUTE, HOUR, 3),
             (false, 0, Some(10 * MINUTE), 10 * MINUTE)),
            // A burst at one instant: a whole window's wait, never more.
            ((&[5, 5, 5], 5, HOUR, 3), (false, 0, Some(HOUR), HOUR)),
            // Left over from a higher limit: room once enough have left for one more.
            ((&[1, 2, 3, 4, 5], 10, 100, 3), (false, 0, Some(93), 91)),
            // A time ahead of this clock (another instance's) counts as now.
            ((&[1000], 500, 100, 1), (false, 0, Some(100), 100)),
            // A limit of one.
            ((&[0], 999, 1000, 1), (false, 0, Some(1), 1)),
            ((&[0], 1000, 1000, 1), (true, 0, None, 1000)),
            // A limit of zero refuses everything and suggests a window's pause.
            ((&[], 0, 1000, 0), (false, 0, Some(1000), 1000)),
            // Early in the clock's life: nothing has left yet.
            ((&[0, 1], 2, 1000, 15), (true, 12, None, 998)),
        ];
        for &((times, now, length, limit), (allowed, remaining, retry, reset)) in cases {
            let got = decide_log(times, now, length, limit, true);
            let expected = LogDecision {
                decision: Decision {
                    allowed,
                    remaining,
                    retry_after_ms: retry,
                },
                reset_ms: reset,
            };
            assert_eq!(
                got, expected,
                "times {times:?}, now {now}, length {length}, limit {limit}"
            );
        }
    }

    /// Walking forward from every small log: a refused request is admitted exactly when its
    /// `retry_after` says, never later than a window; N spread over a window all get in.
    #[test]
    fn sliding_log_retry_after_is_the_first_admitting_moment_and_at_most_a_window() {
        let length = 10;
        for limit in 1..=4u64 {
            for mask in 0u32..(1 << length) {
                let times: Vec<u64> = (0..length).filter(|t| mask & (1 << t) != 0).collect();
                let now = length - 1;
                let decision = decide_log(&times, now, length, limit, true).decision;
                assert_eq!(decision.allowed, (times.len() as u64) < limit, "{times:?}");
                let Some(retry) = decision.retry_after_ms else {
                    continue;
                };
                let walked = (1..=length)
                    .find(|&ms| {
                        decide_log(&times, now + ms, length, limit, true)
                            .decision
                            .allowed
                    })
                    .expect("a window later all have left");
                assert_eq!(retry, walked, "{times:?} limit {limit}");
            }
        }
        // Exactly N, however spread, in one window.
        for limit in 1..EXACT_BELOW {
            let limit = u64::from(limit);
            let step = HOUR / limit;
            let mut times = Vec::new();
            for n in 0..limit {
                assert!(
                    decide_log(&times, n * step, HOUR, limit, true)
                        .decision
                        .allowed
                );
                times.push(n * step);
            }
            assert!(
                !decide_log(&times, HOUR - 1, HOUR, limit, true)
                    .decision
                    .allowed
            );
        }
    }

    #[test]
    fn an_uncounted_log_request_leaves_the_room_as_it_was() {
        assert_eq!(decide_log(&[0], 1, 1000, 3, false).decision.remaining, 2);
        assert_eq!(decide_log(&[0], 1, 1000, 3, true).decision.remaining, 1);
    }

    #[test]
    fn limits_under_sixteen_are_exact() {
        assert!(is_exact(1) && is_exact(15));
        assert!(!is_exact(16) && !is_exact(1000));
    }

    #[test]
    fn window_length_is_at_least_a_millisecond_and_at_most_the_longest() {
        assert_eq!(length_ms(Duration::ZERO), 1);
        assert_eq!(length_ms(Duration::from_micros(1500)), 1);
        assert_eq!(length_ms(Duration::from_secs(1)), 1000);
        assert_eq!(length_ms(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(length_ms(Duration::MAX), LONGEST_MS);
        // Redis takes a counter's lifetime of two windows as a signed 64-bit count of
        // milliseconds added to its own clock.
        assert!(2 * LONGEST_MS < (i64::MAX as u64) / 2);
    }

    #[test]
    fn position_splits_time_into_window_and_elapsed() {
        assert_eq!(position(1_700_000_000_123, 1000), (1_700_000_000, 123));
        assert_eq!(position(0, 1000), (0, 0));
        assert_eq!(position(999, 1000), (0, 999));
    }
}
