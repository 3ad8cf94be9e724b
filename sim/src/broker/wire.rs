//! The broker protocol: length-prefixed JSON frames over one TCP connection
//! per node. `core` has no serde derives for its engine types (it stays
//! free of wire formats), so this module maps them by hand.
//!
//! A frame is a 4-byte big-endian length, then that many bytes of JSON:
//!
//! | direction | frame |
//! |---|---|
//! | node → broker | `{"hello": node}` (first frame), `{"ping": n}`, `{"req": request}` |
//! | broker → node | `{"pong": n}`, `{"ev": event}` |
//!
//! Requests and events are the engine contract's
//! ([`EngineRequest`], [`EngineEvent`]), e.g.
//! `{"append": {"call": 7, "room": "r", "head": "…", "tail": "…", "series": null}}`.
//! `StreamReset` never crosses the wire: the node's link makes it when its
//! connection comes back.

use roomcast_core::engine::memory::NodeId;
use roomcast_core::engine::{
    CallId, EngineError, EngineEvent, EngineRequest, Numbered, Position, PresenceEntry, ReadResult,
    Unnumbered,
};
use roomcast_core::{ConnectionId, RoomName, SendTarget, TextFrame};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames larger than this are a protocol error (the connection is dropped).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// One frame of the broker protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// The node introduces itself (first frame of a connection).
    Hello(NodeId),
    /// Liveness probe; answered with [`Frame::Pong`] carrying the same number.
    Ping(u64),
    /// The answer to a ping.
    Pong(u64),
    /// An engine request of the node.
    Request(EngineRequest),
    /// An answer, live message or direct message for the node.
    Event(EngineEvent),
}

/// Encodes a frame, length prefix included.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let value = match frame {
        Frame::Hello(node) => json!({ "hello": node }),
        Frame::Ping(n) => json!({ "ping": n }),
        Frame::Pong(n) => json!({ "pong": n }),
        Frame::Request(request) => json!({ "req": request_json(request) }),
        Frame::Event(event) => json!({ "ev": event_json(event) }),
    };
    let body = value.to_string().into_bytes();
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Why a frame's body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not JSON.
    Json(String),
    /// JSON, but not the shape of a frame: what did not fit.
    Shape(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Json(why) | WireError::Shape(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for WireError {}

impl From<String> for WireError {
    fn from(why: String) -> WireError {
        WireError::Shape(why)
    }
}

impl From<&str> for WireError {
    fn from(why: &str) -> WireError {
        WireError::Shape(why.to_owned())
    }
}

/// Decodes a frame's JSON body.
pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err("a frame is a JSON object".into());
    };
    let (kind, inner) = map.iter().next().ok_or("an empty frame")?;
    Ok(match kind.as_str() {
        "hello" => Frame::Hello(
            u32::try_from(number(inner)?).map_err(|e| WireError::Shape(e.to_string()))?,
        ),
        "ping" => Frame::Ping(number(inner)?),
        "pong" => Frame::Pong(number(inner)?),
        "req" => Frame::Request(request_from(inner)?),
        "ev" => Frame::Event(event_from(inner)?),
        other => return Err(format!("unknown frame {other:?}").into()),
    })
}

