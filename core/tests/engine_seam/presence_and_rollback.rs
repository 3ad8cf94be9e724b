//! Presence from the engine, and an engine rolled back to a new epoch.

use super::*;

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
