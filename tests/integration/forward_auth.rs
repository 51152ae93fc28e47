//! Forward-auth (contract 8): `/auth/forward` answering real proxies, nginx (`auth_request`)
//! and Caddy (`forward_auth`) from Debian's packages, each in front of the recording
//! upstream; and the gateway's own checks on what a proxy sends.
//!
//! One table of requests runs directly through the gateway and through each proxy. The
//! recording upstream is the judge: for every row it must see exactly what it sees when the
//! gateway forwards the request itself (the method, the target, every `X-Auth-*` header), or
//! nothing at all. Where a proxy and the gateway part ways the row says so, and the
//! difference is a refusal: a path the gateway would rewrite before forwarding it (`..`,
//! `//`, `%2e%2e`) cannot be rewritten in a request the proxy forwards, so forward-auth
//! refuses it. Statuses: both proxies pass the gateway's 401, 403 and 302 on; nginx turns
//! any other refusal into 500 (auth_request's rule), Caddy passes them all on.
//!
//! Envoy and Traefik are not in Debian's archive, so they are not run here;
//! docs/forward-auth.md says what to set for them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::identity::Tokens;
use crate::harness::outage::Relay;
use crate::harness::proxies::{self, Kind, Proxy};
use crate::harness::upstream::Seen;
use crate::harness::{tls_over, TestGateway};

const POLICY: &str = r#"
version: 1
roles: [user, manager, admin]
rules:
  - name: public area
    paths: ["/public/**"]
    allow: public
  - name: admin area
    paths: ["/admin/**"]
    allow: { role: admin }
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
"#;

/// The host every row addresses but the wrong-host one; the gateway serves it.
const HOST: &str = "gateway.test";
/// Where direct requests come from: a loopback address that is not a trusted proxy (the
/// proxies, and the harness's clients, connect from 127.0.0.1, which is).
const UNTRUSTED: &str = "127.0.0.2";
const WAIT: Duration = Duration::from_secs(5);

/// Who sends a row.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Anonymous,
    User,
    Admin,
    /// A user whose session was ended (logout): the token verifies but is revoked.
    Revoked,
    /// The user's access token in the session cookie instead of `Authorization`.
    UserCookie,
}

/// What the gateway does with a row it is sent directly.
#[derive(Debug, Clone, Copy)]
enum Direct {
    /// Forwards it: the upstream sees `target`, as the caller of `role` (None: anonymous).
    Forwards {
        target: &'static str,
        role: Option<&'static str>,
    },
    Refuses(u16),
}

struct Row {
    what: &'static str,
    method: &'static str,
    target: &'static str,
    host: &'static str,
    caller: Caller,
    headers: &'static [(&'static str, &'static str)],
    direct: Direct,
    /// Where forward-auth answers otherwise than the gateway does directly: it refuses.
    forward_auth_refuses: Option<u16>,
}

const fn row(
    what: &'static str,
    method: &'static str,
    target: &'static str,
    caller: Caller,
    direct: Direct,
) -> Row {
    Row {
        what,
        method,
        target,
        host: HOST,
        caller,
        headers: &[],
        direct,
        forward_auth_refuses: None,
    }
}

const fn forwards(target: &'static str, role: Option<&'static str>) -> Direct {
    Direct::Forwards { target, role }
}

