//! The determinism meta-test: one seed, run twice, must give the same trace.

use roomcast_sim::{core_tier, net_tier};

#[test]
fn core_tier_repeats_its_trace() {
    let first = core_tier::run(7, 300, 30_000, true).expect("seed 7 passes");
    let second = core_tier::run(7, 300, 30_000, true).expect("seed 7 passes");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.deliveries, second.deliveries);
    let other = core_tier::run(8, 300, 30_000, true).expect("seed 8 passes");
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "different seeds explore different traces"
    );
}

#[test]
fn net_tier_repeats_its_trace() {
    let first = net_tier::run(3, 120, 4).expect("seed 3 passes");
    let second = net_tier::run(3, 120, 4).expect("seed 3 passes");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert!(first.deliveries > 0, "the workload delivers broadcasts");
}
