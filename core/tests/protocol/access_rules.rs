//! Section 5: access rules.

use super::*;

#[test]
fn access_rules_public_authenticated_private() {
    let mut h = Harness::new(CoreConfig {
        access: AccessRules {
            rules: vec![
                AccessRule {
                    prefix: "team:".into(),
                    access: RoomAccess::Authenticated,
                },
                AccessRule {
                    prefix: "team:lobby".into(),
                    access: RoomAccess::Public,
                },
                AccessRule {
                    prefix: "user:".into(),
                    access: RoomAccess::PrivateUser,
                },
            ],
            default: RoomAccess::Public,
        },
        ..CoreConfig::default()
    });
    h.open(c(1), anon());
    h.open(c(2), user("alice", &[]));
    let cases = [
        (c(1), "news", true),
        (c(1), "team:dev", false),
        (c(1), "team:lobby-1", true),
        (c(1), "user:alice", false),
        (c(2), "news", true),
        (c(2), "team:dev", true),
        (c(2), "user:alice", true),
        (c(2), "user:bob", false),
    ];
    for (conn, name, allowed) in cases {
        let reply = h.reply(conn, &format!(r#"{{"action":"join","room":"{name}"}}"#));
        if allowed {
            assert_eq!(reply["data"]["message"], format!("Joined room: {name}"));
        } else {
            assert_eq!(error_code(&reply), "FORBIDDEN", "{conn:?} {name}");
        }
    }
    h.finish();
}

#[test]
fn authenticated_only_default() {
    let mut h = Harness::new(CoreConfig {
        access: AccessRules {
            rules: Vec::new(),
            default: RoomAccess::Authenticated,
        },
        ..CoreConfig::default()
    });
    h.open(c(1), anon());
    h.open(c(2), user("bob", &[]));
    assert_eq!(
        error_code(&h.reply(c(1), r#"{"action":"join","room":"downloads"}"#)),
        "FORBIDDEN"
    );
    h.join(c(2), "downloads");
    h.finish();
}
