//! Key sets: which keys are taken, how a token's `kid` and `alg` pick one,
//! `aud`/`iss`, with keys made by the `openssl` command line.

use std::process::Command;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::auth::{TokenError, TokenVerifier};
use crate::config::AuthConfig;

/// A private key (PKCS#8 PEM) made by `openssl genpkey` with `args`.
fn private_pem(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .expect("the openssl command line");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct TestKeys {
    rsa: EncodingKey,
    ec: EncodingKey,
    rsa_jwk: Value,
    ec_jwk: Value,
    /// The RSA public key as PEM text (for the confusion token).
    rsa_public_pem: Vec<u8>,
}

fn test_keys() -> TestKeys {
    let rsa_pem = private_pem(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let ec_pem = private_pem(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_pem).unwrap();
    let mut rsa_jwk =
        serde_json::to_value(Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap()).unwrap();
    rsa_jwk["kid"] = json!("r1");
    rsa_jwk["use"] = json!("sig");
    let mut ec_jwk =
        serde_json::to_value(Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap()).unwrap();
    ec_jwk["kid"] = json!("e1");
    ec_jwk.as_object_mut().unwrap().remove("alg");
    let mut child = Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&rsa_pem).unwrap();
    let rsa_public_pem = child.wait_with_output().unwrap().stdout;
    TestKeys {
        rsa,
        ec,
        rsa_jwk,
        ec_jwk,
        rsa_public_pem,
    }
}

fn token(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": 4_000_000_000u64, "aud": ["api", "other"], "iss": "https://idp.test/"})
}

/// A verifier over `document`, loaded as if fetched.
fn verifier(document: &Value, audience: Option<&str>, issuer: Option<&str>) -> TokenVerifier {
    let verifier = TokenVerifier::from_config(&AuthConfig {
        jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
        audience: audience.map(str::to_owned),
        issuer: issuer.map(str::to_owned),
        ..AuthConfig::default()
    })
    .unwrap();
    assert_eq!(
        verifier.verify("a.b.c", 0),
        Err(TokenError::Invalid("malformed token".into()))
    );
    let set = KeySet::parse(document.to_string().as_bytes()).unwrap();
    verifier.load_for_test(set);
    verifier
}

#[test]
fn only_rs256_and_es256_signing_keys_are_taken() {
    let keys = test_keys();
    let mut encryption = keys.rsa_jwk.clone();
    encryption["kid"] = json!("enc");
    encryption["use"] = json!("enc");
    let mut rs384 = keys.rsa_jwk.clone();
    rs384["kid"] = json!("rs384");
    rs384["alg"] = json!("RS384");
    let mut mislabelled = keys.ec_jwk.clone();
    mislabelled["kid"] = json!("ec-as-rs");
    mislabelled["alg"] = json!("RS256");
    let document = json!({"keys": [
        keys.rsa_jwk, keys.ec_jwk, encryption, rs384, mislabelled,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kid": "garbage"},
        "not an object",
    ]});
    let set = KeySet::parse(document.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 2);
    assert!(matches!(set.lookup(Some("r1")), Lookup::Found(k) if k.algorithm == Algorithm::RS256));
    assert!(matches!(set.lookup(Some("e1")), Lookup::Found(k) if k.algorithm == Algorithm::ES256));
    for ignored in [
        "enc", "rs384", "ec-as-rs", "hmac", "p384", "garbage", "nope",
    ] {
        assert!(
            matches!(set.lookup(Some(ignored)), Lookup::UnknownKid),
            "{ignored}"
        );
    }
    assert!(matches!(set.lookup(None), Lookup::NoKid));

    assert_eq!(
        KeySet::parse(br#"{"keys": []}"#).err(),
        Some(SetError::NoUsableKey)
    );
    let only_encryption = json!({"keys": [encryption_only(&document)]});
    assert_eq!(
        KeySet::parse(only_encryption.to_string().as_bytes()).err(),
        Some(SetError::NoUsableKey)
    );
    for malformed in [&b"<html>"[..], br#"{"keys": 5}"#, br#"[]"#] {
        assert!(matches!(
            KeySet::parse(malformed),
            Err(SetError::Malformed(_))
        ));
    }
}

fn encryption_only(document: &Value) -> Value {
    document["keys"][2].clone()
}

#[test]
fn the_kid_picks_the_key_and_the_key_decides_the_algorithm() {
    let keys = test_keys();
    let document = json!({"keys": [keys.rsa_jwk.clone(), keys.ec_jwk.clone()]});
    let verifier = verifier(&document, None, None);
    let claims = claims();
    let rs = token(Algorithm::RS256, Some("r1"), &claims, &keys.rsa);
    assert_eq!(verifier.verify(&rs, 0).unwrap().id, "alice");
    let es = token(Algorithm::ES256, Some("e1"), &claims, &keys.ec);
    assert_eq!(verifier.verify(&es, 0).unwrap().id, "alice");

    // A valid signature under another key's kid.
    let swapped = token(Algorithm::ES256, Some("r1"), &claims, &keys.ec);
    assert!(matches!(
        verifier.verify(&swapped, 0),
        Err(TokenError::Invalid(_))
    ));
    // Algorithm confusion: HS256 "signed" with the RSA public key's bytes.
    let confused = token(
        Algorithm::HS256,
        Some("r1"),
        &claims,
        &EncodingKey::from_secret(&keys.rsa_public_pem),
    );
    let error = verifier.verify(&confused, 0).unwrap_err();
    assert!(
        matches!(&error, TokenError::Invalid(why) if why.contains("HS256")),
        "{error:?}"
    );
    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "r1"})),
        b64(&claims)
    );
    assert!(matches!(
        verifier.verify(&none, 0),
        Err(TokenError::Invalid(_))
    ));
    // A kid nobody published; no kid with two keys to choose from.
    let unknown = token(Algorithm::RS256, Some("r9"), &claims, &keys.rsa);
    assert_eq!(verifier.verify(&unknown, 0), Err(TokenError::UnknownKey));
    let no_kid = token(Algorithm::RS256, None, &claims, &keys.rsa);
    assert!(matches!(
        verifier.verify(&no_kid, 0),
        Err(TokenError::Invalid(_))
    ));
    // With a single key, a token without kid uses it.
    let single = self::verifier(&json!({"keys": [keys.rsa_jwk]}), None, None);
    assert_eq!(single.verify(&no_kid, 0).unwrap().id, "alice");
}

