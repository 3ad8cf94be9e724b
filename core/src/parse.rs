//! Parsing one client text frame into exactly one [`Request`] or one
//! [`Rejection`] (an `error` reply). Total: no input panics, every input gets
//! exactly one answer.
//!
//! Accepted shape: a JSON object `{"action": "...", "data": {...}, "id": ...}`.
//! `data` may be absent or `null` (both mean `{}`); unknown fields are
//! ignored (forward compatibility); `id`, when present, is a string of at most
//! [`REQUEST_ID_MAX_BYTES`] bytes or a number and is echoed in the reply. For
//! `join`/`leave` the room may also be given at the top level
//! (`{"action":"join","room":"downloads"}`, the seed's docstring form);
//! `data.room` wins when both are present.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::codes::ErrorCode;
use crate::names::RoomName;

/// Longest accepted request `id` string, in bytes.
pub const REQUEST_ID_MAX_BYTES: usize = 128;
/// Longest action name echoed back in an `UNKNOWN_ACTION` message.
const ECHOED_ACTION_MAX_BYTES: usize = 64;

/// A client's request id, echoed verbatim in the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestId {
    /// `"id": 7` (any JSON number).
    Number(Number),
    /// `"id": "abc"`.
    Text(String),
}

impl RequestId {
    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            RequestId::Number(n) => Value::Number(n.clone()),
            RequestId::Text(t) => Value::String(t.clone()),
        }
    }
}

/// Where a recovering client left off: `"since": {"epoch": "...", "seq": N}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    /// The history lifetime the client saw.
    pub epoch: String,
    /// The last `seq` the client received.
    pub seq: u64,
}

/// What the client asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Join a room (optionally recovering from `since`).
    Join {
        /// The room.
        room: RoomName,
        /// Recovery position, if the client is resuming.
        since: Option<Since>,
    },
    /// Leave a room (not an error when not a member).
    Leave {
        /// The room.
        room: RoomName,
    },
    /// Keepalive; answered with `pong`.
    Ping,
    /// Who is in a room (members only).
    Presence {
        /// The room.
        room: RoomName,
        /// Page cursor: list user ids after this one.
        after: Option<String>,
    },
    /// Publish to a room from the client (needs a publish grant).
    Publish {
        /// The room.
        room: RoomName,
        /// The message type.
        kind: String,
        /// The payload object.
        data: Map<String, Value>,
    },
    /// Replace the connection's token.
    Refresh {
        /// The new JWT.
        token: String,
    },
}

/// One parsed client message.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Echoed in the reply when present.
    pub id: Option<RequestId>,
    /// What to do.
    pub action: Action,
}

/// A client message that cannot be executed: becomes one `error` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Echoed in the error reply when it could be read.
    pub id: Option<RequestId>,
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The top level, fields kept raw so one bad field does not hide `id`.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
}

