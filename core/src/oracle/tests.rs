//! The oracle's self-test: a clean trace passes, and every check fails on
//! a trace with its planted defect.

use super::*;

fn msg(text: &str) -> Observed {
    Observed::parse(text).unwrap()
}

fn broadcast(room: &str, seq: u64) -> Observed {
    msg(&format!(
        r#"{{"type":"queue_status","room":"{room}","seq":{seq},"data":{{}}}}"#
    ))
}

/// Client 1 joined room r at seq 0 of epoch e.
fn joined() -> Oracle {
    let mut oracle = Oracle::new();
    oracle.opened(1);
    oracle.sent(1, "1".into(), Sent::Join("r".into())).unwrap();
    oracle
        .received(
            1,
            &msg(r#"{"type":"system_info","id":1,"data":{"room":"r","seq":0,"epoch":"e"}}"#),
        )
        .unwrap();
    oracle
}

fn gap(room: &str, epoch: &str, seq: u64) -> Observed {
    msg(&format!(
        r#"{{"type":"system_warning","data":{{"code":"ROOM_GAP","room":"{room}","epoch":"{epoch}","seq":{seq}}}}}"#
    ))
}

#[test]
fn a_gap_warning_explains_what_it_names_and_no_more() {
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    // Told: 2..=4 are gone; 5 follows.
    oracle.received(1, &gap("r", "e", 4)).unwrap();
    oracle.received(1, &broadcast("r", 5)).unwrap();
    // A new epoch restarts the numbering.
    oracle.received(1, &gap("r", "e2", 0)).unwrap();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.published("r", "e2", 1);
    oracle.check_quiescent(1).unwrap();
    // A warning never explains going backwards, nor a silent gap after it.
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.received(1, &broadcast("r", 2)).unwrap();
    let back = oracle.received(1, &gap("r", "e", 0)).unwrap_err();
    assert_eq!(back.invariant, "gapless in-order delivery");
    let mut oracle = joined();
    oracle.received(1, &gap("r", "e", 3)).unwrap();
    let silent = oracle.received(1, &broadcast("r", 5)).unwrap_err();
    assert_eq!(silent.invariant, "gapless in-order delivery");
    let stray = oracle.received(1, &gap("other", "e", 3)).unwrap_err();
    assert_eq!(stray.invariant, "no message to non-members");
}

#[test]
fn a_clean_trace_passes() {
    let mut oracle = joined();
    for seq in 1..=3 {
        oracle.published("r", "e", seq);
        oracle.received(1, &broadcast("r", seq)).unwrap();
    }
    oracle.check_quiescent(1).unwrap();
    oracle.ended(1, Some(4008)).unwrap();
    oracle.check_quiescent(0).unwrap();
}

#[test]
fn a_settled_room_needs_every_member_in_its_final_epoch() {
    // A restart the member was never told about: nothing of the new
    // epoch arrived, which `published` alone cannot see.
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.published("r", "e", 1);
    oracle.published("r", "e2", 2);
    oracle.check_quiescent(1).unwrap();
    oracle.settled("r", "e2", 2);
    assert!(!oracle.caught_up(1));
    let stale = oracle.check_quiescent(1).unwrap_err();
    assert!(stale.detail.contains("still in epoch e"), "{stale}");
    // Told, and caught up with the final broadcast.
    oracle.received(1, &gap("r", "e2", 1)).unwrap();
    assert!(!oracle.caught_up(1));
    oracle.received(1, &broadcast("r", 2)).unwrap();
    assert!(oracle.caught_up(1));
    oracle.check_quiescent(1).unwrap();
    // The tail is still checked within the final epoch.
    let mut oracle = joined();
    oracle.settled("r", "e", 2);
    oracle.received(1, &broadcast("r", 1)).unwrap();
    assert!(!oracle.caught_up(1));
    assert!(oracle.check_quiescent(1).is_err());
}

#[test]
fn planted_member_left_in_an_old_epoch() {
    let mut oracle = joined();
    oracle.expect_newest_epochs();
    oracle.published("r", "e", 1);
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.check_quiescent(1).unwrap();
    // The room lost its data: e2 was published in, the member never heard.
    oracle.published("r", "e2", 1);
    assert_eq!(
        oracle.check_quiescent(1).unwrap_err().invariant,
        "members follow their room to its newest epoch"
    );
    // Told, it moves on and catches up.
    oracle.received(1, &gap("r", "e2", 0)).unwrap();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.check_quiescent(1).unwrap();
    // A member in an epoch nobody published in yet (its node read the
    // new epoch first) is not behind.
    oracle.received(1, &gap("r", "e3", 0)).unwrap();
    oracle.check_quiescent(1).unwrap();
}

#[test]
fn planted_missing_message_in_the_middle() {
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    let v = oracle.received(1, &broadcast("r", 3)).unwrap_err();
    assert_eq!(v.invariant, "gapless in-order delivery");
}

#[test]
fn planted_missing_message_at_the_tail() {
    let mut oracle = joined();
    oracle.published("r", "e", 1);
    oracle.published("r", "e", 2);
    oracle.received(1, &broadcast("r", 1)).unwrap();
    assert_eq!(
        oracle.check_quiescent(1).unwrap_err().invariant,
        "gapless in-order delivery"
    );
}

#[test]
fn planted_duplicate() {
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    let v = oracle.received(1, &broadcast("r", 1)).unwrap_err();
    assert!(v.detail.contains("duplicate"), "{v}");
}

#[test]
fn planted_reordering() {
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 2)).unwrap_err();
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.received(1, &broadcast("r", 2)).unwrap();
    assert!(oracle.received(1, &broadcast("r", 1)).is_err());
}

