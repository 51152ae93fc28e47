//! The gateway's own Prometheus metrics: request counts by status class, a
//! request latency histogram, upstream errors, connections and TLS handshake
//! failures, rendered in the text exposition format 0.0.4.
//!
//! Pure: no I/O. Recording is a few relaxed atomic adds so it can sit on every
//! request; the cost is paid in `render`, which runs once per scrape.
//! Relaxed ordering is enough because each number is independent and a scrape
//! may see a request half-recorded (counted by class, not yet in the
//! histogram) without harm.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Duration;

use crate::policy::Outcome;
use crate::telemetry::exposition::{capped, family, label_value, single};

/// Upper bounds of the finite latency buckets, in nanoseconds (the bucket
/// test is `latency <= bound`, as Prometheus' `le` means).
const BUCKET_BOUNDS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The `le` labels, written out so rendering never formats a float.
const BUCKET_LABELS: [&str; 14] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "+Inf",
];

/// The outcomes a shadow rule's decision is counted by, in `shadow_slot` order.
const SHADOW_OUTCOMES: [Outcome; 3] =
    [Outcome::Allow, Outcome::Unauthenticated, Outcome::Forbidden];

/// Distinct rule names the shadow counter keeps apart. Names come from the policy file, so
/// the series are what operators write; the cap only matters over many reloads that rename
/// shadow rules, and past it the rest are counted under `rule="(other)"`.
const MAX_SHADOW_RULES: usize = 256;

const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Distinct rule names `portcullis_http_requests_by_rule_total` keeps apart; past it, as
/// for shadow rules, the rest are counted under `rule="(other)"`.
const MAX_RULES: usize = 256;

/// The `rule` label of a request no rule matched.
pub const NO_RULE: &str = "(none)";

/// Why the gateway refused a request itself: a fixed set, so `portcullis_refusals_total`
/// has one series per variant and never a free-text label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    // The discriminants index `Metrics::refusals`.
    /// No token where the rule asks for one (a 401, or a browser sent to sign in).
    NoToken = 0,
    /// A token that failed verification (bad signature, expired, malformed).
    BadToken = 1,
    Revoked = 2,
    /// Signed in without the role the rule asks for.
    Role = 3,
    Permission = 4,
    /// Not the owner of the resource (`access: owner`).
    Owner = 5,
    /// A rule with `access: deny`.
    Denied = 6,
    /// Signed in, and no rule matched.
    NoRule = 7,
    RateLimit = 8,
    /// An unsafe request from another site carrying the session cookie.
    CrossSite = 9,
    /// A host this gateway does not serve (421).
    Host = 10,
    /// A method the gateway does not pass (405).
    Method = 11,
    /// A path normalisation refused (400).
    Path = 12,
    /// Any other malformed request: sensitive headers, `_method`, headers or body too large.
    Malformed = 13,
    /// Redis could not be asked and the fail mode is closed (503).
    Unavailable = 14,
    /// A CORS preflight from an origin not allowed.
    Cors = 15,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 16] = [
        RefusalReason::NoToken,
        RefusalReason::BadToken,
        RefusalReason::Revoked,
        RefusalReason::Role,
        RefusalReason::Permission,
        RefusalReason::Owner,
        RefusalReason::Denied,
        RefusalReason::NoRule,
        RefusalReason::RateLimit,
        RefusalReason::CrossSite,
        RefusalReason::Host,
        RefusalReason::Method,
        RefusalReason::Path,
        RefusalReason::Malformed,
        RefusalReason::Unavailable,
        RefusalReason::Cors,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NoToken => "no_token",
            RefusalReason::BadToken => "bad_token",
            RefusalReason::Revoked => "revoked",
            RefusalReason::Role => "role",
            RefusalReason::Permission => "permission",
            RefusalReason::Owner => "owner",
            RefusalReason::Denied => "denied",
            RefusalReason::NoRule => "no_rule",
            RefusalReason::RateLimit => "rate_limit",
            RefusalReason::CrossSite => "cross_site",
            RefusalReason::Host => "host",
            RefusalReason::Method => "method",
            RefusalReason::Path => "path",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Unavailable => "unavailable",
            RefusalReason::Cors => "cors",
        }
    }
}

/// A rule's counts by status code.
type CodeCounts = RwLock<BTreeMap<u16, AtomicU64>>;

