//! Presence diffs throttled per room (`rooms.presence_diff_interval_ms`,
//! docs/protocol.md section 8): the first change of a quiet room is told at
//! once; the changes within the window that follows are told together, as
//! one diff, when the window ends (the core's timer: `poll_timeout`). A
//! join storm so costs one diff per member per window. Diffs from the
//! engine (a cluster) follow the same rule.

use roomcast_core::engine::{EngineEvent, PresenceEntry};
use roomcast_core::{
    ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, RoomName, RoomOptions,
    Standalone,
};
use serde_json::Value;

const WINDOW_MS: u64 = 500;

struct Node {
    core: Standalone,
    now_us: u64,
}

impl Node {
    fn new(from_engine: bool) -> Node {
        Node {
            core: Standalone::new(CoreConfig {
                limits: Limits {
                    presence_page_max: 5,
                    ..Limits::default()
                },
                rooms: RoomOptions {
                    presence_diff_prefixes: vec!["team:".into()],
                    presence_diff_interval_ms: WINDOW_MS,
                    ..RoomOptions::default()
                },
                presence_diffs_from_engine: from_engine,
                ..CoreConfig::default()
            }),
            now_us: 0,
        }
    }

    fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, self.now_us)
    }

    /// Moves the clock to `us`, firing every timer due on the way, as a
    /// shell does with `poll_timeout`.
    fn advance_to(&mut self, us: u64) {
        while let Some(at) = self.core.poll_timeout().filter(|&at| at <= us) {
            self.now_us = self.now_us.max(at);
            self.core.handle(self.now(), Input::Timeout);
        }
        self.now_us = self.now_us.max(us);
    }

    fn open_and_join(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        let identity = Identity::Anonymous;
        self.core.handle(self.now(), Input::Open { conn, identity });
        self.text(conn, r#"{"action":"join","room":"team:x"}"#);
        conn
    }

    fn text(&mut self, conn: ConnectionId, text: &str) {
        self.core.handle(self.now(), Input::Text { conn, text });
    }

    /// The diffs sent since the last call (every frame reported written).
    fn diffs(&mut self) -> Vec<(ConnectionId, Value)> {
        let mut diffs = Vec::new();
        while let Some(output) = self.core.poll_output() {
            if let Output::Send { conn, frame } = output {
                let bytes = frame.len();
                self.core.handle(self.now(), Input::Written { conn, bytes });
                let value: Value = serde_json::from_str(frame.as_str()).unwrap();
                if value["type"] == "presence_diff" {
                    diffs.push((conn, value["data"].clone()));
                }
            }
        }
        self.core.check_invariants().unwrap();
        diffs
    }
}

fn ids(list: &Value) -> Vec<String> {
    match list {
        Value::Array(items) => items
            .iter()
            .map(|w| w["connection_id"].as_str().unwrap().to_owned())
            .collect(),
        Value::Object(_) => vec![list["connection_id"].as_str().unwrap().to_owned()],
        _ => Vec::new(),
    }
}

fn id(n: u128) -> String {
    ConnectionId::from_u128(n).to_string()
}

/// The first change of a quiet room goes out at once; the next ones wait
/// for the window's end (a timer) and go out together, with the room's
/// count then; a member that joined in the window hears the rest, not
/// itself; a join and a leave of one connection in a window cancel out.
#[test]
fn changes_within_a_window_are_told_together_when_it_ends() {
    let mut node = Node::new(false);
    let a = node.open_and_join(1);
    node.diffs();
    let b = node.open_and_join(2);
    let first = node.diffs();
    assert_eq!(first.len(), 1, "a quiet room tells at once: {first:?}");
    assert_eq!((first[0].0, ids(&first[0].1["joined"])), (a, vec![id(2)]));
    let window_end = node.now_us + WINDOW_MS * 1000;
    assert_eq!(
        node.core.poll_timeout(),
        Some(window_end),
        "the window is a timer"
    );

    // Within the window: c and d join, b leaves, e joins and leaves.
    node.now_us += 100_000;
    node.open_and_join(3);
    node.now_us += 100_000;
    node.open_and_join(4);
    node.core.handle(node.now(), Input::Closed { conn: b });
    let e = node.open_and_join(5);
    node.core.handle(node.now(), Input::Closed { conn: e });
    assert!(node.diffs().is_empty(), "nothing before the window ends");

    node.advance_to(window_end - 1);
    assert!(node.diffs().is_empty());
    node.advance_to(window_end);
    let told = node.diffs();
    let to: Vec<ConnectionId> = told.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        to,
        [a, ConnectionId::from_u128(3), ConnectionId::from_u128(4)]
    );
    for (member, diff) in &told {
        assert_eq!(
            diff["connections"], 3,
            "the room's count at the window's end"
        );
        let joined: Vec<String> = [id(3), id(4)]
            .into_iter()
            .filter(|j| *j != member.to_string())
            .collect();
        assert_eq!(ids(&diff["joined"]), joined, "never about itself");
        assert_eq!(ids(&diff["left"]), [id(2)], "e's join and leave cancel out");
    }
    // The diff opened the next window; with no change in it the room is
    // quiet again, and its next change goes out at once.
    node.advance_to(window_end + WINDOW_MS * 1000);
    assert!(node.diffs().is_empty());
    assert_eq!(
        node.core.poll_timeout().map(|at| at > node.now_us),
        Some(true)
    );
    node.now_us += 1;
    node.open_and_join(6);
    assert_eq!(node.diffs().len(), 3, "at once again");
}

