//! (being written by the config helper) TOML -> Config with every problem collected.
use std::path::Path;
use std::time::Duration;

use super::Config;

/// One problem (or warning) with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// e.g. `session.secrets[0]` or `rules[2].path`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

/// A valid config and the warnings found while loading it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub warnings: Vec<ConfigProblem>,
}

/// Loads and validates a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let _ = path;
    Err(ConfigError { problems: vec![] })
}

/// Loads and validates config text; `env` resolves `env:NAME` secrets.
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedConfig, ConfigError> {
    let _ = (text, env);
    Err(ConfigError { problems: vec![] })
}

/// Parses `"30s"`, `"15m"`, `"8h"`, `"1d"`, `"250ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    Err(s.to_owned())
}
