//! Room history and recovery (protocol section 7): rooms keep a bounded
//! history; a join with `since` replays exactly the missed broadcasts,
//! byte-identical, or says `recovered: false` and replays nothing.

use roomcast_core::{
    BroadcastOutcome, ConnectionId, CoreConfig, Identity, Input, Limits, Now, Output, Publish,
    RoomName, Standalone, TextFrame,
};
use serde_json::{json, Value};

const SECOND_US: u64 = 1_000_000;

struct Room {
    core: Standalone,
    now_us: u64,
}

impl Room {
    fn new(history_messages_max: usize, history_age_ms: u64) -> Room {
        let limits = Limits {
            history_messages_max,
            history_age_ms,
            ..Limits::default()
        };
        Room {
            core: Standalone::new(CoreConfig {
                limits,
                ..CoreConfig::default()
            }),
            now_us: 0,
        }
    }

    fn now(&self) -> Now {
        Now::from_start(1_760_000_000_000, self.now_us)
    }

    fn drain(&mut self) -> Vec<(ConnectionId, TextFrame)> {
        let mut sent = Vec::new();
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, frame } => sent.push((conn, frame)),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.core.check_invariants().unwrap();
        sent
    }

    fn open(&mut self, n: u128) -> ConnectionId {
        let conn = ConnectionId::from_u128(n);
        self.core.handle(
            self.now(),
            Input::Open {
                conn,
                identity: Identity::Anonymous,
            },
        );
        self.drain();
        conn
    }

    fn send(&mut self, conn: ConnectionId, text: &str) -> Vec<TextFrame> {
        self.core.handle(self.now(), Input::Text { conn, text });
        self.drain().into_iter().map(|(_, frame)| frame).collect()
    }

    fn publish(&mut self, n: u64) -> (u64, String, Vec<(ConnectionId, TextFrame)>) {
        let publish = Publish {
            rooms: vec![RoomName::new("downloads").unwrap()],
            kind: "queue_status".into(),
            data: json!({"n": n}).as_object().unwrap().clone(),
        };
        let BroadcastOutcome::Answered(Ok(receipt)) = self.core.broadcast(self.now(), publish)
        else {
            panic!("not published")
        };
        let room = &receipt.rooms[0];
        (room.seq, room.epoch.clone(), self.drain())
    }

    fn advance(&mut self, us: u64) {
        self.now_us += us;
        self.core.handle(self.now(), Input::Timeout);
        self.drain();
    }
}

fn json_of(frame: &TextFrame) -> Value {
    serde_json::from_str(frame.as_str()).unwrap()
}

