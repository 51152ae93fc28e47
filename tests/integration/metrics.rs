//! The ops `/metrics` an on-call engineer alerts on, read through the real ops listener:
//! requests by rule and code, refusals by reason, logins by outcome, lockouts, the mail
//! outbox backlog, the build and the process.

use crate::harness::identity::{unique_email, PASSWORD};
use crate::harness::TestGateway;

const POLICY: &str = r#"
version: 1
roles: [user, admin]
rate_limit: { requests: 1000, per: 1h, key: ip }
rules:
  - name: public pages
    paths: ["/public/**"]
    allow: public
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
"#;

fn by_rule(rule: &str, code: &str) -> String {
    format!("portcullis_http_requests_by_rule_total{{rule=\"{rule}\",code=\"{code}\"}}")
}

fn refusals(reason: &str) -> String {
    format!("portcullis_refusals_total{{reason=\"{reason}\"}}")
}

fn logins(outcome: &str) -> String {
    format!("portcullis_logins_total{{outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn requests_are_counted_by_rule_and_code_and_refusals_by_reason() {
    let (gateway, _) = TestGateway::with_policy(POLICY, |_| {}).await;
    let (_, user) = gateway.account_with_role("metrics-user", "user").await;
    let token = Some(user.access.as_str());

    assert_eq!(
        gateway.call("GET", "/public/a", None, None).await.status,
        200
    );
    assert_eq!(
        gateway.call("GET", "/public/b", None, None).await.status,
        200
    );
    assert_eq!(gateway.call("GET", "/page", None, None).await.status, 401);
    assert_eq!(
        gateway.call("GET", "/admin/x", None, token).await.status,
        403
    );
    assert_eq!(
        gateway
            .call("GET", "/page", None, Some("not.a.token"))
            .await
            .status,
        401
    );
    assert_eq!(gateway.call("BREW", "/page", None, None).await.status, 405);

    assert_eq!(gateway.metric(&by_rule("public pages", "200")).await, 2);
    assert_eq!(gateway.metric(&by_rule("signed-in users", "401")).await, 2);
    assert_eq!(gateway.metric(&by_rule("admin area", "403")).await, 1);
    assert_eq!(gateway.metric(&refusals("no_token")).await, 1);
    assert_eq!(gateway.metric(&refusals("bad_token")).await, 1);
    assert_eq!(gateway.metric(&refusals("role")).await, 1);
    assert_eq!(gateway.metric(&refusals("method")).await, 1);
    assert_eq!(gateway.metric(&refusals("permission")).await, 0);
    // The rate limit asked Redis, and how long it took is in the histogram.
    assert!(
        gateway
            .metric("portcullis_redis_duration_seconds_count{operation=\"gate_check\"}")
            .await
            > 0
    );
}

fn postgres(operation: &str) -> String {
    format!("portcullis_postgres_duration_seconds_count{{operation=\"{operation}\"}}")
}

fn redis(operation: &str) -> String {
    format!("portcullis_redis_duration_seconds_count{{operation=\"{operation}\"}}")
}

/// A series' value, 0 while it is absent: a latency histogram has a series only for the
/// operations that have run.
async fn count_or_zero(gateway: &TestGateway, key: &str) -> u64 {
    metrics_text(gateway)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Postgres and Redis latency by operation, after real work through the listeners: a login,
/// a failed one and a logout are in the histograms under the operations they ran, by fixed
/// names (never SQL or a key), each series a complete histogram.
#[tokio::test]
async fn postgres_and_redis_work_is_timed_by_operation() {
    let (gateway, _) = TestGateway::with_policy(POLICY, |config| {
        config.rate_limits.login_failures_per_client = Some(portcullis::config::RateLimit::new(
            100,
            std::time::Duration::from_secs(3600),
        ));
    })
    .await;
    let account = gateway.signup("metrics-timed").await;
    let before = count_or_zero(&gateway, &postgres("user_by_email")).await;
    let tokens = gateway.tokens(&account).await;
    assert_eq!(gateway.metric(&postgres("user_by_email")).await, before + 1);
    for operation in [
        "acquire",
        "begin",
        "lock_user_in_scope",
        "record_login_success",
        "create_session",
        "audit",
        "commit",
    ] {
        assert!(
            gateway.metric(&postgres(operation)).await > 0,
            "{operation}"
        );
    }
    assert_eq!(
        count_or_zero(&gateway, &postgres("record_login_failure")).await,
        0
    );
    assert_eq!(
        gateway
            .login(&account.email, "Wrong-Password-1")
            .await
            .status,
        401
    );
    assert_eq!(gateway.metric(&postgres("record_login_failure")).await, 1);
    let out = gateway
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(gateway.metric(&postgres("revoke_session")).await, 1);

    // The login's route limit, the failed-login log (a place taken for each attempt, given
    // back for the right password), the revocation the logout published.
    for operation in [
        "gate_check",
        "login_failures_take",
        "login_failures_give_back",
        "revocation_publish",
    ] {
        assert!(gateway.metric(&redis(operation)).await > 0, "{operation}");
    }
    assert_eq!(gateway.metric(&redis("login_failures_take")).await, 2);
    assert_eq!(gateway.metric(&redis("login_failures_give_back")).await, 1);

    let text = metrics_text(&gateway).await;
    for family in [
        "portcullis_postgres_duration_seconds",
        "portcullis_redis_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram\n")),
            "{text}"
        );
        // Each series: +Inf agrees with _count.
        for line in text
            .lines()
            .filter(|line| line.starts_with(&format!("{family}_count{{")))
        {
            let (key, count) = line.rsplit_once(' ').unwrap();
            let labels = key.strip_prefix(&format!("{family}_count{{")).unwrap();
            let labels = labels.strip_suffix('}').unwrap();
            let infinity = format!("{family}_bucket{{{labels},le=\"+Inf\"}} {count}");
            assert!(text.contains(&infinity), "{infinity} in\n{text}");
            assert!(
                labels.starts_with("operation=\"") && !labels.contains(' '),
                "{line}"
            );
        }
    }
}

