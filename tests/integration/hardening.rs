//! Hostile and malformed input: framing, Host, header and body limits, slow clients, the
//! connection cap, HTTP/2 settings. Each refused request must never reach the upstream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{raw_exchange, TestGateway};

const WAIT: Duration = Duration::from_secs(3);

async fn raw(gateway: &TestGateway, request: &str) -> String {
    let mut stream = gateway.raw_tls().await;
    raw_exchange(&mut stream, request.as_bytes(), WAIT).await
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn malformed_heads_are_refused_with_400_and_never_forwarded() {
    let gateway = TestGateway::start().await;
    let port = gateway.https.port();
    let cases = [
        ("missing host", "GET / HTTP/1.1\r\n\r\n".to_string()),
        (
            "duplicate host",
            format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\nHost: other.example\r\n\r\n"),
        ),
        (
            "absolute-form target disagreeing with host",
            format!("GET https://evil.example/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"),
        ),
        ("CR inside a header value", format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\nX-A: a\rb\r\n\r\n")),
        ("NUL inside a header value", format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\nX-A: a\0b\r\n\r\n")),
        ("host with userinfo", "GET / HTTP/1.1\r\nHost: user@localhost\r\n\r\n".to_string()),
        (
            "conflicting content-lengths",
            format!("POST / HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
        ),
        ("encoded slash", format!("GET /a%2f..%2fadmin HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")),
        ("raw backslash", format!("GET /a\\..\\admin HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")),
    ];
    for (name, request) in cases {
        let answer = raw(&gateway, &request).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 400"),
            "{name}: {answer}"
        );
    }
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "{:?}",
        gateway.upstream.seen()
    );

    let matching = raw(
        &gateway,
        &format!("GET https://localhost:{port}/ok HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        status_line(&matching).starts_with("HTTP/1.1 200"),
        "{matching}"
    );
    assert_eq!(gateway.upstream.last_seen().target, "/ok");
}

/// `Content-Length` with `Transfer-Encoding` is refused (contract 6.6), whichever comes first:
/// hyper alone would let the chunking win, which a server reading the length would not
/// agree with. The bytes after the refused head are never read as another request.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_cannot_smuggle() {
    let gateway = TestGateway::start().await;
    let port = gateway.https.port();
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        let request = format!(
            "POST /first HTTP/1.1\r\nHost: localhost:{port}\r\n{order}\r\n\r\n4\r\nbody\r\n0\r\n\r\n{smuggled}"
        );
        let answer = raw(&gateway, &request).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 400"),
            "{order}: {answer}"
        );
        assert!(
            answer
                .contains(r#"{"detail":"Request has both Content-Length and Transfer-Encoding"}"#),
            "{order}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{order}: exactly one response: {answer}"
        );
    }
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "{:?}",
        gateway.upstream.seen()
    );
}

#[tokio::test]
async fn an_error_before_the_body_is_read_closes_the_connection() {
    let gateway = TestGateway::start().await;
    let port = gateway.https.port();
    // The body is itself a request; if the gateway kept the connection open after refusing
    // the first, it would read the body as a second request and forward it.
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let request = format!(
        "POST /a%2fb HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let answer = raw(&gateway, &request).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {answer}"
    );
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn headers_over_the_limit_get_a_json_431() {
    let gateway = TestGateway::start_with(|config| config.server.max_header_bytes = 4096).await;
    let mut client = gateway.h1().await;
    let request = client
        .request("GET", "/")
        .header("x-big", "a".repeat(6000))
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 431);
    assert_eq!(response.detail(), "Request headers too large");

    let mut client = gateway.h2().await;
    let request = client
        .request("GET", "/")
        .header("x-big", "a".repeat(6000))
        .body(crate::harness::empty())
        .unwrap();
    let response = client.send_read(request).await;
    assert_eq!(response.status, 431);
    assert_eq!(response.detail(), "Request headers too large");
    assert_eq!(gateway.upstream.seen_count(), 0);

    // A 100 kB header list over HTTP/2 is the gateway's JSON 431 too, not h2's bare one.
    let gateway = TestGateway::start().await;
    let mut client = gateway.h2().await;
    let mut request = client.request("GET", "/");
    for index in 0..100 {
        request = request.header(format!("x-filler-{index}"), "a".repeat(1000));
    }
    let response = client
        .send_read(request.body(crate::harness::empty()).unwrap())
        .await;
    assert_eq!(response.status, 431);
    assert_eq!(response.detail(), "Request headers too large");
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_whether_declared_or_streamed() {
    let gateway = TestGateway::start_with(|config| config.server.max_body_bytes = 1000).await;
    let mut client = gateway.h1().await;
    let declared = client
        .request("POST", "/sink")
        .body(crate::harness::full(vec![b'a'; 1001]))
        .unwrap();
    let response = client.send_read(declared).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.detail(), "Request body too large");
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        gateway.upstream.seen_count(),
        0,
        "a declared oversize body is refused before forwarding"
    );

    // Chunked, so the size is only known while streaming.
    let port = gateway.https.port();
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /sink HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(&gateway, &request).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 413"), "{answer}");

    let mut client = gateway.h1().await;
    let fits = client
        .request("POST", "/sink")
        .body(crate::harness::full(vec![b'a'; 1000]))
        .unwrap();
    let response = client.send_read(fits).await;
    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"1000");
}