/// Why a request could not be served by the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    // The discriminants index `Metrics::upstream_errors`.
    Connect = 0,
    Timeout = 1,
    Other = 2,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// A latency histogram over the `BUCKET_LABELS` buckets (1 ms to 10 s), recorded with two
/// relaxed adds and made cumulative when rendered.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last is the +Inf overflow.
    /// Cumulative sums and the total count are computed when rendering, which
    /// keeps recording to one add here.
    buckets: [AtomicU64; 14],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Relaxed);

        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// The family `name` (in seconds): `_bucket`, `_sum` and `_count`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        self.render_series(out, name, "");
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series of the family `name`, with
    /// `labels` (`key="value"` pairs, already escaped; empty for none) before `le`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (bucket_prefix, braced) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{labels},"), format!("{{{labels}}}"))
        };
        // Load each bucket once so +Inf and _count come from the same reads
        // and always agree, even while latencies are being recorded.
        let mut cumulative = 0u64;
        for (label, count) in BUCKET_LABELS.iter().zip(&self.buckets) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{bucket_prefix}le=\"{label}\"}} {cumulative}"
            );
        }
        let sum = self.sum_micros.load(Relaxed);
        // Integer arithmetic keeps the sum exact: seconds, then six digits of
        // microseconds.
        let _ = writeln!(
            out,
            "{name}_sum{braced} {}.{:06}",
            sum / 1_000_000,
            sum % 1_000_000
        );
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }

    fn is_empty(&self) -> bool {
        self.buckets.iter().all(|count| count.load(Relaxed) == 0)
    }
}

/// Records the time from [`Timings::start`] to its drop.
#[must_use = "the time is recorded when the timer is dropped"]
pub struct Timer<'t, O: Operation> {
    timings: &'t Timings<O>,
    operation: O,
    started: std::time::Instant,
}

impl<O: Operation> Drop for Timer<'_, O> {
    fn drop(&mut self) {
        self.timings.record(self.operation, self.started.elapsed());
    }
}

/// A fixed set of operation names a latency is recorded under: a label whose values are
/// known when the code is written, so the series it makes are bounded.
pub trait Operation: Copy + 'static {
    /// Every operation, each at the index [`Operation::index`] gives it.
    const ALL: &'static [Self];
    fn index(self) -> usize;
    /// The label value (`snake_case`, never SQL or a key).
    fn label(self) -> &'static str;
}

/// One latency histogram per operation of `O`, for work done against a dependency
/// (Postgres, Redis): `name{operation="..."}`. Recording is the histogram's two adds.
#[derive(Debug)]
pub struct Timings<O: Operation> {
    histograms: Box<[Histogram]>,
    operations: std::marker::PhantomData<O>,
}

impl<O: Operation> Default for Timings<O> {
    fn default() -> Self {
        Timings {
            histograms: O::ALL.iter().map(|_| Histogram::default()).collect(),
            operations: std::marker::PhantomData,
        }
    }
}

impl<O: Operation> Timings<O> {
    pub fn record(&self, operation: O, latency: Duration) {
        if let Some(histogram) = self.histograms.get(operation.index()) {
            histogram.record(latency);
        }
    }

    /// Runs `work` and records how long it took under `operation`, whether it succeeded or
    /// not (a timeout is latency too). A future dropped before it finished records nothing.
    pub async fn time<F: std::future::Future>(&self, operation: O, work: F) -> F::Output {
        let started = std::time::Instant::now();
        let output = work.await;
        self.record(operation, started.elapsed());
        output
    }

    /// Starts timing `operation`: the time is recorded when the returned guard is dropped,
    /// at the end of the caller's scope (returns and `?` included, and a cancelled
    /// caller's time so far).
    pub fn start(&self, operation: O) -> Timer<'_, O> {
        Timer {
            timings: self,
            operation,
            started: std::time::Instant::now(),
        }
    }

    /// The family `name`, one series per operation that has recorded anything (the label's
    /// values are fixed by `O`; an operation the gateway never ran adds no lines).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        for operation in O::ALL {
            let Some(histogram) = self.histograms.get(operation.index()) else {
                continue;
            };
            if histogram.is_empty() {
                continue;
            }
            let labels = format!("operation=\"{}\"", operation.label());
            histogram.render_series(out, name, &labels);
        }
    }
}

