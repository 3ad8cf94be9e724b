//! Presence diffs built from the engine's presence changes
//! (`CoreConfig::presence_diffs_from_engine`, set when the engine is shared
//! by several nodes): the core is driven directly, its engine requests are
//! answered by an in-memory engine, and `PresenceChanged` events are
//! planted as a shared engine would send them.

use roomcast_core::engine::{EngineError, EngineEvent, EngineRequest, PresenceEntry};
use roomcast_core::{ConnectionId, CoreConfig, Input, Limits, RoomName, RoomOptions};
use serde_json::{json, Value};

mod support;

use support::Harness;

fn team() -> RoomName {
    RoomName::new("team:x").unwrap()
}

fn entry(n: u128) -> PresenceEntry {
    PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: Some(format!("u{n}")),
    }
}

fn changed(joined: &[u128], left: &[u128], connections: usize) -> EngineEvent {
    EngineEvent::PresenceChanged {
        room: team(),
        joined: joined.iter().map(|&n| entry(n)).collect(),
        left: left.iter().map(|&n| entry(n)).collect(),
        connections,
    }
}

/// What only these tests need of the harness.
impl Harness {
    fn new(from_engine: bool) -> Harness {
        Harness::with_config(CoreConfig {
            limits: Limits {
                presence_page_max: 3,
                ..Limits::default()
            },
            rooms: RoomOptions {
                presence_diff_prefixes: vec!["team:".into()],
                // One diff per input, as these tests pin (windows:
                // `presence_windows.rs`, engine-driven ones included).
                presence_diff_interval_ms: 0,
                ..RoomOptions::default()
            },
            presence_diffs_from_engine: from_engine,
            ..CoreConfig::default()
        })
    }

    /// Opens connection `n` (user `u<n>`) and joins it to `room`, settled.
    fn member(&mut self, n: u128, room: &str) -> ConnectionId {
        let conn = self.open(n);
        self.text(conn, json!({"action": "join", "data": {"room": room}}));
        self.settle();
        conn
    }

    /// One engine event to the core, then settled.
    fn tell(&mut self, event: EngineEvent) {
        self.feed(event);
        self.settle();
    }

    /// The presence diffs since the last call.
    fn diffs(&mut self) -> Vec<(ConnectionId, Value)> {
        self.sends()
            .into_iter()
            .filter(|(_, f)| f["type"] == "presence_diff")
            .map(|(c, f)| (c, f["data"].clone()))
            .collect()
    }
}

fn conn(n: u128) -> ConnectionId {
    ConnectionId::from_u128(n)
}

#[test]
fn local_joins_and_leaves_are_told_only_through_the_engine() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    // The echo of member 1's own join: nobody else to tell.
    h.tell(changed(&[1], &[], 1));
    h.member(2, "team:x");
    // Two local joins, and no diff yet: the engine's echo tells them.
    assert_eq!(h.diffs(), vec![]);
    // The echo of member 2's join: member 1 is told, member 2 is not.
    h.tell(changed(&[2], &[], 2));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].0, conn(1));
    assert_eq!(
        diffs[0].1,
        json!({"room": "team:x", "connections": 2,
               "joined": {"connection_id": conn(2).to_string(), "user_id": "u2"}})
    );
    // A member of another node joins: both hear it, with the engine's count.
    h.tell(changed(&[9], &[], 7));
    let diffs = h.diffs();
    assert_eq!(
        diffs.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [conn(1), conn(2)]
    );
    assert!(diffs.iter().all(|(_, d)| d["connections"] == 7));
    // A local leave: no diff until its echo, which tells the one left here.
    h.text(
        conn(2),
        json!({"action": "leave", "data": {"room": "team:x"}}),
    );
    h.settle();
    assert_eq!(h.diffs(), vec![]);
    h.tell(changed(&[], &[2], 6));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0].0, conn(1));
    assert_eq!(diffs[0].1["left"]["user_id"], "u2");
    assert_eq!(diffs[0].1["connections"], 6);
}

