//! The server's clock and connection-id source: the only places the shell
//! reads time or randomness, so the simulator can replace both.

use std::time::Duration;

use roomcast_core::{ConnectionId, Now};
use tokio::time::Instant;

/// Monotonic time from `tokio::time` (simulated under turmoil) plus a
/// wall-clock origin read once at startup: wall time = origin + elapsed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_unix_ms: i64,
}

impl Clock {
    /// A clock whose wall time starts at `origin_unix_ms` now.
    pub fn starting_at(origin_unix_ms: i64) -> Clock {
        Clock {
            origin: Instant::now(),
            origin_unix_ms,
        }
    }

    /// A clock whose wall time starts at the system's current time.
    pub fn system() -> Clock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Clock::starting_at(unix_ms)
    }

    /// The current time, for the core.
    pub fn now(&self) -> Now {
        self.at(Instant::now())
    }

    /// The `Now` of a given instant.
    pub fn at(&self, instant: Instant) -> Now {
        let elapsed = instant.saturating_duration_since(self.origin);
        Now {
            monotonic_us: elapsed.as_micros() as u64,
            unix_ms: self.origin_unix_ms + elapsed.as_millis() as i64,
        }
    }

    /// The instant of a core deadline (monotonic µs).
    pub fn instant_of(&self, monotonic_us: u64) -> Instant {
        self.origin + Duration::from_micros(monotonic_us)
    }

    /// Current wall-clock time in Unix ms.
    pub fn unix_ms(&self) -> i64 {
        self.now().unix_ms
    }
}

/// Where connection ids and epoch prefixes come from.
#[derive(Debug)]
pub enum IdSource {
    /// Random v4 UUIDs (production).
    Random,
    /// A deterministic sequence from a seed (simulation).
    Seeded(u64),
}

impl IdSource {
    /// The next connection id.
    pub fn next_connection_id(&mut self) -> ConnectionId {
        match self {
            IdSource::Random => ConnectionId(uuid::Uuid::new_v4()),
            IdSource::Seeded(state) => {
                let high = splitmix64(state);
                let low = splitmix64(state);
                let bits = (u128::from(high) << 64) | u128::from(low);
                // Shape it as a v4 UUID so clients see the usual form.
                ConnectionId(uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid())
            }
        }
    }

    /// A short random-looking prefix that distinguishes this server lifetime's epochs.
    pub fn epoch_prefix(&mut self) -> String {
        let id = self.next_connection_id();
        id.0.simple().to_string()[..12].to_owned()
    }
}

/// One step of splitmix64: a tiny, well-mixed deterministic generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_per_seed() {
        let (mut a, mut b, mut c) = (
            IdSource::Seeded(7),
            IdSource::Seeded(7),
            IdSource::Seeded(8),
        );
        let first = a.next_connection_id();
        assert_eq!(first, b.next_connection_id());
        assert_ne!(first, c.next_connection_id());
        assert_ne!(first, a.next_connection_id());
        assert_eq!(first.0.get_version_num(), 4);
    }
}