#[test]
fn planted_message_to_non_member() {
    let mut oracle = joined();
    let v = oracle.received(1, &broadcast("other", 1)).unwrap_err();
    assert_eq!(v.invariant, "no message to non-members");
    // After a confirmed leave, the room's messages are violations too.
    let mut oracle = joined();
    oracle.sent(1, "2".into(), Sent::Leave("r".into())).unwrap();
    oracle
        .received(
            1,
            &msg(r#"{"type":"system_info","id":2,"data":{"room":"r"}}"#),
        )
        .unwrap();
    assert!(oracle.received(1, &broadcast("r", 1)).is_err());
}

#[test]
fn planted_leaked_connection() {
    let mut oracle = joined();
    oracle.ended(1, None).unwrap();
    let v = oracle.check_quiescent(1).unwrap_err();
    assert_eq!(v.invariant, "no leaked connections");
}

#[test]
fn planted_missing_and_unknown_replies() {
    let mut oracle = joined();
    oracle.sent(1, "\"p\"".into(), Sent::Other).unwrap();
    assert_eq!(
        oracle.check_quiescent(1).unwrap_err().invariant,
        "one reply per request"
    );
    let v = oracle
        .received(1, &msg(r#"{"type":"pong","id":"q","data":{}}"#))
        .unwrap_err();
    assert_eq!(v.invariant, "one reply per request");
}

/// Client 2 comes back after seq 1 of epoch e, asking to recover.
fn recovering(window: Option<u64>) -> Oracle {
    let mut oracle = Oracle::new();
    if let Some(w) = window {
        oracle.expect_recovery_within(w);
    }
    oracle.opened(2);
    oracle
        .sent(2, "1".into(), Sent::Recover("r".into(), "e".into(), 1))
        .unwrap();
    oracle
}

#[test]
fn a_complete_recovery_passes_and_a_replay_gap_fails() {
    let reply = msg(
        r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e","recovered":true}}"#,
    );
    let mut oracle = recovering(Some(10));
    oracle.received(2, &reply).unwrap();
    oracle.received(2, &broadcast("r", 2)).unwrap();
    oracle.received(2, &broadcast("r", 3)).unwrap();
    oracle.published("r", "e", 3);
    oracle.check_quiescent(1).unwrap();
    // Planted: the replay skips seq 2.
    let mut oracle = recovering(Some(10));
    oracle.received(2, &reply).unwrap();
    assert_eq!(
        oracle
            .received(2, &broadcast("r", 3))
            .unwrap_err()
            .invariant,
        "gapless in-order delivery"
    );
    // Planted: the replay stops short (seq 3 never comes).
    let mut oracle = recovering(Some(10));
    oracle.received(2, &reply).unwrap();
    oracle.received(2, &broadcast("r", 2)).unwrap();
    oracle.published("r", "e", 3);
    assert!(oracle.check_quiescent(1).is_err());
}

#[test]
fn planted_refused_recovery_inside_the_window() {
    let refused = msg(
        r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e","recovered":false}}"#,
    );
    let v = recovering(Some(10)).received(2, &refused).unwrap_err();
    assert_eq!(v.invariant, "recovery within the history window");
    // Outside the window (or without one) a refusal is fine, and delivery goes on from seq 4.
    let mut oracle = recovering(Some(1));
    oracle.received(2, &refused).unwrap();
    oracle.received(2, &broadcast("r", 4)).unwrap();
    // Planted: claiming recovery across epochs.
    let lie = msg(
        r#"{"type":"system_info","id":1,"data":{"room":"r","seq":3,"epoch":"e2","recovered":true}}"#,
    );
    assert_eq!(
        recovering(None).received(2, &lie).unwrap_err().invariant,
        "recovery is honest"
    );
}

#[test]
fn conflated_events_may_jump_forward_only() {
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    let jump = msg(r#"{"type":"download_progress","room":"r","seq":4,"conflated":true,"data":{}}"#);
    oracle.received(1, &jump).unwrap();
    oracle.received(1, &broadcast("r", 5)).unwrap();
    // Planted: an unflagged jump, and a flagged step backwards.
    assert!(oracle.received(1, &broadcast("r", 7)).is_err());
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    let back = msg(r#"{"type":"download_progress","room":"r","seq":1,"conflated":true,"data":{}}"#);
    assert!(oracle.received(1, &back).is_err());
}

#[test]
fn planted_unexplained_close_and_late_message() {
    let mut oracle = joined();
    assert_eq!(
        oracle.ended(1, Some(1011)).unwrap_err().invariant,
        "explained closes"
    );
    assert_eq!(
        oracle
            .received(1, &broadcast("r", 1))
            .unwrap_err()
            .invariant,
        "nothing after close"
    );
}

#[test]
fn planted_rejoin_that_reports_an_older_position() {
    // A re-join by a member reports the room's newest seq (or, with held
    // progress events, one the member has not seen yet), never an older
    // one, and never another epoch.
    let mut oracle = joined();
    for seq in 1..=3 {
        oracle.received(1, &broadcast("r", seq)).unwrap();
    }
    oracle.sent(1, "2".into(), Sent::Join("r".into())).unwrap();
    let older = msg(r#"{"type":"system_info","id":2,"data":{"room":"r","seq":1,"epoch":"e"}}"#);
    assert_eq!(
        oracle.received(1, &older).unwrap_err().invariant,
        "idempotent join"
    );
    let mut oracle = joined();
    oracle.sent(1, "2".into(), Sent::Join("r".into())).unwrap();
    let other_epoch =
        msg(r#"{"type":"system_info","id":2,"data":{"room":"r","seq":0,"epoch":"e2"}}"#);
    assert_eq!(
        oracle.received(1, &other_epoch).unwrap_err().invariant,
        "idempotent join"
    );
    // The honest re-join passes: same epoch, the newest seq.
    let mut oracle = joined();
    oracle.received(1, &broadcast("r", 1)).unwrap();
    oracle.sent(1, "2".into(), Sent::Join("r".into())).unwrap();
    let newest = msg(r#"{"type":"system_info","id":2,"data":{"room":"r","seq":1,"epoch":"e"}}"#);
    oracle.received(1, &newest).unwrap();
}

#[test]
fn planted_join_replies_without_a_position() {
    let mut oracle = Oracle::new();
    oracle.opened(1);
    oracle.sent(1, "1".into(), Sent::Join("r".into())).unwrap();
    let no_epoch = msg(r#"{"type":"system_info","id":1,"data":{"room":"r","seq":0}}"#);
    assert_eq!(
        oracle.received(1, &no_epoch).unwrap_err().invariant,
        "join reply shape"
    );
    oracle
        .sent(1, "2".into(), Sent::Recover("r".into(), "e".into(), 3))
        .unwrap();
    let no_flag = msg(r#"{"type":"system_info","id":2,"data":{"room":"r","seq":5,"epoch":"e"}}"#);
    assert_eq!(
        oracle.received(1, &no_flag).unwrap_err().invariant,
        "join reply shape"
    );
}

#[test]
fn planted_gap_warning_without_a_position() {
    let mut oracle = joined();
    let no_seq =
        msg(r#"{"type":"system_warning","data":{"code":"ROOM_GAP","room":"r","epoch":"e"}}"#);
    assert_eq!(
        oracle.received(1, &no_seq).unwrap_err().invariant,
        "gap warning shape"
    );
}

#[test]
fn a_seq_reused_for_another_message_is_caught() {
    let with_data = |seq: u64, n: u64| {
        msg(&format!(
            r#"{{"type":"queue_status","room":"r","seq":{seq},"data":{{"n":{n}}}}}"#
        ))
    };
    let mut oracle = joined();
    oracle.received(1, &with_data(1, 10)).unwrap();
    oracle.received(1, &with_data(2, 20)).unwrap();
    // The publisher's receipts agree: fine.
    let data = |n: u64| serde_json::json!({ "n": n });
    oracle.published_message("r", "e", 2, &data(20)).unwrap();
    // A store rolled back to seq 1 numbers the next message 2 again:
    // every member's seqs still look gapless, the receipt does not.
    let reused = oracle
        .published_message("r", "e", 2, &data(30))
        .unwrap_err();
    assert_eq!(reused.invariant, "one message per seq");
    // Nor may a member get another message under a number already given.
    oracle.opened(2);
    oracle.sent(2, "1".into(), Sent::Join("r".into())).unwrap();
    let reply = r#"{"type":"system_info","id":1,"data":{"room":"r","seq":1,"epoch":"e"}}"#;
    oracle.received(2, &msg(reply)).unwrap();
    let other = oracle.received(2, &with_data(2, 30)).unwrap_err();
    assert_eq!(other.invariant, "one message per seq");
}

fn presence_diff(room: &str, connections: u64) -> Observed {
    msg(&format!(
        r#"{{"type":"presence_diff","data":{{"room":"{room}","connections":{connections},"joined":[]}}}}"#
    ))
}

/// Clients 1 and 2 in room r; 1 heard a diff counting `heard`.
fn presence_room(heard: u64) -> Oracle {
    let mut oracle = joined();
    oracle.expect_presence_counts();
    oracle.opened(2);
    oracle.sent(2, "1".into(), Sent::Join("r".into())).unwrap();
    let reply = msg(r#"{"type":"system_info","id":1,"data":{"room":"r","seq":0,"epoch":"e"}}"#);
    oracle.received(2, &reply).unwrap();
    oracle.received(1, &presence_diff("r", 3)).unwrap();
    oracle.received(1, &presence_diff("r", heard)).unwrap();
    oracle
}

#[test]
fn presence_counts_that_converge_pass() {
    presence_room(2).check_quiescent(2).unwrap();
    // A member that left forgets its count; the one left hears none yet.
    let mut oracle = presence_room(2);
    oracle.ended(2, Some(4008)).unwrap();
    let stale = oracle.check_quiescent(1).unwrap_err();
    assert_eq!(stale.invariant, "presence counts converge", "{stale}");
    oracle.received(1, &presence_diff("r", 1)).unwrap();
    oracle.check_quiescent(1).unwrap();
}

/// Planted: the last window's diff never went out, so member 1's view is
/// stuck at the count of an earlier window.
#[test]
fn planted_presence_count_left_stale() {
    let violation = presence_room(1).check_quiescent(2).unwrap_err();
    assert_eq!(
        violation.invariant, "presence counts converge",
        "{violation}"
    );
    // Without the expectation the oracle does not look.
    let mut lenient = joined();
    lenient.received(1, &presence_diff("r", 7)).unwrap();
    lenient.check_quiescent(1).unwrap();
}

/// Planted: a member that never heard a diff while the room changed after
/// its join (the diff of the third join never reached member 2). Before,
/// a member that heard no diff at all was never checked.
#[test]
fn planted_member_that_heard_no_diff_of_a_change() {
    // Members 1 and 2; 1 heard the diff of 2's join (r has diffs).
    let mut oracle = presence_room(2);
    oracle.check_quiescent(2).unwrap();
    // Member 3 joins: 1 and 2 must hear it.
    oracle.opened(3);
    oracle.sent(3, "1".into(), Sent::Join("r".into())).unwrap();
    let reply = msg(r#"{"type":"system_info","id":1,"data":{"room":"r","seq":0,"epoch":"e"}}"#);
    oracle.received(3, &reply).unwrap();
    oracle.received(1, &presence_diff("r", 3)).unwrap();
    let missed = oracle.check_quiescent(3).unwrap_err();
    assert_eq!(missed.invariant, "presence counts converge", "{missed}");
    assert_eq!(missed.client, 2, "{missed}");
    oracle.received(2, &presence_diff("r", 3)).unwrap();
    oracle.check_quiescent(3).unwrap();
    // A join and a leave that cancel out within one window are told to
    // nobody: the count at the join still holds.
    oracle.opened(4);
    oracle.sent(4, "1".into(), Sent::Join("r".into())).unwrap();
    oracle.received(4, &reply).unwrap();
    oracle.ended(4, None).unwrap();
    oracle.check_quiescent(3).unwrap();
    // A room nobody heard a diff of has none: its members are not checked.
    let mut quiet = joined();
    quiet.expect_presence_counts();
    quiet.opened(2);
    quiet.sent(2, "1".into(), Sent::Join("r".into())).unwrap();
    quiet.received(2, &reply).unwrap();
    quiet.check_quiescent(2).unwrap();
    quiet.ended(1, None).unwrap();
    quiet.check_quiescent(1).unwrap();
}

/// Planted: a joiner's copy of a diff arrives before its join reply (or
/// a diff after its leave reply, or of a room it never joined).
#[test]
fn planted_presence_diff_before_the_join_reply() {
    let mut oracle = Oracle::new();
    oracle.opened(1);
    oracle.sent(1, "1".into(), Sent::Join("r".into())).unwrap();
    let early = oracle.received(1, &presence_diff("r", 2)).unwrap_err();
    assert_eq!(early.invariant, "no presence_diff before the join reply");
    let mut oracle = joined();
    oracle.received(1, &presence_diff("r", 2)).unwrap();
    let stray = oracle.received(1, &presence_diff("other", 2)).unwrap_err();
    assert_eq!(stray.invariant, "no presence_diff before the join reply");
    let mut oracle = joined();
    oracle.sent(1, "2".into(), Sent::Leave("r".into())).unwrap();
    let left = msg(r#"{"type":"system_info","id":2,"data":{"room":"r","message":"Left room: r"}}"#);
    oracle.received(1, &left).unwrap();
    let after = oracle.received(1, &presence_diff("r", 1)).unwrap_err();
    assert_eq!(after.invariant, "no presence_diff before the join reply");
}