/// All of the gateway's own metrics. Share it through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// 1xx..5xx, then anything outside 100..=599 (which hyper's StatusCode
    /// permits up to 999) so no request goes uncounted.
    requests_by_class: [AtomicU64; 6],
    /// Per-bucket (not cumulative) counts; the last is the +Inf overflow.
    /// Cumulative sums and the total count are computed when rendering, which
    /// keeps recording to one add here.
    latency: Histogram,
    upstream_errors: [AtomicU64; 3],
    /// Signed so that an unmatched `connection_closed` shows up as a negative
    /// gauge rather than wrapping to 2^64.
    open_connections: AtomicI64,
    connections_total: AtomicU64,
    connections_rejected: AtomicU64,
    tls_handshake_failures: AtomicU64,
    redis_errors: AtomicU64,
    /// By shadow rule name: its would-be decisions, by `SHADOW_OUTCOMES`. Kept across policy
    /// reloads, as counters should be. Touched only when the policy has shadow rules.
    shadow_decisions: RwLock<HashMap<Box<str>, [AtomicU64; 3]>>,
    /// Policy-judged requests by deciding rule name (or `NO_RULE`), then status code.
    rule_requests: RwLock<HashMap<Box<str>, CodeCounts>>,
    refusals: [AtomicU64; 16],
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts a finished request by status class and records its latency.
    pub fn record_request(&self, status: u16, latency: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => CLASS_LABELS.len() - 1,
        };
        self.requests_by_class[class].fetch_add(1, Relaxed);

        self.latency.record(latency);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// A connection was accepted: raises the open gauge and the total.
    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Relaxed);
    }

    /// A connection was refused because the connection cap was reached. Not
    /// counted in `portcullis_connections_total`, which counts accepted ones.
    pub fn connection_rejected(&self) {
        self.connections_rejected.fetch_add(1, Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// A Redis command for a request failed (rate limit or revocation check).
    pub fn redis_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
    }

    /// Counts what the shadow rule `rule` (`mode: report`) would have decided.
    pub fn shadow_decision(&self, rule: &str, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Allow => 0,
            Outcome::Unauthenticated => 1,
            Outcome::Forbidden => 2,
        };
        {
            let counts = self
                .shadow_decisions
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = counts.get(rule) {
                count[slot].fetch_add(1, Relaxed);
                return;
            }
        }
        let mut counts = self
            .shadow_decisions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = capped(
            rule,
            counts.contains_key(rule),
            counts.len(),
            MAX_SHADOW_RULES,
        );
        counts.entry(name.into()).or_default()[slot].fetch_add(1, Relaxed);
    }

    /// Counts a request the policy judged, by the rule that decided it (`None`: no rule
    /// matched) and the status it was answered with.
    pub fn rule_request(&self, rule: Option<&str>, status: u16) {
        let rule = rule.unwrap_or(NO_RULE);
        let count = |codes: &CodeCounts| {
            {
                let codes = codes
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(count) = codes.get(&status) {
                    count.fetch_add(1, Relaxed);
                    return;
                }
            }
            // Status codes are three digits (hyper's StatusCode is 100..=999): at most 900.
            codes
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(status)
                .or_default()
                .fetch_add(1, Relaxed);
        };
        {
            let rules = self
                .rule_requests
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(codes) = rules.get(rule) {
                count(codes);
                return;
            }
        }
        let mut rules = self
            .rule_requests
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = capped(rule, rules.contains_key(rule), rules.len(), MAX_RULES);
        count(rules.entry(name.into()).or_default());
    }

    /// Counts a request the gateway refused itself, by why.
    pub fn refusal(&self, reason: RefusalReason) {
        self.refusals[reason as usize].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4, every metric
    /// `portcullis_`-prefixed with `# HELP` and `# TYPE` lines. `extra` is
    /// appended verbatim (other modules render their own families).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(3072 + extra.len());
        // Writing into a String cannot fail, hence the ignored results.

        family(
            &mut out,
            "portcullis_http_requests_total",
            "counter",
            "Requests answered, by HTTP status class.",
        );
        for (label, count) in CLASS_LABELS.iter().zip(&self.requests_by_class) {
            let _ = writeln!(
                out,
                "portcullis_http_requests_total{{class=\"{label}\"}} {}",
                count.load(Relaxed)
            );
        }

        self.latency.render(
            &mut out,
            "portcullis_http_request_duration_seconds",
            "Time from request received to response headers sent.",
        );

        family(
            &mut out,
            "portcullis_upstream_errors_total",
            "counter",
            "Requests that failed at the upstream, by kind.",
        );
        for kind in UpstreamErrorKind::ALL {
            let _ = writeln!(
                out,
                "portcullis_upstream_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.upstream_errors[kind as usize].load(Relaxed)
            );
        }

        single(
            &mut out,
            "portcullis_open_connections",
            "gauge",
            "Client connections currently open.",
            self.open_connections.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_connections_total",
            "counter",
            "Client connections accepted.",
            self.connections_total.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_connections_rejected_total",
            "counter",
            "Client connections refused because the connection limit was reached.",
            self.connections_rejected.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed.",
            self.tls_handshake_failures.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_redis_errors_total",
            "counter",
            "Rate-limit or revocation checks that failed because Redis did not answer.",
            self.redis_errors.load(Relaxed),
        );

        family(
            &mut out,
            "portcullis_policy_shadow_decisions_total",
            "counter",
            "What shadow rules (mode: report) would have decided, by rule name and outcome.",
        );
        {
            let counts = self
                .shadow_decisions
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut rules: Vec<_> = counts.iter().collect();
            rules.sort_by(|a, b| a.0.cmp(b.0));
            for (rule, count) in rules {
                for (outcome, count) in SHADOW_OUTCOMES.iter().zip(count) {
                    let _ = writeln!(
                        out,
                        "portcullis_policy_shadow_decisions_total{{rule=\"{}\",outcome=\"{}\"}} {}",
                        label_value(rule),
                        outcome.as_str(),
                        count.load(Relaxed)
                    );
                }
            }
        }

        family(
            &mut out,
            "portcullis_http_requests_by_rule_total",
            "counter",
            "Requests the policy judged, by deciding rule name ((none): no rule matched) and \
             status code.",
        );
        {
            let rules = self
                .rule_requests
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut names: Vec<_> = rules.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (rule, codes) in names {
                let rule = label_value(rule);
                let codes = codes
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (code, count) in codes.iter() {
                    let _ = writeln!(
                        out,
                        "portcullis_http_requests_by_rule_total{{rule=\"{rule}\",code=\"{code}\"}} {}",
                        count.load(Relaxed)
                    );
                }
            }
        }

        family(
            &mut out,
            "portcullis_refusals_total",
            "counter",
            "Requests the gateway refused itself, by reason.",
        );
        for reason in RefusalReason::ALL {
            let _ = writeln!(
                out,
                "portcullis_refusals_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.refusals[reason as usize].load(Relaxed)
            );
        }

        out.push_str(extra);
        out
    }
}

