//! Several roomcast nodes as one, on a Redis the test starts itself: three
//! real servers on loopback (in this process) with the Redis engine.
//!
//! In every fault case, every client's requests and messages go through
//! the shared delivery oracle (`roomcast_tests::oracle_client`, the
//! simulator's `roomcast_core::oracle`): each member receives every message
//! of its rooms in order or is told (a close code or `ROOM_GAP`), and once
//! the workload is quiet every member of every node has caught up with each
//! room's last broadcast.

use std::time::Duration;

use roomcast_tests::binary::Process;
use roomcast_tests::cluster::{redis_config, redis_node, wait_ready, Cluster};
use roomcast_tests::oracle_client::Observer;
use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::serde_json::{json, Value};
use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::{http, test_config, TestServer, SECRET};

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["type"] == "queue_status")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

async fn publish(on: &TestServer, room: &str, n: u64) -> Value {
    let response = on
        .broadcast(
            &publisher(),
            json!({"room": room, "type": "queue_status", "data": {"n": n}}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test]
async fn three_nodes_share_order_history_and_presence() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cluster", 3).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);
    // /ws/status reports the deployment's nodes seen alive.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = a.status().await;
        if status["cluster"]["nodes"] == 3 {
            assert_eq!(status["cluster"]["engine"], "redis");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let observer = Observer::new();
    let mut on_a = observer.connect(a.addr, Some(token("ann", ""))).await;
    let mut on_b = observer.connect(b.addr, Some(token("bob", ""))).await;
    let mut on_c = observer.connect(c.addr, Some(token("cat", ""))).await;
    let joined = on_a.join("room").await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_owned();
    for client in [&mut on_b, &mut on_c] {
        let reply = client.join("room").await;
        assert_eq!(reply["data"]["epoch"], epoch, "one epoch on every node");
    }

    // Published on A: members on A, B and C get everything, in order.
    for n in 1..=20 {
        let receipt = observer.publish(a.addr, "room", n).await;
        assert_eq!(receipt["seq"], n, "{receipt}");
    }
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        let got = client.broadcasts("room", 20).await;
        assert_eq!(seqs(&got), (1..=20).collect::<Vec<u64>>());
    }

    // Presence lists the members of every node.
    let presence = on_b.presence("room").await;
    assert_eq!(presence["type"], "presence", "{presence}");
    assert_eq!(presence["data"]["connections"], 3, "{presence}");
    assert_eq!(presence["data"]["users"], json!(["ann", "bob", "cat"]));

    // A client drops from A; publishes go on (on C); it rejoins on B with
    // `since` (a new connection: a new client for the oracle) and recovers
    // exactly what it missed.
    on_a.close().await;
    for n in 21..=23 {
        observer.publish(c.addr, "room", n).await;
    }
    let mut back = observer.connect(b.addr, Some(token("ann", ""))).await;
    let reply = back.recover("room", &epoch, 20).await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(seqs(&back.broadcasts("room", 3).await), vec![21, 22, 23]);

    // Members elsewhere got them live, in order.
    for client in [&mut on_b, &mut on_c] {
        assert_eq!(seqs(&client.broadcasts("room", 3).await), vec![21, 22, 23]);
    }

    let mut members = [&mut back, &mut on_b, &mut on_c];
    observer
        .settle(a.addr, &["room"], &mut members, &cluster.addrs())
        .await;
    back.close().await;
    on_b.close().await;
    on_c.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn killed_pubsub_connections_are_refilled_with_no_silent_gap() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "pubsub", 2).await;
    let (a, b) = (&cluster[0], &cluster[1]);
    let observer = Observer::new();
    let mut member = observer.connect(b.addr, None).await;
    let mut on_a = observer.connect(a.addr, None).await;
    member.join("room").await;
    on_a.join("room").await;
    for n in 1..=5 {
        observer.publish(a.addr, "room", n).await;
    }
    assert_eq!(
        seqs(&member.broadcasts("room", 5).await),
        vec![1, 2, 3, 4, 5]
    );
    // Every node's pub/sub connection is killed; publishing goes on.
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // One per node: every node follows the direct-message channel.
    assert_eq!(killed.trim(), "2", "{killed}");
    for n in 6..=15 {
        observer.publish(a.addr, "room", n).await;
    }
    // B resubscribes and rereads: its member gets every message, in order
    // (the history holds them, so nothing needs a ROOM_GAP).
    let got = member.broadcasts("room", 10).await;
    assert_eq!(seqs(&got), (6..=15).collect::<Vec<u64>>(), "{got:?}");
    assert!(got.iter().all(|m| m["type"] == "queue_status"), "{got:?}");
    let mut members = [&mut member, &mut on_a];
    observer
        .settle(a.addr, &["room"], &mut members, &cluster.addrs())
        .await;
    member.close().await;
    on_a.close().await;
    cluster.shutdown().await;
}

