//! Rate limits end to end (contract 4, "Rate limits"): small limits exact with a
//! `Retry-After` of at most the window, IPv6 clients counted per network, and the routes
//! that send mail limited per client and per recipient. Clients are told apart by the
//! `X-Forwarded-For` a trusted proxy (the loopback) appends.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::identity::{sql, unique_email, PASSWORD};
use crate::harness::{full, TestGateway, TestResponse};

const MINUTE: Duration = Duration::from_secs(60);

/// A gateway behind a trusted proxy on the loopback, with `configure`'s limits.
async fn behind_proxy(configure: impl FnOnce(&mut portcullis::config::Config)) -> TestGateway {
    TestGateway::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        configure(config);
    })
    .await
}

/// Three mails an hour to one inbox, per route (the default).
fn three_per_recipient(config: &mut portcullis::config::Config) {
    config.rate_limits.per_recipient =
        portcullis::config::RateLimit::new(3, Duration::from_secs(3600));
}

/// `POST path` with a JSON body, as sent by `client` through the trusted proxy.
async fn post_from(gateway: &TestGateway, client: &str, path: &str, body: &Value) -> TestResponse {
    let mut connection = gateway.h1().await;
    let request = connection
        .request("POST", path)
        .header("x-forwarded-for", client)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    connection.send_read(request).await
}

fn registration(email: &str) -> Value {
    json!({ "email": email, "password": PASSWORD, "name": "Limit Tester" })
}

/// Mail queued for `recipient` whose subject contains `subject`.
async fn mails_to(recipient: &str, subject: &str) -> i64 {
    let rows = sql(&format!(
        "SELECT count(*) FROM mail_outbox WHERE recipient = '{recipient}' AND subject ILIKE '%{subject}%'"
    ))
    .await;
    rows[0].get(0)
}

/// Three an hour, spread over it: each is admitted, the fourth is told to wait only until
/// the first leaves the window, and then is admitted.
#[tokio::test]
async fn a_small_limit_admits_a_spread_and_never_asks_for_more_than_the_window() {
    let gateway = behind_proxy(|config| {
        config.rate_limits.register =
            portcullis::config::RateLimit::new(3, Duration::from_secs(3600));
    })
    .await;
    let client = "203.0.113.50";
    // At 0, 20 and 40 minutes.
    for n in 0..3 {
        if n > 0 {
            gateway.clock.advance(20 * MINUTE);
        }
        let email = unique_email("spread");
        let response = post_from(&gateway, client, "/auth/register", &registration(&email)).await;
        assert_eq!(response.status, 201, "request {n}: {response:?}");
    }
    // At 50 minutes: the first (at 0) leaves the window in 10 minutes.
    gateway.clock.advance(10 * MINUTE);
    let over = post_from(
        &gateway,
        client,
        "/auth/register",
        &registration(&unique_email("spread")),
    )
    .await;
    assert_eq!(over.status, 429);
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (590..=600).contains(&retry),
        "Retry-After {retry}: until the first request leaves the window"
    );
    gateway.clock.advance(11 * MINUTE);
    let again = post_from(
        &gateway,
        client,
        "/auth/register",
        &registration(&unique_email("spread")),
    )
    .await;
    assert_eq!(again.status, 201, "{again:?}");
}

/// Addresses of one IPv6 /64 share a budget; another /64 has its own; an IPv4-mapped
/// address is its IPv4 address.
#[tokio::test]
async fn ipv6_clients_are_counted_per_64_by_default() {
    let gateway = behind_proxy(|config| {
        config.rate_limits.register =
            portcullis::config::RateLimit::new(2, Duration::from_secs(3600));
    })
    .await;
    let mut statuses = Vec::new();
    for client in [
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff::9",
        "2001:db8:1:2:abcd:1:2:3",
        "2001:db8:1:3::1",
        "::ffff:198.51.100.4",
        "198.51.100.4",
        "198.51.100.4",
    ] {
        let email = unique_email("ipv6");
        let response = post_from(&gateway, client, "/auth/register", &registration(&email)).await;
        statuses.push(response.status.as_u16());
    }
    assert_eq!(statuses, vec![201, 201, 429, 201, 201, 201, 429]);
}

