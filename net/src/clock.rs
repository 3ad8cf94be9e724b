//! The server's clock and connection-id source: the only places the shell
//! reads time or randomness, so the simulator can replace both.

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::{ConnectionId, Now};
use tokio::time::Instant;

/// The server's two clocks. Monotonic time comes from `tokio::time`
/// (simulated under turmoil) and orders everything: timers, rate limits,
/// heartbeats. Wall time stamps envelopes and is what token `exp`/`nbf`
/// are checked against; production reads the real wall clock every time,
/// so a VM pause or an NTP step is seen at once instead of leaving the
/// server's idea of the date behind.
#[derive(Clone)]
pub struct Clock {
    origin: Instant,
    wall: Wall,
}

/// Where wall time comes from.
#[derive(Clone)]
enum Wall {
    /// The system's real-time clock (production).
    System,
    /// A start time plus monotonic time elapsed: the simulator's seeded
    /// clock, which must not depend on the host's time.
    FromStart(i64),
    /// Any source (tests that step the wall clock).
    Source(Arc<dyn Fn() -> i64 + Send + Sync>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wall = match &self.wall {
            Wall::System => "system".to_owned(),
            Wall::FromStart(ms) => format!("from start {ms}"),
            Wall::Source(_) => "source".to_owned(),
        };
        f.debug_struct("Clock")
            .field("origin", &self.origin)
            .field("wall", &wall)
            .finish()
    }
}

/// The system's wall clock, Unix ms.
fn system_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Clock {
    /// A clock whose wall time starts at `origin_unix_ms` now and then
    /// advances with monotonic time only (the simulator's).
    pub fn starting_at(origin_unix_ms: i64) -> Clock {
        Clock {
            origin: Instant::now(),
            wall: Wall::FromStart(origin_unix_ms),
        }
    }

    /// Production: wall time is the system's real-time clock, read each time.
    pub fn system() -> Clock {
        Clock {
            origin: Instant::now(),
            wall: Wall::System,
        }
    }

    /// Wall time from `source` (Unix ms), read each time: for tests that
    /// step the wall clock.
    pub fn with_wall_source(source: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock {
            origin: Instant::now(),
            wall: Wall::Source(Arc::new(source)),
        }
    }

    /// The current time, for the core.
    pub fn now(&self) -> Now {
        let monotonic_us = self.monotonic_us();
        let unix_ms = match &self.wall {
            Wall::System => system_unix_ms(),
            Wall::FromStart(origin) => origin + (monotonic_us / 1000) as i64,
            Wall::Source(source) => source(),
        };
        Now {
            monotonic_us,
            unix_ms,
        }
    }

    /// Monotonic µs since the clock was made (no wall-clock read).
    pub fn monotonic_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_micros() as u64
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

    #[tokio::test(start_paused = true)]
    async fn production_wall_time_is_the_system_clock_not_start_plus_elapsed() {
        let clock = Clock::system();
        let before = clock.now();
        // Monotonic time jumps an hour (as after a VM pause, seen from the
        // wall clock's side: the two disagree); the system clock did not.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now();
        assert!(after.monotonic_us - before.monotonic_us >= 3_600_000_000);
        let drift = (after.unix_ms - system_unix_ms()).abs();
        assert!(
            drift < 60_000,
            "wall time is {drift} ms off the system clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_its_source_and_monotonic_time_does_not() {
        let wall = Arc::new(std::sync::atomic::AtomicI64::new(1_000_000));
        let source = wall.clone();
        let clock =
            Clock::with_wall_source(move || source.load(std::sync::atomic::Ordering::SeqCst));
        let before = clock.now();
        assert_eq!(before.unix_ms, 1_000_000);
        // An NTP step forward of a day, no time passing.
        wall.store(1_000_000 + 86_400_000, std::sync::atomic::Ordering::SeqCst);
        let stepped = clock.now();
        assert_eq!(stepped.unix_ms, 1_000_000 + 86_400_000);
        assert_eq!(stepped.monotonic_us, before.monotonic_us);
        // And back: wall time may go back, monotonic time never does.
        wall.store(999_000, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(5)).await;
        let back = clock.now();
        assert_eq!(back.unix_ms, 999_000);
        assert_eq!(back.monotonic_us, before.monotonic_us + 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulators_clock_advances_with_monotonic_time_only() {
        let clock = Clock::starting_at(5_000);
        tokio::time::advance(Duration::from_millis(1_234)).await;
        assert_eq!(clock.now().unix_ms, 6_234);
        assert_eq!(clock.instant_of(0), clock.origin);
    }

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
