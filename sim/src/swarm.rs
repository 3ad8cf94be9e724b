//! Swarm testing: each seed draws its own mix of actions, limits and faults,
//! so a sweep explores very different workloads instead of one average one.

use roomcast_core::{Limits, RoomOptions};

use crate::rng::SimRng;

/// What a client (or the publisher) can do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Open a new connection (up to the client target).
    Open,
    /// Join a random room.
    Join,
    /// Leave a random room.
    Leave,
    /// Ping.
    Ping,
    /// Send a malformed or unknown message.
    Garbage,
    /// Send a binary frame.
    Binary,
    /// Drop the connection without a close handshake.
    Crash,
    /// Stop reading (become a slow consumer).
    Stall,
    /// Resume reading.
    Unstall,
    /// Publish to 1-3 rooms through the server API.
    Broadcast,
    /// Send to a user through the server API.
    Direct,
    /// Ask for presence of a room.
    Presence,
    /// Send a burst of back-to-back messages (rate-limit abuse).
    Burst,
}

/// Every action, in weight order.
pub const ACTIONS: [Action; 13] = [
    Action::Open,
    Action::Join,
    Action::Leave,
    Action::Ping,
    Action::Garbage,
    Action::Binary,
    Action::Crash,
    Action::Stall,
    Action::Unstall,
    Action::Broadcast,
    Action::Direct,
    Action::Presence,
    Action::Burst,
];

/// One seed's workload.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Target number of simultaneously open clients.
    pub clients: usize,
    /// Room names used: `room-0` .. `room-{rooms-1}`.
    pub rooms: usize,
    /// Distinct user ids (`user-0`..); the rest of the clients are anonymous.
    pub users: usize,
    /// Percentage of clients with a token.
    pub authenticated_percent: u64,
    /// Percentage of tokens that expire during the run.
    pub expiring_percent: u64,
    /// Weight of each of [`ACTIONS`].
    pub weights: [u64; ACTIONS.len()],
    /// Limits the server runs with.
    pub limits: Limits,
    /// Largest gap between two events, in µs of virtual time.
    pub event_gap_us_max: u64,
    /// Conflation and presence-diff settings.
    pub room_options: RoomOptions,
}

impl Mix {
    /// Draws a mix for `clients` clients (0 = drawn too).
    pub fn draw(rng: &mut SimRng, clients: usize) -> Mix {
        let clients = if clients == 0 {
            rng.range(20, 3000) as usize
        } else {
            clients
        };
        let mut weights = [0u64; ACTIONS.len()];
        for (weight, action) in weights.iter_mut().zip(ACTIONS) {
            *weight = match action {
                Action::Open => 30,
                Action::Join => rng.range(5, 40),
                Action::Leave => rng.range(0, 15),
                Action::Ping => rng.range(0, 20),
                Action::Garbage => rng.range(0, 6),
                Action::Binary => rng.range(0, 2),
                Action::Crash => rng.range(0, 4),
                Action::Stall => rng.range(0, 3),
                Action::Unstall => rng.range(0, 3),
                Action::Broadcast => rng.range(2, 30),
                Action::Direct => rng.range(0, 4),
                Action::Presence => rng.range(0, 3),
                Action::Burst => rng.range(0, 2),
            };
        }
        let ping_interval_ms = rng.range(500, 5_000);
        let limits = Limits {
            rooms_per_connection_max: rng.range(1, 8) as usize,
            outbound_queue_bytes_max: [2_048, 16_384, 1 << 20][rng.below(3) as usize],
            messages_per_second: rng.range(5, 200) as u32,
            message_burst: rng.range(3, 60) as u32,
            rate_violations_max: rng.range(1, 20) as u32,
            ping_interval_ms,
            idle_timeout_ms: ping_interval_ms * rng.range(2, 4),
            presence_page_max: rng.range(1, 20) as usize,
            history_messages_max: [0, 3, 50, 1000][rng.below(4) as usize],
            history_age_ms: 86_400_000,
            // Some seeds squeeze the engine's budgets: history evicted
            // across rooms, rooms refused or pushed out.
            history_bytes_max: [64 << 20, 64 << 20, 32_768, 2_048][rng.below(4) as usize],
            rooms_max: [100_000, 100_000, 8, 2][rng.below(4) as usize],
            ..Limits::default()
        };
        // Some seeds conflate progress in some rooms and push presence diffs in others.
        let prefix = |rng: &mut SimRng| match rng.below(3) {
            0 => Vec::new(),
            1 => vec!["room-1".to_owned()],
            _ => vec!["room-".to_owned()],
        };
        let room_options = RoomOptions {
            conflate_prefixes: prefix(rng),
            presence_diff_prefixes: prefix(rng),
            conflation_window_ms: rng.range(10, 500),
            presence_diff_interval_ms: 0,
        };
        // Derived from a value drawn already (not a new draw, which would
        // shift every later choice of every seed): per input (0), short
        // and default-length presence windows.
        let mut room_options = room_options;
        room_options.presence_diff_interval_ms =
            [0, 40, 500][(room_options.conflation_window_ms % 3) as usize];
        Mix {
            clients,
            rooms: rng.range(1, 30) as usize,
            users: rng.range(1, 20) as usize,
            authenticated_percent: rng.range(0, 100),
            expiring_percent: rng.range(0, 10),
            weights,
            limits,
            event_gap_us_max: rng.range(10, 2_000),
            room_options,
        }
    }
}
