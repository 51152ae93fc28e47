//! Browser sign-in on the proxy side (contract 7), end to end over TLS: anonymous navigations
//! are sent to sign in, everyone else keeps the 401 JSON; the session cookies never reach
//! the upstream; cookie-authenticated unsafe requests must come from the gateway's own or an
//! allowed origin; and an expired access cookie is renewed from the refresh cookie in the
//! same round trip, without tripping reuse detection when requests race.

use crate::harness::identity::{session_id, Tokens};
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
  - name: console
    paths: ["/console/**"]
    allow: { role: admin }
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

    // The same over HTTP/2.
    let mut h2 = gateway.h2().await;
    let request = h2
        .request("GET", "/reports?x=1")
        .header("accept", BROWSER_ACCEPT)
        .body(empty())
        .unwrap();
    let over_h2 = h2.send_read(request).await;
    assert_eq!(over_h2.status, 302, "{over_h2:?}");
    assert_eq!(
        over_h2.header("location"),
        Some("/auth/login?rd=/reports%3Fx%3D1")
    );

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
    // The sign-in forms' nonce is the gateway's own cookie too.
    let cookie = format!("{}; __Host-portcullis-csrf=nonce", session_cookie(&tokens));

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

/// The value a response's `Set-Cookie` gives cookie `name`, if it sets it.
/// The gateway's own bearer routes take the access cookie too, and so the same cross-site
/// check: another site's page cannot log a signed-in browser out or change its password.
#[tokio::test]
async fn the_auth_routes_refuse_a_cross_site_request_on_the_cookie() {
    let gateway = TestGateway::start().await;
    let account = gateway.signup("auth-csrf").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);
    let change = format!(
        r#"{{"current_password":"{}","new_password":"Another-Secret-77"}}"#,
        account.password
    );
    for (method, path, body) in [
        ("POST", "/auth/logout", "{}".to_string()),
        ("POST", "/auth/password-change", change.clone()),
    ] {
        let mut client = gateway.h1().await;
        let request = client
            .request(method, path)
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .header("sec-fetch-site", "cross-site")
            .header("origin", "https://evil.example")
            .body(crate::harness::full(body))
            .unwrap();
        let response = client.send_read(request).await;
        assert_eq!(response.status, 403, "{path}: {response:?}");
        assert_eq!(response.detail(), "Cross-site request refused");
    }
    // Nothing changed: the session still works, and the same request from the gateway's
    // own origin goes through.
    let me = send(&gateway, "GET", "/auth/me", &[("cookie", &cookie)]).await;
    assert_eq!(me.status, 200, "{me:?}");
    let mut client = gateway.h1().await;
    let request = client
        .request("POST", "/auth/logout")
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .header("origin", "https://gateway.test:8443")
        .body(crate::harness::full("{}"))
        .unwrap();
    let response = client.send_read(request).await;
    assert!(response.status.is_success(), "{response:?}");
    let me = send(&gateway, "GET", "/auth/me", &[("cookie", &cookie)]).await;
    assert_eq!(me.status, 401, "logged out: {me:?}");
}

/// A renewal stands in for `POST /auth/refresh` and is counted like it: a client sending
/// refresh cookies that are no good is stopped by the limit before each costs a Postgres
/// query.
#[tokio::test]
async fn renewals_are_counted_against_the_refresh_routes_limit() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.rate_limits.default =
            portcullis::config::RateLimit::new(2, std::time::Duration::from_secs(3600));
    })
    .await;
    let garbage = format!("{REFRESH}=not-a-refresh-token");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = send(
            &gateway,
            "GET",
            "/orders",
            &[("accept", "application/json"), ("cookie", &garbage)],
        )
        .await;
        statuses.push(response.status.as_u16());
        if response.status == 429 {
            assert!(response.header("retry-after").is_some(), "{response:?}");
            assert!(
                set_cookie(&response, REFRESH).is_none(),
                "a refusal before trying leaves the cookies alone: {response:?}"
            );
        } else {
            assert_eq!(
                set_cookie(&response, REFRESH),
                Some(""),
                "a refused token is cleared: {response:?}"
            );
        }
    }
    assert_eq!(statuses, [401, 401, 429]);
    assert_eq!(gateway.upstream.seen_count(), 0);
}

fn set_cookie<'r>(response: &'r TestResponse, name: &str) -> Option<&'r str> {
    response
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .find_map(|cookie| cookie.strip_prefix(name)?.strip_prefix('='))
        .map(|rest| rest.split(';').next().unwrap())
}

const GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Past the 30-minute access token.
const EXPIRY: std::time::Duration = std::time::Duration::from_secs(31 * 60);

async fn session_revoked(session_id: &str) -> Option<String> {
    let rows = crate::harness::identity::sql(&format!(
        "SELECT revoked_reason FROM sessions WHERE id = '{session_id}'"
    ))
    .await;
    rows[0].get(0)
}

