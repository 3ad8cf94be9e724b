//! Limits that close: persistent rate-limit abuse and ping floods (1008),
//! and the message size limit (1009).

use super::*;

#[tokio::test]
async fn persistent_rate_limit_abuse_is_closed_with_1008() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.message_burst = 1;
    config.limits.rate_violations_max = 3;
    let server = TestServer::start(config).await;
    let mut bystander = server.client().await;
    let mut c = server.client().await;
    for i in 0..10 {
        c.ws.feed(Message::text(
            json!({"action": "ping", "id": i}).to_string(),
        ))
        .await
        .expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let before = c.expect_close(1008).await;
    assert_eq!(before[0]["type"], "pong", "{before:?}");
    let limited = before
        .iter()
        .filter(|m| m["type"] == "error")
        .inspect(|m| {
            assert_error(m, "RATE_LIMITED");
        })
        .count();
    assert!(limited >= 1, "warned before being closed: {before:?}");
    server.assert_connections(1).await;
    assert_eq!(disconnects(&server, "rate_limit").await, 1.0);
    // The other client is unaffected.
    assert_eq!(
        bystander.request(json!({"action": "ping"})).await["type"],
        "pong"
    );
    bystander.close().await;
    server.assert_connections(0).await;
}

/// WebSocket ping frames count too: a client flooding pings gets no pong
/// beyond its allowance and is closed with 1008, like a message flood. (They
/// used to bypass the rate limit entirely: every ping got its pong.)
#[tokio::test]
async fn a_websocket_ping_flood_is_rate_limited_and_closed_with_1008() {
    let mut config = test_config();
    config.limits.messages_per_second = 1;
    config.limits.message_burst = 5;
    config.limits.rate_violations_max = 3;
    let server = TestServer::start(config).await;
    let mut bystander = server.client().await;
    let mut c = server.client().await;
    for i in 0..50u8 {
        c.ws.feed(Message::Ping(vec![i].into()))
            .await
            .expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let mut pongs = 0;
    let ending = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(TIMEOUT, c.ws.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => panic!("no close frame: {e}"),
            None => panic!("no close frame"),
        }
    };
    assert_eq!(ending, Some(1008));
    // One pong per token of the burst (one more per second of refill on a
    // slow machine), none for the pings beyond.
    assert!((5..=8).contains(&pongs), "{pongs} pongs for 50 pings");
    assert_eq!(disconnects(&server, "rate_limit").await, 1.0);
    // Messages and pings have separate allowances of the same size: the
    // bystander's pings and messages are unaffected.
    bystander
        .ws
        .send(Message::Ping(b"ok".to_vec().into()))
        .await
        .expect("ping");
    assert_eq!(
        bystander.request(json!({"action": "ping"})).await["type"],
        "pong"
    );
    bystander.close().await;
    server.assert_connections(0).await;
}

fn small_message_config() -> roomcast_net::ServerConfig {
    let mut config = test_config();
    config.limits.message_bytes_max = 1024;
    config
}

#[tokio::test]
async fn a_message_at_the_size_limit_is_accepted() {
    let server = TestServer::start(small_message_config()).await;
    let mut c = server.client().await;
    let prefix = r#"{"action":"ping","id":1,"pad":""#;
    let padded = format!("{prefix}{}\"}}", "y".repeat(1024 - prefix.len() - 2));
    assert_eq!(padded.len(), 1024);
    c.send_text(padded).await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(reply["id"], 1);
    c.close().await;
}

#[tokio::test]
async fn an_oversize_single_frame_is_closed_with_1009() {
    let server = TestServer::start(small_message_config()).await;
    let mut c = server.client().await;
    let text = format!("{{\"action\":\"ping\",\"pad\":\"{}\"}}", "z".repeat(4096));
    c.send_text(text).await;
    let before = c.expect_close(1009).await;
    assert!(before.is_empty(), "{before:?}");
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "oversize").await, 1.0);
}

#[tokio::test]
async fn an_oversize_message_in_small_fragments_is_closed_with_1009() {
    let server = TestServer::start(small_message_config()).await;
    let mut c = server.client().await;
    // 64 fragments of 64 bytes: each frame is small, the message is 4 KiB.
    let text = format!(
        "{{\"action\":\"ping\",\"pad\":\"{}\"}}",
        "f".repeat(4096 - 28)
    );
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(64).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(OpData::Text)
        } else {
            OpCode::Data(OpData::Continue)
        };
        let frame = Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
        // The server may close before the last fragments; a failed send is fine.
        if c.ws.feed(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let (before, ending) = c.read_to_end().await;
    assert!(before.is_empty(), "{before:?}");
    match ending {
        Ending::Close(code, _) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "oversize").await, 1.0);
}
