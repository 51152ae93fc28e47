//! Revocation survives Redis losing its data: a Redis of the test's own (no persistence, like
//! the compose file's) is killed and started again empty, and every token revoked before
//! stays refused, on every instance sharing it, through the outage and after.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use portcullis::config::Secret;

use crate::harness::identity::{sql, Account, Tokens};
use crate::harness::TestGateway;

/// `/app/**` needs a signed-in caller, so a revoked token is a 401 there, not an anonymous
/// 200.
const MEMBERS_POLICY: &str = "version: 1
roles: [user, manager, admin]
rules:
  - name: members
    paths: [\"/app/**\"]
    allow: authenticated
";

/// A `redis-server` of this test's own, without persistence: killed, it comes back empty.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = OwnRedis { port, child };
        let client = redis::Client::open(redis.url()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers");
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it: everything it held is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty server on the same port.
    async fn restart_empty(&mut self) {
        self.kill();
        *self = OwnRedis::start_on(self.port).await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two instances sharing `redis` and one key prefix, enforcing [`MEMBERS_POLICY`].
async fn two_instances(redis: &OwnRedis) -> (TestGateway, TestGateway) {
    let url = redis.url();
    let (first, _) = TestGateway::with_policy(MEMBERS_POLICY, |config| {
        config.redis.url = Secret::new(url.clone());
        config.redis.timeout = Duration::from_millis(300);
    })
    .await;
    let prefix = first.redis_prefix.clone();
    let (second, _) = TestGateway::with_policy(MEMBERS_POLICY, |config| {
        config.redis.url = Secret::new(url);
        config.redis.timeout = Duration::from_millis(300);
        config.redis.key_prefix = prefix;
    })
    .await;
    first.revocation_copy_trusted().await;
    second.revocation_copy_trusted().await;
    (first, second)
}

async fn status(gateway: &TestGateway, token: &str) -> u16 {
    gateway
        .call("GET", "/app/page", None, Some(token))
        .await
        .status
        .as_u16()
}

/// Asks until `gateway` answers `token` with `wanted`, failing at once on a 200 (a revoked
/// token must never be let through, not even while Redis is away or being rebuilt).
async fn refused_until(gateway: &TestGateway, token: &str, wanted: u16, what: &str) {
    let mut last = 0;
    for _ in 0..200 {
        last = status(gateway, token).await;
        assert_ne!(last, 200, "{what}: a revoked token was let through");
        assert!(last == 401 || last == 503, "{what}: answered {last}");
        if last == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: never answered {wanted} (last {last})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_stays_refused_after_redis_restarts_empty() {
    let mut redis = OwnRedis::start().await;
    let (first, second) = two_instances(&redis).await;
    let account = first.signup("durable-logout").await;
    let tokens = first.tokens(&account).await;
    let kept = first.tokens(&account).await;
    assert_eq!(status(&first, &tokens.access).await, 200);
    assert_eq!(status(&second, &tokens.access).await, 200);

    let logout = first
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(logout.status, 204, "{logout:?}");
    assert_eq!(status(&first, &tokens.access).await, 401);
    assert_eq!(status(&second, &tokens.access).await, 401);

    redis.kill();
    for gateway in [&first, &second] {
        let answer = status(gateway, &tokens.access).await;
        assert!(
            answer == 401 || answer == 503,
            "Redis away: answered {answer}"
        );
    }
    redis.restart_empty().await;
    for (gateway, name) in [(&first, "first"), (&second, "second")] {
        refused_until(gateway, &tokens.access, 401, name).await;
    }
    // The rebuild restored what was revoked, nothing more: the other session goes on.
    for gateway in [&first, &second] {
        let mut answer = 0;
        for _ in 0..200 {
            answer = status(gateway, &kept.access).await;
            if answer == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(answer, 200, "a live session works again once rebuilt");
    }
}

/// An access token of the account whose session Postgres never ended (as a login racing a
/// password reset can leave): only the user's not-before time refuses it.
fn token_of_unended_session(account: &Account, tokens: &Tokens, seconds_earlier: u64) -> String {
    let payload = tokens.access.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let keys = portcullis::token::TokenKeys::load(
        portcullis::token::TokenSettings {
            issuer: claims["iss"].as_str().unwrap().to_string(),
            audience: claims["aud"].as_str().unwrap().to_string(),
            access_ttl: Duration::from_secs(1800),
            leeway: Duration::ZERO,
        },
        Some(b"test-secret-that-is-at-least-32-bytes-long"),
        &[],
        None,
    )
    .unwrap();
    let issued_at = claims["iat"].as_u64().unwrap() - seconds_earlier;
    keys.issue_access(
        &account.id,
        &account.email,
        claims["role"].as_str().unwrap(),
        &uuid::Uuid::new_v4().to_string(),
        issued_at,
    )
    .unwrap()
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_restores_not_before_times_as_well_as_ended_sessions() {
    let mut redis = OwnRedis::start().await;
    let (first, second) = two_instances(&redis).await;
    // One account ends every session with a logout-all (a not-before time and ended
    // sessions); another resets its password, which does the same through the email link.
    let all = first.signup("durable-all").await;
    let all_tokens = first.tokens(&all).await;
    let unended = token_of_unended_session(&all, &all_tokens, 5);
    assert_eq!(status(&second, &unended).await, 200, "a valid token");
    let logout_all = first
        .call(
            "POST",
            "/auth/logout",
            Some(serde_json::json!({ "all": true })),
            Some(&all_tokens.access),
        )
        .await;
    assert_eq!(logout_all.status, 204, "{logout_all:?}");
    let changed = first.signup("durable-change").await;
    let changed_tokens = first.tokens(&changed).await;
    let current = first.tokens(&changed).await;
    let change = first
        .call(
            "POST",
            "/auth/password-change",
            Some(serde_json::json!({
                "current_password": changed.password,
                "new_password": "Another-Horse-43",
            })),
            Some(&current.access),
        )
        .await;
    assert_eq!(change.status, 204, "{change:?}");
    for gateway in [&first, &second] {
        assert_eq!(
            status(gateway, &unended).await,
            401,
            "refused by not-before"
        );
        assert_eq!(status(gateway, &all_tokens.access).await, 401);
        assert_eq!(status(gateway, &changed_tokens.access).await, 401);
        assert_eq!(status(gateway, &current.access).await, 200);
    }
    // Postgres holds the record of both.
    let recorded = sql(&format!(
        "SELECT count(*) FROM sessions WHERE user_id = '{}' AND revoked_at IS NOT NULL",
        all.id
    ))
    .await;
    assert_eq!(recorded[0].get::<_, i64>(0), 1);

    redis.restart_empty().await;
    for (gateway, name) in [(&first, "first"), (&second, "second")] {
        refused_until(gateway, &unended, 401, name).await;
        refused_until(gateway, &all_tokens.access, 401, name).await;
        refused_until(gateway, &changed_tokens.access, 401, name).await;
    }
    assert_eq!(
        status(&first, &current.access).await,
        200,
        "kept its session"
    );
    let metrics = first.ops_get("/metrics").await;
    assert!(
        String::from_utf8_lossy(&metrics.body).contains("portcullis_revocation_rebuilds_total"),
        "{metrics:?}"
    );
}
