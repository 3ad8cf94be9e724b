//! Seeds that once failed, pinned so what they found cannot come back.
//! Add every seed a sweep finds here, with a line on what it caught.

use roomcast_sim::{core_tier, net_tier};

/// (seed, clients, simulated seconds, what it caught)
const NET_SEEDS: &[(u64, usize, u64, &str)] = &[
    // The publisher's keep-alive API connection outlived the server's header
    // timeout during the quiet phase; the final status check then failed.
    (
        1,
        100,
        10,
        "idle keep-alive API connection dropped by the server",
    ),
];

/// (seed, clients, events, what it caught)
const CORE_SEEDS: &[(u64, usize, u64, &str)] = &[
    // Seeds with many slow-consumer (4008), rate-limit (1008) and idle (4002)
    // closes in one run: the oracle's tail checks must hold across all three.
    (30, 0, 200_000, "1008 + 4001 + 4002 closes in one run"),
    (3, 0, 200_000, "4001 + 4002 + 4008 closes in one run"),
    // Conflation flagged the replacing event instead of the first event
    // after the replaced seq, so a member saw an unflagged jump.
    (
        0,
        0,
        200_000,
        "conflation flag placed where the jump is seen",
    ),
    // Progress events still held when the run went quiet: the end check
    // must let the conflation window close first.
    (
        2,
        0,
        200_000,
        "held progress flushed before the quiet-state check",
    ),
];

#[test]
fn pinned_net_seeds_pass() {
    for &(seed, clients, seconds, what) in NET_SEEDS {
        if let Err(failure) = net_tier::run(seed, clients, seconds) {
            panic!("regression ({what}) is back:\n{failure}");
        }
    }
}

#[test]
fn pinned_core_seeds_pass() {
    for &(seed, clients, events, what) in CORE_SEEDS {
        if let Err(failure) = core_tier::run(seed, clients, events) {
            panic!("regression ({what}) is back:\n{failure}");
        }
    }
}
