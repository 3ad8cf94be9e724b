//! Limits under abuse (issue 14): one client abusing an expensive path must
//! not stall everyone else. Timings are printed for docs/operations.md and
//! asserted only with generous bounds relative to a baseline measured in
//! the same run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_tests::tokens::{now_s, rs256, rsa_keypair};
use roomcast_tests::{test_config, Auth, Client, TestServer, TIMEOUT};
use serde_json::json;

/// A server that verifies RS256 tokens, with a rate limit that lets one
/// client pipeline hundreds of requests.
async fn rs256_server() -> (TestServer, Vec<u8>, tempfile_guard::Guard) {
    let (dir, private, public) = rsa_keypair();
    let private_pem = std::fs::read(&private).unwrap();
    let mut config = test_config();
    config.auth.algorithm = "RS256".to_owned();
    config.auth.jwt_secret = None;
    config.auth.public_key_file = Some(public);
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    let server = TestServer::start(config).await;
    (server, private_pem, tempfile_guard::Guard(dir))
}

mod tempfile_guard {
    /// Keeps the key directory alive for the test.
    pub struct Guard(#[allow(dead_code)] pub tempfile::TempDir);
}

/// RS256 verification of `refresh` tokens runs off the hub: while one
/// client has hundreds of refreshes being verified, another client's ping
/// is answered about as fast as without them (it used to wait behind every
/// verification queued before it), and the refreshing client still gets
/// its replies in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_verification_does_not_stall_the_hub() {
    const REFRESHES: usize = 1000;
    let (server, private_pem, _keys) = rs256_server().await;
    let token = |sub: &str| {
        rs256(
            &json!({"sub": sub, "exp": now_s() as i64 + 3600}),
            &private_pem,
        )
    };
    let mut refresher = Client::connect(server.addr, Auth::Header(token("abuser"))).await;
    let mut bystander = server.client().await;

    // Baseline: one refresh round trip (mostly one verification).
    let fresh = token("abuser");
    let started = tokio::time::Instant::now();
    let reply = refresher
        .request(json!({"action": "refresh", "data": {"token": fresh}, "id": "first"}))
        .await;
    let one_refresh = started.elapsed();
    assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
    let started = tokio::time::Instant::now();
    bystander.request(json!({"action": "ping"})).await;
    let idle_ping = started.elapsed();

    // The flood: pipelined refreshes, then a ping that must come last.
    for i in 0..REFRESHES {
        use futures_util::SinkExt;
        let text = json!({"action": "refresh", "data": {"token": fresh}, "id": i}).to_string();
        refresher
            .ws
            .feed(roomcast_tests::tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("feed");
    }
    refresher
        .send_json(json!({"action": "ping", "id": "after"}))
        .await;
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let reader = tokio::spawn(async move {
        for i in 0..REFRESHES {
            let reply = refresher.recv_json().await;
            assert_eq!(
                reply["id"], i,
                "replies keep the connection's order: {reply}"
            );
            assert_eq!(reply["data"]["message"], "Token refreshed", "{reply}");
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let last = refresher.recv_json().await;
        assert_eq!(last["type"], "pong", "{last}");
        assert_eq!(last["id"], "after", "{last}");
        refresher
    });
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while answered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut worst = Duration::ZERO;
    let mut during = 0;
    while answered.load(Ordering::SeqCst) < REFRESHES / 2 && during < 20 {
        let started = tokio::time::Instant::now();
        let pong = bystander.request(json!({"action": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        worst = worst.max(started.elapsed());
        during += 1;
    }
    let refresher = reader.await.expect("refresher");
    eprintln!(
        "refresh flood: one RS256 refresh {one_refresh:?}, idle ping {idle_ping:?}; \
         {REFRESHES} pipelined refreshes: bystander's worst ping {worst:?} over {during} pings"
    );
    assert!(
        during > 0,
        "the flood was over before the bystander could ping"
    );
    // Inline verification made the bystander wait for the verifications
    // queued ahead of it (hundreds of `one_refresh`).
    let bound = (one_refresh * 20).max(Duration::from_millis(250));
    assert!(
        worst < bound,
        "a bystander's ping took {worst:?} during the refresh flood (bound {bound:?})"
    );
    refresher.close().await;
    bystander.close().await;
}

/// The inbound byte budget: client messages received and not yet handled
/// by the hub are bounded in bytes (`inbound_bytes_max`), not only in
/// count. A message that does not fit is not queued: it is answered, in
/// its place, with `SERVER_BUSY` (and not executed); the others are
/// executed as usual. Once the hub has caught up, messages fit again.
#[tokio::test]
async fn inbound_bytes_are_bounded_and_overflow_is_answered_server_busy() {
    use futures_util::SinkExt;
    use roomcast_tests::tokio_tungstenite::tungstenite::Message;
    const MESSAGES: usize = 200;
    let mut config = test_config();
    config.limits.message_bytes_max = 1024;
    config.limits.api_body_bytes_max = 1024;
    // Room for two such messages in flight.
    config.limits.inbound_bytes_max = 2048;
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    let server = TestServer::start(config).await;
    let mut bystander = server.client().await;
    let mut c = server.client().await;
    for i in 0..MESSAGES {
        let pad = "p".repeat(950);
        let text = json!({"action": "ping", "id": i, "pad": pad}).to_string();
        assert!(text.len() < 1024 && text.len() > 900, "{}", text.len());
        c.ws.feed(Message::text(text)).await.expect("feed");
    }
    c.ws.flush().await.expect("flush");
    let mut busy = 0;
    for i in 0..MESSAGES {
        let reply = c.recv_json().await;
        assert_eq!(reply["id"], i, "one answer per message, in order: {reply}");
        match reply["type"].as_str() {
            Some("pong") => {}
            Some("error") => {
                roomcast_tests::assert_error(&reply, "SERVER_BUSY");
                busy += 1;
            }
            _ => panic!("{reply}"),
        }
    }
    eprintln!("inbound budget of 2 KiB: {busy} of {MESSAGES} 1 KiB messages refused");
    assert!(busy > 0, "the budget was never full");
    assert!(busy < MESSAGES, "nothing got through");
    assert_eq!(
        server.metric("roomcast_server_busy_total").await,
        Some(busy as f64)
    );
    // Caught up: everything fits again.
    assert_eq!(
        c.request(json!({"action": "ping", "id": "x"})).await["type"],
        "pong"
    );
    assert_eq!(
        bystander.request(json!({"action": "ping"})).await["type"],
        "pong"
    );
    c.close().await;
    bystander.close().await;
}
