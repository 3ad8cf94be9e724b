//! Section 4: error replies (malformed frames, bad rooms, unknown actions,
//! forbidden rooms and publishes, refresh, rate limits, too many rooms).

use super::*;

#[test]
fn invalid_message_for_malformed_frames_and_the_connection_stays_open() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for text in [
        "",
        "not json",
        "{",
        r#"{"action":"ping""#,
        r#"{"action":"ping"} trailing"#,
        "[]",
        r#"["action","ping"]"#,
        "1",
        "null",
        r#""ping""#,
        "{}",
        r#"{"data":{"room":"a"}}"#,
        r#"{"action":5}"#,
        r#"{"action":null}"#,
        r#"{"action":["ping"]}"#,
        r#"{"action":"ping","data":[]}"#,
        r#"{"action":"ping","data":"x"}"#,
        r#"{"action":"ping","data":1}"#,
        r#"{"action":"ping","action":"ping"}"#,
        r#"{"action":"presence","data":{"room":"a","after":5}}"#,
        r#"{"action":"join","data":{"room":"a","since":{"epoch":"e","seq":-1}}}"#,
        r#"{"action":"join","data":{"room":"a","since":"yesterday"}}"#,
        r#"{"action":"publish","data":{"room":"a"}}"#,
        r#"{"action":"refresh","data":{}}"#,
    ] {
        let reply = h.reply(c(1), text);
        assert_eq!(error_code(&reply), "INVALID_MESSAGE", "{text:?}: {reply}");
        assert!(reply.get("id").is_none());
    }
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn invalid_message_for_binary_frames() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let outs = h.run(Input::Binary { conn: c(1) });
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(1));
    assert_eq!(error_code(outs[0].msg()), "INVALID_MESSAGE");
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn invalid_subscription_for_bad_room_names() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let too_long = "x".repeat(129);
    let rooms = [
        "".to_owned(),
        "a b".to_owned(),
        "room/1".to_owned(),
        "ü".to_owned(),
        "tab\\t".to_owned(),
        too_long,
    ];
    for action in ["join", "leave"] {
        let mut cases = vec![
            format!(r#"{{"action":"{action}"}}"#),
            format!(r#"{{"action":"{action}","data":{{}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":null}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":5}}}}"#),
            format!(r#"{{"action":"{action}","data":{{"room":["a"]}}}}"#),
            format!(r#"{{"action":"{action}","room":true}}"#),
        ];
        for name in &rooms {
            cases.push(format!(
                r#"{{"action":"{action}","data":{{"room":"{name}"}}}}"#
            ));
            cases.push(format!(r#"{{"action":"{action}","room":"{name}"}}"#));
        }
        for text in cases {
            let reply = h.reply(c(1), &text);
            assert_eq!(
                error_code(&reply),
                "INVALID_SUBSCRIPTION",
                "{text}: {reply}"
            );
        }
    }
    // 128 bytes is still fine.
    h.join(c(1), &"x".repeat(128));
    let reply = h.reply(c(1), r#"{"action":"presence","data":{}}"#);
    assert_eq!(error_code(&reply), "INVALID_SUBSCRIPTION");
    assert_eq!(h.core.room_count(), 1);
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn unknown_action_names_the_action() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for action in ["x", "subscribe", "JOIN", "Ping", ""] {
        let reply = h.reply(c(1), &format!(r#"{{"action":"{action}"}}"#));
        assert_eq!(error_code(&reply), "UNKNOWN_ACTION");
        assert_eq!(
            reply["data"]["message"],
            format!("Unknown action: {action}")
        );
    }
    // A huge action name is not echoed in full.
    let reply = h.reply(c(1), &format!(r#"{{"action":"{}"}}"#, "é".repeat(5000)));
    assert_eq!(error_code(&reply), "UNKNOWN_ACTION");
    let message = reply["data"]["message"].as_str().unwrap();
    assert!(message.starts_with("Unknown action: é") && message.len() < 200);
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn forbidden_private_user_rooms() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), user("bob", &[]));
    h.open(c(3), user("alice", &["publish"]));
    for (conn, name) in [
        (c(1), "user:alice"),
        (c(2), "user:alice"),
        (c(3), "user:alice2"),
        (c(3), "user:bob"),
        (c(3), "user:"),
    ] {
        let reply = h.reply(conn, &format!(r#"{{"action":"join","room":"{name}"}}"#));
        assert_eq!(error_code(&reply), "FORBIDDEN", "{name}");
    }
    assert_eq!(h.core.room_count(), 0);
    let reply = h.join(c(3), "user:alice");
    assert_eq!(reply["data"]["room"], "user:alice");
    // What was refused delivers nothing.
    let (receipt, outs) = h.broadcast(&["user:alice"], "system_info", json!({"message": "x"}));
    assert_eq!(receipt.delivered, 1);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(3));
    h.finish();
}

#[test]
fn forbidden_presence_for_non_members() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(2), "downloads");
    for name in ["downloads", "nowhere"] {
        let reply = h.reply(
            c(1),
            &format!(r#"{{"action":"presence","data":{{"room":"{name}"}}}}"#),
        );
        assert_eq!(error_code(&reply), "FORBIDDEN", "{name}");
    }
    h.finish();
}

#[test]
fn presence_lists_connections_and_authenticated_users() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("bob", &[]));
    h.open(c(2), user("alice", &[]));
    h.open(c(3), anon());
    h.open(c(4), user("bob", &[]));
    h.open(c(5), user("carol", &[]));
    for conn in [c(1), c(2), c(3), c(4)] {
        h.join(conn, "downloads");
    }
    h.join(c(5), "elsewhere");
    let reply = h.reply(
        c(3),
        r#"{"action":"presence","data":{"room":"downloads"},"id":1}"#,
    );
    assert_eq!(
        reply,
        json!({"type": "presence", "timestamp": "2025-10-17T10:30:00.000Z",
               "data": {"room": "downloads", "connections": 4, "user_count": 2,
                        "users": ["alice", "bob"]},
               "id": 1})
    );
    h.finish();
}

#[test]
fn publish_needs_a_grant() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), user("bob", &["read", "publisher"]));
    h.open(c(3), user("carol", &["publish:queue"]));
    h.open(c(4), user("alice", &["publish"]));
    h.open(c(5), anon());
    h.join(c(5), "downloads");
    let text =
        r#"{"action":"publish","data":{"room":"downloads","type":"queue_status","data":{"n":1}}}"#;
    for conn in [c(1), c(2), c(3)] {
        let reply = h.reply(conn, text);
        assert_eq!(error_code(&reply), "FORBIDDEN", "{conn:?}");
    }
    // Nothing was numbered by the refused attempts.
    let outs = h.text(c(4), text);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert_eq!(outs[0].conn(), c(5));
    assert_eq!(
        outs[0].msg(),
        &json!({"type": "queue_status", "timestamp": "2025-10-17T10:30:00.000Z",
                "room": "downloads", "seq": 1, "data": {"n": 1}})
    );
    assert_eq!(outs[1].conn(), c(4));
    assert_eq!(
        outs[1].msg()["data"],
        json!({"message": "Published to room: downloads", "room": "downloads", "seq": 1, "delivered": 1})
    );
    // A per-room grant covers exactly that room.
    let outs = h.text(
        c(3),
        r#"{"action":"publish","data":{"room":"queue","type":"queue_started"}}"#,
    );
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].msg()["type"], "system_info");
    assert_eq!(outs[0].msg()["data"]["delivered"], 0);
    h.finish();
}

#[test]
fn client_publish_validates_type_and_series_key() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &["publish"]));
    h.join(c(1), "downloads");
    for (kind, data, code) in [
        ("made_up", json!({}), "UNKNOWN_TYPE"),
        ("connected", json!({}), "UNKNOWN_TYPE"),
        ("pong", json!({}), "UNKNOWN_TYPE"),
        ("download_progress", json!({}), "INVALID_KEY"),
        ("download_progress", json!({"key": "a b"}), "INVALID_KEY"),
        ("scan_progress", json!({"key": 5}), "INVALID_KEY"),
    ] {
        let text = json!({"action": "publish", "data": {"room": "downloads", "type": kind, "data": data}, "id": "p"});
        let reply = h.reply(c(1), &text.to_string());
        assert_eq!(error_code(&reply), code, "{text}");
        assert_eq!(reply["id"], "p");
    }
    let text = json!({"action": "publish", "data": {"room": "downloads", "type": "download_progress",
                      "data": {"key": "attack-on-titan", "percent": 45.2}}});
    let outs = h.text(c(1), &text.to_string());
    assert_eq!(outs.len(), 2);
    assert_eq!(
        outs[0].msg()["seq"],
        1,
        "refused publishes are not numbered"
    );
    assert_eq!(outs[0].msg()["data"]["key"], "attack-on-titan");
    h.finish();
}

