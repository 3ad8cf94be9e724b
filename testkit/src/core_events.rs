//! The `core_events` fuzz target: a structured workload against the core
//! and a faulty engine, checked by the delivery oracle (see
//! [`core_events`]). The fuzzer's bytes decode into the simulator's own
//! [`Event`]s and the same [`Driver`] feeds them.

use arbitrary::{Arbitrary, Unstructured};
use roomcast_core::engine::faults::{EngineFaults, FaultyEngine};
use roomcast_core::standalone::memory_engine;
use roomcast_core::{CoreConfig, Limits, Standalone};

use crate::driver::{Driver, Event, Names};

/// At most this many clients are open at once.
const CLIENTS: usize = 6;
/// The presence windows the final settle waits through at most.
const QUIET_WINDOWS_MAX: usize = 100;

/// The engine faults of one fuzz input, from its first byte (half of the
/// inputs run fault-free; the rest mix delays, lost live messages,
/// failures and data loss).
fn engine_faults(data: &[u8]) -> EngineFaults {
    let byte = u32::from(data.first().copied().unwrap_or(0));
    if byte % 2 == 0 {
        return EngineFaults::default();
    }
    EngineFaults {
        delay_per_mille: (byte >> 1 & 3) * 150,
        max_delay_us: 40_000,
        lose_live_per_mille: (byte >> 3 & 3) * 100,
        fail_per_mille: (byte >> 5 & 1) * 100,
        reset_per_mille: (byte >> 6 & 1) * 20,
    }
}

/// Core event sequences: any sequence of opens, frames, closes, broadcasts
/// and time steps, with the engine behind a fault layer (delays, lost live
/// messages, failures, data loss), keeps the structural invariants after
/// every step, and the delivery oracle sees no gap, duplicate, stray
/// message or missing reply.
pub fn core_events(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let Ok(events) = Vec::<Event>::arbitrary(&mut source) else {
        return;
    };
    let limits = Limits {
        rooms_per_connection_max: 2,
        outbound_queue_bytes_max: 4_096,
        // Any unwritten byte makes a member behind: conflation stays busy.
        conflation_behind_bytes: 0,
        messages_per_second: 20,
        message_burst: 5,
        rate_violations_max: 3,
        ping_interval_ms: 1_000,
        idle_timeout_ms: 3_000,
        stream_check_interval_ms: 300,
        engine_retry_ms: 100,
        ..Limits::default()
    };
    // r0, r1 conflate progress; r1, r2 push presence diffs.
    let rooms = roomcast_core::RoomOptions {
        conflate_prefixes: vec!["r0".into(), "r1".into()],
        presence_diff_prefixes: vec!["r1".into(), "r2".into()],
        conflation_window_ms: 50,
        // Short, so the fuzzed timeouts end windows too.
        presence_diff_interval_ms: 30,
    };
    let config = CoreConfig {
        limits,
        rooms,
        ..CoreConfig::default()
    };
    let engine = memory_engine(&config);
    let faults = engine_faults(data);
    let engine = FaultyEngine::new(engine, faults.clone(), data.len() as u64);
    let names = Names {
        room_prefix: "r",
        rooms: 4,
        user_prefix: "u",
        users: 3,
    };
    let mut driver = Driver::new(Standalone::with_engine(config, engine), names, 0);
    for event in events {
        if matches!(event, Event::Open(_)) && driver.open_count() >= CLIENTS {
            continue;
        }
        if let Err(broken) = driver.apply(event, &mut ()) {
            panic!("{}: {broken}", broken.invariant());
        }
        if let Err(broken) = driver.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }
    // Final quiet, with the engine healed: held (conflated) progress
    // events go out, and stream checks find and refill every lost message,
    // before completeness is checked; then everyone leaves.
    if let Err(broken) = driver.quiesce(faults.max_delay_us, QUIET_WINDOWS_MAX, &mut ()) {
        panic!("{}: {broken}", broken.invariant());
    }
}
