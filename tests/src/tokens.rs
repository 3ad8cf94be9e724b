//! JWT helpers.

use serde_json::{json, Value};

use crate::SECRET;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token with arbitrary claims, signed with `secret`.
pub fn hs256_claims(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// A valid token for `sub` with `scope` (space separated, may be empty),
/// signed with [`SECRET`], valid for an hour.
pub fn token(sub: &str, scope: &str) -> String {
    token_ttl(sub, scope, 3600)
}

/// A token for `sub` expiring `ttl_s` seconds from now.
pub fn token_ttl(sub: &str, scope: &str, ttl_s: i64) -> String {
    let mut claims = json!({"sub": sub, "exp": now_s() as i64 + ttl_s, "iat": now_s()});
    if !scope.is_empty() {
        claims["scope"] = json!(scope);
    }
    hs256_claims(&claims, SECRET)
}

/// A token with the `publish` scope (every room).
pub fn publisher() -> String {
    token("publisher", "publish")
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned `alg: none` token: `header.payload.` with an empty signature.
pub fn alg_none(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An RS256 token signed with a PEM private key.
pub fn rs256(claims: &Value, private_pem: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(private_pem).expect("RSA private key"),
    )
    .expect("encode")
}

/// An RSA key pair made with the `openssl` command line in a temporary
/// directory: (directory guard, private key PEM path, public key PEM path).
pub fn rsa_keypair() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl command line is needed for the RS256 tests");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let private_s = private.to_str().expect("path");
    let public_s = public.to_str().expect("path");
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private_s,
    ]);
    run(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
    (dir, private, public)
}
