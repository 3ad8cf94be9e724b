//! The `[engine]` table: which engine, and how to reach Redis (URL, key
//! prefix, timeout, TLS files, Redis Cluster or Sentinel, the pub/sub
//! probe), with the checks serde cannot express and the password-free form
//! of the URL for logs.

use crate::error::ConfigError;
use std::path::PathBuf;

use serde::Deserialize;

/// The `[engine]` table: without `redis_url`, the in-memory engine of one
/// process; with it, a Redis shared by every node.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://...` for TLS;
    /// unset = the in-memory engine.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel (several deployments can
    /// share one Redis).
    pub redis_prefix: String,
    /// Longest wait for one Redis call, in ms (then the call fails).
    pub redis_timeout_ms: u64,
    /// `rediss://` only: PEM file of the certificate authorities to trust
    /// for the server's certificate, instead of the system's store.
    pub redis_tls_ca: Option<PathBuf>,
    /// `rediss://` only: PEM certificate (chain) this node presents to
    /// Redis (mutual TLS, Redis' `tls-auth-clients`), with `redis_tls_key`.
    pub redis_tls_cert: Option<PathBuf>,
    /// `rediss://` only: PEM private key of `redis_tls_cert`.
    pub redis_tls_key: Option<PathBuf>,
    /// `redis_url` names the seed nodes of a Redis Cluster, comma-separated.
    pub redis_cluster: bool,
    /// `redis_url` lists Redis Sentinels (comma-separated); the master is
    /// the one they name so (`SENTINEL get-master-addr-by-name`).
    pub redis_sentinel_master: Option<String>,
    /// The password of the Sentinels themselves (their `requirepass`); the
    /// password in `redis_url` is the master's.
    pub redis_sentinel_password: Option<String>,
    /// How often the pub/sub connection is probed end to end (a message
    /// published to this node's probe channel must come back on it), in ms.
    pub redis_probe_interval_ms: u64,
    /// How long a probe may take to come back before the pub/sub
    /// connection counts as lost, in ms.
    pub redis_probe_timeout_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            redis_url: None,
            redis_prefix: "roomcast".to_owned(),
            redis_timeout_ms: 2_000,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            redis_cluster: false,
            redis_sentinel_master: None,
            redis_sentinel_password: None,
            redis_probe_interval_ms: 2_000,
            redis_probe_timeout_ms: 3_000,
        }
    }
}

/// Never prints the password.
impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("redis_tls_ca", &self.redis_tls_ca)
            .field("redis_tls_cert", &self.redis_tls_cert)
            .field("redis_tls_key", &self.redis_tls_key)
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_sentinel_master", &self.redis_sentinel_master)
            .field(
                "redis_sentinel_password",
                &self.redis_sentinel_password.as_ref().map(|_| "***"),
            )
            .field("redis_probe_interval_ms", &self.redis_probe_interval_ms)
            .field("redis_probe_timeout_ms", &self.redis_probe_timeout_ms)
            .finish()
    }
}

impl EngineConfig {
    /// Whether `redis_url` asks for TLS (`rediss://`).
    pub fn redis_tls(&self) -> bool {
        self.redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"))
    }

