//! `docs/asyncapi.yaml` against the code, both ways: the client actions the
//! parser accepts, the message types the server supports, the error codes,
//! the warning codes and the close codes (with their reasons) are exactly
//! those the document lists. (`@asyncapi/parser` validates the document itself:
//! `tests/browser/asyncapi.test.mjs`.)

use std::collections::BTreeSet;
use std::path::Path;

use roomcast_core::parse::{parse_request, Action};
use roomcast_core::{CloseCode, ErrorCode, MessageTypes, WarningCode};
use serde_json::Value;

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml");
    serde_yaml_ng::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

/// Follows a local `$ref` (`#/a/b`) once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => doc
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {reference}")),
        None => value,
    }
}

/// The `const` of `field` in a message payload (`allOf` of the envelope or
/// request schema and the message's own properties).
fn payload_const(message: &Value, field: &str) -> Option<String> {
    let parts = message["payload"]["allOf"].as_array()?;
    parts.iter().find_map(|part| {
        part.pointer(&format!("/properties/{field}/const"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// The messages of the `connection` channel, resolved.
fn channel_messages(doc: &Value) -> Vec<&Value> {
    doc["channels"]["connection"]["messages"]
        .as_object()
        .expect("channels.connection.messages")
        .values()
        .map(|m| resolve(doc, m))
        .collect()
}

/// The wire names of the parser's actions, indexed by [`action_index`].
const ACTIONS: [&str; 6] = ["join", "leave", "ping", "presence", "publish", "refresh"];

/// Every variant of the parser's `Action` has an index into [`ACTIONS`]. The
/// match is exhaustive: a new action does not compile until it gets one,
/// and the index is out of bounds until [`ACTIONS`] names it.
fn action_index(action: &Action) -> usize {
    match action {
        Action::Join { .. } => 0,
        Action::Leave { .. } => 1,
        Action::Ping => 2,
        Action::Presence { .. } => 3,
        Action::Publish { .. } => 4,
        Action::Refresh { .. } => 5,
    }
}

fn action_name(action: &Action) -> &'static str {
    ACTIONS[action_index(action)]
}

/// A valid request of each action, for the parser.
fn sample(action: &str) -> String {
    let data = match action {
        "join" | "leave" | "presence" => r#"{"room":"r"}"#,
        "publish" => r#"{"room":"r","type":"queue_status"}"#,
        "refresh" => r#"{"token":"t"}"#,
        _ => "{}",
    };
    format!(r#"{{"action":"{action}","data":{data}}}"#)
}

#[test]
fn client_actions_match_the_parser() {
    let doc = document();
    let documented: BTreeSet<String> = channel_messages(&doc)
        .into_iter()
        .filter_map(|m| payload_const(m, "action"))
        .collect();
    // Each documented action parses as the action of that name.
    for action in &documented {
        let request = parse_request(&sample(action))
            .unwrap_or_else(|e| panic!("documented action {action} is refused: {e:?}"));
        assert_eq!(action_name(&request.action), action);
    }
    // Each action of the code is documented: every name parses as the
    // variant of its index, so the names cover all variants.
    for (index, name) in ACTIONS.iter().enumerate() {
        let parsed = parse_request(&sample(name)).expect("sample parses");
        assert_eq!(action_index(&parsed.action), index, "{name}");
    }
    let in_code: BTreeSet<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
    assert_eq!(documented, in_code);
    // And nothing else is an action: an undocumented name is UNKNOWN_ACTION.
    let unknown = parse_request(r#"{"action":"subscribe"}"#).unwrap_err();
    assert_eq!(unknown.code, ErrorCode::UnknownAction);
    // Every client action has a send operation.
    let sent: BTreeSet<String> = doc["operations"]
        .as_object()
        .expect("operations")
        .values()
        .filter(|op| op["action"] == "send")
        .flat_map(|op| op["messages"].as_array().expect("messages").iter())
        .map(|m| payload_const(resolve_message(&doc, m), "action").expect("an action message"))
        .collect();
    assert_eq!(sent, documented);
}

/// An operation's message reference points into the channel; follow both hops.
fn resolve_message<'a>(doc: &'a Value, reference: &'a Value) -> &'a Value {
    resolve(doc, resolve(doc, reference))
}

#[test]
fn server_message_types_match_the_supported_types() {
    let doc = document();
    let documented: BTreeSet<String> = channel_messages(&doc)
        .into_iter()
        .filter_map(|m| payload_const(m, "type"))
        .collect();
    let types = MessageTypes::with_custom(std::iter::empty()).expect("builtin types");
    let in_code: BTreeSet<String> = types.names().iter().cloned().collect();
    assert_eq!(documented, in_code);
    // Every one is received somewhere (an operation of the channel).
    let received: BTreeSet<String> = doc["operations"]
        .as_object()
        .expect("operations")
        .values()
        .flat_map(|op| {
            let mut refs: Vec<&Value> = op["messages"].as_array().into_iter().flatten().collect();
            refs.extend(op["reply"]["messages"].as_array().into_iter().flatten());
            refs
        })
        .filter_map(|m| payload_const(resolve_message(&doc, m), "type"))
        .collect();
    assert_eq!(received, in_code);
}

#[test]
fn warning_codes_match() {
    let doc = document();
    let data = &doc["components"]["messages"]["system_warning"]["payload"]["allOf"][1]
        ["properties"]["data"];
    let documented: BTreeSet<String> = data["properties"]["code"]["enum"]
        .as_array()
        .expect("system_warning code enum")
        .iter()
        .map(|c| c.as_str().expect("a code").to_owned())
        .collect();
    let in_code: BTreeSet<String> = WarningCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, in_code);
}

#[test]
fn error_codes_match() {
    let doc = document();
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["oneOf"]
        .as_array()
        .expect("ErrorCode.oneOf")
        .iter()
        .map(|c| c["const"].as_str().expect("const").to_owned())
        .collect();
    let in_code: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, in_code);
}

#[test]
fn close_codes_and_reasons_match() {
    let doc = document();
    let documented: BTreeSet<(u64, String)> = doc["components"]["schemas"]["CloseCode"]["oneOf"]
        .as_array()
        .expect("CloseCode.oneOf")
        .iter()
        .map(|c| {
            (
                c["const"].as_u64().expect("numeric const"),
                c["title"].as_str().expect("title: the reason").to_owned(),
            )
        })
        .collect();
    let in_code: BTreeSet<(u64, String)> = CloseCode::ALL
        .iter()
        .map(|c| (u64::from(c.code()), c.reason().to_owned()))
        .collect();
    assert_eq!(documented, in_code);
}

#[test]
fn the_http_publish_api_is_referenced() {
    let doc = document();
    let api = &doc["x-http-api"];
    let reference = api["reference"].as_str().expect("x-http-api.reference");
    let (file, anchor) = reference.split_once('#').expect("file#anchor");
    let protocol = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(file),
    )
    .expect("the referenced file");
    // GitHub's anchor of "## 6. Server-side publish API (ext)".
    assert_eq!(anchor, "6-server-side-publish-api-ext");
    assert!(protocol.contains("## 6. Server-side publish API (ext)"));
    let endpoints: Vec<&str> = api["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e.as_str().expect("text"))
        .collect();
    assert_eq!(endpoints, ["POST /api/broadcast", "POST /api/send"]);
    for endpoint in endpoints {
        let (method, path) = endpoint.split_once(' ').unwrap();
        assert!(
            protocol.contains(&format!("`{method} {path}`")),
            "{endpoint} is not in docs/protocol.md"
        );
    }
}
