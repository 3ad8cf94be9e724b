//! Joins: the join barrier, recovery, and a failed read.

use super::*;

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
