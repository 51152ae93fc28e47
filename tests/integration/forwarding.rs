//! Forwarding: what the upstream receives, what the client gets back, over HTTP/1.1 and
//! HTTP/2.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{full, Protocol, TestGateway};

#[tokio::test]
async fn forwards_http1_and_http2_clients_to_an_http1_upstream() {
    let gateway = TestGateway::start().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut client = match protocol {
            Protocol::Http1 => gateway.h1().await,
            Protocol::Http2 => gateway.h2().await,
        };
        let request = client
            .request("POST", "/things/1?q=a%20b&x=1")
            .header("content-type", "application/json")
            .body(full("{\"a\":1}"))
            .unwrap();
        let response = client.send_read(request).await;
        assert_eq!(response.status, 200, "{protocol:?}: {response:?}");
        let echo = response.json();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["target"], "/things/1?q=a%20b&x=1");
        assert_eq!(echo["body_len"], 7);
        let host = format!("localhost:{}", gateway.https.port());
        assert_eq!(
            echo["headers"]["host"][0], host,
            "{protocol:?}: Host is preserved"
        );
        assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(echo["headers"]["x-forwarded-host"][0], host);
        let request_id = echo["headers"]["x-request-id"][0].as_str().unwrap();
        assert!(!request_id.is_empty());
        assert_eq!(
            response.header("x-request-id"),
            Some(request_id),
            "the client sees the id the upstream saw"
        );
    }
}

#[tokio::test]
async fn a_client_request_id_is_passed_on_and_a_bad_one_replaced() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/")
        .header("x-request-id", "abc-123")
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.json()["headers"]["x-request-id"][0], "abc-123");
    assert_eq!(response.header("x-request-id"), Some("abc-123"));

    let too_long = "a".repeat(200);
    let request = client
        .request("GET", "/")
        .header("x-request-id", too_long.as_str())
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    let forwarded = response.json()["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(forwarded, too_long);
    assert!(!forwarded.is_empty());
}

#[tokio::test]
async fn identity_and_spoofing_headers_never_reach_the_upstream() {
    let gateway = TestGateway::start().await;
    let spoofed = [
        "X-Auth-User-Id",
        "x-auth-role",
        "X_Auth_Email",
        "x-AUTH_session-ID",
        "X-User-Id",
        "x_user_roles",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Remote-User",
        "Remote-User",
        "remote_user",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ];
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut client = crate::harness::Client::connect(gateway.https, protocol).await;
        let mut request = client.request("GET", "/profile");
        for name in spoofed {
            request = request.header(name, "attacker");
        }
        let response = client
            .send_read(
                request
                    .header("x-kept", "yes")
                    .body(crate::harness::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status, 200);
        let seen = gateway.upstream.last_seen();
        for name in spoofed {
            assert!(
                seen.headers.get(name).is_none(),
                "{protocol:?}: {name} reached the upstream"
            );
        }
        assert!(
            !seen.headers.iter().any(|(_, value)| value == "attacker"),
            "{protocol:?}: a spoofed header reached the upstream: {:?}",
            seen.headers
        );
        assert_eq!(seen.headers["x-kept"], "yes");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/")
        .header("connection", "keep-alive, X-Secret-Hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("upgrade", "h2c")
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 200);
    let seen = gateway.upstream.last_seen();
    for name in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert!(
        response.headers.get("x-upstream-hop").is_none(),
        "a header the upstream named in Connection reached the client"
    );
}

#[tokio::test]
async fn client_forwarding_headers_are_replaced_unless_the_peer_is_a_trusted_proxy() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .body(crate::harness::empty())
        .unwrap();
    let echo = client.send_read(request).await.json();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        echo["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        serde_json::json!([format!("localhost:{}", gateway.https.port())])
    );

    let trusting = TestGateway::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut client = trusting.h1().await;
    let request = client
        .request("GET", "/")
        .header("x-forwarded-for", "203.0.113.9")
        .body(crate::harness::empty())
        .unwrap();
    let echo = client.send_read(request).await.json();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
}

