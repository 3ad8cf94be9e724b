//! The engine seam changed nothing a client of one node can see: a
//! recorded input sequence (`data/recorded.txt`, made by the build before
//! the seam with `RECORD=1`) replays to exactly the recorded outputs, byte
//! for byte.
//!
//! The file interleaves inputs (`> at_us verb args`), the outputs each one
//! produced (`< ...`) and the response (`= ...`).

use roomcast_core::validate::parse_broadcast_body;
use roomcast_core::{
    BroadcastOutcome, ConnectionId, CoreConfig, Identity, Input, Limits, MessageTypes, Now, Output,
    RoomOptions, Standalone, User,
};

const START_MS: i64 = 1_760_000_000_000;

fn config() -> CoreConfig {
    CoreConfig {
        limits: Limits {
            history_messages_max: 6,
            history_age_ms: 3_600_000,
            outbound_queue_bytes_max: 4_000,
            // Recorded when any unwritten byte made a member behind for
            // conflation: the same rule, configured.
            conflation_behind_bytes: 0,
            message_burst: 30,
            messages_per_second: 10,
            ping_interval_ms: 3_000,
            idle_timeout_ms: 9_000,
            ..Limits::default()
        },
        rooms: RoomOptions {
            presence_diff_prefixes: vec!["lobby".into()],
            conflate_prefixes: vec!["progress".into()],
            conflation_window_ms: 200,
            ..RoomOptions::default()
        },
        epoch_prefix: "rec".into(),
        ..CoreConfig::default()
    }
}

