//! The policy on forwarded requests, end to end through the real listener: identity
//! headers, 401 and 403 with the contract's details, revocation, rate limits in Redis shared
//! by instances, Redis outages, and live reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::identity::Tokens;
use crate::harness::outage::Relay;
use crate::harness::TestGateway;

/// The contract's example policy (config/policy.yaml is the same, with comments).
pub const CONTRACT_POLICY: &str = r#"
version: 1
roles: [user, manager, admin]
permissions:
  user:    ["read:*", "write:own"]
  manager: ["read:*", "write:project", "write:task"]
  admin:   ["*"]
rate_limit: { requests: 1000, per: 1h, key: ip }
rules:
  - name: public assets
    paths: ["/health", "/static/**"]
    methods: [GET, HEAD]
    allow: public
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: project writes
    paths: ["/projects/**"]
    methods: [POST, PUT, PATCH, DELETE]
    allow: { permission: "write:project" }
  - name: own profile
    paths: ["/users/{user_id}", "/users/{user_id}/**"]
    allow: { owner: user_id, or_role: admin }
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
    rate_limit: { requests: 100, per: 1m, key: user }
"#;

async fn status(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> crate::harness::TestResponse {
    gateway.call(method, path, None, token).await
}

#[tokio::test]
async fn the_contract_policy_decides_every_kind_of_rule() {
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |_| {}).await;
    let (user, user_tokens) = gateway.account_with_role("pol-user", "user").await;
    let (_, manager) = gateway.account_with_role("pol-manager", "manager").await;
    let (_, admin) = gateway.account_with_role("pol-admin", "admin").await;
    let other = format!("/users/{}", uuid_like());

    type Case<'a> = (&'a str, String, Option<&'a Tokens>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("GET", "/health".into(), None, 200, None),
        ("GET", "/static/app.js".into(), None, 200, None),
        (
            "POST",
            "/health".into(),
            None,
            401,
            Some("Not authenticated"),
        ),
        (
            "GET",
            "/admin/panel".into(),
            None,
            401,
            Some("Not authenticated"),
        ),
        (
            "GET",
            "/admin/panel".into(),
            Some(&user_tokens),
            403,
            Some("Requires admin role"),
        ),
        (
            "GET",
            "/admin/panel".into(),
            Some(&manager),
            403,
            Some("Requires admin role"),
        ),
        ("GET", "/admin/panel".into(), Some(&admin), 200, None),
        (
            "POST",
            "/projects/1".into(),
            Some(&user_tokens),
            403,
            Some("Missing permission: write:project"),
        ),
        ("POST", "/projects/1".into(), Some(&manager), 200, None),
        ("DELETE", "/projects/1".into(), Some(&admin), 200, None),
        ("GET", "/projects/1".into(), Some(&user_tokens), 200, None),
        (
            "GET",
            format!("/users/{}", user.id),
            Some(&user_tokens),
            200,
            None,
        ),
        (
            "PUT",
            format!("/users/{}/settings", user.id),
            Some(&user_tokens),
            200,
            None,
        ),
        (
            "GET",
            other.clone(),
            Some(&user_tokens),
            403,
            Some("Not the owner"),
        ),
        ("GET", other.clone(), Some(&admin), 200, None),
        (
            "GET",
            "/anything/else".into(),
            None,
            401,
            Some("Not authenticated"),
        ),
        (
            "GET",
            "/anything/else".into(),
            Some(&user_tokens),
            200,
            None,
        ),
    ];
    for (method, path, tokens, expected, detail) in cases {
        let response = status(
            &gateway,
            method,
            &path,
            tokens.map(|tokens| tokens.access.as_str()),
        )
        .await;
        assert_eq!(
            response.status, expected,
            "{method} {path} as {tokens:?}: {response:?}"
        );
        if let Some(detail) = detail {
            assert_eq!(response.detail(), detail, "{method} {path}");
        }
        // RFC 6750 §3: every 401 challenges for a bearer token in the gateway's realm (the
        // host of public_url); a 403 of a role or permission rule says the token's scope is
        // insufficient; the owner rule's 403 is no matter of privileges.
        let challenge = match (expected, detail) {
            (401, _) => Some("Bearer realm=\"gateway.test\""),
            (403, Some(detail))
                if detail.starts_with("Requires ") || detail.starts_with("Missing permission") =>
            {
                Some("Bearer realm=\"gateway.test\", error=\"insufficient_scope\"")
            }
            _ => None,
        };
        assert_eq!(
            response.header("www-authenticate"),
            challenge,
            "{method} {path}"
        );
    }
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}

