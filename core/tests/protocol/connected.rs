//! Protocol sections 2 and 3: the envelope and the `connected` message.

use super::*;

#[test]
fn connected_message_for_an_anonymous_connection() {
    let mut h = Harness::new(CoreConfig::default());
    let msg = h.open(c(1), anon());
    assert_eq!(
        msg,
        json!({
            "type": "connected",
            "timestamp": "2025-10-17T10:30:00.000Z",
            "data": {
                "connection_id": "00000000-0000-0000-0000-000000000001",
                "message": "Connected to roomcast WebSocket",
                "authenticated": false,
            }
        })
    );
    assert!(msg["data"].get("user_id").is_none());
    assert!(msg.get("id").is_none() && msg.get("room").is_none() && msg.get("seq").is_none());
    h.finish();
}

#[test]
fn connected_message_for_an_authenticated_connection() {
    let mut h = Harness::new(CoreConfig::default());
    let id = ConnectionId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let msg = h.open(id, user("alice", &[]));
    assert_eq!(
        msg["data"],
        json!({
            "connection_id": "01234567-89ab-cdef-0123-456789abcdef",
            "message": "Connected to roomcast WebSocket",
            "authenticated": true,
            "user_id": "alice",
        })
    );
    h.finish();
}

#[test]
fn connected_message_names_the_configured_server() {
    let mut h = Harness::new(CoreConfig {
        server_name: "AniWorld".into(),
        ..CoreConfig::default()
    });
    let msg = h.open(c(1), anon());
    assert_eq!(msg["data"]["message"], "Connected to AniWorld WebSocket");
    h.finish();
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds() {
    let mut h = Harness::new(CoreConfig::default());
    h.advance_to(3_723_456_789); // 1 h 2 min 3.456789 s later
    let msg = h.open(c(1), anon());
    assert_eq!(msg["timestamp"], "2025-10-17T11:32:03.456Z");
    h.advance_to(h.elapsed_us + 86_400 * SECOND_US);
    let pong = h.reply(c(1), r#"{"action":"ping"}"#);
    assert_eq!(pong["timestamp"], "2025-10-18T11:32:03.456Z");
    for ms in [0, 1, 999, 951_782_400_123, 4_102_444_799_999] {
        let mut core = Standalone::new(CoreConfig::default());
        core.handle(
            Now {
                monotonic_us: 0,
                unix_ms: ms,
            },
            Input::Open {
                conn: c(1),
                identity: anon(),
            },
        );
        let out = decode(core.poll_output().unwrap());
        let ts = out.msg()["timestamp"].as_str().unwrap().to_owned();
        assert!(is_timestamp(&ts), "{ts}");
    }
    h.finish();
}
