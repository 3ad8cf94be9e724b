//! Server-side publishing: the message-type list, the series `key` rule, and
//! parsing of the HTTP API bodies (`POST /api/broadcast`, `POST /api/send`).
//! The client `publish` action goes through the same [`validate_message`].

use std::fmt;

use serde_json::{Map, Value};

use crate::input::SendTarget;
use crate::limits::Limits;
use crate::names::{ConnectionId, RoomName};

/// The types every roomcast server supports (the seed's list plus `presence`).
pub const BUILTIN_TYPES: [&str; 22] = [
    "connected",
    "pong",
    "error",
    "system_info",
    "system_warning",
    "system_error",
    "download_progress",
    "download_complete",
    "download_failed",
    "download_added",
    "download_removed",
    "queue_status",
    "queue_started",
    "queue_stopped",
    "queue_paused",
    "queue_resumed",
    "scan_started",
    "scan_progress",
    "scan_complete",
    "scan_failed",
    "presence",
    "presence_diff",
];

/// Types only the server itself emits; publishing them is refused.
const RESERVED_TYPES: [&str; 5] = ["connected", "pong", "error", "presence", "presence_diff"];

/// Longest custom type name, in bytes.
const TYPE_NAME_MAX_BYTES: usize = 64;

/// The supported message types: the builtin list plus operator-configured
/// custom types, in a stable order (announced by `/ws/status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageTypes {
    names: Vec<String>,
}

impl Default for MessageTypes {
    fn default() -> MessageTypes {
        MessageTypes {
            names: BUILTIN_TYPES.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// A custom message type name that is not 1-64 bytes of `[a-z0-9_]`
/// ([`MessageTypes::with_custom`]): the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidTypeName(pub String);

impl fmt::Display for InvalidTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid type name {:?} (use [a-z0-9_], 1-64 bytes)",
            self.0
        )
    }
}

impl std::error::Error for InvalidTypeName {}

impl MessageTypes {
    /// The builtin types plus `custom` ones. A custom name must be 1-64 bytes
    /// of `[a-z0-9_]`; the error names the first invalid one.
    pub fn with_custom<'a>(
        custom: impl IntoIterator<Item = &'a str>,
    ) -> Result<MessageTypes, InvalidTypeName> {
        let mut types = MessageTypes::default();
        for name in custom {
            let valid = !name.is_empty()
                && name.len() <= TYPE_NAME_MAX_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(InvalidTypeName(name.to_owned()));
            }
            if !types.contains(name) {
                types.names.push(name.to_owned());
            }
        }
        Ok(types)
    }

    /// Whether `kind` is supported.
    pub fn contains(&self, kind: &str) -> bool {
        self.names.iter().any(|n| n == kind)
    }

    /// All supported types in announcement order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A validated server-side broadcast.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    /// Target rooms (at least one, no duplicates, in request order).
    pub rooms: Vec<RoomName>,
    /// Message type.
    pub kind: String,
    /// Payload object.
    pub data: Map<String, Value>,
}

/// A validated server-side direct message (`POST /api/send`).
#[derive(Clone, Debug, PartialEq)]
pub struct DirectMessage {
    /// One connection or every connection of one user.
    pub target: SendTarget,
    /// Message type.
    pub kind: String,
    /// Payload object.
    pub data: Map<String, Value>,
    /// Whether this node passes it on to the other nodes through the
    /// engine (for targets that may be there). True as parsed; a node of
    /// several shards hands the message to each of its shards and lets
    /// one of them pass it on.
    pub to_other_nodes: bool,
}

/// What a broadcast did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Frames handed to local connections.
    pub delivered: u64,
    /// Where each room numbered it, in request order.
    pub rooms: Vec<RoomSeq>,
}

/// The position one room gave a broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSeq {
    /// The room.
    pub room: RoomName,
    /// The room log's epoch at the time.
    pub epoch: String,
    /// The broadcast's `seq` in that epoch.
    pub seq: u64,
}

/// Why a publish was refused (HTTP 400, or an `error` reply to a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// Not JSON, not an object, or a field of the wrong type.
    InvalidBody(String),
    /// A message type that is not supported, or reserved for the server.
    UnknownType(String),
    /// A missing or malformed room name, or too many rooms.
    InvalidRoom(String),
    /// A series event without a valid URL-safe `data.key`.
    InvalidKey(String),
    /// A payload too big to ever fit a connection's outbound queue (HTTP 413).
    TooLarge(String),
    /// The engine failed the append or has too much in flight (HTTP 503).
    /// A broadcast to several rooms may have been appended to some of them
    /// (delivered there): they are listed, and named in the message.
    EngineUnavailable {
        /// What failed.
        message: String,
        /// Rooms appended before the failure, with their numbers.
        appended: Vec<RoomSeq>,
    },
}

