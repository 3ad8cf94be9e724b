//! Conflation: in conflating rooms, a member that is behind (its socket
//! pushed back, or its backlog passed `conflation_behind_bytes`) gets only
//! the newest `download_progress` per series (flagged `"conflated": true`
//! after a jump); everything else is delivered unchanged and in `seq`
//! order, and a member that keeps up gets every event.

use roomcast_core::{
    ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, Publish, RoomName, RoomOptions,
    Standalone,
};
use serde_json::{json, Value};

struct Room {
    core: Standalone,
    now_us: u64,
}

impl Room {
    /// Room `downloads` conflates with a 100 ms window; `a` reads promptly,
    /// `b` never does (its socket is reported full).
    fn new() -> (Room, ConnectionId, ConnectionId) {
        let rooms = RoomOptions {
            conflate_prefixes: vec!["downloads".into()],
            conflation_window_ms: 100,
            ..RoomOptions::default()
        };
        let limits = Limits {
            ping_interval_ms: 3_600_000,
            idle_timeout_ms: 7_200_000,
            ..Limits::default()
        };
        let mut r = Room {
            core: Standalone::new(CoreConfig {
                rooms,
                limits,
                ..CoreConfig::default()
            }),
            now_us: 0,
        };
        let (a, b) = (ConnectionId::from_u128(1), ConnectionId::from_u128(2));
        for conn in [a, b] {
            r.core.handle(
                r.now(),
                Input::Open {
                    conn,
                    identity: Identity::Anonymous,
                },
            );
            r.core.handle(
                r.now(),
                Input::Text {
                    conn,
                    text: r#"{"action":"join","room":"downloads"}"#,
                },
            );
        }
        // a has read everything so far; b has not, and its socket is full.
        r.drain();
        r.core.handle(r.now(), Input::Blocked { conn: b });
        r.core.handle(
            r.now(),
            Input::Written {
                conn: a,
                bytes: usize::MAX,
            },
        );
        (r, a, b)
    }

    fn now(&self) -> Now {
        Now::from_start(0, self.now_us)
    }

    /// Outputs as (conn, message); `a`'s writes are acknowledged as they come.
    fn drain(&mut self) -> Vec<(ConnectionId, Value)> {
        let mut out = Vec::new();
        while let Some(output) = self.core.poll_output() {
            let Output::Send { conn, frame } = output else {
                panic!("unexpected {output:?}")
            };
            out.push((conn, serde_json::from_str(frame.as_str()).unwrap()));
            if conn == ConnectionId::from_u128(1) {
                self.core.handle(
                    self.now(),
                    Input::Written {
                        conn,
                        bytes: frame.len(),
                    },
                );
            }
        }
        self.core.check_invariants().unwrap();
        out
    }

    fn publish(&mut self, kind: &str, data: Value) -> Vec<(ConnectionId, Value)> {
        let publish = Publish {
            rooms: vec![RoomName::new("downloads").unwrap()],
            kind: kind.into(),
            data: data.as_object().unwrap().clone(),
        };
        self.core.broadcast(self.now(), publish);
        self.drain()
    }

    fn progress(&mut self, download: &str, percent: u64) -> Vec<(ConnectionId, Value)> {
        self.publish(
            "download_progress",
            json!({"key": "attack-on-titan", "download_id": download, "percent": percent}),
        )
    }

    fn advance(&mut self, us: u64) -> Vec<(ConnectionId, Value)> {
        self.now_us += us;
        self.core.handle(self.now(), Input::Timeout);
        self.drain()
    }
}

fn seqs_for(out: &[(ConnectionId, Value)], conn: ConnectionId) -> Vec<(u64, bool)> {
    out.iter()
        .filter(|(c, _)| *c == conn)
        .map(|(_, m)| (m["seq"].as_u64().unwrap(), m["conflated"] == true))
        .collect()
}

