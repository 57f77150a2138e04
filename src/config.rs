//! The configuration file (TOML). The command line and the file fill the same
//! settings; a flag given on the command line wins over the file, and the file
//! wins over the built-in defaults.
//!
//! ```toml
//! # precis.toml
//! model = "qwen2.5-coder-1.5b-instruct-q4_k_m"   # manifest id, hub repo id, or a path
//! summarizer = "qwen2.5-coder-1.5b-instruct-q4_k_m"  # optional, defaults to `model`
//! translator = "qwen2.5-coder-1.5b-instruct-q4_k_m"  # optional, defaults to `model`
//! models_dir = "/srv/precis"                      # where fetched models live
//! manifest_dirs = ["/etc/precis/models"]          # extra model manifests
//!
//! [server]
//! addr = "127.0.0.1:8080"
//! max_body_bytes = 2097152
//! max_chars = 100000
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The model used for every job unless configured otherwise.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";

/// Settings from the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default model for every job.
    pub model: Option<String>,
    /// Model for summaries (falls back to `model`).
    pub summarizer: Option<String>,
    /// Model for translations (falls back to `model`).
    pub translator: Option<String>,
    /// Where fetched models and the verification record live.
    pub models_dir: Option<PathBuf>,
    /// Extra directories of model manifests.
    #[serde(default)]
    pub manifest_dirs: Vec<PathBuf>,
    /// Server settings.
    #[serde(default)]
    pub server: ServerConfig,
}

/// The `[server]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub addr: Option<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Most characters per article.
    pub max_chars: Option<usize>,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Invalid TOML or unknown keys.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(
            r#"
model = "m"
translator = "t"
manifest_dirs = ["/x"]
[server]
addr = "127.0.0.1:9"
max_chars = 10
"#,
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("m"));
        assert_eq!(c.translator.as_deref(), Some("t"));
        assert_eq!(c.summarizer, None);
        assert_eq!(c.server.max_chars, Some(10));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::parse("modle = \"m\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
