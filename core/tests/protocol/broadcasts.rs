//! Broadcasts (seq, order, several rooms) and direct sends.

use super::*;

#[test]
fn broadcast_seq_counts_1_2_3_per_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.join(c(1), "a");
    h.join(c(1), "b");
    for expected in 1..=3u64 {
        let (receipt, outs) = h.broadcast(&["a"], "queue_status", json!({"i": expected}));
        assert_eq!(seqs(&receipt), vec![(room("a"), expected)]);
        assert_eq!(receipt.delivered, 1);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].conn(), c(1));
        assert_eq!(
            outs[0].msg(),
            &json!({"type": "queue_status", "timestamp": "2025-10-17T10:30:00.000Z",
                    "room": "a", "seq": expected, "data": {"i": expected}})
        );
    }
    // Room b has its own numbering.
    let (receipt, outs) = h.broadcast(&["b"], "queue_status", json!({}));
    assert_eq!(seqs(&receipt), vec![(room("b"), 1)]);
    assert_eq!(outs[0].msg()["seq"], 1);
    h.finish();
}

#[test]
fn members_receive_every_broadcast_in_order_without_gaps() {
    let mut h = Harness::new(CoreConfig::default());
    let members = [c(1), c(2), c(3)];
    for &m in &members {
        h.open(m, anon());
        h.join(m, "downloads");
        h.join(m, "noise");
    }
    let mut received: std::collections::BTreeMap<ConnectionId, Vec<u64>> = Default::default();
    for i in 1..=60u64 {
        if i == 21 {
            h.leave(c(2), "downloads");
        }
        if i == 31 {
            let reply = h.join(c(2), "downloads");
            assert_eq!(reply["data"]["seq"], 30);
        }
        let rooms: &[&str] = if i % 3 == 0 {
            &["noise", "downloads"]
        } else {
            &["downloads"]
        };
        let (receipt, outs) = h.broadcast(
            rooms,
            "download_progress",
            json!({"key": "attack-on-titan", "percent": i}),
        );
        assert!(seqs(&receipt).contains(&(room("downloads"), i)));
        for out in outs {
            let msg = out.msg();
            if msg["room"] == "downloads" {
                assert_eq!(msg["data"]["percent"], i);
                received
                    .entry(out.conn())
                    .or_default()
                    .push(msg["seq"].as_u64().unwrap());
            }
        }
    }
    let all: Vec<u64> = (1..=60).collect();
    assert_eq!(received[&c(1)], all);
    assert_eq!(received[&c(3)], all);
    let c2: Vec<u64> = (1..=20).chain(31..=60).collect();
    assert_eq!(received[&c(2)], c2);
    h.finish();
}

#[test]
fn one_broadcast_to_several_rooms_reaches_each_member_once_per_room() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), anon());
    h.open(c(2), anon());
    let epoch_a = h.join(c(1), "a")["data"]["epoch"].clone();
    let epoch_b = h.join(c(1), "b")["data"]["epoch"].clone();
    assert_ne!(epoch_a, epoch_b);
    h.join(c(2), "b");
    h.broadcast(&["b"], "queue_status", json!({}));
    let (receipt, outs) = h.broadcast(&["a", "b", "c"], "queue_paused", json!({"why": "x"}));
    assert_eq!(receipt.delivered, 3);
    assert_eq!(
        seqs(&receipt),
        vec![(room("a"), 1), (room("b"), 2), (room("c"), 1)]
    );
    // The receipt names each room's epoch: that of the live rooms' join replies.
    assert_eq!(receipt.rooms[0].epoch, epoch_a);
    assert_eq!(receipt.rooms[1].epoch, epoch_b);
    assert!(!receipt.rooms[2].epoch.is_empty());
    assert_ne!(receipt.rooms[2].epoch, epoch_a);
    assert_ne!(receipt.rooms[2].epoch, epoch_b);
    let summary: Vec<(ConnectionId, String, u64)> = outs
        .iter()
        .map(|o| {
            let m = o.msg();
            assert_eq!(m["type"], "queue_paused");
            assert_eq!(m["data"], json!({"why": "x"}));
            (
                o.conn(),
                m["room"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (c(1), "a".into(), 1),
            (c(1), "b".into(), 2),
            (c(2), "b".into(), 2),
        ]
    );
    h.finish();
}

// ----- direct sends -----------------------------------------------------------------

#[test]
fn direct_send_to_every_connection_of_a_user() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(3), user("alice", &[]));
    h.open(c(2), user("bob", &[]));
    h.open(c(1), user("alice", &[]));
    h.open(c(4), anon());
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({"message": "hi"}),
    ));
    assert_eq!(response, Ok(2));
    let expected = json!({"type": "system_info", "timestamp": "2025-10-17T10:30:00.000Z",
                          "data": {"message": "hi"}});
    assert_eq!(outs.len(), 2);
    assert_eq!((outs[0].conn(), outs[0].msg()), (c(1), &expected));
    assert_eq!((outs[1].conn(), outs[1].msg()), (c(3), &expected));
    let (response, outs) = h.send(direct(
        SendTarget::User("nobody".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs.len()), (Ok(0), 0));
    // After one of alice's connections goes, only the other gets it.
    h.run(Input::Closed { conn: c(1) });
    let (response, outs) = h.send(direct(
        SendTarget::User("alice".into()),
        "system_info",
        json!({}),
    ));
    assert_eq!(response, Ok(1));
    assert_eq!(outs[0].conn(), c(3));
    h.finish();
}

#[test]
fn direct_send_to_one_connection() {
    let mut h = Harness::new(CoreConfig::default());
    h.open(c(1), user("alice", &[]));
    h.open(c(2), user("alice", &[]));
    let (response, outs) = h.send(direct(
        SendTarget::Connection(c(2)),
        "download_complete",
        json!({"key": "k"}),
    ));
    assert_eq!(response, Ok(1));
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].conn(), c(2));
    assert_eq!(outs[0].msg()["type"], "download_complete");
    assert_eq!(outs[0].msg()["data"], json!({"key": "k"}));
    assert!(outs[0].msg().get("room").is_none() && outs[0].msg().get("seq").is_none());
    let (response, outs) = h.send(direct(
        SendTarget::Connection(c(9)),
        "system_info",
        json!({}),
    ));
    assert_eq!((response, outs.len()), (Ok(0), 0));
    h.finish();
}
