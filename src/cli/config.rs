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
//! quantize = "int8"                               # encoder-decoder weights at load: none (f32) or int8; also --quantize
//! device = "cpu"                                  # where models run: cpu, cuda or cuda:N; also --device
//!
//! [models."opus-mt-en-ru"]       # one model's own settings, by the id it is named by
//! quantize = "none"
//!
//! [server]                       # each also a `precis serve` flag and a PRECIS_* variable
//! addr = "127.0.0.1:8080"
//! max_body_bytes = 2097152
//! max_chars = 100000
//! max_request_chars = 400000
//! max_batch = 64
//! max_concurrency = 2
//! queue_depth = 8
//! timeout_secs = 300
//! shutdown_grace_secs = 30
//! api_keys_file = "/etc/precis/keys"
//! cors_origins = ["https://news.example"]
//! webhook_secret = "..."           # signs batch jobs' webhook calls
//! allow_addresses = ["10.0.0.0/8"] # non-public hosts articles' URLs, feeds and webhooks may reach
//! no_compat = false                # true: no LibreTranslate API
//!
//! [cache]                        # each also a flag (--cache, --no-cache, --cache-max-mb, ...) and a PRECIS_* variable
//! path = "/var/cache/precis/results.sqlite3"
//! no_cache = false
//! max_mb = 1024
//! max_age_days = 90
//!
//! [database]                     # also --database and PRECIS_DATABASE_URL
//! url = "postgres://precis:secret@db.internal/precis?sslmode=require"
//! ```

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use precis_backend::{Placement, Quantize};
use precis_core::database::Database;
use precis_core::engine::Quantization;
use serde::Deserialize;

/// The model used for every job unless configured otherwise.
pub use precis_backend::store::DEFAULT_MODEL;

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
    /// Whether translators under a non-commercial licence (NLLB-200) may
    /// serve requests.
    #[serde(default)]
    pub allow_noncommercial: bool,
    /// Where fetched models and the verification record live.
    pub models_dir: Option<PathBuf>,
    /// Extra directories of model manifests.
    #[serde(default)]
    pub manifest_dirs: Vec<PathBuf>,
    /// What encoder-decoder models' weights are quantized to at load.
    pub quantize: Option<Quantize>,
    /// Where models run.
    pub device: Option<Placement>,
    /// Settings of one model, by the id it is named by.
    #[serde(default)]
    pub models: BTreeMap<String, ModelTable>,
    /// Server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Result cache settings.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The shared database, when there is one.
    #[serde(default)]
    pub database: DatabaseTable,
}

/// A `[models."ID"]` table of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTable {
    /// What this model's weights are quantized to at load.
    pub quantize: Option<Quantize>,
}

impl Config {
    /// Where models run: `--device` (or `--cuda`, the first GPU) when
    /// given, else the file's `device`, else the CPU.
    pub fn placement(&self, flag: Option<Placement>, cuda: bool) -> Placement {
        flag.or(cuda.then_some(Placement::Cuda(0)))
            .or(self.device)
            .unwrap_or_default()
    }

    /// Each model's quantization: `flag` (`--quantize`) for every model
    /// when given (a flag wins over the file), else the file's: a model's
    /// own table, else its `quantize`.
    pub fn quantization(&self, flag: Option<Quantize>) -> Quantization {
        if let Some(every) = flag {
            return Quantization {
                default: every,
                models: BTreeMap::new(),
            };
        }
        Quantization {
            default: self.quantize.unwrap_or_default(),
            models: self
                .models
                .iter()
                .filter_map(|(id, t)| Some((id.clone(), t.quantize?)))
                .collect(),
        }
    }
}

/// The `[database]` table of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTable {
    /// A `postgres://` URL the result cache and batch jobs are kept in.
    pub url: Option<String>,
}

/// The result cache's settings: the `[cache]` table of the configuration
/// file, and the same as flags of the jobs, `serve` and `cache`, and
/// `PRECIS_*` variables (a flag or variable wins over the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Result cache file, shared by runs and by the server [default: precis/results.sqlite3 in the user cache dir].
    #[arg(
        long = "cache",
        global = true,
        env = "PRECIS_CACHE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub path: Option<PathBuf>,
    /// PostgreSQL database that every replica shares for the result cache and batch jobs (postgres://user:password@host/db?sslmode=require); without it, the SQLite file of --cache.
    #[arg(
        long = "database",
        global = true,
        env = "PRECIS_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    #[serde(skip)]
    pub database: Option<String>,
    /// Do not use the result cache: every article runs its model, nothing is stored.
    #[arg(
        long,
        global = true,
        env = "PRECIS_NO_CACHE",
        hide_env_values = true,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    #[serde(default)]
    pub no_cache: bool,
    /// Largest size of the cached results, in MB; the least recently used go first [default: 1024].
    #[arg(
        long = "cache-max-mb",
        global = true,
        env = "PRECIS_CACHE_MAX_MB",
        hide_env_values = true,
        value_name = "MB"
    )]
    pub max_mb: Option<u64>,
    /// Cached results unused for this many days are dropped [default: 90].
    #[arg(
        long = "cache-max-age-days",
        global = true,
        env = "PRECIS_CACHE_MAX_AGE_DAYS",
        hide_env_values = true,
        value_name = "DAYS"
    )]
    pub max_age_days: Option<u64>,
}

