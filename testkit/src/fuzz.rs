//! The bodies of roomcast's fuzz targets.
//!
//! Each is a `fn(&[u8])` that panics on a broken property. cargo-fuzz
//! (`fuzz/`) calls them with generated inputs; `cargo test` replays the
//! checked-in corpus and every crash artifact through the same functions
//! (`sim/tests/fuzz_corpus.rs`), so a fixed crash cannot come back.
//! `core_events` is in its own file (`core_events.rs`).

use arbitrary::{Arbitrary, Unstructured};
use hyper::header::{HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use hyper::HeaderMap;
use roomcast_core::envelope::{envelope, RoomStamp};
use roomcast_core::parse::parse_request;
use roomcast_core::validate::{
    is_url_safe_key, parse_broadcast_body, parse_send_body, validate_message,
};
use roomcast_core::{
    ConnectionId, CoreConfig, ErrorCode, Identity, Input, Limits, MessageTypes, Now, Output,
    RoomName, Standalone,
};
use roomcast_net::auth::{extract_token, Claims, TokenVerifier};
use roomcast_net::config::AuthConfig;
use serde_json::Value;

pub use crate::core_events::core_events;

/// A fuzz target: its name (the fuzz binary and corpus folder) and body.
pub type FuzzTarget = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [FuzzTarget; 5] = [
    ("client_message", client_message),
    ("core_events", core_events),
    ("publish_body", publish_body),
    ("token", token),
    ("envelope", envelope_round_trip),
];

pub(crate) fn generous_limits() -> Limits {
    Limits {
        messages_per_second: 1_000_000,
        message_burst: 1_000_000,
        ..Limits::default()
    }
}

/// Client message parsing: every input maps to exactly one request or one
/// protocol error; valid requests round-trip; the core answers it with
/// exactly one well-formed reply.
pub fn client_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_request(&text) {
        Ok(request) => {
            let again = parse_request(&request.to_json());
            assert_eq!(
                again.as_ref(),
                Ok(&request),
                "valid requests re-parse to the same value"
            );
        }
        Err(rejection) => {
            assert!(ErrorCode::ALL.contains(&rejection.code));
            assert!(!rejection.message.is_empty(), "errors explain themselves");
        }
    }
    let mut core = Standalone::new(CoreConfig {
        limits: generous_limits(),
        ..CoreConfig::default()
    });
    let conn = ConnectionId::from_u128(1);
    core.handle(
        Now::default(),
        Input::Open {
            conn,
            identity: Identity::Anonymous,
        },
    );
    while core.poll_output().is_some() {}
    core.handle(Now::default(), Input::Text { conn, text: &text });
    let mut replies = 0;
    while let Some(output) = core.poll_output() {
        let Output::Send { frame, .. } = output else {
            panic!("a client message never closes: {output:?}")
        };
        let reply: Value = serde_json::from_str(frame.as_str()).expect("replies are JSON");
        assert!(reply["type"].is_string() && reply["timestamp"].is_string());
        replies += 1;
    }
    assert_eq!(replies, 1, "exactly one reply per message");
    core.check_invariants().expect("invariants hold");
}

/// HTTP publish/send bodies: no panic; whatever is accepted satisfies the
/// room-name, message-type and series-`key` rules.
pub fn publish_body(data: &[u8]) {
    let types = MessageTypes::default();
    let limits = Limits::default();
    if let Ok(publish) = parse_broadcast_body(data, &types, &limits) {
        assert!(!publish.rooms.is_empty() && publish.rooms.len() <= limits.broadcast_rooms_max);
        for room in &publish.rooms {
            assert_eq!(RoomName::new(room.as_str()).as_ref(), Some(room));
        }
        assert!(validate_message(&types, &publish.kind, &publish.data).is_ok());
        if publish.kind.starts_with("download_") {
            let key = publish
                .data
                .get("key")
                .and_then(Value::as_str)
                .expect("download events carry a key");
            assert!(is_url_safe_key(key));
        }
    }
    if let Ok(message) = parse_send_body(data, &types) {
        assert!(validate_message(&types, &message.kind, &message.data).is_ok());
    }
}

const FUZZ_SECRET: &str = "fuzz-secret";

fn fuzz_verifier() -> TokenVerifier {
    TokenVerifier::from_config(&AuthConfig {
        jwt_secret: Some(FUZZ_SECRET.into()),
        ..AuthConfig::default()
    })
    .expect("HS256 with a secret is a valid configuration")
}

/// Token extraction and verification: never a panic, never an accepted
/// forgery. Input: three newline-separated parts (Authorization header,
/// subprotocol header, query string); the extracted token is verified.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (authorization, protocols, query) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(authorization) {
        headers.insert(AUTHORIZATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(protocols) {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    let verifier = fuzz_verifier();
    let mut candidates: Vec<String> = vec![text.to_string()];
    if let Some((token, _)) = extract_token(&headers, query) {
        candidates.push(token);
    }
    for candidate in candidates {
        if let Ok(user) = verifier.verify(&candidate, 1_700_000_000_000) {
            // Accepted: it must carry a valid HS256 signature made with our secret.
            let (message, signature) = candidate.rsplit_once('.').expect("a JWT has dots");
            let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes());
            let expected = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::HS256,
            )
            .expect("HMAC signing works");
            assert_eq!(
                signature, expected,
                "accepted a token not signed with the secret"
            );
            assert!(!user.id.is_empty());
        }
    }
}

/// Builds a valid token for the fuzz secret (corpus seeding and tests).
pub fn sample_token(sub: &str) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: 1_900_000_000.0,
        nbf: None,
        iat: None,
        scope: Some("publish".into()),
        rooms: None,
    };
    fuzz_verifier().sign(&claims).expect("HS256 signing works")
}

/// Server message serialization: an arbitrary JSON payload, type, room and
/// seq, serialized into an envelope, parse back to the same values.
pub fn envelope_round_trip(data: &[u8]) {
    let mut source = Unstructured::new(data);
    let kind = String::arbitrary(&mut source).unwrap_or_default();
    let room = String::arbitrary(&mut source).unwrap_or_default();
    let seq = u64::arbitrary(&mut source).unwrap_or_default();
    let unix_ms = i64::arbitrary(&mut source).unwrap_or_default();
    let rest = source.take_rest();
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let stamp = RoomStamp { room: &room, seq };
    let frame = envelope(&kind, unix_ms, Some(stamp), &payload, None);
    let parsed: Value = serde_json::from_str(frame.as_str()).expect("envelopes are JSON");
    assert_eq!(parsed["type"].as_str(), Some(kind.as_str()));
    assert_eq!(parsed["room"].as_str(), Some(room.as_str()));
    assert_eq!(parsed["seq"].as_u64(), Some(seq));
    assert_eq!(parsed["data"], Value::Object(payload));
    let timestamp = parsed["timestamp"].as_str().expect("timestamp is a string");
    assert_eq!(timestamp.len(), 24);
    assert!(timestamp.ends_with('Z'));
}
