//! Abort, closed connections and shutdown.

use super::*;

#[test]
fn abort_emits_a_close_with_the_given_code() {
    let mut h = Harness::new(CoreConfig::default());
    for (i, code) in CloseCode::ALL.into_iter().enumerate() {
        let conn = c(i as u128 + 1);
        h.open(conn, user("alice", &[]));
        h.join(conn, "downloads");
        let outs = h.run(Input::Abort { conn, code });
        assert_eq!(outs, vec![Out::Close(conn, code)]);
        assert_eq!(h.core.connection_count(), 0);
        assert_eq!(h.core.room_count(), 0);
        // Nothing more for an aborted connection.
        assert_eq!(h.text(conn, r#"{"action":"ping"}"#), vec![]);
        assert_eq!(h.run(Input::Abort { conn, code }), vec![]);
    }
    h.finish();
}

#[test]
fn closed_produces_no_output_and_releases_every_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    h.open(c(2), anon());
    for name in ["a", "b", "user:alice"] {
        h.join(c(1), name);
    }
    h.join(c(2), "a");
    assert_eq!(h.core.room_count(), 3);
    assert_eq!(h.run(Input::Closed { conn: c(1) }), vec![]);
    assert_eq!(h.core.room_count(), 1);
    assert_eq!(h.core.member_count(&room("a")), 1);
    // It gets nothing any more: not broadcasts, not direct messages.
    let (receipt, outs) = h.broadcast(&["a", "b"], "queue_status", json!({}));
    assert_eq!(receipt.delivered, 1);
    assert!(outs.iter().all(|o| o.conn() == c(2)));
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs), (Ok(0), vec![]));
    assert_eq!(h.run(Input::Closed { conn: c(1) }), vec![]);
    // The id may be reused by a new connection.
    h.open(c(1), anon());
    h.finish();
}

#[test]
fn shutdown_closes_every_connection_1001_in_id_order() {
    let mut h = Harness::new(CoreConfig::default());
    for n in [5, 2, 9, 1, 7, 3] {
        h.open(c(n), anon());
        h.join(c(n), "lobby");
    }
    h.run(Input::Closed { conn: c(7) });
    h.open(c(4), user("alice", &[])); // reuses a freed slot
    let outs = h.run(Input::Shutdown);
    let expected: Vec<Out> = [1, 2, 3, 4, 5, 9]
        .into_iter()
        .map(|n| Out::Close(c(n), CloseCode::GoingAway))
        .collect();
    assert_eq!(outs, expected);
    assert_eq!(h.core.connection_count(), 0);
    assert_eq!(h.core.room_count(), 0);
    assert_eq!(h.core.poll_timeout(), None);
    h.finish();
}

#[test]
fn after_every_connection_closes_no_room_remains() {
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: 2_000,
        idle_timeout_ms: 30_000,
        ping_interval_ms: 10_000,
        ..Limits::default()
    });
    let names = ["a", "b", "c", "d", "user:u3", "user:u7"];
    for n in 0..40u128 {
        let identity = if n % 2 == 0 {
            anon()
        } else {
            user(&format!("u{}", n % 8), &["publish"])
        };
        h.open(c(n), identity);
        for (i, name) in names.iter().enumerate() {
            if !(n as usize + i).is_multiple_of(3) {
                h.text(c(n), &format!(r#"{{"action":"join","room":"{name}"}}"#));
            }
        }
    }
    assert!(h.core.room_count() >= 4);
    // Every way out: closed, aborted, slow consumer, idle timeout.
    for n in 0..10 {
        h.run(Input::Closed { conn: c(n) });
    }
    for n in 10..20 {
        h.run(Input::Abort {
            conn: c(n),
            code: CloseCode::MessageTooBig,
        });
    }
    for n in 20..30 {
        h.run(Input::Written {
            conn: c(n),
            bytes: usize::MAX,
        });
    }
    // The others (30..40) never report writes and overflow their queues.
    for _ in 0..6 {
        h.broadcast(
            &["a", "b", "c", "d"],
            "queue_status",
            json!({"pad": "x".repeat(300)}),
        );
        for n in 20..30 {
            h.run(Input::Written {
                conn: c(n),
                bytes: usize::MAX,
            });
        }
    }
    assert_eq!(h.core.connection_count(), 10);
    h.run_timers_until(31 * SECOND_US);
    assert_eq!(h.core.connection_count(), 0);
    h.check();
    h.finish(); // ages the history out and checks no room remains
}

/// Regression: a zero ping interval once made `Input::Timeout` loop forever,
/// and huge intervals overflowed `ms * 1000`.
#[test]
fn degenerate_heartbeat_limits_neither_hang_nor_overflow() {
    use roomcast_core::{ConnectionId, CoreConfig, Identity, Input, Limits, Now, Standalone};
    for (ping_interval_ms, idle_timeout_ms) in
        [(0, 60_000), (u64::MAX, u64::MAX), (1, u64::MAX / 999)]
    {
        let limits = Limits {
            ping_interval_ms,
            idle_timeout_ms,
            ..Limits::default()
        };
        let mut core = Standalone::new(CoreConfig {
            limits,
            ..CoreConfig::default()
        });
        let conn = ConnectionId::from_u128(9);
        core.handle(
            Now::default(),
            Input::Open {
                conn,
                identity: Identity::Anonymous,
            },
        );
        let mut outputs = 0;
        for step in 1..=5u64 {
            core.handle(Now::from_start(0, step * 1_000), Input::Timeout);
            while core.poll_output().is_some() {
                outputs += 1;
            }
        }
        assert!(
            outputs < 20,
            "bounded work per timeout ({ping_interval_ms}, {idle_timeout_ms}): {outputs} outputs"
        );
        core.check_invariants().unwrap();
    }
}