/// How a login ended, for `portcullis_logins_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    // The discriminants index `AuthMetrics::logins`.
    Success = 0,
    /// Unknown email or wrong password, not (yet) locked.
    Invalid = 1,
    /// Refused as locked, the attempt that set the lock included.
    Locked = 2,
    Unverified = 3,
    Deactivated = 4,
    /// Over the login rate limit or the client's failed-login limit.
    RateLimited = 5,
    /// Anything else: a malformed body, Postgres or Redis down.
    Error = 6,
}

impl LoginOutcome {
    pub const ALL: [LoginOutcome; 7] = [
        LoginOutcome::Success,
        LoginOutcome::Invalid,
        LoginOutcome::Locked,
        LoginOutcome::Unverified,
        LoginOutcome::Deactivated,
        LoginOutcome::RateLimited,
        LoginOutcome::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::Invalid => "invalid",
            LoginOutcome::Locked => "locked",
            LoginOutcome::Unverified => "unverified",
            LoginOutcome::Deactivated => "deactivated",
            LoginOutcome::RateLimited => "rate_limited",
            LoginOutcome::Error => "error",
        }
    }
}

/// The identity routes' own counters, kept by the auth service and rendered after the
/// gateway's.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    logins: [AtomicU64; 7],
    lockouts: AtomicU64,
    login_locked_refusals: AtomicU64,
    login_failure_limit_refusals: AtomicU64,
    refresh_reuses: AtomicU64,
    refresh_graces: AtomicU64,
}

impl AuthMetrics {
    /// A login or password change was refused because the account is locked (not the
    /// failure that set the lock).
    pub fn login_locked_refusal(&self) {
        self.login_locked_refusals.fetch_add(1, Relaxed);
    }

