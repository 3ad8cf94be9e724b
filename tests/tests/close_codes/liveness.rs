//! Token expiry (4001) and heartbeats (4002).

use super::*;

#[tokio::test]
async fn an_expired_token_closes_the_connection_with_4001() {
    let mut config = test_config();
    // Warn one second ahead of the two-second token.
    config.limits.token_warning_ms = 1_000;
    let server = TestServer::start(config).await;
    let mut c = server
        .client_with_token(&token_ttl("shortlived", "", 2))
        .await;
    assert_eq!(c.connected["data"]["authenticated"], true);
    c.join("user:shortlived").await;
    // Keep answering (pings included) until the server closes: the only
    // message before the close is the expiry warning.
    let before = c.expect_close(4001).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["type"], "system_warning");
    assert_eq!(before[0]["data"]["code"], "TOKEN_EXPIRING");
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "token_expired").await, 1.0);
}

fn heartbeat_config() -> roomcast_net::ServerConfig {
    let mut config = test_config();
    config.limits.ping_interval_ms = 300;
    config.limits.idle_timeout_ms = 1500;
    config
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_4002() {
    let server = TestServer::start(heartbeat_config()).await;
    let mut silent = server.client().await;
    // Not reading means not answering the server's pings.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if disconnects(&server, "idle").await >= 1.0 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let before = silent.expect_close(4002).await;
    assert!(before.is_empty(), "{before:?}");
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "idle").await, 1.0);
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let server = TestServer::start(heartbeat_config()).await;
    let mut c = server.client().await;
    // Reading for over two idle timeouts answers every ping; no message arrives.
    assert_eq!(c.recv_json_within(Duration::from_millis(3500)).await, None);
    assert_eq!(c.request(json!({"action": "ping"})).await["type"], "pong");
    assert_eq!(disconnects(&server, "idle").await, 0.0);
    c.close().await;
    server.assert_connections(0).await;
}

/// Client messages count as activity on their own. The client sends a
/// ping action every 250 ms for over two idle timeouts and reads nothing
/// meanwhile, so it answers none of the server's WebSocket pings (a
/// tungstenite client queues its pong only when it reads the ping). Were
/// its messages not counted, the server would close it with 4002 after
/// 1.5 s; instead every request is answered, in order, with no close.
#[tokio::test]
async fn a_client_that_only_sends_messages_stays_connected() {
    const PINGS: usize = 14;
    let server = TestServer::start(heartbeat_config()).await;
    let mut c = server.client().await;
    for i in 0..PINGS {
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.send_json(json!({"action": "ping", "id": i})).await;
    }
    for i in 0..PINGS {
        let reply = c.recv_json().await;
        assert_eq!(reply["type"], "pong", "{reply}");
        assert_eq!(reply["id"], i, "{reply}");
    }
    assert_eq!(disconnects(&server, "idle").await, 0.0);
    c.close().await;
    server.assert_connections(0).await;
}
