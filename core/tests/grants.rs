//! `granted` rooms: joined by the token's grants (exact or by prefix) or
//! by the join hook's allow, answered through the one check path
//! (`Output::Check` / `Input::CheckDone`) in the connection's reply
//! order; a refresh whose grants no longer cover a joined room leaves it
//! with an `ACCESS_REVOKED` warning.

use roomcast_core::access::AccessRule;
use roomcast_core::{
    AccessRules, Check, CheckAnswer, ConnectionId, CoreConfig, Grants, HookVerdict, Identity,
    Input, Now, Output, RoomAccess, RoomName, Standalone, User,
};
use serde_json::Value;

const ALICE: ConnectionId = ConnectionId::from_u128(1);
const BOB: ConnectionId = ConnectionId::from_u128(2);

fn core(join_hook: bool) -> Standalone {
    Standalone::new(CoreConfig {
        access: AccessRules {
            rules: vec![AccessRule {
                prefix: "team:".into(),
                access: RoomAccess::Granted,
            }],
            default: RoomAccess::Public,
        },
        join_hook,
        ..CoreConfig::default()
    })
}

fn user(id: &str, rooms: &[&str]) -> User {
    User {
        id: id.into(),
        scopes: Vec::new(),
        expires_unix_ms: None,
        grants: Grants::parse(rooms.iter().copied()).unwrap(),
    }
}

fn open(core: &mut Standalone, conn: ConnectionId, identity: Identity) {
    core.handle(Now::default(), Input::Open { conn, identity });
    drain(core);
}

fn text(core: &mut Standalone, conn: ConnectionId, text: &str) -> Vec<Output> {
    core.handle(Now::default(), Input::Text { conn, text });
    drain(core)
}

fn answer(core: &mut Standalone, conn: ConnectionId, answer: CheckAnswer) -> Vec<Output> {
    core.handle(Now::default(), Input::CheckDone { conn, answer });
    drain(core)
}

fn drain(core: &mut Standalone) -> Vec<Output> {
    let mut outs = Vec::new();
    while let Some(output) = core.poll_output() {
        outs.push(output);
    }
    core.check_invariants().unwrap();
    outs
}