impl CacheConfig {
    /// These settings, each unset one taken from the configuration file.
    pub fn or(self, config: &Config) -> CacheConfig {
        let file = config.cache.clone();
        CacheConfig {
            path: self.path.or(file.path),
            database: self.database.or_else(|| config.database.url.clone()),
            no_cache: self.no_cache || file.no_cache,
            max_mb: self.max_mb.or(file.max_mb),
            max_age_days: self.max_age_days.or(file.max_age_days),
        }
    }

    /// The size and age limits, defaults filled in.
    pub fn limits(&self) -> precis_core::cache::CacheLimits {
        let default = precis_core::cache::CacheLimits::default();
        precis_core::cache::CacheLimits {
            max_bytes: self
                .max_mb
                .map_or(default.max_bytes, |mb| mb.saturating_mul(1024 * 1024)),
            max_age: self.max_age_days.map_or(default.max_age, |d| {
                std::time::Duration::from_secs(d.saturating_mul(86_400))
            }),
        }
    }

    /// The SQLite file of `--cache`, default filled in: the cache's when no
    /// `--database` is given, and batch jobs' in any case.
    pub fn file(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(precis_core::cache::default_path)
    }

    /// The database the cache is kept in: the one
    /// `--database` names, else the SQLite file of `--cache` (default
    /// filled in).
    pub fn database(&self) -> Result<Database, String> {
        match &self.database {
            Some(url) => Database::parse(url),
            None => Ok(Database::Sqlite(self.file())),
        }
    }
}

/// What a `precis serve` process does (see `--role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers HTTP and runs batch-job items.
    #[default]
    All,
    /// Answers HTTP; runs no batch-job item.
    Api,
    /// Runs batch-job items; answers only /health, /ready and /metrics.
    Worker,
}