    /// A login was refused (429) before its password was verified: its client address was
    /// over `rate_limits.login_failures_per_client`.
    pub fn login_failure_limit_refusal(&self) {
        self.login_failure_limit_refusals.fetch_add(1, Relaxed);
    }

    /// A login ended as `outcome`.
    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].fetch_add(1, Relaxed);
    }

    /// An account (or, locking per address, an account and address pair) became locked.
    pub fn lockout(&self) {
        self.lockouts.fetch_add(1, Relaxed);
    }

    /// An already-rotated refresh token was presented: its whole session was ended.
    pub fn refresh_reuse(&self) {
        self.refresh_reuses.fetch_add(1, Relaxed);
    }

    /// A just-rotated refresh token was presented within `tokens.refresh_reuse_grace`: its
    /// session got an access token, and was not ended.
    pub fn refresh_grace(&self) {
        self.refresh_graces.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "portcullis_logins_total",
            "counter",
            "Logins (API and sign-in form), by outcome.",
        );
        for outcome in LoginOutcome::ALL {
            let _ = writeln!(
                out,
                "portcullis_logins_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                self.logins[outcome as usize].load(Relaxed)
            );
        }
        single(
            &mut out,
            "portcullis_lockouts_total",
            "counter",
            "Times an account, or an account and address pair, became locked.",
            self.lockouts.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_refresh_reuse_detected_total",
            "counter",
            "Already-rotated refresh tokens presented; each ended its session.",
            self.refresh_reuses.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_refresh_grace_total",
            "counter",
            "Just-rotated refresh tokens taken within the reuse grace of a silent refresh.",
            self.refresh_graces.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_login_locked_refusals_total",
            "counter",
            "Login or password-change attempts refused because the account was locked.",
            self.login_locked_refusals.load(Relaxed),
        );
        single(
            &mut out,
            "portcullis_login_failure_limit_refusals_total",
            "counter",
            "Logins refused before any password check: the client address was over \
             rate_limits.login_failures_per_client.",
            self.login_failure_limit_refusals.load(Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Parses the exposition text into `series -> value`, asserting the line
    /// grammar on the way: comments are `# HELP name text` or
    /// `# TYPE name type`, everything else `name{labels} value` or
    /// `name value`.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut series = HashMap::new();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let keyword = parts.next().unwrap();
                let name = parts.next().unwrap();
                let rest = parts.next().unwrap();
                assert!(name.starts_with("portcullis_"), "{line}");
                match keyword {
                    "HELP" => assert!(!rest.is_empty()),
                    "TYPE" => {
                        assert!(["counter", "gauge", "histogram"].contains(&rest), "{line}");
                        typed.push(name.to_owned());
                    }
                    _ => panic!("unexpected comment {line}"),
                }
                continue;
            }
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = match key.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    for pair in labels.split(',') {
                        let (label, quoted) = pair.split_once('=').unwrap();
                        assert!(
                            label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                            "{line}"
                        );
                        assert!(
                            quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                            "{line}"
                        );
                    }
                    name
                }
                None => key,
            };
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
            assert!(
                typed.iter().any(|family| name.starts_with(family.as_str())),
                "{line} has no # TYPE before it"
            );
            assert!(
                series.insert(key.to_owned(), value).is_none(),
                "duplicate {key}"
            );
        }
        series
    }

    fn bucket(le: &str) -> String {
        format!("portcullis_http_request_duration_seconds_bucket{{le=\"{le}\"}}")
    }

    #[test]
    fn empty_metrics_render_every_family_at_zero() {
        let series = parse(&Metrics::new().render(""));
        let expected = [
            "portcullis_http_requests_total{class=\"2xx\"}",
            "portcullis_http_request_duration_seconds_sum",
            "portcullis_http_request_duration_seconds_count",
            "portcullis_upstream_errors_total{kind=\"timeout\"}",
            "portcullis_open_connections",
            "portcullis_connections_total",
            "portcullis_connections_rejected_total",
            "portcullis_tls_handshake_failures_total",
        ];
        for key in expected {
            assert_eq!(series.get(key), Some(&0.0), "{key}");
        }
        assert_eq!(series.get(&bucket("+Inf")), Some(&0.0));
    }

    #[test]
    fn requests_are_counted_by_class() {
        let metrics = Metrics::new();
        for status in [
            101, 200, 204, 299, 301, 404, 418, 499, 500, 503, 599, 600, 999, 0,
        ] {
            metrics.record_request(status, Duration::from_millis(1));
        }
        let series = parse(&metrics.render(""));
        for (class, count) in [
            ("1xx", 1.0),
            ("2xx", 3.0),
            ("3xx", 1.0),
            ("4xx", 3.0),
            ("5xx", 3.0),
            ("other", 3.0),
        ] {
            let key = format!("portcullis_http_requests_total{{class=\"{class}\"}}");
            assert_eq!(series[&key], count, "{class}");
        }
    }

    #[test]
    fn latency_lands_in_the_right_buckets() {
        // (latency, the smallest `le` whose cumulative count includes it)
        let cases = [
            (Duration::ZERO, "0.001"),
            (Duration::from_micros(1000), "0.001"),
            (Duration::from_nanos(1_000_001), "0.0025"),
            (Duration::from_millis(3), "0.005"),
            (Duration::from_millis(100), "0.1"),
            (Duration::from_millis(101), "0.25"),
            (Duration::from_secs(1), "1"),
            (Duration::from_secs(10), "10"),
            (Duration::from_secs(11), "+Inf"),
            (Duration::MAX, "+Inf"),
        ];
        for (latency, le) in cases {
            let metrics = Metrics::new();
            metrics.record_request(200, latency);
            let series = parse(&metrics.render(""));
            let position = BUCKET_LABELS.iter().position(|l| *l == le).unwrap();
            for (i, label) in BUCKET_LABELS.iter().enumerate() {
                let expected = if i >= position { 1.0 } else { 0.0 };
                assert_eq!(
                    series[&bucket(label)],
                    expected,
                    "{latency:?} in le={label}"
                );
            }
        }
    }

    #[test]
    fn histogram_is_cumulative_and_consistent() {
        let metrics = Metrics::new();
        let latencies_ms = [
            0, 1, 2, 4, 7, 20, 20, 70, 300, 800, 2000, 4000, 9000, 60_000,
        ];
        for ms in latencies_ms {
            metrics.record_request(200, Duration::from_millis(ms));
        }
        metrics.record_request(200, Duration::from_micros(1_500));
        let series = parse(&metrics.render(""));

        let mut previous = 0.0;
        for label in BUCKET_LABELS {
            let value = series[&bucket(label)];
            assert!(value >= previous, "le={label} decreased");
            previous = value;
        }
        let count = series["portcullis_http_request_duration_seconds_count"];
        assert_eq!(series[&bucket("+Inf")], count);
        assert_eq!(count, 15.0);
        assert_eq!(series[&bucket("0.001")], 2.0);
        assert_eq!(series[&bucket("0.0025")], 4.0);
        assert_eq!(series[&bucket("10")], 14.0);

        let expected_sum_ms: u64 = latencies_ms.iter().sum();
        let sum = series["portcullis_http_request_duration_seconds_sum"];
        assert!(
            (sum - (expected_sum_ms as f64 / 1000.0 + 0.0015)).abs() < 1e-9,
            "{sum}"
        );
    }

    #[test]
    fn sum_is_rendered_exactly() {
        let metrics = Metrics::new();
        metrics.record_request(200, Duration::from_micros(1_000_007));
        metrics.record_request(200, Duration::from_micros(30));
        let text = metrics.render("");
        assert!(
            text.contains("\nportcullis_http_request_duration_seconds_sum 1.000037\n"),
            "{text}"
        );
    }

    #[test]
    fn connections_upstream_errors_and_tls() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.connection_opened();
        }
        metrics.connection_closed();
        metrics.connection_rejected();
        metrics.connection_rejected();
        metrics.tls_handshake_failed();
        metrics.upstream_error(UpstreamErrorKind::Connect);
        metrics.upstream_error(UpstreamErrorKind::Timeout);
        metrics.upstream_error(UpstreamErrorKind::Timeout);
        let series = parse(&metrics.render(""));
        let cases = [
            ("portcullis_open_connections", 2.0),
            ("portcullis_connections_total", 3.0),
            ("portcullis_connections_rejected_total", 2.0),
            ("portcullis_tls_handshake_failures_total", 1.0),
            ("portcullis_upstream_errors_total{kind=\"connect\"}", 1.0),
            ("portcullis_upstream_errors_total{kind=\"timeout\"}", 2.0),
            ("portcullis_upstream_errors_total{kind=\"other\"}", 0.0),
        ];
        for (key, value) in cases {
            assert_eq!(series[key], value, "{key}");
        }
    }

    #[test]
    fn a_histogram_renders_under_its_own_name() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(500));
        histogram.record(Duration::from_millis(30));
        let mut out = String::new();
        histogram.render(&mut out, "portcullis_redis_duration_seconds", "Redis.");
        let series = parse(&out);
        let bucket =
            |le: &str| series[&format!("portcullis_redis_duration_seconds_bucket{{le=\"{le}\"}}")];
        assert_eq!(bucket("0.001"), 1.0);
        assert_eq!(bucket("0.025"), 1.0);
        assert_eq!(bucket("0.05"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(series["portcullis_redis_duration_seconds_count"], 2.0);
        assert!(
            out.contains("\nportcullis_redis_duration_seconds_sum 0.030500\n"),
            "{out}"
        );
    }

    #[derive(Debug, Clone, Copy)]
    enum Work {
        Read = 0,
        Write = 1,
    }

    impl Operation for Work {
        const ALL: &'static [Work] = &[Work::Read, Work::Write];
        fn index(self) -> usize {
            self as usize
        }
        fn label(self) -> &'static str {
            match self {
                Work::Read => "read",
                Work::Write => "write",
            }
        }
    }

    #[test]
    fn timings_render_one_series_per_operation_that_ran() {
        let timings = Timings::<Work>::default();
        let mut out = String::new();
        timings.render(&mut out, "portcullis_x_duration_seconds", "X.");
        // The family is always there; an operation that never ran adds no series.
        assert_eq!(
            out,
            "# HELP portcullis_x_duration_seconds X.\n\
             # TYPE portcullis_x_duration_seconds histogram\n"
        );

        timings.record(Work::Read, Duration::from_micros(800));
        timings.record(Work::Read, Duration::from_millis(40));
        {
            let _timer = timings.start(Work::Read);
        }
        let mut out = String::new();
        timings.render(&mut out, "portcullis_x_duration_seconds", "X.");
        let series = parse(&out);
        let read = |suffix: &str| series[&format!("portcullis_x_duration_seconds{suffix}")];
        // The timer's own time is whatever the machine took: only its count is certain.
        assert!(read("_bucket{operation=\"read\",le=\"0.001\"}") >= 1.0);
        assert!(read("_bucket{operation=\"read\",le=\"0.025\"}") <= 2.0);
        assert_eq!(read("_bucket{operation=\"read\",le=\"+Inf\"}"), 3.0);
        assert_eq!(read("_count{operation=\"read\"}"), 3.0);
        assert!(read("_sum{operation=\"read\"}") >= 0.0408);
        assert!(
            !out.contains("operation=\"write\""),
            "an operation that never ran has no series: {out}"
        );
    }

    #[test]
    fn a_timed_future_records_once_it_finishes() {
        let timings = Timings::<Work>::default();
        let answer = futures_util::FutureExt::now_or_never(timings.time(Work::Write, async { 7 }));
        assert_eq!(answer, Some(7));
        let mut out = String::new();
        timings.render(&mut out, "portcullis_x_duration_seconds", "X.");
        assert!(
            out.contains("portcullis_x_duration_seconds_count{operation=\"write\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn requests_are_counted_by_rule_and_code() {
        let metrics = Metrics::new();
        metrics.rule_request(Some("api"), 200);
        metrics.rule_request(Some("api"), 200);
        metrics.rule_request(Some("api"), 403);
        metrics.rule_request(None, 401);
        let series = parse(&metrics.render(""));
        let value = |rule: &str, code: &str| {
            series
                .get(&format!(
                    "portcullis_http_requests_by_rule_total{{rule=\"{rule}\",code=\"{code}\"}}"
                ))
                .copied()
        };
        assert_eq!(value("api", "200"), Some(2.0));
        assert_eq!(value("api", "403"), Some(1.0));
        assert_eq!(value("(none)", "401"), Some(1.0));
        assert_eq!(value("api", "401"), None);

        // Past the cap, further names share one series; known names keep theirs.
        for index in 0..MAX_RULES + 5 {
            metrics.rule_request(Some(&format!("rule {index}")), 200);
        }
        metrics.rule_request(Some("api"), 200);
        let series = parse(&metrics.render(""));
        let value = |rule: &str| {
            series
                .get(&format!(
                    "portcullis_http_requests_by_rule_total{{rule=\"{rule}\",code=\"200\"}}"
                ))
                .copied()
        };
        assert_eq!(value("api"), Some(3.0));
        // 2 names were known, so 254 new ones fit and 7 overflow.
        assert_eq!(value("(other)"), Some(7.0));
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let metrics = Metrics::new();
        metrics.refusal(RefusalReason::NoToken);
        metrics.refusal(RefusalReason::Role);
        metrics.refusal(RefusalReason::Role);
        let series = parse(&metrics.render(""));
        for reason in RefusalReason::ALL {
            let expected = match reason {
                RefusalReason::NoToken => 1.0,
                RefusalReason::Role => 2.0,
                _ => 0.0,
            };
            let key = format!("portcullis_refusals_total{{reason=\"{}\"}}", reason.label());
            assert_eq!(series[&key], expected, "{key}");
        }
    }

    #[test]
    fn auth_metrics_count_lock_refusals() {
        let metrics = AuthMetrics::default();
        metrics.login_locked_refusal();
        metrics.login_locked_refusal();
        let parsed = parse(&metrics.render());
        assert_eq!(parsed["portcullis_login_locked_refusals_total"], 2.0);
    }

    #[test]
    fn auth_metrics_count_logins_and_lockouts() {
        let metrics = AuthMetrics::default();
        metrics.login(LoginOutcome::Success);
        metrics.login(LoginOutcome::Invalid);
        metrics.login(LoginOutcome::Invalid);
        metrics.lockout();
        let parsed = parse(&metrics.render());
        for outcome in LoginOutcome::ALL {
            let expected = match outcome {
                LoginOutcome::Success => 1.0,
                LoginOutcome::Invalid => 2.0,
                _ => 0.0,
            };
            let key = format!("portcullis_logins_total{{outcome=\"{}\"}}", outcome.label());
            assert_eq!(parsed[&key], expected, "{key}");
        }
        assert_eq!(parsed["portcullis_lockouts_total"], 1.0);
    }

    #[test]
    fn extra_is_appended_verbatim() {
        let extra = "# HELP portcullis_auth_failures_total Failed authentications.\n\
                     # TYPE portcullis_auth_failures_total counter\n\
                     portcullis_auth_failures_total{reason=\"expired\"} 4\n";
        let text = Metrics::new().render(extra);
        assert!(text.ends_with(extra));
        assert!(text.ends_with("\n"));
        let series = parse(&text);
        assert_eq!(
            series["portcullis_auth_failures_total{reason=\"expired\"}"],
            4.0
        );
    }

    #[test]
    fn recording_from_many_threads_loses_nothing() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        metrics.record_request(200, Duration::from_micros(i));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let series = parse(&metrics.render(""));
        assert_eq!(
            series["portcullis_http_requests_total{class=\"2xx\"}"],
            4000.0
        );
        assert_eq!(
            series["portcullis_http_request_duration_seconds_count"],
            4000.0
        );
    }

    #[test]
    fn shadow_decisions_are_counted_by_rule_and_outcome() {
        let metrics = Metrics::new();
        metrics.shadow_decision("reports for users", Outcome::Allow);
        metrics.shadow_decision("reports for users", Outcome::Allow);
        metrics.shadow_decision("a \"quoted\" \\ name", Outcome::Forbidden);
        let text = metrics.render("");
        let series = parse(&text);
        let value = |labels: &str| {
            series
                .get(&format!(
                    "portcullis_policy_shadow_decisions_total{{{labels}}}"
                ))
                .copied()
        };
        assert_eq!(
            value("rule=\"reports for users\",outcome=\"allow\""),
            Some(2.0)
        );
        assert_eq!(
            value("rule=\"reports for users\",outcome=\"403\""),
            Some(0.0)
        );
        assert_eq!(
            value("rule=\"a \\\"quoted\\\" \\\\ name\",outcome=\"403\""),
            Some(1.0),
            "{text}"
        );
        // Past the cap, further names share one series.
        for index in 0..MAX_SHADOW_RULES + 5 {
            metrics.shadow_decision(&format!("rule {index}"), Outcome::Unauthenticated);
        }
        let text = metrics.render("");
        assert!(
            text.contains(
                "portcullis_policy_shadow_decisions_total{rule=\"(other)\",outcome=\"401\"} 7"
            ),
            "{text}"
        );
    }
}