#[tokio::test]
async fn security_headers_are_on_forwarded_and_gateway_responses() {
    let gateway = TestGateway::start().await;
    let forwarded = gateway.get("/page").await;
    let own_404 = gateway.get("/auth/nothing-here").await;
    let own_400 = gateway.get("/a%2fb").await;
    assert_eq!(forwarded.status, 200);
    assert_eq!(own_404.status, 404);
    assert_eq!(own_400.status, 400);
    for response in [&forwarded, &own_404, &own_400] {
        assert_eq!(
            response.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(response.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            response.header("referrer-policy"),
            Some("strict-origin-when-cross-origin")
        );
        assert!(response.header("content-security-policy").is_some());
        assert_eq!(
            response.header("server"),
            Some("portcullis"),
            "no version, no upstream banner"
        );
        assert!(response.header("x-powered-by").is_none());
    }
    assert_eq!(own_404.detail(), "Not found");
}

#[tokio::test]
async fn security_headers_are_configurable() {
    let gateway = TestGateway::start_with(|config| {
        config.headers.content_security_policy = "default-src 'none'".into();
        config.headers.x_frame_options = String::new();
    })
    .await;
    let response = gateway.get("/").await;
    assert_eq!(
        response.header("content-security-policy"),
        Some("default-src 'none'")
    );
    assert!(response.header("x-frame-options").is_none());
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let gateway = TestGateway::start_with(|config| {
        config.cors.allowed_origins = vec!["https://app.example".into()];
        config.cors.allow_credentials = true;
    })
    .await;
    let mut client = gateway.h1().await;
    let preflight = client
        .request("OPTIONS", "/api/items")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(preflight).await;
    assert_eq!(response.status, 204);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        response.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(response
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(response.header("strict-transport-security").is_some());
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "the preflight never reached the upstream"
    );

    let refused = client
        .request("OPTIONS", "/api/items")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(refused).await;
    assert_eq!(response.status, 403);
    assert!(response.header("access-control-allow-origin").is_none());

    let actual = client
        .request("GET", "/api/items")
        .header("origin", "https://app.example")
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(actual).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(response
        .headers
        .get_all("vary")
        .iter()
        .any(|value| value.to_str().unwrap().contains("Origin")));
}

#[tokio::test]
async fn trace_and_connect_are_refused() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let response = client
        .send_read(
            client
                .request("TRACE", "/")
                .body(crate::harness::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status, 405);
    assert_eq!(response.detail(), "Method not allowed");
    let mut raw = gateway.raw_tls().await;
    let answer = crate::harness::raw_exchange(
        &mut raw,
        b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    // Bound but never listening: connections to it are refused, and no other test can take
    // the port while it is held (a port merely closed again could be handed out anew).
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = refusing.local_addr().unwrap().port();
    let gateway = TestGateway::start_with(|config| {
        config.upstreams[0].url = format!("http://127.0.0.1:{closed_port}").parse().unwrap();
    })
    .await;
    let response = gateway.get("/").await;
    assert_eq!(response.status, 502);
    assert_eq!(response.detail(), "Upstream unreachable");

    let gateway = TestGateway::start_with(|config| {
        config.upstreams[0].timeout = Duration::from_millis(200);
    })
    .await;
    let response = gateway.get("/never").await;
    assert_eq!(response.status, 504);
    assert_eq!(response.detail(), "Upstream timed out");
    let metrics = gateway.ops_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("portcullis_upstream_errors_total{kind=\"timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn paths_are_normalised_before_forwarding_and_ambiguous_ones_refused() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let cases = [
        ("/a/./b/../c//d%41?x=%2f..//", "/a/c/dA?x=%2f..//"),
        ("/%7euser/%c3%a9", "/~user/%C3%A9"),
        ("/static/../admin", "/admin"),
    ];
    for (sent, forwarded) in cases {
        let response = client.get(sent).await;
        assert_eq!(response.status, 200, "{sent}");
        assert_eq!(response.json()["target"], forwarded, "{sent}");
    }
    let before = gateway.upstream.seen_count();
    for refused in [
        "/a%2fb",
        "/a%5cb",
        "/a%00",
        "/a%zz",
        "/a;jsessionid=1",
        "/%c0%af",
    ] {
        let mut client = gateway.h1().await;
        let response = client.get(refused).await;
        assert_eq!(response.status, 400, "{refused}");
        assert!(
            response.detail().starts_with("Invalid request path"),
            "{refused}"
        );
    }
    assert_eq!(
        gateway.upstream.seen_count(),
        before,
        "no refused path reached the upstream"
    );
}

#[tokio::test]
async fn path_parameters_are_allowed_only_by_configuration() {
    let gateway =
        TestGateway::start_with(|config| config.server.allow_path_parameters = true).await;
    let response = gateway.get("/a;v=1/b").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["target"], "/a;v=1/b");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    // One worker thread, so one upstream pool: every request can reuse one connection.
    let gateway = TestGateway::start_with(|config| config.server.worker_threads = 1).await;
    let mut client = gateway.h1().await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let mut client = gateway.h2().await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(
        gateway.upstream.connections(),
        1,
        "40 sequential requests used one pooled upstream connection"
    );
}

#[tokio::test]
async fn with_pool_max_idle_0_every_request_opens_its_own_upstream_connection() {
    let gateway = TestGateway::start_with(|config| {
        config.server.worker_threads = 1;
        config.upstreams[0].pool_max_idle = 0;
    })
    .await;
    let mut client = gateway.h1().await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(gateway.upstream.connections(), 3);
}

/// An upstream whose keep-alive ends after every response: it answers without
/// `Connection: close` (so the connection looks reusable), then closes it, as a server does
/// when its idle timeout runs out. Reports each request it read and each close.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = events.send("request");
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
                drop(stream);
                let _ = events.send("closed");
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_again() {
    let (upstream, mut events) = closing_upstream().await;
    let gateway = TestGateway::start_with(|config| {
        config.server.worker_threads = 1;
        config.upstreams[0].url = format!("http://{upstream}").parse().unwrap();
    })
    .await;
    let mut client = gateway.h1().await;
    for round in 0..5 {
        let response = client.get("/").await;
        assert_eq!(response.status, 200, "round {round}: {response:?}");
        assert_eq!(response.body, "ok".as_bytes());
        assert_eq!(events.recv().await, Some("request"));
        // The next request goes out only once the upstream has closed this connection.
        assert_eq!(events.recv().await, Some("closed"));
    }
    assert!(
        events.try_recv().is_err(),
        "each request reached the upstream exactly once"
    );
}

/// Reads from `stream` into `received` until it holds `end`; takes everything up to and
/// including `end` off the front and returns it. `None` once the peer is gone.
async fn take_through(
    stream: &mut tokio::net::TcpStream,
    received: &mut Vec<u8>,
    end: &[u8],
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(at) = received.windows(end.len()).position(|w| w == end) {
            return Some(received.drain(..at + end.len()).collect());
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// An upstream that answers `/early` at once, before reading the request's body, and keeps
/// the connection for more requests once that body has arrived; everything else is answered
/// `quick`. Counts connections.
async fn early_answering_upstream() -> (std::net::SocketAddr, std::sync::Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut received = Vec::new();
                while let Some(head) = take_through(&mut stream, &mut received, b"\r\n\r\n").await {
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let text = if head.starts_with("post /early ") {
                        "early"
                    } else {
                        "quick"
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    // Only now the body, if any: a chunked one ends with an empty chunk.
                    if head.contains("transfer-encoding: chunked")
                        && take_through(&mut stream, &mut received, b"0\r\n\r\n")
                            .await
                            .is_none()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_connection_still_carrying_an_upload_is_not_lent_to_the_next_request() {
    use http_body_util::BodyExt;
    let (upstream, connections) = early_answering_upstream().await;
    let gateway = TestGateway::start_with(|config| {
        config.server.worker_threads = 1;
        config.upstreams[0].url = format!("http://{upstream}").parse().unwrap();
    })
    .await;

    // An upload whose answer comes back while its body is still being sent.
    let (chunks, body) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
        body,
        |mut body| async move {
            let chunk = body.recv().await?;
            Some((Ok(hyper::body::Frame::data(chunk)), body))
        },
    ));
    let mut uploader = gateway.h1().await;
    let request = uploader
        .request("POST", "/early")
        .body(http_body_util::BodyExt::boxed(body))
        .unwrap();
    chunks
        .send(bytes::Bytes::from_static(b"first part"))
        .await
        .unwrap();
    let response = uploader.send(request).await;
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, "early".as_bytes());

    // The upload is still open: the next request must not wait behind it.
    let mut other = gateway.h1().await;
    let quick = tokio::time::timeout(Duration::from_secs(5), other.get("/quick"))
        .await
        .expect("the second request was not held behind the unfinished upload");
    assert_eq!(quick.status, 200);
    assert_eq!(quick.body, "quick".as_bytes());
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // Once the upload ends, its connection is free for reuse again.
    drop(chunks);
    let mut third = gateway.h1().await;
    for _ in 0..3 {
        assert_eq!(third.get("/quick").await.status, 200);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_stream_to_both_protocols() {
    let gateway = TestGateway::start().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut client = crate::harness::Client::connect(gateway.https, protocol).await;
        let response = client.get("/download/67108864").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 64 * 1024 * 1024, "{protocol:?}");
    }
}

#[tokio::test]
async fn the_http_listener_redirects_to_the_public_origin() {
    let gateway = TestGateway::start().await;
    let response = crate::harness::plain_get(gateway.http.unwrap(), "/some/path?a=1&b=2").await;
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some("https://gateway.test:8443/some/path?a=1&b=2")
    );
    assert!(response.header("strict-transport-security").is_some());
    assert_eq!(gateway.upstream.seen_count(), 0);
}
