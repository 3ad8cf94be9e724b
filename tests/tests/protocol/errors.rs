//! `ping` and id echo, and the errors a malformed or unknown message gets.

use super::*;

#[tokio::test]
async fn ping_pong_and_id_echo() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;

    let pong = c.request(json!({"action": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["data"], json!({}));
    assert!(pong.get("id").is_none(), "{pong}");
    assert!(is_timestamp(pong["timestamp"].as_str().unwrap_or("")));

    for id in [json!("req-1"), json!(42), json!(1.5), json!(""), json!(-7)] {
        let pong = c.request(json!({"action": "ping", "id": id})).await;
        assert_eq!(pong["type"], "pong");
        assert_eq!(pong["id"], id, "{pong}");
    }
    let reply = c
        .request(json!({"action": "join", "data": {"room": "r"}, "id": "j"}))
        .await;
    assert_eq!(reply["id"], "j");

    // ids are echoed on errors too
    let e = c.request(json!({"action": "x", "id": "e1"})).await;
    assert_error(&e, "UNKNOWN_ACTION");
    assert_eq!(e["id"], "e1");
    let e = c
        .request(json!({"action": "join", "data": {"room": ""}, "id": 9}))
        .await;
    assert_error(&e, "INVALID_SUBSCRIPTION");
    assert_eq!(e["id"], 9);
    let e = c.request(json!({"id": "no-action"})).await;
    assert_error(&e, "INVALID_MESSAGE");
    assert_eq!(e["id"], "no-action");
    let e = c
        .request(json!({"action": "join", "data": {"room": "user:bob"}, "id": 10}))
        .await;
    assert_error(&e, "FORBIDDEN");
    assert_eq!(e["id"], 10);
    c.close().await;
}

#[tokio::test]
async fn invalid_messages() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    for text in [
        "hello",
        "{not json",
        "",
        "[1, 2]",
        "[]",
        "\"join\"",
        "42",
        "null",
        "{}",
        r#"{"action": 5}"#,
        r#"{"action": null}"#,
        r#"{"action": ["join"]}"#,
        r#"{"action": "join", "data": "downloads"}"#,
        r#"{"action": "ping", "data": [1]}"#,
        r#"{"action": "ping", "id": {"a": 1}}"#,
        r#"{"action": "ping", "id": [1]}"#,
        r#"{"action": "ping", "id": true}"#,
        r#"{"action": "join", "data": {"room": "r", "since": 5}}"#,
        r#"{"action": "presence", "data": {"room": "r", "after": 5}}"#,
    ] {
        c.send_text(text).await;
        let reply = c.recv_json().await;
        assert_error(&reply, "INVALID_MESSAGE");
        assert!(reply.get("id").is_none(), "{text}: {reply}");
    }
    // A binary frame
    c.send_message(Message::binary(b"{\"action\":\"ping\"}".to_vec()))
        .await;
    assert_error(&c.recv_json().await, "INVALID_MESSAGE");
    // The connection stays usable after every error.
    assert_eq!(c.request(json!({"action": "ping"})).await["type"], "pong");
    c.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn invalid_subscriptions() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let long = "x".repeat(129);
    for request in [
        json!({"action": "join"}),
        json!({"action": "join", "data": {}}),
        json!({"action": "join", "data": {"room": ""}}),
        json!({"action": "join", "data": {"room": null}}),
        json!({"action": "join", "data": {"room": "a b"}}),
        json!({"action": "join", "data": {"room": "room/1"}}),
        json!({"action": "join", "data": {"room": "ümlaut"}}),
        json!({"action": "join", "data": {"room": long}}),
        json!({"action": "join", "data": {"room": 5}}),
        json!({"action": "join", "data": {"room": ["a"]}}),
        json!({"action": "join", "room": ""}),
        json!({"action": "leave"}),
        json!({"action": "leave", "data": {"room": "bad room"}}),
        json!({"action": "presence", "data": {}}),
    ] {
        let reply = c.request(request.clone()).await;
        assert_error(&reply, "INVALID_SUBSCRIPTION");
    }
    // 128 bytes of the allowed alphabet is fine.
    let ok = format!("A-b_c.d:e{}", "x".repeat(119));
    assert_eq!(ok.len(), 128);
    c.join(&ok).await;
    c.close().await;
}

#[tokio::test]
async fn unknown_actions() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let reply = c.request(json!({"action": "x"})).await;
    assert_eq!(assert_error(&reply, "UNKNOWN_ACTION"), "Unknown action: x");
    let reply = c.request(json!({"action": "subscribe", "data": {}})).await;
    assert_eq!(
        assert_error(&reply, "UNKNOWN_ACTION"),
        "Unknown action: subscribe"
    );
    let reply = c.request(json!({"action": ""})).await;
    assert_eq!(assert_error(&reply, "UNKNOWN_ACTION"), "Unknown action: ");
    c.close().await;
}