#[tokio::test]
async fn an_expired_access_cookie_is_renewed_from_the_refresh_cookie_in_the_same_round_trip() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.tokens.refresh_reuse_grace = GRACE;
    })
    .await;
    let account = gateway.signup("silent-refresh").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);
    gateway.clock.advance(EXPIRY);

    let renewed = send(
        &gateway,
        "GET",
        "/home",
        &[("accept", BROWSER_ACCEPT), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let seen = gateway.upstream.last_seen();
    assert_eq!(seen.headers["x-auth-user-id"], account.id.as_str());
    assert_eq!(
        seen.headers["x-auth-session-id"],
        session_id(&tokens.access).as_str()
    );
    assert_eq!(
        seen.headers.get_all("cookie").iter().collect::<Vec<_>>(),
        ["theme=dark"]
    );
    let access = set_cookie(&renewed, ACCESS)
        .expect("a new access cookie")
        .to_string();
    let refresh = set_cookie(&renewed, REFRESH)
        .expect("a new refresh cookie")
        .to_string();
    assert_ne!(access, tokens.access);
    assert_ne!(refresh, tokens.refresh, "the refresh token was rotated");
    for value in renewed.headers.get_all("set-cookie") {
        let value = value.to_str().unwrap();
        assert!(
            value.contains("; Path=/;") && value.contains("; Secure; HttpOnly; SameSite=Lax"),
            "{value}"
        );
    }
    assert_eq!(renewed.header("cache-control"), Some("no-store"));

    // The new cookies work on their own, without another renewal.
    let next = Tokens { access, refresh };
    let again = send(
        &gateway,
        "GET",
        "/home",
        &[("cookie", &session_cookie(&next))],
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.headers.get("set-cookie").is_none(), "{again:?}");

    // The renewal's cookies go on whatever the answer is: here a 403 for the renewed user.
    // Without them the browser would keep a spent refresh token.
    gateway.clock.advance(EXPIRY);
    let forbidden = send(
        &gateway,
        "GET",
        "/console/users",
        &[
            ("accept", BROWSER_ACCEPT),
            ("cookie", &session_cookie(&next)),
        ],
    )
    .await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    assert_eq!(forbidden.detail(), "Requires admin role");
    let next = Tokens {
        access: set_cookie(&forbidden, ACCESS).expect("renewed").to_string(),
        refresh: set_cookie(&forbidden, REFRESH)
            .expect("rotated")
            .to_string(),
    };

    // A public path with an expired cookie goes on anonymously and renews nothing.
    gateway.clock.advance(EXPIRY);
    let asset = send(
        &gateway,
        "GET",
        "/static/a.css",
        &[("cookie", &session_cookie(&next))],
    )
    .await;
    assert_eq!(asset.status, 200, "{asset:?}");
    assert!(asset.headers.get("set-cookie").is_none(), "{asset:?}");
    assert!(gateway
        .upstream
        .last_seen()
        .headers
        .get("x-auth-user-id")
        .is_none());

    // A refresh cookie that is no good: the request is anonymous (sign in), and the
    // browser is told to drop both cookies.
    let forged = format!("{ACCESS}=expired.or.forged; {REFRESH}=not-a-refresh-token");
    let refused = send(
        &gateway,
        "GET",
        "/home",
        &[("accept", BROWSER_ACCEPT), ("cookie", &forged)],
    )
    .await;
    assert_eq!(refused.status, 302, "{refused:?}");
    assert_eq!(set_cookie(&refused, ACCESS), Some(""));
    assert_eq!(set_cookie(&refused, REFRESH), Some(""));
    let api = send(&gateway, "GET", "/api/x", &[("cookie", &forged)]).await;
    assert_eq!(api.status, 401, "{api:?}");
    assert_eq!(set_cookie(&api, REFRESH), Some(""));

    // A cross-site POST never renews a session (it would be refused anyway).
    let cross = send(
        &gateway,
        "POST",
        "/orders",
        &[
            ("cookie", &session_cookie(&next)),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(cross.status, 401, "{cross:?}");
    assert!(cross.headers.get("set-cookie").is_none(), "{cross:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_on_one_expired_cookie_all_pass_and_keep_the_session() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.tokens.refresh_reuse_grace = GRACE;
    })
    .await;
    let account = gateway.signup("refresh-race").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);
    gateway.clock.advance(EXPIRY);

    let request = |path: &'static str| {
        let gateway = &gateway;
        let cookie = cookie.clone();
        async move {
            send(
                gateway,
                "GET",
                path,
                &[("accept", BROWSER_ACCEPT), ("cookie", &cookie)],
            )
            .await
        }
    };
    let (first, second, third) = tokio::join!(request("/a"), request("/b"), request("/c"));
    for response in [&first, &second, &third] {
        assert_eq!(response.status, 200, "{response:?}");
        assert!(set_cookie(response, ACCESS).is_some(), "{response:?}");
    }
    // Exactly one rotated; the others were within the grace and set the access cookie alone.
    let rotated: Vec<_> = [&first, &second, &third]
        .iter()
        .filter_map(|response| set_cookie(response, REFRESH))
        .collect();
    assert_eq!(rotated.len(), 1, "{first:?} {second:?} {third:?}");
    assert_eq!(session_revoked(&session_id(&tokens.access)).await, None);

    // Within the grace, once more after the race: still the same live session.
    let late = request("/d").await;
    assert_eq!(late.status, 200, "{late:?}");
    assert!(set_cookie(&late, REFRESH).is_none());
    let seen = gateway.upstream.last_seen();
    assert_eq!(
        seen.headers["x-auth-session-id"],
        session_id(&tokens.access).as_str()
    );

    // The cookies the browser ended up with keep working.
    let kept = Tokens {
        access: set_cookie(&late, ACCESS).unwrap().to_string(),
        refresh: rotated[0].to_string(),
    };
    let after = send(&gateway, "GET", "/e", &[("cookie", &session_cookie(&kept))]).await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(session_revoked(&session_id(&tokens.access)).await, None);
    let metrics = gateway.ops_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("portcullis_refresh_grace_total 3"), "{text}");
}

