//! Section 4: `ping` and the echo of `id` on replies and errors.

use super::*;

#[test]
fn ping_is_answered_with_pong() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for text in [
        r#"{"action":"ping"}"#,
        r#"{"action":"ping","data":{}}"#,
        r#"{"action":"ping","data":null}"#,
        r#"  {"action":"ping","extra":[1,{"x":2}]} "#,
    ] {
        let reply = h.reply(c(1), text);
        assert_eq!(
            reply,
            json!({"type": "pong", "timestamp": "2025-10-17T10:30:00.000Z", "data": {}}),
            "{text}"
        );
    }
    h.finish();
}

#[test]
fn ids_are_echoed_on_replies() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &["publish"]));
    for id in [
        json!("r-1"),
        json!("with \"quotes\" and ünicode"),
        json!(""),
        json!(7),
        json!(-3),
        json!(1.5),
        json!(u64::MAX),
    ] {
        let id_text = id.to_string();
        let replies = [
            h.reply(c(1), &format!(r#"{{"action":"ping","id":{id_text}}}"#)),
            h.reply(
                c(1),
                &format!(r#"{{"action":"join","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"id":{id_text},"action":"join","room":"a"}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"action":"presence","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(r#"{{"action":"leave","data":{{"room":"a"}},"id":{id_text}}}"#),
            ),
            h.reply(
                c(1),
                &format!(
                    r#"{{"action":"publish","data":{{"room":"a","type":"queue_status","data":{{}}}},"id":{id_text}}}"#
                ),
            ),
        ];
        for reply in replies {
            assert_eq!(reply["id"], id, "{reply}");
            assert_ne!(reply["type"], "error", "{reply}");
        }
    }
    h.finish();
}

#[test]
fn ids_are_echoed_on_errors() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    for id in [json!("q"), json!(42), json!(0.25)] {
        let id_text = id.to_string();
        for (text, code) in [
            (
                format!(r#"{{"action":"fly","id":{id_text}}}"#),
                "UNKNOWN_ACTION",
            ),
            (
                format!(r#"{{"action":5,"id":{id_text}}}"#),
                "INVALID_MESSAGE",
            ),
            (
                format!(r#"{{"action":"ping","data":[],"id":{id_text}}}"#),
                "INVALID_MESSAGE",
            ),
            (
                format!(r#"{{"action":"join","data":{{"room":""}},"id":{id_text}}}"#),
                "INVALID_SUBSCRIPTION",
            ),
            (
                format!(r#"{{"action":"join","room":"user:bob","id":{id_text}}}"#),
                "FORBIDDEN",
            ),
            (
                format!(r#"{{"action":"presence","data":{{"room":"a"}},"id":{id_text}}}"#),
                "FORBIDDEN",
            ),
        ] {
            let reply = h.reply(c(1), &text);
            assert_eq!(error_code(&reply), code, "{text}");
            assert_eq!(reply["id"], id, "{text}: {reply}");
        }
    }
    // Unreadable ids are not echoed (and the message is refused).
    for text in [
        r#"{"action":"ping","id":{}}"#,
        r#"{"action":"ping","id":[1]}"#,
        r#"{"action":"ping","id":true}"#,
        r#"{"action":"ping","id":null}"#,
    ] {
        let reply = h.reply(c(1), text);
        if reply["type"] == "pong" {
            // `"id": null` is the same as no id.
            assert!(reply.get("id").is_none(), "{text}: {reply}");
        } else {
            assert_eq!(error_code(&reply), "INVALID_MESSAGE", "{text}");
            assert!(reply.get("id").is_none(), "{text}: {reply}");
        }
    }
    let long = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(129));
    assert_eq!(error_code(&h.reply(c(1), &long)), "INVALID_MESSAGE");
    h.finish();
}
