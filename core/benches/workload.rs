//! The set-up shared by the criterion benchmarks (`benches/core.rs`) and
//! the instruction-count workload (`examples/hot_paths.rs`): the same
//! configuration and the same populated core, measured two ways.

use std::hint::black_box;

use roomcast_core::{ConnectionId, CoreConfig, Identity, Input, Limits, Now, Standalone, User};

/// Limits that never get in the way of a benchmark: no rate limiting, an
/// outbound queue that never overflows (so no `Input::Written` is needed).
pub fn config() -> CoreConfig {
    CoreConfig {
        limits: Limits {
            messages_per_second: u32::MAX,
            message_burst: u32::MAX,
            outbound_queue_bytes_max: 1 << 50,
            rooms_per_connection_max: 1_000,
            ..Limits::default()
        },
        ..CoreConfig::default()
    }
}

pub fn now() -> Now {
    Now::from_start(1_760_697_000_000, 0)
}

pub fn conn(i: usize) -> ConnectionId {
    ConnectionId::from_u128(i as u128 + 1)
}

pub fn drain(core: &mut Standalone) -> usize {
    let mut n = 0;
    while let Some(output) = core.poll_output() {
        black_box(&output);
        n += 1;
    }
    n
}

/// A core with `conns` connections (every other one authenticated), each in
/// `rooms_each` of 100 rooms.
pub fn populated(conns: usize, rooms_each: usize) -> Standalone {
    let mut core = Standalone::new(config());
    for i in 0..conns {
        let identity = if i % 2 == 0 {
            Identity::Anonymous
        } else {
            Identity::User(User {
                id: format!("user{}", i % 97),
                scopes: Vec::new(),
                expires_unix_ms: None,
                grants: roomcast_core::Grants::none(),
            })
        };
        core.handle(
            now(),
            Input::Open {
                conn: conn(i),
                identity,
            },
        );
        for r in 0..rooms_each {
            let text = format!(
                r#"{{"action":"join","data":{{"room":"room-{}"}}}}"#,
                (i + r * 7) % 100
            );
            core.handle(
                now(),
                Input::Text {
                    conn: conn(i),
                    text: &text,
                },
            );
        }
    }
    drain(&mut core);
    core.check_invariants().expect("consistent");
    core
}