/// Refusals the enforcement decides carry their reason to the counter: a revoked token, and
/// a login over its route's rate limit counted as a login too.
#[tokio::test]
async fn revoked_tokens_and_rate_limited_logins_are_counted_by_reason() {
    let (gateway, _) = TestGateway::with_policy(POLICY, |config| {
        config.rate_limits.login =
            portcullis::config::RateLimit::new(2, std::time::Duration::from_secs(3600));
    })
    .await;
    let account = gateway.signup("metrics-revoked").await;
    let tokens = gateway.tokens(&account).await;
    let out = gateway
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(
        gateway
            .call("GET", "/page", None, Some(&tokens.access))
            .await
            .status,
        401
    );
    assert_eq!(gateway.metric(&refusals("revoked")).await, 1);
    assert_eq!(gateway.metric(&refusals("bad_token")).await, 0);

    assert_eq!(gateway.login(&account.email, PASSWORD).await.status, 200);
    assert_eq!(gateway.login(&account.email, PASSWORD).await.status, 429);
    assert_eq!(gateway.metric(&logins("success")).await, 2);
    assert_eq!(gateway.metric(&logins("rate_limited")).await, 1);
}

#[tokio::test]
async fn logins_are_counted_by_outcome_and_lockouts_once() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("metrics-login").await;
    assert_eq!(gateway.login(&account.email, PASSWORD).await.status, 200);
    assert_eq!(gateway.metric(&logins("success")).await, 1);

    // The default lockout is 5 failures: 4 invalid, then the one that locks, then one
    // refused as locked.
    for _ in 0..6 {
        gateway.login(&account.email, "Wrong-Password-1").await;
    }
    assert_eq!(gateway.metric(&logins("invalid")).await, 4);
    assert_eq!(gateway.metric(&logins("locked")).await, 2);
    assert_eq!(gateway.metric("portcullis_lockouts_total").await, 1);

    let unverified = unique_email("metrics-unverified");
    assert_eq!(gateway.register(&unverified, PASSWORD).await.status, 201);
    gateway.login(&unverified, PASSWORD).await;
    assert_eq!(gateway.metric(&logins("unverified")).await, 1);
}

/// The outbox backlog with SMTP unreachable: the registration's mail waits, and the scrape
/// says so. The test has a database (and so an outbox) of its own.
#[tokio::test]
async fn the_outbox_backlog_shows_mail_that_cannot_leave() {
    let smtp = crate::harness::SmtpServer::start().await;
    let port = smtp.addr.port();
    smtp.stop();
    let database = crate::harness::isolated_database("metrics_outbox").await;
    let upstream = crate::harness::Upstream::start().await;
    let mut config = crate::harness::base_config(&upstream.url(), port);
    config.database.url = portcullis::config::Secret::new(database);
    let gateway = TestGateway::start_config(config, upstream).await;
    assert_eq!(gateway.metric("portcullis_mail_outbox_pending").await, 0);

    let email = unique_email("metrics-outbox");
    assert_eq!(gateway.register(&email, PASSWORD).await.status, 201);
    assert_eq!(gateway.metric("portcullis_mail_outbox_pending").await, 1);
    let text = metrics_text(&gateway).await;
    assert!(
        text.contains("\nportcullis_mail_outbox_oldest_age_seconds "),
        "{text}"
    );
}

#[tokio::test]
async fn build_info_and_process_metrics_are_present() {
    let gateway = TestGateway::start().await;
    let text = metrics_text(&gateway).await;
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!(
            "\nportcullis_build_info{{version=\"{version}\"}} 1\n"
        )),
        "{text}"
    );
    assert!(gateway.metric("process_resident_memory_bytes").await > 0);
    assert!(gateway.metric("process_open_fds").await > 0);
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert!(text.contains("\nprocess_start_time_seconds "), "{text}");
}

async fn metrics_text(gateway: &TestGateway) -> String {
    String::from_utf8(gateway.ops_get("/metrics").await.body.to_vec()).unwrap()
}
