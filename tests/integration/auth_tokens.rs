//! Bearer tokens as an attacker would present them, and the published documents.

use base64::Engine;
use serde_json::json;

use crate::harness::identity::token_claims;
use crate::harness::TestGateway;

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn forged_and_misplaced_tokens_are_refused() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("forger").await;
    let tokens = gateway.tokens(&account).await;
    let claims = token_claims(&tokens.access);
    for claim in [
        "sub", "email", "role", "sid", "jti", "iat", "exp", "iss", "aud", "type",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    assert_eq!(claims["type"], "access");

    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&admin_claims)
    );
    let signature = tokens.access.split('.').nth(2).unwrap();
    let tampered = format!(
        "{}.{}.{}",
        tokens.access.split('.').next().unwrap(),
        b64(&admin_claims),
        signature
    );
    let with_jwk = format!(
        "{}.{}.{}",
        b64(&json!({ "alg": "HS256", "typ": "JWT", "jwk": { "kty": "oct", "k": "AAAA" } })),
        b64(&claims),
        signature
    );
    let cases = [
        ("alg none", unsigned),
        ("tampered payload", tampered),
        ("embedded jwk", with_jwk),
        ("refresh token as bearer", tokens.refresh.clone()),
        ("garbage", "not.a.token".to_string()),
    ];
    for (name, token) in cases {
        let response = gateway.call("GET", "/auth/me", None, Some(&token)).await;
        assert_eq!(response.status, 401, "{name}");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"gateway.test\", error=\"invalid_token\""),
            "{name}"
        );
    }

    let in_query = gateway
        .call(
            "GET",
            &format!("/auth/me?access_token={}", tokens.access),
            None,
            None,
        )
        .await;
    assert_eq!(
        in_query.status, 401,
        "tokens are never taken from the query string"
    );
    assert_eq!(in_query.detail(), "Not authenticated");

    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/auth/me")
        .header("authorization", format!("Basic {}", tokens.access))
        .body(crate::harness::empty())
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 401);
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let other = TestGateway::start_with(|config| {
        config.tokens.hs256_secret = Some(portcullis::config::Secret::new(
            "another-secret-that-is-also-32-bytes-long",
        ));
    })
    .await;
    let account = other.signup("elsewhere").await;
    let foreign = other.tokens(&account).await;
    let gateway = TestGateway::start().await;
    assert_eq!(
        gateway
            .call("GET", "/auth/me", None, Some(&foreign.access))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn cookie_mode_accepts_the_access_cookie() {
    let gateway = TestGateway::start_with(|config| config.tokens.cookie.enabled = true).await;
    let account = gateway.signup("cookie").await;
    let login = gateway.login(&account.email, &account.password).await;
    let cookies: Vec<&str> = login
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies.len(),
        2,
        "cookie mode sets both session cookies: {cookies:?}"
    );
    for cookie in &cookies {
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("Secure")
                && cookie.contains("SameSite=Lax")
                && cookie.contains("Path=/"),
            "{cookie}"
        );
    }
    let body = login.json();
    let refresh_cookie = cookies
        .iter()
        .find(|cookie| cookie.starts_with("__Host-portcullis-refresh="))
        .expect("the refresh cookie");
    assert!(refresh_cookie.starts_with(&format!(
        "__Host-portcullis-refresh={};",
        body["refresh_token"].as_str().unwrap()
    )));
    let cookie = cookies
        .iter()
        .find(|cookie| cookie.starts_with("__Host-portcullis-access="))
        .expect("the access cookie");
    let pair = cookie.split(';').next().unwrap();
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/auth/me")
        .header("cookie", format!("theme=dark; {pair}"))
        .body(crate::harness::empty())
        .unwrap();
    assert_eq!(client.send_read(request).await.status, 200);

    let without = TestGateway::start_with(|config| config.tokens.cookie.enabled = false).await;
    let mut client = without.h1().await;
    let request = client
        .request("GET", "/auth/me")
        .header("cookie", pair)
        .body(crate::harness::empty())
        .unwrap();
    assert_eq!(
        client.send_read(request).await.status,
        401,
        "cookies are ignored unless cookie mode is on"
    );
}

#[tokio::test]
async fn openapi_documents_every_route_and_jwks_is_empty_for_hs256() {
    let gateway = TestGateway::start().await;
    let openapi = gateway.get("/auth/openapi.json").await;
    assert_eq!(openapi.status, 200);
    let document = openapi.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("post", "/auth/register"),
        ("post", "/auth/verify-email"),
        ("post", "/auth/resend-verification"),
        ("post", "/auth/login"),
        ("post", "/auth/refresh"),
        ("post", "/auth/logout"),
        ("post", "/auth/password-reset"),
        ("post", "/auth/password-reset/confirm"),
        ("post", "/auth/password-change"),
        ("get", "/auth/me"),
        ("get", "/auth/sessions"),
        ("delete", "/auth/sessions/{id}"),
        ("get", "/auth/admin/users"),
        ("get", "/auth/admin/users/{id}"),
        ("patch", "/auth/admin/users/{id}"),
        ("post", "/auth/admin/users/{id}/unlock"),
        ("get", "/auth/admin/audit"),
        ("get", "/auth/openapi.json"),
        ("get", "/.well-known/jwks.json"),
    ];
    for (method, path) in routes {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path}"
        );
    }
    let jwks = gateway.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json(), json!({ "keys": [] }));
}

#[tokio::test]
async fn unknown_auth_routes_are_404_and_wrong_methods_405() {
    let gateway = TestGateway::start().await;
    let unknown = gateway.get("/auth/unknown").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.detail(), "Not found");
    // GET /auth/login is the sign-in page (contract 7); /auth/refresh is POST only.
    let wrong = gateway.get("/auth/refresh").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "/auth never reaches the upstream"
    );
}
