//! The engine seam: what the core keeps whatever the engine does. The
//! core is driven directly; its engine requests are answered by hand (from
//! an in-memory engine, or planted), late, out of order, lost or failed.
//!
//! One test binary: the helpers here, one file per topic (`joins`, `gaps`,
//! `publishes`, `presence_and_rollback`).

use roomcast_core::engine::memory::MemoryEngine;
use roomcast_core::engine::{
    CallId, EngineError, EngineEvent, EngineRequest, Numbered, ReadResult,
};
use roomcast_core::oracle::Sent;
use roomcast_core::validate::PublishError;
use roomcast_core::{
    CloseCode, ConnectionId, CoreConfig, Input, Limits, Output, Publish, RoomName, Ticket,
};
use serde_json::{json, Value};

#[path = "../support/mod.rs"]
mod support;

use support::Harness;

mod gaps;
mod joins;
mod presence_and_rollback;
mod publishes;

fn room() -> RoomName {
    RoomName::new("r").unwrap()
}

/// What only these tests need of the harness.
impl Harness {
    fn new(limits: Limits) -> Harness {
        Harness::checked(CoreConfig {
            limits,
            ..CoreConfig::default()
        })
    }

    /// A harness whose connection 1 is a member of room r, settled.
    fn with_member(limits: Limits) -> (Harness, ConnectionId) {
        let mut h = Harness::new(limits);
        let a = h.open(1);
        h.join(a);
        h.settle();
        h.frames();
        (h, a)
    }

    /// Appends message `n` to room r as another node would (this node's
    /// core is not told); returns the engine's events.
    fn append_elsewhere(&mut self, n: u64) -> Vec<EngineEvent> {
        let message = roomcast_core::engine::Unnumbered {
            head: r#"{"type":"queue_status","room":"r","seq":"#.into(),
            tail: format!(r#","data":{{"n":{n}}}}}"#),
            series: None,
        };
        self.engine_events(vec![EngineRequest::Append {
            call: CallId(1_000 + n),
            room: room(),
            message,
            known: None,
        }])
    }

    fn join(&mut self, conn: ConnectionId) -> u64 {
        let join = json!({"action": "join", "data": {"room": "r"}});
        self.request(conn, join, Sent::Join("r".into()))
    }

    fn join_since(&mut self, conn: ConnectionId, epoch: &str, seq: u64) -> u64 {
        let join =
            json!({"action": "join", "data": {"room": "r", "since": {"epoch": epoch, "seq": seq}}});
        self.request(conn, join, Sent::Recover("r".into(), epoch.into(), seq))
    }

    /// A broadcast of `n` to room r, returning the core's response.
    fn broadcast(&mut self, n: u64) -> Result<Ticket, PublishError> {
        let Value::Object(data) = json!({"n": n}) else {
            unreachable!()
        };
        let publish = Publish {
            rooms: vec![room()],
            kind: "queue_status".into(),
            data,
        };
        self.core.broadcast(self.now(), publish)
    }
}

/// The `seq`s of broadcast frames, in order.
fn seqs(frames: &[(ConnectionId, Value)], to: ConnectionId) -> Vec<u64> {
    frames
        .iter()
        .filter(|(c, f)| *c == to && f.get("seq").is_some())
        .map(|(_, f)| f["seq"].as_u64().unwrap())
        .collect()
}

fn reply(frames: &[(ConnectionId, Value)], to: ConnectionId, id: u64) -> Value {
    frames
        .iter()
        .find(|(c, f)| *c == to && f["id"] == json!(id))
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no reply {id} in {frames:#?}"))
}

/// A numbered message as another node's publish would reach this one.
fn live(epoch: &str, seq: u64) -> EngineEvent {
    EngineEvent::Live(Numbered {
        room: room(),
        epoch: epoch.into(),
        seq,
        frame: format!(r#"{{"type":"queue_status","room":"r","seq":{seq},"data":{{}}}}"#).into(),
        series: None,
    })
}

fn read_call(requests: &[EngineRequest]) -> CallId {
    let calls: Vec<CallId> = requests
        .iter()
        .filter_map(|r| match r {
            EngineRequest::Read { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "exactly one read: {requests:?}");
    calls[0]
}