/// A join storm: 2,000 joins over 2 s cost one diff per member per window
/// (O(members × windows), not O(members²)), lists beyond
/// `presence_page_max` become counts, and every member's last diff carries
/// the room's final count.
#[test]
fn a_join_storm_costs_one_diff_per_member_per_window() {
    const MEMBERS: u128 = 2_000;
    let mut node = Node::new(false);
    let mut diffs = Vec::new();
    for n in 0..MEMBERS {
        node.advance_to(n as u64 * 1_000);
        node.open_and_join(n);
        diffs.extend(node.diffs());
    }
    node.advance_to(10_000_000);
    diffs.extend(node.diffs());
    let windows = (MEMBERS as u64 * 1_000).div_ceil(WINDOW_MS * 1000) + 1;
    assert!(
        diffs.len() as u64 <= MEMBERS as u64 * windows,
        "{} diffs: more than one per member per window",
        diffs.len()
    );
    let mut last = std::collections::BTreeMap::new();
    for (member, diff) in &diffs {
        if diff.get("truncated").is_some() {
            assert!(diff.get("joined").is_none() && diff["joined_count"].as_u64() > Some(5));
        }
        last.insert(*member, diff["connections"].as_u64().unwrap());
    }
    // Every member heard the end: the last joiners too (they hear the
    // rest of their window's diff).
    assert_eq!(last.len() as u128, MEMBERS);
    assert!(
        last.values().all(|&count| count == MEMBERS as u64),
        "every member's last diff counts the whole room"
    );
}

/// Changes from the engine (a cluster) are throttled the same way; the
/// window's diff carries the engine's latest count.
#[test]
fn engine_changes_are_throttled_alike() {
    let mut node = Node::new(true);
    let a = node.open_and_join(1);
    node.diffs();
    let entry = |n: u128| PresenceEntry {
        conn: ConnectionId::from_u128(n),
        user: None,
    };
    let change = |joined: Vec<PresenceEntry>, left: Vec<PresenceEntry>, connections| {
        Input::Engine(EngineEvent::PresenceChanged {
            room: RoomName::new("team:x").unwrap(),
            joined,
            left,
            connections,
        })
    };
    node.core
        .handle(node.now(), change(vec![entry(1)], vec![], 1));
    assert!(node.diffs().is_empty(), "nothing but a itself");
    node.core
        .handle(node.now(), change(vec![entry(90)], vec![], 2));
    let first = node.diffs();
    assert_eq!(first.len(), 1);
    assert_eq!(ids(&first[0].1["joined"]), [id(90)]);
    node.now_us += 10_000;
    node.core
        .handle(node.now(), change(vec![entry(91)], vec![], 3));
    node.core
        .handle(node.now(), change(vec![], vec![entry(90)], 2));
    node.core
        .handle(node.now(), change(vec![entry(92)], vec![], 3));
    assert!(node.diffs().is_empty(), "within the window");
    node.advance_to(node.now_us + WINDOW_MS * 1000);
    let told = node.diffs();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, a);
    assert_eq!(told[0].1["connections"], 3, "the engine's latest count");
    assert_eq!(ids(&told[0].1["joined"]), [id(91), id(92)]);
    assert_eq!(ids(&told[0].1["left"]), [id(90)]);
}

/// A shutdown forgets the windows: nothing is told, no timer is left.
#[test]
fn a_shutdown_forgets_pending_windows() {
    let mut node = Node::new(false);
    node.open_and_join(1);
    node.open_and_join(2);
    node.open_and_join(3);
    node.diffs();
    assert!(node.core.poll_timeout() < Some(WINDOW_MS * 1000 + 1));
    node.core.handle(node.now(), Input::Shutdown);
    node.advance_to(WINDOW_MS * 1000 * 4);
    assert!(node.diffs().is_empty());
    assert!(
        node.core
            .poll_timeout()
            .is_none_or(|at| at > WINDOW_MS * 1000 * 4),
        "no presence window is left"
    );
}

/// A joiner's own reply comes before any `presence_diff` of that room,
/// also when its join ends an overdue window whose changes (others')
/// go out with it: its copy of that diff follows its join reply.
#[test]
fn a_joiner_hears_no_diff_before_its_join_reply() {
    let mut node = Node::new(false);
    node.open_and_join(1);
    node.open_and_join(2);
    assert_eq!(node.diffs().len(), 1, "a quiet room tells at once");
    let window_end = node.now_us + WINDOW_MS * 1000;
    // c joins within the window: told when it ends.
    node.now_us += 100_000;
    node.open_and_join(3);
    assert!(node.diffs().is_empty());
    // The window's timer is not handled before d's join (the shell was
    // late): the window's changes go out with d's.
    node.now_us = window_end + 1;
    let d = node.open_and_join(4);
    let mut to_d = Vec::new();
    while let Some(output) = node.core.poll_output() {
        if let Output::Send { conn, frame } = output {
            let bytes = frame.len();
            node.core.handle(node.now(), Input::Written { conn, bytes });
            if conn == d {
                let value: Value = serde_json::from_str(frame.as_str()).unwrap();
                to_d.push(value);
            }
        }
    }
    let kinds: Vec<&str> = to_d.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["connected", "system_info", "presence_diff"],
        "{to_d:#?}"
    );
    assert_eq!(to_d[1]["data"]["room"], "team:x", "the join reply");
    assert_eq!(ids(&to_d[2]["data"]["joined"]), [id(3)], "c, not itself");
    node.core.check_invariants().unwrap();
}
