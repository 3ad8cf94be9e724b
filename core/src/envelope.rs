//! Serializing server → client messages.
//!
//! Every server message is one JSON object:
//! `{"type", "timestamp", ["room", "seq",] "data", ["id"]}`.
//! Room broadcasts carry `room` and `seq`; replies to a request that had an
//! `id` echo it.

use serde::Serialize;

use crate::codes::ErrorCode;
use crate::output::TextFrame;
use crate::parse::RequestId;
use crate::time::{format_rfc3339_ms, TIMESTAMP_LEN};

/// The room fields of a broadcast envelope.
#[derive(Clone, Copy, Debug)]
pub struct RoomStamp<'a> {
    /// Room name (already validated: no escaping needed, but escaped anyway).
    pub room: &'a str,
    /// The room's sequence number for this broadcast.
    pub seq: u64,
}

/// Serializes one envelope. `data` is any serializable object.
pub fn envelope<D: Serialize + ?Sized>(
    kind: &str,
    unix_ms: i64,
    room: Option<RoomStamp<'_>>,
    data: &D,
    id: Option<&RequestId>,
) -> TextFrame {
    let mut out = Vec::with_capacity(96);
    write_head(&mut out, kind, unix_ms);
    if let Some(room) = room {
        out.extend_from_slice(b",\"room\":");
        write_json(&mut out, room.room);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(room.seq).as_bytes());
    }
    out.extend_from_slice(b",\"data\":");
    write_json(&mut out, data);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        match id {
            RequestId::Number(n) => write_json(&mut out, n),
            RequestId::Text(t) => write_json(&mut out, t),
        }
    }
    out.push(b'}');
    // serde_json writes valid UTF-8, as does everything pushed above.
    TextFrame::from(String::from_utf8(out).unwrap_or_default())
}

/// A broadcast envelope split around its `seq`: `head` ends with
/// `"seq":`, `tail` starts after the number. Joined with the number they
/// are byte for byte what [`envelope`] writes for the same broadcast.
pub fn broadcast_parts<D: Serialize + ?Sized>(
    kind: &str,
    unix_ms: i64,
    room: &crate::names::RoomName,
    data: &D,
) -> (String, String) {
    let mut head = Vec::with_capacity(96);
    write_head(&mut head, kind, unix_ms);
    head.extend_from_slice(b",\"room\":");
    write_json(&mut head, room.as_str());
    head.extend_from_slice(b",\"seq\":");
    let mut tail = Vec::with_capacity(64);
    tail.extend_from_slice(b",\"data\":");
    write_json(&mut tail, data);
    tail.push(b'}');
    // serde_json writes valid UTF-8, as does everything pushed above.
    (
        String::from_utf8(head).unwrap_or_default(),
        String::from_utf8(tail).unwrap_or_default(),
    )
}

/// `{"type":<kind>,"timestamp":"<time>"`: how every envelope starts.
fn write_head(out: &mut Vec<u8>, kind: &str, unix_ms: i64) {
    out.extend_from_slice(b"{\"type\":");
    write_json(out, kind);
    out.extend_from_slice(b",\"timestamp\":\"");
    let stamp: [u8; TIMESTAMP_LEN] = format_rfc3339_ms(unix_ms);
    out.extend_from_slice(&stamp);
    out.push(b'"');
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing into a Vec cannot fail for the types used here (strings,
    // numbers, maps with string keys); an error would leave partial output,
    // so fall back to `null` to keep the envelope valid JSON.
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// `{"type":"error","data":{"code","message"}}`.
pub fn error(unix_ms: i64, code: ErrorCode, message: &str, id: Option<&RequestId>) -> TextFrame {
    #[derive(Serialize)]
    struct ErrorData<'a> {
        code: &'static str,
        message: &'a str,
    }
    envelope(
        "error",
        unix_ms,
        None,
        &ErrorData {
            code: code.as_str(),
            message,
        },
        id,
    )
}

/// `{"type":"pong","data":{}}`.
pub fn pong(unix_ms: i64, id: Option<&RequestId>) -> TextFrame {
    envelope("pong", unix_ms, None, &serde_json::Map::new(), id)
}

/// Parses a frame back into JSON (tests and the simulator's oracle).
#[cfg(any(test, feature = "testing"))]
pub fn decode(frame: &TextFrame) -> Option<serde_json::Value> {
    serde_json::from_str(frame.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn broadcast_envelope_shape() {
        let frame = envelope(
            "download_progress",
            1_760_697_000_000,
            Some(RoomStamp {
                room: "downloads",
                seq: 42,
            }),
            &json!({"key": "attack-on-titan", "percent": 45.2}),
            None,
        );
        assert_eq!(
            decode(&frame).unwrap(),
            json!({"type": "download_progress", "timestamp": "2025-10-17T10:30:00.000Z",
                   "room": "downloads", "seq": 42,
                   "data": {"key": "attack-on-titan", "percent": 45.2}})
        );
    }

    #[test]
    fn broadcast_parts_join_to_the_envelope() {
        let data = json!({"key": "k", "percent": 1.5});
        let room = crate::names::RoomName::new("downloads").unwrap();
        let (head, tail) = broadcast_parts("download_progress", 1_760_697_000_000, &room, &data);
        let whole = envelope(
            "download_progress",
            1_760_697_000_000,
            Some(RoomStamp {
                room: "downloads",
                seq: 7,
            }),
            &data,
            None,
        );
        assert_eq!(format!("{head}7{tail}"), whole.as_str());
    }

    #[test]
    fn replies_echo_ids_and_escape_text() {
        let frame = error(
            0,
            ErrorCode::UnknownAction,
            "Unknown action: \"x\"\n",
            Some(&RequestId::Text("a\"b".into())),
        );
        assert_eq!(
            decode(&frame).unwrap(),
            json!({"type": "error", "timestamp": "1970-01-01T00:00:00.000Z",
                   "data": {"code": "UNKNOWN_ACTION", "message": "Unknown action: \"x\"\n"}, "id": "a\"b"})
        );
        let frame = pong(
            0,
            Some(&RequestId::Number(
                serde_json::Number::from_f64(1.5).unwrap(),
            )),
        );
        assert_eq!(decode(&frame).unwrap()["id"], json!(1.5));
        assert_eq!(decode(&frame).unwrap()["data"], json!({}));
    }
}
