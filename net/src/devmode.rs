//! First run: `roomcast serve` with no JWT key configured.
//!
//! On a loopback address the server is only reachable from this machine, so
//! it makes up an HS256 secret for this process (never written anywhere) and
//! prints one line with a console link whose URL fragment carries a
//! short-lived token with the `publish` scope: a newcomer can open the
//! console, join a room and publish at once. Browsers do not send the
//! fragment to the server, so the token stays out of access logs; the page
//! removes it from the address bar.
//!
//! On any other address nothing changes: every connection is anonymous and
//! the publish API answers 401, as documented in the README.
//!
//! Only the `serve` command does this ([`roomcast_net::serve`](crate::serve)
//! itself never invents a key), so embedding applications and tests keep
//! exactly the configuration they pass.

use std::net::SocketAddr;

use crate::auth::{Claims, TokenVerifier};
use crate::config::ServerConfig;

/// Lifetime of the token in the console link, in seconds.
pub const DEV_TOKEN_TTL_S: u64 = 3600;
/// The `sub` of the token in the console link.
pub const DEV_TOKEN_SUB: &str = "console";

/// What `roomcast serve` does about tokens at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// A key is configured: tokens are verified with it, nothing is printed.
    Configured,
    /// No key, loopback address: an ephemeral development secret.
    DevSecret,
    /// No key, reachable address: anonymous only, publish answers 401.
    AnonymousOnly,
}

/// Decides the [`KeyMode`] for `config` (whose `listen` is the address
/// about to be bound).
pub fn key_mode(config: &ServerConfig) -> KeyMode {
    let hs256 = config.auth.algorithm.eq_ignore_ascii_case("HS256");
    let has_secret = config
        .auth
        .jwt_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if !hs256 || has_secret || config.auth.jwks_url.is_some() {
        KeyMode::Configured
    } else if config.listen.ip().is_loopback() {
        KeyMode::DevSecret
    } else {
        KeyMode::AnonymousOnly
    }
}

/// A fresh random secret: 244 random bits from two v4 UUIDs, as hex.
pub fn ephemeral_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Signs the console token with `config`'s (development) secret.
pub fn console_token(
    config: &ServerConfig,
    now_unix_s: u64,
) -> Result<String, crate::error::ConfigError> {
    let verifier = TokenVerifier::from_config(&config.auth)?;
    verifier.sign(&Claims {
        sub: DEV_TOKEN_SUB.to_owned(),
        exp: (now_unix_s + DEV_TOKEN_TTL_S) as f64,
        nbf: None,
        iat: Some(now_unix_s as f64),
        scope: Some("publish".to_owned()),
        rooms: None,
    })
}

/// The console URL for the bound address, with the token in the fragment.
pub fn console_link(bound: SocketAddr, token: &str) -> String {
    format!("http://{bound}/#token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, secret: Option<&str>) -> ServerConfig {
        let mut config = ServerConfig {
            listen: listen.parse().unwrap(),
            ..ServerConfig::default()
        };
        config.auth.jwt_secret = secret.map(str::to_owned);
        config
    }

    #[test]
    fn loopback_without_a_key_gets_a_dev_secret() {
        assert_eq!(
            key_mode(&config("127.0.0.1:8080", None)),
            KeyMode::DevSecret
        );
        assert_eq!(key_mode(&config("127.0.0.2:0", None)), KeyMode::DevSecret);
        assert_eq!(key_mode(&config("[::1]:8080", None)), KeyMode::DevSecret);
        assert_eq!(
            key_mode(&config("127.0.0.1:8080", Some(""))),
            KeyMode::DevSecret
        );
    }

    #[test]
    fn reachable_addresses_without_a_key_stay_anonymous_only() {
        for listen in [
            "0.0.0.0:8080",
            "[::]:8080",
            "192.0.2.10:8080",
            "[2001:db8::1]:80",
        ] {
            assert_eq!(
                key_mode(&config(listen, None)),
                KeyMode::AnonymousOnly,
                "{listen}"
            );
        }
    }

    #[test]
    fn a_configured_key_is_never_replaced() {
        assert_eq!(
            key_mode(&config("127.0.0.1:8080", Some("s"))),
            KeyMode::Configured
        );
        assert_eq!(
            key_mode(&config("0.0.0.0:8080", Some("s"))),
            KeyMode::Configured
        );
        let mut rs = config("127.0.0.1:8080", None);
        rs.auth.algorithm = "RS256".to_owned();
        assert_eq!(key_mode(&rs), KeyMode::Configured);
    }

    #[test]
    fn the_console_token_publishes_and_expires_within_the_hour() {
        let mut config = config("127.0.0.1:8080", None);
        let secret = ephemeral_secret();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, ephemeral_secret());
        config.auth.jwt_secret = Some(secret);
        let now = 1_800_000_000;
        let token = console_token(&config, now).unwrap();
        let verifier = TokenVerifier::from_config(&config.auth).unwrap();
        let user = verifier.verify(&token, now as i64 * 1000).unwrap();
        assert_eq!(user.id.as_str(), DEV_TOKEN_SUB);
        assert!(user.scopes.iter().any(|s| s == "publish"));
        let later = (now + DEV_TOKEN_TTL_S) as i64 * 1000;
        assert!(verifier.verify(&token, later).is_err());
        assert_eq!(
            console_link("127.0.0.1:8080".parse().unwrap(), "t"),
            "http://127.0.0.1:8080/#token=t"
        );
    }
}
