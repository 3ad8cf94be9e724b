//! What the core answers around an engine that answers later: a receipt's
//! `delivered` counts the members the engine seam reports on the node's
//! other shards, and a message refused as `SERVER_BUSY` is answered in its
//! place among the replies (behind those still waiting for the engine).
//! The core is driven directly; its engine requests are answered by an
//! in-memory engine, or held back and answered by hand.

use roomcast_core::engine::memory::HistoryBounds;
use roomcast_core::engine::memory::MemoryEngine;
use roomcast_core::engine::{EngineEvent, EngineRequest};
use roomcast_core::{
    ConnectionId, Core, CoreConfig, Identity, Input, Now, Output, Publish, Response, RoomName, User,
};
use serde_json::{json, Value};

const BOUNDS: HistoryBounds = HistoryBounds {
    messages_max: 100,
    age_max_us: 3_600_000_000,
    bytes_max: usize::MAX,
    rooms_max: usize::MAX,
};

struct Harness {
    core: Core,
    engine: MemoryEngine,
}

fn room() -> RoomName {
    RoomName::new("r").unwrap()
}

impl Harness {
    fn new() -> Harness {
        Harness {
            core: Core::new(CoreConfig::default()),
            engine: MemoryEngine::new(BOUNDS, "e".into(), 60_000_000),
        }
    }

    fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, 0)
    }

    /// Opens connection `n` (user `u<n>`, may publish).
    fn open(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        let identity = Identity::User(User {
            id: format!("u{n}"),
            scopes: vec!["publish".into()],
            expires_unix_ms: None,
            grants: roomcast_core::Grants::none(),
        });
        self.core.handle(self.now(), Input::Open { conn, identity });
        self.frames(); // `connected`
        conn
    }

    fn text(&mut self, conn: ConnectionId, action: Value) {
        let text = action.to_string();
        self.core
            .handle(self.now(), Input::Text { conn, text: &text });
    }

    /// The core's engine requests so far.
    fn requests(&mut self) -> Vec<EngineRequest> {
        std::iter::from_fn(|| self.core.poll_engine()).collect()
    }

    /// Hands requests to the in-memory engine and returns its events.
    fn engine_events(&mut self, requests: Vec<EngineRequest>) -> Vec<EngineEvent> {
        for request in requests {
            self.engine.handle(0, 0, request);
        }
        std::iter::from_fn(|| self.engine.poll_event())
            .map(|(_, event)| event)
            .collect()
    }

    fn feed(&mut self, event: EngineEvent) {
        self.core.handle(self.now(), Input::Engine(event));
    }

    /// Runs requests through the engine and its events back, until quiet.
    fn settle(&mut self) {
        loop {
            let requests = self.requests();
            let events = self.engine_events(requests);
            if events.is_empty() {
                return;
            }
            for event in events {
                self.feed(event);
            }
        }
    }

    /// Every frame sent since the last call, in order.
    fn frames(&mut self) -> Vec<(ConnectionId, Value)> {
        let mut frames = Vec::new();
        while let Some(output) = self.core.poll_output() {
            let Output::Send { conn, frame } = output else {
                panic!("unexpected output {output:?}")
            };
            self.core.handle(
                self.now(),
                Input::Written {
                    conn,
                    bytes: frame.len(),
                },
            );
            frames.push((conn, serde_json::from_str(frame.as_str()).unwrap()));
        }
        self.core.check_invariants().unwrap();
        frames
    }

    /// A member of room r, settled.
    fn member(&mut self, n: u128) -> ConnectionId {
        let conn = self.open(n);
        self.text(conn, json!({"action": "join", "data": {"room": "r"}}));
        self.settle();
        self.frames();
        conn
    }

    /// The engine's answers to the core's requests so far, with every
    /// append's answer reporting `peer_members` on the other shards.
    fn answer_with_peers(&mut self, peer_members: u64) {
        let requests = self.requests();
        for event in self.engine_events(requests) {
            let event = match event {
                EngineEvent::Appended { call, result, .. } => EngineEvent::Appended {
                    call,
                    result,
                    peer_members,
                },
                other => other,
            };
            self.feed(event);
        }
    }
}

#[test]
fn a_receipt_counts_the_members_on_the_other_shards() {
    let mut h = Harness::new();
    let a = h.member(1);
    h.member(2);
    // The API broadcast's receipt.
    let Value::Object(data) = json!({"n": 1}) else {
        unreachable!()
    };
    let publish = Publish {
        rooms: vec![room()],
        kind: "queue_status".into(),
        data,
    };
    let Response::Pending(ticket) = h.core.handle(h.now(), Input::Broadcast(publish)) else {
        panic!("a broadcast waits for its append")
    };
    h.answer_with_peers(3);
    match h.core.poll_answer() {
        Some((t, Response::Published(receipt))) => {
            assert_eq!(t, ticket);
            assert_eq!(receipt.delivered, 2 + 3, "two here, three on other shards");
        }
        other => panic!("{other:?}"),
    }
    h.frames();
    // The client publish's reply.
    let publish = json!({"action": "publish", "id": "p",
        "data": {"room": "r", "type": "queue_status", "data": {}}});
    h.text(a, publish);
    h.answer_with_peers(5);
    let frames = h.frames();
    let reply = frames
        .iter()
        .find(|(c, f)| *c == a && f["id"] == "p")
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no publish reply in {frames:#?}"));
    assert_eq!(reply["type"], "system_info", "{reply}");
    assert_eq!(reply["data"]["delivered"], 2 + 5, "{reply}");
    // An engine of one core reports none: only this core's members.
    h.text(
        a,
        json!({"action": "publish", "id": "q",
        "data": {"room": "r", "type": "queue_status", "data": {}}}),
    );
    h.settle();
    let frames = h.frames();
    let reply = frames.iter().find(|(_, f)| f["id"] == "q").unwrap();
    assert_eq!(reply.1["data"]["delivered"], 2);
}

#[test]
fn a_busy_answer_waits_behind_a_join_that_waits_for_the_engine() {
    let mut h = Harness::new();
    let a = h.open(1);
    h.text(
        a,
        json!({"action": "join", "id": "j", "data": {"room": "r"}}),
    );
    // The join waits for the room's read; the next message was refused by
    // the shell (inbound budget full) and must be answered after it.
    let busy = Some(roomcast_core::parse::RequestId::Text("b".into()));
    h.core.handle(h.now(), Input::Busy { conn: a, id: busy });
    h.text(a, json!({"action": "ping", "id": "p"}));
    assert!(h.frames().is_empty(), "nothing before the engine answers");
    h.settle();
    let frames = h.frames();
    let ids: Vec<Value> = frames.iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(ids, vec![json!("j"), json!("b"), json!("p")], "{frames:#?}");
    assert_eq!(frames[0].1["type"], "system_info", "{frames:#?}");
    assert_eq!(frames[1].1["type"], "error");
    assert_eq!(frames[1].1["data"]["code"], "SERVER_BUSY");
    // With nothing waiting, it is answered at once.
    h.core.handle(h.now(), Input::Busy { conn: a, id: None });
    let frames = h.frames();
    assert_eq!(frames.len(), 1, "{frames:#?}");
    assert_eq!(frames[0].1["data"]["code"], "SERVER_BUSY");
}
