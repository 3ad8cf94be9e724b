//! Conflation of progress events for readers that are behind.
//!
//! In rooms configured to conflate, a `download_progress` broadcast for a
//! series (`data.key` + `data.download_id`) is held instead of sent when the
//! member is *behind*: its socket pushed back (the shell reported
//! `Input::Blocked` and has not written its whole backlog since), or its
//! unwritten backlog is over `conflation_behind_bytes`. Frames merely
//! waiting for the shell's next write (every member of a big room, between
//! a broadcast and its turn to be written) do not make a member behind, so
//! a reader that keeps up gets every event. While held, a newer progress event of the same series replaces it. Held
//! frames are sent when the conflation window closes, and always before any
//! other message of that room to that member, so `seq` never goes backwards.
//!
//! `seq` under conflation: a member may see a jump (e.g. 41 → 45). The first
//! message after a jump carries `"conflated": true` at the top level, saying
//! "progress events just before this one were replaced by newer ones".
//! Messages that are not progress events are never held, replaced or
//! reordered.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::names::RoomName;
use crate::output::TextFrame;

/// The message type that conflates.
pub const CONFLATED_TYPE: &str = "download_progress";

/// The series a progress event belongs to: `key` and `download_id`.
pub fn series_of(kind: &str, data: &Map<String, Value>) -> Option<String> {
    if kind != CONFLATED_TYPE {
        return None;
    }
    let key = data.get("key")?.as_str()?;
    let download = match data.get("download_id")? {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return None,
    };
    Some(format!("{key}\u{0}{download}"))
}

/// One held progress event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    seq: u64,
    frame: TextFrame,
}

/// A member's held progress events, per room and series.
///
/// Boxed and absent while nothing is held (almost always): every open
/// connection carries one, and the maps would otherwise cost it 64 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConflatedFrames(Option<Box<Holding>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Holding {
    held: BTreeMap<(RoomName, String), Held>,
    /// Per room, the `seq`s replaced while held: the member never gets them,
    /// so the first frame it gets after each one is flagged.
    skipped: BTreeMap<RoomName, Vec<u64>>,
    /// When the window closes and everything held is sent.
    flush_at_us: Option<u64>,
}

impl ConflatedFrames {
    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.held.is_empty())
    }

    /// When held frames must go out.
    pub fn flush_at_us(&self) -> Option<u64> {
        self.0.as_ref().and_then(|h| h.flush_at_us)
    }

    /// Holds (or replaces) the progress event `seq` of `series` in `room`.
    pub fn hold(
        &mut self,
        room: &RoomName,
        series: String,
        seq: u64,
        frame: TextFrame,
        flush_at_us: u64,
    ) {
        let holding = self.0.get_or_insert_with(Box::default);
        if let Some(replaced) = holding
            .held
            .insert((room.clone(), series), Held { seq, frame })
        {
            holding
                .skipped
                .entry(room.clone())
                .or_default()
                .push(replaced.seq);
        }
        holding.flush_at_us.get_or_insert(flush_at_us);
    }

    /// Whether a progress event of `series` in `room` is already held (then a
    /// newer one must replace it rather than overtake it).
    pub fn holds(&self, room: &RoomName, series: &str) -> bool {
        self.0
            .as_ref()
            .is_some_and(|h| h.held.contains_key(&(room.clone(), series.to_owned())))
    }

    /// Takes the held frames of `room` (every room when `None`), in `seq`
    /// order per room, ready to send; replaced ones are flagged.
    pub fn take(&mut self, room: Option<&RoomName>) -> Vec<TextFrame> {
        let Some(holding) = self.0.as_mut() else {
            return Vec::new();
        };
        let keys: Vec<(RoomName, String)> = holding
            .held
            .keys()
            .filter(|(r, _)| room.is_none_or(|want| r == want))
            .cloned()
            .collect();
        let mut taken: Vec<(RoomName, u64, TextFrame)> = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(held) = holding.held.remove(&key) {
                taken.push((key.0, held.seq, held.frame));
            }
        }
        taken.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        // Flag the first frame after each skipped seq: that is where the member sees a jump.
        let mut frames = Vec::with_capacity(taken.len());
        let mut skipped: Vec<u64> = Vec::new();
        let mut current_room: Option<RoomName> = None;
        for (room, seq, frame) in taken {
            if current_room.as_ref() != Some(&room) {
                skipped = holding.skipped.remove(&room).unwrap_or_default();
                skipped.sort_unstable();
                current_room = Some(room);
            }
            let jumped = skipped.first().is_some_and(|&s| s < seq);
            skipped.retain(|&s| s > seq);
            frames.push(if jumped { flagged(&frame) } else { frame });
        }
        self.settle();
        frames
    }

    /// Forgets what is held for `room` (the member left it).
    pub fn drop_room(&mut self, room: &RoomName) {
        if let Some(holding) = self.0.as_mut() {
            holding.held.retain(|(r, _), _| r != room);
            holding.skipped.remove(room);
        }
        self.settle();
    }

    /// Rooms something is held for (invariant checks).
    #[cfg(any(test, feature = "testing"))]
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.0
            .iter()
            .flat_map(|h| h.held.keys().map(|(room, _)| room))
    }

    /// Once nothing is held the window is closed; once nothing at all is
    /// kept, the box goes.
    fn settle(&mut self) {
        if let Some(holding) = self.0.as_mut() {
            if holding.held.is_empty() {
                holding.flush_at_us = None;
                if holding.skipped.is_empty() {
                    self.0 = None;
                }
            }
        }
    }
}