/// The JSON frames sent to `conn`, in order.
fn frames(outs: &[Output], conn: ConnectionId) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame } if *c == conn => {
                Some(serde_json::from_str(frame.as_str()).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn join(room: &str, id: u32) -> String {
    format!(r#"{{"action":"join","room":"{room}","id":{id}}}"#)
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).unwrap()
}

fn kind_and_code(frame: &Value) -> (String, String) {
    (
        frame["type"].as_str().unwrap_or_default().to_owned(),
        frame["data"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
fn grants_admit_exact_rooms_and_prefixes_and_nothing_else() {
    let mut core = core(false);
    open(
        &mut core,
        ALICE,
        Identity::User(user("alice", &["team:42", "team:7*"])),
    );
    open(&mut core, BOB, Identity::Anonymous);
    for (room, joined) in [
        ("team:42", true),
        ("team:7", true),
        ("team:7-ops", true),
        ("team:420", false),
        ("team:4", false),
        ("lobby", true),
    ] {
        let outs = text(&mut core, ALICE, &join(room, 1));
        let reply = &frames(&outs, ALICE)[0];
        if joined {
            assert_eq!(reply["type"], "system_info", "{room}: {reply}");
        } else {
            assert_eq!(kind_and_code(reply).1, "FORBIDDEN", "{room}: {reply}");
        }
    }
    // Anonymous connections have no grants; without a join hook, no check.
    let outs = text(&mut core, BOB, &join("team:42", 2));
    assert_eq!(kind_and_code(&frames(&outs, BOB)[0]).1, "FORBIDDEN");
    assert!(!outs.iter().any(|o| matches!(o, Output::Check { .. })));
}

#[test]
fn the_join_hook_decides_uncovered_rooms_in_reply_order() {
    for (verdict, expected) in [
        (HookVerdict::Allow, ("system_info", "")),
        (HookVerdict::Deny, ("error", "FORBIDDEN")),
        (HookVerdict::Unavailable, ("error", "HOOK_UNAVAILABLE")),
    ] {
        let mut core = core(true);
        open(&mut core, ALICE, Identity::User(user("alice", &["team:1"])));
        open(&mut core, BOB, Identity::Anonymous);
        // Covered by the grants: no check.
        let outs = text(&mut core, ALICE, &join("team:1", 1));
        assert_eq!(frames(&outs, ALICE)[0]["type"], "system_info");
        // Not covered: asked of the hook, with the user.
        let outs = text(&mut core, ALICE, &join("team:9", 2));
        assert_eq!(
            outs,
            vec![Output::Check {
                conn: ALICE,
                check: Check::Join {
                    room: room("team:9"),
                    user: Some("alice".into()),
                },
            }]
        );
        // The next message waits behind the join; other connections do not.
        assert!(text(&mut core, ALICE, r#"{"action":"ping","id":3}"#).is_empty());
        let outs = text(&mut core, BOB, r#"{"action":"ping","id":4}"#);
        assert_eq!(frames(&outs, BOB)[0]["type"], "pong");
        let outs = answer(&mut core, ALICE, CheckAnswer::Join(verdict.clone()));
        let replies = frames(&outs, ALICE);
        assert_eq!(replies.len(), 2, "{verdict:?}: {replies:?}");
        let (kind, code) = kind_and_code(&replies[0]);
        assert_eq!((kind.as_str(), code.as_str()), expected, "{verdict:?}");
        assert_eq!(replies[0]["id"], 2);
        assert_eq!(replies[1]["type"], "pong");
        assert_eq!(replies[1]["id"], 3);
        let members = core.member_count(&room("team:9"));
        assert_eq!(members, usize::from(verdict == HookVerdict::Allow));
        assert!(core.core().is_open(ALICE));
    }
}

#[test]
fn a_connection_in_too_many_rooms_is_not_asked_about() {
    let mut core = Standalone::new(CoreConfig {
        limits: roomcast_core::Limits {
            rooms_per_connection_max: 1,
            ..roomcast_core::Limits::default()
        },
        ..core(true).config().clone()
    });
    open(&mut core, ALICE, Identity::User(user("alice", &[])));
    text(&mut core, ALICE, &join("lobby", 1));
    let outs = text(&mut core, ALICE, &join("team:9", 2));
    assert_eq!(kind_and_code(&frames(&outs, ALICE)[0]).1, "TOO_MANY_ROOMS");
    assert!(!outs.iter().any(|o| matches!(o, Output::Check { .. })));
}

#[test]
fn anonymous_connections_are_asked_about_with_no_user() {
    let mut core = core(true);
    open(&mut core, BOB, Identity::Anonymous);
    let outs = text(&mut core, BOB, &join("team:9", 1));
    assert_eq!(
        outs,
        vec![Output::Check {
            conn: BOB,
            check: Check::Join {
                room: room("team:9"),
                user: None,
            },
        }]
    );
}

#[test]
fn an_answer_for_a_connection_closed_meanwhile_is_ignored() {
    let mut core = core(true);
    open(&mut core, ALICE, Identity::User(user("alice", &[])));
    text(&mut core, ALICE, &join("team:9", 1));
    core.handle(Now::default(), Input::Closed { conn: ALICE });
    drain(&mut core);
    let outs = answer(&mut core, ALICE, CheckAnswer::Join(HookVerdict::Allow));
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(core.member_count(&room("team:9")), 0);
}

#[test]
fn a_refresh_that_drops_a_grant_leaves_the_room_with_a_warning() {
    let mut core = core(true);
    open(
        &mut core,
        ALICE,
        Identity::User(user("alice", &["team:1", "team:2"])),
    );
    open(&mut core, BOB, Identity::User(user("bob", &["team:*"])));
    text(&mut core, ALICE, &join("team:1", 1));
    text(&mut core, ALICE, &join("team:2", 2));
    text(&mut core, BOB, &join("team:2", 3));
    // team:9 was allowed by the hook, not by the token: a refresh keeps it.
    text(&mut core, ALICE, &join("team:9", 4));
    answer(&mut core, ALICE, CheckAnswer::Join(HookVerdict::Allow));
    assert_eq!(core.member_count(&room("team:2")), 2);

    let outs = text(
        &mut core,
        ALICE,
        r#"{"action":"refresh","data":{"token":"t"},"id":"r"}"#,
    );
    assert!(matches!(
        outs.as_slice(),
        [Output::Check {
            check: Check::Token { .. },
            ..
        }]
    ));
    let outs = answer(
        &mut core,
        ALICE,
        CheckAnswer::Token(Ok(user("alice", &["team:1"]))),
    );
    let replies = frames(&outs, ALICE);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["type"], "system_info");
    assert_eq!(replies[0]["id"], "r");
    assert_eq!(
        kind_and_code(&replies[1]),
        ("system_warning".into(), "ACCESS_REVOKED".into())
    );
    assert_eq!(replies[1]["data"]["room"], "team:2");
    assert_eq!(core.member_count(&room("team:1")), 1);
    assert_eq!(core.member_count(&room("team:2")), 1);
    assert_eq!(core.member_count(&room("team:9")), 1);
    // Not a member any more: it may not ask for presence, and may not
    // come back without a grant (the hook is asked again).
    let outs = text(
        &mut core,
        ALICE,
        r#"{"action":"presence","data":{"room":"team:2"},"id":5}"#,
    );
    assert_eq!(kind_and_code(&frames(&outs, ALICE)[0]).1, "FORBIDDEN");
    let outs = text(&mut core, ALICE, &join("team:2", 6));
    assert!(matches!(outs.as_slice(), [Output::Check { .. }]));
}
