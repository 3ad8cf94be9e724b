//! Live gaps: reads that fill them, warnings for what they cannot, data
//! loss, the stream check and stream resets.

use super::*;

#[test]
fn a_jump_starts_one_read_for_the_room_that_fills_the_gap() {
    let mut h = Harness::new(Limits::default());
    let (a, b) = (h.open(1), h.open(2));
    h.join(a);
    h.join(b);
    h.settle();
    h.frames();
    // Three appends; this node hears only the third live.
    let mut events = Vec::new();
    for n in 1..=3 {
        events.extend(h.append_elsewhere(n));
    }
    let lives: Vec<EngineEvent> = events
        .into_iter()
        .filter(|e| matches!(e, EngineEvent::Live(m) if m.seq == 3))
        .collect();
    for event in lives {
        h.feed(event);
    }
    let requests = h.requests();
    read_call(&requests); // one read for the room, not one per member
    assert!(h.frames().is_empty(), "nothing out of order meanwhile");
    let events = h.engine_events(requests);
    for event in events {
        h.feed(event);
    }
    let frames = h.frames();
    assert_eq!(seqs(&frames, a), vec![1, 2, 3]);
    assert_eq!(seqs(&frames, b), vec![1, 2, 3]);
}

#[test]
fn a_gap_history_cannot_fill_is_announced_to_every_member() {
    let mut h = Harness::new(Limits::default());
    let (a, b) = (h.open(1), h.open(2));
    h.join(a);
    h.join(b);
    h.settle();
    h.frames();
    // A planted engine skipped seq 1: it streams 2 and its history lacks 1.
    h.feed(live("e-1", 2));
    let call = read_call(&h.requests());
    let frame = |seq: u64| {
        format!(r#"{{"type":"queue_status","room":"r","seq":{seq},"data":{{}}}}"#).into()
    };
    h.feed(EngineEvent::Read {
        call,
        result: Ok(ReadResult {
            epoch: "e-1".into(),
            top: 2,
            frames: vec![(2, frame(2))],
        }),
    });
    let frames = h.frames();
    for member in [a, b] {
        let warnings: Vec<&Value> = frames
            .iter()
            .filter(|(c, f)| *c == member && f["type"] == "system_warning")
            .map(|(_, f)| f)
            .collect();
        assert_eq!(warnings.len(), 1, "{frames:#?}");
        assert_eq!(warnings[0]["data"]["code"], "ROOM_GAP");
        // Only seq 1 is lost: the warning names it, then history's seq 2.
        assert_eq!(warnings[0]["data"]["epoch"], "e-1");
        assert_eq!(warnings[0]["data"]["seq"], 1);
        assert_eq!(seqs(&frames, member), vec![2], "continues after seq 1");
        let warning_at = frames
            .iter()
            .position(|(c, f)| *c == member && f["type"] == "system_warning");
        let message_at = frames
            .iter()
            .position(|(c, f)| *c == member && f["seq"] == 2);
        assert!(
            warning_at < message_at,
            "the warning comes first: {frames:#?}"
        );
    }
    // The engine lost its data and the room started over in a new epoch,
    // of which this node missed three messages: a gap (the old epoch's
    // tail may be lost), then the new epoch refilled from its start.
    h.feed(live("e-9", 4));
    let call = read_call(&h.requests());
    h.feed(EngineEvent::Read {
        call,
        result: Ok(ReadResult {
            epoch: "e-9".into(),
            top: 4,
            frames: (1..=4).map(|seq| (seq, frame(seq))).collect(),
        }),
    });
    let frames = h.frames();
    for member in [a, b] {
        let mine: Vec<&Value> = frames
            .iter()
            .filter(|(c, _)| *c == member)
            .map(|(_, f)| f)
            .collect();
        assert_eq!(mine.len(), 5, "a warning and four messages: {mine:#?}");
        assert_eq!(mine[0]["data"]["code"], "ROOM_GAP");
        assert_eq!(
            (
                mine[0]["data"]["epoch"].as_str(),
                mine[0]["data"]["seq"].as_u64()
            ),
            (Some("e-9"), Some(0))
        );
        assert_eq!(seqs(&frames, member), vec![1, 2, 3, 4]);
    }
    h.feed(live("e-9", 5));
    assert_eq!(seqs(&h.frames(), a), vec![5]);
}

#[test]
fn after_data_loss_a_node_reading_late_refills_the_new_epoch_from_the_engine() {
    // The real engine's side of the contract: a read after another epoch's
    // position answers with the current epoch's messages from its start.
    let (mut h, a) = Harness::with_member(Limits::default());
    let lives = |events: Vec<EngineEvent>| -> Vec<EngineEvent> {
        events
            .into_iter()
            .filter(|e| matches!(e, EngineEvent::Live(_)))
            .collect()
    };
    for event in lives(h.append_elsewhere(1)) {
        h.feed(event);
    }
    assert_eq!(seqs(&h.frames(), a), vec![1]);
    // The engine restarts empty (this node's subscription survives, as a
    // pub/sub connection resubscribes); three messages are appended
    // elsewhere and their live messages are lost; the fourth arrives.
    h.engine = MemoryEngine::new(support::BOUNDS, "f".into(), 60_000_000);
    h.engine_events(vec![EngineRequest::Interest {
        room: room(),
        on: true,
    }]);
    h.append_elsewhere(2);
    h.append_elsewhere(3);
    h.append_elsewhere(4);
    let live4 = lives(h.append_elsewhere(5));
    assert_eq!(live4.len(), 1, "the fourth append's live message");
    h.feed(live4[0].clone());
    h.settle();
    let frames = h.frames();
    let gap: Vec<&Value> = frames
        .iter()
        .filter(|(_, f)| f["data"]["code"] == "ROOM_GAP")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(gap.len(), 1, "{frames:#?}");
    assert_eq!(gap[0]["data"]["seq"], 0);
    assert_eq!(seqs(&frames, a), vec![1, 2, 3, 4], "the new epoch, whole");
}

#[test]
fn a_lost_last_message_is_found_by_the_stream_check() {
    let limits = Limits {
        stream_check_interval_ms: 1_000,
        ..Limits::default()
    };
    let (mut h, a) = Harness::with_member(limits);
    // Appended elsewhere; its live message is lost on the way.
    h.append_elsewhere(1);
    h.now_us += 1_000_001;
    assert!(h.core.poll_timeout().is_some_and(|at| at <= h.now_us));
    h.core.handle(h.now(), Input::Timeout);
    h.settle();
    assert_eq!(seqs(&h.frames(), a), vec![1]);
}

#[test]
fn a_stream_reset_reads_every_followed_room_at_once() {
    let mut h = Harness::new(Limits::default());
    let a = h.open(1);
    h.join(a);
    h.settle();
    h.frames();
    // Appended elsewhere while the live stream was down: lost.
    h.engine_events(vec![EngineRequest::Append {
        call: CallId(99),
        room: room(),
        message: roomcast_core::engine::Unnumbered {
            head: r#"{"type":"queue_status","room":"r","seq":"#.into(),
            tail: r#","data":{}}"#.into(),
            series: None,
        },
        known: None,
    }]);
    // No timer is due (the stream check is 30 s away), but the engine
    // says its live stream was re-established: the room is read now.
    assert!(h.requests().is_empty());
    h.feed(EngineEvent::StreamReset);
    let requests = h.requests();
    read_call(&requests);
    for event in h.engine_events(requests) {
        h.feed(event);
    }
    h.settle();
    assert_eq!(seqs(&h.frames(), a), vec![1]);
    // A reset while that room's read is in flight reads it once more after.
    h.feed(EngineEvent::StreamReset);
    let first = h.requests();
    read_call(&first);
    h.feed(EngineEvent::StreamReset);
    assert!(h.requests().is_empty(), "one read per room at a time");
    for event in h.engine_events(first) {
        h.feed(event);
    }
    read_call(&h.requests());
}
