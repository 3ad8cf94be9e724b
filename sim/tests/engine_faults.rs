//! Property: any sequence of client and server events, with the engine
//! behind a fault layer (delays that reorder answers across rooms, lost
//! live messages, failed appends and reads, data loss), keeps the core's
//! invariants, and the shared delivery oracle sees every member get every
//! message of its rooms in order, or be told. The body is the
//! `core_events` fuzz target's, whose first input byte picks the faults.

use proptest::collection::vec;
use proptest::prelude::*;
use roomcast_testkit::fuzz::core_events;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn core_events_hold_under_engine_faults(
        faults in any::<u8>(),
        ops in vec(any::<u8>(), 0..3_000),
    ) {
        // An odd first byte turns faults on; its other bits choose the mix.
        let mut data = vec![faults | 1];
        data.extend(ops);
        core_events(&data);
    }
}