/// Writes one frame.
pub async fn write_frame(io: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> std::io::Result<()> {
    io.write_all(&encode(frame)).await
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    let mut length = [0u8; 4];
    match io.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(invalid(format!("a frame of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    decode(&body).map(Some).map_err(|e| invalid(e.to_string()))
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

fn request_json(request: &EngineRequest) -> Value {
    match request {
        EngineRequest::Append {
            call,
            room,
            message,
            known,
        } => json!({"append": {
            "call": call.0, "room": room.as_str(),
            "head": message.head, "tail": message.tail, "series": message.series,
            "known": position_json(known.as_ref()),
        }}),
        EngineRequest::Read {
            call,
            room,
            after,
            limit,
            known,
        } => json!({"read": {
            "call": call.0, "room": room.as_str(), "limit": limit,
            "after": position_json(after.as_ref()),
            "known": position_json(known.as_ref()),
        }}),
        EngineRequest::Interest { room, on } => {
            json!({"interest": {"room": room.as_str(), "on": on}})
        }
        EngineRequest::PresenceAdd { room, entry } => json!({"presence_add": {
            "room": room.as_str(), "conn": entry.conn.to_string(), "user": entry.user,
        }}),
        EngineRequest::PresenceRemove { room, conn } => {
            json!({"presence_remove": {"room": room.as_str(), "conn": conn.to_string()}})
        }
        EngineRequest::PresenceList { call, room } => {
            json!({"presence_list": {"call": call.0, "room": room.as_str()}})
        }
        EngineRequest::PresenceRefresh => json!({"presence_refresh": {}}),
        EngineRequest::PresenceClear => json!({"presence_clear": {}}),
        EngineRequest::Direct { target, frame } => json!({"direct": {
            "target": target_json(target), "frame": frame.as_str(),
        }}),
    }
}

fn event_json(event: &EngineEvent) -> Value {
    let failure = |e: &EngineError| json!({"err": e.message()});
    match event {
        EngineEvent::Appended {
            call,
            result,
            peer_members,
        } => json!({"appended": {
            "call": call.0,
            "peer_members": peer_members,
            "result": match result { Ok(n) => json!({"ok": numbered_json(n)}), Err(e) => failure(e) },
        }}),
        EngineEvent::Read { call, result } => json!({"read": {
            "call": call.0,
            "result": match result {
                Ok(r) => json!({"ok": {
                    "epoch": &*r.epoch, "top": r.top,
                    "frames": r.frames.iter().map(|(seq, f)| json!([seq, f.as_str()])).collect::<Vec<_>>(),
                }}),
                Err(e) => failure(e),
            },
        }}),
        EngineEvent::Presence { call, result } => json!({"presence": {
            "call": call.0,
            "result": match result {
                Ok(entries) => json!({"ok": entries_json(entries)}),
                Err(e) => failure(e),
            },
        }}),
        EngineEvent::Live(numbered) => json!({ "live": numbered_json(numbered) }),
        EngineEvent::Direct { target, frame } => json!({"direct": {
            "target": target_json(target), "frame": frame.as_str(),
        }}),
        EngineEvent::StreamReset => json!({"stream_reset": {}}),
        EngineEvent::PresenceChanged {
            room,
            joined,
            left,
            connections,
        } => json!({"presence_changed": {
            "room": room.as_str(), "connections": connections,
            "joined": entries_json(joined), "left": entries_json(left),
        }}),
    }
}

fn entries_json(entries: &[PresenceEntry]) -> Value {
    entries
        .iter()
        .map(|e| json!({"conn": e.conn.to_string(), "user": e.user}))
        .collect()
}

fn numbered_json(n: &Numbered) -> Value {
    json!({
        "room": n.room.as_str(), "epoch": &*n.epoch, "seq": n.seq,
        "frame": n.frame.as_str(), "series": n.series,
    })
}

fn target_json(target: &SendTarget) -> Value {
    match target {
        SendTarget::User(user) => json!({ "user": user }),
        SendTarget::Connection(conn) => json!({ "conn": conn.to_string() }),
    }
}

fn position_json(position: Option<&Position>) -> Value {
    position.map_or(Value::Null, |p| json!({"epoch": &*p.epoch, "seq": p.seq}))
}

fn position_from(value: &Value) -> Result<Option<Position>, WireError> {
    Ok(match value {
        Value::Null => None,
        position => Some(Position {
            epoch: string(&position["epoch"])?.into(),
            seq: number(&position["seq"])?,
        }),
    })
}

fn request_from(value: &Value) -> Result<EngineRequest, WireError> {
    let (kind, v) = single(value)?;
    Ok(match kind {
        "append" => EngineRequest::Append {
            call: call(v)?,
            room: room(v)?,
            message: Unnumbered {
                head: string(&v["head"])?,
                tail: string(&v["tail"])?,
                series: optional_string(&v["series"])?,
            },
            known: position_from(&v["known"])?,
        },
        "read" => EngineRequest::Read {
            call: call(v)?,
            room: room(v)?,
            after: position_from(&v["after"])?,
            limit: number(&v["limit"])? as usize,
            known: position_from(&v["known"])?,
        },
        "interest" => EngineRequest::Interest {
            room: room(v)?,
            on: v["on"].as_bool().ok_or("interest without on")?,
        },
        "presence_add" => EngineRequest::PresenceAdd {
            room: room(v)?,
            entry: PresenceEntry {
                conn: conn(&v["conn"])?,
                user: optional_string(&v["user"])?,
            },
        },
        "presence_remove" => EngineRequest::PresenceRemove {
            room: room(v)?,
            conn: conn(&v["conn"])?,
        },
        "presence_list" => EngineRequest::PresenceList {
            call: call(v)?,
            room: room(v)?,
        },
        "presence_refresh" => EngineRequest::PresenceRefresh,
        "presence_clear" => EngineRequest::PresenceClear,
        "direct" => EngineRequest::Direct {
            target: target_from(&v["target"])?,
            frame: TextFrame::from(string(&v["frame"])?),
        },
        other => return Err(format!("unknown request {other:?}").into()),
    })
}

fn event_from(value: &Value) -> Result<EngineEvent, WireError> {
    let (kind, v) = single(value)?;
    Ok(match kind {
        "appended" => EngineEvent::Appended {
            call: call(v)?,
            result: result(&v["result"], numbered_from)?,
            peer_members: number(&v["peer_members"])?,
        },
        "read" => EngineEvent::Read {
            call: call(v)?,
            result: result(&v["result"], |r| {
                let frames = r["frames"].as_array().ok_or("read without frames")?;
                Ok(ReadResult {
                    epoch: string(&r["epoch"])?.into(),
                    top: number(&r["top"])?,
                    frames: frames
                        .iter()
                        .map(|pair| Ok((number(&pair[0])?, TextFrame::from(string(&pair[1])?))))
                        .collect::<Result<_, WireError>>()?,
                })
            })?,
        },
        "presence" => EngineEvent::Presence {
            call: call(v)?,
            result: result(&v["result"], entries_from)?,
        },
        "presence_changed" => EngineEvent::PresenceChanged {
            room: room(v)?,
            joined: entries_from(&v["joined"])?,
            left: entries_from(&v["left"])?,
            connections: number(&v["connections"])? as usize,
        },
        "live" => EngineEvent::Live(numbered_from(v)?),
        "direct" => EngineEvent::Direct {
            target: target_from(&v["target"])?,
            frame: TextFrame::from(string(&v["frame"])?),
        },
        "stream_reset" => EngineEvent::StreamReset,
        other => return Err(format!("unknown event {other:?}").into()),
    })
}

fn entries_from(entries: &Value) -> Result<Vec<PresenceEntry>, WireError> {
    entries
        .as_array()
        .ok_or("presence without entries")?
        .iter()
        .map(|e| {
            Ok(PresenceEntry {
                conn: conn(&e["conn"])?,
                user: optional_string(&e["user"])?,
            })
        })
        .collect()
}

fn numbered_from(v: &Value) -> Result<Numbered, WireError> {
    Ok(Numbered {
        room: room(v)?,
        epoch: string(&v["epoch"])?.into(),
        seq: number(&v["seq"])?,
        frame: TextFrame::from(string(&v["frame"])?),
        series: optional_string(&v["series"])?,
    })
}

fn result<T>(
    v: &Value,
    ok: impl FnOnce(&Value) -> Result<T, WireError>,
) -> Result<Result<T, EngineError>, WireError> {
    match (v.get("ok"), v.get("err")) {
        (Some(value), None) => ok(value).map(Ok),
        (None, Some(why)) => Ok(Err(EngineError::Unavailable(string(why)?))),
        _ => Err("a result is either ok or err".into()),
    }
}

fn target_from(v: &Value) -> Result<SendTarget, WireError> {
    match (v.get("user"), v.get("conn")) {
        (Some(user), None) => Ok(SendTarget::User(string(user)?)),
        (None, Some(c)) => Ok(SendTarget::Connection(conn(c)?)),
        _ => Err("a target is a user or a connection".into()),
    }
}

fn single(value: &Value) -> Result<(&str, &Value), WireError> {
    match value {
        Value::Object(map) if map.len() == 1 => {
            let (kind, inner) = map.iter().next().ok_or("empty")?;
            Ok((kind.as_str(), inner))
        }
        _ => Err(format!("expected one tagged object, got {value}").into()),
    }
}

fn number(v: &Value) -> Result<u64, WireError> {
    v.as_u64()
        .ok_or_else(|| WireError::Shape(format!("expected a number, got {v}")))
}

fn string(v: &Value) -> Result<String, WireError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| WireError::Shape(format!("expected a string, got {v}")))
}

fn optional_string(v: &Value) -> Result<Option<String>, WireError> {
    match v {
        Value::Null => Ok(None),
        other => string(other).map(Some),
    }
}

fn call(v: &Value) -> Result<CallId, WireError> {
    number(&v["call"]).map(CallId)
}

fn room(v: &Value) -> Result<RoomName, WireError> {
    let name = string(&v["room"])?;
    RoomName::new(&name).ok_or_else(|| WireError::Shape(format!("invalid room name {name:?}")))
}

fn conn(v: &Value) -> Result<ConnectionId, WireError> {
    let text = string(v)?;
    ConnectionId::parse(&text)
        .ok_or_else(|| WireError::Shape(format!("invalid connection id {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let bytes = encode(&frame);
        let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(length, bytes.len() - 4);
        assert_eq!(decode(&bytes[4..]).unwrap(), frame);
    }

    #[test]
    fn every_request_and_event_survives_the_wire() {
        let room = RoomName::new("room-1").unwrap();
        let conn = ConnectionId::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        let numbered = Numbered {
            room: room.clone(),
            epoch: "b1-3".into(),
            seq: 42,
            frame: TextFrame::from("{\"seq\":42,\"x\":\"\\u00e9\\n\"}".to_owned()),
            series: Some("k/1".into()),
        };
        let requests = [
            EngineRequest::Append {
                call: CallId(1),
                room: room.clone(),
                message: Unnumbered {
                    head: "{\"seq\":".into(),
                    tail: "}".into(),
                    series: None,
                },
                known: None,
            },
            EngineRequest::Read {
                call: CallId(2),
                room: room.clone(),
                after: Some(Position {
                    epoch: "e".into(),
                    seq: 9,
                }),
                limit: 100,
                known: Some(Position {
                    epoch: "e".into(),
                    seq: 12,
                }),
            },
            EngineRequest::Read {
                call: CallId(3),
                room: room.clone(),
                after: None,
                limit: 0,
                known: None,
            },
            EngineRequest::Interest {
                room: room.clone(),
                on: true,
            },
            EngineRequest::PresenceAdd {
                room: room.clone(),
                entry: PresenceEntry {
                    conn,
                    user: Some("alice".into()),
                },
            },
            EngineRequest::PresenceRemove {
                room: room.clone(),
                conn,
            },
            EngineRequest::PresenceList {
                call: CallId(4),
                room: room.clone(),
            },
            EngineRequest::PresenceRefresh,
            EngineRequest::PresenceClear,
            EngineRequest::Direct {
                target: SendTarget::Connection(conn),
                frame: TextFrame::from("{}".to_owned()),
            },
        ];
        for request in requests {
            round_trip(Frame::Request(request));
        }
        let events = [
            EngineEvent::Appended {
                call: CallId(1),
                result: Ok(numbered.clone()),
                peer_members: 0,
            },
            EngineEvent::Appended {
                call: CallId(1),
                result: Ok(numbered.clone()),
                peer_members: 3,
            },
            EngineEvent::Appended {
                call: CallId(1),
                result: Err(EngineError::Unavailable("down".into())),
                peer_members: 0,
            },
            EngineEvent::Read {
                call: CallId(2),
                result: Ok(ReadResult {
                    epoch: "e".into(),
                    top: 11,
                    frames: vec![
                        (10, TextFrame::from("a".to_owned())),
                        (11, TextFrame::from("b".to_owned())),
                    ],
                }),
            },
            EngineEvent::Presence {
                call: CallId(4),
                result: Ok(vec![PresenceEntry { conn, user: None }]),
            },
            EngineEvent::Live(numbered),
            EngineEvent::Direct {
                target: SendTarget::User("bob".into()),
                frame: TextFrame::from("{}".to_owned()),
            },
            EngineEvent::StreamReset,
            EngineEvent::PresenceChanged {
                room: room.clone(),
                joined: vec![PresenceEntry {
                    conn,
                    user: Some("alice".into()),
                }],
                left: vec![PresenceEntry { conn, user: None }],
                connections: 3,
            },
        ];
        for event in events {
            round_trip(Frame::Event(event));
        }
        round_trip(Frame::Hello(7));
        round_trip(Frame::Ping(3));
        round_trip(Frame::Pong(3));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"{\"req\":{\"append\":{}}}",
            b"{\"ev\":5}",
            b"nope",
        ] {
            assert!(decode(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