/// The server's settings: the `[server]` table of the configuration file,
/// and the same settings as `precis serve` flags and `PRECIS_*` environment
/// variables. One struct fills all three: a flag wins over its variable
/// (clap), either wins over the file ([`ServerConfig::or`]), and the file
/// over the built-in defaults (the bracketed values, applied where the
/// settings are used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "PRECIS_ADDR", hide_env_values = true)]
    pub addr: Option<String>,
    /// Largest request body, in bytes [default: 2097152].
    #[arg(long, env = "PRECIS_MAX_BODY_BYTES", hide_env_values = true)]
    pub max_body_bytes: Option<usize>,
    /// Most characters in one article [default: 100000].
    #[arg(long, env = "PRECIS_MAX_CHARS", hide_env_values = true)]
    pub max_chars: Option<usize>,
    /// Most characters in one request, the articles of a batch together
    /// [default: 400000].
    #[arg(long, env = "PRECIS_MAX_REQUEST_CHARS", hide_env_values = true)]
    pub max_request_chars: Option<usize>,
    /// Most articles in one batch request [default: 64].
    #[arg(long, env = "PRECIS_MAX_BATCH", hide_env_values = true)]
    pub max_batch: Option<usize>,
    /// Requests worked on at once; others wait in the queue [default: 2].
    #[arg(long, env = "PRECIS_MAX_CONCURRENCY", hide_env_values = true)]
    pub max_concurrency: Option<usize>,
    /// Requests that may wait for a slot; past that, new ones get 429 with
    /// Retry-After [default: 8].
    #[arg(long, env = "PRECIS_QUEUE_DEPTH", hide_env_values = true)]
    pub queue_depth: Option<usize>,
    /// Seconds a request may take, queueing included, before its work is
    /// cancelled and it gets 504 [default: 300].
    #[arg(long, env = "PRECIS_TIMEOUT_SECS", hide_env_values = true)]
    pub timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's headers (1 at least); a
    /// slower one is disconnected [default: 10].
    #[arg(long, env = "PRECIS_HEADER_TIMEOUT_SECS", hide_env_values = true)]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's body once its headers are
    /// in (1 at least); past it, 408 [default: 30].
    #[arg(long, env = "PRECIS_BODY_TIMEOUT_SECS", hide_env_values = true)]
    pub body_timeout_secs: Option<u64>,
    /// Connections open at once; one more is closed as it comes
    /// [default: 256].
    #[arg(long, env = "PRECIS_MAX_CONNECTIONS", hide_env_values = true)]
    pub max_connections: Option<usize>,
    /// Seconds requests in flight get to finish after SIGINT or SIGTERM
    /// [default: 30].
    #[arg(long, env = "PRECIS_SHUTDOWN_GRACE_SECS", hide_env_values = true)]
    pub shutdown_grace_secs: Option<u64>,
    /// File of API keys, one a line (`#` starts a comment). With it, or
    /// with keys in PRECIS_API_KEYS (comma-separated), every route but
    /// /health, /ready, the page at / and LibreTranslate's /languages and
    /// /frontend/settings needs `Authorization: Bearer KEY` (LibreTranslate's
    /// /translate and /detect also take `api_key` in the body).
    #[arg(long, env = "PRECIS_API_KEYS_FILE", hide_env_values = true)]
    pub api_keys_file: Option<PathBuf>,
    /// Origins that browsers may call the API from (CORS), comma-separated,
    /// or `*` for any [default: none].
    #[arg(
        long,
        env = "PRECIS_CORS_ORIGINS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub cors_origins: Option<Vec<String>>,
    /// Load model files that have no pinned sha256 to check them against
    /// (by default the server refuses them; the other commands warn).
    #[arg(long)]
    #[serde(default)]
    pub allow_unverified: bool,
    /// Do not serve LibreTranslate's API (`/translate`, `/detect`,
    /// `/languages`, `/frontend/settings`; served by default, for the tools
    /// that speak it).
    #[arg(long)]
    #[serde(default)]
    pub no_compat: bool,
    /// Let the API keys file be readable by others than its owner (by
    /// default such a file is refused, as ssh refuses an open private key).
    #[arg(long)]
    #[serde(default)]
    pub allow_shared_key_file: bool,
    /// Key that signs batch jobs' webhook calls (`X-Precis-Signature`);
    /// without it they are not signed. Prefer PRECIS_WEBHOOK_SECRET or
    /// --webhook-secret-file: a flag's value is visible to every user in `ps`.
    #[arg(long, env = "PRECIS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// File holding the webhook signing key (its first line).
    #[arg(long, env = "PRECIS_WEBHOOK_SECRET_FILE", hide_env_values = true)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Batch jobs one API key may have queued or running at once; past it,
    /// a new job gets 429 with Retry-After [default: 8].
    #[arg(long, env = "PRECIS_MAX_JOBS_PER_KEY", hide_env_values = true)]
    pub max_jobs_per_key: Option<usize>,
    /// Days an ended batch job is kept before it is deleted; 0 keeps jobs
    /// for ever [default: 30].
    #[arg(long, env = "PRECIS_JOB_RETENTION_DAYS", hide_env_values = true)]
    pub job_retention_days: Option<u64>,
    /// What this process does: `all` (the default) answers HTTP and runs
    /// batch-job items; `api` answers HTTP (interactive requests, jobs
    /// accepted and shown) and runs no job item; `worker` runs job items and
    /// answers only /health, /ready and /metrics. Scale the two separately
    /// on a shared --database.
    #[arg(long, env = "PRECIS_ROLE", hide_env_values = true, value_enum)]
    pub role: Option<Role>,
    /// Seconds a batch-job item claimed by this node stays its own without
    /// a renewal (renewed every third of it while it runs); with a shared
    /// database, a node that dies leaves its items to the others after
    /// this long [default: 30].
    #[arg(long, env = "PRECIS_JOB_LEASE_SECS", hide_env_values = true, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub job_lease_secs: Option<u64>,
    /// Hosts or networks that articles' URLs, jobs' feed URLs and webhooks
    /// may reach although not public, comma separated: 127.0.0.1, 10.0.0.0/8,
    /// intranet.example [default: public addresses only].
    #[arg(
        long = "allow-address",
        env = "PRECIS_ALLOW_ADDRESSES",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    pub allow_addresses: Option<Vec<precis_service::fetch::AllowEntry>>,
}

/// Days an ended batch job is kept by default.
pub const JOB_RETENTION_DAYS: u64 = 30;

impl ServerConfig {
    /// How long an ended job is kept; `None`: for ever.
    pub fn job_retention(&self) -> Option<std::time::Duration> {
        match self.job_retention_days.unwrap_or(JOB_RETENTION_DAYS) {
            0 => None,
            days => Some(std::time::Duration::from_secs(days.saturating_mul(86_400))),
        }
    }

