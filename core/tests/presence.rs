//! Presence diffs: in rooms configured with `presence_diff_prefixes`,
//! members are told when others join or leave.

use roomcast_core::{
    CloseCode, ConnectionId, CoreConfig, Identity, Input, Now, Output, RoomOptions, Standalone,
};
use serde_json::Value;

/// Presence diffs: members of a configured room hear about joins and leaves
/// (unnumbered messages, outside the room's `seq`); other rooms stay quiet.
#[test]
fn presence_diffs_tell_members_who_joined_and_left() {
    let rooms = RoomOptions {
        presence_diff_prefixes: vec!["team:".into()],
        // One diff per input: what these tests pin (windows that merge
        // several inputs' changes: `presence_windows.rs`).
        presence_diff_interval_ms: 0,
        ..RoomOptions::default()
    };
    let mut core = Standalone::new(CoreConfig {
        rooms,
        ..CoreConfig::default()
    });
    let now = Now::default();
    let (a, b) = (ConnectionId::from_u128(1), ConnectionId::from_u128(2));
    let bob = roomcast_core::User {
        id: "bob".into(),
        scopes: Vec::new(),
        expires_unix_ms: None,
        grants: roomcast_core::Grants::none(),
    };
    core.handle(
        now,
        Input::Open {
            conn: a,
            identity: Identity::Anonymous,
        },
    );
    core.handle(
        now,
        Input::Open {
            conn: b,
            identity: Identity::User(bob),
        },
    );
    for conn in [a, b] {
        core.handle(
            now,
            Input::Text {
                conn,
                text: r#"{"action":"join","room":"other"}"#,
            },
        );
    }
    core.handle(
        now,
        Input::Text {
            conn: a,
            text: r#"{"action":"join","room":"team:x"}"#,
        },
    );
    while core.poll_output().is_some() {}
    let diffs = |core: &mut Standalone| -> Vec<(ConnectionId, Value)> {
        let mut out = Vec::new();
        while let Some(output) = core.poll_output() {
            if let Output::Send { conn, frame } = output {
                let v: Value = serde_json::from_str(frame.as_str()).unwrap();
                if v["type"] == "presence_diff" {
                    out.push((conn, v));
                }
            }
        }
        out
    };
    core.handle(
        now,
        Input::Text {
            conn: b,
            text: r#"{"action":"join","room":"team:x"}"#,
        },
    );
    let joined = diffs(&mut core);
    assert_eq!(joined.len(), 1, "only a hears, not b itself: {joined:?}");
    assert_eq!(joined[0].0, a);
    assert_eq!(joined[0].1["data"]["joined"]["user_id"], "bob");
    assert_eq!(joined[0].1["data"]["connections"], 2);
    assert!(joined[0].1.get("seq").is_none(), "diffs are not numbered");
    core.handle(now, Input::Closed { conn: b });
    let left = diffs(&mut core);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1["data"]["left"]["connection_id"], b.to_string());
    assert_eq!(left[0].1["data"]["connections"], 1);
    // Rooms without the prefix never send diffs.
    core.handle(
        now,
        Input::Text {
            conn: a,
            text: r#"{"action":"leave","room":"other"}"#,
        },
    );
    assert!(diffs(&mut core).is_empty());
    core.check_invariants().unwrap();
}

