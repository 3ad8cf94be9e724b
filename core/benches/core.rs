//! Core throughput, end to end through `Core::handle` + draining `poll_output`:
//!
//! - `request/ping`: one client ping on a core holding 1,000 connections
//!   (throughput = requests/s);
//! - `request/join_leave_*`: join then leave (2 requests per iteration),
//!   into a populated room and into a room created and dropped each time;
//! - `broadcast/10k_members`: one broadcast to a room of 10,000 members
//!   (throughput = recipients/s, so time per element = ns per recipient).
//!
//! Run: `cargo bench -p roomcast-core --bench core -- --quick`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomcast_core::{Identity, Input, Publish, RoomName, Standalone};
use serde_json::json;

#[path = "workload.rs"]
mod workload;

use workload::{config, conn, drain, now, populated};

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");

    let mut core = populated(1_000, 4);
    let mut i = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function("ping", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            core.handle(
                now(),
                Input::Text {
                    conn: conn(i),
                    text: black_box(r#"{"action":"ping","id":42}"#),
                },
            );
            assert_eq!(drain(&mut core), 1);
        })
    });

    // 50 connections stay in "lobby"; the other 950 churn through it.
    for i in 0..50 {
        core.handle(
            now(),
            Input::Text {
                conn: conn(i),
                text: r#"{"action":"join","room":"lobby"}"#,
            },
        );
    }
    drain(&mut core);
    group.throughput(Throughput::Elements(2));
    let mut i = 50;
    group.bench_function("join_leave_populated_room", |b| {
        b.iter(|| {
            i = if i == 999 { 50 } else { i + 1 };
            for text in [
                r#"{"action":"join","data":{"room":"lobby"}}"#,
                r#"{"action":"leave","data":{"room":"lobby"}}"#,
            ] {
                core.handle(
                    now(),
                    Input::Text {
                        conn: conn(i),
                        text,
                    },
                );
            }
            assert_eq!(drain(&mut core), 2);
        })
    });

    let mut i = 0;
    group.bench_function("join_leave_fresh_room", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            // Nobody else is in this room: it is created and dropped each time.
            for text in [
                r#"{"action":"join","room":"scratch"}"#,
                r#"{"action":"leave","room":"scratch"}"#,
            ] {
                core.handle(
                    now(),
                    Input::Text {
                        conn: conn(i),
                        text,
                    },
                );
            }
            assert_eq!(drain(&mut core), 2);
        })
    });
    core.check_invariants().expect("consistent");
    assert_eq!(
        core.member_count(&RoomName::new("lobby").expect("valid")),
        50
    );
    group.finish();
}

fn broadcast(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let mut core = Standalone::new(config());
    for i in 0..MEMBERS {
        core.handle(
            now(),
            Input::Open {
                conn: conn(i),
                identity: Identity::Anonymous,
            },
        );
        core.handle(
            now(),
            Input::Text {
                conn: conn(i),
                text: r#"{"action":"join","data":{"room":"downloads"}}"#,
            },
        );
    }
    drain(&mut core);
    let publish = Publish {
        rooms: vec![RoomName::new("downloads").expect("valid")],
        kind: "download_progress".to_owned(),
        data: match json!({"download_id": "abc123", "key": "attack-on-titan",
                           "folder": "Attack on Titan (2013)", "percent": 45.2,
                           "speed_mbps": 2.5, "eta_seconds": 180})
        {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        },
    };

    let mut group = c.benchmark_group("broadcast");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("10k_members", |b| {
        b.iter(|| {
            core.broadcast(now(), publish.clone());
            assert_eq!(drain(&mut core), MEMBERS);
        })
    });
    group.finish();
    core.check_invariants().expect("consistent");
}

criterion_group!(benches, requests, broadcast);
criterion_main!(benches);
