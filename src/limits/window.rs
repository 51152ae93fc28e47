//! The sliding-window counter's arithmetic, kept pure so that it can be tested exhaustively.
//! The gate (`gate.rs`) reads the two windows' counts from Redis and decides with [`decide`].
//!
//! Two fixed windows of `length_ms`: the current one and the one before. The count over the
//! sliding window that ends now is estimated as
//!
//! ```text
//! previous × (length − elapsed) / length + current
//! ```
//!
//! — the previous window's count weighted by how much of it the sliding window still covers.
//! A request is allowed when the estimate plus that request stays within the limit.
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
    /// How many more requests the estimate leaves room for, after this one if it was counted.
    pub remaining: u64,
    /// For a refused request: how long until the estimate has decayed enough to admit one,
    /// if nothing else is admitted meanwhile. Between 1 ms and two windows: the previous
    /// window can outweigh the limit for most of the next one.
    pub retry_after_ms: Option<u64>,
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
        retry_after_ms: (!allowed).then(|| retry_after_ms(state, limit)),
    }
}

/// For a refused request, the first moment, counted in whole milliseconds from now, at which
/// the estimate admits a request again, supposing nothing else is admitted meanwhile.
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
            // The fifth request in one window leaves none; the sixth waits for this window to
            // end and the next to slide 200 ms (5 × 800/1000 + 1 = 5).
            ((0, 4, 0, 1000, 5), (true, 0, None)),
            ((0, 5, 0, 1000, 5), (false, 0, Some(1200))),
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
            // Current window full: only the next window helps, after the count decays.
            ((2, 5, 100, 1000, 5), (false, 0, Some(1100))),
            // A limit of one, used at elapsed 0: free again only when this window has slid
            // out entirely, two windows later.
            ((0, 1, 0, 1000, 1), (false, 0, Some(2000))),
            ((0, 1, 999, 1000, 1), (false, 0, Some(1001))),
            // Any share of a previous request fills a limit of one: wait for it to slide out.
            ((1, 0, 0, 1000, 1), (false, 0, Some(1000))),
            // A limit of zero refuses everything and suggests a window's pause.
            ((0, 0, 0, 1000, 0), (false, 0, Some(1000))),
            // One-millisecond windows.
            ((1, 1, 0, 1, 1), (false, 0, Some(2))),
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
            let retry = decide(now, limit, true)
                .retry_after_ms
                .expect("these cases are refused");
            assert!(
                !decide(later(now, retry - 1), limit, true).allowed,
                "{now:?}"
            );
            assert!(decide(later(now, retry), limit, true).allowed, "{now:?}");
        }
    }

    /// Every state of small windows and limits: `retry_after` is the first admitting
    /// millisecond found by walking forward, is at least 1, and at most two windows.
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
                                decision.retry_after_ms,
                                Some(walked),
                                "{now:?} limit {limit}"
                            );
                            assert!((1..=2 * length).contains(&walked));
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
