//! Tokens: where they are found on a request, and how they are verified.
//!
//! Keys: one HS256 secret, one RS256/ES256 PEM key, or the identity
//! provider's key set at `jwks_url` (`jwks.rs`; the token's `kid` picks
//! the key). The algorithm comes from configuration or the key, never from
//! the token: a token naming another `alg` (including `none`) is refused.
//! `aud` and `iss` are checked when `audience` / `issuer` are configured,
//! with every key source. `exp` is required and, like `nbf`,
//! checked against the server's [`Clock`](crate::clock::Clock) rather than the
//! system clock, so the simulator controls token expiry too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use hyper::HeaderMap;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use roomcast_core::{Grants, User};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::ConfigError;
use crate::jwks::{Jwks, Lookup};
use crate::metrics::Metrics;

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
    /// The token's `kid` names no key of the identity provider's set
    /// (even after a refetch, when [`TokenVerifier::verify_fresh`] said so).
    UnknownKey,
    /// No key set was loaded from `jwks_url` yet.
    KeysNotLoaded,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NotConfigured => f.write_str("no token verification key is configured"),
            TokenError::Invalid(why) => write!(f, "invalid token: {why}"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::UnknownKey => f.write_str("invalid token: no key with the token's kid"),
            TokenError::KeysNotLoaded => {
                f.write_str("invalid token: the identity provider's keys are not loaded yet")
            }
        }
    }
}

/// Verifies (and, with an HS256 secret, signs) tokens.
pub struct TokenVerifier {
    keys: Keys,
    encoding: Option<EncodingKey>,
    leeway_ms: i64,
    /// `[auth] audience`: when set, `aud` must contain it.
    audience: Option<String>,
    /// `[auth] issuer`: when set, `iss` must equal it.
    issuer: Option<String>,
}

/// Where the verification keys come from.
enum Keys {
    /// One key from configuration (`jwt_secret` or `public_key_file`) and
    /// the one algorithm tokens must name; `None`: no key.
    Static {
        algorithm: Algorithm,
        decoding: Option<DecodingKey>,
    },
    /// The identity provider's key set (`jwks_url`): the token's `kid`
    /// picks the key, whose algorithm the token must name.
    Jwks(Arc<Jwks>),
}