/// Forwarded requests count IPv6 clients per /64 too.
#[tokio::test]
async fn ipv6_clients_of_forwarded_requests_are_counted_per_64() {
    let policy = r#"
version: 1
roles: [user, admin]
rate_limit: { requests: 2, per: 1m, key: ip }
rules:
  - name: everything
    paths: ["/**"]
    allow: public
"#;
    let (gateway, _) = TestGateway::with_policy(policy, |config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut statuses = Vec::new();
    for client in [
        "2001:db8:9::1",
        "2001:db8:9::2",
        "2001:db8:9::3",
        "2001:db8:a::1",
    ] {
        let mut connection = gateway.h1().await;
        let request = connection
            .request("GET", "/open")
            .header("x-forwarded-for", client)
            .body(crate::harness::empty())
            .unwrap();
        statuses.push(connection.send_read(request).await.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429, 200]);
}

/// `resend-verification` has the register limit, not the default one.
#[tokio::test]
async fn resend_verification_is_limited_like_register() {
    let gateway = behind_proxy(|config| {
        config.rate_limits.register =
            portcullis::config::RateLimit::new(3, Duration::from_secs(3600));
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        // A different address each time: the per-address limit is what refuses.
        let body = json!({ "email": unique_email("resend") });
        let response =
            post_from(&gateway, "203.0.113.60", "/auth/resend-verification", &body).await;
        statuses.push(response.status.as_u16());
    }
    assert_eq!(statuses, vec![202, 202, 202, 429]);
}

/// From many addresses, one inbox gets at most the per-recipient limit of reset mails; every
/// caller is answered 202 as the contract says, whether the mail went or not.
#[tokio::test]
async fn password_reset_mail_to_one_inbox_is_limited_whatever_the_client_address() {
    let gateway = behind_proxy(three_per_recipient).await;
    let account = gateway.signup("reset-bomb").await;
    for n in 0..6 {
        let response = post_from(
            &gateway,
            &format!("198.51.100.{}", 10 + n),
            "/auth/password-reset",
            &json!({ "email": account.email.to_uppercase() }),
        )
        .await;
        assert_eq!(response.status, 202, "{response:?}");
    }
    gateway.after_answer_settled().await;
    assert_eq!(mails_to(&account.email, "reset").await, 3);
    assert_eq!(gateway.metric("portcullis_mail_suppressed_total").await, 3);
    // An address with no account is answered the same way.
    let nobody = unique_email("reset-nobody");
    for n in 0..6 {
        let response = post_from(
            &gateway,
            &format!("198.51.100.{}", 30 + n),
            "/auth/password-reset",
            &json!({ "email": nobody }),
        )
        .await;
        assert_eq!(response.status, 202, "{response:?}");
    }
    assert_eq!(gateway.metric("portcullis_mail_suppressed_total").await, 6);
}

/// The same for verification mail: the one sent at registration, then three resends.
#[tokio::test]
async fn verification_mail_to_one_inbox_is_limited_whatever_the_client_address() {
    let gateway = behind_proxy(three_per_recipient).await;
    let email = unique_email("resend-bomb");
    let registered = post_from(
        &gateway,
        "198.51.100.50",
        "/auth/register",
        &registration(&email),
    )
    .await;
    assert_eq!(registered.status, 201, "{registered:?}");
    for n in 0..6 {
        let response = post_from(
            &gateway,
            &format!("198.51.100.{}", 60 + n),
            "/auth/resend-verification",
            &json!({ "email": email }),
        )
        .await;
        assert_eq!(response.status, 202, "{response:?}");
    }
    gateway.after_answer_settled().await;
    assert_eq!(mails_to(&email, "confirm").await, 1 + 3);
}

/// Registering one address from many clients: the first creates it, the next are told it
/// exists, and past the per-recipient limit the answer is 429 (registration already says
/// whether an address is taken, so the refusal gives nothing away).
#[tokio::test]
async fn registering_one_address_from_many_clients_is_limited_per_recipient() {
    let gateway = behind_proxy(three_per_recipient).await;
    let email = unique_email("register-bomb");
    let mut statuses = Vec::new();
    for n in 0..4 {
        let response = post_from(
            &gateway,
            &format!("198.51.100.{}", 80 + n),
            "/auth/register",
            &registration(&email),
        )
        .await;
        statuses.push(response.status.as_u16());
    }
    assert_eq!(statuses, vec![201, 409, 409, 429]);
}
