//! The errors of starting a server: what `serve` and the configuration
//! loader answer instead of running. (Errors of requests and connections
//! are answered on the wire: protocol.md.)

use std::fmt;

/// The configuration is not usable: the message names the key (or the
/// file, or the variable) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The message reads as text (`error.contains("limits")`).
impl std::ops::Deref for ConfigError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for ConfigError {
    fn from(message: String) -> ConfigError {
        ConfigError(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> ConfigError {
        ConfigError(message.to_owned())
    }
}

/// Why `serve` did not run.
#[derive(Debug)]
pub enum ServeError {
    /// The configuration is not usable.
    Config(ConfigError),
    /// An engine link was given to `serve_with_engine` and the
    /// configuration names Redis too.
    TwoEngines,
    /// The engine could not be set up (a Redis URL or TLS file).
    Engine(crate::engine::redis::SetupError),
    /// The listener's address or the shard threads failed.
    Io(std::io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(error) => write!(f, "{error}"),
            ServeError::TwoEngines => {
                f.write_str("an engine link was given and [engine] redis_url is set: choose one")
            }
            ServeError::Engine(error) => write!(f, "engine: {error}"),
            ServeError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl From<ConfigError> for ServeError {
    fn from(error: ConfigError) -> ServeError {
        ServeError::Config(error)
    }
}

impl From<std::io::Error> for ServeError {
    fn from(error: std::io::Error) -> ServeError {
        ServeError::Io(error)
    }
}