#[test]
fn a_slow_reader_gets_the_newest_progress_flagged_and_a_fast_one_gets_all() {
    let (mut r, a, b) = Room::new();
    let mut out = Vec::new();
    for percent in 1..=5 {
        out.extend(r.progress("d1", percent * 10));
    }
    assert_eq!(
        seqs_for(&out, a),
        vec![(1, false), (2, false), (3, false), (4, false), (5, false)]
    );
    // b has not even acknowledged its join reply: it is behind, so 1..5 are
    // held and each replaces the one before.
    assert_eq!(seqs_for(&out, b), vec![]);
    assert!(r.advance(99_999).is_empty(), "held for the whole window");
    let flushed = r.advance(1);
    assert_eq!(seqs_for(&flushed, b), vec![(5, true)]);
    assert_eq!(flushed[0].1["data"]["percent"], 50, "the newest event");
}

#[test]
fn other_events_are_never_conflated_and_flush_what_is_held_first() {
    let (mut r, _a, b) = Room::new();
    let mut out = Vec::new();
    out.extend(r.progress("d1", 10)); // 1: held (b is behind)
    out.extend(r.progress("d1", 20)); // 2: replaces 1
    out.extend(r.progress("d2", 5)); // 3: held (another series)
    out.extend(r.progress("d1", 30)); // 4: replaces 2
    out.extend(r.publish(
        "download_complete",
        json!({"key": "attack-on-titan", "download_id": "d9"}),
    )); // 5
        // The completion flushes what is held first, in seq order; the jump
        // over the replaced 1 and 2 is seen (and flagged) at 3.
    assert_eq!(seqs_for(&out, b), vec![(3, true), (4, false), (5, false)]);
    assert!(r.advance(1_000_000).is_empty(), "nothing left held");
}

#[test]
fn non_conflating_rooms_and_series_less_progress_are_untouched() {
    let (mut r, _a, b) = Room::new();
    let mut out = Vec::new();
    for percent in 1..=3 {
        // No download_id: not a series, never conflated.
        out.extend(r.publish("download_progress", json!({"key": "k", "percent": percent})));
    }
    assert_eq!(seqs_for(&out, b), vec![(1, false), (2, false), (3, false)]);
}

#[test]
fn leaving_drops_what_is_held() {
    let (mut r, _a, b) = Room::new();
    r.progress("d1", 10);
    r.progress("d1", 20);
    r.core.handle(
        r.now(),
        Input::Text {
            conn: b,
            text: r#"{"action":"leave","room":"downloads"}"#,
        },
    );
    let out = r.drain();
    assert_eq!(out.len(), 1, "just the leave reply: {out:?}");
    assert!(r.advance(1_000_000).is_empty());
}

/// Bytes merely waiting for the shell's next write do not make a member
/// behind: in a 10,000-member room, progress events published one after
/// the other before any socket is written (one hub batch) all reach every
/// member, none held, none flagged.
#[test]
fn readers_that_keep_up_get_every_progress_event_at_ten_thousand_members() {
    const MEMBERS: u128 = 10_000;
    const EVENTS: u64 = 4;
    let rooms = RoomOptions {
        conflate_prefixes: vec!["downloads".into()],
        conflation_window_ms: 100,
        ..RoomOptions::default()
    };
    let limits = Limits {
        ping_interval_ms: 3_600_000,
        idle_timeout_ms: 7_200_000,
        ..Limits::default()
    };
    let mut core = Standalone::new(CoreConfig {
        rooms,
        limits,
        ..CoreConfig::default()
    });
    let now = Now::from_start(0, 0);
    for id in 0..MEMBERS {
        let conn = ConnectionId::from_u128(id);
        let identity = Identity::Anonymous;
        core.handle(now, Input::Open { conn, identity });
        let text = r#"{"action":"join","room":"downloads"}"#;
        core.handle(now, Input::Text { conn, text });
    }
    // Every member read its `connected` and join reply.
    let mut written = std::collections::BTreeMap::<ConnectionId, usize>::new();
    while let Some(output) = core.poll_output() {
        if let Output::Send { conn, frame } = output {
            *written.entry(conn).or_default() += frame.len();
        }
    }
    for (conn, bytes) in written {
        core.handle(now, Input::Written { conn, bytes });
    }
    // One batch: several progress events of one series, no write between.
    for percent in 1..=EVENTS {
        let publish = Publish {
            rooms: vec![RoomName::new("downloads").unwrap()],
            kind: "download_progress".into(),
            data: json!({"key": "k", "download_id": "d1", "percent": percent})
                .as_object()
                .unwrap()
                .clone(),
        };
        core.broadcast(now, publish);
    }
    let mut got = std::collections::BTreeMap::<ConnectionId, Vec<(u64, bool)>>::new();
    while let Some(output) = core.poll_output() {
        let Output::Send { conn, frame } = output else {
            panic!("unexpected {output:?}")
        };
        let message: Value = serde_json::from_str(frame.as_str()).unwrap();
        got.entry(conn).or_default().push((
            message["seq"].as_u64().unwrap(),
            message["conflated"] == true,
        ));
    }
    let every: Vec<(u64, bool)> = (1..=EVENTS).map(|seq| (seq, false)).collect();
    assert_eq!(got.len(), MEMBERS as usize, "every member got something");
    for (conn, seqs) in &got {
        assert_eq!(seqs, &every, "{conn:?} got every event, unconflated");
    }
    // Nothing was held: the window closing sends nothing more.
    core.handle(Now::from_start(0, 1_000_000), Input::Timeout);
    assert!(core.poll_output().is_none());
    core.check_invariants().unwrap();
}

