//! One test per row of `PROTOCOL.md` sections 2-5 that the core owns, driven
//! through the public API only: `Core::new`, `handle`, `poll_output`,
//! `poll_timeout` and `check_invariants` (checked after every step).

use roomcast_core::access::AccessRule;
use roomcast_core::validate::DirectMessage;
use roomcast_core::{
    AccessRules, BroadcastOutcome, CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits,
    Now, Output, Publish, PublishError, PublishReceipt, RoomAccess, RoomName, SendTarget,
    Standalone, User,
};
use serde_json::{json, Map, Value};

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

// ----- 2. envelope / 3. lifecycle: connected ------------------------------------

#[test]
fn connected_message_for_an_anonymous_connection() {
    let mut h = Harness::new(CoreConfig::default());
    let msg = h.open(c(1), anon());
    assert_eq!(
        msg,
        json!({
            "type": "connected",
            "timestamp": "2025-10-17T10:30:00.000Z",
            "data": {
                "connection_id": "00000000-0000-0000-0000-000000000001",
                "message": "Connected to roomcast WebSocket",
                "authenticated": false,
            }
        })
    );
    assert!(msg["data"].get("user_id").is_none());
    assert!(msg.get("id").is_none() && msg.get("room").is_none() && msg.get("seq").is_none());
    h.finish();
}

#[test]
fn connected_message_for_an_authenticated_connection() {
    let mut h = Harness::new(CoreConfig::default());
    let id = ConnectionId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let msg = h.open(id, user("alice", &[]));
    assert_eq!(
        msg["data"],
        json!({
            "connection_id": "01234567-89ab-cdef-0123-456789abcdef",
            "message": "Connected to roomcast WebSocket",
            "authenticated": true,
            "user_id": "alice",
        })
    );
    h.finish();
}

#[test]
fn connected_message_names_the_configured_server() {
    let mut h = Harness::new(CoreConfig {
        server_name: "AniWorld".into(),
        ..CoreConfig::default()
    });
    let msg = h.open(c(1), anon());
    assert_eq!(msg["data"]["message"], "Connected to AniWorld WebSocket");
    h.finish();
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds() {
    let mut h = Harness::new(CoreConfig::default());
    h.advance_to(3_723_456_789); // 1 h 2 min 3.456789 s later
    let msg = h.open(c(1), anon());
    assert_eq!(msg["timestamp"], "2025-10-17T11:32:03.456Z");
    h.advance_to(h.elapsed_us + 86_400 * SECOND_US);
    let pong = h.reply(c(1), r#"{"action":"ping"}"#);
    assert_eq!(pong["timestamp"], "2025-10-18T11:32:03.456Z");
    for ms in [0, 1, 999, 951_782_400_123, 4_102_444_799_999] {
        let mut core = Standalone::new(CoreConfig::default());
        core.handle(
            Now {
                monotonic_us: 0,
                unix_ms: ms,
            },
            Input::Open {
                conn: c(1),
                identity: anon(),
            },
        );
        let out = decode(core.poll_output().unwrap());
        let ts = out.msg()["timestamp"].as_str().unwrap().to_owned();
        assert!(is_timestamp(&ts), "{ts}");
    }
    h.finish();
}

// ----- 4. join ----------------------------------------------------------------

#[test]
fn join_with_data_room_replies_system_info() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let reply = h.join(c(1), "downloads");
    assert_eq!(reply["data"]["message"], "Joined room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    assert_eq!(reply["data"]["seq"], 0);
    assert!(reply["data"]["epoch"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(reply["timestamp"], "2025-10-17T10:30:00.000Z");
    assert!(reply.get("id").is_none());
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    h.finish();
}

#[test]
fn join_with_top_level_room_is_accepted() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let reply = h.reply(c(1), r#"{"action":"join","room":"downloads"}"#);
    assert_eq!(reply["type"], "system_info");
    assert_eq!(reply["data"]["message"], "Joined room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    // data.room wins when both are given.
    let reply = h.reply(
        c(1),
        r#"{"action":"join","room":"other","data":{"room":"queue"}}"#,
    );
    assert_eq!(reply["data"]["room"], "queue");
    assert_eq!(h.core.member_count(&room("other")), 0);
    h.finish();
}

#[test]
fn join_reply_reports_the_rooms_current_seq_and_epoch() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    let first = h.join(c(1), "downloads");
    h.broadcast(&["downloads"], "queue_status", json!({}));
    h.broadcast(&["downloads"], "queue_status", json!({}));
    let second = h.join(c(2), "downloads");
    assert_eq!(second["data"]["seq"], 2);
    assert_eq!(second["data"]["epoch"], first["data"]["epoch"]);
    h.finish();
}

#[test]
fn rejoining_is_idempotent_reply_again_no_double_delivery() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let a = h.join(c(1), "downloads");
    let b = h.join(c(1), "downloads");
    assert_eq!(a, b);
    let b = h.reply(c(1), r#"{"action":"join","room":"downloads"}"#);
    assert_eq!(a, b);
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({"n": 1}));
    assert_eq!(receipt.delivered, 1);
    assert_eq!(outs.len(), 1, "{outs:?}");
    // A single leave undoes it: membership is a set, not a counter.
    h.leave(c(1), "downloads");
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({}));
    assert_eq!((receipt.delivered, outs.len()), (0, 0));
    h.finish();
}

// ----- 4. leave -----------------------------------------------------------------

#[test]
fn leave_replies_and_stops_delivery() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "downloads");
    let reply = h.leave(c(1), "downloads");
    assert_eq!(
        reply,
        json!({"type": "system_info", "timestamp": "2025-10-17T10:30:00.000Z",
               "data": {"message": "Left room: downloads", "room": "downloads"}})
    );
    assert_eq!(h.core.member_count(&room("downloads")), 0);
    assert_eq!(h.core.room_count(), 0);
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({}));
    assert_eq!((receipt.delivered, outs.len()), (0, 0));
    h.finish();
}