fn table() -> Vec<Row> {
    use Caller::*;
    use Direct::Refuses;
    let mut rows = vec![
        row(
            "anonymous, public",
            "GET",
            "/public/page?x=1",
            Anonymous,
            forwards("/public/page?x=1", None),
        ),
        row(
            "anonymous, signed-in area",
            "GET",
            "/app/x",
            Anonymous,
            Refuses(401),
        ),
        Row {
            headers: &[("Accept", "text/html,application/xhtml+xml")],
            ..row(
                "anonymous browser navigation",
                "GET",
                "/app/x?y=1",
                Anonymous,
                Refuses(302),
            )
        },
        row(
            "user",
            "GET",
            "/app/x?y=1",
            User,
            forwards("/app/x?y=1", Some("user")),
        ),
        Row {
            headers: &[("Content-Length", "0")],
            ..row(
                "user, POST",
                "POST",
                "/app/x",
                User,
                forwards("/app/x", Some("user")),
            )
        },
        row(
            "user by cookie",
            "GET",
            "/app/cookie",
            UserCookie,
            forwards("/app/cookie", Some("user")),
        ),
        row("user, admin area", "GET", "/admin/x", User, Refuses(403)),
        row(
            "admin, admin area",
            "GET",
            "/admin/x",
            Admin,
            forwards("/admin/x", Some("admin")),
        ),
        row("revoked token", "GET", "/app/x", Revoked, Refuses(401)),
        Row {
            host: "evil.test",
            ..row("wrong host", "GET", "/app/x", User, Refuses(421))
        },
        // Hostile paths.
        row(
            "encoded slash",
            "GET",
            "/public/a%2fb",
            Anonymous,
            Refuses(400),
        ),
        row(
            "encoded slash, user",
            "GET",
            "/admin%2fx",
            User,
            Refuses(400),
        ),
        row("path parameter", "GET", "/app;x=1", User, Refuses(400)),
        row("upper case, user", "GET", "/ADMIN/x", User, Refuses(403)),
        row(
            "upper case, admin",
            "GET",
            "/ADMIN/x",
            Admin,
            forwards("/ADMIN/x", Some("admin")),
        ),
        Row {
            forward_auth_refuses: Some(400),
            ..row(
                "dot segments, admin",
                "GET",
                "/public/../admin/x",
                Admin,
                forwards("/admin/x", Some("admin")),
            )
        },
        Row {
            forward_auth_refuses: Some(400),
            ..row(
                "dot segments, anonymous",
                "GET",
                "/public/../admin/x",
                Anonymous,
                Refuses(401),
            )
        },
        Row {
            forward_auth_refuses: Some(400),
            ..row(
                "encoded dot segments",
                "GET",
                "/public/%2e%2e/admin/x",
                Anonymous,
                Refuses(401),
            )
        },
        Row {
            forward_auth_refuses: Some(400),
            ..row("repeated slashes", "GET", "//admin/x", User, Refuses(403))
        },
        // Identity headers a client made up.
        Row {
            headers: &[("X-Auth-Role", "admin"), ("X-Auth-User-Id", "forged")],
            ..row(
                "spoofed identity, anonymous",
                "GET",
                "/public/page",
                Anonymous,
                forwards("/public/page", None),
            )
        },
        Row {
            headers: &[("X_Auth_Role", "admin")],
            ..row(
                "spoofed identity with '_', anonymous",
                "GET",
                "/public/page",
                Anonymous,
                forwards("/public/page", None),
            )
        },
        Row {
            headers: &[
                ("X-Auth-Role", "admin"),
                ("X_Auth_Email", "forged@example.com"),
            ],
            ..row(
                "spoofed identity, user",
                "GET",
                "/app/x",
                User,
                forwards("/app/x", Some("user")),
            )
        },
        Row {
            headers: &[("X-Auth-Role", "admin")],
            ..row(
                "spoofed role into the admin area",
                "GET",
                "/admin/x",
                User,
                Refuses(403),
            )
        },
        // An anonymous client naming another original request: the proxies set their own.
        Row {
            headers: &[
                ("X-Original-URI", "/public/page"),
                ("X-Forwarded-Uri", "/public/page"),
            ],
            ..row(
                "spoofed original URI",
                "GET",
                "/app/x",
                Anonymous,
                Refuses(401),
            )
        },
    ];
    rows.shrink_to_fit();
    rows
}

