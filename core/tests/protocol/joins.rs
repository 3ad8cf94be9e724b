//! Section 4: `join` and `leave`.

use super::*;

#[test]
fn join_with_data_room_replies_system_info() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let reply = h.join(c(1), "downloads");
    assert_eq!(reply["data"]["message"], "Joined room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    assert_eq!(reply["data"]["seq"], 0);
    assert!(reply["data"]["epoch"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(reply["timestamp"], "2025-10-17T10:30:00.000Z");
    assert!(reply.get("id").is_none());
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    h.finish();
}

#[test]
fn join_with_top_level_room_is_accepted() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let reply = h.reply(c(1), r#"{"action":"join","room":"downloads"}"#);
    assert_eq!(reply["type"], "system_info");
    assert_eq!(reply["data"]["message"], "Joined room: downloads");
    assert_eq!(reply["data"]["room"], "downloads");
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    // data.room wins when both are given.
    let reply = h.reply(
        c(1),
        r#"{"action":"join","room":"other","data":{"room":"queue"}}"#,
    );
    assert_eq!(reply["data"]["room"], "queue");
    assert_eq!(h.core.member_count(&room("other")), 0);
    h.finish();
}

#[test]
fn join_reply_reports_the_rooms_current_seq_and_epoch() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    let first = h.join(c(1), "downloads");
    h.broadcast(&["downloads"], "queue_status", json!({}));
    h.broadcast(&["downloads"], "queue_status", json!({}));
    let second = h.join(c(2), "downloads");
    assert_eq!(second["data"]["seq"], 2);
    assert_eq!(second["data"]["epoch"], first["data"]["epoch"]);
    h.finish();
}

#[test]
fn rejoining_is_idempotent_reply_again_no_double_delivery() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    let a = h.join(c(1), "downloads");
    let b = h.join(c(1), "downloads");
    assert_eq!(a, b);
    let b = h.reply(c(1), r#"{"action":"join","room":"downloads"}"#);
    assert_eq!(a, b);
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({"n": 1}));
    assert_eq!(receipt.delivered, 1);
    assert_eq!(outs.len(), 1, "{outs:?}");
    // A single leave undoes it: membership is a set, not a counter.
    h.leave(c(1), "downloads");
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({}));
    assert_eq!((receipt.delivered, outs.len()), (0, 0));
    h.finish();
}

// ----- 4. leave -----------------------------------------------------------------

#[test]
fn leave_replies_and_stops_delivery() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "downloads");
    let reply = h.leave(c(1), "downloads");
    assert_eq!(
        reply,
        json!({"type": "system_info", "timestamp": "2025-10-17T10:30:00.000Z",
               "data": {"message": "Left room: downloads", "room": "downloads"}})
    );
    assert_eq!(h.core.member_count(&room("downloads")), 0);
    assert_eq!(h.core.room_count(), 0);
    let (receipt, outs) = h.broadcast(&["downloads"], "queue_status", json!({}));
    assert_eq!((receipt.delivered, outs.len()), (0, 0));
    h.finish();
}

#[test]
fn leave_with_top_level_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "downloads");
    let reply = h.reply(c(1), r#"{"action":"leave","room":"downloads"}"#);
    assert_eq!(reply["data"]["message"], "Left room: downloads");
    assert_eq!(h.core.room_count(), 0);
    h.finish();
}

#[test]
fn leaving_a_room_one_is_not_in_is_not_an_error() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    h.join(c(2), "downloads");
    for name in ["downloads", "never-joined", "user:bob"] {
        let reply = h.leave(c(1), name);
        assert_eq!(reply["type"], "system_info", "{reply}");
        assert_eq!(reply["data"]["message"], format!("Left room: {name}"));
        assert_eq!(reply["data"]["room"], name);
    }
    // The other member is untouched.
    assert_eq!(h.core.member_count(&room("downloads")), 1);
    assert_eq!(h.core.room_count(), 1);
    h.finish();
}
