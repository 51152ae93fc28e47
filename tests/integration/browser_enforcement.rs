//! Browser sign-in on the proxy side (contract 7), end to end over TLS: anonymous navigations
//! are sent to sign in, everyone else keeps the 401 JSON; the session cookies never reach
//! the upstream; cookie-authenticated unsafe requests must come from the gateway's own or an
//! allowed origin; and an expired access cookie is renewed from the refresh cookie in the
//! same round trip, without tripping reuse detection when requests race.

use crate::harness::identity::Tokens;
use crate::harness::{empty, TestGateway, TestResponse};
use crate::websocket::{echoes, open};

/// What Firefox sends for a navigation.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const ACCESS: &str = "__Host-portcullis-access";
const REFRESH: &str = "__Host-portcullis-refresh";

pub const BROWSER_POLICY: &str = r#"
version: 1
roles: [user, admin]
rules:
  - name: assets
    paths: ["/static/**"]
    allow: public
  - name: api
    paths: ["/api/**"]
    allow: authenticated
    on_unauthenticated: deny
  - name: sockets
    paths: ["/ws", "/ws/**"]
    allow: authenticated
  - name: app
    paths: ["/**"]
    allow: authenticated
"#;

/// One request on a fresh HTTP/1.1 connection, with the given headers.
async fn send(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    let mut client = gateway.h1().await;
    let mut request = client.request(method, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send_read(request.body(empty()).unwrap()).await
}

/// The `Cookie` header of a browser holding both session cookies, and another cookie of
/// the application's.
fn session_cookie(tokens: &Tokens) -> String {
    format!(
        "theme=dark; {ACCESS}={}; {REFRESH}={}",
        tokens.access, tokens.refresh
    )
}

#[tokio::test]
async fn an_anonymous_navigation_is_sent_to_sign_in_and_everyone_else_gets_401() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |_| {}).await;

    // The query is kept, and the whole target is one encoded `rd` value.
    let navigation = send(
        &gateway,
        "GET",
        "/reports/2026?year=2026&q=a%20b",
        &[("accept", BROWSER_ACCEPT)],
    )
    .await;
    assert_eq!(navigation.status, 302, "{navigation:?}");
    assert_eq!(
        navigation.header("location"),
        Some("/auth/login?rd=/reports/2026%3Fyear%3D2026%26q%3Da%2520b")
    );
    assert_eq!(navigation.header("cache-control"), Some("no-store"));
    // The path is the normalised one, as judged.
    let dotted = send(
        &gateway,
        "HEAD",
        "/a/./b/../c//d",
        &[("accept", BROWSER_ACCEPT)],
    )
    .await;
    assert_eq!(dotted.status, 302, "{dotted:?}");
    assert_eq!(dotted.header("location"), Some("/auth/login?rd=/a/c/d"));

    // Scripts, API clients, curl, unsafe methods and a sent Authorization keep the 401.
    let not_browsers: [(&str, &[(&str, &str)]); 5] = [
        ("GET", &[("accept", "application/json")]),
        ("GET", &[("accept", "*/*")]),
        ("GET", &[]),
        ("POST", &[("accept", BROWSER_ACCEPT)]),
        (
            "GET",
            &[
                ("accept", BROWSER_ACCEPT),
                ("authorization", "Bearer forged"),
            ],
        ),
    ];
    for (method, headers) in not_browsers {
        let response = send(&gateway, method, "/reports", headers).await;
        assert_eq!(response.status, 401, "{method} {headers:?}: {response:?}");
        assert!(response.header("location").is_none());
        assert!(response.detail().contains("authenticated") || response.detail().contains("token"));
    }

    // A rule that says `on_unauthenticated: deny` keeps the 401 for browsers too.
    let api = send(&gateway, "GET", "/api/items", &[("accept", BROWSER_ACCEPT)]).await;
    assert_eq!(api.status, 401, "{api:?}");
    assert_eq!(api.detail(), "Not authenticated");

    // An expired or forged access cookie without a refresh cookie is no token: sign in.
    let forged = format!("{ACCESS}=not.a.token");
    let stale = send(
        &gateway,
        "GET",
        "/home",
        &[("accept", BROWSER_ACCEPT), ("cookie", &forged)],
    )
    .await;
    assert_eq!(stale.status, 302, "{stale:?}");

    // Public paths are forwarded, to browsers too.
    let asset = send(
        &gateway,
        "GET",
        "/static/app.css",
        &[("accept", BROWSER_ACCEPT)],
    )
    .await;
    assert_eq!(asset.status, 200, "{asset:?}");
    assert_eq!(
        gateway.upstream.seen_count(),
        1,
        "only the public request reached the upstream"
    );
}

