//! Seeds that once failed, pinned so what they found cannot come back.
//! Add every seed a sweep finds here, with a line on what it caught.

use roomcast_sim::net_tier::NetRun;
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
    // No cluster seed (several nodes against the broker) has failed yet; pin
    // one here with `net_tier::run_with(&NetRun::new(seed, clients,
    // seconds).nodes(n))` when a sweep finds it. The replay defect the
    // cluster sweeps found (a node bounce) is pinned in `determinism.rs`.
}

/// (seed, what it caught) of core-tier runs with their drawn engine faults
/// (200,000 events, clients drawn).
const ENGINE_FAULT_SEEDS: &[(u64, &str)] = &[
    // A broadcast answered late: its receipt arrived while writes were
    // reported and was never shown to the oracle.
    (5, "late receipts reach the publisher"),
    // A member that could not take the ROOM_GAP warning was closed only
    // after the input, and got the next messages without the warning.
    (16, "a member that misses a gap warning is closed at once"),
    (17, "a member that misses a gap warning is closed at once"),
    // A StreamReset (pub/sub reconnect) read every room through the timer
    // path and left a stale stream-check timer behind.
    (
        3,
        "a stream reset reads every room without a stale check timer",
    ),
    // Presence counts did not converge: members that heard no diff were
    // left with a count the room no longer had (`--tier core --seed 92
    // --clients 0 --events 200000 --engine-faults on`).
    (
        92,
        "presence counts converge for members that heard no diff",
    ),
];

#[test]
fn pinned_core_seeds_pass() {
    for &(seed, clients, events, what) in CORE_SEEDS {
        // These predate the engine seam: their workload runs fault-free.
        if let Err(failure) = core_tier::run(seed, clients, events, false) {
            panic!("regression ({what}) is back:\n{failure}");
        }
    }
    for &(seed, what) in ENGINE_FAULT_SEEDS {
        if let Err(failure) = core_tier::run(seed, 0, 200_000, true) {
            panic!("regression ({what}) is back:\n{failure}");
        }
    }
}

/// The engine's rollback check is what keeps a rolled-back broker (a Redis
/// restarted from an older snapshot) from giving seqs to two messages:
/// seed 18 rolls the broker back once, after publishes it then loses, and
/// passes; with the check skipped (a planted defect) the oracle catches a
/// publish receipt naming a seq that members already got for another
/// message.
#[test]
fn a_broker_roll_back_without_the_rollback_check_is_caught() {
    let run = NetRun::new(18, 120, 4).nodes(3);
    let summary = net_tier::run_with(&run).unwrap_or_else(|failure| panic!("{failure}"));
    let faults = summary.broker_faults.unwrap_or_default();
    assert!(faults.contains("roll_backs=1/1"), "{faults}");
    let planted = net_tier::run_with(&run.skip_rollback_check());
    let failure = planted.expect_err("a reused seq must be caught");
    assert_eq!(failure.invariant, "one message per seq", "{failure}");
}
