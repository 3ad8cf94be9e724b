//! Redis that fails over: nodes (the real binary) on a master, a replica
//! and a Sentinel that the test starts itself; a node on a master that is
//! demoted to a replica; a pub/sub connection that goes quiet. Members are
//! checked by the shared delivery oracle (`roomcast_tests::oracle_client`):
//! every broadcast of their rooms received in order, or told.

use std::time::{Duration, Instant};

use roomcast_tests::binary::Process;
use roomcast_tests::cluster::{redis_config, redis_node, wait_ready};
use roomcast_tests::http;
use roomcast_tests::oracle_client::Observer;
use roomcast_tests::redis_proxy::RedisProxy;
use roomcast_tests::redis_sentinel::{Sentinel, MASTER};
use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::serde_json::Value;

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["type"] == "queue_status")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

async fn readyz(addr: std::net::SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], "").await.status
}

/// Waits (at most `within`) until `/readyz` on `addr` answers `status`.
async fn wait_readyz(addr: std::net::SocketAddr, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let answered = http(addr, "GET", "/readyz", &[], "").await;
        if answered.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz on {addr} never answered {status}: {} {}",
            answered.status,
            answered.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master is killed: the Sentinel promotes the replica and both nodes
/// follow it within `down-after-milliseconds` (1 s) and a few seconds;
/// members on both nodes get every broadcast, in order; the old master,
/// restarted as a replica, never receives a roomcast write.
#[tokio::test]
async fn nodes_follow_a_sentinel_failover_and_never_write_to_the_old_master() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica(&master);
    let sentinel = Sentinel::start(master.addr, 1);
    let args = ["--redis", &sentinel.url(), "--redis-sentinel", MASTER];
    let env = [
        ("ROOMCAST_JWT_SECRET", roomcast_tests::SECRET),
        ("ROOMCAST_ENGINE__REDIS_PREFIX", "failover"),
    ];
    let mut a = Process::spawn(&args, &env);
    let mut b = Process::spawn(&args, &env);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;

    let observer = Observer::new();
    let mut on_a = observer.connect(a.addr, None).await;
    let mut on_b = observer.connect(b.addr, None).await;
    let epoch = on_a.join("room").await["data"]["epoch"].clone();
    on_b.join("room").await;
    for n in 1..=5 {
        observer.publish(a.addr, "room", n).await;
    }
    for member in [&mut on_a, &mut on_b] {
        assert_eq!(
            seqs(&member.broadcasts("room", 5).await),
            vec![1, 2, 3, 4, 5]
        );
    }
    // The replica has everything (this test is about following the
    // failover; losing acknowledged writes is another test's).
    assert_eq!(master.cli(&["WAIT", "1", "5000"]).trim(), "1");

    let old_port = master.addr.port();
    master.kill();
    let killed = Instant::now();
    // Publishing goes on through both nodes as soon as they follow.
    let first = observer.publish_retrying(a.addr, "room", 6).await;
    let followed_in = killed.elapsed();
    assert_eq!(
        sentinel.master(),
        replica.addr,
        "the sentinel promoted the replica"
    );
    assert_eq!(
        first["epoch"], epoch,
        "the promoted replica kept the room: {first}"
    );
    observer.publish_retrying(b.addr, "room", 7).await;
    // Generous liveness bound: down-after (1 s) + election + promotion +
    // the nodes' re-ask, well under this.
    assert!(
        followed_in < Duration::from_secs(15),
        "the nodes followed the failover only after {followed_in:?}"
    );
    for node in [a.addr, b.addr] {
        assert_eq!(readyz(node).await, 200);
    }

    // The old master comes back as a replica of the new one: no node
    // sends it anything (a node's scripts name its keys, "failover:...";
    // what the replica applies from its master are plain commands).
    let new_master = replica.addr.port().to_string();
    let old = RedisServer::start_with(old_port, &["--replicaof", "127.0.0.1", &new_master]);
    let mut monitor = Monitor::start(&old);
    old.wait_for_info("replication", "master_link_status:up");
    for n in 8..=12 {
        let on = if n % 2 == 0 { a.addr } else { b.addr };
        let receipt = observer.publish(on, "room", n).await;
        assert_eq!(receipt["seq"], n, "{receipt}");
    }
    for member in [&mut on_a, &mut on_b] {
        let got = member.broadcasts("room", 7).await;
        assert!(got.iter().all(|m| m["type"] == "queue_status"), "{got:?}");
        assert_eq!(seqs(&got), (6..=12).collect::<Vec<u64>>());
    }
    for node in [a.addr, b.addr] {
        assert_eq!(readyz(node).await, 200);
    }
    let seen = monitor.stop();
    let scripts: Vec<&str> = seen
        .lines()
        .filter(|line| line.to_ascii_lowercase().contains("\"eval"))
        .filter(|line| line.contains("\"failover:"))
        .collect();
    assert!(
        scripts.is_empty(),
        "a node wrote to the old master: {scripts:?}\n--- a:\n{}\n--- b:\n{}",
        a.log(),
        b.log()
    );
    assert!(
        seen.contains("\"PING\""),
        "the monitor saw nothing at all: {seen}"
    );
    assert!(old.cli(&["ROLE"]).starts_with("slave"));

    observer
        .settle(
            a.addr,
            &["room"],
            &mut [&mut on_a, &mut on_b],
            &[a.addr, b.addr],
        )
        .await;
    let log = a.log();
    assert!(log.contains("redis sentinel: using this master"), "{log}");
    on_a.close().await;
    on_b.close().await;
    a.kill().await;
    b.kill().await;
}

