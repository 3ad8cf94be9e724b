//! The `[hooks]` table: the application's backend, asked whether a
//! connection may join a `granted` room (`join_url`) and who a connection
//! without a token is (`connect_url`). See [`crate::hooks`].

use crate::error::ConfigError;
use serde::Deserialize;

use super::redact_url;

/// The `[hooks]` table. Without URLs, no hook is called.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// POSTed `{"connection_id","user","room"}` for a join of a `granted`
    /// room the connection's grants do not cover.
    pub join_url: Option<String>,
    /// POSTed `{"connection_id"}` before the upgrade of a `/ws/connect`
    /// without a token.
    pub connect_url: Option<String>,
    /// Longest wait for one hook answer, in ms (then `HOOK_UNAVAILABLE`).
    pub timeout_ms: u64,
    /// Hook requests in flight at most (both hooks together); beyond,
    /// `HOOK_UNAVAILABLE` at once.
    pub calls_max: usize,
    /// Headers of the client's upgrade request sent on with every hook
    /// request, unchanged (names, case-insensitive).
    pub forward_headers: Vec<String>,
}

impl Default for HooksConfig {
    fn default() -> HooksConfig {
        HooksConfig {
            join_url: None,
            connect_url: None,
            timeout_ms: 1_000,
            calls_max: 256,
            forward_headers: vec!["cookie".to_owned()],
        }
    }
}

/// Never prints credentials a URL may carry.
impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field("join_url", &self.join_url.as_deref().map(redact_url))
            .field("connect_url", &self.connect_url.as_deref().map(redact_url))
            .field("timeout_ms", &self.timeout_ms)
            .field("calls_max", &self.calls_max)
            .field("forward_headers", &self.forward_headers)
            .finish()
    }
}

/// Request headers a hook request sets itself: forwarding the client's
/// would confuse the hop to the backend (or smuggle a second body).
const NOT_FORWARDABLE: [&str; 7] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

impl HooksConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("join_url", &self.join_url),
            ("connect_url", &self.connect_url),
        ] {
            if let Some(url) = url {
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                if !scheme_ok || url.parse::<hyper::Uri>().is_err() {
                    return Err(format!(
                        "hooks: {key} must be an http:// or https:// URL: {}",
                        redact_url(url)
                    )
                    .into());
                }
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err("hooks: timeout_ms must be between 1 and 60000".into());
        }
        if self.calls_max == 0 {
            return Err("hooks: calls_max must be > 0".into());
        }
        for name in &self.forward_headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(
                    format!("hooks: forward_headers: {name:?} is not a header name").into(),
                );
            }
            if NOT_FORWARDABLE.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!("hooks: forward_headers: {name:?} cannot be forwarded").into());
            }
        }
        Ok(())
    }
}