#[test]
fn a_change_is_one_diff_listing_lists_and_truncated_beyond_the_page() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.member(2, "team:x");
    h.tell(changed(&[1, 2], &[], 2)); // their echoes
    h.diffs();
    // Several changes in one event: one diff with lists. A member the
    // change lists (here: one whose entry expired while it is still
    // connected) hears the rest, never about itself.
    h.tell(changed(&[7, 8], &[2], 4));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 2, "{diffs:?}");
    let ids = |list: &Value| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["user_id"].clone())
            .collect()
    };
    assert_eq!(diffs[0].0, conn(1));
    assert_eq!(ids(&diffs[0].1["joined"]), [json!("u7"), json!("u8")]);
    assert_eq!(ids(&diffs[0].1["left"]), [json!("u2")]);
    assert_eq!(diffs[1].0, conn(2));
    assert_eq!(ids(&diffs[1].1["joined"]), [json!("u7"), json!("u8")]);
    assert_eq!(ids(&diffs[1].1["left"]), Vec::<Value>::new());
    // Its own join's echo merged with another node's join: the joiner is
    // told of the other (its join reply went out before either).
    h.member(3, "team:x");
    h.sends();
    h.tell(changed(&[3, 9], &[], 5));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 3, "{diffs:?}");
    assert_eq!(diffs[2].0, conn(3));
    assert_eq!(diffs[2].1["joined"]["user_id"], "u9", "{diffs:?}");
    assert_eq!(diffs[2].1["connections"], 5);
    // Beyond presence_page_max (3 here): counts and truncated.
    h.tell(changed(&[], &[10, 11, 12, 13, 14], 2));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 3);
    assert_eq!(
        diffs[0].1,
        json!({"room": "team:x", "connections": 2, "joined_count": 0, "left_count": 5, "truncated": true})
    );
}

#[test]
fn a_joiner_hears_no_change_before_the_echo_of_its_own_add() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.tell(changed(&[1], &[], 1));
    h.member(2, "team:x");
    h.sends();
    // A change the engine applied before member 2's add (told late): no
    // news to member 2, whose count would otherwise stay without itself
    // (it never hears its own join).
    h.tell(changed(&[9], &[], 2));
    let diffs = h.diffs();
    assert_eq!(diffs.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [conn(1)]);
    // Its echo: member 1 hears it; from now on member 2 hears every change.
    h.tell(changed(&[2], &[], 3));
    let diffs = h.diffs();
    assert_eq!(diffs.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [conn(1)]);
    assert_eq!(diffs[0].1["connections"], 3);
    h.tell(changed(&[], &[9], 2));
    let diffs = h.diffs();
    assert_eq!(
        diffs.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [conn(1), conn(2)]
    );
    // A stream reset may have lost an echo: the joiner waiting for one
    // hears changes again after it.
    h.member(3, "team:x");
    h.sends();
    h.tell(EngineEvent::StreamReset);
    h.diffs();
    h.tell(changed(&[8], &[], 4));
    let told: Vec<ConnectionId> = h.diffs().into_iter().map(|(c, _)| c).collect();
    assert_eq!(told, [conn(1), conn(2), conn(3)]);
}

#[test]
fn changes_of_rooms_without_diffs_or_members_here_are_ignored() {
    let mut h = Harness::new(true);
    h.member(1, "plain");
    h.tell(EngineEvent::PresenceChanged {
        room: RoomName::new("plain").unwrap(),
        joined: vec![entry(5)],
        left: Vec::new(),
        connections: 2,
    });
    // A diff room this node has no member in.
    h.tell(changed(&[5], &[], 1));
    assert_eq!(h.diffs(), vec![]);
}

#[test]
fn with_diffs_from_this_node_engine_changes_are_ignored() {
    let mut h = Harness::new(false);
    h.member(1, "team:x");
    h.member(2, "team:x");
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 1, "the local join is told at once");
    assert_eq!(diffs[0].1["connections"], 2);
    h.tell(changed(&[9], &[], 3));
    assert_eq!(h.diffs(), vec![]);
}

#[test]
fn shutdown_clears_presence_in_one_request_and_tells_nothing() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.member(2, "team:x");
    h.member(3, "plain");
    h.sends();
    assert_eq!(h.engine.presence_count(), 3);
    h.core.handle(h.now(), Input::Shutdown);
    let requests: Vec<EngineRequest> = std::iter::from_fn(|| h.core.poll_engine()).collect();
    let presence: Vec<&EngineRequest> = requests
        .iter()
        .filter(|r| {
            matches!(
                r,
                EngineRequest::PresenceClear | EngineRequest::PresenceRemove { .. }
            )
        })
        .collect();
    assert_eq!(presence, [&EngineRequest::PresenceClear]);
    for request in requests {
        h.engine.handle(0, h.now_us, request);
    }
    assert_eq!(h.engine.presence_count(), 0);
    // The engine's echo of the clear arrives during the shutdown: no diff.
    h.tell(changed(&[], &[1, 2], 0));
    assert!(h.diffs().is_empty());
    // A second shutdown sends nothing more.
    h.core.handle(h.now(), Input::Shutdown);
    assert_eq!(h.core.poll_engine(), None);
}