#[test]
fn leave_with_top_level_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "downloads");
    let reply = h.reply(c(1), r#"{"action":"leave","room":"downloads"}"#);
    assert_eq!(reply["data"]["message"], "Left room: downloads");
    assert_eq!(h.core.room_count(), 0);
    h.finish();
}

#[test]
fn leaving_a_room_one_is_not_in_is_not_an_error() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(2), "downloads");
    for name in ["downloads", "never-joined", "user:bob"] {
        let reply = h.leave(c(1), name);
        assert_eq!(reply["type"], "system_info", "{reply}");
        assert_eq!(reply["data"]["message"], format!("Left room: {name}"));
        assert_eq!(reply["data"]["room"], name);
    }
    // The other member is untouched.
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    assert_eq!(h.core.room_count(), 1);
    h.finish();
}

// ----- 4. ping / id echo ---------------------------------------------------------

#[test]
fn ping_is_answered_with_pong() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for text in [
        r#"{"action":"ping"}"#,
        r#"{"action":"ping","data":{}}"#,
        r#"{"action":"ping","data":null}"#,
        r#"  {"action":"ping","extra":[1,{"x":2}]} "#,
    ] {
        let reply = h.reply(c(1), text);
        assert_eq!(
            reply,
            json!({"type": "pong", "timestamp": "2025-10-17T10:30:00.000Z", "data": {}}),
            "{text}"
        );
    }
    h.finish();
}