#[test]
fn a_returning_client_recovers_exactly_what_it_missed_byte_for_byte() {
    let mut r = Room::new(100, 60_000);
    let (a, b) = (r.open(1), r.open(2));
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    r.send(b, r#"{"action":"join","room":"downloads"}"#);
    let (_, epoch, _) = r.publish(1);
    // b drops after seq 1; seqs 2 and 3 go to a only.
    r.core.handle(r.now(), Input::Closed { conn: b });
    let (_, _, to_a2) = r.publish(2);
    let (_, _, to_a3) = r.publish(3);
    let b2 = r.open(3);
    let frames = r.send(b2, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":1}}}},"id":7}}"#));
    assert_eq!(frames.len(), 3, "reply + two replays");
    let reply = json_of(&frames[0]);
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["data"]["recovered"], true);
    assert_eq!(reply["data"]["seq"], 3);
    assert_eq!(frames[1], to_a2[0].1, "replays are the original bytes");
    assert_eq!(frames[2], to_a3[0].1);
    // Then live delivery continues with seq 4.
    let (seq, _, sent) = r.publish(4);
    assert_eq!(seq, 4);
    assert!(sent.iter().any(|(conn, _)| *conn == b2));
}

#[test]
fn history_outlives_the_last_member_and_keeps_numbering() {
    let mut r = Room::new(100, 10_000);
    let a = r.open(1);
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    let (_, epoch, _) = r.publish(1);
    r.core.handle(r.now(), Input::Closed { conn: a });
    assert_eq!(r.core.room_count(), 1, "kept for its history");
    let (seq, epoch2, sent) = r.publish(2);
    assert_eq!(
        (seq, &epoch2),
        (2, &epoch),
        "publishing to an empty room is numbered and kept"
    );
    assert!(sent.is_empty());
    let back = r.open(2);
    let frames = r.send(back, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":1}}}}}}"#));
    assert_eq!(json_of(&frames[0])["data"]["recovered"], true);
    assert_eq!(json_of(&frames[1])["seq"], 2);
    r.core.handle(r.now(), Input::Closed { conn: back });
    // Ten seconds after the newest broadcast the room is gone; a new epoch starts.
    r.advance(10 * SECOND_US);
    assert_eq!(r.core.room_count(), 0);
    let (seq, epoch3, _) = r.publish(3);
    assert_eq!(seq, 1);
    assert_ne!(epoch3, epoch);
}

#[test]
fn gaps_history_cannot_cover_are_reported_and_nothing_is_replayed() {
    let mut r = Room::new(2, 60_000);
    let a = r.open(1);
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = r.publish(n).1;
    }
    let b = r.open(2);
    // History keeps seqs 4 and 5: resuming after 2 would miss 3.
    for (since_epoch, seq) in [
        (epoch.as_str(), 2),
        ("another-epoch", 4),
        (epoch.as_str(), 9),
    ] {
        let frames = r.send(b, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{since_epoch}","seq":{seq}}}}}}}"#));
        assert_eq!(
            frames.len(),
            1,
            "no partial replay for since {since_epoch}/{seq}"
        );
        assert_eq!(json_of(&frames[0])["data"]["recovered"], false);
        r.send(b, r#"{"action":"leave","room":"downloads"}"#);
    }
    // Resuming after 3 is covered exactly.
    let frames = r.send(b, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":3}}}}}}"#));
    assert_eq!(frames.len(), 3);
    assert_eq!(json_of(&frames[0])["data"]["recovered"], true);
    assert_eq!(
        (
            json_of(&frames[1])["seq"].clone(),
            json_of(&frames[2])["seq"].clone()
        ),
        (json!(4), json!(5))
    );
}

#[test]
fn history_ages_out_by_time() {
    let mut r = Room::new(100, 1_000);
    let a = r.open(1);
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    let (_, epoch, _) = r.publish(1);
    r.advance(2 * SECOND_US);
    let b = r.open(2);
    let frames = r.send(b, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":0}}}}}}"#));
    assert_eq!(frames.len(), 1);
    assert_eq!(
        json_of(&frames[0])["data"]["recovered"],
        false,
        "seq 1 aged out"
    );
    // Being at the newest seq needs no history at all.
    let c = r.open(3);
    let frames = r.send(c, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":1}}}}}}"#));
    assert_eq!(json_of(&frames[0])["data"]["recovered"], true);
}

#[test]
fn a_member_rejoining_with_since_gets_no_duplicate_replay() {
    let mut r = Room::new(100, 60_000);
    let a = r.open(1);
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    let (_, epoch, _) = r.publish(1);
    let frames = r.send(a, &format!(r#"{{"action":"join","data":{{"room":"downloads","since":{{"epoch":"{epoch}","seq":0}}}}}}"#));
    assert_eq!(frames.len(), 1, "already a member: it has seq 1 already");
}

#[test]
fn without_history_rooms_drop_with_their_last_member() {
    let mut r = Room::new(0, 60_000);
    let a = r.open(1);
    r.send(a, r#"{"action":"join","room":"downloads"}"#);
    r.publish(1);
    r.send(a, r#"{"action":"leave","room":"downloads"}"#);
    assert_eq!(r.core.room_count(), 0);
}
