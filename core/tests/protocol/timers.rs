//! Token expiry (4001) and heartbeats (4002).

use super::*;

#[test]
fn token_expiry_closes_4001_at_the_right_time() {
    let mut h = Harness::with_limits(Limits {
        token_warning_ms: 3_000,
        ..Limits::default()
    });
    h.advance_to(2 * SECOND_US);
    // Expires 10 s after the start of the clocks, i.e. 8 s after opening.
    h.open(c(1), user_expiring("alice", START_MS + 10_000));
    h.join(c(1), "user:alice");
    h.open(c(2), user("bob", &[]));
    // First the warning, 3 s ahead.
    assert_eq!(h.core.poll_timeout(), Some(7 * SECOND_US));
    let fired = h.run_timers_until(10 * SECOND_US - 1);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, 7 * SECOND_US);
    assert_eq!(fired[0].1.conn(), c(1));
    assert_eq!(fired[0].1.msg()["type"], "system_warning");
    assert_eq!(fired[0].1.msg()["data"]["code"], "TOKEN_EXPIRING");
    assert_alive(&mut h, c(1));
    let fired = h.run_timers_until(10 * SECOND_US);
    assert_eq!(
        fired,
        vec![(10 * SECOND_US, Out::Close(c(1), CloseCode::TokenExpired))]
    );
    assert_eq!(h.core.room_count(), 0);
    assert_eq!(h.core.connection_count(), 1);
    h.finish();
}

#[test]
fn an_already_expired_token_is_closed_4001_at_once() {
    let mut h = Harness::new(CoreConfig::default());
    h.advance_to(5 * SECOND_US);
    let outs = h.run(Input::Open {
        conn: c(1),
        identity: user_expiring("alice", START_MS + 5_000),
    });
    assert_eq!(outs, vec![Out::Close(c(1), CloseCode::TokenExpired)]);
    assert_eq!(h.core.connection_count(), 0);
    h.finish();
}

// ----- heartbeat -------------------------------------------------------------------------

fn heartbeat_limits() -> Limits {
    Limits {
        ping_interval_ms: 25_000,
        idle_timeout_ms: 60_000,
        ..Limits::default()
    }
}

#[test]
fn silent_connections_are_pinged_then_closed_4002() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    assert_eq!(h.core.poll_timeout(), Some(25 * SECOND_US));
    assert_eq!(h.run_timers_until(25 * SECOND_US - 1), vec![]);
    let fired = h.run_timers_until(100 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (25 * SECOND_US, Out::Ping(c(1))),
            (50 * SECOND_US, Out::Ping(c(1))),
            (60 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    assert_eq!(h.core.poll_timeout(), None);
    h.finish();
}

#[test]
fn a_pong_resets_the_idle_clock() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    h.open(c(2), anon());
    assert_eq!(
        h.run_timers_until(30 * SECOND_US),
        vec![
            (25 * SECOND_US, Out::Ping(c(1))),
            (25 * SECOND_US, Out::Ping(c(2)))
        ]
    );
    assert_eq!(h.run(Input::Pong { conn: c(1) }), vec![]);
    let fired = h.run_timers_until(200 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (50 * SECOND_US, Out::Ping(c(2))),
            (55 * SECOND_US, Out::Ping(c(1))),
            (60 * SECOND_US, Out::Close(c(2), CloseCode::IdleTimeout)),
            (80 * SECOND_US, Out::Ping(c(1))),
            (90 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    h.finish();
}

#[test]
fn client_messages_also_count_as_signs_of_life() {
    let mut h = Harness::with_limits(heartbeat_limits());
    h.open(c(1), anon());
    // A message every 20 s: never pinged, never closed.
    for i in 1..=10 {
        assert_eq!(h.run_timers_until(i * 20 * SECOND_US), vec![]);
        assert_alive(&mut h, c(1));
    }
    let fired = h.run_timers_until(300 * SECOND_US);
    assert_eq!(
        fired,
        vec![
            (225 * SECOND_US, Out::Ping(c(1))),
            (250 * SECOND_US, Out::Ping(c(1))),
            (260 * SECOND_US, Out::Close(c(1), CloseCode::IdleTimeout)),
        ]
    );
    h.finish();
}
