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
//! **Engines.** The cache lives in the database the settings name
//! ([`Database`]): an SQLite file (the default; WAL journal, so each
//! generation is committed on its own as soon as it finishes and a run
//! killed with SIGKILL keeps everything it finished; several processes on
//! one machine share the file), or PostgreSQL, shared by every replica and
//! worker, where a generation finished on one node is a hit on all. Both
//! engines keep the same table, and its statements are written once
//! ([`Sql`]); one test suite runs on both.
//!
//! **Limits.** Entries unused for longer than the age limit, then the least
//! recently used beyond the size limit, are dropped by [`ResultCache::prune`]
//! (run on open, and by `precis cache prune`).
//!
//! A cache that cannot be read or written never fails a job: the failure is
//! logged and the model runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use precis_backend::{Cause, Generation, GenerationRequest, ModelInfo};

/// The pipeline version keys include: the precis version and a hash of the
/// sources that shape a generation (see `build.rs`).
pub(crate) const PIPELINE_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "+", env!("PRECIS_PIPELINE_HASH"));

/// File name of the cache in its directory.
pub(crate) const FILE_NAME: &str = "results.sqlite3";

use crate::database::{Database, Dialect, Pool, Sql, Value};

/// The cache's migrations, in order (step `i` brings the schema to
/// `i + 1`), in SQL both engines read. Step 1 is what files written before
/// the version record already hold.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS generations (
         key TEXT PRIMARY KEY,
         model TEXT NOT NULL,
         value TEXT NOT NULL,
         bytes BIGINT NOT NULL,
         created BIGINT NOT NULL,
         used BIGINT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS generations_used ON generations (used);"];

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
    #[error("cannot open the result cache {database}: {source}; pass --no-cache to run without it, or --cache FILE / --database URL to use another")]
    Open {
        /// The database, shown without a password.
        database: String,
        /// What the engine said.
        #[source]
        source: Cause,
    },
    /// A statement failed.
    #[error("result cache {database}: {source}")]
    Sql {
        /// The database, shown without a password.
        database: String,
        /// What the engine said.
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

/// A generation's key (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of `request` on `model`, whose files have `fingerprint`.
    pub fn new(model: &ModelInfo, fingerprint: &str, request: &GenerationRequest) -> Self {
        use precis_backend::Quantize;
        #[derive(Serialize)]
        struct Material<'a> {
            pipeline: &'a str,
            model: &'a str,
            revision: &'a str,
            family: &'a str,
            #[serde(skip_serializing_if = "Quantize::is_none")]
            quantize: Quantize,
            // A GPU's floats may round a near-tie the other way.
            #[serde(skip_serializing_if = "precis_backend::Placement::is_cpu")]
            device: precis_backend::Placement,
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
            quantize: model.quantize,
            device: model.device,
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
    /// The database: an SQLite file, or a PostgreSQL URL without its password.
    pub database: String,
    /// Stored generations.
    pub entries: u64,
    /// Bytes of stored results.
    pub bytes: u64,
    /// What the table takes in the database: the SQLite file and its
    /// journal, or PostgreSQL's size of the table with its index.
    pub stored_bytes: u64,
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

/// The size limit's eviction: keeps the most recently used entries whose
/// running total fits `$1` bytes, deletes the rest.
const EVICT: &str = "DELETE FROM generations WHERE key IN (
         SELECT key FROM (
             SELECT key, SUM(bytes) OVER (ORDER BY used DESC, created DESC, key) AS running
             FROM generations
         ) AS ranked WHERE running > CAST($1 AS BIGINT)
     )";

/// The cache (see the module's documentation).
pub struct ResultCache {
    pool: Pool,
    limits: CacheLimits,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("database", self.pool.database())
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ResultCache {
    /// Opens (creating it when missing) the cache in `database`, and
    /// prunes it to `limits`.
    pub fn open(database: &Database, limits: CacheLimits) -> Result<Self, CacheError> {
        let cache = Self::open_unpruned(database, limits)?;
        cache.prune()?;
        Ok(cache)
    }

    /// Opens the cache in `database` as [`open`](Self::open) does, without
    /// pruning.
    pub fn open_unpruned(database: &Database, limits: CacheLimits) -> Result<Self, CacheError> {
        let pool = Pool::open(database)
            .and_then(|pool| {
                pool.with(|c| crate::database::migrate(c, "cache", MIGRATIONS))?;
                Ok(pool)
            })
            .map_err(|source| CacheError::Open {
                database: database.to_string(),
                source,
            })?;
        Ok(Self { pool, limits })
    }

    /// The database the cache is in.
    pub fn database(&self) -> &Database {
        self.pool.database()
    }

    fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, Cause> + Send + 'static,
    ) -> Result<T, CacheError> {
        self.pool.with(f).map_err(|source| CacheError::Sql {
            database: self.database().to_string(),
            source,
        })
    }

    /// The generation stored under `key`, marked as used now. `None` when
    /// absent or unreadable (logged).
    pub fn get(&self, key: &CacheKey) -> Option<Generation> {
        let hex = key.hex();
        let params = [hex.as_str().into(), now().into()];
        let found = self.sql(move |c| {
            Ok(c.one(
                "UPDATE generations SET used = $2 WHERE key = $1 RETURNING value",
                &params,
            )?
            .text())
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
    /// Two nodes that missed the same key at once both store it; one row
    /// is kept. A failure is logged, not returned: the result is still
    /// good.
    pub fn put(&self, key: &CacheKey, model: &str, generation: &Generation) {
        let Ok(value) = serde_json::to_string(generation) else {
            return;
        };
        let params: [Value; 5] = [
            key.hex().into(),
            model.into(),
            (value.len() as i64).into(),
            now().into(),
            value.into(),
        ];
        let stored = self.sql(move |c| {
            c.execute(
                "INSERT INTO generations (key, model, value, bytes, created, used)
                 VALUES ($1, $2, $5, $3, $4, $4)
                 ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model, value = EXCLUDED.value,
                     bytes = EXCLUDED.bytes, used = EXCLUDED.used",
                &params,
            )
        });
        if let Err(e) = stored {
            tracing::warn!("{e}");
        }
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let path = self.database().sqlite_path().map(Path::to_path_buf);
        let (row, models, table_bytes) = self.sql(|c| {
            let row = c
                .row(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT), MIN(used) FROM generations",
                    &[],
                )?
                .unwrap_or_default();
            let models = c
                .query(
                    "SELECT model, COUNT(*) FROM generations GROUP BY model ORDER BY COUNT(*) DESC, model",
                    &[],
                )?
                .into_iter()
                .map(|r| ModelEntries {
                    model: r[0].text().unwrap_or_default(),
                    entries: r[1].int().unwrap_or(0) as u64,
                })
                .collect::<Vec<_>>();
            let table_bytes = match c.dialect() {
                Dialect::Postgres => c
                    .one("SELECT pg_total_relation_size('generations')", &[])?
                    .int(),
                Dialect::Sqlite => None,
            };
            Ok((row, models, table_bytes))
        })?;
        // SQLite: the file and its journal.
        let file_bytes = |path: &Path| -> u64 {
            ["", "-wal"]
                .iter()
                .filter_map(|suffix| {
                    let mut name = path.as_os_str().to_owned();
                    name.push(suffix);
                    std::fs::metadata(PathBuf::from(name)).ok()
                })
                .map(|m| m.len())
                .sum()
        };
        let int = |i: usize| row.get(i).and_then(Value::int);
        Ok(CacheStats {
            database: self.database().to_string(),
            entries: int(0).unwrap_or(0) as u64,
            bytes: int(1).unwrap_or(0) as u64,
            stored_bytes: table_bytes
                .map(|b| b as u64)
                .or_else(|| path.as_deref().map(file_bytes))
                .unwrap_or(0),
            models,
            oldest_use_secs: int(2).map(|t| (now() - t).max(0) as u64),
            max_bytes: self.limits.max_bytes,
            max_age_days: self.limits.max_age.as_secs() / 86_400,
        })
    }

    /// Removes every entry; gives how many there were.
    pub fn clear(&self) -> Result<u64, CacheError> {
        self.sql(|c| {
            let removed = c.execute("DELETE FROM generations", &[])?;
            if c.dialect() == Dialect::Sqlite {
                c.batch("VACUUM")?;
            }
            Ok(removed)
        })
    }

    /// Drops entries unused for longer than the age limit, then the least
    /// recently used until the rest fit the size limit.
    pub fn prune(&self) -> Result<PruneReport, CacheError> {
        let cutoff = now().saturating_sub(self.limits.max_age.as_secs() as i64);
        let max = i64::try_from(self.limits.max_bytes).unwrap_or(i64::MAX);
        self.sql(move |c| {
            c.transaction(|tx| {
                let expired =
                    tx.execute("DELETE FROM generations WHERE used < $1", &[cutoff.into()])?;
                let total = tx
                    .one(
                        "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM generations",
                        &[],
                    )?
                    .int()
                    .unwrap_or(0);
                let evicted = if total > max {
                    tx.execute(EVICT, &[max.into()])?
                } else {
                    0
                };
                Ok(PruneReport { expired, evicted })
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
            quantize: precis_backend::Quantize::None,
            device: precis_backend::Placement::Cpu,
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
        let on_gpu = ModelInfo {
            device: precis_backend::Placement::Cuda(0),
            ..info("r1")
        };
        assert_ne!(base, CacheKey::new(&on_gpu, "", &request("text")));
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

    /// The databases the shared suite runs on: a new SQLite file, and a
    /// schema of its own in the test PostgreSQL server when there is one.
    fn engines(test: &str) -> Vec<(Database, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let file = Database::Sqlite(dir.path().join("sub").join(FILE_NAME));
        let mut out = vec![(file, Some(dir))];
        match crate::database::test_database(test) {
            Some(db) => out.push((db, None)),
            None => eprintln!("PRECIS_TEST_DATABASE_URL unset: {test} runs on SQLite only"),
        }
        out
    }

    #[test]
    fn stored_generations_come_back_and_survive_reopening() {
        for (database, _dir) in engines("come_back") {
            let key = CacheKey::new(&info("r"), "", &request("a"));
            {
                let cache = ResultCache::open(&database, CacheLimits::default()).unwrap();
                assert_eq!(cache.get(&key), None);
                cache.put(&key, "m", &generation("out"));
                // A second write of the same key (two nodes that missed it at once) keeps one row.
                cache.put(&key, "m", &generation("out"));
            }
            let cache = ResultCache::open(&database, CacheLimits::default()).unwrap();
            assert_eq!(cache.get(&key), Some(generation("out")), "{database}");
            let stats = cache.stats().unwrap();
            assert_eq!(stats.entries, 1, "{database}");
            assert_eq!(
                stats.models,
                vec![ModelEntries {
                    model: "m".into(),
                    entries: 1
                }]
            );
            assert!(stats.stored_bytes > 0, "{database}");
            assert_eq!(cache.clear().unwrap(), 1, "{database}");
            assert_eq!(cache.get(&key), None, "{database}");
        }
    }

    #[test]
    fn prune_drops_the_expired_then_the_least_recently_used() {
        for (database, _dir) in engines("prune") {
            let cache = ResultCache::open(&database, CacheLimits::default()).unwrap();
            let keys: Vec<CacheKey> = (0..4)
                .map(|i| CacheKey::new(&info("r"), "", &request(&i.to_string())))
                .collect();
            for (i, k) in keys.iter().enumerate() {
                cache.put(k, "m", &generation(&"x".repeat(100)));
                // Entry i last used i × 10 s ago; entry 3 a year ago.
                let used = now() - if i == 3 { 365 * 86_400 } else { 10 * i as i64 };
                let params = [k.hex().into(), used.into()];
                cache
                    .sql(move |c| {
                        c.execute("UPDATE generations SET used = $2 WHERE key = $1", &params)
                    })
                    .unwrap();
            }
            let one = cache.stats().unwrap().bytes / 4;
            drop(cache);
            let limits = CacheLimits {
                max_bytes: one * 2,
                ..CacheLimits::default()
            };
            let cache = ResultCache::open(&database, limits).unwrap();
            assert_eq!(cache.stats().unwrap().entries, 2, "{database}");
            assert!(cache.get(&keys[0]).is_some(), "{database}");
            assert!(cache.get(&keys[1]).is_some(), "{database}");
            assert!(cache.get(&keys[2]).is_none(), "{database}");
            assert!(cache.get(&keys[3]).is_none(), "{database}");
            assert_eq!(cache.prune().unwrap(), PruneReport::default());
        }
    }

    #[test]
    fn a_database_of_a_newer_precis_is_refused_and_left_alone() {
        for (database, _dir) in engines("newer") {
            drop(ResultCache::open(&database, CacheLimits::default()).unwrap());
            Pool::open(&database)
                .unwrap()
                .with(|c| {
                    c.batch("UPDATE schema_versions SET version = 99 WHERE component = 'cache'")
                })
                .unwrap();
            let e = ResultCache::open(&database, CacheLimits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("newer precis"), "{e}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"this is not sqlite, not at all, not even close....").unwrap();
        let e = ResultCache::open(&Database::Sqlite(path), CacheLimits::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot open the result cache"), "{msg}");
        assert!(msg.contains("--no-cache"), "{msg}");
    }
}
