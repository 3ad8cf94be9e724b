//! The engine seam: what the core keeps whatever the engine does. The
//! core is driven directly; its engine requests are answered by hand (from
//! an in-memory engine, or planted), late, out of order, lost or failed.

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

mod support;

use support::Harness;

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

#[test]
fn a_first_join_waits_for_the_read_and_live_messages_meanwhile_follow_the_reply() {
    let mut h = Harness::new(Limits::default());
    let a = h.open(1);
    let id = h.join(a);
    let requests = h.requests();
    assert!(
        matches!(&requests[0], EngineRequest::Interest { on: true, .. }),
        "interest before the read: {requests:?}"
    );
    let call = read_call(&requests);
    assert!(h.frames().is_empty(), "no reply before the read answers");
    // Two messages arrive live while the read is in flight; the read was
    // taken after the first.
    h.feed(live("e-1", 1));
    h.feed(live("e-1", 2));
    let read = ReadResult {
        epoch: "e-1".into(),
        top: 1,
        frames: Vec::new(),
    };
    h.feed(EngineEvent::Read {
        call,
        result: Ok(read),
    });
    let frames = h.frames();
    let joined = reply(&frames, a, id);
    assert_eq!(joined["data"]["seq"], 1);
    assert_eq!(
        seqs(&frames, a),
        vec![2],
        "exactly the one after the reply's seq"
    );
    // The same message arriving again (its append answer, say) is dropped.
    h.feed(live("e-1", 2));
    assert!(h.frames().is_empty());
}

#[test]
fn recovery_merges_the_read_with_live_messages_without_duplicates() {
    let mut h = Harness::new(Limits::default());
    let b = h.open(2);
    h.join(b);
    h.settle();
    for n in 1..=4 {
        assert!(h.broadcast(n).is_ok());
        h.settle();
    }
    assert_eq!(seqs(&h.frames(), b), vec![1, 2, 3, 4]);
    let a = h.open(1);
    let id = h.join_since(a, "e-1", 2);
    let read_request = h.requests();
    read_call(&read_request);
    // Seq 5 is appended (elsewhere) while the read is in flight; the read
    // already saw it, and its live message arrives too.
    h.broadcast(5).expect("accepted");
    let append = h.requests();
    let events = h.engine_events(append);
    let read = h.engine_events(read_request).pop().unwrap();
    for event in events {
        h.feed(event); // live 5 and the append's answer: held during the read
    }
    h.feed(read);
    let frames = h.frames();
    let joined = reply(&frames, a, id);
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(joined["data"]["seq"], 5);
    assert_eq!(
        seqs(&frames, a),
        vec![3, 4, 5],
        "missed frames, once each, in order"
    );
    assert_eq!(seqs(&frames, b), vec![5]);
}

#[test]
fn a_failed_read_recovers_nothing_and_a_first_join_is_refused() {
    let mut h = Harness::new(Limits::default());
    let a = h.open(1);
    let id = h.join(a);
    let call = read_call(&h.requests());
    let failed = Err(EngineError::Unavailable("down".into()));
    h.feed(EngineEvent::Read {
        call,
        result: failed.clone(),
    });
    let frames = h.frames();
    assert_eq!(reply(&frames, a, id)["data"]["code"], "ENGINE_UNAVAILABLE");
    assert_eq!(h.core.room_count(), 0, "not joined, room forgotten");
    // With the room known (another member), a recovery that cannot read
    // is an honest `recovered: false`.
    let b = h.open(2);
    h.join(b);
    h.settle();
    h.frames();
    let id = h.join_since(a, "e-1", 0);
    let call = read_call(&h.requests());
    h.feed(EngineEvent::Read {
        call,
        result: failed,
    });
    let frames = h.frames();
    let joined = reply(&frames, a, id);
    assert_eq!(joined["data"]["recovered"], false);
    assert!(seqs(&frames, a).is_empty(), "nothing partial");
}

#[test]
fn a_jump_starts_one_read_for_the_room_that_fills_the_gap() {
    let mut h = Harness::new(Limits::default());
    let (a, b) = (h.open(1), h.open(2));
    h.join(a);
    h.join(b);
    h.settle();
    h.frames();
    // Three appends; this node hears only the third live.
    let mut events = Vec::new();
    for n in 1..=3 {
        events.extend(h.append_elsewhere(n));
    }
    let lives: Vec<EngineEvent> = events
        .into_iter()
        .filter(|e| matches!(e, EngineEvent::Live(m) if m.seq == 3))
        .collect();
    for event in lives {
        h.feed(event);
    }
    let requests = h.requests();
    read_call(&requests); // one read for the room, not one per member
    assert!(h.frames().is_empty(), "nothing out of order meanwhile");
    let events = h.engine_events(requests);
    for event in events {
        h.feed(event);
    }
    let frames = h.frames();
    assert_eq!(seqs(&frames, a), vec![1, 2, 3]);
    assert_eq!(seqs(&frames, b), vec![1, 2, 3]);
}