impl PublishError {
    /// The `error.code` of the HTTP body.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidBody(_) => "INVALID_BODY",
            PublishError::UnknownType(_) => "UNKNOWN_TYPE",
            PublishError::InvalidRoom(_) => "INVALID_ROOM",
            PublishError::InvalidKey(_) => "INVALID_KEY",
            PublishError::TooLarge(_) => "PAYLOAD_TOO_LARGE",
            PublishError::EngineUnavailable { .. } => "ENGINE_UNAVAILABLE",
        }
    }

    /// The human-readable explanation.
    pub fn message(&self) -> &str {
        match self {
            PublishError::InvalidBody(m)
            | PublishError::UnknownType(m)
            | PublishError::InvalidRoom(m)
            | PublishError::InvalidKey(m)
            | PublishError::TooLarge(m)
            | PublishError::EngineUnavailable { message: m, .. } => m,
        }
    }
}

/// Whether `key` is a URL-safe series identifier: `[A-Za-z0-9._~-]+`.
pub fn is_url_safe_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Checks a message type and payload: the type must be supported and not
/// reserved; `download_*` events need a URL-safe `data.key`; `scan_*` events
/// that carry a `key` need it URL-safe.
pub fn validate_message(
    types: &MessageTypes,
    kind: &str,
    data: &Map<String, Value>,
) -> Result<(), PublishError> {
    if !types.contains(kind) || RESERVED_TYPES.contains(&kind) {
        let shown = crate::parse::truncate(kind, TYPE_NAME_MAX_BYTES);
        return Err(PublishError::UnknownType(format!(
            "unknown or reserved message type: {shown}"
        )));
    }
    let key = data.get("key");
    let key_ok = match key {
        Some(Value::String(k)) => is_url_safe_key(k),
        Some(_) => false,
        None => !kind.starts_with("download_"),
    };
    if !key_ok {
        return Err(PublishError::InvalidKey(format!(
            "{kind} needs data.key: a URL-safe series identifier ([A-Za-z0-9._~-]+)"
        )));
    }
    Ok(())
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, PublishError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(PublishError::InvalidBody(
            "body must be a JSON object".into(),
        )),
        Err(_) => Err(PublishError::InvalidBody("body is not valid JSON".into())),
    }
}

fn type_and_data(
    object: &mut Map<String, Value>,
) -> Result<(String, Map<String, Value>), PublishError> {
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => {
            return Err(PublishError::InvalidBody(
                "missing string field 'type'".into(),
            ))
        }
    };
    let data = match object.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(PublishError::InvalidBody("'data' must be an object".into())),
    };
    Ok((kind, data))
}

fn room_name(value: &Value) -> Result<RoomName, PublishError> {
    value.as_str().and_then(RoomName::new).ok_or_else(|| {
        PublishError::InvalidRoom("room names are 1-128 bytes of [A-Za-z0-9_.:-]".into())
    })
}

/// Parses and validates a `POST /api/broadcast` body:
/// `{"room": "r" | "rooms": ["a", "b"], "type": "...", "data": {...}}`.
pub fn parse_broadcast_body(
    body: &[u8],
    types: &MessageTypes,
    limits: &Limits,
) -> Result<Publish, PublishError> {
    let mut object = parse_object(body)?;
    let mut rooms = Vec::new();
    match (object.get("room"), object.get("rooms")) {
        (Some(room), None) => rooms.push(room_name(room)?),
        (None, Some(Value::Array(list))) if !list.is_empty() => {
            if list.len() > limits.broadcast_rooms_max {
                return Err(PublishError::InvalidRoom(format!(
                    "at most {} rooms per broadcast",
                    limits.broadcast_rooms_max
                )));
            }
            for value in list {
                let room = room_name(value)?;
                if !rooms.contains(&room) {
                    rooms.push(room);
                }
            }
        }
        _ => {
            return Err(PublishError::InvalidRoom(
                "give exactly one of 'room' (a name) or 'rooms' (a non-empty list)".into(),
            ))
        }
    }
    let (kind, data) = type_and_data(&mut object)?;
    validate_message(types, &kind, &data)?;
    Ok(Publish { rooms, kind, data })
}

