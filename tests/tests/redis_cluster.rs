//! roomcast nodes on a Redis Cluster the test starts itself (three
//! masters, no replicas): rooms spread over the cluster's shards, and every
//! node still sees one order per room, recovery and presence. The engine
//! contract itself runs against a cluster in `engine_conformance.rs`.

use std::time::Duration;

use roomcast_tests::redis_server::RedisCluster;
use roomcast_tests::serde_json::{json, Value};
use roomcast_tests::tokens::{publisher, token};
use roomcast_tests::{http, test_config, TestServer};

/// A node on `cluster`, with its seeds listed from `first` on (so two
/// nodes put their pub/sub connections on different cluster nodes).
async fn node(cluster: &RedisCluster, first: usize) -> TestServer {
    let mut seeds: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    seeds.rotate_left(first);
    let mut config = test_config();
    config.engine.redis_url = Some(seeds.join(","));
    config.engine.redis_cluster = true;
    let server = TestServer::start(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(server.addr, "GET", "/readyz", &[], "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// The `seq`s of the `queue_status` messages of `room` among `messages`.
fn seqs_of(messages: &[Value], room: &str) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["type"] == "queue_status" && m["room"] == room)
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn rooms_spread_over_a_redis_cluster_keep_one_order_recovery_and_presence() {
    let cluster = RedisCluster::start(3);
    let a = node(&cluster, 0).await;
    let b = node(&cluster, 1).await;
    let rooms: Vec<String> = (0..8).map(|n| format!("room{n}")).collect();

    let mut on_a = a.client_with_token(&token("ann", "")).await;
    let mut on_b = b.client_with_token(&token("bob", "")).await;
    let mut epochs = Vec::new();
    for room in &rooms {
        let joined = on_a.join(room).await;
        let reply = on_b.join(room).await;
        assert_eq!(reply["data"]["epoch"], joined["data"]["epoch"], "{reply}");
        epochs.push(joined["data"]["epoch"].clone());
    }
    // The rooms' keys landed on more than one shard.
    let shards_used = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim() != "0")
        .count();
    assert!(shards_used >= 2, "every room on one shard");

    // Publishes alternate between the nodes; both members get every
    // message of every room, in order.
    for n in 1..=5u64 {
        for (i, room) in rooms.iter().enumerate() {
            let on = if (i as u64 + n).is_multiple_of(2) {
                &a
            } else {
                &b
            };
            let body = json!({"room": room, "type": "queue_status", "data": {"n": n}});
            let receipt = on.broadcast(&publisher(), body).await;
            assert_eq!(receipt.status, 200, "{}", receipt.text());
            assert_eq!(receipt.json()["seq"], n);
        }
    }
    for client in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        while got
            .iter()
            .filter(|m: &&Value| m["type"] == "queue_status")
            .count()
            < 40
        {
            got.push(client.recv_json().await);
        }
        for room in &rooms {
            assert_eq!(seqs_of(&got, room), vec![1, 2, 3, 4, 5], "{room}");
        }
    }

    // Presence counts both nodes' members.
    let presence = on_a
        .request(json!({"action": "presence", "data": {"room": "room3"}}))
        .await;
    assert_eq!(
        presence["data"]["users"],
        json!(["ann", "bob"]),
        "{presence}"
    );

    // Ann leaves A; two more messages per room; she rejoins on B with
    // `since` and recovers exactly those, room by room.
    on_a.close().await;
    for n in 6..=7u64 {
        for room in &rooms {
            let body = json!({"room": room, "type": "queue_status", "data": {"n": n}});
            assert_eq!(a.broadcast(&publisher(), body).await.status, 200);
        }
    }
    let mut back = b.client_with_token(&token("ann", "")).await;
    for (room, epoch) in rooms.iter().zip(&epochs) {
        back.send_json(
            json!({"action": "join", "data": {"room": room, "since": {"epoch": epoch, "seq": 5}}}),
        )
        .await;
    }
    let recovered = back.fence().await;
    let replies: Vec<&Value> = recovered
        .iter()
        .filter(|m| m["type"] == "system_info")
        .collect();
    assert_eq!(replies.len(), rooms.len(), "{recovered:#?}");
    assert!(
        replies.iter().all(|r| r["data"]["recovered"] == true),
        "{replies:#?}"
    );
    for room in &rooms {
        assert_eq!(seqs_of(&recovered, room), vec![6, 7], "{room}");
    }
}

#[tokio::test]
async fn a_node_whose_pubsub_cluster_node_dies_resubscribes_elsewhere() {
    let mut cluster = RedisCluster::start(3);
    let a = node(&cluster, 0).await;
    // B's pub/sub connection goes to cluster node 1 first.
    let b = node(&cluster, 1).await;
    // A room whose keys live on a shard other than node 1 (node 1 is
    // killed below, and without replicas its slots are gone with it).
    let room = (0..64)
        .map(|n| format!("r{n}"))
        .find(|candidate| {
            let key = format!("roomcast:{{{candidate}}}:meta");
            let slot: u16 = cluster.nodes[0]
                .cli(&["cluster", "keyslot", &key])
                .trim()
                .parse()
                .unwrap();
            !serves_slot(&cluster.nodes[1], slot)
        })
        .expect("a room on another shard");
    let mut member = b.client().await;
    member.join(&room).await;
    let a = &a;
    let publish = |n: u64| {
        let body = json!({"room": &room, "type": "queue_status", "data": {"n": n}});
        async move {
            let receipt = a.broadcast(&publisher(), body).await;
            assert_eq!(receipt.status, 200, "{}", receipt.text());
        }
    };
    publish(1).await;
    assert_eq!(seqs_of(&[member.recv_json().await], &room), vec![1]);

    // Kill node 1: B's pub/sub connection drops and goes to the next seed;
    // what was published meanwhile is refilled, in order, with no gap.
    cluster.nodes[1].kill();
    for n in 2..=4 {
        publish(n).await;
    }
    let mut got = Vec::new();
    while seqs_of(&got, &room).len() < 3 {
        let message = member
            .recv_json_within(Duration::from_secs(15))
            .await
            .expect("the messages published while the pub/sub node was down");
        assert_ne!(message["data"]["code"], "ROOM_GAP", "{message}");
        got.push(message);
    }
    assert_eq!(seqs_of(&got, &room), vec![2, 3, 4]);
    publish(5).await;
    let next = member.recv_json_within(Duration::from_secs(5)).await;
    assert_eq!(next.map(|m| m["seq"].clone()), Some(json!(5)));
}

/// Whether `node` serves `slot`: the slot ranges at the end of the
/// `myself` line of its `CLUSTER NODES`.
fn serves_slot(node: &roomcast_tests::redis_server::RedisServer, slot: u16) -> bool {
    let nodes = node.cli(&["cluster", "nodes"]);
    let Some(myself) = nodes.lines().find(|line| line.contains("myself")) else {
        return false;
    };
    myself.split_whitespace().skip(8).any(|range| {
        let (start, end) = range.split_once('-').unwrap_or((range, range));
        match (start.parse::<u16>(), end.parse::<u16>()) {
            (Ok(start), Ok(end)) => (start..=end).contains(&slot),
            _ => false,
        }
    })
}
