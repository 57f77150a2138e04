//! The result cache: every generation a model finishes, kept in an embedded
//! SQLite database, so that a re-run over the same articles (a weekly
//! newsletter job, a batch killed midway) recomputes nothing that finished.
//!
//! **Keys.** A generation is keyed by a SHA-256 over everything its text
//! depends on: the exact request the model gets (the prompt messages, which
//! hold the cleaned text, the task's template and the target language), the
//! generation parameters (and a seq2seq model's per-request settings), the
//! model's id, revision and file fingerprint, and the pipeline version (the
//! precis version plus a hash of the prompt, tokenizer and decoder sources,
//! made at build time). A fixed prompt or decoder therefore never serves an
//! old result. Everything after generation (tidying, quality flags, the
//! result's shape) is recomputed on every run, so it is never stale either.
//!
//! **Durability.** Each generation is committed on its own as soon as it
//! finishes (WAL journal): a run killed with SIGKILL keeps everything it
//! finished, and a row is either whole or absent. Several processes (the
//! CLI and a server) can share one file; SQLite locks it.
//!
//! **Limits.** Entries unused for longer than the age limit, then the least
//! recently used beyond the size limit, are dropped by [`ResultCache::prune`]
//! (run on open, and by `precis cache prune`).
//!
//! A cache that cannot be read or written never fails a job: the failure is
//! logged and the model runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use precis_backend::{Cause, Generation, GenerationRequest, ModelInfo};

/// The pipeline version keys include: the precis version and a hash of the
/// sources that shape a generation (see `build.rs`).
pub(crate) const PIPELINE_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "+", env!("PRECIS_PIPELINE_HASH"));

/// File name of the cache in its directory.
pub(crate) const FILE_NAME: &str = "results.sqlite3";

/// The schema this code writes (SQLite's `user_version`).
const SCHEMA_VERSION: i64 = 1;

/// How large and how old the cache may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most bytes of stored results.
    pub max_bytes: u64,
    /// Entries unused for longer are dropped.
    pub max_age: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024 * 1024,
            max_age: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The database cannot be opened or created.
    #[error("cannot open the result cache {path}: {source}; remove the file (or pass --cache PATH / --no-cache) to start afresh")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: Cause,
    },
    /// A statement failed.
    #[error("result cache {path}: {source}")]
    Sql {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: Cause,
    },
}

/// The cache's default file: `precis/results.sqlite3` in the user's cache
/// directory (`--cache` and `PRECIS_CACHE` name another).
pub fn default_path() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("precis")
        .join(FILE_NAME)
}

/// Opens (creating it and its folder when missing) the SQLite database the
/// result cache and the batch jobs share: WAL journal, so that a commit
/// survives the process being killed and readers do not block the writer,
/// and a wait of up to 10 s for another process's lock.
pub fn open_database(path: &Path) -> Result<Connection, Cause> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    Ok(conn)
}

/// A generation's key (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of `request` on `model`, whose files have `fingerprint`.
    pub fn new(model: &ModelInfo, fingerprint: &str, request: &GenerationRequest) -> Self {
        #[derive(Serialize)]
        struct Material<'a> {
            pipeline: &'a str,
            model: &'a str,
            revision: &'a str,
            family: &'a str,
            fingerprint: &'a str,
            messages: &'a [precis_backend::ChatMessage],
            params: &'a precis_backend::GenerationParams,
            seq2seq: Option<String>,
            direction: Option<&'a precis_backend::Direction>,
        }
        let material = Material {
            pipeline: PIPELINE_VERSION,
            model: &model.id,
            revision: &model.revision,
            family: &model.family,
            fingerprint,
            messages: &request.messages,
            params: &request.params,
            seq2seq: request.seq2seq.as_ref().map(|s| format!("{s:?}")),
            direction: request.direction.as_ref(),
        };
        let bytes = serde_json::to_vec(&material).unwrap_or_default();
        Self(Sha256::digest(&bytes).into())
    }

    /// The key as hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// What `precis cache stats` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStats {
    /// The database file.
    pub path: PathBuf,
    /// Stored generations.
    pub entries: u64,
    /// Bytes of stored results.
    pub bytes: u64,
    /// Size of the database file (and its journal) on disk.
    pub file_bytes: u64,
    /// Entries per model, most first.
    pub models: Vec<ModelEntries>,
    /// Seconds since the least recently used entry was last used.
    pub oldest_use_secs: Option<u64>,
    /// The limits.
    pub max_bytes: u64,
    /// The age limit, in days.
    pub max_age_days: u64,
}

/// A model's share of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntries {
    /// The model's id.
    pub model: String,
    /// Its stored generations.
    pub entries: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PruneReport {
    /// Entries past the age limit.
    pub expired: u64,
    /// Entries dropped to get under the size limit.
    pub evicted: u64,
}