/// Parses and validates a `POST /api/send` body:
/// `{"user_id": "..." | "connection_id": "<uuid>", "type": "...", "data": {...}}`.
pub fn parse_send_body(body: &[u8], types: &MessageTypes) -> Result<DirectMessage, PublishError> {
    let mut object = parse_object(body)?;
    let target = match (object.get("user_id"), object.get("connection_id")) {
        (Some(Value::String(user)), None) if !user.is_empty() => SendTarget::User(user.clone()),
        (None, Some(Value::String(conn))) => match ConnectionId::parse(conn) {
            Some(id) => SendTarget::Connection(id),
            None => {
                return Err(PublishError::InvalidBody(
                    "connection_id must be a UUID".into(),
                ))
            }
        },
        _ => {
            return Err(PublishError::InvalidBody(
                "give exactly one of 'user_id' or 'connection_id' (non-empty strings)".into(),
            ))
        }
    };
    let (kind, data) = type_and_data(&mut object)?;
    validate_message(types, &kind, &data)?;
    Ok(DirectMessage {
        target,
        kind,
        data,
        to_other_nodes: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast(body: &str) -> Result<Publish, PublishError> {
        parse_broadcast_body(
            body.as_bytes(),
            &MessageTypes::default(),
            &Limits::default(),
        )
    }

    #[test]
    fn valid_broadcasts() {
        let p = broadcast(r#"{"room":"downloads","type":"download_progress","data":{"key":"attack-on-titan","percent":1}}"#).unwrap();
        assert_eq!(p.rooms, vec![RoomName::new("downloads").unwrap()]);
        let p = broadcast(r#"{"rooms":["a","b","a"],"type":"queue_status"}"#).unwrap();
        assert_eq!(p.rooms.len(), 2, "duplicates collapse");
        assert!(p.data.is_empty());
    }

    #[test]
    fn series_key_rule() {
        for body in [
            r#"{"room":"d","type":"download_progress","data":{}}"#,
            r#"{"room":"d","type":"download_complete","data":{"key":"a b"}}"#,
            r#"{"room":"d","type":"download_failed","data":{"key":""}}"#,
            r#"{"room":"d","type":"download_added","data":{"key":5}}"#,
            r#"{"room":"d","type":"scan_progress","data":{"key":"ä"}}"#,
        ] {
            assert_eq!(broadcast(body).unwrap_err().code(), "INVALID_KEY", "{body}");
        }
        assert!(broadcast(r#"{"room":"d","type":"scan_started","data":{}}"#).is_ok());
        assert!(
            broadcast(r#"{"room":"d","type":"download_removed","data":{"key":"A.b_c~d-1"}}"#)
                .is_ok()
        );
    }

    #[test]
    fn invalid_broadcasts() {
        let cases = [
            ("nope", "INVALID_BODY"),
            ("[]", "INVALID_BODY"),
            (r#"{"room":"d"}"#, "INVALID_BODY"),
            (
                r#"{"room":"d","type":"queue_status","data":[]}"#,
                "INVALID_BODY",
            ),
            (r#"{"room":"d","type":"made_up"}"#, "UNKNOWN_TYPE"),
            (r#"{"room":"d","type":"connected"}"#, "UNKNOWN_TYPE"),
            (r#"{"type":"queue_status"}"#, "INVALID_ROOM"),
            (r#"{"room":"a b","type":"queue_status"}"#, "INVALID_ROOM"),
            (
                r#"{"room":"a","rooms":["b"],"type":"queue_status"}"#,
                "INVALID_ROOM",
            ),
            (r#"{"rooms":[],"type":"queue_status"}"#, "INVALID_ROOM"),
            (r#"{"rooms":[1],"type":"queue_status"}"#, "INVALID_ROOM"),
        ];
        for (body, code) in cases {
            assert_eq!(broadcast(body).unwrap_err().code(), code, "{body}");
        }
    }

    #[test]
    fn send_bodies() {
        let types = MessageTypes::default();
        let m = parse_send_body(
            br#"{"user_id":"alice","type":"system_info","data":{"message":"hi"}}"#,
            &types,
        )
        .unwrap();
        assert_eq!(m.target, SendTarget::User("alice".into()));
        let m = parse_send_body(
            br#"{"connection_id":"00000000-0000-0000-0000-000000000001","type":"system_info"}"#,
            &types,
        )
        .unwrap();
        assert_eq!(m.target, SendTarget::Connection(ConnectionId::from_u128(1)));
        assert!(parse_send_body(br#"{"connection_id":"x","type":"system_info"}"#, &types).is_err());
        assert!(parse_send_body(br#"{"type":"system_info"}"#, &types).is_err());
    }

    #[test]
    fn custom_types() {
        let types = MessageTypes::with_custom(["build_done"]).unwrap();
        assert!(types.contains("build_done"));
        assert_eq!(
            MessageTypes::with_custom(["Bad-Name"]),
            Err(InvalidTypeName("Bad-Name".into()))
        );
    }
}
