//! WebSocket upgrades are tunnelled end to end, only once the upstream has completed the
//! handshake, only from allowed pages when the browser's cookie authenticates them, and only
//! for as long as the caller's token admits them (contract 6.12).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

use crate::harness::{empty, tls_connect, TestGateway, TestResponse};

#[tokio::test]
async fn a_websocket_echoes_through_the_gateway() {
    let gateway = TestGateway::start().await;
    let stream = tls_connect(gateway.https, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", gateway.https.port());
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "the gateway"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    socket.close(None).await.unwrap();
    let seen = gateway.upstream.last_seen();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert!(
        seen.headers.get("x-forwarded-for").is_some(),
        "an upgrade is forwarded like any request"
    );
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_is_an_ordinary_response() {
    let gateway = TestGateway::start().await;
    let stream = tls_connect(gateway.https, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/no-upgrade", gateway.https.port());
    let error = tokio_tungstenite::client_async(url, stream)
        .await
        .err()
        .unwrap();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 200),
        other => panic!("expected the upstream's 200, got {other:?}"),
    }
}

/// `/ws` needs a signed-in caller; everything else (`/ws/public` too) is public.
const SOCKET_POLICY: &str = r#"
version: 1
roles: [user, manager, admin]
rules:
  - name: sockets
    paths: ["/ws"]
    allow: authenticated
  - name: everything else
    paths: ["/**"]
    allow: public
"#;

/// The gateway's own origin in the test configuration (`server.public_url`).
const OWN_ORIGIN: &str = "https://gateway.test:8443";
const CORS_ORIGIN: &str = "https://app.example";
const VALID_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub(crate) type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Opens a WebSocket through the gateway with extra request headers: the socket, or the
/// status the handshake was refused with.
pub(crate) async fn open(
    gateway: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, u16> {
    let stream = tls_connect(gateway.https, &[b"http/1.1"]).await;
    let mut request = format!("wss://localhost:{}{path}", gateway.https.port())
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("the handshake failed without an answer: {other:?}"),
    }
}

pub(crate) async fn echoes(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(text));
}

/// Waits, at most `wait`, for the gateway to end the tunnel.
async fn closed_within(socket: &mut Socket, wait: Duration) {
    let ended = tokio::time::timeout(wait, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel is still open after {wait:?}");
}

/// An upgrade request on the harness client, so a refusal's JSON can be read.
async fn raw_upgrade(gateway: &TestGateway, headers: &[(&str, &str)]) -> TestResponse {
    let mut client = gateway.h1().await;
    let mut request = client
        .request("GET", "/ws")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send_read(request.body(empty()).unwrap()).await
}

#[tokio::test]
async fn an_upgrade_without_a_valid_key_or_version_is_400_and_never_forwarded() {
    let gateway = TestGateway::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("sec-websocket-version", "13")],
            "Invalid Sec-WebSocket-Key",
        ),
        (
            &[
                ("sec-websocket-key", "c2hvcnQ="),
                ("sec-websocket-version", "13"),
            ],
            "Invalid Sec-WebSocket-Key",
        ),
        (
            &[("sec-websocket-key", VALID_KEY)],
            "Unsupported Sec-WebSocket-Version",
        ),
        (
            &[
                ("sec-websocket-key", VALID_KEY),
                ("sec-websocket-version", "8"),
            ],
            "Unsupported Sec-WebSocket-Version",
        ),
    ];
    for (headers, detail) in cases {
        let response = raw_upgrade(&gateway, headers).await;
        assert_eq!(response.status, 400, "{headers:?}: {response:?}");
        assert_eq!(response.detail(), *detail, "{headers:?}");
    }
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn a_101_that_does_not_complete_the_handshake_is_502_and_opens_no_tunnel() {
    let gateway = TestGateway::start().await;
    for flaw in ["accept", "other-upgrade", "no-upgrade"] {
        let refused = open(&gateway, &format!("/ws-bad/{flaw}"), &[]).await;
        assert_eq!(refused.err(), Some(502), "{flaw}");
    }
    assert_eq!(gateway.upstream.seen_count(), 3, "each was forwarded once");
    let metrics = gateway.ops_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("portcullis_upstream_errors_total{kind=\"other\"} 3"),
        "{text}"
    );
    // The connections those answers came on were not pooled: the next request is served.
    assert_eq!(gateway.get("/after").await.status, 200);
    let mut socket = open(&gateway, "/ws", &[]).await.unwrap();
    echoes(&mut socket, "still works").await;
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_must_come_from_an_allowed_origin() {
    let (gateway, _) = TestGateway::with_policy(SOCKET_POLICY, |config| {
        config.tokens.cookie.enabled = true;
        config.cors.allowed_origins = vec![CORS_ORIGIN.to_string()];
    })
    .await;
    let account = gateway.signup("ws-cookie").await;
    let login = gateway.login(&account.email, &account.password).await;
    assert_eq!(login.status, 200, "{login:?}");
    let access = login.json()["access_token"].as_str().unwrap().to_string();
    let cookie = login
        .header("set-cookie")
        .expect("cookie mode sets the access cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();

    for origin in [Some("https://evil.example"), Some("null"), None] {
        let mut headers = vec![
            ("cookie", cookie.as_str()),
            ("sec-websocket-key", VALID_KEY),
            ("sec-websocket-version", "13"),
        ];
        headers.extend(origin.map(|origin| ("origin", origin)));
        let response = raw_upgrade(&gateway, &headers).await;
        assert_eq!(response.status, 403, "{origin:?}: {response:?}");
        assert_eq!(response.detail(), "Cross-origin WebSocket not allowed");
    }
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "nothing refused reached the upstream"
    );
    // Refused by the gateway itself, and counted so.
    assert_eq!(
        gateway
            .metric("portcullis_refusals_total{reason=\"cross_site\"}")
            .await,
        3
    );

    for origin in [OWN_ORIGIN, "HTTPS://GATEWAY.TEST:8443", CORS_ORIGIN] {
        let mut socket = open(
            &gateway,
            "/ws",
            &[("cookie", cookie.as_str()), ("origin", origin)],
        )
        .await
        .unwrap_or_else(|status| panic!("{origin}: refused with {status}"));
        echoes(&mut socket, origin).await;
    }
    let seen = gateway.upstream.last_seen();
    assert_eq!(seen.headers["x-auth-user-id"], account.id.as_str());

    // A token a script had to set is not sent by the browser on its own: no origin check.
    let bearer = format!("Bearer {access}");
    let mut socket = open(
        &gateway,
        "/ws",
        &[
            ("authorization", bearer.as_str()),
            ("origin", "https://evil.example"),
        ],
    )
    .await
    .unwrap();
    echoes(&mut socket, "bearer").await;
}

