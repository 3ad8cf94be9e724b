//! The engine contract (docs/engine.md), one suite run against both
//! engines: the in-memory engine (driven directly, with a fake clock) and
//! the Redis engine (its real tasks, against a `redis-server` each test
//! starts on a free loopback port, and against a three-node Redis Cluster
//! each test starts the same way). Redis-only fault cases follow.

use std::collections::VecDeque;
use std::time::Duration;

use roomcast_core::engine::memory::MemoryEngine;
use roomcast_core::engine::{
    CallId, EngineError, EngineEvent, EngineRequest, Epoch, Numbered, Position, PresenceEntry,
    ReadResult, Unnumbered,
};
use roomcast_core::room_log::HistoryBounds;
use roomcast_core::{ConnectionId, RoomName};
use roomcast_net::engine::redis::{spawn, RedisSettings};
use roomcast_net::engine::EngineLink;
use roomcast_tests::redis_server::{RedisCluster, RedisServer};

const HISTORY_MAX: usize = 3;
const HISTORY_AGE_MS: u64 = 1_500;
const PRESENCE_TTL_MS: u64 = 600;
/// Longest wait for an answer or a live message.
const WAIT: Duration = Duration::from_secs(5);

enum Engines {
    Memory {
        engine: Box<MemoryEngine>,
        now_us: u64,
        queues: Vec<VecDeque<EngineEvent>>,
    },
    Redis {
        nodes: Vec<EngineLink>,
    },
}

/// Nodes sharing one engine, as the contract sees them.
struct Harness {
    engines: Engines,
    /// Events that arrived while a test waited for something else.
    held: Vec<VecDeque<EngineEvent>>,
    next_call: u64,
}

fn redis_settings(url: &str, node: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        tls: Default::default(),
        prefix: "conformance".to_owned(),
        node: node.to_owned(),
        timeout: Duration::from_millis(1_000),
        history_messages_max: HISTORY_MAX,
        history_age_ms: HISTORY_AGE_MS,
        presence_ttl_ms: PRESENCE_TTL_MS,
        // Every room's presence changes are published.
        presence_diff_prefixes: vec![String::new()],
        stream_check_interval_ms: 30_000,
        calls_max: 64,
        local_connections: Default::default(),
        cluster: false,
    }
}

impl Harness {
    fn memory(nodes: usize) -> Harness {
        let bounds = HistoryBounds {
            messages_max: HISTORY_MAX,
            age_max_us: HISTORY_AGE_MS * 1000,
            bytes_max: usize::MAX,
            rooms_max: usize::MAX,
        };
        Harness {
            engines: Engines::Memory {
                engine: Box::new(MemoryEngine::new(
                    bounds,
                    "mem".into(),
                    PRESENCE_TTL_MS * 1000,
                )),
                now_us: 1_000_000,
                queues: vec![VecDeque::new(); nodes],
            },
            held: vec![VecDeque::new(); nodes],
            next_call: 0,
        }
    }

    async fn redis(server: &RedisServer, nodes: usize) -> Harness {
        Harness::redis_at(&server.url(), false, nodes, PRESENCE_TTL_MS).await
    }

    async fn redis_with_ttl(server: &RedisServer, nodes: usize, ttl_ms: u64) -> Harness {
        Harness::redis_at(&server.url(), false, nodes, ttl_ms).await
    }

    async fn redis_cluster(cluster: &RedisCluster, nodes: usize) -> Harness {
        Harness::redis_at(&cluster.url(), true, nodes, PRESENCE_TTL_MS).await
    }

