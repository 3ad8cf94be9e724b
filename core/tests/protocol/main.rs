//! One test per row of `PROTOCOL.md` sections 2-5 that the core owns, driven
//! through the public API only: `Core::new`, `handle`, `poll_output`,
//! `poll_timeout` and `check_invariants` (checked after every step).
//!
//! One test binary: the harness here, one file per protocol topic
//! (`connected`, `joins`, `ids`, `errors`, `access_rules`, `broadcasts`,
//! `slow_consumers`, `timers`, `closing`).

use roomcast_core::access::AccessRule;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    AccessRules, BroadcastOutcome, CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits,
    Now, Output, Publish, PublishError, PublishReceipt, RoomAccess, RoomName, SendTarget,
    Standalone, User,
};
use serde_json::{json, Map, Value};

mod access_rules;
mod broadcasts;
mod closing;
mod connected;
mod errors;
mod ids;
mod joins;
mod slow_consumers;
mod timers;

/// 2025-10-17T10:30:00.000Z, the instant of the protocol's examples.
const START_MS: i64 = 1_760_697_000_000;
const SECOND_US: u64 = 1_000_000;

// ----- harness ---------------------------------------------------------------

/// One output, with `Send` frames decoded as JSON (and their byte length kept
/// for slow-consumer accounting).
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Send(ConnectionId, Value, usize),
    Ping(ConnectionId),
    Close(ConnectionId, CloseCode),
    /// A `refresh` token handed to the shell for verification.
    Verify(ConnectionId, String),
}

impl Out {
    fn conn(&self) -> ConnectionId {
        match self {
            Out::Send(c, ..) | Out::Ping(c) | Out::Close(c, _) | Out::Verify(c, _) => *c,
        }
    }

    /// The decoded message of a `Send`, panicking otherwise.
    fn msg(&self) -> &Value {
        match self {
            Out::Send(_, v, _) => v,
            other => panic!("expected a Send, got {other:?}"),
        }
    }
}

fn decode(output: Output) -> Out {
    match output {
        Output::Send { conn, frame } => {
            let value: Value = serde_json::from_str(frame.as_str())
                .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {frame:?}"));
            Out::Send(conn, value, frame.len())
        }
        Output::Ping { conn } => Out::Ping(conn),
        Output::Close { conn, code } => Out::Close(conn, code),
        Output::Check {
            conn,
            check: roomcast_core::Check::Token { token },
        } => Out::Verify(conn, token),
        Output::Check { conn, check } => panic!("unexpected check for {conn}: {check:?}"),
    }
}

fn c(n: u128) -> ConnectionId {
    ConnectionId::from_u128(n)
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).unwrap_or_else(|| panic!("bad room name {name:?}"))
}

fn anon() -> Identity {
    Identity::Anonymous
}

fn user(id: &str, scopes: &[&str]) -> Identity {
    Identity::User(User {
        id: id.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_unix_ms: None,
        grants: roomcast_core::Grants::none(),
    })
}

fn user_expiring(id: &str, expires_unix_ms: i64) -> Identity {
    Identity::User(User {
        id: id.to_owned(),
        scopes: Vec::new(),
        expires_unix_ms: Some(expires_unix_ms),
        grants: roomcast_core::Grants::none(),
    })
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn publish(rooms: &[&str], kind: &str, data: Value) -> Publish {
    Publish {
        rooms: rooms.iter().map(|r| room(r)).collect(),
        kind: kind.to_owned(),
        data: obj(data),
    }
}

fn direct(target: SendTarget, kind: &str, data: Value) -> DirectMessage {
    DirectMessage {
        target,
        kind: kind.to_owned(),
        data: obj(data),
        to_other_nodes: true,
    }
}

/// Whether `s` has the exact shape `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_timestamp(s: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == shape.len()
        && s.bytes().zip(shape.bytes()).all(|(b, p)| match p {
            b'd' => b.is_ascii_digit(),
            _ => b == p,
        })
}

struct Harness {
    core: Standalone,
    elapsed_us: u64,
}

impl Harness {
    fn new(config: CoreConfig) -> Harness {
        let h = Harness {
            core: Standalone::new(config),
            elapsed_us: 0,
        };
        h.check();
        h
    }

    fn with_limits(limits: Limits) -> Harness {
        Harness::new(CoreConfig {
            limits,
            ..CoreConfig::default()
        })
    }

    fn now(&self) -> Now {
        Now::from_start(START_MS, self.elapsed_us)
    }

    fn check(&self) {
        if let Err(broken) = self.core.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }

