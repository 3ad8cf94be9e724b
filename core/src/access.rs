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
    /// The `rooms` claim: the `granted` rooms this user may join.
    pub grants: Grants,
}

/// Room grants (a token's `rooms` claim, or a connect hook's `rooms`):
/// exact room names, and prefixes written with a trailing `*`
/// (`"series:*"` grants every room whose name starts with `series:`;
/// `"*"` grants every room).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    exact: Vec<RoomName>,
    prefixes: Vec<String>,
}

/// Why a `rooms` claim was refused (the token is then invalid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The claim is not an array of strings.
    NotAnArrayOfStrings,
    /// An entry is neither a room name nor a room-name prefix followed by `*`.
    BadEntry(String),
}

impl std::fmt::Display for GrantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantError::NotAnArrayOfStrings => f.write_str("rooms must be an array of strings"),
            GrantError::BadEntry(entry) => write!(
                f,
                "rooms entry {entry:?} is neither a room name nor a prefix ending in *"
            ),
        }
    }
}

impl Grants {
    /// No room granted.
    pub fn none() -> Grants {
        Grants::default()
    }

    /// Parses the entries of a `rooms` claim. Every entry must be a valid
    /// room name, or a valid room name (or nothing) followed by one `*`.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Grants, GrantError> {
        let mut grants = Grants::default();
        for entry in entries {
            let bad = || GrantError::BadEntry(entry.chars().take(140).collect());
            match entry.strip_suffix('*') {
                Some("") => grants.prefixes.push(String::new()),
                Some(prefix) => {
                    RoomName::new(prefix).ok_or_else(bad)?;
                    grants.prefixes.push(prefix.to_owned());
                }
                None => grants.exact.push(RoomName::new(entry).ok_or_else(bad)?),
            }
        }
        Ok(grants)
    }

    /// Parses a `rooms` claim as JSON: an array of strings.
    pub fn from_json(value: &serde_json::Value) -> Result<Grants, GrantError> {
        let entries = value.as_array().ok_or(GrantError::NotAnArrayOfStrings)?;
        let texts: Option<Vec<&str>> = entries.iter().map(|e| e.as_str()).collect();
        Grants::parse(texts.ok_or(GrantError::NotAnArrayOfStrings)?)
    }

    /// Whether these grants cover `room`.
    pub fn covers(&self, room: &RoomName) -> bool {
        self.exact.contains(room)
            || self
                .prefixes
                .iter()
                .any(|p| room.as_str().starts_with(p.as_str()))
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
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

/// The access class of a room (`"public"`, `"authenticated"`,
/// `"private_user"`, `"granted"` in config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomAccess {
    /// Anyone may join, anonymous connections included.
    Public,
    /// Only connections with a verified token.
    Authenticated,
    /// Rooms named `<prefix><sub>`: only the user whose id is `<sub>`.
    /// The `sub` is written with `names::encode_name_part` (which
    /// leaves ids such as `alice` unchanged), so any `sub` has its room:
    /// `user:auth0%7C5f1c` is the room of `auth0|5f1c`.
    PrivateUser,
    /// Only connections whose grants (token `rooms` claim, connect hook)
    /// cover the room, or that the join hook allows.
    Granted,
}

/// What the access rules say about one join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinAccess {
    /// Join.
    Allowed,
    /// Refuse (`FORBIDDEN`).
    Denied,
    /// A `granted` room the connection's grants do not cover: the join
    /// hook may still allow it (refused when there is none).
    NotGranted,
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

    /// The access class of `room`.
    pub fn access_of(&self, room: &RoomName) -> RoomAccess {
        self.rule_for(room.as_str()).0
    }

    /// Whether `identity` may join (and so receive and see presence of)
    /// `room` by the rules and its grants alone (no hook asked).
    pub fn can_join(&self, identity: &Identity, room: &RoomName) -> bool {
        self.join_access(identity, room) == JoinAccess::Allowed
    }

    /// What the rules say about `identity` joining `room`.
    pub fn join_access(&self, identity: &Identity, room: &RoomName) -> JoinAccess {
        let allowed = match self.rule_for(room.as_str()) {
            (RoomAccess::Public, _) => true,
            (RoomAccess::Authenticated, _) => identity.user().is_some(),
            (RoomAccess::PrivateUser, owner) => identity
                .user()
                .is_some_and(|u| is_encoding_of(owner, &u.id)),
            (RoomAccess::Granted, _) => {
                if identity.user().is_some_and(|u| u.grants.covers(room)) {
                    return JoinAccess::Allowed;
                }
                return JoinAccess::NotGranted;
            }
        };
        if allowed {
            JoinAccess::Allowed
        } else {
            JoinAccess::Denied
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
            grants: Grants::none(),
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

    fn granted(id: &str, rooms: &[&str]) -> Identity {
        Identity::User(User {
            id: id.to_owned(),
            scopes: Vec::new(),
            expires_unix_ms: None,
            grants: Grants::parse(rooms.iter().copied()).unwrap(),
        })
    }

    #[test]
    fn grants_exact_and_by_prefix() {
        let rules = AccessRules {
            rules: vec![AccessRule {
                prefix: "team:".into(),
                access: RoomAccess::Granted,
            }],
            default: RoomAccess::Public,
        };
        let alice = granted("alice", &["team:42", "team:7*"]);
        assert_eq!(
            rules.join_access(&alice, &room("team:42")),
            JoinAccess::Allowed
        );
        assert_eq!(
            rules.join_access(&alice, &room("team:71")),
            JoinAccess::Allowed
        );
        assert_eq!(
            rules.join_access(&alice, &room("team:7")),
            JoinAccess::Allowed
        );
        assert_eq!(
            rules.join_access(&alice, &room("team:420")),
            JoinAccess::NotGranted
        );
        assert_eq!(
            rules.join_access(&Identity::Anonymous, &room("team:42")),
            JoinAccess::NotGranted
        );
        assert_eq!(
            rules.join_access(&alice, &room("lobby")),
            JoinAccess::Allowed
        );
        let all = granted("root", &["*"]);
        assert!(rules.can_join(&all, &room("team:anything")));
        // Grants only matter for `granted` rooms.
        let private = AccessRules::default();
        let grabby = granted("bob", &["user:*"]);
        assert_eq!(
            private.join_access(&grabby, &room("user:alice")),
            JoinAccess::Denied
        );
    }

    #[test]
    fn grant_grammar() {
        assert!(Grants::parse(["a", "b:*", "*", "x%2Fy"]).is_ok());
        for bad in [
            "",
            "**",
            "a*b",
            "a b",
            "a/*",
            "*a",
            "room*x*",
            &"a".repeat(129),
        ] {
            assert!(
                matches!(Grants::parse([bad]), Err(GrantError::BadEntry(_))),
                "{bad:?}"
            );
        }
        let json = |text: &str| Grants::from_json(&serde_json::from_str(text).unwrap());
        assert!(json(r#"["a","b*"]"#).unwrap().covers(&room("bc")));
        assert!(json("[]").unwrap().is_empty());
        for bad in [r#""a""#, "[1]", r#"["a",null]"#, "{}", "null"] {
            assert_eq!(json(bad), Err(GrantError::NotAnArrayOfStrings), "{bad}");
        }
    }
}
