//! WebSocket upgrades are tunnelled end to end, and only once the upstream has agreed.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{tls_connect, TestGateway};

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
