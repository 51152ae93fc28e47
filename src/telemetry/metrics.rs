//! The gateway's own Prometheus metrics: request counts by status class, a
//! request latency histogram, upstream errors, connections and TLS handshake
//! failures, rendered in the text exposition format 0.0.4.
//!
//! Pure: no I/O. Recording is a few relaxed atomic adds so it can sit on every
//! request; the cost is paid in `render`, which runs once per scrape.
//! Relaxed ordering is enough because each number is independent and a scrape
//! may see a request half-recorded (counted by class, not yet in the
//! histogram) without harm.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Duration;

use crate::policy::Outcome;

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

/// All of the gateway's own metrics. Share it through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// 1xx..5xx, then anything outside 100..=599 (which hyper's StatusCode
    /// permits up to 999) so no request goes uncounted.
    requests_by_class: [AtomicU64; 6],
    /// Per-bucket (not cumulative) counts; the last is the +Inf overflow.
    /// Cumulative sums and the total count are computed when rendering, which
    /// keeps recording to one add here.
    latency_buckets: [AtomicU64; 14],
    latency_sum_micros: AtomicU64,
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

        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.latency_buckets[bucket].fetch_add(1, Relaxed);

        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
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
        let name = if counts.len() < MAX_SHADOW_RULES || counts.contains_key(rule) {
            rule
        } else {
            "(other)"
        };
        counts.entry(name.into()).or_default()[slot].fetch_add(1, Relaxed);
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

        family(
            &mut out,
            "portcullis_http_request_duration_seconds",
            "histogram",
            "Time from request received to response headers sent.",
        );
        // Load each bucket once so +Inf and _count come from the same reads
        // and always agree, even while requests are being recorded.
        let mut cumulative = 0u64;
        for (label, count) in BUCKET_LABELS.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(
                out,
                "portcullis_http_request_duration_seconds_bucket{{le=\"{label}\"}} {cumulative}"
            );
        }
        let sum = self.latency_sum_micros.load(Relaxed);
        // Integer arithmetic keeps the sum exact: seconds, then six digits of
        // microseconds.
        let _ = writeln!(
            out,
            "portcullis_http_request_duration_seconds_sum {}.{:06}",
            sum / 1_000_000,
            sum % 1_000_000
        );
        let _ = writeln!(
            out,
            "portcullis_http_request_duration_seconds_count {cumulative}"
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

        out.push_str(extra);
        out
    }
}

/// The identity routes' own counters, kept by the auth service and rendered after the
/// gateway's.
#[derive(Debug, Default)]
pub struct AuthMetrics {
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

/// A label value as the exposition format wants it: `\\`, `"` and newlines escaped.
fn label_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
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
    fn auth_metrics_count_lock_refusals() {
        let metrics = AuthMetrics::default();
        metrics.login_locked_refusal();
        metrics.login_locked_refusal();
        let parsed = parse(&metrics.render());
        assert_eq!(parsed["portcullis_login_locked_refusals_total"], 2.0);
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
