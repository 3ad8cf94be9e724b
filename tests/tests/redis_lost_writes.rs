//! Redis that loses acknowledged writes: restarted from an older RDB
//! snapshot, or a lagging replica promoted behind the one endpoint the
//! nodes know. Each room's stored stream is then behind what nodes and
//! members already got, in the same epoch; the engine's rollback check
//! (docs/engine.md, "Lost writes") moves it to a new epoch. Members on two
//! nodes are checked by the shared oracle: every broadcast or a
//! `ROOM_GAP`, in order, no seq given to two messages (the publisher's
//! receipts are checked against what members got), and a rejoin from
//! before the loss is not recovered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_tests::cluster::{redis_config, redis_node};
use roomcast_tests::oracle_client::{CheckedClient, Observer};
use roomcast_tests::redis_server::RedisServer;
use roomcast_tests::TestServer;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Members on both nodes, three broadcasts each before and after the
/// point Redis will go back to; returns the members and the epoch.
async fn before_the_loss(
    observer: &Observer,
    a: &TestServer,
    b: &TestServer,
    mark: impl AsyncFnOnce(),
) -> (CheckedClient, CheckedClient, String) {
    let mut on_a = observer.connect(a.addr, None).await;
    let mut on_b = observer.connect(b.addr, None).await;
    let epoch = on_a.join("room").await["data"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    on_b.join("room").await;
    for n in 1..=3 {
        observer.publish(a.addr, "room", n).await;
    }
    mark().await;
    for n in 4..=6 {
        observer.publish(b.addr, "room", n).await;
    }
    for member in [&mut on_a, &mut on_b] {
        let got = member.broadcasts("room", 6).await;
        let seqs: Vec<u64> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }
    (on_a, on_b, epoch)
}

/// After the loss: publishes through both nodes are answered in a new
/// epoch (never a seq of the old one again: the oracle compares each
/// receipt with what members got), members are told and get them, and
/// rejoins from before the loss are not recovered.
async fn after_the_loss(
    observer: &Observer,
    a: &TestServer,
    b: &TestServer,
    mut members: [CheckedClient; 2],
    epoch: &str,
) {
    for n in 7..=9 {
        let through = if n % 2 == 0 { a } else { b };
        let receipt = observer.publish_retrying(through.addr, "room", n).await;
        assert_ne!(receipt["epoch"], epoch, "a new epoch: {receipt}");
    }
    for member in members.iter_mut() {
        let gap = loop {
            let message = member.recv().await;
            if message["data"]["code"] == "ROOM_GAP" {
                break message;
            }
        };
        assert_ne!(gap["data"]["epoch"], epoch, "{gap}");
    }
    // A client that saw seq 6 (or only 2) before the loss is not
    // recovered: the old epoch is gone.
    let mut rejoined = Vec::new();
    for (node, since) in [(a, 6), (b, 2)] {
        let mut client = observer.connect(node.addr, None).await;
        let reply = client.recover("room", epoch, since).await;
        assert_eq!(reply["data"]["recovered"], false, "{reply}");
        assert_ne!(reply["data"]["epoch"], epoch, "{reply}");
        rejoined.push(client);
    }
    let [mut m1, mut m2] = members;
    let [mut r1, mut r2]: [CheckedClient; 2] = rejoined.try_into().ok().unwrap();
    let mut everyone = [&mut m1, &mut m2, &mut r1, &mut r2];
    observer
        .settle(a.addr, &["room"], &mut everyone, &[a.addr, b.addr])
        .await;
    for client in [m1, m2, r1, r2] {
        client.close().await;
    }
}

#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_reuses_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let port = roomcast_tests::binary::free_port();
    let mut redis = RedisServer::start_snapshotting(port, dir.path());
    let a = redis_node(redis_config(&redis.url(), "rdb")).await;
    let b = redis_node(redis_config(&redis.url(), "rdb")).await;
    let observer = Observer::new();
    let save = async || assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    let (on_a, on_b, epoch) = before_the_loss(&observer, &a, &b, save).await;
    // SIGKILL, then back from the snapshot: the room is at seq 3 of its
    // epoch again, while both nodes and their members are at 6.
    redis.kill();
    let _redis = RedisServer::start_snapshotting(port, dir.path());
    after_the_loss(&observer, &a, &b, [on_a, on_b], &epoch).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A TCP proxy playing a managed Redis endpoint: connections go to the
/// current target; switching closes every connection made so far (a
/// failover breaks them), and new ones go to the new target.
struct Endpoint {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Endpoint {
    async fn start(target: SocketAddr) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (to, all) = (target.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = *to.lock().unwrap();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                all.lock().unwrap().push(link);
            }
        });
        Endpoint {
            addr,
            target,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn switch(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.accept.abort();
        self.switch(self.addr);
    }
}

fn info_field(server: &RedisServer, field: &str) -> String {
    let info = server.cli(&["INFO", "replication"]);
    let line = info.lines().find(|l| l.starts_with(field));
    line.and_then(|l| l.split(':').nth(1))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_lagging_replica_promoted_behind_the_endpoint_reuses_no_seq() {
    // Their files (a full resync writes a snapshot) stay out of the tree.
    let (master_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = |d: &tempfile::TempDir| d.path().to_string_lossy().into_owned();
    let master_port = roomcast_tests::binary::free_port();
    let master = RedisServer::start_with(master_port, &["--dir", &dir(&master_dir)]);
    let replica_port = roomcast_tests::binary::free_port();
    let master_port = master_port.to_string();
    let replica_dir = dir(&replica_dir);
    let replica_args = [
        "--dir",
        &replica_dir,
        "--replicaof",
        "127.0.0.1",
        &master_port,
    ];
    let replica = RedisServer::start_with(replica_port, &replica_args);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while info_field(&replica, "master_link_status") != "up" {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let endpoint = Endpoint::start(master.addr).await;
    let a = redis_node(redis_config(&endpoint.url(), "failover")).await;
    let b = redis_node(redis_config(&endpoint.url(), "failover")).await;
    let observer = Observer::new();
    // The replica has everything up to here, then stops following (its
    // data kept: it points at an address where nothing listens).
    let detach = async || {
        assert_eq!(master.cli(&["WAIT", "1", "2000"]).trim(), "1");
        let dead = roomcast_tests::binary::free_port().to_string();
        assert_eq!(replica.cli(&["REPLICAOF", "127.0.0.1", &dead]).trim(), "OK");
    };
    let (on_a, on_b, epoch) = before_the_loss(&observer, &a, &b, detach).await;
    // The provider fails over: the replica, three messages behind, is
    // promoted, and the endpoint now leads to it.
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]).trim(), "OK");
    endpoint.switch(replica.addr);
    after_the_loss(&observer, &a, &b, [on_a, on_b], &epoch).await;
    // The old master was never written to after the switch.
    let meta = master.cli(&["HGET", "failover:{room}:meta", "e"]);
    assert_eq!(meta.trim(), epoch);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(endpoint);
}
