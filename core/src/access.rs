//! Who may do what: connection identities and the room access rules.

use crate::names::{is_encoding_of, RoomName};

/// Who is behind a connection, as established by the shell from its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No token, or an invalid one downgraded to anonymous (the seed's policy).
    Anonymous,
    /// A verified token.
    User(User),
}

impl Identity {
    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&User> {
        match self {
            Identity::Anonymous => None,
            Identity::User(user) => Some(user),
        }
    }
}

/// The claims of a verified token that the core acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The `sub` claim: the user id.
    pub id: String,
    /// The `scope` claim split on spaces (OAuth style), e.g. `["publish"]`.
    pub scopes: Vec<String>,
    /// The `exp` claim in Unix milliseconds; the core closes with 4001 when it passes.
    pub expires_unix_ms: Option<i64>,
}

impl User {
    /// Whether this user may publish to `room`: scope `publish` grants every
    /// room, scope `publish:<room>` grants that one room.
    pub fn can_publish(&self, room: &RoomName) -> bool {
        self.scopes.iter().any(|scope| {
            scope == "publish"
                || scope
                    .strip_prefix("publish:")
                    .is_some_and(|r| r == room.as_str())
        })
    }
}

/// The access class of a room (`"public"`, `"authenticated"`, `"private_user"` in config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomAccess {
    /// Anyone may join, anonymous connections included.
    Public,
    /// Only connections with a verified token.
    Authenticated,
    /// Rooms named `<prefix><sub>`: only the user whose id is `<sub>`.
    /// The `sub` is written with [`crate::names::encode_name_part`] (which
    /// leaves ids such as `alice` unchanged), so any `sub` has its room:
    /// `user:auth0%7C5f1c` is the room of `auth0|5f1c`.
    PrivateUser,
}

/// One rule: rooms whose names start with `prefix` have `access`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Name prefix this rule covers (`""` matches every room).
    pub prefix: String,
    /// Access class of the matching rooms.
    pub access: RoomAccess,
}

/// The room access configuration: the longest matching prefix decides;
/// rooms no rule matches get `default`.
///
/// The default mirrors the seed: every room is public except `user:<sub>`,
/// which only that user may join.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessRules {
    /// Rules, matched by longest prefix.
    pub rules: Vec<AccessRule>,
    /// Access of rooms no rule matches.
    pub default: RoomAccess,
}

impl Default for AccessRules {
    fn default() -> AccessRules {
        AccessRules {
            rules: vec![AccessRule {
                prefix: "user:".to_owned(),
                access: RoomAccess::PrivateUser,
            }],
            default: RoomAccess::Public,
        }
    }
}

impl AccessRules {
    /// The rule deciding `room`, and the name's remainder after its prefix.
    fn rule_for<'r>(&self, room: &'r str) -> (RoomAccess, &'r str) {
        self.rules
            .iter()
            .filter(|rule| room.starts_with(rule.prefix.as_str()))
            .max_by_key(|rule| rule.prefix.len())
            .map(|rule| (rule.access, &room[rule.prefix.len()..]))
            .unwrap_or((self.default, room))
    }

    /// Whether `identity` may join (and so receive and see presence of) `room`.
    pub fn can_join(&self, identity: &Identity, room: &RoomName) -> bool {
        match self.rule_for(room.as_str()) {
            (RoomAccess::Public, _) => true,
            (RoomAccess::Authenticated, _) => identity.user().is_some(),
            (RoomAccess::PrivateUser, owner) => identity
                .user()
                .is_some_and(|u| is_encoding_of(owner, &u.id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, scopes: &[&str]) -> Identity {
        Identity::User(User {
            id: id.to_owned(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_unix_ms: None,
        })
    }

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    #[test]
    fn default_rules_are_the_seeds() {
        let rules = AccessRules::default();
        assert!(rules.can_join(&Identity::Anonymous, &room("downloads")));
        assert!(!rules.can_join(&Identity::Anonymous, &room("user:alice")));
        assert!(rules.can_join(&user("alice", &[]), &room("user:alice")));
        assert!(!rules.can_join(&user("bob", &[]), &room("user:alice")));
        assert!(!rules.can_join(&user("alice", &[]), &room("user:alice2")));
    }

    #[test]
    fn private_rooms_work_for_any_sub() {
        let rules = AccessRules::default();
        for (sub, room_name) in [
            (
                "auth0|5f1c2d3e4f5a6b7c8d9e0f1a",
                "user:auth0%7C5f1c2d3e4f5a6b7c8d9e0f1a",
            ),
            ("google-oauth2|1234", "user:google-oauth2%7C1234"),
            ("alice@example.com", "user:alice%40example.com"),
            ("bo+b@example.com", "user:bo%2Bb%40example.com"),
        ] {
            let owner = user(sub, &[]);
            assert!(rules.can_join(&owner, &room(room_name)), "{sub}");
            assert!(!rules.can_join(&user("alice", &[]), &room(room_name)));
            assert!(!rules.can_join(&Identity::Anonymous, &room(room_name)));
        }
        // Only the one encoding: no second private room per user, and no
        // look-alike for someone else.
        assert!(RoomName::new("user:google-oauth2%7c1234").is_none());
        assert!(!rules.can_join(&user("a%7Cb", &[]), &room("user:a%7Cb")));
        assert!(rules.can_join(&user("a%7Cb", &[]), &room("user:a%257Cb")));
        assert!(rules.can_join(&user("a|b", &[]), &room("user:a%7Cb")));
    }

    #[test]
    fn longest_prefix_wins() {
        let rules = AccessRules {
            rules: vec![
                AccessRule {
                    prefix: "team:".into(),
                    access: RoomAccess::Authenticated,
                },
                AccessRule {
                    prefix: "team:open".into(),
                    access: RoomAccess::Public,
                },
            ],
            default: RoomAccess::Authenticated,
        };
        assert!(!rules.can_join(&Identity::Anonymous, &room("team:x")));
        assert!(rules.can_join(&Identity::Anonymous, &room("team:open-1")));
        assert!(!rules.can_join(&Identity::Anonymous, &room("other")));
        assert!(rules.can_join(&user("a", &[]), &room("other")));
    }

    #[test]
    fn publish_scopes() {
        let Identity::User(all) = user("a", &["read", "publish"]) else {
            unreachable!()
        };
        let Identity::User(one) = user("a", &["publish:downloads"]) else {
            unreachable!()
        };
        let Identity::User(none) = user("a", &["publisher"]) else {
            unreachable!()
        };
        assert!(all.can_publish(&room("x")));
        assert!(one.can_publish(&room("downloads")));
        assert!(!one.can_publish(&room("downloads2")));
        assert!(!none.can_publish(&room("downloads")));
    }
}
