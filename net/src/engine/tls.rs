//! The Redis client, with TLS for `rediss://` URLs: rustls (ring), the
//! server checked against the system's trust store or the configured CA
//! file, optionally presenting a client certificate (mutual TLS).
//!
//! What the redis crate supports natively and nothing more: its
//! `rediss://host:port/db#insecure` fragment turns every certificate check
//! off (logged as a warning at startup); there is no other verification knob.

use std::fmt;
use std::path::{Path, PathBuf};

use redis::{Client, ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::warn;

use crate::config::redact_url;

/// PEM files for a `rediss://` connection (`[engine] redis_tls_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate authorities that sign the server's certificate; `None`:
    /// the system's trust store.
    pub ca: Option<PathBuf>,
    /// This node's certificate (chain) and private key, for Redis servers
    /// that require client certificates (`tls-auth-clients yes`).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Whether any file is configured.
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }
}

/// Why a Redis client could not be set up (the URL shown without its password).
#[derive(Debug)]
pub enum TlsError {
    /// TLS files are set for a URL that is not `rediss://`.
    NotRediss { url: String },
    /// A file could not be read.
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The CA file is not PEM.
    BadPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    NoCertificate { path: PathBuf },
    /// The redis crate refused the URL.
    InvalidUrl {
        url: String,
        source: redis::RedisError,
    },
    /// The redis crate refused the TLS settings.
    Settings {
        url: String,
        source: redis::RedisError,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::NotRediss { url } => write!(
                f,
                "redis TLS files are set but {url} is not a rediss:// url"
            ),
            TlsError::Read { key, path, source } => {
                write!(f, "cannot read {key} {}: {source}", path.display())
            }
            TlsError::BadPem { path, source } => {
                write!(f, "redis_tls_ca {}: {source}", path.display())
            }
            TlsError::NoCertificate { path } => {
                write!(
                    f,
                    "redis_tls_ca {}: no PEM certificate in it",
                    path.display()
                )
            }
            TlsError::InvalidUrl { url, source } => write!(f, "invalid redis url {url}: {source}"),
            TlsError::Settings { url, source } => {
                write!(f, "redis TLS settings for {url}: {source}")
            }
        }
    }
}

impl std::error::Error for TlsError {}

/// The client for `url`. Files are read and parsed here, at startup, so a
/// missing or malformed one stops the server with a clear error instead of
/// failing every connection later.
pub(crate) fn client(url: &str, files: &TlsFiles) -> Result<Client, TlsError> {
    let shown_url = redact_url(url);
    match certificates(url, files)? {
        None => Client::open(url).map_err(|source| TlsError::InvalidUrl {
            url: shown_url,
            source,
        }),
        Some(certificates) => {
            Client::build_with_tls(url, certificates).map_err(|source| TlsError::Settings {
                url: shown_url,
                source,
            })
        }
    }
}

/// The certificates `files` name, read and checked (`None`: no files, the
/// URL's own defaults). Shared by one Redis and a cluster's seeds.
pub(crate) fn certificates(
    url: &str,
    files: &TlsFiles,
) -> Result<Option<TlsCertificates>, TlsError> {
    let shown_url = redact_url(url);
    let tls = url.starts_with("rediss://");
    // Checked by the configuration too; here for other callers of the engine.
    if !tls && !files.is_empty() {
        return Err(TlsError::NotRediss { url: shown_url });
    }
    if tls {
        // rustls needs one process-wide crypto provider; the redis crate
        // leaves the choice to the application. Already installed (by an
        // earlier engine of this process) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if url.ends_with("#insecure") {
            warn!(redis = %shown_url, "TLS to redis without any certificate check (#insecure): anyone on the path can read and change the traffic, including the password");
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    let root_cert = match &files.ca {
        Some(path) => {
            let pem = read(path, "redis_tls_ca")?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::BadPem {
                    path: path.clone(),
                    source,
                })?;
            if certificates.is_empty() {
                return Err(TlsError::NoCertificate { path: path.clone() });
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match &files.client {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "redis_tls_cert")?,
            client_key: read(key, "redis_tls_key")?,
        }),
        None => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_at_startup() {
        let dir = std::env::temp_dir().join(format!("roomcast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = "rediss://:hunter2@127.0.0.1:6380/0";
        let missing = TlsFiles {
            ca: Some(dir.join("missing.pem")),
            client: None,
        };
        let error = client(url, &missing).unwrap_err().to_string();
        assert!(error.contains("cannot read redis_tls_ca"), "{error}");
        let no_certificate = TlsFiles {
            ca: Some(empty),
            client: None,
        };
        let error = client(url, &no_certificate).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let plain = client("redis://127.0.0.1:6379/0", &no_certificate)
            .unwrap_err()
            .to_string();
        assert!(plain.contains("not a rediss://"), "{plain}");
        // No files: the system's trust store (nothing is read yet).
        assert!(client(url, &TlsFiles::default()).is_ok());
        assert!(client("rediss://127.0.0.1:6380/0#insecure", &TlsFiles::default()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
