//! `WWW-Authenticate` through the real listener (RFC 6750 §3): every 401 of the gateway's
//! own challenges for a bearer token in the configured realm, with `error="invalid_token"`
//! when the token sent was refused; a 403 of a role or permission requirement says
//! `error="insufficient_scope"`; other 403s carry no challenge. Statuses and bodies stay the
//! contract's.

use crate::enforcement::CONTRACT_POLICY;
use crate::harness::TestGateway;

#[tokio::test]
async fn refusals_name_the_configured_realm_and_why() {
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |config| {
        config.tokens.realm = Some("Example API".into());
    })
    .await;
    let (account, user) = gateway.account_with_role("challenge-user", "user").await;
    let bearer = "Bearer realm=\"Example API\"";
    let invalid = "Bearer realm=\"Example API\", error=\"invalid_token\"";
    let scope = "Bearer realm=\"Example API\", error=\"insufficient_scope\"";
    let other_user = "/users/00000000-0000-4000-8000-000000000000";

    // (method, path, token, status, detail, WWW-Authenticate)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        // Forwarded requests, judged by the policy.
        (
            "GET",
            "/dashboard",
            None,
            401,
            "Not authenticated",
            Some(bearer),
        ),
        (
            "GET",
            "/dashboard",
            Some("not-a-token"),
            401,
            "Invalid or expired token",
            Some(invalid),
        ),
        (
            "GET",
            "/admin/panel",
            Some(&user.access),
            403,
            "Requires admin role",
            Some(scope),
        ),
        (
            "POST",
            "/projects/1",
            Some(&user.access),
            403,
            "Missing permission: write:project",
            Some(scope),
        ),
        (
            "GET",
            other_user,
            Some(&user.access),
            403,
            "Not the owner",
            None,
        ),
        // The gateway's own routes.
        (
            "GET",
            "/auth/me",
            None,
            401,
            "Not authenticated",
            Some(bearer),
        ),
        (
            "GET",
            "/auth/me",
            Some("not-a-token"),
            401,
            "Invalid or expired token",
            Some(invalid),
        ),
        (
            "GET",
            "/auth/admin/users",
            Some(&user.access),
            403,
            "Requires admin role",
            Some(scope),
        ),
    ];
    for (method, path, token, status, detail, challenge) in cases {
        let response = gateway.call(method, path, None, token).await;
        assert_eq!(response.status, status, "{method} {path}: {response:?}");
        assert_eq!(response.detail(), detail, "{method} {path}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(
            response.header("www-authenticate"),
            challenge,
            "{method} {path}"
        );
    }

    // A failed login is a 401 too: a bearer challenge, no error (no token was sent).
    let login = gateway.login(&account.email, "Wrong-Password-1").await;
    assert_eq!(login.status, 401);
    assert_eq!(login.detail(), "Invalid email or password");
    assert_eq!(login.header("www-authenticate"), Some(bearer));
    // What is allowed carries no challenge.
    let me = gateway
        .call("GET", "/auth/me", None, Some(&user.access))
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.header("www-authenticate"), None);
}

#[tokio::test]
async fn the_realm_defaults_to_the_public_host() {
    let (gateway, _) = TestGateway::with_policy(CONTRACT_POLICY, |config| {
        config.server.public_url = "https://Portal.Example:8443".into();
        config.server.hosts = vec![
            "gateway.test".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
    })
    .await;
    let refused = gateway.call("GET", "/dashboard", None, None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"portal.example\"")
    );
}