#[tokio::test]
async fn identity_headers_are_set_by_the_gateway_alone() {
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |_| {}).await;
    let (account, tokens) = gateway.account_with_role("identity", "manager").await;
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/dashboard")
        .header("authorization", format!("Bearer {}", tokens.access))
        .header("x-auth-user-id", "forged")
        .header("X_Auth_Role", "admin")
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 200);
    let seen = gateway.upstream.last_seen();
    assert_eq!(seen.headers["x-auth-user-id"], account.id.as_str());
    assert_eq!(seen.headers["x-auth-email"], account.email.as_str());
    assert_eq!(seen.headers["x-auth-role"], "manager");
    assert!(seen.headers.get("x-auth-session-id").is_some());
    assert_eq!(seen.headers.get_all("x-auth-user-id").iter().count(), 1);
    assert!(!seen
        .headers
        .iter()
        .any(|(_, value)| value == "forged" || value == "admin"));

    // Public: a valid token still identifies; an invalid one is ignored.
    gateway
        .call("GET", "/health", None, Some(&tokens.access))
        .await;
    assert_eq!(
        gateway.upstream.last_seen().headers["x-auth-user-id"],
        account.id.as_str()
    );
    let invalid = gateway
        .call("GET", "/health", None, Some("not-a-token"))
        .await;
    assert_eq!(invalid.status, 200);
    assert!(gateway
        .upstream
        .last_seen()
        .headers
        .get("x-auth-user-id")
        .is_none());

    let refused = gateway
        .call("GET", "/dashboard", None, Some("not-a-token"))
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"gateway.test\", error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn a_logout_is_refused_on_the_next_forwarded_request_on_every_instance() {
    logout_on_one_instance_refused_on_the_next_request_on_another(true).await;
}

#[tokio::test]
async fn without_the_revocation_feed_a_logout_is_still_refused_on_the_next_request() {
    logout_on_one_instance_refused_on_the_next_request_on_another(false).await;
}

/// With the feed, both instances check tokens against their pushed copies (the logout
/// returns once both have it); without, against Redis on every request.
async fn logout_on_one_instance_refused_on_the_next_request_on_another(feed: bool) {
    let (first, policy) = TestGateway::with_policy(CONTRACT_POLICY, |config| {
        config.redis.revocation_feed = feed;
    })
    .await;
    let prefix = first.redis_prefix.clone();
    let second = TestGateway::start_with(|config| {
        config.policy.path = policy.clone();
        config.redis.key_prefix = prefix;
        config.redis.revocation_feed = feed;
    })
    .await;
    if feed {
        first.revocation_copy_trusted().await;
        second.revocation_copy_trusted().await;
    }
    let (_, tokens) = first.account_with_role("revoked", "user").await;
    assert_eq!(
        second
            .call("GET", "/dashboard", None, Some(&tokens.access))
            .await
            .status,
        200
    );
    assert_eq!(
        first
            .call("POST", "/auth/logout", None, Some(&tokens.access))
            .await
            .status,
        204
    );
    let refused = second
        .call("GET", "/dashboard", None, Some(&tokens.access))
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"gateway.test\", error=\"invalid_token\"")
    );
    // On a public rule the revoked token is just no token.
    let public = second
        .call("GET", "/health", None, Some(&tokens.access))
        .await;
    assert_eq!(public.status, 200);
    assert!(second
        .upstream
        .last_seen()
        .headers
        .get("x-auth-user-id")
        .is_none());
}

