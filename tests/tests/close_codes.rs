//! PROTOCOL section 4, close codes: who closes, with what, and what the
//! client sees before the close frame.

use std::time::Duration;

use futures_util::SinkExt;
use roomcast_tests::tokens::{publisher, token_ttl};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::coding::{
    Data as OpData, OpCode,
};
use roomcast_tests::tokio_tungstenite::tungstenite::protocol::frame::Frame;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use roomcast_tests::{assert_error, test_config, Ending, HttpConn, TestServer, TIMEOUT};
use serde_json::json;

async fn disconnects(server: &TestServer, reason: &str) -> f64 {
    server
        .metric(&format!(
            "roomcast_disconnects_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

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

/// The core of the slow-consumer contract: a member that does not read is
/// cut off with 4008 once its bounded queue overflows; every other member
/// gets every broadcast, in order; the cut-off member saw an in-order
/// prefix and then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4008_and_others_get_everything() {
    let mut config = test_config();
    config.limits.outbound_queue_bytes_max = 64 * 1024;
    config.close_flush_timeout_ms = 60_000;
    let server = TestServer::start(config).await;

    let mut slow = server.client().await;
    slow.join("flood").await;
    let mut reader = server.client().await;
    reader.join("flood").await;
    let reader_task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let m = reader.recv_json().await;
            assert_eq!(m["room"], "flood", "{m}");
            seqs.push(m["seq"].as_u64().expect("seq"));
            if m["data"]["last"] == true {
                return (reader, seqs);
            }
        }
    });

    let token = publisher();
    let mut api = HttpConn::connect(server.addr).await;
    let pad = "p".repeat(1000);
    let mut published = 0u64;
    let mut cut_at = None;
    let mut extra = 0;
    while extra < 20 {
        let response = api
            .post_json(
                "/api/broadcast",
                Some(&token),
                &json!({"room": "flood", "type": "queue_status", "data": {"i": published + 1, "pad": pad}}),
            )
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        let body = response.json();
        published += 1;
        assert_eq!(body["seq"], published, "{body}");
        let delivered = body["delivered"].as_u64().unwrap();
        match cut_at {
            None if delivered == 2 => {}
            None => {
                assert_eq!(delivered, 1, "{body}");
                cut_at = Some(published);
            }
            Some(_) => {
                assert_eq!(delivered, 1, "{body}");
                extra += 1;
            }
        }
        assert!(published < 200_000, "the slow client was never cut off");
    }
    let response = api
        .post_json(
            "/api/broadcast",
            Some(&token),
            &json!({"room": "flood", "type": "queue_status", "data": {"last": true}}),
        )
        .await;
    published += 1;
    assert_eq!(response.json()["delivered"], 1);

    eprintln!(
        "slow consumer cut off at broadcast {:?} of {published}",
        cut_at
    );
    let (reader, seqs) = reader_task.await.expect("reader");
    let expected: Vec<u64> = (1..=published).collect();
    assert!(
        seqs == expected,
        "the reading member must get seq 1..={published} in order; got {} messages, first gap near {:?}",
        seqs.len(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );
    assert_eq!(disconnects(&server, "slow_consumer").await, 1.0);

    // Now the slow client reads: an in-order prefix, then 4008.
    let (before, ending) = slow.read_to_end().await;
    match ending {
        Ending::Close(code, _) => assert_eq!(code, 4008, "{} messages before", before.len()),
        other => panic!(
            "expected close 4008, got {other:?} after {} messages",
            before.len()
        ),
    }
    let slow_seqs: Vec<u64> = before.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let cut = cut_at.unwrap();
    assert!(!slow_seqs.is_empty(), "the slow client got nothing at all");
    assert_eq!(
        slow_seqs,
        (1..=slow_seqs.len() as u64).collect::<Vec<_>>(),
        "a prefix, in order"
    );
    assert!(
        (slow_seqs.len() as u64) < cut,
        "nothing at or after the broadcast that overflowed it (seq {cut})"
    );
    reader.close().await;
    server.assert_connections(0).await;
}

/// A keep-alive HTTP connection accepted before the shutdown can still
/// send an upgrade request after it. Such a latecomer must be refused (503)
/// or closed with 1001 like everyone else, not admitted as a connection the
/// shutdown never closes. (A stalled client keeps the server draining, so
/// the hub is still there when the latecomer arrives.)
#[tokio::test]
async fn an_upgrade_on_a_connection_accepted_before_shutdown_is_not_orphaned() {
    use roomcast_tests::tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use roomcast_tests::tokio_tungstenite::tungstenite::Error as WsError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.shutdown_drain_ms = 3_000;
    config.close_flush_timeout_ms = 2_500;
    let mut server = TestServer::start(config).await;
    let addr = server.addr;
    // Never reads: its close handshake keeps the drain going.
    let _stalled = server.client().await;

    // An accepted, served, kept-alive HTTP/1.1 connection.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "healthz response");
        got.extend_from_slice(&buf[..n]);
    }

    server.trigger_shutdown();
    // Wait until the listener is gone: the shutdown is under way.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let request = format!("ws://{addr}/ws/connect")
        .into_client_request()
        .unwrap();
    match roomcast_tests::tokio_tungstenite::client_async(request, stream).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        Err(_) => {} // the connection was closed: refused too
        Ok((mut ws, _)) => {
            use futures_util::StreamExt;
            let mut messages = Vec::new();
            let ending = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => messages.push(t.to_string()),
                        Some(Ok(Message::Close(frame))) => {
                            return format!("close {:?}", frame.map(|f| u16::from(f.code)))
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return format!("error {e}"),
                        None => return "end of stream".to_owned(),
                    }
                }
            })
            .await;
            let ending = ending.unwrap_or_else(|_| "still open 10 s later".to_owned());
            assert!(
                ending == "close Some(1001)",
                "upgraded during the shutdown (messages: {messages:?}), then {ending} \
                 instead of close 1001"
            );
        }
    }
    server.join().await.expect("serve returns");
}

