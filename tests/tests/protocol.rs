//! PROTOCOL sections 2-4: the connected message, client actions, replies,
//! id echo and every error code a client can provoke.

use std::time::Duration;

use futures_util::SinkExt;

use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::coding::{
    Data as OpData, OpCode,
};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::Frame;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use roomcast_tests::{assert_error, is_timestamp, is_uuid, test_config, Auth, Client, TestServer};
use serde_json::{json, Value};

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

#[tokio::test]
async fn forbidden_rooms_presence_and_publish() {
    let server = TestServer::start_default().await;
    let mut anonymous = server.client().await;
    let mut alice = server.client_with_token(&token("alice", "")).await;
    let mut bob = server.client_with_token(&token("bob", "")).await;

    // private user rooms
    assert_error(
        &anonymous
            .request(json!({"action": "join", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &bob.request(json!({"action": "join", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &alice
            .request(json!({"action": "join", "data": {"room": "user:alice2"}}))
            .await,
        "FORBIDDEN",
    );
    alice.join("user:alice").await;

    // presence of a room one is not in (existing or not)
    assert_error(
        &bob.request(json!({"action": "presence", "data": {"room": "user:alice"}}))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &bob.request(json!({"action": "presence", "data": {"room": "nobody-here"}}))
            .await,
        "FORBIDDEN",
    );

    // client publish without a publish grant
    let publish = json!({"action": "publish", "data": {"room": "news", "type": "system_info", "data": {"message": "hi"}}});
    assert_error(&anonymous.request(publish.clone()).await, "FORBIDDEN");
    assert_error(&bob.request(publish.clone()).await, "FORBIDDEN");
    let mut scoped = server
        .client_with_token(&token("carol", "publish:other"))
        .await;
    assert_error(&scoped.request(publish).await, "FORBIDDEN");

    // a broadcast to user:alice reaches only alice
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "user:alice", "type": "system_info", "data": {"message": "for alice"}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1);
    assert_eq!(alice.recv_json().await["data"]["message"], "for alice");
    bob.assert_nothing_pending().await;
    anonymous.assert_nothing_pending().await;

    for c in [anonymous, alice, bob, scoped] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn client_publish_with_a_publish_scope() {
    let server = TestServer::start_default().await;
    let mut member = server.client().await;
    member.join("news").await;
    let mut author = server
        .client_with_token(&token("editor", "publish:news"))
        .await;

    let reply = author
        .request(json!({"action": "publish", "id": "p1", "data": {
            "room": "news", "type": "system_info", "data": {"message": "extra!"}}}))
        .await;
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["id"], "p1");
    assert_eq!(reply["data"]["room"], "news");
    assert_eq!(reply["data"]["seq"], 1);
    assert_eq!(reply["data"]["delivered"], 1, "{reply}");

    let got = member.recv_json().await;
    assert_eq!(got["type"], "system_info", "{got}");
    assert_eq!(got["room"], "news");
    assert_eq!(got["seq"], 1);
    assert_eq!(got["data"], json!({"message": "extra!"}));
    assert!(is_timestamp(got["timestamp"].as_str().unwrap_or("")));

    // a publisher need not be a member; the unrestricted scope publishes anywhere
    let mut boss = server.client_with_token(&token("boss", "publish")).await;
    let reply = boss
        .request(json!({"action": "publish", "data": {
            "room": "news", "type": "download_progress",
            "data": {"key": "attack-on-titan", "percent": 45.2}}}))
        .await;
    assert_eq!(reply["data"]["seq"], 2, "{reply}");
    let got = member.recv_json().await;
    assert_eq!(got["type"], "download_progress");
    assert_eq!(got["seq"], 2);
    assert_eq!(got["data"]["key"], "attack-on-titan");

    // validation errors of a client publish
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news", "type": "made_up"}}))
        .await;
    assert_error(&e, "UNKNOWN_TYPE");
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news", "type": "connected"}}))
        .await;
    assert_error(&e, "UNKNOWN_TYPE");
    let e = boss
        .request(json!({"action": "publish", "data": {
            "room": "news", "type": "download_complete", "data": {"key": "a b"}}}))
        .await;
    assert_error(&e, "INVALID_KEY");
    let e = boss
        .request(json!({"action": "publish", "data": {"room": "news"}}))
        .await;
    assert_error(&e, "INVALID_MESSAGE");
    member.assert_nothing_pending().await;

    for c in [member, author, boss] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn presence_lists_members() {
    let server = TestServer::start_default().await;
    let mut alice = server.client_with_token(&token("alice", "")).await;
    let mut alice2 = server.client_with_token(&token("alice", "")).await;
    let mut bob = server.client_with_token(&token("bob", "")).await;
    let mut anonymous = server.client().await;
    for c in [&mut alice, &mut alice2, &mut bob, &mut anonymous] {
        c.join("lobby").await;
    }
    let reply = anonymous
        .request(json!({"action": "presence", "data": {"room": "lobby"}, "id": "p"}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["id"], "p");
    assert_eq!(reply["data"]["room"], "lobby");
    assert_eq!(reply["data"]["connections"], 4, "{reply}");
    assert_eq!(reply["data"]["user_count"], 2, "{reply}");
    assert_eq!(reply["data"]["users"], json!(["alice", "bob"]), "{reply}");

    bob.request(json!({"action": "leave", "data": {"room": "lobby"}}))
        .await;
    alice2.close().await;
    let reply = alice
        .request(json!({"action": "presence", "data": {"room": "lobby"}}))
        .await;
    assert_eq!(reply["data"]["connections"], 2, "{reply}");
    assert_eq!(reply["data"]["users"], json!(["alice"]), "{reply}");

    for c in [alice, bob, anonymous] {
        c.close().await;
    }
    server.assert_connections(0).await;
}

#[tokio::test]
async fn presence_is_paginated() {
    let mut config = test_config();
    config.limits.presence_page_max = 2;
    let server = TestServer::start(config).await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let mut c = server.client_with_token(&token(user, "")).await;
        c.join("big").await;
        clients.push(c);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..5 {
        let mut data = json!({"room": "big"});
        if let Some(a) = &after {
            data["after"] = json!(a);
        }
        let reply = clients[0]
            .request(json!({"action": "presence", "data": data}))
            .await;
        assert_eq!(reply["data"]["user_count"], 5, "{reply}");
        let page = reply["data"]["users"].as_array().unwrap().clone();
        assert!(page.len() <= 2, "{reply}");
        seen.extend(page.into_iter().map(|u| u.as_str().unwrap().to_owned()));
        match reply["data"]["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["u1", "u2", "u3", "u4", "u5"]);
    for c in clients {
        c.close().await;
    }
}

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

/// A message that arrives in several fragments (within the size limit) is one message.
#[tokio::test]
async fn fragmented_message_within_the_limit_is_one_message() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let text = json!({"action": "join", "data": {"room": "fragmented"}, "id": "frag"}).to_string();
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(7).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(OpData::Text)
        } else {
            OpCode::Data(OpData::Continue)
        };
        let frame = Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
        c.send_message(Message::Frame(frame)).await;
    }
    let reply = c.recv_json().await;
    assert_eq!(
        reply["data"]["message"], "Joined room: fragmented",
        "{reply}"
    );
    assert_eq!(reply["id"], "frag");
    c.close().await;
}

/// Every message on the wire is the JSON envelope with a timestamp, and
/// broadcasts carry room and seq; direct messages do not.
#[tokio::test]
async fn envelope_shape_of_broadcasts_and_direct_messages() {
    let server = TestServer::start_default().await;
    let mut c = server.client_with_token(&token("alice", "")).await;
    c.join("downloads").await;
    let body = json!({"room": "downloads", "type": "download_progress", "data": {
        "download_id": "abc123", "key": "attack-on-titan", "folder": "Attack on Titan (2013)",
        "percent": 45.2, "speed_mbps": 2.5, "eta_seconds": 180}});
    assert_eq!(
        server.broadcast(&publisher(), body.clone()).await.status,
        200
    );
    let m = c.recv_json().await;
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(
        keys_sorted,
        ["data", "room", "seq", "timestamp", "type"],
        "{m}"
    );
    assert_eq!(m["type"], "download_progress");
    assert_eq!(m["room"], "downloads");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["data"], body["data"]);
    assert!(is_timestamp(m["timestamp"].as_str().unwrap()));

    let response = server
        .send(
            &publisher(),
            json!({"user_id": "alice", "type": "system_warning", "data": {"message": "disk"}}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1);
    let m = c.recv_json().await;
    assert_eq!(m["type"], "system_warning");
    assert_eq!(m["data"], json!({"message": "disk"}));
    assert!(m.get("room").is_none() && m.get("seq").is_none(), "{m}");
    c.close().await;
}

/// Anything the server sends parses as JSON with the envelope fields, even
/// when the request was hostile (huge ids, odd unicode).
#[tokio::test]
async fn hostile_ids_and_actions_get_well_formed_replies() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    let long_action = "a".repeat(1000);
    let reply = c.request(json!({"action": long_action})).await;
    let text = assert_error(&reply, "UNKNOWN_ACTION");
    assert!(
        text.len() < 200,
        "the echoed action is truncated: {}",
        text.len()
    );
    let reply = c
        .request(json!({"action": "ping", "id": "\"}\u{0}\n💥"}))
        .await;
    assert_eq!(reply["id"], "\"}\u{0}\n💥");
    let reply = c
        .request(json!({"action": "ping", "id": "x".repeat(129)}))
        .await;
    assert_error(&reply, "INVALID_MESSAGE");
    let reply = c
        .request(json!({"action": "ping", "id": 12345678901234567890u64}))
        .await;
    assert_eq!(reply["type"], "pong");
    assert_eq!(reply["id"], json!(12345678901234567890u64));
    let v: Value = c
        .request(json!({"action": "ping", "extra": {"deep": [1, 2]}}))
        .await;
    assert_eq!(v["type"], "pong", "unknown fields are ignored");
    c.close().await;
}

#[tokio::test]
async fn authorization_header_client_can_use_private_room() {
    let server = TestServer::start_default().await;
    let mut c = Client::connect(server.addr, Auth::Header(token("dana", ""))).await;
    c.join("user:dana").await;
    c.close().await;
}

/// Section 7: a member receives the room's broadcasts with no gap between
/// its join and its leave. The join reply's `seq` is the last broadcast
/// before the membership; the first one delivered is the next. Joins race
/// a publisher here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_reply_seq_and_first_broadcast_have_no_gap_under_concurrent_publishing() {
    const PUBLISHES: u64 = 300;
    let server = TestServer::start_default().await;
    let addr = server.addr;
    // A member from the start keeps the room (and its numbering) alive.
    let mut keeper = server.client().await;
    keeper.join("live").await;
    // The publisher reports its progress; joiner i joins once broadcast
    // 10 * i is out, so joins land in the middle of the stream.
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(0u64);
    let mut joiners = Vec::new();
    for i in 0..20u64 {
        let mut progress = progress_rx.clone();
        joiners.push(tokio::spawn(async move {
            progress
                .wait_for(|n| *n >= i * 10)
                .await
                .expect("publisher alive");
            let mut c = Client::connect(addr, Auth::None).await;
            let reply = c
                .request(json!({"action": "join", "data": {"room": "live"}}))
                .await;
            assert_eq!(reply["type"], "system_info", "{reply}");
            (c, reply["data"]["seq"].as_u64().expect("seq"))
        }));
    }
    let publisher_task = tokio::spawn(async move {
        let token = publisher();
        let mut api = roomcast_tests::HttpConn::connect(addr).await;
        for n in 1..=PUBLISHES {
            let response = api
                .post_json(
                    "/api/broadcast",
                    Some(&token),
                    &json!({"room": "live", "type": "queue_status", "data": {"n": n}}),
                )
                .await;
            assert_eq!(response.json()["seq"], n);
            let _ = progress_tx.send(n);
            tokio::task::yield_now().await;
        }
    });
    let mut members = Vec::new();
    for j in joiners {
        members.push(j.await.expect("joiner"));
    }
    publisher_task.await.expect("publisher");
    members.push((keeper, 0));
    for (mut c, joined_at) in members {
        let got: Vec<u64> = c
            .fence()
            .await
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (joined_at + 1..=PUBLISHES).collect();
        assert_eq!(got, expected, "joined after seq {joined_at}");
        c.close().await;
    }
    server.assert_connections(0).await;
}

/// A WebSocket-level ping from the client is answered with a pong carrying
/// the same payload (RFC 6455 section 5.5.3).
#[tokio::test]
async fn websocket_pings_are_answered() {
    use futures_util::StreamExt;
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    c.send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let pong = tokio::time::timeout(roomcast_tests::TIMEOUT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong within the timeout");
    assert_eq!(&pong[..], b"are you there");
    assert_eq!(c.request(json!({"action": "ping"})).await["type"], "pong");
    c.close().await;
}

/// A message refused by the rate limiter is not executed.
#[tokio::test]
async fn a_rate_limited_join_is_not_executed() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.message_burst = 1;
    config.limits.rate_violations_max = 100;
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    c.ws.feed(Message::text(json!({"action": "ping"}).to_string()))
        .await
        .unwrap();
    c.ws.feed(Message::text(
        json!({"action": "join", "data": {"room": "limited"}, "id": "j"}).to_string(),
    ))
    .await
    .unwrap();
    c.ws.flush().await.unwrap();
    assert_eq!(c.recv_json().await["type"], "pong");
    let reply = c.recv_json().await;
    if reply["type"] == "error" {
        assert_error(&reply, "RATE_LIMITED");
        assert_eq!(reply["id"], "j");
        let response = server
            .broadcast(
                &publisher(),
                json!({"room": "limited", "type": "queue_status"}),
            )
            .await;
        assert_eq!(
            response.json()["delivered"],
            0,
            "the refused join left no membership"
        );
    }
    c.close().await;
}

/// A text frame that is not UTF-8 is a protocol violation: the connection
/// ends (a close frame is optional per RFC 6455 section 8.1), its slot is
/// released, and nobody else notices.
#[tokio::test]
async fn invalid_utf8_ends_only_that_connection() {
    let server = TestServer::start_default().await;
    let mut bystander = server.client().await;
    bystander.join("calm").await;
    let mut c = server.client().await;
    let frame = Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(OpData::Text),
        true,
    );
    c.send_message(Message::Frame(frame)).await;
    let (before, ending) = c.read_to_end().await;
    assert!(before.is_empty(), "{before:?}");
    if let roomcast_tests::Ending::Close(code, _) = ending {
        assert!([1002, 1007].contains(&code), "close code {code}");
    }
    server.assert_connections(1).await;
    assert_eq!(
        bystander.request(json!({"action": "ping"})).await["type"],
        "pong"
    );
    bystander.close().await;
    server.assert_connections(0).await;
}

/// Payloads pass through unchanged, whatever they contain.
#[tokio::test]
async fn payloads_round_trip_unchanged() {
    let server = TestServer::start_default().await;
    let mut c = server.client().await;
    c.join("echo").await;
    let data = json!({
        "key": "k", "text": "</script>\"\\\u{0}\u{2028}ü💥", "nested": {"a": [1, 2.5, null, true]},
        "big": 12345678901234567890u64, "neg": -1, "empty": {}
    });
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "echo", "type": "system_info", "data": data}),
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(c.recv_json().await["data"], data);
    c.close().await;
}