#[test]
fn a_gap_history_cannot_fill_is_announced_to_every_member() {
    let mut h = Harness::new(Limits::default());
    let (a, b) = (h.open(1), h.open(2));
    h.join(a);
    h.join(b);
    h.settle();
    h.frames();
    // A planted engine skipped seq 1: it streams 2 and its history lacks 1.
    h.feed(live("e-1", 2));
    let call = read_call(&h.requests());
    let frame = |seq: u64| {
        format!(r#"{{"type":"queue_status","room":"r","seq":{seq},"data":{{}}}}"#).into()
    };
    h.feed(EngineEvent::Read {
        call,
        result: Ok(ReadResult {
            epoch: "e-1".into(),
            top: 2,
            frames: vec![(2, frame(2))],
        }),
    });
    let frames = h.frames();
    for member in [a, b] {
        let warnings: Vec<&Value> = frames
            .iter()
            .filter(|(c, f)| *c == member && f["type"] == "system_warning")
            .map(|(_, f)| f)
            .collect();
        assert_eq!(warnings.len(), 1, "{frames:#?}");
        assert_eq!(warnings[0]["data"]["code"], "ROOM_GAP");
        // Only seq 1 is lost: the warning names it, then history's seq 2.
        assert_eq!(warnings[0]["data"]["epoch"], "e-1");
        assert_eq!(warnings[0]["data"]["seq"], 1);
        assert_eq!(seqs(&frames, member), vec![2], "continues after seq 1");
        let warning_at = frames
            .iter()
            .position(|(c, f)| *c == member && f["type"] == "system_warning");
        let message_at = frames
            .iter()
            .position(|(c, f)| *c == member && f["seq"] == 2);
        assert!(
            warning_at < message_at,
            "the warning comes first: {frames:#?}"
        );
    }
    // The engine lost its data and the room started over in a new epoch,
    // of which this node missed three messages: a gap (the old epoch's
    // tail may be lost), then the new epoch refilled from its start.
    h.feed(live("e-9", 4));
    let call = read_call(&h.requests());
    h.feed(EngineEvent::Read {
        call,
        result: Ok(ReadResult {
            epoch: "e-9".into(),
            top: 4,
            frames: (1..=4).map(|seq| (seq, frame(seq))).collect(),
        }),
    });
    let frames = h.frames();
    for member in [a, b] {
        let mine: Vec<&Value> = frames
            .iter()
            .filter(|(c, _)| *c == member)
            .map(|(_, f)| f)
            .collect();
        assert_eq!(mine.len(), 5, "a warning and four messages: {mine:#?}");
        assert_eq!(mine[0]["data"]["code"], "ROOM_GAP");
        assert_eq!(
            (
                mine[0]["data"]["epoch"].as_str(),
                mine[0]["data"]["seq"].as_u64()
            ),
            (Some("e-9"), Some(0))
        );
        assert_eq!(seqs(&frames, member), vec![1, 2, 3, 4]);
    }
    h.feed(live("e-9", 5));
    assert_eq!(seqs(&h.frames(), a), vec![5]);
}

#[test]
fn after_data_loss_a_node_reading_late_refills_the_new_epoch_from_the_engine() {
    // The real engine's side of the contract: a read after another epoch's
    // position answers with the current epoch's messages from its start.
    let (mut h, a) = Harness::with_member(Limits::default());
    let lives = |events: Vec<EngineEvent>| -> Vec<EngineEvent> {
        events
            .into_iter()
            .filter(|e| matches!(e, EngineEvent::Live(_)))
            .collect()
    };
    for event in lives(h.append_elsewhere(1)) {
        h.feed(event);
    }
    assert_eq!(seqs(&h.frames(), a), vec![1]);
    // The engine restarts empty (this node's subscription survives, as a
    // pub/sub connection resubscribes); three messages are appended
    // elsewhere and their live messages are lost; the fourth arrives.
    h.engine = MemoryEngine::new(support::BOUNDS, "f".into(), 60_000_000);
    h.engine_events(vec![EngineRequest::Interest {
        room: room(),
        on: true,
    }]);
    h.append_elsewhere(2);
    h.append_elsewhere(3);
    h.append_elsewhere(4);
    let live4 = lives(h.append_elsewhere(5));
    assert_eq!(live4.len(), 1, "the fourth append's live message");
    h.feed(live4[0].clone());
    h.settle();
    let frames = h.frames();
    let gap: Vec<&Value> = frames
        .iter()
        .filter(|(_, f)| f["data"]["code"] == "ROOM_GAP")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(gap.len(), 1, "{frames:#?}");
    assert_eq!(gap[0]["data"]["seq"], 0);
    assert_eq!(seqs(&frames, a), vec![1, 2, 3, 4], "the new epoch, whole");
}

#[test]
fn a_lost_last_message_is_found_by_the_stream_check() {
    let limits = Limits {
        stream_check_interval_ms: 1_000,
        ..Limits::default()
    };
    let (mut h, a) = Harness::with_member(limits);
    // Appended elsewhere; its live message is lost on the way.
    h.append_elsewhere(1);
    h.now_us += 1_000_001;
    assert!(h.core.poll_timeout().is_some_and(|at| at <= h.now_us));
    h.core.handle(h.now(), Input::Timeout);
    h.settle();
    assert_eq!(seqs(&h.frames(), a), vec![1]);
}

#[test]
fn a_stream_reset_reads_every_followed_room_at_once() {
    let mut h = Harness::new(Limits::default());
    let a = h.open(1);
    h.join(a);
    h.settle();
    h.frames();
    // Appended elsewhere while the live stream was down: lost.
    h.engine_events(vec![EngineRequest::Append {
        call: CallId(99),
        room: room(),
        message: roomcast_core::engine::Unnumbered {
            head: r#"{"type":"queue_status","room":"r","seq":"#.into(),
            tail: r#","data":{}}"#.into(),
            series: None,
        },
        known: None,
    }]);
    // No timer is due (the stream check is 30 s away), but the engine
    // says its live stream was re-established: the room is read now.
    assert!(h.requests().is_empty());
    h.feed(EngineEvent::StreamReset);
    let requests = h.requests();
    read_call(&requests);
    for event in h.engine_events(requests) {
        h.feed(event);
    }
    h.settle();
    assert_eq!(seqs(&h.frames(), a), vec![1]);
    // A reset while that room's read is in flight reads it once more after.
    h.feed(EngineEvent::StreamReset);
    let first = h.requests();
    read_call(&first);
    h.feed(EngineEvent::StreamReset);
    assert!(h.requests().is_empty(), "one read per room at a time");
    for event in h.engine_events(first) {
        h.feed(event);
    }
    read_call(&h.requests());
}

#[test]
fn publish_receipts_wait_for_the_engine_and_failures_are_errors() {
    let limits = Limits {
        engine_calls_max: 2,
        ..Limits::default()
    };
    let (mut h, _member) = Harness::with_member(limits);
    let Ok(ticket) = h.broadcast(1) else {
        panic!("a broadcast waits for its append")
    };
    assert!(h.core.poll_answer().is_none());
    h.settle();
    match h.core.poll_answer() {
        Some((t, Ok(receipt))) => {
            assert_eq!(t, ticket);
            assert_eq!(receipt.delivered, 1);
            assert_eq!(receipt.rooms[0].seq, 1);
        }
        other => panic!("{other:?}"),
    }
    h.frames();
    // A failed append: 503-shaped error, nothing delivered.
    let Ok(ticket) = h.broadcast(2) else { panic!() };
    let requests = h.requests();
    let EngineRequest::Append { call, .. } = &requests[0] else {
        panic!("{requests:?}")
    };
    h.feed(EngineEvent::Appended {
        call: *call,
        result: Err(EngineError::Unavailable("timed out".into())),
        peer_members: 0,
    });
    match h.core.poll_answer() {
        Some((t, Err(error))) => {
            assert_eq!(t, ticket);
            assert_eq!(error.code(), "ENGINE_UNAVAILABLE");
            assert!(error.message().contains("timed out"));
        }
        other => panic!("{other:?}"),
    }
    assert!(h.frames().is_empty());
    // Bounded: two appends in flight fill `engine_calls_max`.
    assert!(h.broadcast(3).is_ok());
    assert!(h.broadcast(4).is_ok());
    match h.broadcast(5) {
        Err(PublishError::EngineUnavailable { .. }) => {}
        other => panic!("a full engine queue refuses: {other:?}"),
    }
}

#[test]
fn a_client_publish_answers_after_the_append_and_later_messages_wait_behind_it() {
    let (mut h, a) = Harness::with_member(Limits::default());
    let publish =
        json!({"action": "publish", "data": {"room": "r", "type": "queue_status", "data": {}}});
    let published = h.request(a, publish, Sent::Other);
    let ping = h.request(a, json!({"action": "ping"}), Sent::Other);
    assert!(h.frames().is_empty(), "nothing before the engine answers");
    h.settle();
    let frames = h.frames();
    let order: Vec<Value> = frames.iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(
        order,
        vec![Value::Null, json!(published), json!(ping)],
        "the broadcast, the publish reply, then the pong: {frames:#?}"
    );
    assert_eq!(reply(&frames, a, published)["data"]["seq"], 1);
}

#[test]
fn a_planted_engine_that_replays_a_message_delivers_it_once() {
    let (mut h, a) = Harness::with_member(Limits::default());
    h.feed(live("e-1", 1));
    h.feed(live("e-1", 1));
    h.feed(live("e-1", 2));
    h.feed(live("e-1", 1));
    assert_eq!(seqs(&h.frames(), a), vec![1, 2]);
    assert!(h.requests().is_empty(), "a duplicate is no gap");
}

#[test]
fn messages_waiting_behind_the_engine_are_bounded() {
    let limits = Limits {
        engine_deferred_messages_max: 2,
        ..Limits::default()
    };
    let (mut h, a) = Harness::with_member(limits);
    let publish =
        json!({"action": "publish", "data": {"room": "r", "type": "queue_status", "data": {}}});
    let published = h.request(a, publish, Sent::Other);
    let pings: Vec<u64> = (0..3)
        .map(|_| h.request(a, json!({"action": "ping"}), Sent::Other))
        .collect();
    // The third ping is refused (two wait already), but in its place:
    // its answer must not overtake the replies before it.
    let frames = h.frames();
    assert!(frames.is_empty(), "nothing answered ahead: {frames:#?}");
    h.settle();
    let frames = h.frames();
    let order: Vec<Value> = frames.iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(
        order,
        vec![
            Value::Null,
            json!(published),
            json!(pings[0]),
            json!(pings[1]),
            json!(pings[2])
        ]
    );
    assert_eq!(reply(&frames, a, pings[1])["type"], "pong");
    assert_eq!(reply(&frames, a, pings[2])["data"]["code"], "RATE_LIMITED");
}

#[test]
fn a_client_that_keeps_sending_behind_a_wait_is_closed_with_1008() {
    let limits = Limits {
        engine_deferred_messages_max: 2,
        ..Limits::default()
    };
    let (mut h, a) = Harness::with_member(limits);
    let publish =
        json!({"action": "publish", "data": {"room": "r", "type": "queue_status", "data": {}}});
    h.request(a, publish, Sent::Other);
    // Two wait to run, two wait for their refusal: the queue is full.
    for _ in 0..4 {
        h.request(a, json!({"action": "ping"}), Sent::Other);
    }
    assert!(
        h.frames().is_empty(),
        "still within both bounds, nothing answered"
    );
    h.request(a, json!({"action": "ping"}), Sent::Other);
    let outputs: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
    assert!(
        matches!(
            outputs.as_slice(),
            [Output::Close { conn, code: CloseCode::PolicyViolation }] if *conn == a
        ),
        "{outputs:?}"
    );
}

#[test]
fn server_busy_behind_a_full_queue_keeps_its_place() {
    let limits = Limits {
        engine_deferred_messages_max: 1,
        ..Limits::default()
    };
    let (mut h, a) = Harness::with_member(limits);
    let publish =
        json!({"action": "publish", "data": {"room": "r", "type": "queue_status", "data": {}}});
    let published = h.request(a, publish, Sent::Other);
    let ping = h.request(a, json!({"action": "ping"}), Sent::Other);
    // The shell refused the next message (its inbound budget was full).
    let busy = roomcast_core::parse::RequestId::Number(99.into());
    h.oracle
        .as_mut()
        .unwrap()
        .sent(1, "99".into(), Sent::Other)
        .unwrap();
    h.core.handle(
        h.now(),
        Input::Busy {
            conn: a,
            id: Some(busy),
        },
    );
    assert!(h.frames().is_empty(), "SERVER_BUSY waits for its turn");
    h.settle();
    let frames = h.frames();
    let order: Vec<Value> = frames.iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(
        order,
        vec![Value::Null, json!(published), json!(ping), json!(99)]
    );
    assert_eq!(frames[3].1["data"]["code"], "SERVER_BUSY");
}

#[test]
fn presence_comes_from_the_engine_and_counts_every_node() {
    let (mut h, a) = Harness::with_member(Limits::default());
    // A member of another node, as the engine knows it.
    let entry = roomcast_core::engine::PresenceEntry {
        conn: ConnectionId::from_u128(77),
        user: Some("zoe".into()),
    };
    h.engine.handle(
        7,
        0,
        EngineRequest::PresenceAdd {
            room: room(),
            entry,
        },
    );
    let asked = h.request(
        a,
        json!({"action": "presence", "data": {"room": "r"}}),
        Sent::Other,
    );
    assert!(h.frames().is_empty(), "the reply waits for the engine");
    h.settle();
    let frames = h.frames();
    let presence = reply(&frames, a, asked);
    assert_eq!(presence["data"]["connections"], 2);
    assert_eq!(presence["data"]["users"], json!(["u1", "zoe"]));
    // A failed list is an error, not a partial answer.
    let asked = h.request(
        a,
        json!({"action": "presence", "data": {"room": "r"}}),
        Sent::Other,
    );
    let requests = h.requests();
    let Some(EngineRequest::PresenceList { call, .. }) = requests.first() else {
        panic!("{requests:?}")
    };
    h.feed(EngineEvent::Presence {
        call: *call,
        result: Err(EngineError::Unavailable("down".into())),
    });
    let frames = h.frames();
    assert_eq!(
        reply(&frames, a, asked)["data"]["code"],
        "ENGINE_UNAVAILABLE"
    );
    // Node 7 stops refreshing (this node does): after the time-to-live
    // only this node's member is left.
    h.engine
        .handle(0, 59_000_000, EngineRequest::PresenceRefresh);
    h.engine.on_timeout(60_000_001);
    assert_eq!(h.engine.presence_count(), 1);
}

/// The engine rolled back inside the epoch (a Redis restarted from an
/// older snapshot): the core's cursor travels with its reads and appends,
/// so the room moves to a new epoch; members are told `ROOM_GAP` at its
/// start, a publish after the loss is answered in it, and a rejoin from
/// before the loss is not recovered.
#[test]
fn a_rolled_back_engine_moves_the_room_to_a_new_epoch() {
    let (mut h, a) = Harness::with_member(Limits::default());
    for n in 1..=2 {
        h.broadcast(n).expect("accepted");
        h.settle();
    }
    let point = h.engine.tops();
    for n in 3..=4 {
        h.broadcast(n).expect("accepted");
        h.settle();
    }
    while h.core.poll_answer().is_some() {}
    assert_eq!(seqs(&h.frames(), a), vec![1, 2, 3, 4]);
    h.engine.roll_back(&point);
    // The engine's connection came back: the core reads with its cursor.
    h.feed(EngineEvent::StreamReset);
    let requests = h.requests();
    let Some(EngineRequest::Read {
        known: Some(known), ..
    }) = requests.first()
    else {
        panic!("{requests:?}")
    };
    assert_eq!((&*known.epoch, known.seq), ("e-1", 4));
    for event in h.engine_events(requests) {
        h.feed(event);
    }
    h.settle();
    let frames = h.frames();
    assert_eq!(frames.len(), 1, "{frames:#?}");
    let gap = &frames[0].1["data"];
    assert_eq!(gap["code"], "ROOM_GAP");
    assert_eq!(
        (gap["epoch"].as_str(), gap["seq"].as_u64()),
        (Some("e-2"), Some(0))
    );
    // A publish after the loss carries the new epoch, and seq 1 of it.
    h.broadcast(5).expect("accepted");
    h.settle();
    match h.core.poll_answer() {
        Some((_, Ok(receipt))) => {
            assert_eq!((&*receipt.rooms[0].epoch, receipt.rooms[0].seq), ("e-2", 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seqs(&h.frames(), a), vec![1]);
    // A client that saw seq 4 of the old epoch is not recovered.
    let b = h.open(2);
    let id = h.join_since(b, "e-1", 4);
    h.settle();
    let frames = h.frames();
    let answer = reply(&frames, b, id);
    assert_eq!(answer["data"]["recovered"], false, "{answer}");
    assert_eq!(answer["data"]["epoch"], "e-2");
}
