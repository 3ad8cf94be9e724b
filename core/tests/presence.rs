//! Presence diffs: in rooms configured with `presence_diff_prefixes`,
//! members are told when others join or leave.

use roomcast_core::{
    ConnectionId, CoreConfig, Identity, Input, Now, Output, RoomOptions, Standalone,
};
use serde_json::Value;

/// Presence diffs: members of a configured room hear about joins and leaves
/// (unnumbered messages, outside the room's `seq`); other rooms stay quiet.
#[test]
fn presence_diffs_tell_members_who_joined_and_left() {
    let rooms = RoomOptions {
        presence_diff_prefixes: vec!["team:".into()],
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