#[test]
fn ids_are_echoed_on_replies() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &["publish"]));
    for id in [
        json!("r-1"),
        json!("with \"quotes\" and ünicode"),
        json!(""),
        json!(7),
        json!(-3),
        json!(1.5),
        json!(u64::MAX),
    ] {
        let id_text = id.to_string();
        let replies = [
            h.reply(c(1), &format!(r#"{{"action":"ping","id":{id_text}}}"#)),
            h.reply(
                c(1),
                &format!(r#"{{"action":"join","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"id":{id_text},"action":"join","room":"a"}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"action":"presence","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"action":"leave","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(
                    r#"{{"action":"publish","data":{{"room":"a","type":"queue_status","data":{{}}}},"id":{id_text}}}"#
                ),
            ),
        ];
        for reply in replies {
            assert_eq!(reply["id"], id, "{reply}");
            assert_ne!(reply["type"], "error", "{reply}");
        }
    }
    h.finish();
}

#[test]
fn ids_are_echoed_on_errors() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for id in [json!("q"), json!(42), json!(0.25)] {
        let id_text = id.to_string();
        for (text, code) in [
            (
                format!(r#"{{"action":"fly","id":{id_text}}}"#),
                "UNKNOWN_ACTION",
            ),
            (
                format!(r#"{{"action":5,"id":{id_text}}}"#),
                "INVALID_MESSAGE",
            ),
            (
                format!(r#"{{"action":"ping","data":[],"id":{id_text}}}"#),
                "INVALID_MESSAGE",
            ),
            (
                format!(r#"{{"action":"join","data":{{"room":""}},"id":{id_text}}}"#),
                "INVALID_SUBSCRIPTION",
            ),
            (
                format!(r#"{{"action":"join","room":"user:bob","id":{id_text}}}"#),
                "FORBIDDEN",
            ),
            (
                format!(r#"{{"action":"presence","data":{{"room":"a"}},"id":{id_text}}}"#),
                "FORBIDDEN",
            ),
        ] {
            let reply = h.reply(c(1), &text);
            assert_eq!(error_code(&reply), code, "{text}");
            assert_eq!(reply["id"], id, "{text}: {reply}");
        }
    }
    // Unreadable ids are not echoed (and the message is refused).
    for text in [
        r#"{"action":"ping","id":{}}"#,
        r#"{"action":"ping","id":[1]}"#,
        r#"{"action":"ping","id":true}"#,
        r#"{"action":"ping","id":null}"#,
    ] {
        let reply = h.reply(c(1), text);
        if reply["type"] == "pong" {
            // `"id": null` is the same as no id.
            assert!(reply.get("id").is_none(), "{text}: {reply}");
        } else {
            assert_eq!(error_code(&reply), "INVALID_MESSAGE", "{text}");
            assert!(reply.get("id").is_none(), "{text}: {reply}");
        }
    }
    let long = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(129));
    assert_eq!(error_code(&h.reply(c(1), &long)), "INVALID_MESSAGE");
    h.finish();
}

// ----- 4. errors ----------------------------------------------------------------

#[test]
fn invalid_message_for_malformed_frames_and_the_connection_stays_open() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for text in [
        "",
        "not json",
        "{",
        r#"{"action":"ping""#,
        r#"{"action":"ping"} trailing"#,
        "[]",
        r#"["action","ping"]"#,
        "1",
        "null",
        r#""ping""#,
        "{}",
        r#"{"data":{"room":"a"}}"#,
        r#"{"action":5}"#,
        r#"{"action":null}"#,
        r#"{"action":["ping"]}"#,
        r#"{"action":"ping","data":[]}"#,
        r#"{"action":"ping","data":"x"}"#,
        r#"{"action":"ping","data":1}"#,
        r#"{"action":"ping","action":"ping"}"#,
        r#"{"action":"presence","data":{"room":"a","after":5}}"#,
        r#"{"action":"join","data":{"room":"a","since":{"epoch":"e","seq":-1}}}"#,
        r#"{"action":"join","data":{"room":"a","since":"yesterday"}}"#,
        r#"{"action":"publish","data":{"room":"a"}}"#,
        r#"{"action":"refresh","data":{}}"#,
    ] {
        let reply = h.reply(c(1), text);
        assert_eq!(error_code(&reply), "INVALID_MESSAGE", "{text:?}: {reply}");
        assert!(reply.get("id").is_none());
    }
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn invalid_message_for_binary_frames() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let outs = h.run(Input::Binary { conn: c(1) });
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(1));
    assert_eq!(error_code(outs[0].msg()), "INVALID_MESSAGE");
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn invalid_subscription_for_bad_room_names() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let too_long = "x".repeat(129);
    let rooms = [
        "".to_owned(),
        "a b".to_owned(),
        "room/1".to_owned(),
        "ü".to_owned(),
        "tab\\t".to_owned(),
        too_long,
    ];
    for action in ["join", "leave"] {
        let mut cases = vec![
            format!(r#"{{"action":"{action}"}}"#),
            format!(r#"{{"action":"{action}","data":{{}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":null}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":5}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":["a"]}}}}"#),
            format!(r#"{{"action":"{action}","room":true}}"#),
        ];
        for name in &rooms {
            cases.push(format!(
                r#"{{"action":"{action}","data":{{"room":"{name}"}}}}"#
            ));
            cases.push(format!(r#"{{"action":"{action}","room":"{name}"}}"#));
        }
        for text in cases {
            let reply = h.reply(c(1), &text);
            assert_eq!(
                error_code(&reply),
                "INVALID_SUBSCRIPTION",
                "{text}: {reply}"
            );
        }
    }
    // 128 bytes is still fine.
    h.join(c(1), &"x".repeat(128));
    let reply = h.reply(c(1), r#"{"action":"presence","data":{}}"#);
    assert_eq!(error_code(&reply), "INVALID_SUBSCRIPTION");
    assert_eq!(h.core.room_count(), 1);
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn unknown_action_names_the_action() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for action in ["x", "subscribe", "JOIN", "Ping", ""] {
        let reply = h.reply(c(1), &format!(r#"{{"action":"{action}"}}"#));
        assert_eq!(error_code(&reply), "UNKNOWN_ACTION");
        assert_eq!(
            reply["data"]["message"],
            format!("Unknown action: {action}")
        );
    }
    // A huge action name is not echoed in full.
    let reply = h.reply(c(1), &format!(r#"{{"action":"{}"}}"#, "é".repeat(5000)));
    assert_eq!(error_code(&reply), "UNKNOWN_ACTION");
    let message = reply["data"]["message"].as_str().unwrap();
    assert!(message.starts_with("Unknown action: é") && message.len() < 200);
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn forbidden_private_user_rooms() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), user("bob", &[]));
    h.open(c(3), user("alice", &["publish"]));
    for (conn, name) in [
        (c(1), "user:alice"),
        (c(2), "user:alice"),
        (c(3), "user:alice2"),
        (c(3), "user:bob"),
        (c(3), "user:"),
    ] {
        let reply = h.reply(conn, &format!(r#"{{"action":"join","room":"{name}"}}"#));
        assert_eq!(error_code(&reply), "FORBIDDEN", "{name}");
    }
    assert_eq!(h.core.room_count(), 0);
    let reply = h.join(c(3), "user:alice");
    assert_eq!(reply["data"]["room"], "user:alice");
    // What was refused delivers nothing.
    let (receipt, outs) = h.broadcast(&["user:alice"], "system_info", json!({"message": "x"}));
    assert_eq!(receipt.delivered, 1);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(3));
    h.finish();
}

#[test]
fn forbidden_presence_for_non_members() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(2), "downloads");
    for name in ["downloads", "nowhere"] {
        let reply = h.reply(
            c(1),
            &format!(r#"{{"action":"presence","data":{{"room":"{name}"}}}}"#),
        );
        assert_eq!(error_code(&reply), "FORBIDDEN", "{name}");
    }
    h.finish();
}

#[test]
fn presence_lists_connections_and_authenticated_users() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("bob", &[]));
    h.open(c(2), user("alice", &[]));
    h.open(c(3), anon());
    h.open(c(4), user("bob", &[]));
    h.open(c(5), user("carol", &[]));
    for conn in [c(1), c(2), c(3), c(4)] {
        h.join(conn, "downloads");
    }
    h.join(c(5), "elsewhere");
    let reply = h.reply(
        c(3),
        r#"{"action":"presence","data":{"room":"downloads"},"id":1}"#,
    );
    assert_eq!(
        reply,
        json!({"type": "presence", "timestamp": "2025-10-17T10:30:00.000Z",
               "data": {"room": "downloads", "connections": 4, "user_count": 2,
                        "users": ["alice", "bob"]},
               "id": 1})
    );
    h.finish();
}

#[test]
fn publish_needs_a_grant() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), user("bob", &["read", "publisher"]));
    h.open(c(3), user("carol", &["publish:queue"]));
    h.open(c(4), user("alice", &["publish"]));
    h.open(c(5), anon());
    h.join(c(5), "downloads");
    let text =
        r#"{"action":"publish","data":{"room":"downloads","type":"queue_status","data":{"n":1}}}"#;
    for conn in [c(1), c(2), c(3)] {
        let reply = h.reply(conn, text);
        assert_eq!(error_code(&reply), "FORBIDDEN", "{conn:?}");
    }
    // Nothing was numbered by the refused attempts.
    let outs = h.text(c(4), text);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert_eq!(outs[0].conn(), c(5));
    assert_eq!(
        outs[0].msg(),
        &json!({"type": "queue_status", "timestamp": "2025-10-17T10:30:00.000Z",
                "room": "downloads", "seq": 1, "data": {"n": 1}})
    );
    assert_eq!(outs[1].conn(), c(4));
    assert_eq!(
        outs[1].msg()["data"],
        json!({"message": "Published to room: downloads", "room": "downloads", "seq": 1, "delivered": 1})
    );
    // A per-room grant covers exactly that room.
    let outs = h.text(
        c(3),
        r#"{"action":"publish","data":{"room":"queue","type":"queue_started"}}"#,
    );
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].msg()["type"], "system_info");
    assert_eq!(outs[0].msg()["data"]["delivered"], 0);
    h.finish();
}

#[test]
fn client_publish_validates_type_and_series_key() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &["publish"]));
    h.join(c(1), "downloads");
    for (kind, data, code) in [
        ("made_up", json!({}), "UNKNOWN_TYPE"),
        ("connected", json!({}), "UNKNOWN_TYPE"),
        ("pong", json!({}), "UNKNOWN_TYPE"),
        ("download_progress", json!({}), "INVALID_KEY"),
        ("download_progress", json!({"key": "a b"}), "INVALID_KEY"),
        ("scan_progress", json!({"key": 5}), "INVALID_KEY"),
    ] {
        let text = json!({"action": "publish", "data": {"room": "downloads", "type": kind, "data": data}, "id": "p"});
        let reply = h.reply(c(1), &text.to_string());
        assert_eq!(error_code(&reply), code, "{text}");
        assert_eq!(reply["id"], "p");
    }
    let text = json!({"action": "publish", "data": {"room": "downloads", "type": "download_progress",
                      "data": {"key": "attack-on-titan", "percent": 45.2}}});
    let outs = h.text(c(1), &text.to_string());
    assert_eq!(outs.len(), 2);
    assert_eq!(
        outs[0].msg()["seq"],
        1,
        "refused publishes are not numbered"
    );
    assert_eq!(outs[0].msg()["data"]["key"], "attack-on-titan");
    h.finish();
}

#[test]
fn refresh_is_refused_with_invalid_token_and_the_connection_stays_open() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    // The core hands the token to the shell for verification...
    let outs = h.text(
        c(1),
        r#"{"action":"refresh","data":{"token":"a.b.c"},"id":9}"#,
    );
    assert_eq!(outs, vec![Out::Verify(c(1), "a.b.c".into())]);
    // ...and answers the shell's verdict (the request id is the core's).
    let outs = h.run(Input::CheckDone {
        conn: c(1),
        answer: roomcast_core::CheckAnswer::Token(Err(roomcast_core::TokenRefused(
            "bad signature".into(),
        ))),
    });
    assert_eq!(outs.len(), 1, "{outs:?}");
    let reply = outs[0].msg();
    assert_eq!(error_code(reply), "INVALID_TOKEN");
    assert_eq!(reply["id"], 9);
    assert_alive(&mut h, c(1));
    h.finish();
}

