//! Memory is bounded in bytes (issue 14): the real `roomcast` process, fed
//! far more history than its `history_bytes_max` and far more rooms than
//! its `rooms_max`, keeps its resident memory under a documented ceiling
//! (docs/operations.md, "limits under abuse"), and `/ws/status` counts no
//! more rooms than the bound.

use roomcast_tests::tokens::publisher;
use roomcast_tests::{api_post, binary, http, SECRET};
use serde_json::{json, Value};

/// The history budget set for this test.
const HISTORY_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// The room bound set for this test.
const ROOMS_MAX: u64 = 2_000;
/// Resident memory the server may grow by while being fed: the history
/// budget, the inbound byte budget (16 MiB by default), and allocator slack.
const GROWTH_CEILING_KIB: u64 = 48 * 1024;

struct Server(binary::Process);

impl Server {
    async fn start() -> Server {
        let env = [
            ("ROOMCAST_JWT_SECRET", SECRET.to_owned()),
            ("ROOMCAST_LIMITS__HISTORY_MESSAGES_MAX", "1000".to_owned()),
            (
                "ROOMCAST_LIMITS__HISTORY_BYTES_MAX",
                HISTORY_BYTES_MAX.to_string(),
            ),
            ("ROOMCAST_LIMITS__ROOMS_MAX", ROOMS_MAX.to_string()),
        ];
        Server(binary::Process::start(&[], &env).await)
    }

    fn rss_kib(&self) -> (u64, u64) {
        self.0.rss_kib()
    }

    async fn publish(&self, body: Value) {
        let token = publisher();
        let response = api_post(
            self.0.addr,
            "/api/broadcast",
            Some(&token),
            body.to_string(),
        )
        .await;
        assert_eq!(response.status, 200, "{response:?}");
    }

    async fn rooms(&self) -> u64 {
        let status = http(self.0.addr, "GET", "/ws/status", &[], "").await.json();
        status["rooms"].as_u64().expect("rooms")
    }
}

#[tokio::test]
async fn history_and_rooms_stay_within_their_byte_and_count_bounds() {
    let server = Server::start().await;
    let (baseline, _) = server.rss_kib();

    // 64 MiB of history (1,100 messages of 60 KiB over 11 rooms, no
    // members) against a budget of 8 MiB.
    let pad = "h".repeat(60 * 1024);
    for n in 0..1_100 {
        let room = format!("history-{}", n % 11);
        server
            .publish(json!({"room": room, "type": "queue_status", "data": {"n": n, "pad": pad}}))
            .await;
    }
    let (_, peak) = server.rss_kib();
    let growth = peak.saturating_sub(baseline);
    eprintln!("memory budgets: 64 MiB of history fed: peak RSS {peak} KiB (+{growth} KiB)");
    assert!(
        growth < GROWTH_CEILING_KIB,
        "resident memory grew by {growth} KiB feeding history over history_bytes_max"
    );

    // 20,000 rooms (100 per broadcast) against a bound of 2,000: rooms kept
    // only for history make way for new ones.
    for batch in 0..200 {
        let rooms: Vec<String> = (0..100).map(|i| format!("many-{batch}-{i}")).collect();
        server
            .publish(json!({"rooms": rooms, "type": "queue_status", "data": {"batch": batch}}))
            .await;
    }
    let rooms = server.rooms().await;
    let (_, peak) = server.rss_kib();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "memory budgets: 20,000 rooms fed: {rooms} kept, peak RSS {peak} KiB (+{growth} KiB)"
    );
    assert!(rooms <= ROOMS_MAX, "{rooms} rooms kept, over rooms_max");
    assert!(
        growth < GROWTH_CEILING_KIB,
        "resident memory grew by {growth} KiB feeding rooms over rooms_max"
    );
}
