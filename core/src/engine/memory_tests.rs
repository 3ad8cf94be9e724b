//! The in-memory engine's own tests (the shared contract is in the
//! engine conformance suite, `tests/tests/engine_conformance.rs`).

use super::*;
use crate::engine::PresenceEntry;
use crate::engine::{CallId, Unnumbered};
use crate::names::ConnectionId;

const BOUNDS: HistoryBounds = HistoryBounds {
    messages_max: 3,
    age_max_us: 1_000,
    bytes_max: usize::MAX,
    rooms_max: usize::MAX,
};

fn room() -> RoomName {
    RoomName::new("r").unwrap()
}

fn append(engine: &mut MemoryEngine, node: NodeId, now_us: u64, n: u64) {
    let message = Unnumbered {
        head: "{\"seq\":".into(),
        tail: format!(",\"n\":{n}}}"),
        series: None,
    };
    engine.handle(
        node,
        now_us,
        EngineRequest::Append {
            call: CallId(n),
            room: room(),
            message,
            known: None,
        },
    );
}

fn drain(engine: &mut MemoryEngine) -> Vec<(NodeId, EngineEvent)> {
    std::iter::from_fn(|| engine.poll_event()).collect()
}

#[test]
fn appends_are_numbered_and_streamed_to_followers_before_the_answer() {
    let mut engine = MemoryEngine::new(BOUNDS, "e".into(), 1_000_000);
    engine.handle(
        1,
        0,
        EngineRequest::Interest {
            room: room(),
            on: true,
        },
    );
    append(&mut engine, 2, 5, 7);
    let events = drain(&mut engine);
    assert_eq!(events.len(), 2);
    let (to, EngineEvent::Live(live)) = &events[0] else {
        panic!("live first: {events:?}")
    };
    assert_eq!((*to, live.seq, &*live.epoch), (1, 1, "e-1"));
    assert_eq!(live.frame.as_str(), "{\"seq\":1,\"n\":7}");
    let (
        to,
        EngineEvent::Appended {
            call,
            result,
            peer_members,
        },
    ) = &events[1]
    else {
        panic!("then the answer: {events:?}")
    };
    // One engine, one core per node: no other shards' members.
    assert_eq!((*to, *call, *peer_members), (2, CallId(7), 0));
    assert_eq!(result.as_ref().unwrap().frame, live.frame);
    engine.invariants().unwrap();
}

#[test]
fn reads_cover_within_history_and_rooms_die_with_it() {
    let mut engine = MemoryEngine::new(BOUNDS, "e".into(), 1_000_000);
    for n in 1..=5 {
        append(&mut engine, 0, n * 10, n);
    }
    drain(&mut engine);
    let read_after = |engine: &mut MemoryEngine, seq| {
        let after = Position {
            epoch: "e-1".into(),
            seq,
        };
        engine.handle(
            0,
            60,
            EngineRequest::Read {
                call: CallId(0),
                room: room(),
                after: Some(after.clone()),
                limit: 10,
                known: None,
            },
        );
        match drain(engine).pop() {
            Some((_, EngineEvent::Read { result: Ok(r), .. })) => (r.covers(&after), r),
            other => panic!("{other:?}"),
        }
    };
    let (covered, result) = read_after(&mut engine, 2);
    assert!(covered);
    assert_eq!(result.top, 5);
    assert_eq!(result.frames.len(), 3);
    let (covered, _) = read_after(&mut engine, 1);
    assert!(!covered, "seq 2 left the history");
    engine.invariants().unwrap();
    // Nobody follows it: it lives until its newest message ages out.
    assert_eq!(engine.poll_timeout(), Some(1_050));
    engine.on_timeout(1_050);
    assert_eq!(engine.room_count(), 0);
    append(&mut engine, 0, 2_000, 9);
    match drain(&mut engine).pop() {
        Some((_, EngineEvent::Appended { result: Ok(n), .. })) => {
            assert_eq!((&*n.epoch, n.seq), ("e-2", 1), "a new lifetime")
        }
        other => panic!("{other:?}"),
    }
    engine.invariants().unwrap();
}

#[test]
fn losing_everything_starts_new_epochs() {
    let mut engine = MemoryEngine::new(BOUNDS, "e".into(), 1_000_000);
    append(&mut engine, 0, 0, 1);
    engine.handle(
        3,
        0,
        EngineRequest::Interest {
            room: room(),
            on: true,
        },
    );
    engine.lose_everything();
    drain(&mut engine);
    append(&mut engine, 0, 1, 2);
    match drain(&mut engine).pop() {
        Some((_, EngineEvent::Appended { result: Ok(n), .. })) => {
            assert_eq!((&*n.epoch, n.seq), ("e-2", 1))
        }
        other => panic!("{other:?}"),
    }
    engine.invariants().unwrap();
}

