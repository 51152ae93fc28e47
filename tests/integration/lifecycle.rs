//! The ops listener and the life of the server: health, readiness, metrics, and a graceful
//! shutdown that finishes in-flight requests while refusing new connections.

use std::time::Duration;

use crate::harness::{base_config, empty, tls_over, TestGateway, Upstream};

#[tokio::test]
async fn ops_endpoints_report_health_readiness_and_metrics() {
    let gateway = TestGateway::start().await;
    let health = gateway.ops_get("/healthz").await;
    assert_eq!(health.status, 200);
    let ready = gateway.ops_get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");

    let mut client = gateway.h1().await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(client.get("/auth/none").await.status, 404);
    let metrics = gateway.ops_get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&metrics.body);
    for expected in [
        "portcullis_http_requests_total{class=\"2xx\"} 3",
        "portcullis_http_requests_total{class=\"4xx\"} 1",
        "portcullis_http_request_duration_seconds_count 4",
        "portcullis_open_connections 1",
        "# TYPE portcullis_http_request_duration_seconds histogram",
        "portcullis_upstream_errors_total{kind=\"connect\"} 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(gateway.ops_get("/nothing").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let mut gateway = TestGateway::start().await;
    let mut client = gateway.h1().await;
    let held = gateway.upstream.state.held.notified();
    let in_flight = tokio::spawn(async move { client.get("/hold").await });
    held.await;

    gateway.begin_shutdown();
    // Wait until the listener is closed: the server drops it as its first act of shutdown.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(gateway.https).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections are refused once shutdown begins");
    let ready = gateway.ops_get("/readyz").await;
    assert_eq!(ready.status, 503, "not ready while draining: {ready:?}");
    assert!(ready.detail().contains("shutting down"));

    gateway.upstream.state.release.notify_waiters();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"released");
    gateway.stopped().await;
}

/// A balancer connects, the kernel completes the connection, and the gateway is told to stop
/// before it accepted it: the connection must be served, never reset unanswered (which the
/// balancer cannot retry elsewhere, unlike a refused connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_when_shutdown_begins_are_served_not_reset() {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use portcullis::app::App;
    use portcullis::server::{self, Listeners};

    let upstream = Upstream::start().await;
    let config = base_config(&upstream.url(), 1);
    let app = App::build(&config).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let (https, http) = (listeners.https_addr(), listeners.http_addr().unwrap());
    // Connected before the gateway runs at all: the kernel holds them in the listeners'
    // queues, as it does for connections arriving just as a SIGTERM does.
    let mut queued_https = Vec::new();
    for _ in 0..6 {
        queued_https.push(tokio::net::TcpStream::connect(https).await.unwrap());
    }
    let queued_http = tokio::net::TcpStream::connect(http).await.unwrap();
    let server = tokio::spawn(server::serve(app, listeners, async {}));

    for tcp in queued_https {
        let tls = tls_over(tcp, &[b"http/1.1"]).await;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("/queued")
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["connection"], "close");
        response.into_body().collect().await.unwrap();
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(queued_http))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/plain")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 308);

    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the drain ends once the queued connections are served")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(https).await.is_err());
    assert_eq!(upstream.seen_count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_bounded_by_its_deadline() {
    let mut gateway = TestGateway::start_with(|config| {
        config.server.drain_timeout = Duration::from_millis(200);
    })
    .await;
    let mut client = gateway.h1().await;
    let stuck = tokio::spawn(async move {
        let request = client
            .request("GET", "/never")
            .body(crate::harness::empty())
            .unwrap();
        client.try_send(request).await
    });
    while gateway.upstream.seen_count() == 0 {
        tokio::task::yield_now().await;
    }
    gateway.begin_shutdown();
    gateway.stopped().await;
    stuck.abort();
}

/// With a drain delay, `/readyz` turns 503 first and the listener keeps accepting for the
/// delay: a balancer that polls it takes the instance out while new connections are still
/// served, so none arrives as the listener closes (the kernel would reset it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_readyz_is_503_and_new_connections_are_still_served() {
    let mut gateway = TestGateway::start_with(|config| {
        config.server.drain_delay = Duration::from_secs(3);
    })
    .await;
    let started = tokio::time::Instant::now();
    gateway.begin_shutdown();
    while gateway.ops_get("/readyz").await.status != 503 {
        tokio::task::yield_now().await;
    }
    let response = gateway.get("/during-the-delay").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the check ran past the delay; it proves nothing"
    );
    assert_eq!(response.status, 200, "{response:?}");
    gateway.stopped().await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "stopped before the drain delay was over"
    );
}

/// A connection that finished its handshake and sent nothing holds no request: the drain
/// closes it at once instead of waiting for it (here the header timeout and the drain
/// timeout are both far longer than the test allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_connections_that_have_sent_nothing() {
    use tokio::io::AsyncReadExt;

    let mut gateway = TestGateway::start_with(|config| {
        config.server.header_read_timeout = Duration::from_secs(120);
        config.server.drain_timeout = Duration::from_secs(120);
    })
    .await;
    let mut silent = gateway.raw_tls().await;
    let mut served = gateway.h1().await;
    assert_eq!(served.get("/").await.status, 200);

    gateway.begin_shutdown();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection is closed: {closed:?}"
    );
    gateway.stopped().await;
}