#[tokio::test]
async fn the_session_cookies_never_reach_the_upstream() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |_| {}).await;
    let account = gateway.signup("cookie-strip").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);

    // Authenticated by the cookie, anonymous on a public path, and with a bearer token.
    let bearer = format!("Bearer {}", tokens.access);
    let requests: [(&str, Vec<(&str, &str)>); 3] = [
        ("/home", vec![("cookie", cookie.as_str())]),
        ("/static/x.js", vec![("cookie", cookie.as_str())]),
        (
            "/home",
            vec![
                ("cookie", cookie.as_str()),
                ("authorization", bearer.as_str()),
            ],
        ),
    ];
    for (path, headers) in &requests {
        let response = send(&gateway, "GET", path, headers).await;
        assert_eq!(response.status, 200, "{path}: {response:?}");
        let seen = gateway.upstream.last_seen();
        let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theme=dark"], "{path}");
    }
    assert_eq!(
        gateway.upstream.last_seen().headers["x-auth-user-id"],
        account.id.as_str()
    );

    // Only session cookies: no `Cookie` header at all.
    let only = format!("{ACCESS}={}", tokens.access);
    let response = send(&gateway, "GET", "/home", &[("cookie", &only)]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(gateway.upstream.last_seen().headers.get("cookie").is_none());

    // A WebSocket upgrade authenticated by the cookie, from the gateway's own page.
    let mut socket = open(
        &gateway,
        "/ws",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "https://gateway.test:8443"),
        ],
    )
    .await
    .unwrap_or_else(|status| panic!("refused with {status}"));
    echoes(&mut socket, "hello").await;
    let seen = gateway.upstream.last_seen();
    assert_eq!(seen.target, "/ws");
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["theme=dark"]);
    assert_eq!(seen.headers["x-auth-user-id"], account.id.as_str());
}

#[tokio::test]
async fn a_cross_site_request_on_the_cookie_is_refused_and_a_same_origin_one_passes() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.cors.allowed_origins = vec!["https://app.example.com".to_string()];
    })
    .await;
    let account = gateway.signup("csrf").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);

    let refused: [&[(&str, &str)]; 5] = [
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
        // A sibling subdomain is same-site, not same-origin.
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://blog.gateway.test"),
        ],
        &[("origin", "null")],
        &[("origin", "https://gateway.test")],
        &[],
    ];
    for headers in refused {
        for method in ["POST", "DELETE"] {
            let mut sent = vec![("cookie", cookie.as_str())];
            sent.extend_from_slice(headers);
            let response = send(&gateway, method, "/orders", &sent).await;
            assert_eq!(response.status, 403, "{method} {headers:?}: {response:?}");
            assert_eq!(response.detail(), "Cross-site request refused");
        }
    }
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "nothing refused was forwarded"
    );

    let passed: [&[(&str, &str)]; 4] = [
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://gateway.test:8443"),
        ],
        &[("origin", "HTTPS://GATEWAY.TEST:8443")],
        &[("sec-fetch-site", "none")],
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://app.example.com"),
        ],
    ];
    for headers in passed {
        let mut sent = vec![("cookie", cookie.as_str())];
        sent.extend_from_slice(headers);
        let response = send(&gateway, "POST", "/orders", &sent).await;
        assert_eq!(response.status, 200, "{headers:?}: {response:?}");
        assert_eq!(
            gateway.upstream.last_seen().headers["x-auth-user-id"],
            account.id.as_str()
        );
    }

    // A token a script had to set is no cookie: no origin check. A cross-site GET changes
    // nothing and is not checked either.
    let bearer = format!("Bearer {}", tokens.access);
    let scripted = send(
        &gateway,
        "POST",
        "/orders",
        &[
            ("authorization", &bearer),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(scripted.status, 200, "{scripted:?}");
    let read = send(
        &gateway,
        "GET",
        "/orders",
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(read.status, 200, "{read:?}");
}
