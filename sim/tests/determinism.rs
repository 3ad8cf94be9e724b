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

#[test]
fn a_cluster_with_broker_faults_repeats_its_trace() {
    // Seed 14 draws every broker fault: a node partitioned from the
    // broker, a node held from it, a broker restart (data loss), a node
    // bounce, lost live messages. Run twice in one process, beside the
    // other tests: a node bounce must not replay differently when tokio's
    // process-wide task ids differ (see `net_tier/faults.rs`).
    let run = net_tier::NetRun::new(14, 150, 5).nodes(3);
    let first = net_tier::run_with(&run).expect("seed 14 passes");
    let second = net_tier::run_with(&run).expect("seed 14 passes");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert_eq!(first.broker_faults, second.broker_faults);
    let faults = first.broker_faults.as_deref().unwrap_or_default();
    for injected in ["partitions=1", "holds=1", "restarts=1", "bounces=1"] {
        assert!(faults.contains(injected), "{injected} in {faults}");
    }
    assert!(first.deliveries > 0, "the workload delivers broadcasts");
    // The same seed without its broker faults runs the same workload, but
    // not the same trace.
    let calm = net_tier::run_with(&run.clone().broker_faults(false)).expect("seed 14 passes");
    let calm_faults = calm.broker_faults.as_deref().unwrap_or_default();
    assert!(calm_faults.starts_with("off "), "{calm_faults}");
    assert_ne!(calm.trace_hash, first.trace_hash);
}

#[test]
fn a_node_of_shards_repeats_its_trace() {
    // Three shards (tasks of the host) behind the shard router and the
    // in-memory engine task: placement, the router's routing and the
    // engine's answers replay exactly.
    let run = net_tier::NetRun::new(3, 120, 4).shards(3);
    let first = net_tier::run_with(&run).expect("seed 3 passes with 3 shards");
    let second = net_tier::run_with(&run).expect("seed 3 passes with 3 shards");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert_eq!(first.shards, Some(3));
    assert!(first.deliveries > 0, "the workload delivers broadcasts");
    // The same workload on one shard is another trace (the shard
    // count reaches the server).
    let one = net_tier::run_with(&run.clone().shards(1)).expect("seed 3 passes");
    assert_ne!(one.trace_hash, first.trace_hash);
}

#[test]
fn a_cluster_of_sharded_nodes_with_broker_faults_repeats_its_trace() {
    // Seed 14 draws every broker fault (see above); each of the three
    // nodes runs two shards behind its router, on the broker link.
    let run = net_tier::NetRun::new(14, 150, 5).nodes(3).shards(2);
    let first = net_tier::run_with(&run).expect("seed 14 passes with 2 shards a node");
    let second = net_tier::run_with(&run).expect("seed 14 passes with 2 shards a node");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert_eq!(first.broker_faults, second.broker_faults);
    assert!(first.deliveries > 0, "the workload delivers broadcasts");
}