impl TokenVerifier {
    /// Builds the verifier from configuration; errors name the bad setting.
    ///
    /// `jwks_url` is the only key source when set: combined with
    /// `jwt_secret` or `public_key_file` it is refused (which key would a
    /// token be checked with is then never a guess), and `algorithm` is
    /// not used (each key has its own).
    pub fn from_config(auth: &AuthConfig) -> Result<TokenVerifier, ConfigError> {
        let audience = non_empty(&auth.audience, "auth.audience")?;
        let issuer = non_empty(&auth.issuer, "auth.issuer")?;
        let leeway_ms = (auth.leeway_s as i64).saturating_mul(1000);
        if let Some(url) = &auth.jwks_url {
            return TokenVerifier::for_jwks(auth, url).map(|keys| TokenVerifier {
                keys,
                encoding: None,
                leeway_ms,
                audience,
                issuer,
            });
        }
        let algorithm = match auth.algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(format!(
                    "auth.algorithm: unsupported {other:?} (use HS256, RS256 or ES256)"
                )
                .into())
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
                        "auth.algorithm {:?} needs auth.public_key_file (or auth.jwks_url)",
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
            keys: Keys::Static {
                algorithm,
                decoding,
            },
            encoding,
            leeway_ms,
            audience,
            issuer,
        })
    }

    fn for_jwks(auth: &AuthConfig, url: &str) -> Result<Keys, ConfigError> {
        if auth.jwt_secret.as_deref().is_some_and(|s| !s.is_empty())
            || auth.public_key_file.is_some()
        {
            return Err("auth.jwks_url cannot be combined with auth.jwt_secret (ROOMCAST_JWT_SECRET) or auth.public_key_file: with jwks_url, tokens are verified with the identity provider's keys only; remove one".into());
        }
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok
            || url
                .parse::<hyper::Uri>()
                .map_or(true, |u| u.host().is_none())
        {
            return Err(format!(
                "auth.jwks_url: {} is not an http:// or https:// URL",
                crate::config::redact_url(url)
            )
            .into());
        }
        if !(100..=86_400_000).contains(&auth.jwks_refresh_ms) {
            return Err("auth.jwks_refresh_ms must be between 100 and 86400000".into());
        }
        if auth.jwks_refetch_min_ms > 86_400_000 {
            return Err("auth.jwks_refetch_min_ms must be at most 86400000".into());
        }
        Ok(Keys::Jwks(Arc::new(Jwks::new(
            url.to_owned(),
            Duration::from_millis(auth.jwks_refresh_ms),
            Duration::from_millis(auth.jwks_refetch_min_ms),
        ))))
    }

    /// Whether any token can be valid at all.
    pub fn is_configured(&self) -> bool {
        match &self.keys {
            Keys::Static { decoding, .. } => decoding.is_some(),
            Keys::Jwks(_) => true,
        }
    }

    /// Starts fetching the identity provider's keys (with `jwks_url`;
    /// `None` otherwise). The caller aborts the task when it stops.
    pub fn start(&self, metrics: &Metrics) -> Option<tokio::task::JoinHandle<()>> {
        match &self.keys {
            Keys::Jwks(jwks) => Some(jwks.start(metrics)),
            Keys::Static { .. } => None,
        }
    }

    /// `Err` while tokens cannot be verified for want of keys that are
    /// still to come (a JWKS never loaded): `/readyz` answers 503.
    pub fn keys_ready(&self) -> Result<(), &'static str> {
        match &self.keys {
            Keys::Jwks(jwks) if jwks.current().is_none() => {
                Err("the identity provider's token keys (auth.jwks_url) are not loaded yet")
            }
            _ => Ok(()),
        }
    }

    /// Verifies `token` at `now_unix_ms` and returns its user, with the
    /// keys at hand: a `kid` the key set lacks is [`TokenError::UnknownKey`]
    /// (see [`TokenVerifier::verify_fresh`]).
    pub fn verify(&self, token: &str, now_unix_ms: i64) -> Result<User, TokenError> {
        match &self.keys {
            Keys::Static {
                algorithm,
                decoding,
            } => {
                let key = decoding.as_ref().ok_or(TokenError::NotConfigured)?;
                self.check(token, key, *algorithm, now_unix_ms)
            }
            Keys::Jwks(jwks) => {
                let header = decode_header(token)
                    .map_err(|_| TokenError::Invalid("malformed token".into()))?;
                let set = jwks.current().ok_or(TokenError::KeysNotLoaded)?;
                let key = match set.lookup(header.kid.as_deref()) {
                    Lookup::Found(key) => key,
                    Lookup::UnknownKid => return Err(TokenError::UnknownKey),
                    Lookup::NoKid => {
                        return Err(TokenError::Invalid(
                            "no kid, and the key set has several keys".into(),
                        ))
                    }
                };
                // The key decides the algorithm, never the token: an HS256
                // token "signed" with a public key, or an RS256 token for
                // an EC key, is refused here.
                if header.alg != key.algorithm {
                    return Err(TokenError::Invalid(format!(
                        "alg {:?} is not the key's ({:?})",
                        header.alg, key.algorithm
                    )));
                }
                self.check(token, &key.decoding, key.algorithm, now_unix_ms)
            }
        }
    }

    /// Like [`TokenVerifier::verify`], and when the token names a `kid`
    /// the key set lacks, fetches the set again (rate-limited, see
    /// `jwks.rs`) and verifies once more. Awaits only that fetch: run it on
    /// the task of the request that brought the token, never on a hub.
    pub async fn verify_fresh(&self, token: &str, now_unix_ms: i64) -> Result<User, TokenError> {
        let Keys::Jwks(jwks) = &self.keys else {
            return self.verify(token, now_unix_ms);
        };
        let seen = jwks.generation();
        match self.verify(token, now_unix_ms) {
            Err(TokenError::UnknownKey) => {
                jwks.refetch(seen).await;
                self.verify(token, now_unix_ms)
            }
            other => other,
        }
    }

    /// [`TokenVerifier::verify_fresh`] for a thread outside the runtime
    /// (the verification pool): the answer goes to `deliver`, at once, or
    /// from a tokio task after the refetch, so the thread never waits for
    /// a fetch.
    pub fn verify_then(
        self: &Arc<Self>,
        token: String,
        now_unix_ms: i64,
        deliver: impl FnOnce(Result<User, TokenError>) + Send + 'static,
    ) {
        if let Keys::Jwks(jwks) = &self.keys {
            let seen = jwks.generation();
            let result = self.verify(&token, now_unix_ms);
            match (result, jwks.runtime()) {
                (Err(TokenError::UnknownKey), Some(runtime)) => {
                    let verifier = self.clone();
                    let jwks = jwks.clone();
                    runtime.spawn(async move {
                        jwks.refetch(seen).await;
                        deliver(verifier.verify(&token, now_unix_ms));
                    });
                }
                (result, _) => deliver(result),
            }
            return;
        }
        deliver(self.verify(&token, now_unix_ms));
    }

    /// Loads `set` as if fetched from `jwks_url`.
    #[cfg(test)]
    pub(crate) fn load_for_test(&self, set: crate::jwks::KeySet) {
        if let Keys::Jwks(jwks) = &self.keys {
            jwks.store(set);
        }
    }

    fn check(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
        now_unix_ms: i64,
    ) -> Result<User, TokenError> {
        let mut validation = Validation::new(algorithm);
        // exp/nbf are checked below against our own clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut required = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        if let Some(audience) = &self.audience {
            validation.validate_aud = true;
            validation.set_audience(&[audience]);
            required.insert("aud".to_owned());
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
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

    /// Signs a token (HS256 only: the server never holds a private key),
    /// with the configured `aud` and `iss`, so that it passes [`TokenVerifier::verify`].
    pub fn sign(&self, claims: &Claims) -> Result<String, ConfigError> {
        #[derive(Serialize)]
        struct Signed<'a> {
            #[serde(flatten)]
            claims: &'a Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
        }
        let key = self
            .encoding
            .as_ref()
            .ok_or("signing tokens needs auth.algorithm = \"HS256\" and a jwt_secret (ROOMCAST_JWT_SECRET)")?;
        let signed = Signed {
            claims,
            aud: self.audience.as_deref(),
            iss: self.issuer.as_deref(),
        };
        encode(&Header::new(Algorithm::HS256), &signed, key)
            .map_err(|e| ConfigError::new(format!("signing a token: {e}")))
    }
}

/// A set, non-empty setting (`Some("")` is a mistake, not "unset").
fn non_empty(value: &Option<String>, key: &str) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.is_empty() => {
            Err(format!("{key} is set but empty (leave it out to not check it)").into())
        }
        other => Ok(other.clone()),
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
            ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
            ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
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
#[path = "auth_tests.rs"]
mod tests;