fn rate_limits() -> Limits {
    Limits {
        messages_per_second: 2,
        message_burst: 3,
        rate_violations_max: 2,
        ..Limits::default()
    }
}

#[test]
fn rate_limited_then_closed_1008_on_persistent_abuse() {
    let mut h = Harness::with_limits(rate_limits());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(1), "downloads"); // 1 of the burst of 3
    h.join(c(2), "downloads");
    assert_alive(&mut h, c(1)); // 2
    assert_alive(&mut h, c(1)); // 3
                                // Over the allowance: warned, and the request is not executed.
    let reply = h.reply(c(1), r#"{"action":"leave","room":"downloads","id":"l"}"#);
    assert_eq!(error_code(&reply), "RATE_LIMITED");
    assert_eq!(reply["id"], "l");
    assert_eq!(h.core.member_count(&room("downloads")), 2);
    let outs = h.run(Input::Binary { conn: c(1) });
    assert_eq!(error_code(outs[0].msg()), "RATE_LIMITED");
    // Violations pending > rate_violations_max: closed with 1008.
    let outs = h.text(c(1), r#"{"action":"ping"}"#);
    assert_eq!(outs, vec![Out::Close(c(1), CloseCode::PolicyViolation)]);
    assert_eq!(h.core.connection_count(), 1);
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    // Gone for good; the other connection never noticed.
    assert_eq!(h.text(c(1), r#"{"action":"ping"}"#), vec![]);
    assert_alive(&mut h, c(2));
    h.finish();
}

#[test]
fn rate_limit_allowance_refills_with_time() {
    let mut h = Harness::with_limits(rate_limits());
    h.open(c(1), anon());
    for _ in 0..3 {
        assert_alive(&mut h, c(1));
    }
    let reply = h.reply(c(1), r#"{"action":"ping"}"#);
    assert_eq!(error_code(&reply), "RATE_LIMITED");
    // 2 messages per second: one token is back after 500 ms.
    h.advance_to(499_999);
    assert_eq!(
        error_code(&h.reply(c(1), r#"{"action":"ping"}"#)),
        "RATE_LIMITED"
    );
    // Two violations pending now; they drain one per second.
    h.advance_to(2_500_000);
    assert_alive(&mut h, c(1));
    // A client within its rate is never limited.
    for i in 0..100 {
        h.advance_to(3_000_000 + i * 500_000);
        assert_alive(&mut h, c(1));
    }
    h.finish();
}

#[test]
fn too_many_rooms() {
    let mut h = Harness::with_limits(Limits {
        rooms_per_connection_max: 2,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "a");
    h.join(c(1), "b");
    let reply = h.reply(c(1), r#"{"action":"join","room":"c","id":3}"#);
    assert_eq!(error_code(&reply), "TOO_MANY_ROOMS");
    assert_eq!(reply["id"], 3);
    assert_eq!(h.core.member_count(&room("c")), 0);
    assert_eq!(h.core.room_count(), 2);
    // Re-joining a room one is in does not count against the limit.
    h.join(c(1), "a");
    h.leave(c(1), "a");
    h.join(c(1), "c");
    assert_eq!(h.core.room_count(), 2);
    h.finish();
}

// ----- 5. access rules ------------------------------------------------------------

#[test]
fn access_rules_public_authenticated_private() {
    let mut h = Harness::new(CoreConfig {
        access: AccessRules {
            rules: vec![
                AccessRule {
                    prefix: "team:".into(),
                    access: RoomAccess::Authenticated,
                },
                AccessRule {
                    prefix: "team:lobby".into(),
                    access: RoomAccess::Public,
                },
                AccessRule {
                    prefix: "user:".into(),
                    access: RoomAccess::PrivateUser,
                },
            ],
            default: RoomAccess::Public,
        },
        ..CoreConfig::default()
    });
    h.open(c(1), anon());
    h.open(c(2), user("alice", &[]));
    let cases = [
        (c(1), "news", true),
        (c(1), "team:dev", false),
        (c(1), "team:lobby-1", true),
        (c(1), "user:alice", false),
        (c(2), "news", true),
        (c(2), "team:dev", true),
        (c(2), "user:alice", true),
        (c(2), "user:bob", false),
    ];
    for (conn, name, allowed) in cases {
        let reply = h.reply(conn, &format!(r#"{{"action":"join","room":"{name}"}}"#));
        if allowed {
            assert_eq!(reply["data"]["message"], format!("Joined room: {name}"));
        } else {
            assert_eq!(error_code(&reply), "FORBIDDEN", "{conn:?} {name}");
        }
    }
    h.finish();
}

#[test]
fn authenticated_only_default() {
    let mut h = Harness::new(CoreConfig {
        access: AccessRules {
            rules: Vec::new(),
            default: RoomAccess::Authenticated,
        },
        ..CoreConfig::default()
    });
    h.open(c(1), anon());
    h.open(c(2), user("bob", &[]));
    assert_eq!(
        error_code(&h.reply(c(1), r#"{"action":"join","room":"downloads"}"#)),
        "FORBIDDEN"
    );
    h.join(c(2), "downloads");
    h.finish();
}

// ----- broadcasts: seq, order, multi-room ------------------------------------------

#[test]
fn broadcast_seq_counts_1_2_3_per_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "a");
    h.join(c(1), "b");
    for expected in 1..=3u64 {
        let (receipt, outs) = h.broadcast(&["a"], "queue_status", json!({"i": expected}));
        assert_eq!(seqs(&receipt), vec![(room("a"), expected)]);
        assert_eq!(receipt.delivered, 1);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].conn(), c(1));
        assert_eq!(
            outs[0].msg(),
            &json!({"type": "queue_status", "timestamp": "2025-10-17T10:30:00.000Z",
                    "room": "a", "seq": expected, "data": {"i": expected}})
        );
    }
    // Room b has its own numbering.
    let (receipt, outs) = h.broadcast(&["b"], "queue_status", json!({}));
    assert_eq!(seqs(&receipt), vec![(room("b"), 1)]);
    assert_eq!(outs[0].msg()["seq"], 1);
    h.finish();
}

#[test]
fn members_receive_every_broadcast_in_order_without_gaps() {
    let mut h = Harness::new(CoreConfig::default());
    let members = [c(1), c(2), c(3)];
    for &m in &members {
        h.open(m, anon());
        h.join(m, "downloads");
        h.join(m, "noise");
    }
    let mut received: std::collections::BTreeMap<ConnectionId, Vec<u64>> = Default::default();
    for i in 1..=60u64 {
        if i == 21 {
            h.leave(c(2), "downloads");
        }
        if i == 31 {
            let reply = h.join(c(2), "downloads");
            assert_eq!(reply["data"]["seq"], 30);
        }
        let rooms: &[&str] = if i % 3 == 0 {
            &["noise", "downloads"]
        } else {
            &["downloads"]
        };
        let (receipt, outs) = h.broadcast(
            rooms,
            "download_progress",
            json!({"key": "attack-on-titan", "percent": i}),
        );
        assert!(seqs(&receipt).contains(&(room("downloads"), i)));
        for out in outs {
            let msg = out.msg();
            if msg["room"] == "downloads" {
                assert_eq!(msg["data"]["percent"], i);
                received
                    .entry(out.conn())
                    .or_default()
                    .push(msg["seq"].as_u64().unwrap());
            }
        }
    }
    let all: Vec<u64> = (1..=60).collect();
    assert_eq!(received[&c(1)], all);
    assert_eq!(received[&c(3)], all);
    let c2: Vec<u64> = (1..=20).chain(31..=60).collect();
    assert_eq!(received[&c(2)], c2);
    h.finish();
}

#[test]
fn one_broadcast_to_several_rooms_reaches_each_member_once_per_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    let epoch_a = h.join(c(1), "a")["data"]["epoch"].clone();
    let epoch_b = h.join(c(1), "b")["data"]["epoch"].clone();
    assert_ne!(epoch_a, epoch_b);
    h.join(c(2), "b");
    h.broadcast(&["b"], "queue_status", json!({}));
    let (receipt, outs) = h.broadcast(&["a", "b", "c"], "queue_paused", json!({"why": "x"}));
    assert_eq!(receipt.delivered, 3);
    assert_eq!(
        seqs(&receipt),
        vec![(room("a"), 1), (room("b"), 2), (room("c"), 1)]
    );
    // The receipt names each room's epoch: that of the live rooms' join replies.
    assert_eq!(receipt.rooms[0].epoch, epoch_a);
    assert_eq!(receipt.rooms[1].epoch, epoch_b);
    assert!(!receipt.rooms[2].epoch.is_empty());
    assert_ne!(receipt.rooms[2].epoch, epoch_a);
    assert_ne!(receipt.rooms[2].epoch, epoch_b);
    let summary: Vec<(ConnectionId, String, u64)> = outs
        .iter()
        .map(|o| {
            let m = o.msg();
            assert_eq!(m["type"], "queue_paused");
            assert_eq!(m["data"], json!({"why": "x"}));
            (
                o.conn(),
                m["room"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (c(1), "a".into(), 1),
            (c(1), "b".into(), 2),
            (c(2), "b".into(), 2),
        ]
    );
    h.finish();
}

// ----- direct sends -----------------------------------------------------------------

#[test]
fn direct_send_to_every_connection_of_a_user() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(3), user("alice", &[]));
    h.open(c(2), user("bob", &[]));
    h.open(c(1), user("alice", &[]));
    h.open(c(4), anon());
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({"message": "hi"}),
    ));
    assert_eq!(response, Ok(2));
    let expected = json!({"type": "system_info", "timestamp": "2025-10-17T10:30:00.000Z",
                          "data": {"message": "hi"}});
    assert_eq!(outs.len(), 2);
    assert_eq!((outs[0].conn(), outs[0].msg()), (c(1), &expected));
    assert_eq!((outs[1].conn(), outs[1].msg()), (c(3), &expected));
    let (response, outs) = h.send(direct(
        SendTarget::User("nobody".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs.len()), (Ok(0), 0));
    // After one of alice's connections goes, only the other gets it.
    h.run(Input::Closed { conn: c(1) });
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!(response, Ok(1));
    assert_eq!(outs[0].conn(), c(3));
    h.finish();
}

#[test]
fn direct_send_to_one_connection() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    h.open(c(2), user("alice", &[]));
    let (response, outs) = h.send(direct(
        SendTarget::Connection(c(2)),
        "download_complete",
        json!({"key": "k"}),
    ));
    assert_eq!(response, Ok(1));
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(2));
    assert_eq!(outs[0].msg()["type"], "download_complete");
    assert_eq!(outs[0].msg()["data"], json!({"key": "k"}));
    assert!(outs[0].msg().get("room").is_none() && outs[0].msg().get("seq").is_none());
    let (response, outs) = h.send(direct(
        SendTarget::Connection(c(9)),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs.len()), (Ok(0), 0));
    h.finish();
}

// ----- slow consumers -----------------------------------------------------------------

#[test]
fn slow_consumer_is_closed_4008_and_others_keep_receiving() {
    let max = 2_000;
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: max,
        ..Limits::default()
    });
    // c(1) never reports writes; c(2) reports every write.
    let mut queued_1 = 0usize;
    for conn in [c(1), c(2)] {
        let outs = h.run(Input::Open {
            conn,
            identity: anon(),
        });
        let outs2 = h.text(conn, r#"{"action":"join","room":"r"}"#);
        for out in outs.iter().chain(&outs2) {
            let Out::Send(_, _, len) = out else {
                panic!("{out:?}")
            };
            if conn == c(1) {
                queued_1 += len;
            } else {
                h.run(Input::Written { conn, bytes: *len });
            }
        }
    }
    let padding = "p".repeat(150);
    let mut seq = 0;
    loop {
        seq += 1;
        let (receipt, outs) = h.broadcast(&["r"], "queue_status", json!({"pad": padding}));
        assert_eq!(seqs(&receipt), vec![(room("r"), seq)]);
        // Both members get the same frame, so c(2)'s copy tells its length.
        let to_2 = outs.iter().find(|o| o.conn() == c(2)).expect("c2 served");
        let Out::Send(_, msg, len) = to_2 else {
            panic!()
        };
        assert_eq!(msg["seq"], seq);
        h.run(Input::Written {
            conn: c(2),
            bytes: *len,
        });
        if queued_1 + len > max {
            // Exactly the frame that would overflow c(1) is replaced by a close.
            assert_eq!(outs.len(), 2, "{outs:?}");
            assert_eq!(outs[1], Out::Close(c(1), CloseCode::SlowConsumer));
            assert_eq!(receipt.delivered, 1);
            break;
        }
        assert_eq!(outs.len(), 2, "{outs:?}");
        assert_eq!(outs[0].conn(), c(1));
        assert_eq!(outs[0].msg()["seq"], seq);
        assert_eq!(receipt.delivered, 2);
        queued_1 += len;
        assert!(seq < 100, "never overflowed");
    }
    assert!(seq > 3, "overflowed too early: {seq}");
    assert_eq!(h.core.member_count(&room("r")), 1);
    // c(2) carries on, gaplessly.
    for _ in 0..20 {
        seq += 1;
        let (receipt, outs) = h.broadcast(&["r"], "queue_status", json!({"pad": padding}));
        assert_eq!(receipt.delivered, 1);
        assert_eq!(outs.len(), 1);
        assert_eq!((outs[0].conn(), &outs[0].msg()["seq"]), (c(2), &json!(seq)));
        let Out::Send(_, _, len) = outs[0] else {
            panic!()
        };
        h.run(Input::Written {
            conn: c(2),
            bytes: len,
        });
    }
    // c(1) is forgotten.
    assert_eq!(h.text(c(1), r#"{"action":"ping"}"#), vec![]);
    h.finish();
}

#[test]
fn written_reports_free_the_outbound_queue() {
    let max = 1_000;
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: max,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "r");
    // Send far more than `max` in total, acknowledging each frame.
    let mut total = 0;
    for i in 1..=50u64 {
        let (_, outs) = h.broadcast(&["r"], "queue_status", json!({"i": i}));
        let Out::Send(conn, msg, len) = &outs[0] else {
            panic!("{outs:?}")
        };
        assert_eq!((conn, &msg["seq"]), (&c(1), &json!(i)));
        total += len;
        h.run(Input::Written {
            conn: c(1),
            bytes: *len,
        });
    }
    assert!(total > 3 * max);
    // Over-reporting is harmless (saturates at zero).
    h.run(Input::Written {
        conn: c(1),
        bytes: usize::MAX,
    });
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn a_reply_that_overflows_the_queue_closes_4008() {
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: 400,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "r");
    let mut closed = false;
    for _ in 0..10 {
        let outs = h.text(c(1), r#"{"action":"ping","id":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#);
        assert_eq!(outs.len(), 1);
        if outs[0] == Out::Close(c(1), CloseCode::SlowConsumer) {
            closed = true;
            break;
        }
        assert_eq!(outs[0].msg()["type"], "pong");
    }
    assert!(closed);
    assert_eq!(h.core.room_count(), 0);
    h.finish();
}

// ----- token expiry ----------------------------------------------------------------------

#[test]
fn token_expiry_closes_4001_at_the_right_time() {
    let mut h = Harness::with_limits(Limits {
        token_warning_ms: 3_000,
        ..Limits::default()
    });
    h.advance_to(2 * SECOND_US);
    // Expires 10 s after the start of the clocks, i.e. 8 s after opening.
    h.open(c(1), user_expiring("alice", START_MS + 10_000));
    h.join(c(1), "user:alice");
    h.open(c(2), user("bob", &[]));
    // First the warning, 3 s ahead.
    assert_eq!(h.core.poll_timeout(), Some(7 * SECOND_US));
    let fired = h.run_timers_until(10 * SECOND_US - 1);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, 7 * SECOND_US);
    assert_eq!(fired[0].1.conn(), c(1));
    assert_eq!(fired[0].1.msg()["type"], "system_warning");
    assert_eq!(fired[0].1.msg()["data"]["code"], "TOKEN_EXPIRING");
    assert_alive(&mut h, c(1));
    let fired = h.run_timers_until(10 * SECOND_US);
    assert_eq!(
        fired,
        vec![(10 * SECOND_US, Out::Close(c(1), CloseCode::TokenExpired))]
    );
    assert_eq!(h.core.room_count(), 0);
    assert_eq!(h.core.connection_count(), 1);
    h.finish();
}

#[test]
fn an_already_expired_token_is_closed_4001_at_once() {
    let mut h = Harness::new(CoreConfig::default());
    h.advance_to(5 * SECOND_US);
    let outs = h.run(Input::Open {
        conn: c(1),
        identity: user_expiring("alice", START_MS + 5_000),
    });
    assert_eq!(outs, vec![Out::Close(c(1), CloseCode::TokenExpired)]);
    assert_eq!(h.core.connection_count(), 0);
    h.finish();
}

// ----- heartbeat -------------------------------------------------------------------------

fn heartbeat_limits() -> Limits {
    Limits {
        ping_interval_ms: 25_000,
        idle_timeout_ms: 60_000,
        ..Limits::default()
    }
}

#[test]
fn silent_connections_are_pinged_then_closed_4002() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    assert_eq!(h.core.poll_timeout(), Some(25 * SECOND_US));
    assert_eq!(h.run_timers_until(25 * SECOND_US - 1), vec![]);
    let fired = h.run_timers_until(100 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (25 * SECOND_US, Out::Ping(c(1))),
            (50 * SECOND_US, Out::Ping(c(1))),
            (60 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    assert_eq!(h.core.poll_timeout(), None);
    h.finish();
}

#[test]
fn a_pong_resets_the_idle_clock() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    h.open(c(2), anon());
    assert_eq!(
        h.run_timers_until(30 * SECOND_US),
        vec![
            (25 * SECOND_US, Out::Ping(c(1))),
            (25 * SECOND_US, Out::Ping(c(2)))
        ]
    );
    assert_eq!(h.run(Input::Pong { conn: c(1) }), vec![]);
    let fired = h.run_timers_until(200 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (50 * SECOND_US, Out::Ping(c(2))),
            (55 * SECOND_US, Out::Ping(c(1))),
            (60 * SECOND_US, Out::Close(c(2), CloseCode::IdleTimeout)),
            (80 * SECOND_US, Out::Ping(c(1))),
            (90 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    h.finish();
}

#[test]
fn client_messages_also_count_as_signs_of_life() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    // A message every 20 s: never pinged, never closed.
    for i in 1..=10 {
        assert_eq!(h.run_timers_until(i * 20 * SECOND_US), vec![]);
        assert_alive(&mut h, c(1));
    }
    let fired = h.run_timers_until(300 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (225 * SECOND_US, Out::Ping(c(1))),
            (250 * SECOND_US, Out::Ping(c(1))),
            (260 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    h.finish();
}

// ----- abort / closed / shutdown -----------------------------------------------------------

#[test]
fn abort_emits_a_close_with_the_given_code() {
    let mut h = Harness::new(CoreConfig::default());
    for (i, code) in CloseCode::ALL.into_iter().enumerate() {
        let conn = c(i as u128 + 1);
        h.open(conn, user("alice", &[]));
        h.join(conn, "downloads");
        let outs = h.run(Input::Abort { conn, code });
        assert_eq!(outs, vec![Out::Close(conn, code)]);
        assert_eq!(h.core.connection_count(), 0);
        assert_eq!(h.core.room_count(), 0);
        // Nothing more for an aborted connection.
        assert_eq!(h.text(conn, r#"{"action":"ping"}"#), vec![]);
        assert_eq!(h.run(Input::Abort { conn, code }), vec![]);
    }
    h.finish();
}

#[test]
fn closed_produces_no_output_and_releases_every_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    h.open(c(2), anon());
    for name in ["a", "b", "user:alice"] {
        h.join(c(1), name);
    }
    h.join(c(2), "a");
    assert_eq!(h.core.room_count(), 3);
    assert_eq!(h.run(Input::Closed { conn: c(1) }), vec![]);
    assert_eq!(h.core.room_count(), 1);
    assert_eq!(h.core.member_count(&room("a")), 1);
    // It gets nothing any more: not broadcasts, not direct messages.
    let (receipt, outs) = h.broadcast(&["a", "b"], "queue_status", json!({}));
    assert_eq!(receipt.delivered, 1);
    assert!(outs.iter().all(|o| o.conn() == c(2)));
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs), (Ok(0), vec![]));
    assert_eq!(h.run(Input::Closed { conn: c(1) }), vec![]);
    // The id may be reused by a new connection.
    h.open(c(1), anon());
    h.finish();
}

#[test]
fn shutdown_closes_every_connection_1001_in_id_order() {
    let mut h = Harness::new(CoreConfig::default());
    for n in [5, 2, 9, 1, 7, 3] {
        h.open(c(n), anon());
        h.join(c(n), "lobby");
    }
    h.run(Input::Closed { conn: c(7) });
    h.open(c(4), user("alice", &[])); // reuses a freed slot
    let outs = h.run(Input::Shutdown);
    let expected: Vec<Out> = [1, 2, 3, 4, 5, 9]
        .into_iter()
        .map(|n| Out::Close(c(n), CloseCode::GoingAway))
        .collect();
    assert_eq!(outs, expected);
    assert_eq!(h.core.connection_count(), 0);
    assert_eq!(h.core.room_count(), 0);
    assert_eq!(h.core.poll_timeout(), None);
    h.finish();
}

#[test]
fn after_every_connection_closes_no_room_remains() {
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: 2_000,
        idle_timeout_ms: 30_000,
        ping_interval_ms: 10_000,
        ..Limits::default()
    });
    let names = ["a", "b", "c", "d", "user:u3", "user:u7"];
    for n in 0..40u128 {
        let identity = if n % 2 == 0 {
            anon()
        } else {
            user(&format!("u{}", n % 8), &["publish"])
        };
        h.open(c(n), identity);
        for (i, name) in names.iter().enumerate() {
            if !(n as usize + i).is_multiple_of(3) {
                h.text(c(n), &format!(r#"{{"action":"join","room":"{name}"}}"#));
            }
        }
    }
    assert!(h.core.room_count() >= 4);
    // Every way out: closed, aborted, slow consumer, idle timeout.
    for n in 0..10 {
        h.run(Input::Closed { conn: c(n) });
    }
    for n in 10..20 {
        h.run(Input::Abort {
            conn: c(n),
            code: CloseCode::MessageTooBig,
        });
    }
    for n in 20..30 {
        h.run(Input::Written {
            conn: c(n),
            bytes: usize::MAX,
        });
    }
    // The others (30..40) never report writes and overflow their queues.
    for _ in 0..6 {
        h.broadcast(
            &["a", "b", "c", "d"],
            "queue_status",
            json!({"pad": "x".repeat(300)}),
        );
        for n in 20..30 {
            h.run(Input::Written {
                conn: c(n),
                bytes: usize::MAX,
            });
        }
    }
    assert_eq!(h.core.connection_count(), 10);
    h.run_timers_until(31 * SECOND_US);
    assert_eq!(h.core.connection_count(), 0);
    h.check();
    h.finish(); // ages the history out and checks no room remains
}

/// Regression: a zero ping interval once made `Input::Timeout` loop forever,
/// and huge intervals overflowed `ms * 1000`.
#[test]
fn degenerate_heartbeat_limits_neither_hang_nor_overflow() {
    use roomcast_core::{ConnectionId, CoreConfig, Identity, Input, Limits, Now, Standalone};
    for (ping_interval_ms, idle_timeout_ms) in
        [(0, 60_000), (u64::MAX, u64::MAX), (1, u64::MAX / 999)]
    {
        let limits = Limits {
            ping_interval_ms,
            idle_timeout_ms,
            ..Limits::default()
        };
        let mut core = Standalone::new(CoreConfig {
            limits,
            ..CoreConfig::default()
        });
        let conn = ConnectionId::from_u128(9);
        core.handle(
            Now::default(),
            Input::Open {
                conn,
                identity: Identity::Anonymous,
            },
        );
        let mut outputs = 0;
        for step in 1..=5u64 {
            core.handle(Now::from_start(0, step * 1_000), Input::Timeout);
            while core.poll_output().is_some() {
                outputs += 1;
            }
        }
        assert!(
            outputs < 20,
            "bounded work per timeout ({ping_interval_ms}, {idle_timeout_ms}): {outputs} outputs"
        );
        core.check_invariants().unwrap();
    }
}