/// A member whose socket pushed back is behind until everything queued
/// for it is written; then it gets events at once again.
#[test]
fn a_pushed_back_member_is_behind_until_its_backlog_is_written() {
    let (mut r, _a, b) = Room::new();
    let out = r.progress("d1", 10); // 1: held (b's socket is full)
    assert_eq!(seqs_for(&out, b), vec![]);
    let flushed = r.advance(100_000);
    assert_eq!(seqs_for(&flushed, b), vec![(1, false)]);
    // b's client reads everything: its backlog is written, it caught up.
    r.core.handle(
        r.now(),
        Input::Written {
            conn: b,
            bytes: usize::MAX,
        },
    );
    let out = r.progress("d1", 20);
    assert_eq!(seqs_for(&out, b), vec![(2, false)], "sent at once");
    let out = r.progress("d1", 30);
    assert_eq!(
        seqs_for(&out, b),
        vec![(3, false)],
        "2 not yet written does not make b behind"
    );
}

/// Without any push-back report, a backlog past `conflation_behind_bytes`
/// makes a member behind.
#[test]
fn a_backlog_past_the_threshold_makes_a_member_behind() {
    let rooms = RoomOptions {
        conflate_prefixes: vec!["downloads".into()],
        conflation_window_ms: 100,
        ..RoomOptions::default()
    };
    let limits = Limits {
        conflation_behind_bytes: 1_000,
        ping_interval_ms: 3_600_000,
        idle_timeout_ms: 7_200_000,
        ..Limits::default()
    };
    let mut r = Room {
        core: Standalone::new(CoreConfig {
            rooms,
            limits,
            ..CoreConfig::default()
        }),
        now_us: 0,
    };
    let b = ConnectionId::from_u128(2);
    r.core.handle(
        r.now(),
        Input::Open {
            conn: b,
            identity: Identity::Anonymous,
        },
    );
    r.core.handle(
        r.now(),
        Input::Text {
            conn: b,
            text: r#"{"action":"join","room":"downloads"}"#,
        },
    );
    let mut out = r.drain();
    let mut percent = 0;
    // b reads nothing: events go out until its backlog passes 1,000 bytes.
    let mut backlog: usize = out.iter().map(|(_, m)| m.to_string().len()).sum();
    while backlog <= 1_000 {
        percent += 1;
        let sent = r.progress("d1", percent);
        assert_eq!(sent.len(), 1, "not behind yet at {backlog} bytes");
        backlog += sent[0].1.to_string().len();
        out.extend(sent);
    }
    let held = r.progress("d1", 99);
    assert!(held.is_empty(), "behind past the threshold");
    let flushed = r.advance(100_000);
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].1["data"]["percent"], 99);
}
