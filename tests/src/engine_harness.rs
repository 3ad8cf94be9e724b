//! The engine-contract harness: nodes sharing one engine, driven the way
//! a core drives it (requests in, events out), for the in-memory engine
//! (directly, with a fake clock) and the Redis engine (its real tasks,
//! against a `redis-server` or a Redis Cluster the test starts). Used by
//! `tests/engine_conformance.rs` (one suite, every engine) and
//! `tests/redis_faults.rs` (what only Redis can do to a node).

use std::collections::VecDeque;
use std::time::Duration;

use crate::redis_server::{RedisCluster, RedisServer};
use roomcast_core::engine::memory::HistoryBounds;
use roomcast_core::engine::memory::MemoryEngine;
use roomcast_core::engine::{
    CallId, EngineError, EngineEvent, EngineRequest, Epoch, Numbered, Position, PresenceEntry,
    ReadResult, Unnumbered,
};
use roomcast_core::{ConnectionId, RoomName, RoomOptions};
use roomcast_net::engine::redis::{spawn, RedisSettings};
use roomcast_net::engine::EngineLink;

pub const HISTORY_MAX: usize = 3;
pub const HISTORY_AGE_MS: u64 = 1_500;
pub const PRESENCE_TTL_MS: u64 = 600;
/// Longest wait for an answer or a live message.
pub const WAIT: Duration = Duration::from_secs(5);

pub enum Engines {
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
pub struct Harness {
    engines: Engines,
    /// Events that arrived while a test waited for something else.
    held: Vec<VecDeque<EngineEvent>>,
    next_call: u64,
}

pub fn redis_settings(url: &str, node: &str) -> RedisSettings {
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
        sentinel_master: None,
        sentinel_password: None,
        probe_interval: Duration::from_millis(2_000),
        probe_timeout: Duration::from_millis(3_000),
    }
}

impl Harness {
    pub fn memory(nodes: usize) -> Harness {
        let bounds = HistoryBounds {
            messages_max: HISTORY_MAX,
            age_max_us: HISTORY_AGE_MS * 1000,
            bytes_max: usize::MAX,
            rooms_max: usize::MAX,
        };
        Harness {
            engines: Engines::Memory {
                // Every room's presence changes are told, as the Redis
                // settings below publish them.
                engine: Box::new(
                    MemoryEngine::new(bounds, "mem".into(), PRESENCE_TTL_MS * 1000)
                        .with_presence_changes(RoomOptions {
                            presence_diff_prefixes: vec![String::new()],
                            ..RoomOptions::default()
                        }),
                ),
                now_us: 1_000_000,
                queues: vec![VecDeque::new(); nodes],
            },
            held: vec![VecDeque::new(); nodes],
            next_call: 0,
        }
    }

    pub async fn redis(server: &RedisServer, nodes: usize) -> Harness {
        Harness::redis_at(&server.url(), false, nodes, PRESENCE_TTL_MS).await
    }

    pub async fn redis_with_ttl(server: &RedisServer, nodes: usize, ttl_ms: u64) -> Harness {
        Harness::redis_at(&server.url(), false, nodes, ttl_ms).await
    }

    pub async fn redis_cluster(cluster: &RedisCluster, nodes: usize) -> Harness {
        Harness::redis_at(&cluster.url(), true, nodes, PRESENCE_TTL_MS).await
    }

    pub async fn redis_at(url: &str, cluster: bool, nodes: usize, ttl_ms: u64) -> Harness {
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

    pub async fn send(&mut self, node: usize, request: EngineRequest) {
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
    pub async fn next_event(&mut self, node: usize, wait: Duration) -> Option<EngineEvent> {
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
    pub async fn answer(&mut self, node: usize, call: CallId) -> EngineEvent {
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

    pub fn call(&mut self) -> CallId {
        self.next_call += 1;
        CallId(self.next_call)
    }

    pub async fn try_append(
        &mut self,
        node: usize,
        room: &str,
        n: u64,
        series: Option<&str>,
    ) -> Result<Numbered, EngineError> {
        self.append_knowing(node, room, n, series, None).await
    }

    /// An append by a node that has streamed the room up to `known` (the
    /// rollback check).
    pub async fn append_knowing(
        &mut self,
        node: usize,
        room: &str,
        n: u64,
        series: Option<&str>,
        known: Option<Position>,
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
                known,
            },
        )
        .await;
        match self.answer(node, call).await {
            EngineEvent::Appended { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }

    pub async fn append(&mut self, node: usize, room: &str, n: u64) -> Numbered {
        self.try_append(node, room, n, None).await.unwrap()
    }

    pub async fn read(
        &mut self,
        node: usize,
        room: &str,
        after: Option<Position>,
        limit: usize,
    ) -> ReadResult {
        self.try_read(node, room, after, limit).await.unwrap()
    }

    pub async fn try_read(
        &mut self,
        node: usize,
        room: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ReadResult, EngineError> {
        self.read_knowing(node, room, after, limit, None).await
    }

    /// A read by a node that has streamed the room up to `known` (the
    /// rollback check).
    pub async fn read_knowing(
        &mut self,
        node: usize,
        room: &str,
        after: Option<Position>,
        limit: usize,
        known: Option<Position>,
    ) -> Result<ReadResult, EngineError> {
        let call = self.call();
        let room = RoomName::new(room).unwrap();
        let request = EngineRequest::Read {
            call,
            room,
            after,
            limit,
            known,
        };
        self.send(node, request).await;
        match self.answer(node, call).await {
            EngineEvent::Read { result, .. } => result,
            other => panic!("{other:?}"),
        }
    }

    /// Interest on, then a read: the read answers once the node follows.
    pub async fn follow(&mut self, node: usize, room: &str) -> ReadResult {
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

    pub async fn live(&mut self, node: usize) -> Numbered {
        match self.next_event(node, WAIT).await {
            Some(EngineEvent::Live(numbered)) => numbered,
            other => panic!("expected a live message on node {node}, got {other:?}"),
        }
    }

    pub async fn presence(&mut self, node: usize, room: &str) -> Vec<PresenceEntry> {
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
    pub async fn advance(&mut self, ms: u64) {
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
    pub async fn quiet(&mut self, node: usize) {
        let event = self.next_event(node, Duration::from_millis(300)).await;
        assert!(event.is_none(), "node {node} got {event:?}");
    }
}

pub fn entry(n: u128, user: Option<&str>) -> PresenceEntry {
    PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: user.map(str::to_owned),
    }
}

pub fn at(epoch: &Epoch, seq: u64) -> Option<Position> {
    Some(Position {
        epoch: epoch.clone(),
        seq,
    })
}