    async fn redis_at(url: &str, cluster: bool, nodes: usize, ttl_ms: u64) -> Harness {
        let nodes: Vec<EngineLink> = (0..nodes)
            .map(|n| {
                let mut settings = RedisSettings {
                    cluster,
                    ..redis_settings(url, &format!("node{n}"))
                };
                settings.presence_ttl_ms = ttl_ms;
                spawn(settings).unwrap()
            })
            .collect();
        for link in &nodes {
            let deadline = std::time::Instant::now() + WAIT;
            while link.ready.check().is_err() {
                assert!(std::time::Instant::now() < deadline, "never ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Harness {
            held: (0..nodes.len()).map(|_| VecDeque::new()).collect(),
            engines: Engines::Redis { nodes },
            next_call: 0,
        }
    }

    async fn send(&mut self, node: usize, request: EngineRequest) {
        match &mut self.engines {
            Engines::Memory {
                engine,
                now_us,
                queues,
            } => {
                engine.handle(node as u32, *now_us, request);
                while let Some((to, event)) = engine.poll_event() {
                    queues[to as usize].push_back(event);
                }
            }
            Engines::Redis { nodes } => nodes[node].requests.send(request).await.unwrap(),
        }
    }

    /// The next event for `node` (`None` when nothing came within `wait`).
    async fn next_event(&mut self, node: usize, wait: Duration) -> Option<EngineEvent> {
        if let Some(event) = self.held[node].pop_front() {
            return Some(event);
        }
        match &mut self.engines {
            Engines::Memory { queues, .. } => queues[node].pop_front(),
            Engines::Redis { nodes } => tokio::time::timeout(wait, nodes[node].events.recv())
                .await
                .ok()
                .flatten(),
        }
    }

    /// Waits for the answer to `call`, holding other events.
    async fn answer(&mut self, node: usize, call: CallId) -> EngineEvent {
        let mut others = VecDeque::new();
        let found = loop {
            let event = match &mut self.engines {
                Engines::Memory { queues, .. } => queues[node].pop_front(),
                Engines::Redis { nodes } => tokio::time::timeout(WAIT, nodes[node].events.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some(event) = event else {
                panic!("no answer to {call:?} on node {node}");
            };
            let id = match &event {
                EngineEvent::Appended { call, .. }
                | EngineEvent::Read { call, .. }
                | EngineEvent::Presence { call, .. } => Some(*call),
                _ => None,
            };
            if id == Some(call) {
                break event;
            }
            others.push_back(event);
        };
        self.held[node].extend(others);
        found
    }

    fn call(&mut self) -> CallId {
        self.next_call += 1;
        CallId(self.next_call)
    }

    async fn try_append(
        &mut self,
        node: usize,
        room: &str,
        n: u64,
        series: Option<&str>,
    ) -> Result<Numbered, EngineError> {
        let call = self.call();
        let message = Unnumbered {
            head: "{\"seq\":".into(),
            tail: format!(",\"n\":{n}}}"),
            series: series.map(str::to_owned),
        };
        let room = RoomName::new(room).unwrap();
        self.send(
            node,
            EngineRequest::Append {
                call,
                room,
                message,
            },
        )
        .await;
        match self.answer(node, call).await {
            EngineEvent::Appended { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }

    async fn append(&mut self, node: usize, room: &str, n: u64) -> Numbered {
        self.try_append(node, room, n, None).await.unwrap()
    }

    async fn read(
        &mut self,
        node: usize,
        room: &str,
        after: Option<Position>,
        limit: usize,
    ) -> ReadResult {
        self.try_read(node, room, after, limit).await.unwrap()
    }

    async fn try_read(
        &mut self,
        node: usize,
        room: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ReadResult, EngineError> {
        let call = self.call();
        let room = RoomName::new(room).unwrap();
        let request = EngineRequest::Read {
            call,
            room,
            after,
            limit,
        };
        self.send(node, request).await;
        match self.answer(node, call).await {
            EngineEvent::Read { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }

    /// Interest on, then a read: the read answers once the node follows.
    async fn follow(&mut self, node: usize, room: &str) -> ReadResult {
        let name = RoomName::new(room).unwrap();
        self.send(
            node,
            EngineRequest::Interest {
                room: name,
                on: true,
            },
        )
        .await;
        self.read(node, room, None, 0).await
    }

    async fn live(&mut self, node: usize) -> Numbered {
        match self.next_event(node, WAIT).await {
            Some(EngineEvent::Live(numbered)) => numbered,
            other => panic!("expected a live message on node {node}, got {other:?}"),
        }
    }

    async fn presence(&mut self, node: usize, room: &str) -> Vec<PresenceEntry> {
        let call = self.call();
        let room = RoomName::new(room).unwrap();
        self.send(node, EngineRequest::PresenceList { call, room })
            .await;
        match self.answer(node, call).await {
            EngineEvent::Presence { result, .. } => result.unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Lets `ms` pass (the memory engine's clock, or real time).
    async fn advance(&mut self, ms: u64) {
        match &mut self.engines {
            Engines::Memory {
                engine,
                now_us,
                queues,
            } => {
                *now_us += ms * 1000;
                engine.on_timeout(*now_us);
                while let Some((to, event)) = engine.poll_event() {
                    queues[to as usize].push_back(event);
                }
            }
            Engines::Redis { .. } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    /// Asserts that `node` gets no event for a while.
    async fn quiet(&mut self, node: usize) {
        let event = self.next_event(node, Duration::from_millis(300)).await;
        assert!(event.is_none(), "node {node} got {event:?}");
    }
}

fn entry(n: u128, user: Option<&str>) -> PresenceEntry {
    PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: user.map(str::to_owned),
    }
}

fn at(epoch: &Epoch, seq: u64) -> Option<Position> {
    Some(Position {
        epoch: epoch.clone(),
        seq,
    })
}

// ----- the contract ----------------------------------------------------------

async fn appends_are_numbered_gapless_from_one(mut h: Harness) {
    let first = h.append(0, "r", 10).await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.frame.as_str(), "{\"seq\":1,\"n\":10}");
    for n in 2..=4 {
        let next = h.append(n as usize % 2, "r", n).await;
        assert_eq!((next.seq, &next.epoch), (n, &first.epoch));
        assert_eq!(next.frame.as_str(), format!("{{\"seq\":{n},\"n\":{n}}}"));
    }
    // Another room has its own numbering.
    assert_eq!(h.append(0, "other", 1).await.seq, 1);
}

async fn followers_receive_every_append_in_order(mut h: Harness) {
    h.follow(1, "r").await;
    let mut answers = Vec::new();
    for n in 1..=5 {
        let series = (n == 3).then_some("progress:a");
        answers.push(h.try_append(0, "r", n, series).await.unwrap());
    }
    for answer in answers {
        let live = h.live(1).await;
        assert_eq!(live, answer, "live messages are the appends, in order");
    }
    h.quiet(1).await;
    // A node that does not follow the room hears nothing of it.
    h.quiet(0).await;
}

async fn reads_return_the_retained_frames_after_a_position(mut h: Harness) {
    let mut epoch = None;
    for n in 1..=5 {
        epoch = Some(h.append(0, "r", n).await.epoch);
    }
    let epoch = epoch.unwrap();
    let from = at(&epoch, 2);
    let result = h.read(1, "r", from.clone(), 100).await;
    assert_eq!((&result.epoch, result.top), (&epoch, 5));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(result.frames[0].1.as_str(), "{\"seq\":3,\"n\":3}");
    assert!(result.covers(from.as_ref().unwrap()));
    // Seq 2 left the history (3 kept): not covered.
    let from = at(&epoch, 1);
    assert!(!h
        .read(1, "r", from.clone(), 100)
        .await
        .covers(from.as_ref().unwrap()));
    // No position: only the top.
    let top = h.read(1, "r", None, 100).await;
    assert_eq!((top.top, top.frames.len()), (5, 0));
    // Another epoch: not covered; the retained frames of this epoch from
    // its start (here 3..5: seqs 1 and 2 left the history).
    let stale = at(&Epoch::from("gone-1"), 3);
    let result = h.read(1, "r", stale.clone(), 100).await;
    assert!(!result.covers(stale.as_ref().unwrap()));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(result.resume_after(), 2);
    // The limit.
    let result = h.read(1, "r", at(&epoch, 2), 2).await;
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3, 4]);
}

async fn a_read_creates_an_absent_room_with_a_stable_epoch(mut h: Harness) {
    // A followed room (a room nobody follows and without history may be
    // dropped at once by the in-memory engine; Redis keeps it a while).
    let first = h.follow(0, "fresh").await;
    assert_eq!(first.top, 0);
    let again = h.read(1, "fresh", None, 10).await;
    assert_eq!(again.epoch, first.epoch);
    let appended = h.append(1, "fresh", 1).await;
    assert_eq!((appended.epoch, appended.seq), (first.epoch, 1));
}

async fn history_ages_out_but_a_followed_room_keeps_its_epoch(mut h: Harness) {
    h.follow(1, "r").await;
    let first = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    h.advance(HISTORY_AGE_MS + 300).await;
    let result = h.read(0, "r", at(&first.epoch, 0), 10).await;
    assert_eq!((&result.epoch, result.top), (&first.epoch, 2));
    assert!(result.frames.is_empty(), "aged out: {:?}", result.frames);
    let third = h.append(0, "r", 3).await;
    assert_eq!((third.epoch, third.seq), (first.epoch, 3));
}

async fn interest_off_stops_the_live_stream(mut h: Harness) {
    h.follow(1, "r").await;
    h.append(0, "r", 1).await;
    assert_eq!(h.live(1).await.seq, 1);
    let room = RoomName::new("r").unwrap();
    h.send(1, EngineRequest::Interest { room, on: false }).await;
    // Let the unsubscribe reach the engine (Redis) before the next append.
    h.advance(200).await;
    h.append(0, "r", 2).await;
    h.quiet(1).await;
}

async fn presence_lists_every_node_in_connection_order(mut h: Harness) {
    let room = || RoomName::new("r").unwrap();
    h.send(
        0,
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(2, Some("alice")),
        },
    )
    .await;
    h.send(
        1,
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(1, None),
        },
    )
    .await;
    let both = vec![entry(1, None), entry(2, Some("alice"))];
    assert_eq!(h.presence(1, "r").await, both);
    assert_eq!(h.presence(0, "r").await, both);
    assert_eq!(h.presence(0, "elsewhere").await, vec![]);
    h.send(
        1,
        EngineRequest::PresenceRemove {
            room: room(),
            conn: ConnectionId::from_u128(1),
        },
    )
    .await;
    assert_eq!(h.presence(1, "r").await, vec![entry(2, Some("alice"))]);
}

async fn a_silent_node_loses_its_presence_within_the_ttl(mut h: Harness) {
    for (node, n) in [(0, 1), (1, 2)] {
        let request = EngineRequest::PresenceAdd {
            room: RoomName::new("r").unwrap(),
            entry: entry(n, Some("u")),
        };
        h.send(node, request).await;
    }
    assert_eq!(h.presence(0, "r").await.len(), 2);
    // Node 0 keeps refreshing; node 1 falls silent.
    for _ in 0..5 {
        h.advance(PRESENCE_TTL_MS / 3).await;
        h.send(0, EngineRequest::PresenceRefresh).await;
    }
    assert_eq!(h.presence(0, "r").await, vec![entry(1, Some("u"))]);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::memory(2)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = roomcast_tests::redis_server::RedisServer::start();
                    super::$name(super::Harness::redis(&server, 2).await).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    let cluster = roomcast_tests::redis_server::RedisCluster::start(3);
                    super::$name(super::Harness::redis_cluster(&cluster, 2).await).await;
                }
            )*
        }
    };
}

conformance!(
    appends_are_numbered_gapless_from_one,
    followers_receive_every_append_in_order,
    reads_return_the_retained_frames_after_a_position,
    a_read_creates_an_absent_room_with_a_stable_epoch,
    history_ages_out_but_a_followed_room_keeps_its_epoch,
    interest_off_stops_the_live_stream,
    presence_lists_every_node_in_connection_order,
    a_silent_node_loses_its_presence_within_the_ttl,
);

// ----- Redis faults ----------------------------------------------------------

#[tokio::test]
async fn redis_losing_its_data_starts_new_epochs() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 1).await;
    let before = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
    let after = h.append(0, "r", 3).await;
    assert_eq!(after.seq, 1);
    assert_ne!(after.epoch, before.epoch);
    let from = at(&before.epoch, 2);
    let result = h.read(0, "r", from.clone(), 10).await;
    assert!(!result.covers(from.as_ref().unwrap()));
    // A reader of the lost epoch can still be given the new one whole.
    assert_eq!((&result.epoch, result.top), (&after.epoch, 1));
    let seqs: Vec<u64> = result.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!((seqs, result.resume_after()), (vec![1], 0));
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_resubscribed_and_reported() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 2).await;
    h.follow(1, "r").await;
    h.append(0, "r", 1).await;
    assert_eq!(h.live(1).await.seq, 1);
    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "one pub/sub connection per node");
    // The core is told to read every room it follows...
    match h.next_event(1, WAIT).await {
        Some(EngineEvent::StreamReset) => {}
        other => panic!("expected a stream reset, got {other:?}"),
    }
    // ...and the live stream goes on.
    h.append(0, "r", 2).await;
    assert_eq!(h.live(1).await.seq, 2);
}

