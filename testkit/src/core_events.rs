//! The `core_events` fuzz target: a structured workload against the core
//! and a faulty engine, checked by the delivery oracle (see
//! [`core_events`]).

use arbitrary::{Arbitrary, Unstructured};
use roomcast_core::engine::faults::{EngineFaults, FaultyEngine};
use roomcast_core::oracle::{Observed, Oracle, Sent};
use roomcast_core::parse::parse_request;
use roomcast_core::standalone::memory_engine;
use roomcast_core::{
    CloseCode, ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, Publish, RoomName,
    Standalone, User,
};
use serde_json::{Map, Value};

use crate::record_receipt;

/// One step of a structured core workload.
#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        client: u8,
        user: Option<u8>,
        expires_in_ms: Option<u16>,
    },
    Join {
        client: u8,
        room: u8,
        top_level: bool,
    },
    Leave {
        client: u8,
        room: u8,
    },
    Ping {
        client: u8,
    },
    Presence {
        client: u8,
        room: u8,
    },
    Raw {
        client: u8,
        text: String,
    },
    Binary {
        client: u8,
    },
    Close {
        client: u8,
    },
    Abort {
        client: u8,
    },
    Broadcast {
        rooms: Vec<u8>,
        progress: bool,
    },
    Send {
        user: u8,
    },
    Written {
        client: u8,
        bytes: u16,
    },
    Advance {
        ms: u16,
    },
    Shutdown,
}