/// Every connection to Redis is cut (the data stays): members get every
/// message, in order, with no gap announced.
#[tokio::test]
async fn cut_redis_connections_lose_nothing_when_the_data_stays() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cut", 2).await;
    let a = &cluster[0];
    let observer = Observer::new();
    let mut member = observer.connect(cluster[1].addr, None).await;
    member.join("room").await;
    for n in 1..=5 {
        observer.publish(a.addr, "room", n).await;
    }
    assert_eq!(
        seqs(&member.broadcasts("room", 5).await),
        vec![1, 2, 3, 4, 5]
    );
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    let mut last = 5;
    for n in 6..=15 {
        last = observer.publish_retrying(a.addr, "room", n).await["seq"]
            .as_u64()
            .unwrap();
    }
    let got = member.broadcasts("room", (last - 5) as usize).await;
    assert!(got.iter().all(|m| m["type"] == "queue_status"), "{got:?}");
    assert_eq!(seqs(&got), (6..=last).collect::<Vec<u64>>());
    observer
        .settle(a.addr, &["room"], &mut [&mut member], &cluster.addrs())
        .await;
    member.close().await;
    cluster.shutdown().await;
}

/// Redis killed (SIGKILL) mid-stream and restarted with its data (an
/// append-only file synced on every write): members on two nodes get
/// every message in order, in one epoch, with no gap announced.
#[tokio::test]
async fn redis_killed_and_restarted_with_its_data_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = roomcast_tests::binary::free_port();
    let mut redis = RedisServer::start_persistent(port, dir.path());
    let cluster = Cluster::start(&redis, "persist", 3).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);
    let observer = Observer::new();
    let mut on_b = observer.connect(b.addr, None).await;
    let mut on_c = observer.connect(c.addr, None).await;
    let epoch = on_b.join("room").await["data"]["epoch"].clone();
    on_c.join("room").await;
    for n in 1..=5 {
        observer.publish(a.addr, "room", n).await;
    }
    for member in [&mut on_b, &mut on_c] {
        assert_eq!(
            seqs(&member.broadcasts("room", 5).await),
            vec![1, 2, 3, 4, 5]
        );
    }
    redis.kill();
    let response = a
        .broadcast(
            &publisher(),
            json!({"room": "room", "type": "queue_status", "data": {}}),
        )
        .await;
    response.assert_error(503, "ENGINE_UNAVAILABLE");
    let _redis = RedisServer::start_persistent(port, dir.path());
    // Published through a node whose members are at the top, which
    // vouches for it after the restart (the rollback check: a restart may
    // have lost writes, and a node that follows no member of the room,
    // publishing first, could not tell; it would start a new epoch).
    let mut last = 5;
    for n in 6..=10 {
        let receipt = observer.publish_retrying(b.addr, "room", n).await;
        assert_eq!(receipt["epoch"], epoch, "the epoch survives: {receipt}");
        last = receipt["seq"].as_u64().unwrap();
    }
    for member in [&mut on_b, &mut on_c] {
        let got = member.broadcasts("room", (last - 5) as usize).await;
        assert!(got.iter().all(|m| m["type"] == "queue_status"), "{got:?}");
        assert_eq!(seqs(&got), (6..=last).collect::<Vec<u64>>());
    }
    let mut members = [&mut on_b, &mut on_c];
    observer
        .settle(a.addr, &["room"], &mut members, &cluster.addrs())
        .await;
    on_b.close().await;
    on_c.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn redis_restarted_empty_is_announced_and_old_cursors_do_not_recover() {
    let mut redis = RedisServer::start();
    let port = redis.addr.port();
    let cluster = Cluster::start(&redis, "restart", 2).await;
    let (a, b) = (&cluster[0], &cluster[1]);
    let observer = Observer::new();
    let mut member = observer.connect(b.addr, None).await;
    let epoch = member.join("room").await["data"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=3 {
        observer.publish(a.addr, "room", n).await;
    }
    assert_eq!(seqs(&member.broadcasts("room", 3).await), vec![1, 2, 3]);
    redis.kill();
    // Down: publishes fail with 503, the member stays connected.
    let response = a
        .broadcast(
            &publisher(),
            json!({"room": "room", "type": "queue_status", "data": {}}),
        )
        .await;
    response.assert_error(503, "ENGINE_UNAVAILABLE");
    // A rejoin with `since` on the node that knows the room is answered
    // honestly: joined, nothing recovered.
    let mut during = observer.connect(b.addr, None).await;
    let reply = during.recover("room", &epoch, 1).await;
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    during.close().await;
    let _redis = RedisServer::start_on(port);
    // Back, empty: the first publish that works starts a new epoch.
    let receipt = observer.publish_retrying(a.addr, "room", 4).await;
    assert_eq!(receipt["seq"], 1);
    assert_ne!(receipt["epoch"], epoch);
    // The member is told: a ROOM_GAP naming the new epoch and the seq it
    // goes on after (0, or later when B read the room only after appends
    // whose live messages its pub/sub, still reconnecting, missed); the
    // oracle checks that nothing of the new epoch came before it...
    let gap = loop {
        let message = member.recv().await;
        if message["data"]["code"] == "ROOM_GAP" {
            break message;
        }
    };
    assert_eq!(gap["data"]["epoch"], receipt["epoch"], "{gap}");
    // ...and that every message after it arrives, in order.
    observer.publish(a.addr, "room", 5).await;
    // An old cursor does not recover.
    let mut back = observer.connect(b.addr, None).await;
    let reply = back.recover("room", &epoch, 3).await;
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    let mut members = [&mut member, &mut back];
    observer
        .settle(a.addr, &["room"], &mut members, &cluster.addrs())
        .await;
    back.close().await;
    member.close().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn api_send_reaches_a_user_on_every_node() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "send", 3).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);
    let mut on_a = a.client_with_token(&token("ann", "")).await;
    let mut on_b = b.client_with_token(&token("ann", "")).await;
    let mut other = b.client_with_token(&token("bob", "")).await;
    // Sent on C, where ann has no connection.
    let response = c
        .send(
            &publisher(),
            json!({"user_id": "ann", "type": "system_info", "data": {"message": "hi"}}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["delivered"],
        0,
        "counts this node's connections"
    );
    for client in [&mut on_a, &mut on_b] {
        let message = client.recv_json().await;
        assert_eq!(message["type"], "system_info", "{message}");
        assert_eq!(message["data"]["message"], "hi", "{message}");
    }
    other.assert_nothing_pending().await;
    // To one connection on another node, by its id.
    let response = a
        .send(
            &publisher(),
            json!({"connection_id": on_b.connection_id, "type": "system_info", "data": {"message": "you"}}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let message = on_b.recv_json().await;
    assert_eq!(message["data"]["message"], "you", "{message}");
    on_a.assert_nothing_pending().await;
    other.assert_nothing_pending().await;
    for client in [on_a, on_b, other] {
        client.close().await;
    }
    cluster.shutdown().await;
}

async fn users(client: &mut roomcast_tests::oracle_client::CheckedClient) -> Value {
    client.presence("room").await["data"]["users"].clone()
}

/// The real binary with `--redis`, killed with SIGKILL: its members vanish
/// from presence within `presence_ttl_ms`; the other node keeps serving,
/// and a member of the killed node rejoins there with `since` and
/// recovers what it missed.
#[tokio::test]
async fn a_killed_node_loses_its_presence_within_the_ttl() {
    let redis = RedisServer::start();
    let mut doomed_node = Process::spawn(
        &["--redis", &redis.url()],
        &[
            ("ROOMCAST_JWT_SECRET", SECRET),
            ("ROOMCAST_ENGINE__REDIS_PREFIX", "killed"),
            ("ROOMCAST_LIMITS__PRESENCE_TTL_MS", "1500"),
        ],
    );
    wait_ready(doomed_node.addr).await;
    let mut config = redis_config(&redis.url(), "killed");
    config.limits.presence_ttl_ms = 1_500;
    let b = redis_node(config).await;
    let observer = Observer::new();
    let mut doomed = observer
        .connect(doomed_node.addr, Some(token("ann", "")))
        .await;
    let epoch = doomed.join("room").await["data"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut survivor = observer.connect(b.addr, Some(token("bob", ""))).await;
    survivor.join("room").await;
    assert_eq!(users(&mut survivor).await, json!(["ann", "bob"]));
    for n in 1..=3 {
        observer.publish(b.addr, "room", n).await;
    }
    assert_eq!(seqs(&doomed.broadcasts("room", 3).await), vec![1, 2, 3]);
    doomed_node.kill().await;
    let killed_at = std::time::Instant::now();
    // Its client's connection is gone (no close frame: the process died).
    doomed.read_until_lost().await;
    // Still listed for a while (nobody removed it), gone within the TTL.
    loop {
        let users = users(&mut survivor).await;
        if users == json!(["bob"]) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_millis(1_500 + 1_000),
            "still {users} after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B keeps serving the room.
    let receipt = observer.publish(b.addr, "room", 4).await;
    assert_eq!(receipt["delivered"], 1, "{receipt}");
    // The killed node's client comes back on B and recovers seq 4.
    let mut back = observer.connect(b.addr, Some(token("ann", ""))).await;
    let reply = back.recover("room", &epoch, 3).await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(seqs(&back.broadcasts("room", 1).await), vec![4]);
    let mut members = [&mut survivor, &mut back];
    observer
        .settle(b.addr, &["room"], &mut members, &[b.addr])
        .await;
    survivor.close().await;
    back.close().await;
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_is_not_ready_without_redis_but_stays_alive() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = test_config();
    config.engine.redis_url = Some(format!("redis://127.0.0.1:{port}/0"));
    config.engine.redis_timeout_ms = 300;
    let server = TestServer::start(config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["status"], "not_ready");
    let live = http(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(live.status, 200);
    // A publish answers 503 ENGINE_UNAVAILABLE (it does not hang).
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "r", "type": "queue_status", "data": {}}),
        )
        .await;
    response.assert_error(503, "ENGINE_UNAVAILABLE");
    // Redis comes up: the node becomes ready and publishes work.
    let _redis = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while http(server.addr, "GET", "/readyz", &[], "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = server
        .broadcast(
            &publisher(),
            json!({"room": "r", "type": "queue_status", "data": {}}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_password_in_the_url_works() {
    let port = roomcast_tests::binary::free_port();
    let _redis = RedisServer::start_with(port, &["--requirepass", "s3cret-pass"]);
    let mut config = test_config();
    config.engine.redis_url = Some(format!("redis://:s3cret-pass@127.0.0.1:{port}/0"));
    let server = TestServer::start(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(server.addr, "GET", "/readyz", &[], "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let receipt = publish(&server, "room", 1).await;
    assert_eq!(receipt["seq"], 1, "{receipt}");
    server.shutdown().await.unwrap();
}

/// The binary logs the Redis URL (and its connection failures) without
/// the password.
#[tokio::test]
async fn the_password_never_appears_in_the_logs() {
    let port = roomcast_tests::binary::free_port();
    let redis_url = format!("redis://user:pw-s3cret@127.0.0.1:{port}/0");
    let mut node = Process::spawn(&["--redis", &redis_url], &[("ROOMCAST_JWT_SECRET", SECRET)]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    node.kill().await;
    let log = node.log();
    assert!(log.contains("redis://user:***@127.0.0.1"), "{log}");
    assert!(log.contains("retrying"), "{log}");
    assert!(!log.contains("pw-s3cret"), "{log}");
}

#[tokio::test]
async fn the_in_memory_engine_is_always_ready() {
    let server = TestServer::start_default().await;
    let ready = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert!(server.status().await.get("cluster").is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_counts_the_connections_of_every_node() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "figures", 2).await;
    let (a, b) = (&cluster[0], &cluster[1]);
    let _on_a = [a.client().await, a.client().await];
    let on_b = b.client().await;
    // Each node reports its own connections and, from the heartbeats (one
    // a second), the deployment's.
    let until_figures = |server: &TestServer, nodes: u64, connections: u64| {
        let addr = server.addr;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let status = http(addr, "GET", "/ws/status", &[], "").await.json();
                let cluster = &status["cluster"];
                if cluster["nodes"] == nodes && cluster["connections"] == connections {
                    return status;
                }
                assert!(std::time::Instant::now() < deadline, "{status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let status = until_figures(a, 2, 3).await;
    assert_eq!(status["active_connections"], 2, "this node's own: {status}");
    let status = until_figures(b, 2, 3).await;
    assert_eq!(status["active_connections"], 1, "{status}");
    // A connection closed on B leaves the cluster's count.
    on_b.close().await;
    until_figures(a, 2, 2).await;
    drop(_on_a);
    cluster.shutdown().await;
}