/// What the upstream saw of one row, reduced to what must agree: the method, the target and
/// every identity header (any header whose name folds to `x-auth-*`).
#[derive(Debug, PartialEq, Eq)]
struct Reached {
    method: String,
    target: String,
    identity: Vec<(String, String)>,
}

fn reached(seen: &Seen) -> Reached {
    let mut identity: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(name, _)| {
            let folded: String = name
                .as_str()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            folded.starts_with("x-auth-")
        })
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    identity.sort();
    Reached {
        method: seen.method.clone(),
        target: seen.target.clone(),
        identity,
    }
}

/// The answer to a raw request: status, headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    raw: String,
}

fn parse_answer(raw: String) -> Answer {
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    Answer {
        status,
        headers,
        raw,
    }
}

/// One HTTP/1.1 request written as bytes (so that hostile targets go out exactly as written)
/// and read until the server closes the connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> Answer {
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    parse_answer(read_all(stream).await)
}

async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

struct Callers {
    user: Tokens,
    admin: Tokens,
    revoked: Tokens,
}

impl Callers {
    async fn sign_in(gateway: &TestGateway) -> Callers {
        let (_, user) = gateway.account_with_role("fwd-user", "user").await;
        let (_, admin) = gateway.account_with_role("fwd-admin", "admin").await;
        let (_, revoked) = gateway.account_with_role("fwd-revoked", "user").await;
        let logout = gateway
            .call("POST", "/auth/logout", None, Some(&revoked.access))
            .await;
        assert_eq!(logout.status, 204, "{logout:?}");
        Callers {
            user,
            admin,
            revoked,
        }
    }

    fn credentials(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::Anonymous => None,
            Caller::User => Some(format!("Authorization: Bearer {}\r\n", self.user.access)),
            Caller::Admin => Some(format!("Authorization: Bearer {}\r\n", self.admin.access)),
            Caller::Revoked => Some(format!("Authorization: Bearer {}\r\n", self.revoked.access)),
            Caller::UserCookie => Some(format!(
                "Cookie: theme=dark; __Host-portcullis-access={}\r\n",
                self.user.access
            )),
        }
    }
}

fn request_text(row: &Row, index: usize, callers: &Callers) -> String {
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-Row: {index}\r\n",
        row.method, row.target, row.host
    );
    if let Some(credentials) = callers.credentials(row.caller) {
        request.push_str(&credentials);
    }
    for (name, value) in row.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// A TLS connection to the gateway from `source`.
async fn tls_from(source: &str, gateway: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(gateway).await.unwrap();
    tls_over(tcp, &[b"http/1.1"]).await
}

/// What reached the upstream for row `index`.
fn reached_for(gateway: &TestGateway, index: usize) -> Vec<Reached> {
    let index = index.to_string();
    gateway
        .upstream
        .seen()
        .iter()
        .filter(|seen| {
            seen.headers
                .get("x-row")
                .is_some_and(|row| row.as_bytes() == index.as_bytes())
        })
        .map(reached)
        .collect()
}