    /// Drains every pending output, checking each `Send` is a well-formed envelope.
    fn drain(&mut self) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(output) = self.core.poll_output() {
            let out = decode(output);
            if let Out::Send(_, v, _) = &out {
                assert!(v["type"].is_string(), "no type: {v}");
                let ts = v["timestamp"].as_str().unwrap_or_default();
                assert!(is_timestamp(ts), "bad timestamp {ts:?} in {v}");
                assert!(v["data"].is_object(), "no data object: {v}");
            }
            outs.push(out);
        }
        self.check();
        outs
    }

    /// Handles one input and drains what it produced.
    fn run(&mut self, input: Input<'_>) -> Vec<Out> {
        self.core.handle(self.now(), input);
        self.check();
        self.drain()
    }

    /// `POST /api/send`: how many connections got it, and what it produced.
    fn send(&mut self, message: DirectMessage) -> (Result<u64, PublishError>, Vec<Out>) {
        let delivered = self.core.send_direct(self.now(), message);
        self.check();
        (delivered, self.drain())
    }

    /// Opens `conn` and returns its `connected` message.
    fn open(&mut self, conn: ConnectionId, identity: Identity) -> Value {
        let outs = self.run(Input::Open { conn, identity });
        assert_eq!(outs.len(), 1, "{outs:?}");
        assert_eq!(outs[0].conn(), conn);
        outs[0].msg().clone()
    }

    fn text(&mut self, conn: ConnectionId, text: &str) -> Vec<Out> {
        self.run(Input::Text { conn, text })
    }

    /// Sends `text` and expects exactly one reply to the sender.
    fn reply(&mut self, conn: ConnectionId, text: &str) -> Value {
        let outs = self.text(conn, text);
        assert_eq!(outs.len(), 1, "{text}: {outs:?}");
        assert_eq!(outs[0].conn(), conn, "{text}: {outs:?}");
        outs[0].msg().clone()
    }

    fn join(&mut self, conn: ConnectionId, name: &str) -> Value {
        let reply = self.reply(
            conn,
            &format!(r#"{{"action":"join","data":{{"room":"{name}"}}}}"#),
        );
        assert_eq!(reply["type"], "system_info", "{reply}");
        reply
    }

    fn leave(&mut self, conn: ConnectionId, name: &str) -> Value {
        self.reply(
            conn,
            &format!(r#"{{"action":"leave","data":{{"room":"{name}"}}}}"#),
        )
    }

    fn broadcast(&mut self, rooms: &[&str], kind: &str, data: Value) -> (PublishReceipt, Vec<Out>) {
        let outcome = self.core.broadcast(self.now(), publish(rooms, kind, data));
        self.check();
        match outcome {
            BroadcastOutcome::Answered(Ok(receipt)) => (receipt, self.drain()),
            other => panic!("not a receipt: {other:?}"),
        }
    }

    fn advance_to(&mut self, elapsed_us: u64) {
        assert!(elapsed_us >= self.elapsed_us);
        self.elapsed_us = elapsed_us;
    }

    /// Advances to each deadline `poll_timeout` reports up to `until_us`,
    /// firing it, and returns (time, output) for everything that happened.
    fn run_timers_until(&mut self, until_us: u64) -> Vec<(u64, Out)> {
        let mut fired = Vec::new();
        while let Some(at) = self.core.poll_timeout() {
            if at > until_us {
                break;
            }
            self.advance_to(at.max(self.elapsed_us));
            for out in self.run(Input::Timeout) {
                fired.push((self.elapsed_us, out));
            }
        }
        self.advance_to(until_us);
        for out in self.run(Input::Timeout) {
            fired.push((self.elapsed_us, out));
        }
        fired
    }

    /// Shuts down and checks nothing is left behind.
    fn finish(mut self) {
        let open = self.core.connection_count();
        let outs = self.run(Input::Shutdown);
        assert_eq!(outs.len(), open, "{outs:?}");
        assert!(outs
            .iter()
            .all(|o| matches!(o, Out::Close(_, CloseCode::GoingAway))));
        assert_eq!(self.core.connection_count(), 0);
        // Rooms with history outlive their members until it ages out.
        self.elapsed_us += self.core.config().limits.history_age_ms * 1000;
        let outs = self.run(Input::Timeout);
        assert!(outs.is_empty(), "{outs:?}");
        assert_eq!(self.core.room_count(), 0);
        self.check();
    }
}

/// (room, seq) of each room a broadcast went to, in request order.
fn seqs(receipt: &PublishReceipt) -> Vec<(RoomName, u64)> {
    receipt
        .rooms
        .iter()
        .map(|r| (r.room.clone(), r.seq))
        .collect()
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "not an error: {v}");
    let message = v["data"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {v}");
    v["data"]["code"].as_str().unwrap_or_default()
}

/// The pong a connection answers a plain ping with: it proves it is still open.
fn assert_alive(h: &mut Harness, conn: ConnectionId) {
    let reply = h.reply(conn, r#"{"action":"ping"}"#);
    assert_eq!(reply["type"], "pong");
}