#[tokio::test]
async fn redis_down_fails_calls_and_they_work_again_when_it_is_back() {
    let mut server = RedisServer::start();
    let port = server.addr.port();
    let mut h = Harness::redis(&server, 1).await;
    assert_eq!(h.append(0, "r", 1).await.seq, 1);
    server.kill();
    let started = std::time::Instant::now();
    let failed = h.try_append(0, "r", 2, None).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the call timeout bounds it"
    );
    let _server = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match h.try_append(0, "r", 3, None).await {
            // Restarted empty: a new epoch.
            Ok(numbered) => {
                assert_eq!(numbered.seq, 1);
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but calls still fail: {error:?}"),
        }
    }
}

#[tokio::test]
async fn a_persistent_redis_killed_and_restarted_keeps_epochs_history_and_the_stream() {
    // Every write is in the append-only file before Redis answers it.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_string_lossy().into_owned();
    let persistent = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir.as_str(),
    ];
    let port = RedisServer::start().addr.port(); // a free port, released
    let mut server = RedisServer::start_with(port, &persistent);
    let mut h = Harness::redis(&server, 2).await;
    h.follow(1, "r").await;
    let first = h.append(0, "r", 1).await;
    h.append(0, "r", 2).await;
    assert_eq!(h.live(1).await.seq, 1);
    assert_eq!(h.live(1).await.seq, 2);
    server.kill(); // SIGKILL: no shutdown save
    let _server = RedisServer::start_with(port, &persistent);
    // The follower's pub/sub connection comes back and says so...
    let deadline = std::time::Instant::now() + WAIT * 3;
    loop {
        match h.next_event(1, WAIT).await {
            Some(EngineEvent::StreamReset) => break,
            Some(_) => {}
            None => assert!(std::time::Instant::now() < deadline, "no stream reset"),
        }
    }
    // ...and the room goes on in the same epoch, its history intact.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let third = loop {
        match h.try_append(0, "r", 3, None).await {
            Ok(numbered) => break numbered,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but calls still fail: {error:?}"),
        }
    };
    assert_eq!((&third.epoch, third.seq), (&first.epoch, 3));
    // (The first call on a connection Redis dropped may fail: the core
    // retries reads after `engine_retry_ms`; so does this test.)
    let from = at(&first.epoch, 0);
    let read = loop {
        match h.try_read(1, "r", from.clone(), 10).await {
            Ok(read) => break read,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("redis is back but reads still fail: {error:?}"),
        }
    };
    assert!(read.covers(from.as_ref().unwrap()), "{read:?}");
    assert_eq!(h.live(1).await.seq, 3);
}