async fn proxied_gateway() -> TestGateway {
    let (gateway, _) = TestGateway::with_policy(POLICY, |config| {
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    gateway
}

/// The status a proxy answers with when the gateway refuses a forward-auth with `status`.
fn through(kind: Kind, status: u16) -> u16 {
    match (kind, status) {
        (Kind::Nginx, 401 | 403 | 302) => status,
        (Kind::Nginx, _) => 500,
        (Kind::Caddy, _) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_caddy_pass_exactly_what_the_gateway_itself_forwards() {
    let gateway = proxied_gateway().await;
    let callers = Callers::sign_in(&gateway).await;
    let rows = table();
    let mut failures = Vec::new();

    // Directly, from a client that is not a trusted proxy: the reference.
    let mut expected: Vec<Option<Reached>> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let mut stream = tls_from(UNTRUSTED, gateway.https).await;
        let answer = exchange(&mut stream, &request_text(row, index, &callers)).await;
        let seen = reached_for(&gateway, index);
        match row.direct {
            Direct::Forwards { target, role } => {
                if answer.status != 200 || seen.len() != 1 {
                    failures.push(format!(
                        "direct, {}: {} and the upstream saw {seen:?}\n{}",
                        row.what, answer.status, answer.raw
                    ));
                    expected.push(None);
                    continue;
                }
                let reached = &seen[0];
                let role_seen = reached
                    .identity
                    .iter()
                    .find(|(name, _)| name == "x-auth-role")
                    .map(|(_, value)| value.as_str());
                if reached.target != target || role_seen != role || reached.method != row.method {
                    failures.push(format!(
                        "direct, {}: the upstream saw {reached:?}",
                        row.what
                    ));
                }
                expected.push(seen.into_iter().next());
            }
            Direct::Refuses(status) => {
                if answer.status != status || !seen.is_empty() {
                    failures.push(format!(
                        "direct, {}: {} (expected {status}) and the upstream saw {seen:?}",
                        row.what, answer.status
                    ));
                }
                expected.push(None);
            }
        }
    }

    for kind in [Kind::Nginx, Kind::Caddy] {
        let proxy = Proxy::start(kind, &gateway);
        let offset = rows.len() * (1 + kind as usize);
        for (index, row) in rows.iter().enumerate() {
            let tag = offset + index;
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            let answer = exchange(&mut stream, &request_text(row, tag, &callers)).await;
            let seen = reached_for(&gateway, tag);
            let name = kind.name();
            let refusal = row.forward_auth_refuses.or(match row.direct {
                Direct::Refuses(status) => Some(status),
                Direct::Forwards { .. } => None,
            });
            match refusal {
                None => {
                    let reference = expected[index].as_ref();
                    if answer.status != 200 || seen.len() != 1 || Some(&seen[0]) != reference {
                        failures.push(format!(
                            "{name}, {}: {} and the upstream saw {seen:?}, directly {reference:?}\n{}",
                            row.what, answer.status, answer.raw
                        ));
                    }
                }
                Some(status) => {
                    let wanted = through(kind, status);
                    if answer.status != wanted || !seen.is_empty() {
                        failures.push(format!(
                            "{name}, {}: {} (expected {wanted}) and the upstream saw {seen:?}\n{}",
                            row.what, answer.status, answer.raw
                        ));
                    }
                    if status == 302 {
                        let location = answer.headers.get("location");
                        if location.map(|value| value.as_bytes())
                            != Some(b"/auth/login?rd=/app/x%3Fy%3D1".as_slice())
                        {
                            failures.push(format!("{name}, {}: sent to {location:?}", row.what));
                        }
                    }
                }
            }
        }
        // The sign-in page the redirect leads to is the gateway's, on the proxy's origin;
        // forward-auth itself is not reachable from outside.
        for (target, wanted) in [("/auth/login?rd=/app/x", 200), ("/auth/forward", 404)] {
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            let answer = exchange(
                &mut stream,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\
                     X-Original-Method: GET\r\nX-Original-URI: /public/page\r\n\r\n"
                ),
            )
            .await;
            if answer.status != wanted {
                failures.push(format!(
                    "{}, {target}: {} (expected {wanted})",
                    kind.name(),
                    answer.status
                ));
            }
            if wanted == 200 && !answer.raw.contains("<form") {
                failures.push(format!("{}, {target}: not the sign-in page", kind.name()));
            }
        }
        if !failures.is_empty() {
            failures.push(format!(
                "{name} logs:\n{}",
                proxy.logs(),
                name = kind.name()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn the_documented_snippets_are_the_tested_configurations() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/forward-auth.md"),
    )
    .unwrap();
    for template in ["nginx.conf", "Caddyfile"] {
        let snippet = proxies::snippet(&proxies::template(template));
        assert!(
            doc.contains(&snippet),
            "docs/forward-auth.md shows the snippet of tests/integration/proxies/{template} as it is:\n{snippet}"
        );
    }
}

/// A forward-auth request from the harness's client (127.0.0.1, a trusted proxy here).
async fn ask(
    gateway: &TestGateway,
    target: &str,
    headers: &[(&str, &str)],
) -> crate::harness::TestResponse {
    let mut client = gateway.h1().await;
    let mut request = client.request("GET", target);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send_read(request.body(crate::harness::empty()).unwrap())
        .await
}

#[tokio::test]
async fn forward_auth_answers_with_the_identity_and_the_refusals_of_a_forwarded_request() {
    let gateway = proxied_gateway().await;
    let callers = Callers::sign_in(&gateway).await;
    let user = format!("Bearer {}", callers.user.access);

    let allowed = ask(
        &gateway,
        "/auth/forward",
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/app/x"),
            ("authorization", &user),
        ],
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-auth-role"), Some("user"));
    assert!(allowed.header("x-auth-user-id").is_some());
    assert!(allowed.header("x-auth-session-id").is_some());
    assert_eq!(allowed.header("cache-control"), Some("no-store"));
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "forward-auth forwards nothing"
    );
    // Counted as the request it judged: under the deciding rule.
    assert_eq!(
        gateway
            .metric("portcullis_http_requests_by_rule_total{rule=\"signed-in users\",code=\"200\"}")
            .await,
        1
    );

    // A WebSocket handshake the session cookie authenticates must come from an allowed
    // page, as a forwarded one must (contract 6.12).
    let cookie = format!("__Host-portcullis-access={}", callers.user.access);
    for (origin, expected) in [
        ("https://evil.example", 403),
        ("https://gateway.test:8443", 200),
    ] {
        let handshake = ask(
            &gateway,
            "/auth/forward",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/app/socket"),
                ("cookie", &cookie),
                ("origin", origin),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ],
        )
        .await;
        assert_eq!(handshake.status, expected, "{origin}: {handshake:?}");
    }

    // Envoy's form: the original path behind the prefix, the original method.
    let envoy = ask(
        &gateway,
        "/auth/forward/app/x?y=1",
        &[("authorization", &user)],
    )
    .await;
    assert_eq!(envoy.status, 200, "{envoy:?}");
    assert_eq!(envoy.header("x-auth-role"), Some("user"));

    // Refusals carry the status and body a forwarded request gets.
    for (uri, bearer) in [
        ("/app/x", None),
        ("/admin/x", Some(user.as_str())),
        ("/public/a%2fb", None),
    ] {
        let mut headers = vec![("x-original-method", "GET"), ("x-original-uri", uri)];
        if let Some(bearer) = bearer {
            headers.push(("authorization", bearer));
        }
        let refused = ask(&gateway, "/auth/forward", &headers).await;
        let mut client = gateway.h1().await;
        let mut request = client.request("GET", uri);
        if let Some(bearer) = bearer {
            request = request.header("authorization", bearer);
        }
        let direct = client
            .send_read(request.body(crate::harness::empty()).unwrap())
            .await;
        assert_ne!(refused.status, 200, "{uri}");
        assert_eq!(refused.status, direct.status, "{uri}");
        assert_eq!(refused.detail(), direct.detail(), "{uri}");
        assert_eq!(
            refused.header("www-authenticate"),
            direct.header("www-authenticate"),
            "{uri}"
        );
    }

    // Malformed or ambiguous: 400, never 200.
    let cases: &[&[(&str, &str)]] = &[
        &[("x-original-uri", "/public/page")],
        &[("x-original-method", "GET")],
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/page"),
            ("x-forwarded-uri", "/public/page"),
        ],
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "https://evil.test/public/page"),
        ],
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/../app/x"),
        ],
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "//public/page"),
        ],
        &[],
    ];
    for headers in cases {
        let refused = ask(&gateway, "/auth/forward", headers).await;
        assert_eq!(refused.status, 400, "{headers:?}: {refused:?}");
        refused.detail();
    }
    let twice = ask(
        &gateway,
        "/auth/forward",
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/page"),
            ("x-original-uri", "/app/x"),
        ],
    )
    .await;
    assert_eq!(twice.status, 400, "{twice:?}");

    // The original method and host are checked as a request's own are.
    let trace = ask(
        &gateway,
        "/auth/forward",
        &[
            ("x-original-method", "TRACE"),
            ("x-original-uri", "/public/page"),
        ],
    )
    .await;
    assert_eq!(trace.status, 405, "{trace:?}");
    let elsewhere = ask(
        &gateway,
        "/auth/forward",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/public/page"),
            ("x-forwarded-host", "evil.test"),
        ],
    )
    .await;
    assert_eq!(elsewhere.status, 421, "{elsewhere:?}");
    assert!(
        gateway
            .metric("portcullis_refusals_total{reason=\"path\"}")
            .await
            >= 2,
        "the refused paths count as a forwarded request's would"
    );
}