#[tokio::test]
async fn slow_clients_are_dropped() {
    let gateway = TestGateway::start_with(|config| {
        config.server.header_read_timeout = Duration::from_millis(300);
        config.server.tls.handshake_timeout = Duration::from_millis(300);
    })
    .await;

    // Headers that never finish (slowloris).
    let mut stream = gateway.raw_tls().await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: ")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the gateway closed the connection"
    );

    // A TLS connection that never sends a request: the wait for its first bytes is bounded
    // like the head it would send.
    let mut silent = gateway.raw_tls().await;
    let closed = tokio::time::timeout(WAIT, silent.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the gateway closed the silent connection: {closed:?}"
    );

    // A TCP connection that never starts its TLS handshake.
    let mut tcp = tokio::net::TcpStream::connect(gateway.https).await.unwrap();
    let closed = tokio::time::timeout(WAIT, tcp.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let gateway = TestGateway::start_with(|config| config.server.max_connections = 2).await;
    let mut first = gateway.h1().await;
    let mut second = gateway.h1().await;
    assert_eq!(first.get("/").await.status, 200);
    assert_eq!(second.get("/").await.status, 200);

    let connector = tokio_rustls::TlsConnector::from(
        crate::harness::Pki::shared().client_config(&[b"http/1.1"]),
    );
    let tcp = tokio::net::TcpStream::connect(gateway.https).await.unwrap();
    let third = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(
        third.is_err(),
        "the third connection is closed before its handshake"
    );

    drop(first);
    // A slot frees when a connection ends; the next connection is served.
    let mut served = false;
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(gateway.https).await.unwrap();
        if connector
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .is_ok()
        {
            served = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot was freed");
    let metrics = gateway.ops_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        !text.contains("portcullis_connections_rejected_total 0"),
        "{text}"
    );
}

#[tokio::test]
async fn http2_settings_bound_streams_and_header_lists() {
    let gateway =
        TestGateway::start_with(|config| config.server.http2_max_concurrent_streams = 64).await;
    let mut stream = crate::harness::tls_connect(gateway.https, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.unwrap();
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks(6)
        .map(|setting| {
            (
                u16::from_be_bytes([setting[0], setting[1]]),
                u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]),
            )
        })
        .collect();
    assert_eq!(
        settings.get(&3),
        Some(&64),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    // Bounded, at 8x the default 16 KiB head limit: room for the gateway's own JSON 431.
    assert_eq!(
        settings.get(&6),
        Some(&(128 * 1024)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
}

#[tokio::test]
async fn many_reset_http2_streams_do_not_stop_the_gateway() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.h2().await;
    // Start requests and abandon them at once: each abandoned stream is reset by the client.
    for _ in 0..300 {
        let request = client
            .request("GET", "/never")
            .body(crate::harness::empty())
            .unwrap();
        let pending = client.try_send(request);
        let _ = tokio::time::timeout(Duration::from_millis(1), pending).await;
    }
    let mut fresh = gateway.h2().await;
    assert_eq!(fresh.get("/").await.status, 200);
}

/// A client may send its request in the same flight as its handshake's last message, so the
/// request is already decrypted when the handshake ends and nothing more will arrive on the
/// socket: the gateway must serve it rather than wait for bytes that never come.
#[tokio::test]
async fn a_request_sent_with_the_clients_finished_message_is_served() {
    let gateway = TestGateway::start().await;
    let https = gateway.https;
    let request = format!(
        "GET /first-flight HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        https.port()
    );
    let answer = tokio::task::spawn_blocking(move || {
        request_in_the_finished_flight(https, request.as_bytes())
    });
    let answer = tokio::time::timeout(WAIT, answer)
        .await
        .expect("the request is answered without more bytes from the client")
        .unwrap();
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(gateway.upstream.seen_count(), 1);
}

/// A TLS 1.3 handshake driven by hand: the client's Finished stays queued until the request
/// is written behind it, and both leave in one `write`.
fn request_in_the_finished_flight(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let config = crate::harness::Pki::shared().client_config(&[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    while tls.is_handshaking() {
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        tls.read_tls(&mut tcp).unwrap();
        tls.process_new_packets().unwrap();
    }
    assert_eq!(
        tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(tls.wants_write(), "the client's Finished is still queued");
    tls.writer().write_all(request).unwrap();
    let mut flight = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut flight).unwrap();
    }
    tcp.write_all(&flight).unwrap();

    let mut answer = Vec::new();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut chunk = [0u8; 4096];
    while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&chunk[..read]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
