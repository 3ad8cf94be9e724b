//! Publishes: receipts after the append, and the messages waiting behind
//! an engine call (their bound, 1008, `SERVER_BUSY`).

use super::*;

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
