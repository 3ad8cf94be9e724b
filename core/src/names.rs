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
/// `[A-Za-z0-9_.:-]`, plus `%XX` escapes (`%` and two upper-case hex
/// digits, see `encode_name_part`). Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomName(Arc<str>);

/// Whether `byte` may stand for itself in a room name.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-')
}

fn is_upper_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte)
}

impl RoomName {
    /// Validates `name`; `None` when it breaks the room-name rule.
    pub fn new(name: &str) -> Option<RoomName> {
        let bytes = name.as_bytes();
        let valid_len = !bytes.is_empty() && bytes.len() <= ROOM_NAME_MAX_BYTES;
        let mut i = 0;
        while valid_len && i < bytes.len() {
            match bytes[i] {
                b if is_plain(b) => i += 1,
                b'%' if bytes.len() > i + 2
                    && is_upper_hex(bytes[i + 1])
                    && is_upper_hex(bytes[i + 2]) =>
                {
                    i += 3
                }
                _ => return None,
            }
        }
        valid_len.then(|| RoomName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Encodes any text (a token's `sub`, say) for use inside a room name:
/// bytes of `[A-Za-z0-9_.:-]` stay as they are, every other byte of its
/// UTF-8 becomes `%XX` (upper-case hex). So `alice` stays `alice`,
/// `auth0|5f1c` becomes `auth0%7C5f1c` and `bo+b@example.com` becomes
/// `bo%2Bb%40example.com`. Every text has exactly one encoding, and the
/// encoding of a text that was already a valid name part is itself.
/// (The core only compares encodings, [`is_encoding_of`]; this states the
/// rule for the tests.)
#[cfg(test)]
fn encode_name_part(text: &str) -> String {
    encoded_bytes(text).map(char::from).collect()
}

/// Whether `part` (of a room name) is exactly the encoding of `text`,
/// without building it.
pub fn is_encoding_of(part: &str, text: &str) -> bool {
    encoded_bytes(text).eq(part.bytes())
}

/// The bytes of `encode_name_part`.
fn encoded_bytes(text: &str) -> impl Iterator<Item = u8> + '_ {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    text.bytes().flat_map(|b| {
        let escaped = [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
        let len = if is_plain(b) { 1 } else { 3 };
        let first = if is_plain(b) { [b, 0, 0] } else { escaped };
        first.into_iter().take(len)
    })
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

    /// `ConnectionIdHasher`'s hash of `ConnectionId::from_u128(42)`.
    const ID_42_HASH: u64 = 5_561_495_501_539_525_302;

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
        // No random seed: a fresh hasher, in this process or any other,
        // gives the value this one gave when the test was written (a seeded
        // hasher would differ from run to run, and from this constant).
        let fresh = BuildHasherDefault::<ConnectionIdHasher>::default();
        assert_eq!(
            fresh.hash_one(ConnectionId::from_u128(42)),
            ID_42_HASH,
            "the hash of id 42 changed: a random seed, or a new mix"
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
        // `%` only as the start of an upper-case `%XX` escape.
        for ok in ["user:auth0%7C5f1c", "%40", "a%2Bb%40c.d"] {
            assert!(RoomName::new(ok).is_some(), "{ok}");
        }
        for bad in ["%", "a%", "a%4", "a%7c", "a%G0", "100%", "%%41"] {
            assert!(RoomName::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn any_text_encodes_into_a_valid_name_part() {
        for (text, encoded) in [
            ("alice", "alice"),
            ("urn:x.y_z-1", "urn:x.y_z-1"),
            (
                "auth0|5f1c2d3e4f5a6b7c8d9e0f1a",
                "auth0%7C5f1c2d3e4f5a6b7c8d9e0f1a",
            ),
            ("google-oauth2|1234", "google-oauth2%7C1234"),
            ("bo+b@example.com", "bo%2Bb%40example.com"),
            ("a b/c%", "a%20b%2Fc%25"),
            ("ü", "%C3%BC"),
        ] {
            assert_eq!(encode_name_part(text), encoded, "{text}");
            assert!(is_encoding_of(encoded, text));
            assert!(
                RoomName::new(&format!("user:{encoded}")).is_some(),
                "{encoded}"
            );
        }
        assert!(!is_encoding_of("auth0|5f1c", "auth0|5f1c"));
        assert!(!is_encoding_of("auth0%7c5f1c", "auth0|5f1c"));
        assert!(!is_encoding_of("alic", "alice"));
        assert!(!is_encoding_of("alice%20", "alice"));
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
