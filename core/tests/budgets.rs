//! The in-memory engine's engine-wide budgets, driven to their bounds:
//! `history_bytes_max` (the oldest history of any room goes first, and a
//! trimmed history only ever means `recovered: false`) and `rooms_max` (a
//! room kept only for history makes way; when every room is in use, the
//! join or publish that would create one more is refused with
//! `ENGINE_UNAVAILABLE`, never a crash).

use roomcast_core::validate::PublishError;
use roomcast_core::{
    BroadcastOutcome, ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, Publish,
    RoomName, Standalone, TextFrame,
};
use serde_json::{json, Value};

struct Node {
    core: Standalone,
    now_us: u64,
}

impl Node {
    fn new(history_bytes_max: usize, rooms_max: usize) -> Node {
        let limits = Limits {
            history_bytes_max,
            rooms_max,
            history_age_ms: 3_600_000,
            ..Limits::default()
        };
        Node {
            core: Standalone::new(CoreConfig {
                limits,
                ..CoreConfig::default()
            }),
            now_us: 0,
        }
    }

    fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, self.now_us)
    }

    /// Everything sent since the last call; the invariants hold.
    fn drain(&mut self) -> Vec<(ConnectionId, TextFrame)> {
        let mut sent = Vec::new();
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, frame } => sent.push((conn, frame)),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.core.check_invariants().unwrap();
        sent
    }

    fn open(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        let identity = Identity::Anonymous;
        self.core.handle(self.now(), Input::Open { conn, identity });
        self.drain();
        conn
    }

    fn send(&mut self, conn: ConnectionId, text: &str) -> Vec<Value> {
        self.core.handle(self.now(), Input::Text { conn, text });
        self.drain()
            .into_iter()
            .map(|(_, frame)| serde_json::from_str(frame.as_str()).unwrap())
            .collect()
    }

    fn join(&mut self, conn: ConnectionId, room: &str) -> Vec<Value> {
        self.send(
            conn,
            &format!(r#"{{"action":"join","data":{{"room":"{room}"}}}}"#),
        )
    }

    fn join_since(&mut self, conn: ConnectionId, room: &str, epoch: &str, seq: u64) -> Vec<Value> {
        self.send(
            conn,
            &format!(
                r#"{{"action":"join","data":{{"room":"{room}","since":{{"epoch":"{epoch}","seq":{seq}}}}}}}"#
            ),
        )
    }

    /// Publishes one small message a second after the previous one.
    fn publish(&mut self, room: &str) -> BroadcastOutcome {
        self.now_us += 1_000_000;
        let publish = Publish {
            rooms: vec![RoomName::new(room).unwrap()],
            kind: "queue_status".into(),
            data: json!({"n": 1}).as_object().unwrap().clone(),
        };
        let response = self.core.broadcast(self.now(), publish);
        self.drain();
        response
    }

    fn epoch_of(response: &BroadcastOutcome) -> String {
        let BroadcastOutcome::Answered(Ok(receipt)) = response else {
            panic!("not published: {response:?}")
        };
        receipt.rooms[0].epoch.clone()
    }

    fn history_bytes(&self) -> usize {
        self.core.engine().history_bytes()
    }
}