/// A client that vanishes without a close frame (TCP FIN) is cleaned up:
/// its slot, its memberships and the counts.
#[tokio::test]
async fn an_abrupt_disconnect_is_cleaned_up() {
    let server = TestServer::start_default().await;
    let mut keeper = server.client().await;
    keeper.join("room").await;
    for _ in 0..5 {
        let mut c = server.client().await;
        c.join("room").await;
        drop(c);
    }
    server.assert_connections(1).await;
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "room", "type": "queue_status"}),
        )
        .await;
    assert_eq!(response.json()["delivered"], 1);
    assert_eq!(disconnects(&server, "client").await, 5.0);
    keeper.close().await;
    server.assert_connections(0).await;
}

// ----- raw frames: close codes for framing violations, and lingering -------------

/// A WebSocket client written by hand, so it can break the rules.
mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Upgrades a TCP connection by hand and reads the `connected` frame.
    pub async fn connect(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"GET /ws/connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                  Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let (opcode, payload) = read_frame(&mut stream).await.expect("connected frame");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&payload).contains("\"connected\""));
        stream
    }

    /// One frame as a client sends it: `first` is the FIN/RSV/opcode byte;
    /// masked unless `masked` is false.
    pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=65_535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// One server frame: (opcode, payload); `None` at the end of the stream.
    pub async fn read_frame(
        stream: &mut (impl AsyncRead + Unpin),
    ) -> Result<(u8, Vec<u8>), std::io::Error> {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await?;
        Ok((head[0] & 0x0f, payload))
    }

    /// How the server ended the connection.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Ending {
        /// The code of its close frame, if one came.
        pub close: Option<u16>,
        /// How the stream ended after it: "eof" (a clean FIN) or the error.
        pub then: String,
    }

    /// Reads frames until the stream ends.
    pub async fn read_to_end(stream: &mut (impl AsyncRead + Unpin)) -> Ending {
        let mut close = None;
        let then = loop {
            match read_frame(stream).await {
                Ok((8, payload)) if close.is_none() => {
                    close = Some(
                        payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                    );
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break "eof".to_owned(),
                Err(e) => break format!("{:?}: {e}", e.kind()),
            }
        };
        Ending { close, then }
    }
}

/// RFC 6455 sections 5.2, 5.5, 7.4 and 8.1: a text frame that is not UTF-8
/// gets close 1007; breaking the framing rules gets close 1002. Either way
/// the close frame arrives and the connection then ends cleanly (FIN).
#[tokio::test]
async fn framing_violations_get_1002_and_invalid_utf8_gets_1007() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_default().await;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        (
            "invalid UTF-8",
            raw::frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true),
            1007,
        ),
        (
            "unmasked client frame",
            raw::frame(0x81, br#"{"action":"ping"}"#, false),
            1002,
        ),
        (
            "reserved bit RSV1",
            raw::frame(0xC1, br#"{"action":"ping"}"#, true),
            1002,
        ),
        ("reserved data opcode 3", raw::frame(0x83, b"x", true), 1002),
        (
            "reserved control opcode 0xB",
            raw::frame(0x8B, b"", true),
            1002,
        ),
        ("fragmented ping", raw::frame(0x09, b"p", true), 1002),
        (
            "continuation without a start",
            raw::frame(0x80, b"x", true),
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut stream = raw::connect(server.addr).await;
        stream.write_all(&bytes).await.expect("send");
        let ending = tokio::time::timeout(TIMEOUT, raw::read_to_end(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection stayed open"));
        assert_eq!(
            ending,
            raw::Ending {
                close: Some(code),
                then: "eof".to_owned()
            },
            "{name}"
        );
    }
    server.assert_connections(0).await;
    assert_eq!(disconnects(&server, "invalid_payload").await, 1.0);
    assert_eq!(disconnects(&server, "protocol_error").await, 6.0);
}

/// A client that sends 4 MiB against the 64 KiB limit is in the middle of
/// its send when the server closes with 1009. The server lingers: it stops
/// sending (FIN after the close frame) and reads and discards the rest, so
/// the client's send completes, and it reads the close frame and then a
/// clean end of stream instead of a reset.
#[tokio::test]
async fn an_oversize_sender_reads_its_1009_without_a_reset() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_default().await;
    assert_eq!(test_config().limits.message_bytes_max, 64 * 1024);
    for round in 0..3 {
        let stream = raw::connect(server.addr).await;
        let (mut read, mut write) = stream.into_split();
        let frame = raw::frame(0x81, &vec![b'a'; 4 << 20], true);
        let sender = tokio::spawn(async move {
            let sent = write.write_all(&frame).await;
            (sent, write)
        });
        let ending = tokio::time::timeout(TIMEOUT, raw::read_to_end(&mut read))
            .await
            .expect("the connection stayed open");
        let (sent, write) = tokio::time::timeout(TIMEOUT, sender)
            .await
            .expect("the send never completed")
            .expect("sender");
        assert!(
            sent.is_ok(),
            "round {round}: the client's own send failed: {sent:?}"
        );
        assert_eq!(
            ending,
            raw::Ending {
                close: Some(1009),
                then: "eof".to_owned()
            },
            "round {round}"
        );
        drop((read, write));
    }
    assert_eq!(disconnects(&server, "oversize").await, 3.0);
}
