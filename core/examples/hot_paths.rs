//! A fixed workload of the core's hot paths, for instruction counts that
//! do not depend on what else the machine is doing:
//!
//! ```sh
//! cargo build --release -p roomcast-core --example hot_paths
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/hot_paths ping 20000
//! ```
//!
//! Run each workload with two counts (say N and 2N): the difference of the
//! two totals divided by N is the cost of one operation, set-up excluded.
//! Workloads (the same as `benches/core.rs`): `ping` (1,000 connections in
//! 4 of 100 rooms each), `join_leave` (a room of 50 members), `fresh_room`
//! (join and leave a room nobody else is in), `broadcast` (to 10,000
//! members). docs/benchmarks.md records the figures.

use std::hint::black_box;

use roomcast_core::{Identity, Input, Publish, RoomName, Standalone};
use serde_json::json;

#[path = "../benches/workload.rs"]
mod workload;

use workload::{config, conn, drain, now, populated};

/// The state machine measured (the build before the engine seam measured
/// `Core` here).
type Machine = Standalone;

fn text(core: &mut Machine, i: usize, text: &str) {
    core.handle(
        now(),
        Input::Text {
            conn: conn(i),
            text,
        },
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    match workload.as_str() {
        "ping" => {
            let mut core = populated(1_000, 4);
            for n in 0..count {
                text(
                    &mut core,
                    n % 1_000,
                    black_box(r#"{"action":"ping","id":42}"#),
                );
                assert_eq!(drain(&mut core), 1);
            }
        }
        "join_leave" | "fresh_room" => {
            let mut core = populated(1_000, 4);
            for i in 0..50 {
                text(&mut core, i, r#"{"action":"join","room":"lobby"}"#);
            }
            drain(&mut core);
            let room = if workload == "join_leave" {
                "lobby"
            } else {
                "scratch"
            };
            let join = format!(r#"{{"action":"join","data":{{"room":"{room}"}}}}"#);
            let leave = format!(r#"{{"action":"leave","data":{{"room":"{room}"}}}}"#);
            for n in 0..count {
                let i = 50 + n % 950;
                text(&mut core, i, &join);
                text(&mut core, i, &leave);
                assert_eq!(drain(&mut core), 2);
            }
        }
        "broadcast" => {
            let mut core = Machine::new(config());
            for i in 0..10_000 {
                let identity = Identity::Anonymous;
                core.handle(
                    now(),
                    Input::Open {
                        conn: conn(i),
                        identity,
                    },
                );
                text(
                    &mut core,
                    i,
                    r#"{"action":"join","data":{"room":"downloads"}}"#,
                );
            }
            drain(&mut core);
            let data = json!({"download_id": "abc123", "key": "attack-on-titan",
                              "folder": "Attack on Titan (2013)", "percent": 45.2,
                              "speed_mbps": 2.5, "eta_seconds": 180});
            let serde_json::Value::Object(data) = data else {
                unreachable!("an object")
            };
            let publish = Publish {
                rooms: vec![RoomName::new("downloads").expect("valid")],
                kind: "download_progress".to_owned(),
                data,
            };
            for _ in 0..count {
                core.broadcast(now(), publish.clone());
                assert_eq!(drain(&mut core), 10_000);
            }
        }
        other => {
            eprintln!("unknown workload {other:?}: ping, join_leave, fresh_room or broadcast");
            std::process::exit(2);
        }
    }
}