    /// The rules serde cannot express (part of [`ServerConfig::validate`](super::ServerConfig::validate)).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_prefix.is_empty()
            || self.redis_prefix.contains(['{', '}'])
            || self.redis_timeout_ms == 0
        {
            return Err(
                "engine: redis_prefix must be non-empty without { or }, and redis_timeout_ms > 0"
                    .into(),
            );
        }
        if self.redis_probe_interval_ms == 0 || self.redis_probe_timeout_ms == 0 {
            return Err(
                "engine: redis_probe_interval_ms and redis_probe_timeout_ms must be > 0".into(),
            );
        }
        self.validate_sentinel()?;
        self.validate_tls()
    }

    /// Sentinel needs a plain `redis_url` of Sentinels and excludes a
    /// Redis Cluster (which fails over by itself).
    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        let Some(master) = &self.redis_sentinel_master else {
            if self.redis_sentinel_password.is_some() {
                return Err(
                    "engine: redis_sentinel_password is set but redis_sentinel_master is not"
                        .into(),
                );
            }
            return Ok(());
        };
        if master.is_empty() || master.contains(char::is_whitespace) {
            return Err(format!(
                "engine: redis_sentinel_master must be a master name without spaces, not {master:?}"
            )
            .into());
        }
        if self.redis_url.is_none() {
            return Err(
                "engine: redis_sentinel_master is set but redis_url (the Sentinels) is not".into(),
            );
        }
        if self.redis_cluster {
            return Err(
                "engine: redis_sentinel_master and redis_cluster exclude each other (a Redis Cluster fails over by itself)"
                    .into(),
            );
        }
        if self.redis_tls() {
            return Err(
                "engine: Sentinel with TLS (rediss://) is not supported yet; use redis:// Sentinels on a trusted network, or a Redis Cluster or one endpoint with TLS"
                    .into(),
            );
        }
        Ok(())
    }

    /// The URL's scheme, and the TLS keys only where they take effect (a
    /// setting that would be ignored is an error, not a silent no-op).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls_keys = [
            ("redis_tls_ca", &self.redis_tls_ca),
            ("redis_tls_cert", &self.redis_tls_cert),
            ("redis_tls_key", &self.redis_tls_key),
        ];
        let Some(url) = &self.redis_url else {
            if let Some((key, _)) = tls_keys.iter().find(|(_, v)| v.is_some()) {
                return Err(format!("engine: {key} is set but redis_url is not").into());
            }
            return Ok(());
        };
        if !self.redis_cluster && self.redis_sentinel_master.is_none() && url.contains(',') {
            return Err(format!(
                "engine: redis_url lists several URLs; set redis_cluster = true for a Redis Cluster, or redis_sentinel_master for Sentinels: {}",
                redact_url(url)
            ).into());
        }
        // A cluster's seeds share one scheme: TLS is all or nothing.
        let scheme = if self.redis_tls() {
            "rediss://"
        } else {
            "redis://"
        };
        if let Some(seed) = url
            .split(',')
            .map(str::trim)
            .find(|seed| !seed.starts_with(scheme))
        {
            return Err(format!(
                "engine: redis_url must start with redis:// or rediss:// (TLS), the same for every seed: {}",
                redact_url(seed)
            ).into());
        }
        if !self.redis_tls() {
            if let Some((key, _)) = tls_keys.iter().find(|(_, v)| v.is_some()) {
                return Err(format!(
                    "engine: {key} needs a rediss:// (TLS) redis_url, not {}",
                    redact_url(url)
                )
                .into());
            }
            return Ok(());
        }
        if self.redis_tls_cert.is_some() != self.redis_tls_key.is_some() {
            return Err("engine: redis_tls_cert and redis_tls_key go together".into());
        }
        // The redis crate's `#insecure` turns certificate checks off, which
        // would make a configured CA meaningless.
        if url.ends_with("#insecure") && self.redis_tls_ca.is_some() {
            return Err(
                "engine: redis_tls_ca has no effect with a rediss://...#insecure url (which checks no certificate); drop one of them"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A URL (or a comma-separated list of them) with every password replaced
/// by `***`, for logs.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://secret@host`: a lone user part is the password.
        None => "***".to_owned(),
    };
    format!("{}://{}@{}", &url[..scheme_end], user, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tests::env;
    use crate::config::ServerConfig;

    #[test]
    fn the_redis_password_is_never_shown() {
        assert_eq!(
            redact_url("redis://user:hunter2@db.internal:6379/0"),
            "redis://user:***@db.internal:6379/0"
        );
        assert_eq!(redact_url("redis://:hunter2@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://hunter2@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        let config = ServerConfig::load(
            None,
            env(&[("ROOMCAST_ENGINE__REDIS_URL", "redis://:hunter2@h:6379/0")]),
        )
        .unwrap();
        assert_eq!(
            config.engine.redis_url.as_deref(),
            Some("redis://:hunter2@h:6379/0")
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        let refused = env(&[("ROOMCAST_ENGINE__REDIS_URL", "http://:hunter2@h")]);
        let error = ServerConfig::load(None, refused).unwrap_err();
        assert!(error.contains("rediss://"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_redis_cluster_lists_its_seeds_and_hides_every_password() {
        let seeds = "redis://:one@a:7000/0, redis://:two@b:7001/0";
        assert_eq!(
            redact_url(seeds),
            "redis://:***@a:7000/0, redis://:***@b:7001/0"
        );
        let config = ServerConfig::load(
            None,
            env(&[
                ("ROOMCAST_ENGINE__REDIS_URL", seeds),
                ("ROOMCAST_ENGINE__REDIS_CLUSTER", "true"),
            ]),
        )
        .unwrap();
        assert!(config.engine.redis_cluster);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("one@") && !shown.contains("two@"),
            "{shown}"
        );
        // Several URLs without the switch: refused, passwords hidden.
        let error =
            ServerConfig::load(None, env(&[("ROOMCAST_ENGINE__REDIS_URL", seeds)])).unwrap_err();
        assert!(error.contains("redis_cluster"), "{error}");
        assert!(
            !error.contains("one@") && !error.contains("two@"),
            "{error}"
        );
        // Mixed schemes: refused.
        let mixed = env(&[
            (
                "ROOMCAST_ENGINE__REDIS_URL",
                "rediss://a:7000/0,redis://b:7001/0",
            ),
            ("ROOMCAST_ENGINE__REDIS_CLUSTER", "true"),
        ]);
        let error = ServerConfig::load(None, mixed).unwrap_err();
        assert!(error.contains("every seed"), "{error}");
    }

    #[test]
    fn sentinel_lists_sentinels_and_excludes_a_cluster_and_tls() {
        let sentinels = "redis://:master-pass@s1:26379,redis://s2:26379";
        let config = ServerConfig::load(
            None,
            env(&[
                ("ROOMCAST_ENGINE__REDIS_URL", sentinels),
                ("ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER", "mymaster"),
                ("ROOMCAST_ENGINE__REDIS_SENTINEL_PASSWORD", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.engine.redis_sentinel_master.as_deref(),
            Some("mymaster")
        );
        // A numeric-looking password stays text, and is never shown.
        assert_eq!(
            config.engine.redis_sentinel_password.as_deref(),
            Some("12345")
        );
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("12345") && !shown.contains("master-pass"),
            "{shown}"
        );
        for (pairs, expected) in [
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", sentinels),
                    ("ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER", "mymaster"),
                    ("ROOMCAST_ENGINE__REDIS_CLUSTER", "true"),
                ],
                "exclude each other",
            ),
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "rediss://s1:26379"),
                    ("ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER", "mymaster"),
                ],
                "not supported yet",
            ),
            (
                vec![("ROOMCAST_ENGINE__REDIS_SENTINEL_MASTER", "mymaster")],
                "redis_url (the Sentinels) is not",
            ),
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "redis://s1:26379"),
                    ("ROOMCAST_ENGINE__REDIS_SENTINEL_PASSWORD", "x"),
                ],
                "redis_sentinel_master is not",
            ),
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "redis://s1:26379"),
                    ("ROOMCAST_ENGINE__REDIS_PROBE_TIMEOUT_MS", "0"),
                ],
                "redis_probe_timeout_ms",
            ),
        ] {
            let error = ServerConfig::load(None, env(&pairs)).unwrap_err();
            assert!(error.contains(expected), "{pairs:?}: {error}");
            assert!(!error.contains("master-pass"), "{error}");
        }
    }

    #[test]
    fn tls_settings_need_a_rediss_url_and_go_together() {
        let tls = ServerConfig::load(
            None,
            env(&[
                ("ROOMCAST_ENGINE__REDIS_URL", "rediss://:hunter2@h:6380/0"),
                (
                    "ROOMCAST_ENGINE__REDIS_TLS_CA",
                    "/etc/roomcast/redis-ca.pem",
                ),
                ("ROOMCAST_ENGINE__REDIS_TLS_CERT", "node.pem"),
                ("ROOMCAST_ENGINE__REDIS_TLS_KEY", "node.key"),
            ]),
        )
        .unwrap();
        assert!(tls.engine.redis_tls());
        assert_eq!(
            tls.engine.redis_tls_ca.as_deref(),
            Some(Path::new("/etc/roomcast/redis-ca.pem"))
        );
        assert!(!format!("{tls:?}").contains("hunter2"));
        // Plain `rediss://` (the system's trust store) and `#insecure` alone are fine.
        for url in ["rediss://h:6380/0", "rediss://h:6380/0#insecure"] {
            let config = ServerConfig::load(None, env(&[("ROOMCAST_ENGINE__REDIS_URL", url)]));
            assert!(config.is_ok(), "{url}: {config:?}");
        }
        for (pairs, expected) in [
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "redis://h:6379/0"),
                    ("ROOMCAST_ENGINE__REDIS_TLS_CA", "ca.pem"),
                ],
                "needs a rediss://",
            ),
            (
                vec![("ROOMCAST_ENGINE__REDIS_TLS_CA", "ca.pem")],
                "redis_url is not",
            ),
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "rediss://h/0"),
                    ("ROOMCAST_ENGINE__REDIS_TLS_CERT", "node.pem"),
                ],
                "go together",
            ),
            (
                vec![
                    ("ROOMCAST_ENGINE__REDIS_URL", "rediss://h/0#insecure"),
                    ("ROOMCAST_ENGINE__REDIS_TLS_CA", "ca.pem"),
                ],
                "no effect",
            ),
        ] {
            let error = ServerConfig::load(None, env(&pairs)).unwrap_err();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
    }
}
