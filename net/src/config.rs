//! Server configuration: defaults, then a TOML file, then `ROOMCAST_*`
//! environment variables, then command-line flags (each overrides the last).
//!
//! Environment mapping: `ROOMCAST_<KEY>` sets a top-level key and
//! `ROOMCAST_<TABLE>__<KEY>` a key of a table, e.g. `ROOMCAST_LISTEN`,
//! `ROOMCAST_LIMITS__MESSAGE_BYTES_MAX=131072`, `ROOMCAST_AUTH__ALGORITHM=RS256`.
//! `ROOMCAST_JWT_SECRET` is a short alias of `ROOMCAST_AUTH__JWT_SECRET`.
//! `config/roomcast.example.toml` documents every key with its default.

use crate::error::ConfigError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use roomcast_core::{AccessRules, Limits, RoomOptions};
use serde::Deserialize;

mod engine;
mod hooks;

pub use engine::{redact_url, EngineConfig};
pub use hooks::HooksConfig;

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
    /// Where rooms' order, history and presence live (in memory, or Redis).
    pub engine: EngineConfig,
    /// The application's join and connect hooks.
    pub hooks: HooksConfig,
    /// Extra message types the publish API accepts (`[a-z0-9_]`, 1-64 bytes).
    pub custom_types: Vec<String>,
    /// When non-empty, browsers whose `Origin` is not listed get 403 before the upgrade.
    pub allowed_origins: Vec<String>,
    /// Shards (hubs, each on a core of its own) of the node: 0, the
    /// default, is one per CPU this process may run on.
    pub shards: usize,
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
            engine: EngineConfig::default(),
            hooks: HooksConfig::default(),
            custom_types: Vec::new(),
            allowed_origins: Vec::new(),
            shards: 0,
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
    /// The identity provider's key set (JWKS), `http://` or `https://`:
    /// the only key source when set (see `jwks.rs`).
    pub jwks_url: Option<String>,
    /// How often the key set is fetched again, in ms.
    pub jwks_refresh_ms: u64,
    /// Least time between two fetches for an unknown `kid`, in ms.
    pub jwks_refetch_min_ms: u64,
    /// When set, a token's `aud` (string or array) must contain it.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            algorithm: "HS256".to_owned(),
            jwt_secret: None,
            public_key_file: None,
            invalid_token: InvalidTokenPolicy::Anonymous,
            leeway_s: 0,
            jwks_url: None,
            jwks_refresh_ms: 300_000,
            jwks_refetch_min_ms: 10_000,
            audience: None,
            issuer: None,
        }
    }
}