    /// The limits these settings set, defaults for the rest.
    pub fn limits(&self) -> crate::http::ServerLimits {
        let d = crate::http::ServerLimits::default();
        crate::http::ServerLimits {
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_chars: self.max_chars.unwrap_or(d.max_chars),
            max_request_chars: self.max_request_chars.unwrap_or(d.max_request_chars),
            max_batch: self.max_batch.unwrap_or(d.max_batch),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency),
            queue_depth: self.queue_depth.unwrap_or(d.queue_depth),
            timeout: self
                .timeout_secs
                .map_or(d.timeout, std::time::Duration::from_secs),
            // A zero would cut off every client: one second at least.
            header_timeout: self.header_timeout_secs.map_or(d.header_timeout, |s| {
                std::time::Duration::from_secs(s.max(1))
            }),
            body_timeout: self
                .body_timeout_secs
                .map_or(d.body_timeout, |s| std::time::Duration::from_secs(s.max(1))),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
        }
    }

    /// These settings, each unset one taken from `file`.
    pub fn or(self, file: &ServerConfig) -> ServerConfig {
        let file = file.clone();
        ServerConfig {
            addr: self.addr.or(file.addr),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_chars: self.max_chars.or(file.max_chars),
            max_request_chars: self.max_request_chars.or(file.max_request_chars),
            max_batch: self.max_batch.or(file.max_batch),
            max_concurrency: self.max_concurrency.or(file.max_concurrency),
            queue_depth: self.queue_depth.or(file.queue_depth),
            timeout_secs: self.timeout_secs.or(file.timeout_secs),
            shutdown_grace_secs: self.shutdown_grace_secs.or(file.shutdown_grace_secs),
            header_timeout_secs: self.header_timeout_secs.or(file.header_timeout_secs),
            body_timeout_secs: self.body_timeout_secs.or(file.body_timeout_secs),
            max_connections: self.max_connections.or(file.max_connections),
            api_keys_file: self.api_keys_file.or(file.api_keys_file),
            allow_shared_key_file: self.allow_shared_key_file || file.allow_shared_key_file,
            allow_unverified: self.allow_unverified || file.allow_unverified,
            no_compat: self.no_compat || file.no_compat,
            cors_origins: self.cors_origins.or(file.cors_origins),
            webhook_secret: self.webhook_secret.or(file.webhook_secret),
            webhook_secret_file: self.webhook_secret_file.or(file.webhook_secret_file),
            allow_addresses: self.allow_addresses.or(file.allow_addresses),
            max_jobs_per_key: self.max_jobs_per_key.or(file.max_jobs_per_key),
            job_retention_days: self.job_retention_days.or(file.job_retention_days),
            job_lease_secs: self.job_lease_secs.or(file.job_lease_secs),
            role: self.role.or(file.role),
        }
    }
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
allow_addresses = ["10.0.0.0/8", "intranet.example"]
[cache]
max_mb = 5
"#,
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("m"));
        assert_eq!(c.translator.as_deref(), Some("t"));
        assert_eq!(c.summarizer, None);
        assert_eq!(c.server.max_chars, Some(10));
        assert_eq!(
            c.server.allow_addresses,
            Some(vec![
                "10.0.0.0/8".parse().unwrap(),
                "intranet.example".parse().unwrap()
            ])
        );
        let e = Config::parse("[server]\nallow_addresses = [\"10.0.0.0/99\"]").unwrap_err();
        assert!(e.contains("10.0.0.0/99"), "{e}");
        assert_eq!(c.cache.limits().max_bytes, 5 * 1024 * 1024);
        assert!(!c.cache.no_cache);
    }

    #[test]
    fn quantization_per_model_and_the_flag_over_the_file() {
        let c = Config::parse(
            "quantize = \"int8\"\n[models.\"opus-mt-en-ru\"]\nquantize = \"none\"\n[models.m]\n",
        )
        .unwrap();
        let q = c.quantization(None);
        assert_eq!(q.of("opus-mt-en-ru"), Quantize::None);
        assert_eq!(q.of("distilbart-cnn-12-6"), Quantize::Int8);
        assert_eq!(q.of("m"), Quantize::Int8, "a table without the key");
        let flag = c.quantization(Some(Quantize::None));
        assert_eq!(flag.of("distilbart-cnn-12-6"), Quantize::None);
        assert_eq!(flag.of("opus-mt-en-ru"), Quantize::None);
        assert_eq!(Config::default().quantization(None).of("x"), Quantize::None);
        let e = Config::parse("quantize = \"int4\"").unwrap_err();
        assert!(e.contains("int4"), "{e}");
        let e = Config::parse("[models.m]\nquantise = \"int8\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::parse("modle = \"m\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn extreme_values_neither_panic_nor_cut_everyone_off() {
        let c = Config::parse(
            "[server]\nheader_timeout_secs = 0\nbody_timeout_secs = 0\njob_retention_days = 18446744073709551615",
        )
        .unwrap();
        let limits = c.server.limits();
        assert_eq!(limits.header_timeout, std::time::Duration::from_secs(1));
        assert_eq!(limits.body_timeout, std::time::Duration::from_secs(1));
        assert!(c.server.job_retention().unwrap() > std::time::Duration::from_secs(1 << 40));
    }
}
