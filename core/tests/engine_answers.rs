//! What the core answers around an engine that answers later: a receipt's
//! `delivered` counts the members the engine seam reports on the node's
//! other shards, and a message refused as `SERVER_BUSY` is answered in its
//! place among the replies (behind those still waiting for the engine).
//! The core is driven directly; its engine requests are answered by an
//! in-memory engine, or held back and answered by hand.

use roomcast_core::engine::EngineEvent;
use roomcast_core::{ConnectionId, CoreConfig, Input, Publish, RoomName};
use serde_json::{json, Value};

mod support;

use support::Harness;

fn room() -> RoomName {
    RoomName::new("r").unwrap()
}

/// What only these tests need of the harness.
impl Harness {
    fn new() -> Harness {
        Harness::with_config(CoreConfig::default())
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
    let Ok(ticket) = h.core.broadcast(h.now(), publish) else {
        panic!("a broadcast waits for its append")
    };
    h.answer_with_peers(3);
    match h.core.poll_answer() {
        Some((t, Ok(receipt))) => {
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