/// A presence room of `n` anonymous members (ids 1..=n) plus a bystander
/// (id 0, also a member), with pings at 25 s and idle closes at 60 s.
fn presence_room(n: u128) -> Standalone {
    let rooms = RoomOptions {
        presence_diff_prefixes: vec!["team:".into()],
        // One diff per input: what these tests pin (windows that merge
        // several inputs' changes: `presence_windows.rs`).
        presence_diff_interval_ms: 0,
        ..RoomOptions::default()
    };
    let mut core = Standalone::new(CoreConfig {
        rooms,
        ..CoreConfig::default()
    });
    let now = Now::default();
    for id in 0..=n {
        let conn = ConnectionId::from_u128(id);
        core.handle(
            now,
            Input::Open {
                conn,
                identity: Identity::Anonymous,
            },
        );
        core.handle(
            now,
            Input::Text {
                conn,
                text: r#"{"action":"join","room":"team:x"}"#,
            },
        );
        // Everything so far was read (joining a presence room tells everyone).
        let mut written: std::collections::BTreeMap<ConnectionId, usize> = Default::default();
        while let Some(output) = core.poll_output() {
            if let Output::Send { conn, frame } = output {
                *written.entry(conn).or_default() += frame.len();
            }
        }
        for (conn, bytes) in written {
            core.handle(now, Input::Written { conn, bytes });
        }
    }
    assert_eq!(
        core.member_count(&roomcast_core::RoomName::new("team:x").unwrap()),
        n as usize + 1
    );
    core
}

fn outputs(core: &mut Standalone) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn diffs_of(outputs: &[Output]) -> Vec<(ConnectionId, Value)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { conn, frame } => {
                let v: Value = serde_json::from_str(frame.as_str()).unwrap();
                (v["type"] == "presence_diff").then_some((*conn, v))
            }
            _ => None,
        })
        .collect()
}

/// Shutdown closes a 2,000-member presence room with one close per member
/// and no diffs (each close used to tell every remaining member: n²/2
/// frames in one input).
#[test]
fn shutting_down_a_big_presence_room_sends_no_diff_storm() {
    let mut core = presence_room(1_999);
    core.handle(Now::default(), Input::Shutdown);
    let out = outputs(&mut core);
    assert!(diffs_of(&out).is_empty(), "no diffs while shutting down");
    assert_eq!(out.len(), 2_000, "one close per member, nothing else");
    assert!(out
        .iter()
        .all(|o| matches!(o, Output::Close { code, .. } if *code == CloseCode::GoingAway)));
    core.check_invariants().unwrap();
}

/// Many heartbeat timeouts firing in one input (a partition) tell each
/// remaining member once, not once per departure; beyond
/// `presence_page_max` changes the diff carries counts and `truncated`.
#[test]
fn a_mass_timeout_sends_one_diff_per_remaining_member() {
    let mut core = presence_room(1_999);
    let bystander = ConnectionId::from_u128(0);
    let at = |s: u64| Now::from_start(0, s * 1_000_000);
    core.handle(at(25), Input::Timeout);
    let pings = outputs(&mut core);
    assert_eq!(pings.len(), 2_000, "everyone is pinged");
    core.handle(at(30), Input::Pong { conn: bystander });
    core.handle(at(60), Input::Timeout);
    let out = outputs(&mut core);
    let closes = out
        .iter()
        .filter(|o| matches!(o, Output::Close { code, .. } if *code == CloseCode::IdleTimeout))
        .count();
    assert_eq!(closes, 1_999);
    let diffs = diffs_of(&out);
    assert_eq!(diffs.len(), 1, "one diff for the one member left");
    assert_eq!(
        out.len(),
        2_001,
        "the closes, that diff and the bystander's ping: O(n) frames"
    );
    let (to, diff) = &diffs[0];
    assert_eq!(*to, bystander);
    let data = &diff["data"];
    assert_eq!(data["connections"], 1);
    assert_eq!(data["left_count"], 1_999);
    assert_eq!(data["joined_count"], 0);
    assert_eq!(data["truncated"], true);
    assert!(data.get("left").is_none() && data.get("joined").is_none());
    core.check_invariants().unwrap();
}

