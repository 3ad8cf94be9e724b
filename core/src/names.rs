//! Identifiers: connection ids (given by the caller) and validated room names.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

/// A connection's id: a UUID chosen by the caller (random v4 in production,
/// derived from the seed in the simulator), shown to the client in `connected`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionId(pub uuid::Uuid);

impl Hash for ConnectionId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.0.as_u128());
    }
}

/// A map keyed by connection id, for lookups on every delivery (never
/// iterated into outputs).
pub type ConnectionMap<V> = HashMap<ConnectionId, V, BuildHasherDefault<ConnectionIdHasher>>;

/// The hasher of [`ConnectionMap`]: a multiply-and-mix of the id's 128
/// bits. Connection ids are chosen by the server (random in production,
/// from the seed in the simulator), never by clients, so no keyed hash is
/// needed against crafted collisions; SipHash would cost a large share of
/// the per-recipient budget. Deterministic: no random seed.
#[derive(Clone, Copy, Default)]
pub struct ConnectionIdHasher(u64);

impl ConnectionIdHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31);
    }
}

impl Hasher for ConnectionIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.mix(value as u64);
        self.mix((value >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        // splitmix64's finalizer: every input bit reaches the high bits,
        // which the hash table uses to tell entries apart.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

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
    use std::hash::BuildHasher;

    #[test]
    fn connection_id_hashes_spread_sequential_ids() {
        // Tests and the simulator use small sequential ids; the table tells
        // entries apart by the hash's top 7 bits and places them by its low bits.
        let build = BuildHasherDefault::<ConnectionIdHasher>::default();
        let hashes: Vec<u64> = (0..10_000u128)
            .map(|i| build.hash_one(ConnectionId::from_u128(i)))
            .collect();
        let unique: std::collections::BTreeSet<u64> = hashes.iter().copied().collect();
        assert_eq!(unique.len(), hashes.len());
        let top7: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(top7.len(), 128);
        let low10: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(low10.len() > 1000, "{}", low10.len());
        assert_eq!(
            build.hash_one(ConnectionId::from_u128(42)),
            build.hash_one(ConnectionId::from_u128(42)),
            "no random seed"
        );
    }

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