/// Parses one text frame.
pub fn parse_request(text: &str) -> Result<Request, Rejection> {
    let reject = |id: Option<RequestId>, code, message: &str| Rejection {
        id,
        code,
        message: message.to_owned(),
    };
    // serde would accept a JSON array as a struct (fields by position): only objects are requests.
    if !text.trim_start().starts_with('{') {
        let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "message must be a JSON object"
        } else {
            "message is not valid JSON"
        };
        return Err(reject(None, ErrorCode::InvalidMessage, message));
    }
    let raw: RawRequest<'_> = serde_json::from_str(text).map_err(|e| {
        let message = if e.is_data() {
            "message has a duplicate or malformed field"
        } else {
            "message is not valid JSON"
        };
        reject(None, ErrorCode::InvalidMessage, message)
    })?;

    let id = match raw.id {
        None => None,
        Some(raw_id) => Some(parse_id(raw_id).ok_or_else(|| {
            reject(
                None,
                ErrorCode::InvalidMessage,
                "id must be a number or a string of at most 128 bytes",
            )
        })?),
    };
    let Some(action) = raw
        .action
        .and_then(|a| serde_json::from_str::<String>(a.get()).ok())
    else {
        return Err(reject(
            id,
            ErrorCode::InvalidMessage,
            "missing string field 'action'",
        ));
    };
    let data = match raw.data {
        None => Map::new(),
        Some(raw_data) => match serde_json::from_str::<Value>(raw_data.get()) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(reject(
                    id,
                    ErrorCode::InvalidMessage,
                    "data must be an object",
                ))
            }
        },
    };

    let parsed = match action.as_str() {
        "join" | "leave" => {
            let top_level_room = raw
                .room
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
            let room_value = data.get("room").or(top_level_room.as_ref());
            let room = subscription_room(room_value);
            match (action.as_str(), room) {
                (_, Err(e)) => Err(e),
                ("join", Ok(room)) => parse_since(data.get("since"))
                    .map(|since| Action::Join { room, since })
                    .map_err(|bad| (ErrorCode::InvalidMessage, bad.message())),
                (_, Ok(room)) => Ok(Action::Leave { room }),
            }
        }
        "ping" => Ok(Action::Ping),
        "presence" => {
            subscription_room(data.get("room")).and_then(|room| match data.get("after") {
                None | Some(Value::Null) => Ok(Action::Presence { room, after: None }),
                Some(Value::String(after)) => Ok(Action::Presence {
                    room,
                    after: Some(after.clone()),
                }),
                Some(_) => Err((
                    ErrorCode::InvalidMessage,
                    "presence 'after' must be a string".into(),
                )),
            })
        }
        "publish" => parse_publish(data),
        "refresh" => match data.get("token") {
            Some(Value::String(token)) if !token.is_empty() => Ok(Action::Refresh {
                token: token.clone(),
            }),
            _ => Err((
                ErrorCode::InvalidMessage,
                "refresh needs a string data.token".into(),
            )),
        },
        other => Err((
            ErrorCode::UnknownAction,
            format!(
                "Unknown action: {}",
                truncate(other, ECHOED_ACTION_MAX_BYTES)
            ),
        )),
    };
    match parsed {
        Ok(action) => Ok(Request { id, action }),
        Err((code, message)) => Err(Rejection { id, code, message }),
    }
}

fn parse_id(raw: &RawValue) -> Option<RequestId> {
    match serde_json::from_str::<Value>(raw.get()).ok()? {
        Value::Number(n) => Some(RequestId::Number(n)),
        Value::String(s) if s.len() <= REQUEST_ID_MAX_BYTES => Some(RequestId::Text(s)),
        _ => None,
    }
}

/// Why a request's `room` is not a room (answered `INVALID_SUBSCRIPTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadRoom {
    Missing,
    Empty,
    Invalid,
    NotString,
}

impl BadRoom {
    /// The error message sent to the client.
    fn message(self) -> String {
        match self {
            BadRoom::Missing => "Invalid room subscription: room is missing",
            BadRoom::Empty => "Invalid room subscription: room is empty",
            BadRoom::Invalid => {
                "Invalid room subscription: room names are 1-128 bytes of [A-Za-z0-9_.:-]"
            }
            BadRoom::NotString => "Invalid room subscription: room must be a string",
        }
        .to_owned()
    }
}

fn subscription_room(value: Option<&Value>) -> Result<RoomName, (ErrorCode, String)> {
    let room = match value {
        None | Some(Value::Null) => Err(BadRoom::Missing),
        Some(Value::String(name)) if name.is_empty() => Err(BadRoom::Empty),
        Some(Value::String(name)) => RoomName::new(name).ok_or(BadRoom::Invalid),
        Some(_) => Err(BadRoom::NotString),
    };
    room.map_err(|bad| (ErrorCode::InvalidSubscription, bad.message()))
}

/// A `since` that is not `{"epoch": string, "seq": non-negative integer}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BadSince;

impl BadSince {
    /// The error message sent to the client (`INVALID_MESSAGE`).
    fn message(self) -> String {
        "since must be {\"epoch\": string, \"seq\": non-negative integer}".to_owned()
    }
}