#[test]
fn audience_and_issuer_when_configured() {
    let keys = test_keys();
    let document = json!({"keys": [keys.rsa_jwk]});
    let sign = |claims: &Value| token(Algorithm::RS256, Some("r1"), claims, &keys.rsa);
    let strict = verifier(&document, Some("api"), Some("https://idp.test/"));
    assert!(strict.verify(&sign(&claims()), 0).is_ok());
    let mut single_aud = claims();
    single_aud["aud"] = json!("api");
    assert!(strict.verify(&sign(&single_aud), 0).is_ok());

    let mut cases = Vec::new();
    for (field, value) in [
        ("aud", json!("someone-else")),
        ("aud", json!(["x", "y"])),
        ("iss", json!("https://evil.test/")),
        ("iss", json!("https://idp.test")),
    ] {
        let mut claims = claims();
        claims[field] = value;
        cases.push(claims);
    }
    for missing in ["aud", "iss"] {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(missing);
        cases.push(claims);
    }
    for claims in cases {
        let error = strict.verify(&sign(&claims), 0).unwrap_err();
        assert!(
            matches!(error, TokenError::Invalid(_)),
            "{claims}: {error:?}"
        );
    }
    // Unset: not checked (an aud claim is then no reason to refuse).
    let lax = verifier(&document, None, None);
    let mut other = claims();
    other["aud"] = json!("someone-else");
    other["iss"] = json!("https://evil.test/");
    assert!(lax.verify(&sign(&other), 0).is_ok());
}

#[test]
fn audience_and_issuer_apply_to_a_secret_too() {
    let config = |audience: Option<&str>| AuthConfig {
        jwt_secret: Some("s".into()),
        audience: audience.map(str::to_owned),
        issuer: audience.map(|_| "me".to_owned()),
        ..AuthConfig::default()
    };
    let secret = EncodingKey::from_secret(b"s");
    let strict = TokenVerifier::from_config(&config(Some("api"))).unwrap();
    let plain = token(
        Algorithm::HS256,
        None,
        &json!({"sub": "a", "exp": 4e9}),
        &secret,
    );
    assert!(matches!(
        strict.verify(&plain, 0),
        Err(TokenError::Invalid(_))
    ));
    let good = token(
        Algorithm::HS256,
        None,
        &json!({"sub": "a", "exp": 4e9, "aud": "api", "iss": "me"}),
        &secret,
    );
    assert!(strict.verify(&good, 0).is_ok());
    // Tokens the server signs itself carry the configured aud and iss.
    let signed = strict
        .sign(&crate::auth::Claims {
            sub: "console".into(),
            exp: 4e9,
            nbf: None,
            iat: None,
            scope: None,
            rooms: None,
        })
        .unwrap();
    assert!(strict.verify(&signed, 0).is_ok());
    let lax = TokenVerifier::from_config(&config(None)).unwrap();
    assert!(lax.verify(&good, 0).is_ok());
}

#[test]
fn conflicting_or_bad_settings_are_refused_at_startup() {
    let jwks = |url: &str| AuthConfig {
        jwks_url: Some(url.into()),
        ..AuthConfig::default()
    };
    let refused = |config: AuthConfig| TokenVerifier::from_config(&config).err().unwrap();
    let with_secret = AuthConfig {
        jwt_secret: Some("s".into()),
        ..jwks("https://idp.test/jwks.json")
    };
    assert!(refused(with_secret).contains("cannot be combined"));
    let with_pem = AuthConfig {
        public_key_file: Some("/nonexistent.pem".into()),
        ..jwks("https://idp.test/jwks.json")
    };
    assert!(refused(with_pem).contains("cannot be combined"));
    for bad in ["ftp://idp.test/x", "idp.test/jwks.json", "https://"] {
        assert!(refused(jwks(bad)).contains("not an http"), "{bad}");
    }
    let too_often = AuthConfig {
        jwks_refresh_ms: 0,
        ..jwks("http://idp.test/jwks.json")
    };
    assert!(refused(too_often).contains("jwks_refresh_ms"));
    let empty_audience = AuthConfig {
        audience: Some(String::new()),
        ..AuthConfig::default()
    };
    assert!(refused(empty_audience).contains("auth.audience"));
    // Before any key set is loaded: not ready, every token invalid.
    let waiting = TokenVerifier::from_config(&jwks("http://idp.test/jwks.json")).unwrap();
    assert!(waiting.is_configured());
    assert!(waiting.keys_ready().is_err());
    let keys = test_keys();
    let rs = token(Algorithm::RS256, Some("r1"), &claims(), &keys.rsa);
    assert_eq!(waiting.verify(&rs, 0), Err(TokenError::KeysNotLoaded));
    waiting.load_for_test(
        KeySet::parse(json!({"keys": [keys.rsa_jwk]}).to_string().as_bytes()).unwrap(),
    );
    assert!(waiting.keys_ready().is_ok());
    assert!(waiting.verify(&rs, 0).is_ok());
}

fn b64(value: &Value) -> String {
    let bytes = value.to_string().into_bytes();
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..chunk.len() + 1 {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