#[test]
fn presence_lists_every_node_and_forgets_a_silent_one() {
    let mut engine = MemoryEngine::new(BOUNDS, "e".into(), 1_000);
    let entry = |n: u128, user: &str| PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: Some(user.to_owned()),
    };
    let add = |engine: &mut MemoryEngine, node, now_us, entry| {
        let request = EngineRequest::PresenceAdd {
            room: room(),
            entry,
        };
        engine.handle(node, now_us, request);
    };
    add(&mut engine, 1, 0, entry(1, "alice"));
    add(&mut engine, 2, 0, entry(2, "bob"));
    let list = |engine: &mut MemoryEngine, now_us| {
        let request = EngineRequest::PresenceList {
            call: CallId(1),
            room: room(),
        };
        engine.handle(1, now_us, request);
        match drain(engine).pop() {
            Some((
                1,
                EngineEvent::Presence {
                    result: Ok(entries),
                    ..
                },
            )) => entries,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        list(&mut engine, 10),
        vec![entry(1, "alice"), entry(2, "bob")]
    );
    // Node 1 keeps talking; node 2 falls silent and expires.
    engine.handle(1, 900, EngineRequest::PresenceRefresh);
    engine.on_timeout(1_000);
    assert_eq!(list(&mut engine, 1_000), vec![entry(1, "alice")]);
    engine.handle(
        1,
        1_001,
        EngineRequest::PresenceRemove {
            room: room(),
            conn: ConnectionId::from_u128(1),
        },
    );
    assert_eq!(engine.presence_count(), 0);
    engine.invariants().unwrap();
}

fn interest(engine: &mut MemoryEngine, node: NodeId, name: &str, on: bool) {
    let room = RoomName::new(name).unwrap();
    engine.handle(node, 0, EngineRequest::Interest { room, on });
}

