//! Contract 6.11 through the real listener: bodies that stall or trickle are cut off with a
//! JSON 408, an `/auth` body declared too large is refused before it is sent, an oversized
//! head is answered with a readable JSON 431, and a chunked body broken after its head has
//! gone on is the client's 400, never a 502. Timeouts are set small; no test waits them out
//! at their defaults.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{raw_exchange, read_until_closed, TestGateway};

const WAIT: Duration = Duration::from_secs(5);
const BODY_TIMEOUT: Duration = Duration::from_millis(300);

async fn gateway() -> TestGateway {
    TestGateway::start_with(|config| config.server.body_read_timeout = BODY_TIMEOUT).await
}

fn assert_json_error(answer: &str, status: &str, detail: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!(r#"{{"detail":"{detail}"}}"#)),
        "{answer}"
    );
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_with_408_on_forwarded_and_auth_routes() {
    let gateway = gateway().await;
    let port = gateway.https.port();
    for path in ["/upload", "/auth/login"] {
        let mut stream = gateway.raw_tls().await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"email\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let answer = read_until_closed(&mut stream, WAIT).await;
        assert_json_error(&answer, "408", "Request body timed out");
        assert!(
            started.elapsed() < WAIT,
            "{path}: answered after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_with_408() {
    let gateway = gateway().await;
    let port = gateway.https.port();
    for path in ["/upload", "/auth/login"] {
        let mut stream = gateway.raw_tls().await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // A byte at a time: never silent, but far below the progress a body must make.
        let mut answer = String::new();
        for _ in 0..100 {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            let mut buffer = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(30), stream.read(&mut buffer)).await {
                Ok(Ok(read)) if read > 0 => {
                    answer.push_str(&String::from_utf8_lossy(&buffer[..read]));
                    answer.push_str(&read_until_closed(&mut stream, WAIT).await);
                    break;
                }
                Ok(_) => break,
                Err(_) => {}
            }
        }
        assert_json_error(&answer, "408", "Request body timed out");
    }
}

#[tokio::test]
async fn an_auth_body_declared_too_large_is_refused_before_it_is_sent() {
    let gateway = TestGateway::start().await;
    let port = gateway.https.port();
    let mut stream = gateway.raw_tls().await;
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, WAIT).await;
    assert_json_error(&answer, "413", "Request body too large");

    // Within the limit, /auth still reads the body.
    let login = r#"{"email":"nobody@example.com","password":"wrong-password-1A!"}"#;
    let mut stream = gateway.raw_tls().await;
    let request = format!(
        "POST /auth/login HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{login}",
        login.len()
    );
    let answer = raw_exchange(&mut stream, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn a_hundred_kilobyte_head_gets_a_readable_json_431() {
    let gateway = TestGateway::start().await;
    let port = gateway.https.port();
    let mut stream = gateway.raw_tls().await;
    let mut head = format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for index in 0..100 {
        head.push_str(&format!("X-Filler-{index}: {}\r\n", "a".repeat(1000)));
    }
    head.push_str("\r\n");
    // The whole head is sent even though the gateway answers after its first 16 KiB: the
    // graceful close reads the rest, so the answer arrives instead of a reset.
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, WAIT).await;
    assert_json_error(&answer, "431", "Request headers too large");
    assert_eq!(gateway.upstream.seen_count(), 0);
}

#[tokio::test]
async fn a_chunked_body_broken_after_its_head_went_on_is_400_not_502() {
    let gateway = gateway().await;
    let port = gateway.https.port();
    let mut stream = gateway.raw_tls().await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    // Let the head and first chunk go on to the upstream before the bad size line arrives.
    let deadline = Instant::now() + WAIT;
    while gateway.upstream.seen_count() == 0 && Instant::now() < deadline {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    stream
        .write_all(format!("-5\r\nhello\r\n0\r\n\r\n{smuggled}").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, WAIT).await;
    assert_json_error(&answer, "400", "Malformed request body");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(gateway
        .upstream
        .seen()
        .iter()
        .all(|seen| seen.target != "/smuggled"));

    // The upstream connection left mid-request is discarded: the next request needs a new one.
    let connections = || {
        gateway
            .upstream
            .state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(connections(), 1);
    let mut client = gateway.h1().await;
    assert_eq!(client.get("/after").await.status, 200);
    assert_eq!(connections(), 2);
}