#[tokio::test]
async fn a_refresh_cookie_replayed_after_the_grace_ends_the_session() {
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.tokens.refresh_reuse_grace = GRACE;
    })
    .await;
    let account = gateway.signup("refresh-replay").await;
    let tokens = gateway.tokens(&account).await;
    let stolen = session_cookie(&tokens);
    gateway.clock.advance(EXPIRY);

    let renewed = send(&gateway, "GET", "/home", &[("cookie", &stolen)]).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let current = Tokens {
        access: set_cookie(&renewed, ACCESS).unwrap().to_string(),
        refresh: set_cookie(&renewed, REFRESH).unwrap().to_string(),
    };

    gateway
        .clock
        .advance(GRACE + std::time::Duration::from_secs(1));
    let replayed = send(
        &gateway,
        "GET",
        "/home",
        &[("accept", BROWSER_ACCEPT), ("cookie", &stolen)],
    )
    .await;
    assert_eq!(replayed.status, 302, "{replayed:?}");
    assert_eq!(set_cookie(&replayed, REFRESH), Some(""));
    assert_eq!(
        session_revoked(&session_id(&tokens.access))
            .await
            .as_deref(),
        Some("refresh token reuse")
    );
    // The whole session ended: the renewed cookies no longer work either.
    let ended = send(
        &gateway,
        "GET",
        "/home",
        &[("cookie", &session_cookie(&current))],
    )
    .await;
    assert_eq!(ended.status, 401, "{ended:?}");
    assert_eq!(
        gateway.upstream.seen_count(),
        1,
        "only the renewal's request was forwarded"
    );
}

#[tokio::test]
async fn the_json_refresh_keeps_strict_reuse_detection() {
    let gateway = TestGateway::start_with(|config| {
        config.tokens.refresh_reuse_grace = GRACE;
    })
    .await;
    let account = gateway.signup("json-refresh").await;
    let tokens = gateway.tokens(&account).await;
    let body = serde_json::json!({ "refresh_token": tokens.refresh });
    let first = gateway.post("/auth/refresh", body.clone()).await;
    assert_eq!(first.status, 200, "{first:?}");
    // At once, well within the grace the gateway's own renewal would allow.
    let replayed = gateway.post("/auth/refresh", body).await;
    assert_eq!(replayed.status, 401, "{replayed:?}");
    assert_eq!(
        session_revoked(&session_id(&tokens.access))
            .await
            .as_deref(),
        Some("refresh token reuse")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_without_postgres_is_503_and_keeps_the_cookies() {
    use crate::harness::outage::Relay;
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let database = crate::harness::run_resources()
        .database_url
        .replace("127.0.0.1:5432", &relay.addr.to_string());
    let (gateway, _) = TestGateway::with_policy(BROWSER_POLICY, |config| {
        config.database.url = portcullis::config::Secret::new(database);
        // Long enough for the sign-up's connection on a busy machine; the cut below refuses
        // connections at once, so the 503 does not wait for it.
        config.database.connect_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let account = gateway.signup("refresh-outage").await;
    let tokens = gateway.tokens(&account).await;
    let cookie = session_cookie(&tokens);
    gateway.clock.advance(EXPIRY);

    relay.cut();
    let down = send(
        &gateway,
        "GET",
        "/home",
        &[("accept", BROWSER_ACCEPT), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(down.detail(), "Session store unavailable");
    assert!(down.headers.get("set-cookie").is_none(), "{down:?}");
    assert_eq!(gateway.upstream.seen_count(), 0);

    // Nothing was spent: once Postgres is back, the same cookies renew the session.
    relay.restore();
    let mut renewed = None;
    for _ in 0..50 {
        let response = send(&gateway, "GET", "/home", &[("cookie", &cookie)]).await;
        if response.status == 200 {
            renewed = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let renewed = renewed.expect("the session renews once Postgres is back");
    assert!(set_cookie(&renewed, REFRESH).is_some(), "{renewed:?}");
    assert_eq!(session_revoked(&session_id(&tokens.access)).await, None);
}
