//! The `connected` message, `join` and `leave` (both forms, idempotent).

use super::*;

#[tokio::test]
async fn connected_message_for_anonymous_and_authenticated_clients() {
    let mut config = test_config();
    config.server_name = "Roomcast Test".to_owned();
    let server = TestServer::start(config).await;

    let anonymous = server.client().await;
    let m = &anonymous.connected;
    assert_eq!(m["type"], "connected");
    assert!(is_timestamp(m["timestamp"].as_str().unwrap_or("")), "{m}");
    assert!(is_uuid(&anonymous.connection_id), "{m}");
    assert_eq!(m["data"]["message"], "Connected to Roomcast Test WebSocket");
    assert_eq!(m["data"]["authenticated"], false, "{m}");
    assert!(m["data"].get("user_id").is_none(), "{m}");
    assert!(m.get("room").is_none() && m.get("seq").is_none(), "{m}");

    let alice = server.client_with_token(&token("alice", "")).await;
    let m = &alice.connected;
    assert_eq!(m["data"]["authenticated"], true, "{m}");
    assert_eq!(m["data"]["user_id"], "alice", "{m}");
    assert!(is_uuid(&alice.connection_id));
    assert_ne!(alice.connection_id, anonymous.connection_id);

    anonymous.close().await;
    alice.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn join_in_both_forms_then_leave() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;

    // data form
    let reply = c
        .request(json!({"action": "join", "data": {"room": "downloads"}}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert!(is_timestamp(reply["timestamp"].as_str().unwrap_or("")));
    assert_eq!(reply["data"]["message"], "Joined room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    assert_eq!(reply["data"]["seq"], 0, "fresh room: {reply}");
    let epoch = reply["data"]["epoch"].as_str().expect("epoch").to_owned();
    assert!(!epoch.is_empty());

    // top-level form (the seed's docstring)
    let reply = c.request(json!({"action": "join", "room": "queue"})).await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["data"]["message"], "Joined room: queue");
    assert_eq!(reply["data"]["room"], "queue");

    // seq in the join reply is the room's latest
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "downloads", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let broadcast = c.recv_json().await;
    assert_eq!(broadcast["seq"], 1);
    let mut other = server.client().await;
    let reply = other.join("downloads").await;
    assert_eq!(reply["data"]["seq"], 1, "{reply}");
    assert_eq!(reply["data"]["epoch"], epoch.as_str(), "{reply}");

    // leave
    let reply = c
        .request(json!({"action": "leave", "data": {"room": "downloads"}}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["data"]["message"], "Left room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    let reply = c.request(json!({"action": "leave", "room": "queue"})).await;
    assert_eq!(reply["data"]["message"], "Left room: queue", "{reply}");

    // after leaving nothing more arrives from that room
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "downloads", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1, "only `other` is left");
    c.assert_nothing_pending().await;
    assert_eq!(other.recv_json().await["seq"], 2);

    c.close().await;
    other.close().await;
    server.assert_connections(0).await;
}

#[tokio::test]
async fn leaving_a_room_one_is_not_in_is_not_an_error() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let reply = c
        .request(json!({"action": "leave", "data": {"room": "never-joined"}, "id": 3}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["data"]["message"], "Left room: never-joined");
    assert_eq!(reply["id"], 3);
    c.close().await;
}

#[tokio::test]
async fn joining_twice_is_idempotent() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let first = c.join("dup").await;
    let second = c.join("dup").await;
    assert_eq!(first["data"]["epoch"], second["data"]["epoch"]);
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "dup", "type": "queue_status", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1, "{response:?}");
    let received = c.fence().await;
    assert_eq!(received.len(), 1, "one delivery, not two: {received:?}");
    assert_eq!(received[0]["seq"], 1);
    // One leave is enough to stop deliveries.
    c.request(json!({"action": "leave", "data": {"room": "dup"}}))
        .await;
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "dup", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 0);
    c.assert_nothing_pending().await;
    c.close().await;
}
