//! Dependency outages: Postgres or Redis away means a clear 503 on the routes that need
//! them and on readiness, and everything recovers by itself when they return.

use std::net::SocketAddr;

use serde_json::json;

use crate::harness::identity::{unique_email, PASSWORD};
use crate::harness::outage::Relay;
use crate::harness::{run_resources, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_is_503_and_recovers() {
    let relay = Relay::start("127.0.0.1:5432".parse::<SocketAddr>().unwrap()).await;
    let database = run_resources()
        .database_url
        .replace("127.0.0.1:5432", &relay.addr.to_string());
    let gateway = TestGateway::start_with(|config| {
        config.database.url = portcullis::config::Secret::new(database);
        config.database.connect_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let account = gateway.signup("pg-outage").await;

    relay.cut();
    let login = gateway.login(&account.email, PASSWORD).await;
    assert_eq!(login.status, 503, "{login:?}");
    assert_eq!(login.detail(), "Database unavailable");
    let register = gateway.register(&unique_email("during"), PASSWORD).await;
    assert_eq!(register.status, 503);
    let ready = gateway.ops_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["down"]
            .as_array()
            .unwrap()
            .contains(&json!("postgres")),
        "{ready:?}"
    );
    assert_eq!(
        gateway.get("/app/page").await.status,
        200,
        "forwarding does not need Postgres"
    );

    relay.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if gateway.login(&account.email, PASSWORD).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered, "logins work again once Postgres is back");
    assert_eq!(gateway.ops_get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_bearer_routes_with_503_and_recovers() {
    let relay = Relay::start("127.0.0.1:6379".parse::<SocketAddr>().unwrap()).await;
    let gateway = TestGateway::start_with(|config| {
        config.redis.url = portcullis::config::Secret::new(format!("redis://{}/", relay.addr));
        config.redis.timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let account = gateway.signup("redis-outage").await;
    let tokens = gateway.tokens(&account).await;

    relay.cut();
    // The pushed revocation copy stays trusted only while its subscription is up.
    gateway.revocation_copy_untrusted().await;
    let me = gateway
        .call("GET", "/auth/me", None, Some(&tokens.access))
        .await;
    assert_eq!(
        me.status, 503,
        "revocation cannot be checked: fail closed ({me:?})"
    );
    let logout = gateway
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(logout.status, 503);
    let ready = gateway.ops_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["down"]
            .as_array()
            .unwrap()
            .contains(&json!("redis")),
        "{ready:?}"
    );

    relay.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if gateway
            .call("GET", "/auth/me", None, Some(&tokens.access))
            .await
            .status
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered, "bearer routes work again once Redis is back");
    gateway.revocation_copy_trusted().await;
    assert_eq!(
        gateway
            .call("POST", "/auth/logout", None, Some(&tokens.access))
            .await
            .status,
        204,
        "the logout refused during the outage can be done now"
    );
}

#[tokio::test]
async fn revocation_can_be_configured_to_fail_open() {
    let relay = Relay::start("127.0.0.1:6379".parse::<SocketAddr>().unwrap()).await;
    let gateway = TestGateway::start_with(|config| {
        config.redis.url = portcullis::config::Secret::new(format!("redis://{}/", relay.addr));
        config.redis.timeout = std::time::Duration::from_millis(300);
        config.rate_limits.revocation_on_redis_error = portcullis::config::FailMode::Allow;
    })
    .await;
    let account = gateway.signup("fail-open").await;
    let tokens = gateway.tokens(&account).await;
    relay.cut();
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&tokens.access))
            .await
            .status,
        200
    );
}