/// A small deterministic generator (the workload is recorded, not drawn at test time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The recorded workload's input lines (only used to make the recording).
fn workload() -> Vec<String> {
    let mut rng = Lcg(7);
    let rooms = ["downloads", "lobby", "progress", "scan"];
    let mut now_us = 0u64;
    let mut lines = Vec::new();
    let mut id = 0;
    // What the generator expects each room's epoch and top to be, so that
    // recoveries land near the top (some inside the history, some not).
    let mut epochs: Vec<&str> = Vec::new();
    let mut tops = std::collections::BTreeMap::new();
    for _ in 0..3_000 {
        now_us += rng.next(400_000);
        let c = rng.next(12);
        let room = rooms[rng.next(4) as usize];
        if !epochs.contains(&room) {
            epochs.push(room);
        }
        let epoch = 1 + epochs.iter().position(|r| *r == room).unwrap_or(0);
        let top: u64 = tops.get(room).copied().unwrap_or(0);
        id += 1;
        let line = match rng.next(20) {
            0 => format!(
                "open {c} {}",
                if c.is_multiple_of(3) { "anon" } else { "user" }
            ),
            1 => format!("closed {c}"),
            2..=4 => {
                format!(r#"text {c} {{"action":"join","data":{{"room":"{room}"}},"id":{id}}}"#)
            }
            5 => format!(
                r#"text {c} {{"action":"join","data":{{"room":"{room}","since":{{"epoch":"rec-{epoch}","seq":{}}}}},"id":{id}}}"#,
                top.saturating_sub(rng.next(10))
            ),
            6 => format!(r#"text {c} {{"action":"leave","data":{{"room":"{room}"}},"id":{id}}}"#),
            7 => format!(r#"text {c} {{"action":"ping","id":{id}}}"#),
            8 => {
                format!(r#"text {c} {{"action":"presence","data":{{"room":"{room}"}},"id":{id}}}"#)
            }
            9 => {
                *tops.entry(room).or_insert(0) += 1;
                format!(
                    r#"text {c} {{"action":"publish","data":{{"room":"{room}","type":"queue_status","data":{{"n":{id}}}}},"id":{id}}}"#
                )
            }
            10 => format!("text {c} not json"),
            11 => format!("written {c} {}", rng.next(3_000)),
            12 => "timeout".to_owned(),
            13 | 14 => {
                *tops.entry("progress").or_insert(0) += 1;
                format!(
                    r#"broadcast {{"room":"progress","type":"download_progress","data":{{"key":"k{}","download_id":"d","percent":{id}}}}}"#,
                    rng.next(2)
                )
            }
            _ => {
                *tops.entry(room).or_insert(0) += 1;
                let targets = if room == "downloads" {
                    r#""downloads""#.to_owned()
                } else {
                    *tops.entry("downloads").or_insert(0) += 1;
                    format!(r#""{room}","downloads""#)
                };
                format!(
                    r#"broadcast {{"rooms":[{targets}],"type":"queue_status","data":{{"n":{id},"pad":"{}"}}}}"#,
                    "x".repeat(rng.next(300) as usize)
                )
            }
        };
        lines.push(format!("> {now_us} {line}"));
    }
    lines
}

fn conn(c: &str) -> ConnectionId {
    ConnectionId::from_u128(c.parse::<u128>().expect("a connection number") + 1)
}

/// Replays input lines, rendering what each one produced.
fn replay(inputs: &[&str]) -> Vec<String> {
    let mut core = Standalone::new(config());
    let types = MessageTypes::default();
    let limits = config().limits;
    let mut out = Vec::new();
    let number_of = |id: ConnectionId| id.0.as_u128() - 1;
    for line in inputs {
        out.push(line.to_string());
        let mut parts = line[2..].splitn(3, ' ');
        let at_us: u64 = parts.next().and_then(|t| t.parse().ok()).expect("a time");
        let verb = parts.next().expect("a verb");
        let rest = parts.next().unwrap_or("");
        let now = Now::from_start(START_MS, at_us);
        let (first, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let response = match verb {
            "open" => {
                if core.core().is_open(conn(first)) {
                    Response::Done
                } else {
                    let identity = if tail == "anon" {
                        Identity::Anonymous
                    } else {
                        Identity::User(User {
                            id: format!("u{}", first),
                            scopes: vec!["publish".into()],
                            expires_unix_ms: None,
                            grants: roomcast_core::Grants::none(),
                        })
                    };
                    core.handle(
                        now,
                        Input::Open {
                            conn: conn(first),
                            identity,
                        },
                    );
                    Response::Done
                }
            }
            "closed" => {
                core.handle(now, Input::Closed { conn: conn(first) });
                Response::Done
            }
            "text" => {
                let text = Input::Text {
                    conn: conn(first),
                    text: tail,
                };
                core.handle(now, text);
                Response::Done
            }
            "written" => {
                let written = Input::Written {
                    conn: conn(first),
                    bytes: tail.parse().expect("bytes"),
                };
                core.handle(now, written);
                Response::Done
            }
            "timeout" => {
                core.handle(now, Input::Timeout);
                Response::Done
            }
            "broadcast" => match parse_broadcast_body(rest.as_bytes(), &types, &limits) {
                Ok(publish) => match core.broadcast(now, publish) {
                    BroadcastOutcome::Answered(Ok(receipt)) => Response::Published(receipt),
                    BroadcastOutcome::Answered(Err(error)) => Response::Rejected(error),
                    BroadcastOutcome::Pending(ticket) => Response::Pending(ticket),
                },
                Err(error) => Response::Rejected(error),
            },
            other => panic!("unknown verb {other}"),
        };
        while let Some(output) = core.poll_output() {
            out.push(match output {
                Output::Send { conn, frame } => {
                    format!("< send {} {}", number_of(conn), frame.as_str())
                }
                Output::Ping { conn } => format!("< ping {}", number_of(conn)),
                Output::Close { conn, code } => {
                    format!("< close {} {}", number_of(conn), code.code())
                }
                Output::Check { conn, .. } => format!("< verify {}", number_of(conn)),
            });
        }
        out.push(format!("= {response:?}"));
    }
    out
}

/// The line the recording writes after each input: the shape (and
/// `Debug` text) of the answer the core gave before answers were typed
/// per input, so the recording stays byte for byte.
/// (Its fields are read only through `Debug`.)
#[allow(dead_code)]
#[derive(Debug)]
enum Response {
    Done,
    Published(roomcast_core::PublishReceipt),
    Pending(roomcast_core::Ticket),
    Rejected(roomcast_core::validate::PublishError),
}

#[test]
fn a_recorded_run_replays_byte_for_byte() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/recorded.txt");
    if std::env::var_os("RECORD").is_some() {
        let inputs = workload();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        std::fs::write(path, replay(&refs).join("\n") + "\n").expect("write the recording");
    }
    let recorded = std::fs::read_to_string(path).expect("the recording");
    let inputs: Vec<&str> = recorded.lines().filter(|l| l.starts_with("> ")).collect();
    let replayed = replay(&inputs);
    let recorded: Vec<&str> = recorded.lines().collect();
    assert!(recorded.len() > 6_000, "the recording has substance");
    for (i, (want, got)) in recorded.iter().zip(&replayed).enumerate() {
        assert_eq!(*want, got, "line {} of the recording", i + 1);
    }
    assert_eq!(recorded.len(), replayed.len());
}