/// The cache (see the module's documentation).
pub struct ResultCache {
    conn: Mutex<Connection>,
    path: PathBuf,
    limits: CacheLimits,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("path", &self.path)
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ResultCache {
    /// Opens (creating it and its directory when missing) the cache at
    /// `path`, and prunes it to `limits`.
    pub fn open(path: &Path, limits: CacheLimits) -> Result<Self, CacheError> {
        let cache = Self::open_unpruned(path, limits)?;
        cache.prune()?;
        Ok(cache)
    }

    /// Opens the cache at `path` as [`open`](Self::open) does, without pruning.
    pub fn open_unpruned(path: &Path, limits: CacheLimits) -> Result<Self, CacheError> {
        let fail = |source: Cause| CacheError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = open_database(path).map_err(fail)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| fail(e.into()))?;
        if version > SCHEMA_VERSION {
            return Err(fail(Cause::from(format!(
                "it was written by a newer precis (schema {version}, this one reads {SCHEMA_VERSION})"
            ))));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS generations (
                 key TEXT PRIMARY KEY,
                 model TEXT NOT NULL,
                 value TEXT NOT NULL,
                 bytes INTEGER NOT NULL,
                 created INTEGER NOT NULL,
                 used INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS generations_used ON generations (used);
             PRAGMA user_version = 1;",
        )
        .map_err(|e| fail(e.into()))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            limits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, CacheError> {
        let conn = self.conn.lock().map_err(|_| CacheError::Sql {
            path: self.path.clone(),
            source: "the connection's lock is poisoned".into(),
        })?;
        f(&conn).map_err(|e| CacheError::Sql {
            path: self.path.clone(),
            source: e.into(),
        })
    }

    /// The generation stored under `key`, marked as used now. `None` when
    /// absent or unreadable (logged).
    pub fn get(&self, key: &CacheKey) -> Option<Generation> {
        let hex = key.hex();
        let found = self.sql(|c| {
            let value: Option<String> = c
                .query_row(
                    "SELECT value FROM generations WHERE key = ?1",
                    params![hex],
                    |r| r.get(0),
                )
                .optional()?;
            if value.is_some() {
                c.execute(
                    "UPDATE generations SET used = ?2 WHERE key = ?1",
                    params![hex, now()],
                )?;
            }
            Ok(value)
        });
        match found {
            Ok(Some(value)) => match serde_json::from_str(&value) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(key = %hex, "unreadable cache entry ignored: {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// Stores `generation` under `key` (committed before this returns).
    /// A failure is logged, not returned: the result is still good.
    pub fn put(&self, key: &CacheKey, model: &str, generation: &Generation) {
        let Ok(value) = serde_json::to_string(generation) else {
            return;
        };
        let stored = self.sql(|c| {
            c.execute(
                "INSERT OR REPLACE INTO generations (key, model, value, bytes, created, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![key.hex(), model, value, value.len() as i64, now()],
            )
        });
        if let Err(e) = stored {
            tracing::warn!("{e}");
        }
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let (entries, bytes, oldest, models) = self.sql(|c| {
            let (entries, bytes, oldest): (i64, i64, Option<i64>) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(used) FROM generations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut stmt = c.prepare(
                "SELECT model, COUNT(*) FROM generations GROUP BY model ORDER BY COUNT(*) DESC, model",
            )?;
            let models = stmt
                .query_map([], |r| {
                    Ok(ModelEntries {
                        model: r.get(0)?,
                        entries: r.get::<_, i64>(1)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((entries, bytes, oldest, models))
        })?;
        let file_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.as_os_str().to_owned();
                name.push(suffix);
                std::fs::metadata(PathBuf::from(name)).ok()
            })
            .map(|m| m.len())
            .sum();
        Ok(CacheStats {
            path: self.path.clone(),
            entries: entries as u64,
            bytes: bytes as u64,
            file_bytes,
            models,
            oldest_use_secs: oldest.map(|t| (now() - t).max(0) as u64),
            max_bytes: self.limits.max_bytes,
            max_age_days: self.limits.max_age.as_secs() / 86_400,
        })
    }

    /// Removes every entry; gives how many there were.
    pub fn clear(&self) -> Result<u64, CacheError> {
        let removed = self.sql(|c| c.execute("DELETE FROM generations", []))?;
        self.sql(|c| c.execute_batch("VACUUM"))?;
        Ok(removed as u64)
    }

    /// Drops entries unused for longer than the age limit, then the least
    /// recently used until the rest fit the size limit.
    pub fn prune(&self) -> Result<PruneReport, CacheError> {
        let cutoff = now() - self.limits.max_age.as_secs() as i64;
        let max = self.limits.max_bytes as i64;
        self.sql(|c| {
            let expired = c.execute("DELETE FROM generations WHERE used < ?1", params![cutoff])?;
            let total: i64 = c.query_row(
                "SELECT COALESCE(SUM(bytes), 0) FROM generations",
                [],
                |r| r.get(0),
            )?;
            let mut evicted = 0;
            if total > max {
                // Keep the most recently used entries whose running total fits.
                evicted = c.execute(
                    "DELETE FROM generations WHERE key IN (
                         SELECT key FROM (
                             SELECT key, SUM(bytes) OVER (ORDER BY used DESC, created DESC, key) AS running
                             FROM generations
                         ) WHERE running > ?1
                     )",
                    params![max],
                )?;
            }
            Ok(PruneReport {
                expired: expired as u64,
                evicted: evicted as u64,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use precis_backend::{Cached, ChatMessage, FinishReason, GenerationParams, ModelKind};

    fn info(revision: &str) -> ModelInfo {
        ModelInfo {
            kind: ModelKind::Chat,
            id: "m".into(),
            revision: revision.into(),
            family: "qwen2".into(),
            context_length: 4096,
            target_languages: Vec::new(),
            license: None,
        }
    }

    fn request(text: &str) -> GenerationRequest {
        GenerationRequest {
            messages: vec![ChatMessage::user(text)],
            params: GenerationParams::default(),
            seq2seq: None,
            direction: None,
        }
    }

    fn generation(text: &str) -> Generation {
        Generation {
            text: text.into(),
            prompt_tokens: 10,
            generated_tokens: 3,
            finish: FinishReason::Stop,
            cache: Cached::Off,
        }
    }

    #[test]
    fn a_changed_input_parameter_or_model_misses_the_same_hits() {
        let base = CacheKey::new(&info("r1"), "", &request("text"));
        assert_eq!(base, CacheKey::new(&info("r1"), "", &request("text")));
        assert_ne!(base, CacheKey::new(&info("r1"), "", &request("text!")));
        assert_ne!(base, CacheKey::new(&info("r2"), "", &request("text")));
        assert_ne!(base, CacheKey::new(&info("r1"), "f", &request("text")));
        let mut other = request("text");
        other.params.max_new_tokens += 1;
        assert_ne!(base, CacheKey::new(&info("r1"), "", &other));
        let mut other = request("text");
        other.params.seed += 1;
        assert_ne!(base, CacheKey::new(&info("r1"), "", &other));
        let mut other = request("text");
        other.seq2seq = Some(Default::default());
        assert_ne!(base, CacheKey::new(&info("r1"), "", &other));
        // The same text into two languages by one many-to-many model.
        let into = |target: &str| request("text").translating("en", target);
        assert_ne!(
            CacheKey::new(&info("r1"), "", &into("ru")),
            CacheKey::new(&info("r1"), "", &into("hi"))
        );
        assert_ne!(base, CacheKey::new(&info("r1"), "", &into("ru")));
    }

    #[test]
    fn stored_generations_come_back_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        let key = CacheKey::new(&info("r"), "", &request("a"));
        {
            let cache = ResultCache::open(&path, CacheLimits::default()).unwrap();
            assert_eq!(cache.get(&key), None);
            cache.put(&key, "m", &generation("out"));
        }
        let cache = ResultCache::open(&path, CacheLimits::default()).unwrap();
        assert_eq!(cache.get(&key), Some(generation("out")));
        let stats = cache.stats().unwrap();
        assert_eq!(stats.entries, 1);
        assert_eq!(
            stats.models,
            vec![ModelEntries {
                model: "m".into(),
                entries: 1
            }]
        );
        assert!(stats.file_bytes > 0);
        assert_eq!(cache.clear().unwrap(), 1);
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn prune_drops_the_expired_then_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let cache = ResultCache::open(&path, CacheLimits::default()).unwrap();
        let keys: Vec<CacheKey> = (0..4)
            .map(|i| CacheKey::new(&info("r"), "", &request(&i.to_string())))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            cache.put(k, "m", &generation(&"x".repeat(100)));
            // Entry i last used i × 10 s ago; entry 3 a year ago.
            let used = now() - if i == 3 { 365 * 86_400 } else { 10 * i as i64 };
            cache
                .sql(|c| {
                    c.execute(
                        "UPDATE generations SET used = ?2 WHERE key = ?1",
                        params![k.hex(), used],
                    )
                })
                .unwrap();
        }
        let one = cache.stats().unwrap().bytes / 4;
        drop(cache);
        let limits = CacheLimits {
            max_bytes: one * 2,
            ..CacheLimits::default()
        };
        let cache = ResultCache::open(&path, limits).unwrap();
        assert_eq!(cache.stats().unwrap().entries, 2);
        assert!(cache.get(&keys[0]).is_some());
        assert!(cache.get(&keys[1]).is_some());
        assert!(cache.get(&keys[2]).is_none());
        assert!(cache.get(&keys[3]).is_none());
        assert_eq!(cache.prune().unwrap(), PruneReport::default());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"this is not sqlite, not at all, not even close....").unwrap();
        let e = ResultCache::open(&path, CacheLimits::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot open the result cache"), "{msg}");
        assert!(msg.contains("--no-cache"), "{msg}");
    }
}
