//! 2,000 concurrent clients over 10 rooms: every client receives every
//! broadcast of its rooms exactly once, in seq order, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_tests::tokens::publisher;
use roomcast_tests::tokio_tungstenite::tungstenite::Message;
use roomcast_tests::{test_config, Auth, Client, HttpConn, TestServer, TIMEOUT};
use serde_json::{json, Value};
use tokio::sync::{Barrier, Semaphore};

const CLIENTS: usize = 2_000;
const ROOMS: usize = 10;
const BROADCASTS_PER_ROOM: u64 = 20;

/// 1 to 3 distinct rooms for client `i`, deterministically spread.
fn rooms_of(i: usize) -> Vec<usize> {
    let count = 1 + i % 3;
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rooms = BTreeSet::new();
    while rooms.len() < count {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rooms.insert(((x >> 33) as usize) % ROOMS);
    }
    rooms.into_iter().collect()
}

fn room_name(r: usize) -> String {
    format!("scale-{r}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_get_exactly_their_rooms_broadcasts_in_order() {
    let mut config = test_config();
    // Rooms outlive their members while they hold history: keep it short so
    // the end of the test can see every room go.
    config.limits.history_age_ms = 500;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    let joined = Arc::new(Barrier::new(CLIENTS + 1));
    let (fence_tx, fence_rx) = tokio::sync::watch::channel(false);
    let connecting = Arc::new(Semaphore::new(64));

    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let joined = joined.clone();
        let mut fence_rx = fence_rx.clone();
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = {
                let _permit = connecting.acquire().await.unwrap();
                let mut c = Client::connect(addr, Auth::None).await;
                for r in rooms_of(i) {
                    c.join(&room_name(r)).await;
                }
                c
            };
            joined.wait().await;
            // Read everything until told to fence.
            let mut received: Vec<Value> = Vec::new();
            loop {
                tokio::select! {
                    changed = fence_rx.changed() => {
                        changed.expect("fence sender");
                        break;
                    }
                    next = client.ws.next() => match next {
                        Some(Ok(Message::Text(text))) => received.push(serde_json::from_str(&text).expect("JSON")),
                        Some(Ok(_)) => {}
                        other => panic!("client {i}: stream ended: {other:?}"),
                    }
                }
            }
            received.extend(client.fence().await);
            (i, client, received)
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), joined.wait())
        .await
        .expect("2,000 clients connected and joined");
    server.assert_connections(CLIENTS as u64).await;
    let status = server.status().await;
    assert_eq!(status["rooms"], ROOMS, "{status}");

    // Expected members per room.
    let mut members = [0u64; ROOMS];
    for i in 0..CLIENTS {
        for r in rooms_of(i) {
            members[r] += 1;
        }
    }

    // 20 broadcasts per room, rooms interleaved, over two API connections.
    let token = publisher();
    let mut publishers = Vec::new();
    for half in 0..2usize {
        let token = token.clone();
        publishers.push(tokio::spawn(async move {
            let mut api = HttpConn::connect(addr).await;
            let mut results = Vec::new();
            for n in 1..=BROADCASTS_PER_ROOM {
                for r in (0..ROOMS).filter(|r| r % 2 == half) {
                    let response = api
                        .post_json(
                            "/api/broadcast",
                            Some(&token),
                            &json!({"room": room_name(r), "type": "queue_status",
                                    "data": {"room_index": r, "n": n}}),
                        )
                        .await;
                    assert_eq!(response.status, 200, "{response:?}");
                    results.push((r, n, response.json()));
                }
            }
            results
        }));
    }
    for publisher in publishers {
        for (r, n, body) in publisher.await.expect("publisher") {
            assert_eq!(body["seq"], n, "room {r}: {body}");
            assert_eq!(
                body["delivered"], members[r],
                "room {r} broadcast {n}: {body}"
            );
        }
    }

    fence_tx.send(true).expect("fence");
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut failures = Vec::new();
    for task in tasks {
        let (i, client, received) = tokio::time::timeout(TIMEOUT * 3, task)
            .await
            .expect("client task finished")
            .expect("client task panicked");
        let mine: BTreeSet<usize> = rooms_of(i).into_iter().collect();
        let mut per_room: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for m in &received {
            let r = m["data"]["room_index"].as_u64().expect("room_index") as usize;
            assert_eq!(m["room"], room_name(r), "{m}");
            assert_eq!(m["seq"], m["data"]["n"], "{m}");
            per_room
                .entry(r)
                .or_default()
                .push(m["seq"].as_u64().unwrap());
        }
        let expected: Vec<u64> = (1..=BROADCASTS_PER_ROOM).collect();
        let got_rooms: BTreeSet<usize> = per_room.keys().copied().collect();
        if got_rooms != mine || per_room.values().any(|seqs| *seqs != expected) {
            failures.push(format!("client {i} in rooms {mine:?} got {per_room:?}"));
        }
        clients.push(client);
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients got the wrong broadcasts; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    server.assert_connections(CLIENTS as u64).await;

    // Close half, check the counts, then the rest.
    let rest = clients.split_off(CLIENTS / 2);
    close_all(clients).await;
    server.assert_connections((CLIENTS / 2) as u64).await;
    close_all(rest).await;
    server.assert_connections(0).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while server.status().await["rooms"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rooms never aged out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn close_all(clients: Vec<Client>) {
    futures_util::stream::iter(clients)
        .for_each_concurrent(200, |c| c.close())
        .await;
}