#[tokio::test]
async fn not_ready_until_redis_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut link = spawn(redis_settings(&url, "lonely")).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(link.ready.check().is_err());
    // Calls fail (they do not hang) meanwhile.
    let call = CallId(1);
    let read = EngineRequest::Read {
        call,
        room: RoomName::new("r").unwrap(),
        after: None,
        limit: 1,
    };
    link.requests.send(read).await.unwrap();
    match tokio::time::timeout(WAIT, link.events.recv()).await {
        Ok(Some(EngineEvent::Read { result: Err(_), .. })) => {}
        other => panic!("{other:?}"),
    }
    let _server = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while link.ready.check().is_err() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stalled_pubsub_connection_is_found_by_its_probe() {
    let server = RedisServer::start();
    let mut h = Harness::redis(&server, 1).await;
    h.follow(0, "r").await;
    // Redis stops answering (every client) for longer than a probe
    // interval (5 s) plus the call timeout (1 s); nothing is closed.
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "8000", "ALL"]).trim(), "OK");
    match h.next_event(0, Duration::from_secs(20)).await {
        Some(EngineEvent::StreamReset) => {}
        other => panic!("expected a stream reset, got {other:?}"),
    }
    h.append(0, "r", 1).await;
    assert_eq!(h.live(0).await.seq, 1);
}