#[test]
fn refresh_is_refused_with_invalid_token_and_the_connection_stays_open() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    // The core hands the token to the shell for verification...
    let outs = h.text(
        c(1),
        r#"{"action":"refresh","data":{"token":"a.b.c"},"id":9}"#,
    );
    assert_eq!(outs, vec![Out::Verify(c(1), "a.b.c".into())]);
    // ...and answers the shell's verdict (the request id is the core's).
    let outs = h.run(Input::CheckDone {
        conn: c(1),
        answer: roomcast_core::CheckAnswer::Token(Err(roomcast_core::TokenRefused(
            "bad signature".into(),
        ))),
    });
    assert_eq!(outs.len(), 1, "{outs:?}");
    let reply = outs[0].msg();
    assert_eq!(error_code(reply), "INVALID_TOKEN");
    assert_eq!(reply["id"], 9);
    assert_alive(&mut h, c(1));
    h.finish();
}

fn rate_limits() -> Limits {
    Limits {
        messages_per_second: 2,
        message_burst: 3,
        rate_violations_max: 2,
        ..Limits::default()
    }
}

#[test]
fn rate_limited_then_closed_1008_on_persistent_abuse() {
    let mut h = Harness::with_limits(rate_limits());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(1), "downloads"); // 1 of the burst of 3
    h.join(c(2), "downloads");
    assert_alive(&mut h, c(1)); // 2
    assert_alive(&mut h, c(1)); // 3
                                // Over the allowance: warned, and the request is not executed.
    let reply = h.reply(c(1), r#"{"action":"leave","room":"downloads","id":"l"}"#);
    assert_eq!(error_code(&reply), "RATE_LIMITED");
    assert_eq!(reply["id"], "l");
    assert_eq!(h.core.member_count(&room("downloads")), 2);
    let outs = h.run(Input::Binary { conn: c(1) });
    assert_eq!(error_code(outs[0].msg()), "RATE_LIMITED");
    // Violations pending > rate_violations_max: closed with 1008.
    let outs = h.text(c(1), r#"{"action":"ping"}"#);
    assert_eq!(outs, vec![Out::Close(c(1), CloseCode::PolicyViolation)]);
    assert_eq!(h.core.connection_count(), 1);
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    // Gone for good; the other connection never noticed.
    assert_eq!(h.text(c(1), r#"{"action":"ping"}"#), vec![]);
    assert_alive(&mut h, c(2));
    h.finish();
}

#[test]
fn rate_limit_allowance_refills_with_time() {
    let mut h = Harness::with_limits(rate_limits());
    h.open(c(1), anon());
    for _ in 0..3 {
        assert_alive(&mut h, c(1));
    }
    let reply = h.reply(c(1), r#"{"action":"ping"}"#);
    assert_eq!(error_code(&reply), "RATE_LIMITED");
    // 2 messages per second: one token is back after 500 ms.
    h.advance_to(499_999);
    assert_eq!(
        error_code(&h.reply(c(1), r#"{"action":"ping"}"#)),
        "RATE_LIMITED"
    );
    // Two violations pending now; they drain one per second.
    h.advance_to(2_500_000);
    assert_alive(&mut h, c(1));
    // A client within its rate is never limited.
    for i in 0..100 {
        h.advance_to(3_000_000 + i * 500_000);
        assert_alive(&mut h, c(1));
    }
    h.finish();
}

#[test]
fn too_many_rooms() {
    let mut h = Harness::with_limits(Limits {
        rooms_per_connection_max: 2,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "a");
    h.join(c(1), "b");
    let reply = h.reply(c(1), r#"{"action":"join","room":"c","id":3}"#);
    assert_eq!(error_code(&reply), "TOO_MANY_ROOMS");
    assert_eq!(reply["id"], 3);
    assert_eq!(h.core.member_count(&room("c")), 0);
    assert_eq!(h.core.room_count(), 2);
    // Re-joining a room one is in does not count against the limit.
    h.join(c(1), "a");
    h.leave(c(1), "a");
    h.join(c(1), "c");
    assert_eq!(h.core.room_count(), 2);
    h.finish();
}
