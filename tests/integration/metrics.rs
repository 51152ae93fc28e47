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
            .metric("portcullis_redis_duration_seconds_count")
            .await
            > 0
    );
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
