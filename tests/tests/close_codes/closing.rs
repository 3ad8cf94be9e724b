//! Closes the client starts, and 1001 at shutdown.

use super::*;

/// RFC 6455 section 5.5.1: an endpoint that receives a close frame sends a
/// close frame in response. The server drops the TCP connection instead.
#[tokio::test]
async fn client_initiated_close_is_answered_with_a_close_frame() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    c.join("r").await;
    let answer = c.close_normally().await;
    assert_eq!(
        answer,
        Ok(1000),
        "the server must answer a client's close frame with its own"
    );
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "client").await, 1.0);
}

/// A client close removes every membership at once (section 3.5).
#[tokio::test]
async fn client_close_releases_memberships() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    c.join("a").await;
    c.join("b").await;
    assert_eq!(server.status().await["rooms"], 2);
    c.close().await;
    server.assert_connections(0).await;
    let response = server
        .broadcast(
            &publisher(),
            json!({"rooms": ["a", "b"], "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 0, "{response:?}");
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let mut config = test_config();
    config.shutdown_drain_ms = 10_000;
    let mut server = TestServer::start(config).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = server.client().await;
        c.join(&format!("room-{}", i % 2)).await;
        clients.push(c);
    }
    server.assert_connections(5).await;
    server.trigger_shutdown();
    let closes = clients.iter_mut().map(|c| c.expect_close(1001));
    for before in futures_util::future::join_all(closes).await {
        assert!(before.is_empty(), "{before:?}");
    }
    server
        .join()
        .await
        .expect("serve returns Ok after the drain");
    assert_eq!(
        roomcast_tests::metric_value(
            &server.metrics.encode(),
            "roomcast_disconnects_total{reason=\"shutdown\"}"
        ),
        Some(5.0)
    );
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}