#[tokio::test]
async fn forward_auth_believes_no_one_but_a_trusted_proxy() {
    let gateway = proxied_gateway().await;
    let mut stream = tls_from(UNTRUSTED, gateway.https).await;
    let answer = exchange(
        &mut stream,
        &format!(
            "GET /auth/forward HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\
             X-Original-Method: GET\r\nX-Original-URI: /public/page\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.raw);
    assert!(
        answer
            .raw
            .contains("Forward-auth answers only a trusted proxy"),
        "{}",
        answer.raw
    );
    // Envoy's form too.
    let mut stream = tls_from(UNTRUSTED, gateway.https).await;
    let answer = exchange(
        &mut stream,
        &format!(
            "GET /auth/forward/public/page HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.raw);
    assert_eq!(gateway.upstream.seen_count(), 0);

    // A gateway with no trusted proxy at all answers no one.
    let (plain, _) = TestGateway::with_policy(POLICY, |_| {}).await;
    let refused = ask(
        &plain,
        "/auth/forward",
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/page"),
        ],
    )
    .await;
    assert_eq!(refused.status, 400, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_a_refusal_never_a_200_without_the_identity() {
    let relay = Relay::start("127.0.0.1:6379".parse::<SocketAddr>().unwrap()).await;
    let (gateway, _) = TestGateway::with_policy(POLICY, |config| {
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.redis.url = portcullis::config::Secret::new(format!("redis://{}/", relay.addr));
        config.redis.timeout = Duration::from_millis(300);
    })
    .await;
    let (_, tokens) = gateway.account_with_role("fwd-outage", "user").await;
    let bearer = format!("Bearer {}", tokens.access);
    let public = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/public/page"),
        ("authorization", bearer.as_str()),
    ];
    let before = ask(&gateway, "/auth/forward", &public).await;
    assert_eq!(before.status, 200, "{before:?}");
    assert_eq!(before.header("x-auth-role"), Some("user"));

    relay.cut();
    gateway.revocation_copy_untrusted().await;
    // Forwarded directly, the request goes on anonymously where anyone may go; a proxy
    // asking would take a 200 without identity for "nobody signed in", so it is refused.
    let direct = gateway
        .call("GET", "/public/page", None, Some(&tokens.access))
        .await;
    assert_eq!(direct.status, 200, "{direct:?}");
    assert!(gateway
        .upstream
        .last_seen()
        .headers
        .get("x-auth-role")
        .is_none());
    let during = ask(&gateway, "/auth/forward", &public).await;
    assert_eq!(during.status, 503, "{during:?}");
    assert_eq!(during.detail(), "Revocation service unavailable");
    assert!(during.header("x-auth-role").is_none());
    let protected = ask(
        &gateway,
        "/auth/forward",
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/app/x"),
            ("authorization", bearer.as_str()),
        ],
    )
    .await;
    assert_eq!(protected.status, 503, "{protected:?}");
}
