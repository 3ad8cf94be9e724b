//! End-to-end: conflation of progress events for a reader that is behind,
//! and presence diffs, through the real server.

use std::time::Duration;

use roomcast_tests::tokens::publisher;
use roomcast_tests::{test_config, HttpConn, TestServer};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_gets_conflated_progress_with_flagged_jumps() {
    let mut config = test_config();
    config.rooms.conflate_prefixes = vec!["downloads".into()];
    config.rooms.conflation_window_ms = 50;
    // Enough room that the slow reader is conflated, not cut off.
    config.limits.outbound_queue_bytes_max = 64 << 20;
    let server = TestServer::start(config).await;
    let mut slow = server.client().await;
    slow.join("downloads").await;

    // Far more than the kernel's socket buffers hold while the client does not read.
    const EVENTS: u64 = 3_000;
    let pad = "p".repeat(4_000);
    let token = publisher();
    let mut api = HttpConn::connect(server.addr).await;
    let mut last_seq = 0;
    for n in 1..=EVENTS {
        let body = json!({"room": "downloads", "type": "download_progress",
                          "data": {"key": "attack-on-titan", "download_id": "d1", "percent": n, "pad": pad}});
        let response = api.post_json("/api/broadcast", Some(&token), &body).await;
        assert_eq!(response.status, 200, "{}", response.text());
        last_seq = response.json()["seq"].as_u64().unwrap();
    }
    assert_eq!(last_seq, EVENTS);

    // Now read: seq only goes up; every jump is flagged; the newest arrives.
    let mut seen: Vec<(u64, bool, u64)> = Vec::new();
    while seen.last().is_none_or(|(seq, _, _)| *seq < last_seq) {
        let message: Value = slow
            .recv_json_within(Duration::from_secs(10))
            .await
            .expect("the newest event arrives");
        if message["type"] != "download_progress" {
            continue;
        }
        let seq = message["seq"].as_u64().unwrap();
        seen.push((
            seq,
            message["conflated"] == true,
            message["data"]["percent"].as_u64().unwrap(),
        ));
    }
    let mut previous = 0;
    for &(seq, flagged, percent) in &seen {
        assert!(seq > previous, "seq never goes back: {previous} then {seq}");
        assert!(
            seq == previous + 1 || flagged,
            "unflagged jump {previous} -> {seq}"
        );
        assert_eq!(
            percent, seq,
            "each frame is the event published with that seq"
        );
        previous = seq;
    }
    assert!(
        (seen.len() as u64) < EVENTS,
        "a reader that fell behind was conflated ({} of {EVENTS})",
        seen.len()
    );
    assert!(seen.iter().any(|(_, flagged, _)| *flagged));
}

#[tokio::test]
async fn members_of_a_presence_room_hear_joins_and_leaves() {
    let mut config = test_config();
    config.rooms.presence_diff_prefixes = vec!["team:".into()];
    let server = TestServer::start(config).await;
    let mut first = server.client().await;
    first.join("team:blue").await;
    let mut second = server.client().await;
    let second_id = second.connected["data"]["connection_id"].clone();
    second.join("team:blue").await;
    let joined = first.recv_json().await;
    assert_eq!(joined["type"], "presence_diff");
    assert_eq!(joined["data"]["room"], "team:blue");
    assert_eq!(joined["data"]["joined"]["connection_id"], second_id);
    assert_eq!(joined["data"]["connections"], 2);
    second.close().await;
    let left = first.recv_json().await;
    assert_eq!(left["type"], "presence_diff");
    assert_eq!(left["data"]["left"]["connection_id"], second_id);
    assert_eq!(left["data"]["connections"], 1);
}
