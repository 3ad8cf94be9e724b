//! Server configuration: defaults, then a TOML file, then `ROOMCAST_*`
//! environment variables, then command-line flags (each overrides the last).
//!
//! Environment mapping: `ROOMCAST_<KEY>` sets a top-level key and
//! `ROOMCAST_<TABLE>__<KEY>` a key of a table, e.g. `ROOMCAST_LISTEN`,
//! `ROOMCAST_LIMITS__MESSAGE_BYTES_MAX=131072`, `ROOMCAST_AUTH__ALGORITHM=RS256`.
//! `ROOMCAST_JWT_SECRET` is a short alias of `ROOMCAST_AUTH__JWT_SECRET`.
//! `config/roomcast.example.toml` documents every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use roomcast_core::{AccessRules, Limits, RoomOptions};
use serde::Deserialize;

/// Everything `roomcast serve` is configured with.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Name shown in the `connected` message.
    pub server_name: String,
    /// `"text"` (human) or `"json"` logs.
    pub log_format: LogFormat,
    /// Token verification.
    pub auth: AuthConfig,
    /// The limits table.
    pub limits: Limits,
    /// Room access rules.
    pub access: AccessRules,
    /// Per-room behaviours by name prefix: presence diffs, conflation.
    pub rooms: RoomOptions,
    /// Extra message types the publish API accepts (`[a-z0-9_]`, 1-64 bytes).
    pub custom_types: Vec<String>,
    /// When non-empty, browsers whose `Origin` is not listed get 403 before the upgrade.
    pub allowed_origins: Vec<String>,
    /// Longest wait for clients to receive their 1001 close on shutdown, in ms.
    pub shutdown_drain_ms: u64,
    /// Longest wait to deliver a close frame to one client, in ms.
    pub close_flush_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            server_name: "roomcast".to_owned(),
            log_format: LogFormat::Text,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            access: AccessRules::default(),
            rooms: RoomOptions::default(),
            custom_types: Vec::new(),
            allowed_origins: Vec::new(),
            shutdown_drain_ms: 5_000,
            close_flush_timeout_ms: 5_000,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do with a connection that presents an invalid token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidTokenPolicy {
    /// Connect it as anonymous and log a warning (the seed's behaviour).
    #[default]
    Anonymous,
    /// Refuse the upgrade with 401.
    Reject,
}

/// Token verification settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (with `jwt_secret`), `RS256` or `ES256` (with `public_key_file`).
    /// Tokens are only ever checked with this algorithm.
    pub algorithm: String,
    /// The HS256 shared secret.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// Invalid tokens on `/ws/connect`: `anonymous` or `reject`.
    pub invalid_token: InvalidTokenPolicy,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            algorithm: "HS256".to_owned(),
            jwt_secret: None,
            public_key_file: None,
            invalid_token: InvalidTokenPolicy::Anonymous,
            leeway_s: 0,
        }
    }
}

impl ServerConfig {
    /// Loads the configuration: `file` (if any) over the defaults, then the
    /// `ROOMCAST_*` variables of `env` over that.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ServerConfig, String> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                text.parse::<toml::Table>()
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ROOMCAST_") && !NOT_CONFIG_KEYS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (key, value) in env {
            apply_env(&mut table, &key, &value)?;
        }
        let config: ServerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("invalid configuration: {}", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        roomcast_core::MessageTypes::with_custom(self.custom_types.iter().map(String::as_str))
            .map_err(|bad| {
                format!("custom_types: invalid type name {bad:?} (use [a-z0-9_], 1-64 bytes)")
            })?;
        let l = &self.limits;
        if l.message_bytes_max == 0 || l.outbound_queue_bytes_max == 0 || l.read_buffer_bytes == 0 {
            return Err("limits: message_bytes_max, outbound_queue_bytes_max and read_buffer_bytes must be > 0".into());
        }
        if l.outbound_queue_bytes_max > 1 << 30 {
            return Err(
                "limits: outbound_queue_bytes_max must be at most 1 GiB (1073741824)".into(),
            );
        }
        if l.ping_interval_ms == 0
            || l.ping_interval_ms > 86_400_000
            || l.idle_timeout_ms > 86_400_000
        {
            return Err(
                "limits: ping_interval_ms and idle_timeout_ms must be between 1 ms and one day"
                    .into(),
            );
        }
        if self.rooms.conflation_window_ms == 0 || self.rooms.conflation_window_ms > 60_000 {
            return Err("rooms: conflation_window_ms must be between 1 and 60000".into());
        }
        if l.idle_timeout_ms <= l.ping_interval_ms {
            return Err("limits: idle_timeout_ms must be greater than ping_interval_ms".into());
        }
        Ok(())
    }
}