// ----- Redis presence changes (the in-memory engine sends none) -------------

/// The next `PresenceChanged` of `node`: (joined, left, connections).
async fn presence_change(h: &mut Harness, node: usize) -> (Vec<u128>, Vec<u128>, usize) {
    match h.next_event(node, WAIT).await {
        Some(EngineEvent::PresenceChanged {
            room,
            joined,
            left,
            connections,
        }) => {
            assert_eq!(room.as_str(), "r");
            let ids = |list: Vec<PresenceEntry>| list.iter().map(|e| e.conn.0.as_u128()).collect();
            (ids(joined), ids(left), connections)
        }
        other => panic!("expected a presence change on node {node}, got {other:?}"),
    }
}

#[tokio::test]
async fn redis_presence_changes_reach_followers_net_and_once() {
    let server = RedisServer::start();
    // Long enough that no entry expires before the test lets it.
    const TTL_MS: u64 = 3_000;
    let mut h = Harness::redis_with_ttl(&server, 2, TTL_MS).await;
    h.follow(0, "r").await;
    let room = || RoomName::new("r").unwrap();
    // Node 1's add, add, remove: however they are batched and merged, the
    // changes node 0 hears add up to connection 2 present, count 1.
    for request in [
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(1, Some("a")),
        },
        EngineRequest::PresenceAdd {
            room: room(),
            entry: entry(2, None),
        },
        EngineRequest::PresenceRemove {
            room: room(),
            conn: ConnectionId::from_u128(1),
        },
    ] {
        h.send(1, request).await;
    }
    let mut present = std::collections::BTreeSet::new();
    loop {
        let (joined, left, connections) = presence_change(&mut h, 0).await;
        for conn in left {
            assert!(present.remove(&conn), "{conn} left without joining");
        }
        present.extend(joined);
        assert_eq!(connections, present.len());
        if present == std::collections::BTreeSet::from([2]) {
            break;
        }
    }
    // Node 0 hears its own changes too.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(3, Some("c")),
    };
    h.send(0, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![3], vec![], 2));
    let remove = EngineRequest::PresenceRemove {
        room: room(),
        conn: ConnectionId::from_u128(3),
    };
    h.send(0, remove).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![3], 1));
    // A refresh of entries still there changes nothing.
    h.send(1, EngineRequest::PresenceRefresh).await;
    h.quiet(0).await;
    // A clear is one change for all of the node's entries of the room.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(4, Some("d")),
    };
    h.send(1, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![4], vec![], 2));
    h.send(1, EngineRequest::PresenceClear).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![2, 4], 0));
    h.quiet(0).await;
    // A silent node's entry expires; the next write or list of the room
    // sweeps it and tells it, once.
    let add = EngineRequest::PresenceAdd {
        room: room(),
        entry: entry(5, None),
    };
    h.send(1, add).await;
    assert_eq!(presence_change(&mut h, 0).await, (vec![5], vec![], 1));
    h.advance(TTL_MS + 200).await;
    assert_eq!(h.presence(0, "r").await, vec![]);
    assert_eq!(presence_change(&mut h, 0).await, (vec![], vec![5], 0));
    assert_eq!(h.presence(1, "r").await, vec![]);
    h.quiet(0).await;
}