/// The frame with `"conflated":true` added at the top level.
fn flagged(frame: &TextFrame) -> TextFrame {
    let text = frame.as_str();
    let body = text.strip_suffix('}').unwrap_or(text);
    TextFrame::from(format!("{body},\"conflated\":true}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    fn frame(seq: u64) -> TextFrame {
        TextFrame::from(format!("{{\"type\":\"download_progress\",\"seq\":{seq}}}"))
    }

    #[test]
    fn series_needs_key_and_download_id() {
        let data = |v: Value| v.as_object().unwrap().clone();
        assert!(series_of(
            "download_progress",
            &data(json!({"key": "k", "download_id": "d"}))
        )
        .is_some());
        assert!(series_of(
            "download_progress",
            &data(json!({"key": "k", "download_id": 7}))
        )
        .is_some());
        assert!(series_of("download_progress", &data(json!({"key": "k"}))).is_none());
        assert!(series_of(
            "download_complete",
            &data(json!({"key": "k", "download_id": "d"}))
        )
        .is_none());
    }

    #[test]
    fn newest_wins_and_is_flagged_and_order_is_kept() {
        let mut held = ConflatedFrames::default();
        held.hold(&room("r"), "a".into(), 3, frame(3), 100);
        held.hold(&room("r"), "b".into(), 4, frame(4), 200);
        held.hold(&room("r"), "a".into(), 5, frame(5), 300);
        assert_eq!(
            held.flush_at_us(),
            Some(100),
            "the window opened with the first hold"
        );
        let out: Vec<Value> = held
            .take(None)
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect();
        assert_eq!(out.len(), 2);
        // 3 was replaced: the member jumps from before 3 straight to 4.
        assert_eq!(
            (out[0]["seq"].clone(), out[0]["conflated"].clone()),
            (json!(4), json!(true))
        );
        assert_eq!(
            (out[1]["seq"].clone(), out[1].get("conflated")),
            (json!(5), None)
        );
        assert!(held.is_empty() && held.flush_at_us().is_none());
    }

    #[test]
    fn the_flag_sits_where_the_jump_is_seen() {
        // 3 (series a) held, replaced by 6; 5 (series b) held: the member
        // gets 5 then 6, and the jump (3 missing) is seen at 5.
        let mut held = ConflatedFrames::default();
        held.hold(&room("r"), "a".into(), 3, frame(3), 100);
        held.hold(&room("r"), "b".into(), 5, frame(5), 100);
        held.hold(&room("r"), "a".into(), 6, frame(6), 100);
        let out: Vec<Value> = held
            .take(None)
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect();
        assert_eq!(out[0]["seq"], 5);
        assert_eq!(out[0]["conflated"], true);
        assert_eq!(out[1]["seq"], 6);
        assert_eq!(out[1].get("conflated"), None);
    }

    #[test]
    fn take_and_drop_by_room() {
        let mut held = ConflatedFrames::default();
        held.hold(&room("r"), "a".into(), 1, frame(1), 10);
        held.hold(&room("s"), "a".into(), 1, frame(1), 10);
        assert_eq!(held.take(Some(&room("r"))).len(), 1);
        assert!(held.holds(&room("s"), "a"));
        held.drop_room(&room("s"));
        assert!(held.is_empty());
    }
}
