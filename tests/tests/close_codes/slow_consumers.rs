//! The slow consumer (4008), an upgrade accepted before shutdown, and an
//! abrupt disconnect.

use super::*;

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