#[test]
fn after_a_stream_reset_members_are_told_to_ask_again() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.member(2, "plain");
    h.sends();
    h.core
        .handle(h.now(), Input::Engine(EngineEvent::StreamReset));
    h.settle_with(true);
    // One list, of the room with diffs.
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, room }] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    assert_eq!(*room, team());
    // It fails: nothing yet; the room's next stream check lists it again.
    h.tell(EngineEvent::Presence {
        call: *call,
        result: Err(EngineError::Unavailable("down".into())),
    });
    assert!(h.diffs().is_empty());
    h.now_us += Limits::default().stream_check_interval_ms * 1000 + 1;
    h.core.handle(h.now(), Input::Timeout);
    h.settle_with(true);
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, .. }] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    h.tell(EngineEvent::Presence {
        call: *call,
        result: Ok(vec![entry(1), entry(40), entry(41)]),
    });
    let diffs = h.diffs();
    assert_eq!(
        diffs,
        vec![(
            conn(1),
            json!({"room": "team:x", "connections": 3, "truncated": true})
        )]
    );
    // Told once: the next check lists nothing.
    h.now_us += Limits::default().stream_check_interval_ms * 1000 + 1;
    h.core.handle(h.now(), Input::Timeout);
    h.settle_with(true);
    assert!(h.kept.is_empty(), "{:?}", h.kept);
    assert!(h.diffs().is_empty());
}

/// A stream reset while a member's own add is not echoed yet: a list
/// that does not show it yet tells it nothing (its echo, after the list,
/// starts its view, with a count that includes it); one that shows it
/// stands for the echo the reset may have lost.
#[test]
fn a_reset_before_a_joiners_echo_leaves_it_waiting_for_the_echo() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.tell(changed(&[1], &[], 1));
    h.member(2, "team:x");
    h.sends();
    h.core
        .handle(h.now(), Input::Engine(EngineEvent::StreamReset));
    h.settle_with(true);
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, .. }] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    // The list was taken before member 2's add was applied.
    h.tell(EngineEvent::Presence {
        call: *call,
        result: Ok(vec![entry(1)]),
    });
    assert_eq!(
        h.diffs(),
        vec![(
            conn(1),
            json!({"room": "team:x", "connections": 1, "truncated": true})
        )],
        "member 2 is not told a count without itself"
    );
    // Its echo: member 1 hears of it; member 2's view starts after it.
    h.tell(changed(&[2], &[], 2));
    let diffs = h.diffs();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(
        (diffs[0].0, &diffs[0].1["connections"]),
        (conn(1), &json!(2))
    );
    h.tell(changed(&[9], &[], 3));
    assert_eq!(h.diffs().len(), 2, "both members hear the next change");

    // A list that shows the joiner's add stands for its (lost) echo.
    h.member(3, "team:x");
    h.sends();
    h.core
        .handle(h.now(), Input::Engine(EngineEvent::StreamReset));
    h.settle_with(true);
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, .. }] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    h.tell(EngineEvent::Presence {
        call: *call,
        result: Ok(vec![entry(1), entry(2), entry(3), entry(9)]),
    });
    let told: Vec<ConnectionId> = h.diffs().into_iter().map(|(c, _)| c).collect();
    assert_eq!(told, [conn(1), conn(2), conn(3)]);
    h.tell(changed(&[10], &[], 5));
    assert_eq!(h.diffs().len(), 3, "member 3 hears changes from here on");
}

/// A change told while the list after a reset is in flight: the list's
/// count may be older (answers are not ordered with changes), so it is
/// not told; the room is listed again and that list's count is.
#[test]
fn a_list_that_a_change_overtook_is_asked_again() {
    let mut h = Harness::new(true);
    h.member(1, "team:x");
    h.tell(changed(&[1], &[], 1));
    h.sends();
    h.core
        .handle(h.now(), Input::Engine(EngineEvent::StreamReset));
    h.settle_with(true);
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, .. }] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    // Another node's member joins; its change is told before the list
    // (taken before the join) answers.
    h.feed(changed(&[9], &[], 2));
    assert_eq!(h.diffs().len(), 1);
    h.feed(EngineEvent::Presence {
        call: *call,
        result: Ok(vec![entry(1)]),
    });
    assert!(h.diffs().is_empty(), "the older count is not told last");
    h.settle_with(true);
    let kept = std::mem::take(&mut h.kept);
    let [EngineRequest::PresenceList { call, .. }] = kept.as_slice() else {
        panic!("listed again at once: {kept:?}")
    };
    h.tell(EngineEvent::Presence {
        call: *call,
        result: Ok(vec![entry(1), entry(9)]),
    });
    assert_eq!(
        h.diffs(),
        vec![(
            conn(1),
            json!({"room": "team:x", "connections": 2, "truncated": true})
        )]
    );
}