#[tokio::test]
async fn with_a_trusted_revocation_copy_signed_in_requests_do_not_wait_for_redis() {
    let policy = "version: 1\nroles: [user]\nrules:\n  - name: members\n    paths: [\"/**\"]\n    allow: authenticated\n";
    let (gateway, _) = TestGateway::with_policy(policy, |_| {}).await;
    let (_, tokens) = gateway.account_with_role("copy", "user").await;
    gateway.revocation_copy_trusted().await;
    assert_eq!(
        gateway.metric("portcullis_revocation_copy_trusted").await,
        1
    );
    let checks = gateway.metric("portcullis_redis_checks_total").await;
    for _ in 0..5 {
        let response = gateway
            .call("GET", "/members/page", None, Some(&tokens.access))
            .await;
        assert_eq!(response.status, 200);
    }
    assert_eq!(
        gateway.metric("portcullis_redis_checks_total").await,
        checks,
        "no rate limit, and revocation checked against the copy"
    );
    assert_eq!(
        gateway
            .call("POST", "/auth/logout", None, Some(&tokens.access))
            .await
            .status,
        204
    );
    let checks = gateway.metric("portcullis_redis_checks_total").await;
    assert_eq!(
        gateway
            .call("GET", "/members/page", None, Some(&tokens.access))
            .await
            .status,
        401
    );
    assert_eq!(
        gateway.metric("portcullis_redis_checks_total").await,
        checks
    );
}

const LIMITED_POLICY: &str = r#"
version: 1
roles: [user, admin]
rate_limit: { requests: 4, per: 1m, key: ip }
rules:
  - name: limited per user
    paths: ["/per-user/**"]
    allow: authenticated
    rate_limit: { requests: 3, per: 1m, key: user }
  - name: everything else
    paths: ["/**"]
    allow: public