/// `redis-cli MONITOR` on a server, into a file: every command it runs.
struct Monitor {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.txt");
        let child = std::process::Command::new("redis-cli")
            .args(["-p", &server.addr.port().to_string(), "MONITOR"])
            .stdout(std::fs::File::create(&path).unwrap())
            .spawn()
            .expect("redis-cli MONITOR");
        Monitor {
            child,
            _dir: dir,
            path,
        }
    }

    /// Stops it; what it saw.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.path).unwrap()
    }
}

/// A node whose Redis becomes a replica (`REPLICAOF`, as when a master is
/// demoted under it) is not ready while appends cannot succeed, and ready
/// again once its Redis is a master again.
#[tokio::test]
async fn a_node_on_a_demoted_master_is_not_ready_until_it_accepts_writes() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let node = redis_node(redis_config(&redis.url(), "demoted")).await;
    let observer = Observer::new();
    observer.publish(node.addr, "room", 1).await;

    let other_port = other.addr.port().to_string();
    redis.cli(&["REPLICAOF", "127.0.0.1", &other_port]);
    wait_readyz(node.addr, 503, Duration::from_secs(10)).await;
    let ready = http(node.addr, "GET", "/readyz", &[], "").await;
    assert!(ready.text().contains("read-only"), "{}", ready.text());
    let refused = roomcast_tests::api_post(
        node.addr,
        "/api/broadcast",
        Some(&roomcast_tests::tokens::publisher()),
        r#"{"room":"room","type":"queue_status","data":{}}"#.to_owned(),
    )
    .await;
    refused.assert_error(503, "ENGINE_UNAVAILABLE");

    redis.cli(&["REPLICAOF", "NO", "ONE"]);
    wait_readyz(node.addr, 200, Duration::from_secs(10)).await;
    observer.publish(node.addr, "room", 2).await;
    node.shutdown().await.unwrap();
}

/// The node's pub/sub connection stays open and answers PING but silently
/// lost its subscriptions (a proxy moves it to a connection subscribed to
/// nothing of the node's): the end-to-end probe notices within its bound,
/// the node reconnects, resubscribes and refills, and the member gets
/// every broadcast in order (the periodic stream check, which would
/// notice much later, is set out of the way).
#[tokio::test]
async fn a_pubsub_connection_that_stops_delivering_is_noticed_by_the_probe() {
    let redis = RedisServer::start();
    let proxy = RedisProxy::start(redis.addr).await;
    let a = redis_node(redis_config(&redis.url(), "probe")).await;
    let mut config = redis_config(&proxy.url(), "probe");
    config.limits.stream_check_interval_ms = 600_000;
    config.engine.redis_probe_interval_ms = 200;
    config.engine.redis_probe_timeout_ms = 1_000;
    let b = redis_node(config).await;
    let observer = Observer::new();
    let mut member = observer.connect(b.addr, None).await;
    member.join("room").await;
    for n in 1..=3 {
        observer.publish(a.addr, "room", n).await;
    }
    assert_eq!(seqs(&member.broadcasts("room", 3).await), vec![1, 2, 3]);

    proxy.lose_subscriptions(1).await;
    // Still "connected": PING is answered on the moved connection.
    assert_eq!(readyz(b.addr).await, 200);
    for n in 4..=8 {
        observer.publish(a.addr, "room", n).await;
    }
    let got = member.broadcasts("room", 5).await;
    assert!(got.iter().all(|m| m["type"] == "queue_status"), "{got:?}");
    assert_eq!(seqs(&got), vec![4, 5, 6, 7, 8]);
    observer
        .settle(a.addr, &["room"], &mut [&mut member], &[a.addr, b.addr])
        .await;
    member.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
