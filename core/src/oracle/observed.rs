//! [`Observed`]: the fields of a server message the oracle reads.

use serde::Deserialize;
use serde_json::Value;

/// The fields of a server message the oracle reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Observed {
    /// Message type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Broadcast room.
    #[serde(default)]
    pub room: Option<String>,
    /// Broadcast sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Echoed request id.
    #[serde(default)]
    pub id: Option<Value>,
    /// Set on a progress event that replaced earlier ones (conflation).
    #[serde(default)]
    pub conflated: Option<bool>,
    /// Reply details.
    #[serde(default)]
    pub data: ObservedData,
    /// A broadcast's `data`, as canonical JSON text (set by [`Observed::parse`]).
    #[serde(skip)]
    pub payload: Option<String>,
}

/// The `data` fields of replies the oracle reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ObservedData {
    /// Join/leave reply room.
    #[serde(default)]
    pub room: Option<Value>,
    /// Join reply seq.
    #[serde(default)]
    pub seq: Option<Value>,
    /// Join reply epoch.
    #[serde(default)]
    pub epoch: Option<Value>,
    /// Error code.
    #[serde(default)]
    pub code: Option<Value>,
    /// Join-with-since outcome.
    #[serde(default)]
    pub recovered: Option<Value>,
    /// A `presence_diff`'s count of the room's connections.
    #[serde(default)]
    pub connections: Option<Value>,
}

impl Observed {
    /// Parses a server frame; `None` when it is not a JSON object.
    pub fn parse(text: &str) -> Option<Observed> {
        // One parse: the fields, and a broadcast's `data` as text.
        let value: Value = serde_json::from_str(text).ok()?;
        let mut observed = Observed::deserialize(&value).ok()?;
        if observed.seq.is_some() {
            observed.payload = Some(value["data"].to_string());
        }
        Some(observed)
    }
}
