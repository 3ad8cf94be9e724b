//! Slow consumers: the outbound queue bound and its 4008 close.

use super::*;

#[test]
fn slow_consumer_is_closed_4008_and_others_keep_receiving() {
    let max = 2_000;
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: max,
        ..Limits::default()
    });
    // c(1) never reports writes; c(2) reports every write.
    let mut queued_1 = 0usize;
    for conn in [c(1), c(2)] {
        let outs = h.run(Input::Open {
            conn,
            identity: anon(),
        });
        let outs2 = h.text(conn, r#"{"action":"join","room":"r"}"#);
        for out in outs.iter().chain(&outs2) {
            let Out::Send(_, _, len) = out else {
                panic!("{out:?}")
            };
            if conn == c(1) {
                queued_1 += len;
            } else {
                h.run(Input::Written { conn, bytes: *len });
            }
        }
    }
    let padding = "p".repeat(150);
    let mut seq = 0;
    loop {
        seq += 1;
        let (receipt, outs) = h.broadcast(&["r"], "queue_status", json!({"pad": padding}));
        assert_eq!(seqs(&receipt), vec![(room("r"), seq)]);
        // Both members get the same frame, so c(2)'s copy tells its length.
        let to_2 = outs.iter().find(|o| o.conn() == c(2)).expect("c2 served");
        let Out::Send(_, msg, len) = to_2 else {
            panic!()
        };
        assert_eq!(msg["seq"], seq);
        h.run(Input::Written {
            conn: c(2),
            bytes: *len,
        });
        if queued_1 + len > max {
            // Exactly the frame that would overflow c(1) is replaced by a close.
            assert_eq!(outs.len(), 2, "{outs:?}");
            assert_eq!(outs[1], Out::Close(c(1), CloseCode::SlowConsumer));
            assert_eq!(receipt.delivered, 1);
            break;
        }
        assert_eq!(outs.len(), 2, "{outs:?}");
        assert_eq!(outs[0].conn(), c(1));
        assert_eq!(outs[0].msg()["seq"], seq);
        assert_eq!(receipt.delivered, 2);
        queued_1 += len;
        assert!(seq < 100, "never overflowed");
    }
    assert!(seq > 3, "overflowed too early: {seq}");
    assert_eq!(h.core.member_count(&room("r")), 1);
    // c(2) carries on, gaplessly.
    for _ in 0..20 {
        seq += 1;
        let (receipt, outs) = h.broadcast(&["r"], "queue_status", json!({"pad": padding}));
        assert_eq!(receipt.delivered, 1);
        assert_eq!(outs.len(), 1);
        assert_eq!((outs[0].conn(), &outs[0].msg()["seq"]), (c(2), &json!(seq)));
        let Out::Send(_, _, len) = outs[0] else {
            panic!()
        };
        h.run(Input::Written {
            conn: c(2),
            bytes: len,
        });
    }
    // c(1) is forgotten.
    assert_eq!(h.text(c(1), r#"{"action":"ping"}"#), vec![]);
    h.finish();
}

#[test]
fn written_reports_free_the_outbound_queue() {
    let max = 1_000;
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: max,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "r");
    // Send far more than `max` in total, acknowledging each frame.
    let mut total = 0;
    for i in 1..=50u64 {
        let (_, outs) = h.broadcast(&["r"], "queue_status", json!({"i": i}));
        let Out::Send(conn, msg, len) = &outs[0] else {
            panic!("{outs:?}")
        };
        assert_eq!((conn, &msg["seq"]), (&c(1), &json!(i)));
        total += len;
        h.run(Input::Written {
            conn: c(1),
            bytes: *len,
        });
    }
    assert!(total > 3 * max);
    // Over-reporting is harmless (saturates at zero).
    h.run(Input::Written {
        conn: c(1),
        bytes: usize::MAX,
    });
    assert_alive(&mut h, c(1));
    h.finish();
}

#[test]
fn a_reply_that_overflows_the_queue_closes_4008() {
    let mut h = Harness::with_limits(Limits {
        outbound_queue_bytes_max: 400,
        ..Limits::default()
    });
    h.open(c(1), anon());
    h.join(c(1), "r");
    let mut closed = false;
    for _ in 0..10 {
        let outs = h.text(c(1), r#"{"action":"ping","id":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#);
        assert_eq!(outs.len(), 1);
        if outs[0] == Out::Close(c(1), CloseCode::SlowConsumer) {
            closed = true;
            break;
        }
        assert_eq!(outs[0].msg()["type"], "pong");
    }
    assert!(closed);
    assert_eq!(h.core.room_count(), 0);
    h.finish();
}
