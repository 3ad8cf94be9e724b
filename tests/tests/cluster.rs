//! Several roomcast nodes as one, on a Redis the test starts itself: three
//! real servers on loopback (in this process) with the Redis engine.

use std::time::Duration;

use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::serde_json::{json, Value};
use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::{http, test_config, TestServer};

async fn node(redis: &RedisServer, prefix: &str) -> TestServer {
    let mut config = test_config();
    config.engine.redis_url = Some(redis.url());
    config.engine.redis_prefix = prefix.to_owned();
    let server = TestServer::start(config).await;
    // Ready once Redis answers on both connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = http(server.addr, "GET", "/readyz", &[], "").await;
        if response.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

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
    let a = node(&redis, "cluster").await;
    let b = node(&redis, "cluster").await;
    let c = node(&redis, "cluster").await;

    let mut on_a = a.client_with_token(&token("ann", "")).await;
    let mut on_b = b.client_with_token(&token("bob", "")).await;
    let mut on_c = c.client_with_token(&token("cat", "")).await;
    let joined = on_a.join("room").await;
    let epoch = joined["data"]["epoch"].clone();
    for client in [&mut on_b, &mut on_c] {
        let reply = client.join("room").await;
        assert_eq!(reply["data"]["epoch"], epoch, "one epoch on every node");
    }

    // Published on A: members on A, B and C get everything, in order.
    for n in 1..=20 {
        let receipt = publish(&a, "room", n).await;
        assert_eq!(receipt["seq"], n, "{receipt}");
    }
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        let mut got = Vec::new();
        while got.len() < 20 {
            let message = client.recv_json().await;
            if message["type"] == "queue_status" {
                got.push(message);
            }
        }
        assert_eq!(seqs(&got), (1..=20).collect::<Vec<u64>>());
    }

    // Presence lists the members of every node.
    let presence = on_b
        .request(json!({"action": "presence", "data": {"room": "room"}}))
        .await;
    assert_eq!(presence["type"], "presence", "{presence}");
    assert_eq!(presence["data"]["connections"], 3, "{presence}");
    assert_eq!(presence["data"]["users"], json!(["ann", "bob", "cat"]));

    // A client drops from A; publishes go on (on C); it rejoins on B with
    // `since` and recovers exactly what it missed.
    on_a.close().await;
    for n in 21..=23 {
        publish(&c, "room", n).await;
    }
    let mut back = b.client_with_token(&token("ann", "")).await;
    let reply = back
        .request(json!({"action": "join", "data": {"room": "room", "since": {"epoch": epoch, "seq": 20}}}))
        .await;
    assert_eq!(reply["data"]["recovered"], true, "{reply}");
    assert_eq!(seqs(&back.fence().await), vec![21, 22, 23]);

    // Members elsewhere got them live, in order.
    for client in [&mut on_b, &mut on_c] {
        let mut got = Vec::new();
        while got.len() < 3 {
            let message = client.recv_json().await;
            if message["type"] == "queue_status" {
                got.push(message);
            }
        }
        assert_eq!(seqs(&got), vec![21, 22, 23]);
    }

    back.close().await;
    on_b.close().await;
    on_c.close().await;
    for server in [a, b, c] {
        server.shutdown().await.unwrap();
    }
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
async fn the_in_memory_engine_is_always_ready() {
    let server = TestServer::start_default().await;
    let ready = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    server.shutdown().await.unwrap();
}