/// At `history_bytes_max` everything is kept; one frame more evicts the
/// oldest entry of any room (here a whole room, which nobody followed).
/// Recovery stays honest: the trimmed room answers `recovered: false`,
/// the others recover byte for byte.
#[test]
fn the_history_byte_budget_evicts_the_oldest_entries_across_rooms() {
    // Every frame of this test has the same length: measure it.
    let mut probe = Node::new(usize::MAX, usize::MAX);
    probe.publish("a");
    let frame = probe.history_bytes();
    assert!(frame > 50, "{frame}");

    let mut node = Node::new(3 * frame, usize::MAX);
    let epoch_a = Node::epoch_of(&node.publish("a"));
    let epoch_b = Node::epoch_of(&node.publish("b"));
    let epoch_c = Node::epoch_of(&node.publish("c"));
    assert_eq!(node.history_bytes(), 3 * frame, "at the bound, all kept");
    assert_eq!(node.core.room_count(), 3);
    node.publish("b");
    assert_eq!(node.history_bytes(), 3 * frame, "one more: the oldest went");
    assert_eq!(
        node.core.room_count(),
        2,
        "room a had nothing else: dropped"
    );

    let m = node.open(1);
    let out = node.join_since(m, "a", &epoch_a, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["data"]["recovered"], false, "{out:?}");
    assert_ne!(out[0]["data"]["epoch"], epoch_a.as_str(), "a new lifetime");
    let out = node.join_since(m, "b", &epoch_b, 0);
    assert_eq!(out[0]["data"]["recovered"], true, "{out:?}");
    assert_eq!(out.len(), 3, "the reply and both of b's messages");
    let out = node.join_since(m, "c", &epoch_c, 0);
    assert_eq!(out[0]["data"]["recovered"], true, "{out:?}");
    assert_eq!(out.len(), 2);

    // A followed room loses its oldest entries too, but lives on: an old
    // cursor is answered `recovered: false`, a recent one recovers.
    node.publish("c");
    node.publish("c");
    assert_eq!(node.history_bytes(), 3 * frame);
    let n = node.open(2);
    let out = node.join_since(n, "b", &epoch_b, 0);
    assert_eq!(out[0]["data"]["recovered"], false, "b was trimmed: {out:?}");
    assert_eq!(out.len(), 1, "and nothing is replayed");
    let out = node.join_since(n, "c", &epoch_c, 1);
    assert_eq!(out[0]["data"]["recovered"], true, "{out:?}");
    assert_eq!(out.len(), 3);
}

/// At `rooms_max` the rooms in use keep working; a join or a publish that
/// would create one more is refused with a clear answer, and works again
/// once a room is free. A room kept only for its history makes way.
#[test]
fn rooms_max_refuses_a_new_room_when_every_room_is_in_use() {
    let mut node = Node::new(usize::MAX, 2);
    let (x, y, z) = (node.open(1), node.open(2), node.open(3));
    assert_eq!(node.join(x, "r1")[0]["type"], "system_info");
    assert_eq!(node.join(y, "r2")[0]["type"], "system_info");
    assert_eq!(node.core.room_count(), 2, "at the bound");

    let out = node.join(z, "r3");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "error");
    assert_eq!(out[0]["data"]["code"], "ENGINE_UNAVAILABLE");
    let message = out[0]["data"]["message"].as_str().unwrap();
    assert!(message.contains("rooms_max"), "{message}");
    assert_eq!(node.core.member_count(&RoomName::new("r3").unwrap()), 0);
    let BroadcastOutcome::Answered(Err(PublishError::EngineUnavailable { message, appended })) =
        node.publish("r3")
    else {
        panic!("a publish creating a room is refused")
    };
    assert!(message.contains("rooms_max"), "{message}");
    assert!(appended.is_empty());
    assert!(matches!(
        node.publish("r1"),
        BroadcastOutcome::Answered(Ok(_))
    ));
    assert_eq!(node.core.room_count(), 2);

    // y leaves r2, which keeps its history: kept, but only for history.
    assert!(matches!(
        node.publish("r2"),
        BroadcastOutcome::Answered(Ok(_))
    ));
    node.send(y, r#"{"action":"leave","data":{"room":"r2"}}"#);
    assert_eq!(node.core.room_count(), 2);
    // So r3 can be created: r2 makes way (its history is gone).
    assert_eq!(node.join(z, "r3")[0]["type"], "system_info");
    assert_eq!(node.core.room_count(), 2);
    // Both rooms are followed again: r2 cannot come back.
    let out = node.join(y, "r2");
    assert_eq!(out[0]["data"]["code"], "ENGINE_UNAVAILABLE");
    // x leaves r1 (it has history): it makes way for r2 at once.
    node.send(x, r#"{"action":"leave","data":{"room":"r1"}}"#);
    let out = node.join(y, "r2");
    assert_eq!(out[0]["type"], "system_info", "{out:?}");
    assert_eq!(out[0]["data"]["seq"], 0, "r2 starts a new lifetime");
}