fn read_of(engine: &mut MemoryEngine, node: NodeId, name: &str) -> bool {
    let room = RoomName::new(name).unwrap();
    let request = EngineRequest::Read {
        call: CallId(99),
        room,
        after: None,
        limit: 10,
        known: None,
    };
    engine.handle(node, 0, request);
    match drain(engine).pop() {
        Some((_, EngineEvent::Read { result, .. })) => result.is_ok(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_interest_fails_the_nodes_reads_until_it_is_turned_off() {
    let bounds = HistoryBounds {
        rooms_max: 1,
        ..BOUNDS
    };
    let mut engine = MemoryEngine::new(bounds, "e".into(), 1_000_000);
    interest(&mut engine, 1, "a", true);
    interest(&mut engine, 2, "b", true); // refused: "a" is in use
    assert_eq!(engine.room_count(), 1);
    engine.invariants().unwrap();
    interest(&mut engine, 1, "a", false); // room for "b" now...
    assert!(
        !read_of(&mut engine, 2, "b"),
        "...but node 2 does not follow it: its read fails"
    );
    interest(&mut engine, 2, "b", false);
    interest(&mut engine, 2, "b", true);
    assert!(read_of(&mut engine, 2, "b"), "asked again: followed");
    engine.invariants().unwrap();
}

#[test]
fn the_byte_budget_is_kept_across_rooms_and_reset_by_data_loss() {
    let mut engine = MemoryEngine::new(BOUNDS, "e".into(), 1_000_000);
    append(&mut engine, 0, 1, 1);
    let frame = engine.history_bytes();
    let bounds = HistoryBounds {
        bytes_max: 2 * frame,
        ..BOUNDS
    };
    let mut engine = MemoryEngine::new(bounds, "e".into(), 1_000_000);
    interest(&mut engine, 0, "r", true);
    for n in 1..=3 {
        append(&mut engine, 0, n, n);
        assert!(engine.history_bytes() <= 2 * frame);
        engine.invariants().unwrap();
    }
    assert_eq!(engine.history_bytes(), 2 * frame);
    engine.lose_everything();
    assert_eq!(engine.history_bytes(), 0);
    engine.invariants().unwrap();
}

/// An engine telling the presence changes of rooms under `team:`.
fn telling_changes() -> MemoryEngine {
    let rooms = RoomOptions {
        presence_diff_prefixes: vec!["team:".into()],
        ..RoomOptions::default()
    };
    MemoryEngine::new(BOUNDS, "e".into(), 1_000).with_presence_changes(rooms)
}

fn member(n: u128) -> PresenceEntry {
    PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: Some(format!("u{n}")),
    }
}

fn add_member(engine: &mut MemoryEngine, node: NodeId, now_us: u64, name: &str, n: u128) {
    let room = RoomName::new(name).unwrap();
    let entry = member(n);
    engine.handle(node, now_us, EngineRequest::PresenceAdd { room, entry });
}

fn remove_member(engine: &mut MemoryEngine, node: NodeId, name: &str, n: u128) {
    let room = RoomName::new(name).unwrap();
    let conn = ConnectionId::from_u128(n);
    engine.handle(node, 0, EngineRequest::PresenceRemove { room, conn });
}

/// One `PresenceChanged` as `(node, room, joined, left, count)`.
type Change = (NodeId, String, Vec<u128>, Vec<u128>, usize);

/// Every event so far, each a `PresenceChanged`; panics on any other.
fn changes(engine: &mut MemoryEngine) -> Vec<Change> {
    let ids = |entries: Vec<PresenceEntry>| entries.iter().map(|e| e.conn.0.as_u128()).collect();
    drain(engine)
        .into_iter()
        .map(|(node, event)| match event {
            EngineEvent::PresenceChanged {
                room,
                joined,
                left,
                connections,
            } => (node, room.to_string(), ids(joined), ids(left), connections),
            other => panic!("only presence changes expected: {other:?}"),
        })
        .collect()
}

#[test]
fn presence_changes_reach_every_follower_once_in_order_with_the_count_after_them() {
    let mut engine = telling_changes();
    interest(&mut engine, 1, "team:x", true);
    interest(&mut engine, 2, "team:x", true);
    interest(&mut engine, 3, "team:y", true); // another room: hears nothing of x
    add_member(&mut engine, 1, 0, "team:x", 10);
    add_member(&mut engine, 2, 0, "team:x", 20);
    add_member(&mut engine, 2, 0, "team:x", 20); // the same entry again: no change
    remove_member(&mut engine, 1, "team:x", 10);
    remove_member(&mut engine, 1, "team:x", 10); // gone already: no change
    let x = || "team:x".to_owned();
    assert_eq!(
        changes(&mut engine),
        vec![
            (1, x(), vec![10], vec![], 1),
            (2, x(), vec![10], vec![], 1),
            (1, x(), vec![20], vec![], 2),
            (2, x(), vec![20], vec![], 2),
            (1, x(), vec![], vec![10], 1),
            (2, x(), vec![], vec![10], 1),
        ]
    );
    // A node that stops following hears no more of the room.
    interest(&mut engine, 1, "team:x", false);
    add_member(&mut engine, 2, 0, "team:x", 21);
    assert_eq!(changes(&mut engine), vec![(2, x(), vec![21], vec![], 2)]);
    engine.invariants().unwrap();
}

#[test]
fn a_clear_and_an_expiry_are_one_change_per_room() {
    let mut engine = telling_changes();
    for node in [1, 2] {
        interest(&mut engine, node, "team:x", true);
        interest(&mut engine, node, "team:y", true);
    }
    add_member(&mut engine, 1, 0, "team:x", 10);
    add_member(&mut engine, 1, 0, "team:x", 11);
    add_member(&mut engine, 1, 0, "team:y", 10);
    add_member(&mut engine, 2, 500, "team:x", 20);
    drain(&mut engine);
    // Node 1 shuts down: its entries go, each room's in one change.
    engine.handle(1, 600, EngineRequest::PresenceClear);
    let (x, y) = ("team:x".to_owned(), "team:y".to_owned());
    assert_eq!(
        changes(&mut engine),
        vec![
            (1, x.clone(), vec![], vec![10, 11], 1),
            (2, x.clone(), vec![], vec![10, 11], 1),
            (1, y.clone(), vec![], vec![10], 0),
            (2, y.clone(), vec![], vec![10], 0),
        ]
    );
    // Node 2 falls silent past the time-to-live: its entries expire.
    engine.on_timeout(1_499);
    assert!(changes(&mut engine).is_empty(), "not due yet");
    engine.on_timeout(1_500);
    assert_eq!(
        changes(&mut engine),
        vec![
            (1, x.clone(), vec![], vec![20], 0),
            (2, x, vec![], vec![20], 0)
        ]
    );
    engine.invariants().unwrap();
}

#[test]
fn presence_changes_are_told_only_when_asked_and_only_for_rooms_with_diffs() {
    let mut plain = MemoryEngine::new(BOUNDS, "e".into(), 1_000);
    interest(&mut plain, 1, "team:x", true);
    add_member(&mut plain, 1, 0, "team:x", 10);
    remove_member(&mut plain, 1, "team:x", 10);
    assert!(drain(&mut plain).is_empty(), "not asked: none");
    let mut engine = telling_changes();
    interest(&mut engine, 1, "lobby", true);
    add_member(&mut engine, 1, 0, "lobby", 10);
    engine.handle(1, 0, EngineRequest::PresenceClear);
    assert!(drain(&mut engine).is_empty(), "no diffs in lobby: none");
    // A room with diffs that nobody follows: nobody to tell.
    add_member(&mut engine, 1, 0, "team:z", 11);
    assert!(drain(&mut engine).is_empty());
    engine.invariants().unwrap();
}