#[tokio::test]
async fn an_open_tunnel_is_closed_when_its_session_is_revoked() {
    let (gateway, _) = TestGateway::with_policy(SOCKET_POLICY, |config| {
        config.server.websocket_recheck_interval = Duration::from_millis(50);
    })
    .await;
    let account = gateway.signup("ws-logout").await;
    let tokens = gateway.tokens(&account).await;
    let other = gateway.tokens(&account).await;
    let bearer = format!("Bearer {}", tokens.access);
    let other_bearer = format!("Bearer {}", other.access);
    assert_eq!(open(&gateway, "/ws", &[]).await.err(), Some(401));

    let mut socket = open(&gateway, "/ws", &[("authorization", bearer.as_str())])
        .await
        .unwrap();
    let mut other_socket = open(&gateway, "/ws", &[("authorization", other_bearer.as_str())])
        .await
        .unwrap();
    echoes(&mut socket, "before logout").await;

    let out = gateway
        .call("POST", "/auth/logout", None, Some(&tokens.access))
        .await;
    assert_eq!(out.status, 204, "{out:?}");
    closed_within(&mut socket, Duration::from_secs(10)).await;
    // The account's other session is not touched by this one's logout.
    echoes(&mut other_socket, "another session").await;
}

#[tokio::test]
async fn an_open_tunnel_is_closed_when_its_token_expires() {
    let (gateway, _) = TestGateway::with_policy(SOCKET_POLICY, |config| {
        config.server.websocket_recheck_interval = Duration::from_millis(50);
    })
    .await;
    let account = gateway.signup("ws-expiry").await;
    let tokens = gateway.tokens(&account).await;
    let bearer = format!("Bearer {}", tokens.access);
    let mut socket = open(&gateway, "/ws", &[("authorization", bearer.as_str())])
        .await
        .unwrap();
    let mut anonymous = open(&gateway, "/ws/public", &[]).await.unwrap();
    echoes(&mut socket, "before expiry").await;

    // The access token lives 30 minutes (`tokens.access_ttl`); move the gateway's clock past it.
    gateway.clock.advance(Duration::from_secs(31 * 60));
    closed_within(&mut socket, Duration::from_secs(10)).await;
    // Nobody's token, nothing to expire: an anonymous tunnel stays.
    echoes(&mut anonymous, "after expiry").await;
}
