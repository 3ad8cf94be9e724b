//! Fragments, envelopes, hostile ids, the join barrier under concurrent
//! publishing, WebSocket pings, invalid UTF-8 and payload round trips.

use super::*;

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