/// A few changes in one input: one diff per remaining member, listing
/// every departure (in connection id order).
#[test]
fn changes_of_one_input_are_coalesced_into_lists() {
    let mut core = presence_room(4);
    let at = |s: u64| Now::from_start(0, s * 1_000_000);
    core.handle(at(25), Input::Timeout);
    outputs(&mut core);
    for conn in [0, 2] {
        core.handle(
            at(30),
            Input::Pong {
                conn: ConnectionId::from_u128(conn),
            },
        );
    }
    core.handle(at(60), Input::Timeout);
    let out = outputs(&mut core);
    let diffs = diffs_of(&out);
    let to: Vec<ConnectionId> = diffs.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        to,
        [ConnectionId::from_u128(0), ConnectionId::from_u128(2)],
        "one diff per remaining member, in id order"
    );
    for (_, diff) in &diffs {
        let data = &diff["data"];
        assert_eq!(data["connections"], 2);
        assert_eq!(data["joined"], serde_json::json!([]));
        let left: Vec<String> = data["left"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["connection_id"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = [1u128, 3, 4]
            .iter()
            .map(|&id| ConnectionId::from_u128(id).to_string())
            .collect();
        assert_eq!(left, expected);
        assert!(data["left"][0]["user_id"].is_null());
        assert!(data.get("truncated").is_none());
    }
    // The diffs sit where the first departure happened: before any close.
    let first_close = out
        .iter()
        .position(|o| matches!(o, Output::Close { .. }))
        .unwrap();
    assert!(first_close > 1, "{out:?}");
    core.check_invariants().unwrap();
}

/// Joins answered by one history read complete in one input: the member
/// already there hears about them in one diff, and each joiner hears about
/// the others in the same diff without itself (a member never hears of
/// itself; one rule for diffs of one input and of a window).
#[test]
fn joins_answered_by_one_read_are_told_in_one_diff() {
    use roomcast_core::engine::memory::MemoryEngine;
    use roomcast_core::standalone::memory_engine;
    use roomcast_core::Core;
    let config = CoreConfig {
        rooms: RoomOptions {
            presence_diff_prefixes: vec!["team:".into()],
            presence_diff_interval_ms: 0,
            ..RoomOptions::default()
        },
        ..CoreConfig::default()
    };
    let mut engine = memory_engine(&config);
    let mut core = Core::new(config);
    let now = Now::default();
    // Hands the core's requests to the engine; returns the engine's answers.
    let ask = |core: &mut Core, engine: &mut MemoryEngine| {
        while let Some(request) = core.poll_engine() {
            engine.handle(0, 0, request);
        }
        std::iter::from_fn(|| engine.poll_event())
            .map(|(_, event)| event)
            .collect::<Vec<_>>()
    };
    let conns: Vec<ConnectionId> = (0..4).map(ConnectionId::from_u128).collect();
    for &conn in &conns {
        let identity = Identity::Anonymous;
        core.handle(now, Input::Open { conn, identity });
    }
    core.handle(
        now,
        Input::Text {
            conn: conns[0],
            text: r#"{"action":"join","room":"team:x"}"#,
        },
    );
    for event in ask(&mut core, &mut engine) {
        core.handle(now, Input::Engine(event));
    }
    while core.poll_output().is_some() {}
    let epoch = "e-1";
    let since = format!(
        r#"{{"action":"join","data":{{"room":"team:x","since":{{"epoch":"{epoch}","seq":0}}}}}}"#
    );
    for &conn in &conns[1..] {
        core.handle(now, Input::Text { conn, text: &since });
    }
    let answers = ask(&mut core, &mut engine);
    assert_eq!(answers.len(), 1, "one read for the three joins");
    for event in answers {
        core.handle(now, Input::Engine(event));
    }
    let out: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    let diffs = diffs_of(&out);
    let to: Vec<ConnectionId> = diffs.iter().map(|(c, _)| *c).collect();
    assert_eq!(to, conns, "one diff per member, in id order");
    let listed = |diff: &Value| -> Vec<String> {
        diff["data"]["joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["connection_id"].as_str().unwrap().to_owned())
            .collect()
    };
    for (to, diff) in &diffs {
        assert_eq!(diff["data"]["connections"], 4);
        assert_eq!(diff["data"]["left"], serde_json::json!([]));
        let expected: Vec<String> = conns[1..]
            .iter()
            .filter(|c| *c != to)
            .map(|c| c.to_string())
            .collect();
        assert_eq!(listed(diff), expected, "{to} hears the others, not itself");
    }
    core.check_invariants().unwrap();
}
