//! Token extraction and verification tests.

use super::*;

fn verifier(secret: &str) -> TokenVerifier {
    TokenVerifier::from_config(&AuthConfig {
        jwt_secret: Some(secret.into()),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn claims(exp: f64) -> Claims {
    Claims {
        sub: "alice".into(),
        exp,
        nbf: None,
        iat: None,
        scope: Some("publish read".into()),
        rooms: None,
    }
}

#[test]
fn sign_and_verify() {
    let v = verifier("s");
    let token = v.sign(&claims(2_000_000_000.0)).unwrap();
    let user = v.verify(&token, 1_000_000_000_000).unwrap();
    assert_eq!(user.id, "alice");
    assert_eq!(user.scopes, vec!["publish", "read"]);
    assert_eq!(user.expires_unix_ms, Some(2_000_000_000_000));
    assert_eq!(
        v.verify(&token, 2_000_000_000_000),
        Err(TokenError::Expired)
    );
    assert!(matches!(
        verifier("other").verify(&token, 0),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn the_rooms_claim_is_grants_or_the_token_is_invalid() {
    let v = verifier("s");
    let with_rooms = |rooms: serde_json::Value| {
        let token = v
            .sign(&Claims {
                rooms: Some(rooms),
                ..claims(2_000_000_000.0)
            })
            .unwrap();
        v.verify(&token, 1_000_000_000_000)
    };
    let user = with_rooms(serde_json::json!(["team:42", "series:*"])).unwrap();
    let room = |name| roomcast_core::RoomName::new(name).unwrap();
    assert!(user.grants.covers(&room("team:42")));
    assert!(user.grants.covers(&room("series:x")));
    assert!(!user.grants.covers(&room("team:4")));
    for bad in [
        serde_json::json!("team:42"),
        serde_json::json!([42]),
        serde_json::json!(["bad room"]),
        serde_json::json!({"team:42": true}),
    ] {
        assert!(
            matches!(with_rooms(bad.clone()), Err(TokenError::Invalid(_))),
            "{bad}"
        );
    }
    // No claim: no grants.
    let token = v.sign(&claims(2_000_000_000.0)).unwrap();
    assert!(v.verify(&token, 0).unwrap().grants.is_empty());
}

#[test]
fn query_and_headers() {
    let mut headers = HeaderMap::new();
    assert_eq!(
        extract_token(&headers, Some("a=1&token=abc%2Ed")),
        Some(("abc.d".into(), TokenSource::Query))
    );
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        "roomcast, roomcast.bearer.xyz".parse().unwrap(),
    );
    assert_eq!(
        extract_token(&headers, Some("token=abc")),
        Some(("xyz".into(), TokenSource::Subprotocol))
    );
    assert!(offers_subprotocol(&headers));
    headers.insert(AUTHORIZATION, "Bearer hdr".parse().unwrap());
    assert_eq!(
        extract_token(&headers, None),
        Some(("hdr".into(), TokenSource::Header))
    );
    assert_eq!(extract_token(&HeaderMap::new(), Some("token=")), None);
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
}

#[test]
fn redacts_tokens_in_logged_uris() {
    let uri: hyper::Uri = "/ws/connect?x=1&token=secret.jwt&y=2".parse().unwrap();
    assert_eq!(redact_uri(&uri), "/ws/connect?x=1&token=REDACTED&y=2");
}