"#;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_advertise_what_is_left() {
    let (gateway, _) = TestGateway::with_policy(LIMITED_POLICY, |_| {}).await;
    let (_, tokens) = gateway.account_with_role("limited", "user").await;
    for remaining in (0..3).rev() {
        let response = gateway
            .call("GET", "/per-user/x", None, Some(&tokens.access))
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            response.header("ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert!(
            response
                .header("ratelimit-reset")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                <= 60
        );
    }
    let over = gateway
        .call("GET", "/per-user/x", None, Some(&tokens.access))
        .await;
    assert_eq!(over.status, 429);
    assert_eq!(over.detail(), "Too many requests");
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    // Never more than the window (contract 4).
    assert!((1..=60).contains(&retry), "{retry}");

    // Anonymous callers share their address's default limit.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            gateway
                .call("GET", "/open", None, None)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429]);

    // The window slides: once Retry-After has passed there is room again.
    gateway.clock.advance(Duration::from_secs(retry));
    assert_eq!(
        gateway
            .call("GET", "/per-user/x", None, Some(&tokens.access))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_enforce_one_limit_together() {
    let policy = LIMITED_POLICY.replace("requests: 4, per: 1m", "requests: 10, per: 1m");
    let (first, path) = TestGateway::with_policy(&policy, |_| {}).await;
    let prefix = first.redis_prefix.clone();
    let second = TestGateway::start_with(|config| {
        config.policy.path = path.clone();
        config.redis.key_prefix = prefix;
    })
    .await;
    let both = Arc::new((first, second));
    let allowed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|index| {
            let both = both.clone();
            let allowed = allowed.clone();
            tokio::spawn(async move {
                let gateway = if index % 2 == 0 { &both.0 } else { &both.1 };
                if gateway.call("GET", "/shared", None, None).await.status == 200 {
                    allowed.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        allowed.load(Ordering::SeqCst),
        10,
        "20 requests across two instances, limit 10"
    );
    // Each request was one check; /metrics says how many round trips carried them.
    let mut checks = 0;
    for gateway in [&both.0, &both.1] {
        let metrics = gateway.ops_get("/metrics").await;
        let metrics = String::from_utf8_lossy(&metrics.body);
        let value = |name: &str| -> u64 {
            let line = metrics
                .lines()
                .find(|line| line.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in /metrics"));
            line[name.len() + 1..].parse().expect("a count")
        };
        let round_trips = value("portcullis_redis_round_trips_total");
        let sent = value("portcullis_redis_checks_total");
        // At most one for the checks and one to give back refused places, per check.
        assert!(
            (1..=2 * sent).contains(&round_trips),
            "{round_trips} for {sent}"
        );
        checks += sent;
    }
    assert_eq!(checks, 20);
}

#[tokio::test]
async fn the_auth_routes_have_their_own_limits() {
    let gateway = TestGateway::start_with(|config| {
        config.rate_limits.login = portcullis::config::RateLimit::new(5, Duration::from_secs(60));
        config.rate_limits.register =
            portcullis::config::RateLimit::new(3, Duration::from_secs(3600));
    })
    .await;
    let body = serde_json::json!({ "email": "nobody@example.com", "password": "Wrong-Password-1" });
    for _ in 0..5 {
        let response = gateway.post("/auth/login", body.clone()).await;
        assert_eq!(response.status, 401);
        assert!(response.header("ratelimit-remaining").is_some());
    }
    let limited = gateway.post("/auth/login", body).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    for expected in [201, 201, 201, 429] {
        let email = crate::harness::identity::unique_email("reg-limit");
        assert_eq!(
            gateway
                .register(&email, crate::harness::identity::PASSWORD)
                .await
                .status,
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_for_tokens_and_open_for_rate_limits() {
    let relay = Relay::start("127.0.0.1:6379".parse::<SocketAddr>().unwrap()).await;
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |config| {
        config.redis.url = portcullis::config::Secret::new(format!("redis://{}/", relay.addr));
        config.redis.timeout = Duration::from_millis(300);
    })
    .await;
    let (_, tokens) = gateway.account_with_role("redis-down", "user").await;
    assert_eq!(
        gateway
            .call("GET", "/dashboard", None, Some(&tokens.access))
            .await
            .status,
        200
    );

    relay.cut();
    let protected = gateway
        .call("GET", "/dashboard", None, Some(&tokens.access))
        .await;
    assert_eq!(
        protected.status, 503,
        "revocation cannot be checked: {protected:?}"
    );
    assert_eq!(protected.detail(), "Revocation service unavailable");
    let public = gateway
        .call("GET", "/health", None, Some(&tokens.access))
        .await;
    assert_eq!(public.status, 200, "public rules go on, anonymously");
    assert!(gateway
        .upstream
        .last_seen()
        .headers
        .get("x-auth-user-id")
        .is_none());
    let anonymous = gateway.call("GET", "/static/x.css", None, None).await;
    assert_eq!(anonymous.status, 200, "rate limits fail open by default");
    let metrics = String::from_utf8_lossy(&gateway.ops_get("/metrics").await.body).to_string();
    assert!(
        !metrics.contains("portcullis_redis_errors_total 0\n"),
        "{metrics}"
    );

    relay.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if gateway
            .call("GET", "/dashboard", None, Some(&tokens.access))
            .await
            .status
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered);
}

#[tokio::test]
async fn rate_limits_can_fail_closed_and_revocation_open() {
    let relay = Relay::start("127.0.0.1:6379".parse::<SocketAddr>().unwrap()).await;
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |config| {
        config.redis.url = portcullis::config::Secret::new(format!("redis://{}/", relay.addr));
        config.redis.timeout = Duration::from_millis(300);
        config.rate_limits.on_redis_error = portcullis::config::FailMode::Deny;
    })
    .await;
    relay.cut();
    let response = gateway.call("GET", "/health", None, None).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.detail(), "Rate limiter unavailable");
}

#[tokio::test]
async fn the_policy_defines_the_roles_the_auth_routes_use() {
    let policy = "version: 1
roles: [member, editor, admin, owner]
rules:
  - name: open
    paths: [\"/**\"]
    allow: public
";
    let (gateway, _) = TestGateway::with_policy(policy, |_| {}).await;
    let member = gateway.signup("roles-member").await;
    let login = gateway.login(&member.email, &member.password).await;
    assert_eq!(
        login.json()["user"]["role"],
        "member",
        "new users get the lowest role"
    );
    let (_, owner) = gateway.account_with_role("roles-owner", "owner").await;
    let listed = gateway
        .call(
            "GET",
            "/auth/admin/users?limit=1",
            None,
            Some(&owner.access),
        )
        .await;
    assert_eq!(
        listed.status, 200,
        "a role above admin reaches the admin API"
    );
    let path = format!("/auth/admin/users/{}", member.id);
    let promoted = gateway
        .call(
            "PATCH",
            &path,
            Some(serde_json::json!({ "role": "editor" })),
            Some(&owner.access),
        )
        .await;
    assert_eq!(promoted.json()["role"], "editor");
    let unknown = gateway
        .call(
            "PATCH",
            &path,
            Some(serde_json::json!({ "role": "manager" })),
            Some(&owner.access),
        )
        .await;
    assert_eq!(unknown.status, 422, "manager is not a role of this policy");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_limit() {
    let policy = LIMITED_POLICY.replace("requests: 4, per: 1m", "requests: 2, per: 1m");
    let (gateway, _) = TestGateway::with_policy(&policy, |config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut statuses = Vec::new();
    for client in [
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.2",
        "203.0.113.1",
    ] {
        let mut connection = gateway.h1().await;
        let request = connection
            .request("GET", "/open")
            // The proxy appended the address it saw; whatever the client claimed before it
            // (198.51.100.7) is not trusted.
            .header("x-forwarded-for", format!("198.51.100.7, {client}"))
            .body(crate::harness::empty())
            .unwrap();
        statuses.push(connection.send_read(request).await.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429]);
}

#[tokio::test]
async fn a_token_already_seen_on_forwarded_requests_still_expires() {
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |_| {}).await;
    let (_, tokens) = gateway.account_with_role("cached", "user").await;
    for _ in 0..3 {
        assert_eq!(
            gateway
                .call("GET", "/dashboard", None, Some(&tokens.access))
                .await
                .status,
            200
        );
    }
    gateway.clock.advance(Duration::from_secs(30 * 60));
    let expired = gateway
        .call("GET", "/dashboard", None, Some(&tokens.access))
        .await;
    assert_eq!(expired.status, 401);
    assert_eq!(
        expired.header("www-authenticate"),
        Some("Bearer realm=\"gateway.test\", error=\"invalid_token\"")
    );
}

/// A shadow rule (`mode: report`) never changes an answer; what it would have decided is
/// counted by rule and outcome in the ops `/metrics`.
#[tokio::test]
async fn shadow_rules_are_counted_but_never_decide() {
    const SHADOWED: &str = r#"
version: 1
roles: [user, admin]
rules:
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: reports for users
    paths: ["/admin/reports/**"]
    allow: { role: user }
    mode: report
  - name: close the rest
    paths: ["/**"]
    allow: { role: admin }
    mode: report
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
"#;
    let (gateway, _) = TestGateway::with_policy(SHADOWED, |_| {}).await;
    let (_, user) = gateway.account_with_role("shadow-user", "user").await;
    let token = Some(user.access.as_str());
    // Enforced: the admin area refuses the user, the rest lets them in, whatever the
    // shadow rules would say.
    assert_eq!(
        status(&gateway, "GET", "/admin/reports/q1", token)
            .await
            .status,
        403
    );
    assert_eq!(
        status(&gateway, "GET", "/admin/reports/q2", token)
            .await
            .status,
        403
    );
    assert_eq!(status(&gateway, "GET", "/page", token).await.status, 200);
    assert_eq!(status(&gateway, "GET", "/page", None).await.status, 401);
    let metric = |rule: &str, outcome: &str| {
        format!("portcullis_policy_shadow_decisions_total{{rule=\"{rule}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(
        gateway.metric(&metric("reports for users", "allow")).await,
        2
    );
    assert_eq!(gateway.metric(&metric("reports for users", "403")).await, 0);
    assert_eq!(gateway.metric(&metric("close the rest", "403")).await, 3);
    assert_eq!(gateway.metric(&metric("close the rest", "401")).await, 1);
    assert_eq!(gateway.metric(&metric("close the rest", "allow")).await, 0);
}