fn parse_since(value: Option<&Value>) -> Result<Option<Since>, BadSince> {
    let bad = || BadSince;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(since)) => match (since.get("epoch"), since.get("seq")) {
            (Some(Value::String(epoch)), Some(Value::Number(seq))) => {
                let seq = seq.as_u64().ok_or_else(bad)?;
                Ok(Some(Since {
                    epoch: epoch.clone(),
                    seq,
                }))
            }
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

fn parse_publish(mut data: Map<String, Value>) -> Result<Action, (ErrorCode, String)> {
    let room = subscription_room(data.get("room"))?;
    let Some(Value::String(kind)) = data.remove("type") else {
        return Err((
            ErrorCode::InvalidMessage,
            "publish needs a string data.type".into(),
        ));
    };
    let payload = match data.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(payload)) => payload,
        Some(_) => {
            return Err((
                ErrorCode::InvalidMessage,
                "publish data.data must be an object".into(),
            ))
        }
    };
    Ok(Action::Publish {
        room,
        kind,
        data: payload,
    })
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(any(test, feature = "testing"))]
impl Request {
    /// Serializes the request back to the wire form (used by round-trip tests
    /// and the fuzzers: `parse_request(r.to_json()) == Ok(r)`).
    pub fn to_json(&self) -> String {
        let mut object = Map::new();
        let (action, data) = match &self.action {
            Action::Join { room, since } => {
                let mut data = Map::new();
                data.insert("room".into(), room.as_str().into());
                if let Some(since) = since {
                    data.insert(
                        "since".into(),
                        serde_json::json!({"epoch": since.epoch, "seq": since.seq}),
                    );
                }
                ("join", Some(data))
            }
            Action::Leave { room } => (
                "leave",
                Some(Map::from_iter([("room".into(), room.as_str().into())])),
            ),
            Action::Ping => ("ping", None),
            Action::Presence { room, after } => {
                let mut data = Map::from_iter([("room".to_owned(), Value::from(room.as_str()))]);
                if let Some(after) = after {
                    data.insert("after".into(), after.as_str().into());
                }
                ("presence", Some(data))
            }
            Action::Publish { room, kind, data } => (
                "publish",
                Some(Map::from_iter([
                    ("room".to_owned(), Value::from(room.as_str())),
                    ("type".to_owned(), Value::from(kind.as_str())),
                    ("data".to_owned(), Value::Object(data.clone())),
                ])),
            ),
            Action::Refresh { token } => (
                "refresh",
                Some(Map::from_iter([(
                    "token".to_owned(),
                    Value::from(token.as_str()),
                )])),
            ),
        };
        object.insert("action".into(), action.into());
        if let Some(data) = data {
            object.insert("data".into(), Value::Object(data));
        }
        if let Some(id) = &self.id {
            object.insert("id".into(), id.to_value());
        }
        Value::Object(object).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Request {
        parse_request(text).unwrap_or_else(|r| panic!("{text}: {r:?}"))
    }

    fn err(text: &str) -> Rejection {
        parse_request(text).expect_err(text)
    }

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    #[test]
    fn join_in_both_forms() {
        let expected = Action::Join {
            room: room("downloads"),
            since: None,
        };
        assert_eq!(
            ok(r#"{"action":"join","data":{"room":"downloads"}}"#).action,
            expected
        );
        assert_eq!(
            ok(r#"{"action":"join","room":"downloads"}"#).action,
            expected
        );
        // data.room wins over the top-level form.
        assert_eq!(
            ok(r#"{"action":"join","room":"x","data":{"room":"downloads"}}"#).action,
            expected
        );
    }

    #[test]
    fn leave_and_ping() {
        assert_eq!(
            ok(r#"{"action":"leave","data":{"room":"a"}}"#).action,
            Action::Leave { room: room("a") }
        );
        assert_eq!(ok(r#"{"action":"ping"}"#).action, Action::Ping);
        assert_eq!(ok(r#"{"action":"ping","data":null}"#).action, Action::Ping);
        assert_eq!(
            ok(r#" {"action":"ping","extra":[1,2]} "#).action,
            Action::Ping
        );
    }

    #[test]
    fn ids_are_kept_for_echo() {
        assert_eq!(
            ok(r#"{"action":"ping","id":7}"#).id,
            Some(RequestId::Number(7.into()))
        );
        assert_eq!(
            ok(r#"{"action":"ping","id":"r-1"}"#).id,
            Some(RequestId::Text("r-1".into()))
        );
        // An id survives a later error so the error can echo it.
        assert_eq!(
            err(r#"{"action":"fly","id":"q"}"#).id,
            Some(RequestId::Text("q".into()))
        );
        assert_eq!(
            err(r#"{"action":5,"id":1}"#).id,
            Some(RequestId::Number(1.into()))
        );
    }

    #[test]
    fn invalid_message_cases() {
        for text in [
            "",
            "not json",
            "[]",
            "[\"action\"]",
            "1",
            "\"ping\"",
            "null",
            "{",
            "{}",
            r#"{"action":5}"#,
            r#"{"action":null}"#,
            r#"{"action":"ping","data":[]}"#,
            r#"{"action":"ping","data":"x"}"#,
            r#"{"action":"ping","id":{}}"#,
            r#"{"action":"ping","id":true}"#,
            r#"{"action":"ping","action":"ping"}"#,
        ] {
            assert_eq!(err(text).code, ErrorCode::InvalidMessage, "{text}");
        }
        let long_id = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(129));
        assert_eq!(err(&long_id).code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn invalid_subscription_cases() {
        for text in [
            r#"{"action":"join"}"#,
            r#"{"action":"join","data":{}}"#,
            r#"{"action":"join","data":{"room":""}}"#,
            r#"{"action":"join","data":{"room":5}}"#,
            r#"{"action":"join","data":{"room":"a b"}}"#,
            r#"{"action":"leave","room":""}"#,
            r#"{"action":"leave","data":{"room":null}}"#,
        ] {
            assert_eq!(err(text).code, ErrorCode::InvalidSubscription, "{text}");
        }
    }

    #[test]
    fn unknown_action_names_the_action() {
        let r = err(r#"{"action":"subscribe"}"#);
        assert_eq!(r.code, ErrorCode::UnknownAction);
        assert_eq!(r.message, "Unknown action: subscribe");
        let long = format!(r#"{{"action":"{}"}}"#, "é".repeat(100));
        assert!(err(&long).message.len() <= "Unknown action: ".len() + 64);
    }

    #[test]
    fn since_publish_presence_refresh() {
        assert_eq!(
            ok(r#"{"action":"join","data":{"room":"r","since":{"epoch":"e1","seq":4}}}"#).action,
            Action::Join {
                room: room("r"),
                since: Some(Since {
                    epoch: "e1".into(),
                    seq: 4
                })
            }
        );
        assert_eq!(
            err(r#"{"action":"join","data":{"room":"r","since":{"seq":-1,"epoch":"e"}}}"#).code,
            ErrorCode::InvalidMessage
        );
        assert!(matches!(
            ok(r#"{"action":"publish","data":{"room":"r","type":"t","data":{"a":1}}}"#).action,
            Action::Publish { .. }
        ));
        assert_eq!(
            err(r#"{"action":"publish","data":{"room":"r"}}"#).code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            ok(r#"{"action":"presence","data":{"room":"r"}}"#).action,
            Action::Presence {
                room: room("r"),
                after: None
            }
        );
        assert_eq!(
            ok(r#"{"action":"refresh","data":{"token":"t"}}"#).action,
            Action::Refresh { token: "t".into() }
        );
        assert_eq!(
            err(r#"{"action":"refresh","data":{}}"#).code,
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn requests_round_trip() {
        for text in [
            r#"{"action":"join","data":{"room":"r","since":{"epoch":"e1","seq":4}},"id":"x"}"#,
            r#"{"action":"leave","room":"r","id":1.5}"#,
            r#"{"action":"ping"}"#,
            r#"{"action":"presence","data":{"room":"r","after":"bob"}}"#,
            r#"{"action":"publish","data":{"room":"r","type":"t","data":{"k":[1]}}}"#,
            r#"{"action":"refresh","data":{"token":"abc"}}"#,
        ] {
            let request = ok(text);
            assert_eq!(ok(&request.to_json()), request, "{text}");
        }
    }
}