impl ServerConfig {
    /// Loads the configuration: `file` (if any) over the defaults, then the
    /// `ROOMCAST_*` variables of `env` over that. Warnings (ignored foreign
    /// `ROOMCAST_*` variables) are dropped; see [`ServerConfig::load_reporting`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ServerConfig, ConfigError> {
        ServerConfig::load_reporting(file, env).map(|(config, _)| config)
    }

    /// Like [`ServerConfig::load`], and also returns one warning for each
    /// `ROOMCAST_*` variable that was ignored because it names no setting
    /// (such as the `ROOMCAST_PORT`, `ROOMCAST_SERVICE_HOST`, ... that
    /// Kubernetes injects for a Service named `roomcast`).
    ///
    /// Typos still stop startup: a variable that names a known table with
    /// an unknown key (`ROOMCAST_LIMITS__NOPE`), or whose name is a near
    /// miss of a setting (`ROOMCAST_LISTN`, `ROOMCAST_LIMIT__CONNECTIONS_MAX`),
    /// is an error.
    pub fn load_reporting(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(ServerConfig, Vec<String>), ConfigError> {
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
        let mut warnings = Vec::new();
        for (key, value) in env {
            match classify_env(&key)? {
                EnvKey::Setting(path) => apply_env(&mut table, &key, &path, &value)?,
                EnvKey::Foreign => warnings.push(format!(
                    "ignoring environment variable {key}: it names no roomcast setting"
                )),
            }
        }
        let config: ServerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("invalid configuration: {}", e.message()))?;
        config.validate()?;
        Ok((config, warnings))
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        roomcast_core::MessageTypes::with_custom(self.custom_types.iter().map(String::as_str))
            .map_err(|bad| format!("custom_types: {bad}"))?;
        let l = &self.limits;
        if l.message_bytes_max == 0 || l.outbound_queue_bytes_max == 0 || l.read_buffer_bytes == 0 {
            return Err("limits: message_bytes_max, outbound_queue_bytes_max and read_buffer_bytes must be > 0".into());
        }
        if l.outbound_queue_bytes_max > 1 << 30 {
            return Err(
                "limits: outbound_queue_bytes_max must be at most 1 GiB (1073741824)".into(),
            );
        }
        if l.outbound_bytes_max < l.outbound_queue_bytes_max {
            return Err(
                "limits: outbound_bytes_max must be at least outbound_queue_bytes_max".into(),
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
        if self.shards > SHARDS_MAX {
            return Err(format!("shards: at most {SHARDS_MAX} (0 = one per CPU)").into());
        }
        if self.rooms.conflation_window_ms == 0 || self.rooms.conflation_window_ms > 60_000 {
            return Err("rooms: conflation_window_ms must be between 1 and 60000".into());
        }
        if self.rooms.presence_diff_interval_ms > 60_000 {
            return Err("rooms: presence_diff_interval_ms must be at most 60000".into());
        }
        if l.inbound_bytes_max / 2 < l.message_bytes_max.max(l.api_body_bytes_max) {
            return Err("limits: inbound_bytes_max must be at least twice message_bytes_max and api_body_bytes_max".into());
        }
        if l.api_body_timeout_ms == 0 {
            return Err("limits: api_body_timeout_ms must be > 0".into());
        }
        self.engine.validate()?;
        self.hooks.validate()?;
        if l.idle_timeout_ms <= l.ping_interval_ms {
            return Err("limits: idle_timeout_ms must be greater than ping_interval_ms".into());
        }
        Ok(())
    }
}

/// The most shards a node may run (`shards`).
pub const SHARDS_MAX: usize = 1024;

impl ServerConfig {
    /// The shard count to run with: `shards`, or `cpus` when it is 0.
    pub fn shard_count(&self, cpus: usize) -> usize {
        if self.shards == 0 {
            cpus.max(1)
        } else {
            self.shards
        }
    }
}

/// `ROOMCAST_*` variables that are not configuration keys.
const NOT_CONFIG_KEYS: [&str; 1] = [
    // The log filter (tracing `EnvFilter` syntax), read by `roomcast serve`.
    "ROOMCAST_LOG",
];

/// Top-level keys of [`ServerConfig`] that hold a value (not a table).
const TOP_LEVEL_KEYS: [&str; 8] = [
    "listen",
    "shards",
    "server_name",
    "log_format",
    "custom_types",
    "allowed_origins",
    "shutdown_drain_ms",
    "close_flush_timeout_ms",
];

/// The tables of [`ServerConfig`] and their keys (checked against the
/// structs by a test, so a new field cannot be forgotten here).
const TABLES: [(&str, &[&str]); 6] = [
    (
        "auth",
        &[
            "algorithm",
            "jwt_secret",
            "public_key_file",
            "invalid_token",
            "leeway_s",
            "jwks_url",
            "jwks_refresh_ms",
            "jwks_refetch_min_ms",
            "audience",
            "issuer",
        ],
    ),
    ("limits", LIMIT_KEYS),
    ("access", &["default", "rules"]),
    (
        "rooms",
        &[
            "presence_diff_prefixes",
            "presence_diff_interval_ms",
            "conflate_prefixes",
            "conflation_window_ms",
        ],
    ),
    (
        "engine",
        &[
            "redis_url",
            "redis_prefix",
            "redis_timeout_ms",
            "redis_cluster",
            "redis_tls_ca",
            "redis_tls_cert",
            "redis_tls_key",
            "redis_sentinel_master",
            "redis_sentinel_password",
            "redis_probe_interval_ms",
            "redis_probe_timeout_ms",
        ],
    ),
    (
        "hooks",
        &[
            "join_url",
            "connect_url",
            "timeout_ms",
            "calls_max",
            "forward_headers",
        ],
    ),
];

/// The keys of `[limits]` ([`Limits`]).
const LIMIT_KEYS: &[&str] = &[
    "message_bytes_max",
    "read_buffer_bytes",
    "write_buffer_bytes",
    "outbound_queue_bytes_max",
    "outbound_bytes_max",
    "rooms_per_connection_max",
    "messages_per_second",
    "message_burst",
    "rate_violations_max",
    "connections_max",
    "connections_per_ip_max",
    "handshake_timeout_ms",
    "ping_interval_ms",
    "idle_timeout_ms",
    "api_body_bytes_max",
    "broadcast_rooms_max",
    "presence_page_max",
    "history_messages_max",
    "history_age_ms",
    "token_warning_ms",
    "engine_calls_max",
    "engine_deferred_messages_max",
    "stream_check_interval_ms",
    "stream_buffer_max",
    "engine_retry_ms",
    "presence_ttl_ms",
    "history_bytes_max",
    "rooms_max",
    "conflation_behind_bytes",
    "linger_ms",
    "linger_bytes_max",
    "api_body_timeout_ms",
    "inbound_bytes_max",
];

/// What a `ROOMCAST_*` variable is.
#[derive(Debug, PartialEq, Eq)]
enum EnvKey {
    /// A setting: its path in the TOML tree (`["limits", "connections_max"]`).
    Setting(Vec<String>),
    /// Not ours (e.g. injected by Kubernetes): ignored with a warning.
    Foreign,
}

/// Sorts a `ROOMCAST_*` variable into a setting or a foreign variable, or
/// refuses it as a typo: a known table with an unknown key, or a name
/// within a small edit distance of a setting.
fn classify_env(key: &str) -> Result<EnvKey, ConfigError> {
    let name = key.trim_start_matches("ROOMCAST_").to_ascii_lowercase();
    if name == "jwt_secret" {
        return Ok(EnvKey::Setting(vec!["auth".into(), "jwt_secret".into()]));
    }
    let path: Vec<&str> = name.split("__").collect();
    let known_table = |t: &str| TABLES.iter().find(|(table, _)| *table == t);
    match path.as_slice() {
        [top] if TOP_LEVEL_KEYS.contains(top) || known_table(top).is_some() => {
            return Ok(EnvKey::Setting(vec![top.to_string()]))
        }
        [table, field] => {
            if let Some((_, fields)) = known_table(table) {
                if fields.contains(field) {
                    return Ok(EnvKey::Setting(vec![table.to_string(), field.to_string()]));
                }
                let hint = nearest(field, fields.iter().copied())
                    .map(|k| {
                        format!(
                            " (did you mean ROOMCAST_{}__{}?)",
                            table.to_ascii_uppercase(),
                            k.to_ascii_uppercase()
                        )
                    })
                    .unwrap_or_default();
                return Err(format!("{key}: [{table}] has no key {field:?}{hint}").into());
            }
        }
        [table, _, ..] if known_table(table).is_some() => {
            return Err(format!("{key}: malformed configuration variable").into());
        }
        _ => {}
    }
    // Not a setting. A near miss of one is a typo; anything else is foreign.
    let candidates = TOP_LEVEL_KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(std::iter::once("jwt_secret".to_owned()))
        .chain(
            TABLES
                .iter()
                .flat_map(|(table, keys)| keys.iter().map(move |k| format!("{table}__{k}"))),
        );
    if let Some(near) = candidates.into_iter().find(|c| is_near_miss(&name, c)) {
        return Err(format!(
            "{key}: no such setting (did you mean ROOMCAST_{}?)",
            near.to_ascii_uppercase()
        )
        .into());
    }
    if let [table, _] = path.as_slice() {
        if let Some((near, _)) = TABLES.iter().find(|(t, _)| is_near_miss(table, t)) {
            return Err(format!(
                "{key}: no table {table:?} (did you mean ROOMCAST_{}__...?)",
                near.to_ascii_uppercase()
            )
            .into());
        }
    }
    Ok(EnvKey::Foreign)
}

/// The closest of `candidates` to `name`, when it is a near miss.
fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .filter(|c| is_near_miss(name, c))
        .min_by_key(|c| edit_distance(name, c))
}

/// Whether `name` looks like a misspelling of `known`: a small edit
/// distance (one edit for short names, two for longer ones, three for
/// long ones, which also catches a unit suffix left off: `_ms`).
fn is_near_miss(name: &str, known: &str) -> bool {
    let shorter = name.len().min(known.len());
    let allowed = match shorter {
        0..=4 => 1,
        5..=11 => 2,
        _ => 3,
    };
    edit_distance(name, known) <= allowed
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Applies one `ROOMCAST_*` variable to the TOML tree at `path`.
fn apply_env(
    table: &mut toml::Table,
    key: &str,
    path: &[String],
    value: &str,
) -> Result<(), ConfigError> {
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
const TEXT_KEYS: [&str; 19] = [
    "auth.jwt_secret",
    "auth.jwks_url",
    "auth.audience",
    "auth.issuer",
    "engine.redis_sentinel_master",
    "engine.redis_sentinel_password",
    "engine.redis_url",
    "engine.redis_prefix",
    "engine.redis_tls_ca",
    "engine.redis_tls_cert",
    "engine.redis_tls_key",
    "hooks.join_url",
    "hooks.connect_url",
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
pub(crate) mod tests;
