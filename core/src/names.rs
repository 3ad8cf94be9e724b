//! Identifiers: connection ids (given by the caller) and validated room names.

use std::fmt;
use std::sync::Arc;

/// A connection's id: a UUID chosen by the caller (random v4 in production,
/// derived from the seed in the simulator), shown to the client in `connected`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub uuid::Uuid);

impl ConnectionId {
    /// A connection id from 128 bits (for tests and simulations).
    pub const fn from_u128(value: u128) -> ConnectionId {
        ConnectionId(uuid::Uuid::from_u128(value))
    }

    /// Parses the hyphenated UUID form clients see (`POST /api/send`).
    pub fn parse(text: &str) -> Option<ConnectionId> {
        uuid::Uuid::try_parse(text).ok().map(ConnectionId)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn:{}", self.0.simple())
    }
}

/// Longest room name, in bytes.
pub const ROOM_NAME_MAX_BYTES: usize = 128;

/// A room name that satisfies the protocol's rule: 1 to 128 bytes of
/// `[A-Za-z0-9_.:-]`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`; `None` when it breaks the room-name rule.
    pub fn new(name: &str) -> Option<RoomName> {
        let valid_len = !name.is_empty() && name.len() <= ROOM_NAME_MAX_BYTES;
        let valid_bytes = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        (valid_len && valid_bytes).then(|| RoomName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_name_rule() {
        for ok in [
            "downloads",
            "user:alice",
            "a",
            "A-b_c.d:e",
            &"x".repeat(128),
        ] {
            assert!(RoomName::new(ok).is_some(), "{ok}");
        }
        for bad in ["", " ", "a b", "ü", "room/1", "a\u{0}", &"x".repeat(129)] {
            assert!(RoomName::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn connection_id_displays_as_uuid_and_parses_back() {
        let id = ConnectionId::from_u128(0x1234);
        let text = id.to_string();
        assert_eq!(text, "00000000-0000-0000-0000-000000001234");
        assert_eq!(ConnectionId::parse(&text), Some(id));
        assert_eq!(ConnectionId::parse("nope"), None);
    }
}
