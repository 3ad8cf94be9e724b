//! Tokens: where they are found on a request, and how they are verified.
//!
//! The algorithm comes from configuration only; a token naming another
//! `alg` (including `none`) is refused. `exp` is required and, like `nbf`,
//! checked against the server's [`Clock`](crate::clock::Clock) rather than the
//! system clock, so the simulator controls token expiry too.

use std::collections::HashSet;

use hyper::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use hyper::HeaderMap;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use roomcast_core::{Grants, User};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// The subprotocol browsers offer next to their token, and the one we select.
pub const SUBPROTOCOL: &str = "roomcast";
/// Prefix of the subprotocol that carries a token: `roomcast.bearer.<jwt>`.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "roomcast.bearer.";

/// The claims roomcast reads. `exp` is a number (RFC 7519 NumericDate): a
/// string `exp` fails to deserialize and the token is invalid.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: f64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<f64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<f64>,
    /// Space-separated scopes (OAuth style); `publish` grants publishing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Room grants for `granted` rooms: an array of room names and
    /// prefixes ending in `*` (`roomcast_core::Grants`); anything else
    /// makes the token invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<serde_json::Value>,
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No key is configured: no token can be valid.
    NotConfigured,
    /// Bad signature, wrong algorithm, malformed token or claims.
    Invalid(String),
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NotConfigured => f.write_str("no token verification key is configured"),
            TokenError::Invalid(why) => write!(f, "invalid token: {why}"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
        }
    }
}

/// Verifies (and, with an HS256 secret, signs) tokens.
pub struct TokenVerifier {
    algorithm: Algorithm,
    decoding: Option<DecodingKey>,
    encoding: Option<EncodingKey>,
    leeway_ms: i64,
}

impl TokenVerifier {
    /// Builds the verifier from configuration; errors name the bad setting.
    pub fn from_config(auth: &AuthConfig) -> Result<TokenVerifier, String> {
        let algorithm = match auth.algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(format!(
                    "auth.algorithm: unsupported {other:?} (use HS256, RS256 or ES256)"
                ))
            }
        };
        let (decoding, encoding) = match algorithm {
            Algorithm::HS256 => match &auth.jwt_secret {
                Some(secret) if !secret.is_empty() => (
                    Some(DecodingKey::from_secret(secret.as_bytes())),
                    Some(EncodingKey::from_secret(secret.as_bytes())),
                ),
                _ => (None, None),
            },
            _ => {
                let path = auth.public_key_file.as_ref().ok_or_else(|| {
                    format!(
                        "auth.algorithm {:?} needs auth.public_key_file",
                        auth.algorithm
                    )
                })?;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let key = if algorithm == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                (
                    Some(key.map_err(|e| format!("{}: {e}", path.display()))?),
                    None,
                )
            }
        };
        Ok(TokenVerifier {
            algorithm,
            decoding,
            encoding,
            leeway_ms: (auth.leeway_s as i64).saturating_mul(1000),
        })
    }

    /// Whether any token can be valid at all.
    pub fn is_configured(&self) -> bool {
        self.decoding.is_some()
    }

    /// Verifies `token` at `now_unix_ms` and returns its user.
    pub fn verify(&self, token: &str, now_unix_ms: i64) -> Result<User, TokenError> {
        let key = self.decoding.as_ref().ok_or(TokenError::NotConfigured)?;
        let mut validation = Validation::new(self.algorithm);
        // exp/nbf are checked below against our own clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        let data = decode::<Claims>(token, key, &validation)
            .map_err(|e| TokenError::Invalid(e.kind_description()))?;
        let claims = data.claims;
        if !claims.exp.is_finite() || claims.sub.is_empty() {
            return Err(TokenError::Invalid("malformed exp or sub".into()));
        }
        let exp_ms = (claims.exp * 1000.0) as i64;
        if exp_ms.saturating_add(self.leeway_ms) <= now_unix_ms {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if !nbf.is_finite()
                || ((nbf * 1000.0) as i64).saturating_sub(self.leeway_ms) > now_unix_ms
            {
                return Err(TokenError::NotYetValid);
            }
        }
        let grants = match &claims.rooms {
            None => Grants::none(),
            Some(rooms) => {
                Grants::from_json(rooms).map_err(|e| TokenError::Invalid(e.to_string()))?
            }
        };
        Ok(User {
            id: claims.sub,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            expires_unix_ms: Some(exp_ms.saturating_add(self.leeway_ms)),
            grants,
        })
    }

    /// Signs a token (HS256 only: the server never holds a private key).
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let key = self
            .encoding
            .as_ref()
            .ok_or("signing tokens needs auth.algorithm = \"HS256\" and a jwt_secret (ROOMCAST_JWT_SECRET)")?;
        encode(&Header::new(self.algorithm), claims, key).map_err(|e| e.to_string())
    }
}

/// A short description of a jsonwebtoken error, without the token.
trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonwebtoken::errors::Error {
    fn kind_description(&self) -> String {
        use jsonwebtoken::errors::ErrorKind;
        match self.kind() {
            ErrorKind::InvalidSignature => "bad signature".into(),
            ErrorKind::InvalidAlgorithm => "algorithm not allowed".into(),
            ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
            ErrorKind::Json(_) => "malformed claims".into(),
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                "malformed token".into()
            }
            _ => "rejected".into(),
        }
    }
}

/// Where a request carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// `Sec-WebSocket-Protocol: roomcast.bearer.<jwt>`.
    Subprotocol,
    /// `?token=<jwt>` (the seed's way).
    Query,
}

/// Finds the token of a request: the `Authorization` header first, then the
/// bearer subprotocol, then the `token` query parameter.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<(String, TokenSource)> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = value.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some((token.trim().to_owned(), TokenSource::Header));
            }
        }
    }
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            if let Some(token) = protocol.strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
                if !token.is_empty() {
                    return Some((token.to_owned(), TokenSource::Subprotocol));
                }
            }
        }
    }
    query_param(query?, "token")
        .filter(|t| !t.is_empty())
        .map(|t| (t, TokenSource::Query))
}

/// Whether the client offered the `roomcast` subprotocol (then we select it).
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// The percent-decoded value of `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path?query` with the value of every `token=` parameter replaced, for logs.
pub fn redact_uri(uri: &hyper::Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_owned(),
        Some(query) => {
            let redacted: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("token", _)) => "token=REDACTED".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", redacted.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
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
}