const CLIENTS: u8 = 6;
const ROOMS: u8 = 4;

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
    let Ok(ops) = Vec::<Op>::arbitrary(&mut source) else {
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
    let engine = FaultyEngine::new(engine, faults, data.len() as u64);
    let mut core = Standalone::with_engine(config, engine);
    let mut oracle = Oracle::new();
    // client index → (oracle key, connection) of its current connection
    let mut live: [Option<(u64, ConnectionId)>; CLIENTS as usize] = [None; CLIENTS as usize];
    let mut next_key = 1u64;
    let mut next_id = 0u64;
    let mut now_us = 0u64;
    let room = |r: u8| format!("r{}", r % ROOMS);
    // Final quiet, with the engine healed: held (conflated) progress
    // events go out, and stream checks find and refill every lost message,
    // before completeness is checked.
    let settle = [Op::Advance { ms: 1_000 }, Op::Advance { ms: 1_000 }];
    let steps = ops.len();
    for (step, op) in ops.into_iter().chain(settle).enumerate() {
        if step == steps {
            core.engine_mut().heal();
        }
        let now = Now::from_start(0, now_us);
        let slot = |c: u8| (c % CLIENTS) as usize;
        let mut request = |oracle: &mut Oracle, key: u64, sent: Sent| {
            next_id += 1;
            oracle
                .sent(key, next_id.to_string(), sent)
                .expect("ids are fresh");
            next_id
        };
        match op {
            Op::Open {
                client,
                user,
                expires_in_ms,
            } => {
                if live[slot(client)].is_some() {
                    continue;
                }
                let conn = ConnectionId::from_u128(u128::from(next_key));
                let identity = match user {
                    None => Identity::Anonymous,
                    Some(u) => Identity::User(User {
                        id: format!("u{}", u % 3),
                        scopes: vec!["publish".into()],
                        expires_unix_ms: expires_in_ms.map(|ms| now.unix_ms + i64::from(ms)),
                        grants: roomcast_core::Grants::none(),
                    }),
                };
                live[slot(client)] = Some((next_key, conn));
                oracle.opened(next_key);
                next_key += 1;
                core.handle(now, Input::Open { conn, identity });
            }
            Op::Join {
                client,
                room: r,
                top_level,
            } => {
                let Some((key, conn)) = live[slot(client)] else {
                    continue;
                };
                let id = request(&mut oracle, key, Sent::Join(room(r)));
                let text = if top_level {
                    format!(r#"{{"action":"join","room":"{}","id":{id}}}"#, room(r))
                } else {
                    format!(
                        r#"{{"action":"join","data":{{"room":"{}"}},"id":{id}}}"#,
                        room(r)
                    )
                };
                core.handle(now, Input::Text { conn, text: &text });
            }
            Op::Leave { client, room: r } => {
                let Some((key, conn)) = live[slot(client)] else {
                    continue;
                };
                let id = request(&mut oracle, key, Sent::Leave(room(r)));
                let text = format!(
                    r#"{{"action":"leave","data":{{"room":"{}"}},"id":{id}}}"#,
                    room(r)
                );
                core.handle(now, Input::Text { conn, text: &text });
            }
            Op::Ping { client } | Op::Presence { client, .. } => {
                let Some((key, conn)) = live[slot(client)] else {
                    continue;
                };
                let id = request(&mut oracle, key, Sent::Other);
                let text = match op {
                    Op::Presence { room: r, .. } => format!(
                        r#"{{"action":"presence","data":{{"room":"{}"}},"id":{id}}}"#,
                        room(r)
                    ),
                    _ => format!(r#"{{"action":"ping","id":{id}}}"#),
                };
                core.handle(now, Input::Text { conn, text: &text });
            }
            Op::Raw { client, text } => {
                let Some((_, conn)) = live[slot(client)] else {
                    continue;
                };
                // Only texts the server rejects without an id: anything else
                // would change membership or expect a reply behind the oracle's back.
                match parse_request(&text) {
                    Err(rejection) if rejection.id.is_none() => {}
                    _ => continue,
                }
                core.handle(now, Input::Text { conn, text: &text });
            }
            Op::Binary { client } => {
                let Some((_, conn)) = live[slot(client)] else {
                    continue;
                };
                core.handle(now, Input::Binary { conn });
            }
            Op::Close { client } => {
                let Some((key, conn)) = live[slot(client)].take() else {
                    continue;
                };
                oracle
                    .ended(key, None)
                    .expect("a client's own close is always fine");
                core.handle(now, Input::Closed { conn });
            }
            Op::Abort { client } => {
                // The one abort a healthy shell sends (1011 would be a server fault).
                let Some((_, conn)) = live[slot(client)] else {
                    continue;
                };
                core.handle(
                    now,
                    Input::Abort {
                        conn,
                        code: CloseCode::MessageTooBig,
                    },
                );
            }
            Op::Broadcast { rooms, progress } => {
                let mut names: Vec<RoomName> = rooms
                    .iter()
                    .take(3)
                    .filter_map(|r| RoomName::new(&room(*r)))
                    .collect();
                names.dedup();
                if names.is_empty() {
                    continue;
                }
                let (kind, data) = if progress {
                    (
                        "download_progress",
                        serde_json::json!({"key": "k", "download_id": now_us % 2, "percent": now_us % 100}),
                    )
                } else {
                    ("queue_status", serde_json::json!({"n": now_us}))
                };
                let Value::Object(data) = data else { continue };
                let publish = Publish {
                    rooms: names,
                    kind: kind.into(),
                    data,
                };
                let response = core.handle(now, Input::Broadcast(publish));
                record_receipt(&mut oracle, response);
            }
            Op::Send { user } => {
                let message = roomcast_core::validate::DirectMessage {
                    target: roomcast_core::SendTarget::User(format!("u{}", user % 3)),
                    kind: "system_info".into(),
                    data: Map::new(),
                    to_other_nodes: true,
                };
                core.handle(now, Input::Direct(message));
            }
            Op::Written { client, bytes } => {
                let Some((_, conn)) = live[slot(client)] else {
                    continue;
                };
                core.handle(
                    now,
                    Input::Written {
                        conn,
                        bytes: usize::from(bytes),
                    },
                );
            }
            Op::Advance { ms } => {
                // Every deadline on the way fires at its own time (delayed
                // engine answers, stream checks), each step delivered.
                let target = now_us + u64::from(ms) * 1000;
                while let Some(at) = core.poll_timeout().filter(|&at| at < target) {
                    now_us = now_us.max(at);
                    core.handle(Now::from_start(0, now_us), Input::Timeout);
                    deliver(&mut core, &mut oracle, &mut live, now_us);
                }
                now_us = target;
                core.handle(Now::from_start(0, now_us), Input::Timeout);
            }
            Op::Shutdown => {
                core.handle(now, Input::Shutdown);
            }
        }
        deliver(&mut core, &mut oracle, &mut live, now_us);
        if let Err(broken) = core.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }
    if let Err(violation) = oracle.check_quiescent(core.connection_count()) {
        panic!("{violation}");
    }
    for (_, conn) in live.iter().flatten() {
        core.handle(now_at(now_us), Input::Closed { conn: *conn });
    }
    // Presence diffs told the remaining members about each departure; they
    // are gone too now, so those frames have no reader.
    while core.poll_output().is_some() {}
    // Rooms outlive their members while they hold history: let it age out.
    let history_us = core.config().limits.history_age_ms * 1000;
    core.handle(now_at(now_us + history_us), Input::Timeout);
    assert!(
        core.poll_output().is_none(),
        "no output once everyone has left"
    );
    assert_eq!(
        (core.connection_count(), core.room_count()),
        (0, 0),
        "nothing left after everyone leaves"
    );
    core.check_invariants().expect("invariants hold when empty");
}

/// Hands every output to its client (who reads promptly and answers
/// pings) and to the oracle, and records receipts of delayed broadcasts.
fn deliver(
    core: &mut Standalone<FaultyEngine>,
    oracle: &mut Oracle,
    live: &mut [Option<(u64, ConnectionId)>],
    now_us: u64,
) {
    while let Some((_, response)) = core.poll_answer() {
        record_receipt(oracle, response);
    }
    while let Some(output) = core.poll_output() {
        let index = live
            .iter()
            .position(|l| l.is_some_and(|(_, c)| c == output.conn()));
        let Some(index) = index else {
            panic!("output for a connection that is not open: {output:?}")
        };
        let (key, conn) = live[index].expect("found above");
        match output {
            Output::Send { frame, .. } => {
                let observed =
                    Observed::parse(frame.as_str()).expect("server frames are JSON objects");
                if let Err(violation) = oracle.received(key, &observed) {
                    panic!("{violation}");
                }
                // The client reads promptly: acknowledge the write.
                core.handle(
                    now_at(now_us),
                    Input::Written {
                        conn,
                        bytes: frame.len(),
                    },
                );
            }
            Output::Ping { .. } => {
                core.handle(now_at(now_us), Input::Pong { conn });
            }
            Output::Check { .. } => {
                panic!("no refresh was sent and no hook configured, yet the core asks for a check: {output:?}");
            }
            Output::Close { code, .. } => {
                live[index] = None;
                if let Err(violation) = oracle.ended(key, Some(code.code())) {
                    panic!("{violation}");
                }
            }
        }
    }
}

fn now_at(us: u64) -> Now {
    Now::from_start(0, us)
}
