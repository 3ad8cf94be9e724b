//! Rate limits, the rooms-per-connection bound, and `refresh`.

use super::*;

#[tokio::test]
async fn rate_limited_then_allowed_again() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.message_burst = 2;
    config.limits.rate_violations_max = 100;
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    // Six pings in one write: the burst allows two.
    for i in 0..6 {
        let ping = json!({"action": "ping", "id": i}).to_string();
        c.ws.feed(Message::text(ping)).await.expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let mut limited = 0;
    for i in 0..6 {
        let reply = c.recv_json().await;
        assert_eq!(reply["id"], i, "replies come in order: {reply}");
        if i < 2 {
            assert_eq!(reply["type"], "pong", "within the burst: {reply}");
        } else if reply["type"] == "error" {
            assert_error(&reply, "RATE_LIMITED");
            limited += 1;
        }
    }
    assert!(
        limited >= 1,
        "no RATE_LIMITED for 6 messages with a burst of 2"
    );
    // After a pause the allowance is back.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(c.request(json!({"action": "ping"})).await["type"], "pong");
    c.close().await;
}

#[tokio::test]
async fn too_many_rooms() {
    let mut config = test_config();
    config.limits.rooms_per_connection_max = 2;
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    c.join("a").await;
    c.join("b").await;
    let e = c
        .request(json!({"action": "join", "data": {"room": "c"}, "id": "c"}))
        .await;
    assert_error(&e, "TOO_MANY_ROOMS");
    assert_eq!(e["id"], "c");
    // re-joining a room one is in does not count
    c.join("a").await;
    // and the refused join left no membership
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "c", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 0);
    c.request(json!({"action": "leave", "data": {"room": "a"}}))
        .await;
    c.join("c").await;
    c.close().await;
}

#[tokio::test]
async fn refresh_with_an_invalid_token_is_invalid_token() {
    let server = TestServer::start_default().await;
    let mut c = server.client_with_token(&token("alice", "")).await;
    let e = c
        .request(json!({"action": "refresh", "data": {"token": "not-a-jwt"}, "id": 1}))
        .await;
    assert_error(&e, "INVALID_TOKEN");
    assert_eq!(e["id"], 1);
    let e = c.request(json!({"action": "refresh", "data": {}})).await;
    assert_error(&e, "INVALID_MESSAGE");
    // the old token stays in force
    c.join("user:alice").await;
    c.close().await;
}

/// PROTOCOL section 4: `refresh` "replaces an expiring token without
/// reconnecting". The server answers every refresh with INVALID_TOKEN
/// ("not available on this server yet").
#[tokio::test]
async fn refresh_with_a_valid_token_is_accepted() {
    let server = TestServer::start_default().await;
    let mut c = server.client_with_token(&token("alice", "")).await;
    let reply = c
        .request(json!({"action": "refresh", "data": {"token": token("alice", "")}}))
        .await;
    assert_ne!(reply["type"], "error", "{reply}");
    c.close().await;
}