/// `ROOMCAST_*` variables that are not configuration keys.
const NOT_CONFIG_KEYS: [&str; 1] = [
    // The log filter (tracing `EnvFilter` syntax), read by `roomcast serve`.
    "ROOMCAST_LOG",
];

/// Applies one `ROOMCAST_*` variable to the TOML tree.
fn apply_env(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let name = key.trim_start_matches("ROOMCAST_").to_ascii_lowercase();
    let path: Vec<&str> = match name.as_str() {
        "jwt_secret" => vec!["auth", "jwt_secret"],
        _ => name.split("__").collect(),
    };
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!("{key}: malformed configuration variable"));
    }
    let mut node = table;
    for part in &path[..path.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key}: {part} is not a table"))?;
    }
    let dotted = path.join(".");
    let value = if TEXT_KEYS.contains(&dotted.as_str()) {
        toml::Value::String(value.to_owned())
    } else {
        env_value(value)
    };
    node.insert(path[path.len() - 1].to_string(), value);
    Ok(())
}

/// Keys whose values are always text, even when they look like a number
/// (`ROOMCAST_JWT_SECRET=123456` is a secret, not an integer).
const TEXT_KEYS: [&str; 7] = [
    "auth.jwt_secret",
    "auth.algorithm",
    "auth.public_key_file",
    "auth.invalid_token",
    "server_name",
    "listen",
    "log_format",
];

/// Environment values are strings; numbers and booleans are recognised so
/// `ROOMCAST_LIMITS__ROOMS_PER_CONNECTION_MAX=10` works.
fn env_value(value: &str) -> toml::Value {
    if let Ok(n) = value.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ if value.starts_with('[') => parse_list(value),
        _ => toml::Value::String(value.to_owned()),
    }
}

/// `[a, b]` or `["a", "b"]` → a TOML array of strings.
fn parse_list(value: &str) -> toml::Value {
    let inner = value.trim_start_matches('[').trim_end_matches(']');
    toml::Value::Array(
        inner
            .split(',')
            .map(|item| item.trim().trim_matches('"'))
            .filter(|item| !item.is_empty())
            .map(|item| toml::Value::String(item.to_owned()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let config = ServerConfig::load(None, Vec::new()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.auth.jwt_secret, None);
    }

    #[test]
    fn environment_overrides() {
        let config = ServerConfig::load(
            None,
            env(&[
                ("ROOMCAST_JWT_SECRET", "s3cret"),
                ("ROOMCAST_LISTEN", "0.0.0.0:9000"),
                ("ROOMCAST_LIMITS__ROOMS_PER_CONNECTION_MAX", "3"),
                (
                    "ROOMCAST_ALLOWED_ORIGINS",
                    "[https://a.example, https://b.example]",
                ),
                ("ROOMCAST_AUTH__INVALID_TOKEN", "reject"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.jwt_secret.as_deref(), Some("s3cret"));
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.rooms_per_connection_max, 3);
        assert_eq!(config.allowed_origins.len(), 2);
        assert_eq!(config.auth.invalid_token, InvalidTokenPolicy::Reject);
    }

    #[test]
    fn secrets_that_look_like_numbers_stay_text() {
        let config = ServerConfig::load(
            None,
            env(&[
                ("ROOMCAST_JWT_SECRET", "123456"),
                ("ROOMCAST_SERVER_NAME", "42"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.jwt_secret.as_deref(), Some("123456"));
        assert_eq!(config.server_name, "42");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(ServerConfig::load(None, env(&[("ROOMCAST_LIMITS__NOPE", "1")])).is_err());
        assert!(ServerConfig::load(None, env(&[("ROOMCAST_LISTEN", "not an address")])).is_err());
        assert!(ServerConfig::load(None, env(&[("ROOMCAST_CUSTOM_TYPES", "[Bad-Type]")])).is_err());
    }

    #[test]
    fn the_outbound_queue_is_capped_at_one_gibibyte() {
        let at_cap = env(&[("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES_MAX", "1073741824")]);
        assert!(ServerConfig::load(None, at_cap).is_ok());
        let over = env(&[("ROOMCAST_LIMITS__OUTBOUND_QUEUE_BYTES_MAX", "1073741825")]);
        let error = ServerConfig::load(None, over).unwrap_err();
        assert!(error.contains("at most 1 GiB"), "{error}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/roomcast.example.toml");
        let from_file = ServerConfig::load(Some(&path), Vec::new()).unwrap();
        let defaults = ServerConfig::default();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }
}
