//! Memory is bounded in bytes (issue 14): the real `roomcast` process, fed
//! far more history than its `history_bytes_max` and far more rooms than
//! its `rooms_max`, keeps its resident memory under a documented ceiling
//! (docs/operations.md, "limits under abuse"), and `/ws/status` counts no
//! more rooms than the bound.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use roomcast_tests::tokens::publisher;
use roomcast_tests::{api_post, binary, http, SECRET};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// The history budget set for this test.
const HISTORY_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// The room bound set for this test.
const ROOMS_MAX: u64 = 2_000;
/// Resident memory the server may grow by while being fed: the history
/// budget, the inbound byte budget (16 MiB by default), and allocator slack.
const GROWTH_CEILING_KIB: u64 = 48 * 1024;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    async fn start() -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", binary::free_port())
            .parse()
            .unwrap();
        let mut command = Command::new(binary::path());
        for (key, _) in std::env::vars() {
            if key.starts_with("ROOMCAST_") {
                command.env_remove(key);
            }
        }
        command
            .args(["serve", "--listen", &addr.to_string()])
            .env("ROOMCAST_LOG", "error")
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_LIMITS__HISTORY_MESSAGES_MAX", "1000")
            .env(
                "ROOMCAST_LIMITS__HISTORY_BYTES_MAX",
                HISTORY_BYTES_MAX.to_string(),
            )
            .env("ROOMCAST_LIMITS__ROOMS_MAX", ROOMS_MAX.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn roomcast");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let up = tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, "GET", "/healthz", &[], "").await.status == 200;
            if up {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "roomcast did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { child, addr }
    }

    /// (current, peak) resident memory in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.id().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    async fn publish(&self, body: Value) {
        let token = publisher();
        let response = api_post(self.addr, "/api/broadcast", Some(&token), body.to_string()).await;
        assert_eq!(response.status, 200, "{response:?}");
    }

    async fn rooms(&self) -> u64 {
        let status = http(self.addr, "GET", "/ws/status", &[], "").await.json();
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
