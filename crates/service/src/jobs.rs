//! Batch jobs for the server: a job (articles, or a feed URL, and a task)
//! is accepted at once, kept in the SQLite database the result cache uses,
//! worked on in the background item by item, and read back by id. Each
//! item's result is committed as it finishes, so a server that stops (or is
//! killed) loses no accepted job: on start-up every unfinished job is taken
//! up again, and its finished items are not run again. When a job ends its
//! answer is POSTed to its webhook, if it has one, signed with an HMAC of
//! the body, and retried on failure.
//!
//! Items go through the same admission as HTTP requests, in the batch class
//! (see precis-core's `admission`): interactive requests are served first,
//! and items use idle capacity with a guaranteed share. Each item has a
//! deadline; a job can be cancelled (`DELETE /v1/jobs/{id}`), its finished
//! items kept. Webhook calls go through an outbox table drained by a task of
//! their own, at most [`WEBHOOK_PARALLEL`] at once, so a webhook that never
//! answers delays no job.
//!
//! Jobs are per node: the database is a local file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::fetch::{fetch, FetchPolicy};
use crate::render::{json_feeds, render, ErrorBody, Format, Outcome};
use precis_backend::Cause;
use precis_core::admission::{run_admitted, Admission, Priority, RunError};
use precis_core::engine::Engine;
use precis_core::error::{ErrorCode, ErrorDetail};
use precis_core::task::{Article, CancelToken, Length, Task, TaskOptions, TaskRequest, TaskResult};

/// Most articles one job may hold.
pub const MAX_JOB_ITEMS: usize = 1000;

/// Webhook deliveries tried before giving up.
pub(crate) const WEBHOOK_ATTEMPTS: u32 = 4;

/// Webhook deliveries in flight at once, all jobs together.
pub const WEBHOOK_PARALLEL: usize = 4;

/// The job tables' schema version (kept in `schema_versions`, since the
/// cache owns the database's `user_version`). 1: jobs and items; 2: the
/// webhook outbox.
const JOBS_SCHEMA: i64 = 3;

/// An article of a job, as posted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArticle {
    /// The article text.
    pub text: String,
    /// Its headline.
    #[serde(default)]
    pub title: Option<String>,
    /// Caller's id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Where it was published.
    #[serde(default)]
    pub url: Option<String>,
    /// The language its source declares.
    #[serde(default)]
    pub language: Option<String>,
}

impl From<JobArticle> for Article {
    fn from(a: JobArticle) -> Self {
        Article {
            id: a.id,
            title: a.title,
            text: a.text,
            url: a.url,
            language: a.language,
        }
    }
}

/// `POST /v1/jobs` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"task": "digest", "feed_url": "https://news.example/feed.rss", "to": ["ru", "hi"], "webhook": "https://hooks.example/precis"}))]
pub struct JobRequest {
    /// `summarize`, `translate` or `digest` (default).
    #[serde(default)]
    pub task: Option<Task>,
    /// The articles (or give `feed_url`).
    #[serde(default)]
    pub items: Option<Vec<JobArticle>>,
    /// A feed (RSS, Atom, JSON Feed) whose items are the articles.
    #[serde(default)]
    pub feed_url: Option<String>,
    /// Target languages (translate, digest; digest's default: the server's).
    #[serde(default)]
    pub to: Option<Vec<String>>,
    /// Summary length.
    #[serde(default)]
    pub length: Option<Length>,
    /// Digest: also translate the whole articles.
    #[serde(default)]
    pub full: Option<bool>,
    /// Drop non-story paragraphs (default true).
    #[serde(default)]
    pub clean: Option<bool>,
    /// Also render the results as `markdown`, `html`, `jsonl`, `json` or
    /// `jsonfeed` (one feed per language) in the answer's `output` once
    /// the job is done.
    #[serde(default)]
    pub format: Option<Format>,
    /// URL that receives the job's answer when it ends (POST, JSON, signed).
    #[serde(default)]
    pub webhook: Option<String>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Items are being worked on.
    Running,
    /// Every item has its result or error.
    Done,
    /// The job could not run at all (its feed could not be read).
    Failed,
    /// Cancelled (`DELETE /v1/jobs/{id}`); the items finished before are kept.
    Cancelled,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Queued,
        }
    }
}

/// Items done of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobProgress {
    /// Items with a result or an error.
    pub done: usize,
    /// Items in the job (0 until a feed is read).
    pub total: usize,
}

/// One item's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobItem {
    /// Its position in the job.
    pub index: usize,
    /// The status the item alone would have got.
    pub status: u16,
    /// The result ([`TaskResult`]), when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The error (`{"code", "message"}`), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

impl JobItem {
    fn failed(index: usize, status: u16, error: ErrorDetail) -> Self {
        Self {
            index,
            status,
            result: None,
            error: serde_json::to_value(error).ok(),
        }
    }
}

/// A webhook's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookState {
    /// The URL.
    pub url: String,
    /// Whether it answered 2xx.
    pub delivered: bool,
    /// Deliveries tried.
    pub attempts: u32,
    /// Why the last one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `GET /v1/jobs/{id}` answer (and a webhook's body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "3f0c…", "state": "running", "task": "digest", "progress": {"done": 1, "total": 3}, "results": []}))]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// The task run on each item.
    pub task: Task,
    /// Seconds since the epoch when it was accepted.
    pub created: i64,
    /// Items done of all.
    pub progress: JobProgress,
    /// Why the job failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Finished items, in item order.
    pub results: Vec<JobItem>,
    /// The webhook and its delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookState>,
    /// The results rendered in the requested `format`, once done: a string,
    /// or for `jsonfeed` an object of feeds by language.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
}

/// The job's results in `format`, as [`JobView::output`] holds them.
fn render_output(format: Format, items: &[JobItem]) -> serde_json::Value {
    let outcomes: Vec<Outcome> = items
        .iter()
        .map(|item| {
            let result = item
                .result
                .clone()
                .and_then(|r| serde_json::from_value::<TaskResult>(r).ok());
            match result {
                Some(r) => Outcome::Ok(Box::new(r)),
                None => Outcome::Failed {
                    origin: format!("item {}", item.index),
                    id: None,
                    error: ErrorBody {
                        code: item
                            .error
                            .as_ref()
                            .and_then(|e| e["code"].as_str())
                            .unwrap_or("internal")
                            .to_string(),
                        message: item
                            .error
                            .as_ref()
                            .and_then(|e| e["message"].as_str())
                            .unwrap_or("the result could not be read")
                            .to_string(),
                    },
                },
            }
        })
        .collect();
    match format {
        Format::Jsonfeed => serde_json::Value::Object(
            json_feeds(&outcomes, "precis job")
                .into_iter()
                .map(|(lang, text)| {
                    (
                        lang,
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect(),
        ),
        other => serde_json::Value::String(render(&outcomes, other)),
    }
}

/// What [`JobStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new job, with this id.
    New(String),
    /// The job the idempotency key made before, for the same request.
    Existing(String),
    /// The idempotency key was used before for another request: nothing made.
    KeyReused,
    /// The owner has this many jobs queued or running, the most allowed:
    /// nothing made.
    TooMany(usize),
}

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
#[error("job store {path}: {source}")]
pub struct JobStoreError {
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: Cause,
}

/// Jobs in the database (see the module's documentation).
pub struct JobStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> i64 {
    now_ms() / 1000
}

/// Brings the job tables to [`JOBS_SCHEMA`], in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), Cause> {
    let tx = conn.transaction()?;
    let version = jobs_schema(&tx)?;
    if version > JOBS_SCHEMA {
        return Err(format!(
            "the job tables were written by a newer precis (schema {version}, this one reads {JOBS_SCHEMA}); use that version, or another --cache file"
        )
        .into());
    }
    upgrade(&tx, version)?;
    tx.commit()?;
    Ok(())
}

/// The job tables' schema version: recorded, else 1 when the tables exist
/// (version 1 predates the record), else 0.
fn jobs_schema(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_versions (
             component TEXT PRIMARY KEY,
             version INTEGER NOT NULL
         );",
    )?;
    let recorded: Option<i64> = tx
        .query_row(
            "SELECT version FROM schema_versions WHERE component = 'jobs'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(version) = recorded {
        return Ok(version);
    }
    let tables: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
        [],
        |r| r.get(0),
    )?;
    Ok(tables.min(1))
}

/// Creates what each version after `version` adds, and records the newest.
fn upgrade(tx: &rusqlite::Transaction<'_>, version: i64) -> rusqlite::Result<()> {
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE jobs (
                 id TEXT PRIMARY KEY,
                 idempotency_key TEXT UNIQUE,
                 request TEXT NOT NULL,
                 state TEXT NOT NULL,
                 error TEXT,
                 created INTEGER NOT NULL,
                 webhook_attempts INTEGER NOT NULL DEFAULT 0,
                 webhook_delivered INTEGER NOT NULL DEFAULT 0,
                 webhook_error TEXT
             );
             CREATE TABLE job_items (
                 job TEXT NOT NULL,
                 idx INTEGER NOT NULL,
                 article TEXT,
                 outcome TEXT,
                 PRIMARY KEY (job, idx)
             );",
        )?;
    }
    if version < 2 {
        // A webhook call waiting: its job, URL, tries so far, and when the
        // next one is due (ms since the epoch).
        tx.execute_batch(
            "CREATE TABLE webhook_outbox (
                 job TEXT PRIMARY KEY,
                 url TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 due_ms INTEGER NOT NULL
             );",
        )?;
    }
    if version < 3 {
        // Whose job it is (a digest of the caller's API key; empty when the
        // server has no keys), and a digest of the request, so an
        // idempotency key is the caller's own and tells a retry from a
        // different request. Keys are stored scoped: `owner/key`.
        tx.execute_batch(
            "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
             ALTER TABLE jobs ADD COLUMN request_hash TEXT;
             UPDATE jobs SET idempotency_key = '/' || idempotency_key
                 WHERE idempotency_key IS NOT NULL;",
        )?;
    }
    tx.execute(
        "INSERT INTO schema_versions (component, version) VALUES ('jobs', ?1)
         ON CONFLICT (component) DO UPDATE SET version = ?1",
        params![JOBS_SCHEMA],
    )?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl JobStore {
    /// Opens the job tables in the database at `path` (created when missing).
    pub fn open(path: &Path) -> Result<Self, JobStoreError> {
        let fail = |source: Cause| JobStoreError {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = precis_core::cache::open_database(path).map_err(fail)?;
        migrate(&mut conn).map_err(fail)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn sql<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JobStoreError> {
        let mut conn = self.conn.lock().map_err(|_| JobStoreError {
            path: self.path.clone(),
            source: "the connection's lock is poisoned".into(),
        })?;
        f(&mut conn).map_err(|e| JobStoreError {
            path: self.path.clone(),
            source: e.into(),
        })
    }

    /// Accepts `owner`'s job: its request and its items (an item that
    /// could not be read carries its error). An idempotency key is the
    /// owner's own: used before with the same request, the job made then
    /// is given back; with another request, nothing is made. Nor is
    /// anything made while the owner has `max_active` jobs queued or running.
    pub fn create(
        &self,
        request: &JobRequest,
        items: Vec<Result<Article, String>>,
        owner: &str,
        idempotency_key: Option<&str>,
        max_active: usize,
    ) -> Result<Created, JobStoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let request_json = serde_json::to_string(request).unwrap_or_default();
        let request_hash = hex::encode(Sha256::digest(request_json.as_bytes()));
        let scoped = idempotency_key.map(|k| format!("{owner}/{k}"));
        self.sql(|c| {
            let tx = c.transaction()?;
            if let Some(key) = &scoped {
                let existing: Option<(String, Option<String>)> = tx
                    .query_row(
                        "SELECT id, request_hash FROM jobs WHERE idempotency_key = ?1",
                        params![key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match existing {
                    // A job from before requests were hashed is taken as the same.
                    Some((existing, None)) => return Ok(Created::Existing(existing)),
                    Some((existing, Some(hash))) if hash == request_hash => {
                        return Ok(Created::Existing(existing))
                    }
                    Some(_) => return Ok(Created::KeyReused),
                    None => {}
                }
            }
            let active: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND state IN ('queued', 'running')",
                params![owner],
                |r| r.get(0),
            )?;
            if active as usize >= max_active {
                return Ok(Created::TooMany(active as usize));
            }
            tx.execute(
                "INSERT INTO jobs (id, idempotency_key, request, state, created, owner, request_hash)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
                params![id, scoped, request_json, now(), owner, request_hash],
            )?;
            insert_items(&tx, &id, items)?;
            tx.commit()?;
            Ok(Created::New(id.clone()))
        })
    }

    /// Deletes the jobs that have ended and were created more than
    /// `older_than` ago, with their items and webhook calls; gives how many.
    pub fn prune(&self, older_than: Duration) -> Result<usize, JobStoreError> {
        let cutoff = now().saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
        self.sql(|c| {
            let tx = c.transaction()?;
            const EXPIRED: &str = "SELECT id FROM jobs
                 WHERE state IN ('done', 'failed', 'cancelled') AND created < ?1";
            tx.execute(
                &format!("DELETE FROM job_items WHERE job IN ({EXPIRED})"),
                params![cutoff],
            )?;
            tx.execute(
                &format!("DELETE FROM webhook_outbox WHERE job IN ({EXPIRED})"),
                params![cutoff],
            )?;
            let n = tx.execute(
                &format!("DELETE FROM jobs WHERE id IN ({EXPIRED})"),
                params![cutoff],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// Whether job `id` exists and is `owner`'s.
    pub fn owned_by(&self, id: &str, owner: &str) -> Result<bool, JobStoreError> {
        self.sql(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n > 0)
    }

    /// Jobs not finished (queued or running), oldest first.
    pub fn unfinished(&self) -> Result<Vec<String>, JobStoreError> {
        self.sql(|c| {
            let mut stmt = c.prepare(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created, rowid",
            )?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
    }

    fn request(&self, id: &str) -> Result<Option<JobRequest>, JobStoreError> {
        let text: Option<String> = self.sql(|c| {
            c.query_row("SELECT request FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Marks a queued job running; false when it has ended (cancelled
    /// meanwhile).
    fn start(&self, id: &str) -> Result<bool, JobStoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE jobs SET state = 'running' WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id],
            )
        })
        .map(|n| n > 0)
    }

    fn item_count(&self, id: &str) -> Result<usize, JobStoreError> {
        self.sql(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM job_items WHERE job = ?1",
                params![id],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as usize)
    }

    fn add_items(
        &self,
        id: &str,
        items: Vec<Result<Article, String>>,
    ) -> Result<(), JobStoreError> {
        self.sql(|c| {
            let tx = c.transaction()?;
            insert_items(&tx, id, items)?;
            tx.commit()
        })
    }

    /// Items of a job still to run.
    fn pending_items(&self, id: &str) -> Result<Vec<(usize, Article)>, JobStoreError> {
        let rows: Vec<(i64, String)> = self.sql(|c| {
            let mut stmt = c.prepare(
                "SELECT idx, article FROM job_items WHERE job = ?1 AND outcome IS NULL ORDER BY idx",
            )?;
            let rows = stmt
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(i, a)| Some((i as usize, serde_json::from_str(&a).ok()?)))
            .collect())
    }

    fn finish_item(&self, id: &str, item: &JobItem) -> Result<(), JobStoreError> {
        let outcome = serde_json::to_string(item).unwrap_or_default();
        self.sql(|c| {
            c.execute(
                "UPDATE job_items SET outcome = ?3 WHERE job = ?1 AND idx = ?2",
                params![id, item.index as i64, outcome],
            )
        })?;
        Ok(())
    }

    /// Ends a job that is still queued or running: sets its state and, when
    /// it has a webhook, puts the call in the outbox, in one transaction.
    /// False when the job had already ended (nothing changes).
    fn end(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
        webhook: Option<&str>,
    ) -> Result<bool, JobStoreError> {
        self.sql(|c| {
            let tx = c.transaction()?;
            let changed = tx.execute(
                "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id, state.name(), error],
            )? > 0;
            if changed {
                if let Some(url) = webhook {
                    tx.execute(
                        "INSERT OR REPLACE INTO webhook_outbox (job, url, attempts, due_ms) VALUES (?1, ?2, 0, ?3)",
                        params![id, url, now_ms()],
                    )?;
                }
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    /// Takes up to `limit` webhook calls that are due, marking them taken
    /// (due never) until [`JobStore::webhook_tried`] reschedules or drops
    /// them. Gives each call's job, URL and tries so far.
    fn claim_due_webhooks(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String, u32)>, JobStoreError> {
        self.sql(|c| {
            let tx = c.transaction()?;
            let due = {
                let mut stmt = tx.prepare(
                    "SELECT job, url, attempts FROM webhook_outbox WHERE due_ms <= ?1 ORDER BY due_ms LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![now_ms(), limit as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<(String, String, u32)>>>()?;
                rows
            };
            for (job, _, _) in &due {
                tx.execute(
                    "UPDATE webhook_outbox SET due_ms = ?2 WHERE job = ?1",
                    params![job, i64::MAX],
                )?;
            }
            tx.commit()?;
            Ok(due)
        })
    }

    /// Makes every taken webhook call due again (after a restart, nothing
    /// is in flight any more).
    fn release_claimed_webhooks(&self) -> Result<(), JobStoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE webhook_outbox SET due_ms = ?1 WHERE due_ms = ?2",
                params![now_ms(), i64::MAX],
            )
        })?;
        Ok(())
    }

    /// Milliseconds until the next webhook call is due (0: one is due now).
    fn next_webhook_in(&self) -> Result<Option<u64>, JobStoreError> {
        let due: Option<i64> = self.sql(|c| {
            c.query_row(
                "SELECT MIN(due_ms) FROM webhook_outbox WHERE due_ms < ?1",
                params![i64::MAX],
                |r| r.get(0),
            )
        })?;
        Ok(due.map(|d| d.saturating_sub(now_ms()).max(0) as u64))
    }

    /// Records a webhook try (`attempt` counts from 1): delivered or out of
    /// tries, the call leaves the outbox; else it is due again after
    /// `retry_in`.
    fn webhook_tried(
        &self,
        id: &str,
        attempt: u32,
        error: Option<&str>,
        retry_in: Duration,
    ) -> Result<(), JobStoreError> {
        let delivered = error.is_none();
        self.sql(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE jobs SET webhook_attempts = ?2, webhook_delivered = ?3, webhook_error = ?4 WHERE id = ?1",
                params![id, attempt, delivered, error],
            )?;
            if delivered || attempt >= WEBHOOK_ATTEMPTS {
                tx.execute("DELETE FROM webhook_outbox WHERE job = ?1", params![id])?;
            } else {
                tx.execute(
                    "UPDATE webhook_outbox SET attempts = ?2, due_ms = ?3 WHERE job = ?1",
                    params![id, attempt, now_ms().saturating_add(retry_in.as_millis() as i64)],
                )?;
            }
            tx.commit()
        })
    }

    /// A job as `GET /v1/jobs/{id}` shows it.
    pub fn view(&self, id: &str) -> Result<Option<JobView>, JobStoreError> {
        type Row = (
            String,
            String,
            Option<String>,
            i64,
            u32,
            bool,
            Option<String>,
        );
        let row: Option<Row> = self.sql(|c| {
            c.query_row(
                "SELECT request, state, error, created, webhook_attempts, webhook_delivered, webhook_error FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()
        })?;
        let Some((request, state, error, created, attempts, delivered, webhook_error)) = row else {
            return Ok(None);
        };
        let request: JobRequest = serde_json::from_str(&request).unwrap_or_default();
        let outcomes: Vec<Option<String>> = self.sql(|c| {
            let mut stmt =
                c.prepare("SELECT outcome FROM job_items WHERE job = ?1 ORDER BY idx")?;
            let rows = stmt
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let results: Vec<JobItem> = outcomes
            .iter()
            .flatten()
            .filter_map(|o| serde_json::from_str(o).ok())
            .collect();
        let state = JobState::parse(&state);
        let output = request
            .format
            .filter(|_| state == JobState::Done)
            .map(|f| render_output(f, &results));
        Ok(Some(JobView {
            id: id.to_string(),
            state,
            task: request.task.unwrap_or(Task::Digest),
            created,
            progress: JobProgress {
                done: results.len(),
                total: outcomes.len(),
            },
            error,
            results,
            webhook: request.webhook.map(|url| WebhookState {
                url,
                delivered,
                attempts,
                last_error: webhook_error,
            }),
            output,
        }))
    }
}

fn insert_items(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    items: Vec<Result<Article, String>>,
) -> rusqlite::Result<()> {
    let start: i64 = tx.query_row(
        "SELECT COUNT(*) FROM job_items WHERE job = ?1",
        params![id],
        |r| r.get(0),
    )?;
    for (k, item) in items.into_iter().enumerate() {
        let index = start as usize + k;
        match item {
            Ok(article) => tx.execute(
                "INSERT INTO job_items (job, idx, article) VALUES (?1, ?2, ?3)",
                params![
                    id,
                    index as i64,
                    serde_json::to_string(&article).unwrap_or_default()
                ],
            )?,
            Err(message) => {
                let failed = JobItem::failed(
                    index,
                    422,
                    ErrorDetail {
                        code: ErrorCode::InvalidRequest,
                        message,
                    },
                );
                tx.execute(
                    "INSERT INTO job_items (job, idx, outcome) VALUES (?1, ?2, ?3)",
                    params![
                        id,
                        index as i64,
                        serde_json::to_string(&failed).unwrap_or_default()
                    ],
                )?
            }
        };
    }
    Ok(())
}

/// What the job runner needs besides the store.
#[derive(Clone)]
pub struct JobSettings {
    /// Items of one job offered to admission at once.
    pub parallel: usize,
    /// The slots and queues shared with interactive requests.
    pub admission: Arc<Admission>,
    /// Time one item may run, once it has its slot, before it is cancelled
    /// and fails with `timeout`.
    pub item_timeout: Duration,
    /// What feed URLs and webhooks may be reached.
    pub fetch: FetchPolicy,
    /// Key of the webhook signature; without one, webhooks are not signed.
    pub webhook_secret: Option<String>,
    /// Delay before the first webhook retry (doubled each time).
    pub retry_delay: Duration,
    /// Jobs one caller may have queued or running at once.
    pub max_active_per_caller: usize,
    /// How long an ended job is kept; `None`: for ever.
    pub retention: Option<Duration>,
}

/// How often the job runner deletes the jobs past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Jobs being worked on, each with the sender that cancels it.
type Running = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

/// The background workers' handle: queue a job id to have it run, cancel
/// one.
#[derive(Clone)]
pub struct JobQueue {
    /// The store.
    pub store: Arc<JobStore>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    running: Running,
    outbox: Arc<Notify>,
    fetch: FetchPolicy,
    max_active_per_caller: usize,
}

impl JobQueue {
    /// What feed URLs and webhooks may reach.
    pub fn fetch_policy(&self) -> &FetchPolicy {
        &self.fetch
    }

    /// Jobs one caller may have queued or running at once.
    pub fn max_active_per_caller(&self) -> usize {
        self.max_active_per_caller
    }

    /// Starts the job runner and the webhook outbox on the current tokio
    /// runtime, and queues every unfinished job in the store (a restart
    /// resumes them).
    pub fn start(store: Arc<JobStore>, engine: Arc<Engine>, settings: JobSettings) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let queue = Self {
            store: Arc::clone(&store),
            tx,
            running: Running::default(),
            outbox: Arc::new(Notify::new()),
            fetch: settings.fetch.clone(),
            max_active_per_caller: settings.max_active_per_caller,
        };
        match store.unfinished() {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(job = %id, "resuming job");
                    let _ = queue.tx.send(id);
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
        if let Err(e) = store.release_claimed_webhooks() {
            tracing::error!("{e}");
        }
        tokio::spawn(drain_outbox(
            Arc::clone(&store),
            settings.clone(),
            Arc::clone(&queue.outbox),
        ));
        if let Some(retention) = settings.retention {
            tokio::spawn(prune_regularly(Arc::clone(&store), retention));
        }
        let (running, outbox) = (Arc::clone(&queue.running), Arc::clone(&queue.outbox));
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let (cancel, cancelled) = watch::channel(false);
                lock(&running).insert(id.clone(), cancel);
                let ran = run_batch_job(&store, &engine, &settings, &id, cancelled).await;
                lock(&running).remove(&id);
                if let Err(e) = ran {
                    tracing::error!(job = %id, "{e}");
                }
                outbox.notify_one();
            }
        });
        queue
    }

    /// Queues a job to run.
    pub fn submit(&self, id: &str) {
        let _ = self.tx.send(id.to_string());
    }

    /// Cancels a job: one still queued never starts, one running stops its
    /// items in flight (they stay without a result); finished items are
    /// kept. `None` for an unknown job; a job that had ended is shown
    /// unchanged.
    pub fn cancel(&self, id: &str) -> Result<Option<JobView>, JobStoreError> {
        let Some(request) = self.store.request(id)? else {
            return Ok(None);
        };
        if self
            .store
            .end(id, JobState::Cancelled, None, request.webhook.as_deref())?
        {
            if let Some(cancel) = lock(&self.running).get(id) {
                let _ = cancel.send(true);
            }
            self.outbox.notify_one();
        }
        self.store.view(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guards a plain map every operation leaves whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_batch_job(
    store: &Arc<JobStore>,
    engine: &Arc<Engine>,
    settings: &JobSettings,
    id: &str,
    cancelled: watch::Receiver<bool>,
) -> Result<(), JobStoreError> {
    let Some(request) = store.request(id)? else {
        return Ok(());
    };
    if !store.start(id)? {
        return Ok(());
    }
    let webhook = request.webhook.as_deref();
    if let Some(url) = request
        .feed_url
        .as_deref()
        .filter(|_| request.items.is_none())
    {
        if store.item_count(id)? == 0 {
            match read_feed(url, &settings.fetch).await {
                Ok(items) => store.add_items(id, items)?,
                Err(e) => {
                    store.end(id, JobState::Failed, Some(&e), webhook)?;
                    return Ok(());
                }
            }
        }
    }
    let task = request.task.unwrap_or(Task::Digest);
    let options = options(&request);
    let pending = store.pending_items(id)?;
    let mut set = tokio::task::JoinSet::new();
    let mut queue = pending.into_iter();
    loop {
        while set.len() < settings.parallel.max(1) && !*cancelled.borrow() {
            let Some((index, article)) = queue.next() else {
                break;
            };
            let request = TaskRequest {
                task,
                article,
                options: options.clone(),
                model: None,
            };
            set.spawn(run_item(
                Arc::clone(engine),
                settings.clone(),
                (index, request),
                cancelled.clone(),
            ));
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        if let Ok(Some(item)) = done {
            store.finish_item(id, &item)?;
        }
    }
    store.end(id, JobState::Done, None, webhook)?;
    Ok(())
}

/// Runs one item: a batch slot, then the task until the item's deadline.
/// `None` when the job was cancelled first (the item stays without a
/// result).
async fn run_item(
    engine: Arc<Engine>,
    settings: JobSettings,
    (index, request): (usize, TaskRequest),
    mut cancelled: watch::Receiver<bool>,
) -> Option<JobItem> {
    let work = async {
        let slot = settings.admission.enter(Priority::Batch, None).await;
        let slot = match slot {
            Ok(slot) => Arc::new(slot),
            Err(e) => return Err((ErrorCode::Internal, e.to_string())),
        };
        let deadline = tokio::time::Instant::now() + settings.item_timeout;
        let cancel = CancelToken::new();
        let token = cancel.clone();
        let ran = run_admitted(slot, Some(deadline), cancel, move || {
            engine.run(&request, &token, &|_| {})
        })
        .await;
        match ran {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err((e.code(), e.to_string())),
            Err(RunError::Timeout) => Err((
                ErrorCode::Timeout,
                format!(
                    "the item took longer than {} s (--timeout-secs); its work was cancelled",
                    settings.item_timeout.as_secs()
                ),
            )),
            Err(e) => {
                tracing::error!("{e}");
                Err((
                    ErrorCode::Internal,
                    "the item failed inside the server; see the server log".into(),
                ))
            }
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        // Dropping `work` cancels the task at its next step.
        _ = cancelled.wait_for(|c| *c) => return None,
    };
    Some(match outcome {
        Ok(r) => JobItem {
            index,
            status: 200,
            result: serde_json::to_value(&r).ok(),
            error: None,
        },
        Err((code, message)) => {
            JobItem::failed(index, code.status(), ErrorDetail { code, message })
        }
    })
}

/// Deletes the jobs past `retention`, now and every [`PRUNE_EVERY`].
async fn prune_regularly(store: Arc<JobStore>, retention: Duration) {
    loop {
        let pruning = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || pruning.prune(retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(jobs = n, "deleted jobs past their retention"),
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(e) => tracing::error!("job pruning failed: {e}"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

/// Delivers the outbox's webhook calls, at most [`WEBHOOK_PARALLEL`] at
/// once, each retried with a doubling delay; woken when a job ends.
async fn drain_outbox(store: Arc<JobStore>, settings: JobSettings, wake: Arc<Notify>) {
    let mut calls = tokio::task::JoinSet::new();
    loop {
        let room = WEBHOOK_PARALLEL.saturating_sub(calls.len());
        if room > 0 {
            match store.claim_due_webhooks(room) {
                Ok(due) => {
                    for (id, url, attempts) in due {
                        let (store, settings) = (Arc::clone(&store), settings.clone());
                        calls.spawn(async move {
                            let attempt = attempts + 1;
                            let error = deliver(&store, &settings, &id, &url).await.err();
                            if let Some(e) = &error {
                                tracing::warn!(job = %id, attempt, "webhook failed: {e}");
                            }
                            let retry_in = settings.retry_delay * 2u32.saturating_pow(attempts);
                            if let Err(e) =
                                store.webhook_tried(&id, attempt, error.as_deref(), retry_in)
                            {
                                tracing::error!(job = %id, "{e}");
                            }
                        });
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        // With every delivery slot busy, only a finished call (or a new
        // job's end) can start another: no timer, no spinning on due rows.
        let idle = if calls.len() >= WEBHOOK_PARALLEL {
            Duration::from_secs(60)
        } else {
            match store.next_webhook_in() {
                Ok(Some(ms)) => Duration::from_millis(ms.max(20)),
                Ok(None) => Duration::from_secs(60),
                // The database failed (logged): try again a little later.
                Err(e) => {
                    tracing::error!("{e}");
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

fn options(request: &JobRequest) -> TaskOptions {
    TaskOptions {
        to: request
            .to
            .as_deref()
            .map(precis_core::task::normalise_languages),
        length: request.length,
        full: request.full.unwrap_or(false),
        clean: request.clean.unwrap_or(true),
        ..TaskOptions::default()
    }
}

async fn read_feed(
    url: &str,
    policy: &FetchPolicy,
) -> Result<Vec<Result<Article, String>>, String> {
    let fetched = fetch(url, policy).await.map_err(|e| e.to_string())?;
    let items = crate::sources::parse_feed(&fetched.body, url)?;
    if items.len() > MAX_JOB_ITEMS {
        return Err(format!(
            "{url}: the feed has {} items; a job takes at most {MAX_JOB_ITEMS}",
            items.len()
        ));
    }
    Ok(items.into_iter().map(|i| i.article).collect())
}

/// The signature header of a webhook body sent at `timestamp` (Unix
/// seconds, sent as `X-Precis-Timestamp`): `sha256=` and the hex
/// HMAC-SHA256 under `secret` of `{timestamp}.{body}`. Signing the time
/// lets a receiver refuse a replayed call (see the README).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs the job's answer, as it is now, to its webhook once.
async fn deliver(
    store: &JobStore,
    settings: &JobSettings,
    id: &str,
    url: &str,
) -> Result<(), String> {
    let view = store
        .view(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("job {id} is gone"))?;
    let body = serde_json::to_vec(&view).map_err(|e| e.to_string())?;
    post_webhook(url, &body, settings).await
}

async fn post_webhook(url: &str, body: &[u8], settings: &JobSettings) -> Result<(), String> {
    // The same address rules as feeds: checked, then connected to.
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let addr = crate::fetch::vet_url(&parsed, &settings.fetch)
        .await
        .map_err(|e| e.to_string())?;
    // No proxy: a proxy would resolve the name again, past the check.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(parsed.host_str().unwrap_or_default(), addr)
        .timeout(settings.fetch.timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .post(parsed)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(secret) = &settings.webhook_secret {
        let timestamp = u64::try_from(now()).unwrap_or_default();
        req = req
            .header("x-precis-timestamp", timestamp.to_string())
            .header("x-precis-signature", signature(secret, timestamp, body));
    }
    let response = req.send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job tables as precis wrote them before they had a version.
    const SCHEMA_1: &str = "CREATE TABLE jobs (
            id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, request TEXT NOT NULL,
            state TEXT NOT NULL, error TEXT, created INTEGER NOT NULL,
            webhook_attempts INTEGER NOT NULL DEFAULT 0,
            webhook_delivered INTEGER NOT NULL DEFAULT 0, webhook_error TEXT);
        CREATE TABLE job_items (job TEXT NOT NULL, idx INTEGER NOT NULL, article TEXT,
            outcome TEXT, PRIMARY KEY (job, idx));
        INSERT INTO jobs (id, request, state, created) VALUES ('old', '{\"task\": \"summarize\"}', 'done', 1);";

    fn version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT version FROM schema_versions WHERE component = 'jobs'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn unversioned_job_tables_are_migrated_and_keep_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precis.sqlite3");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA_1)
            .unwrap();
        let store = JobStore::open(&path).unwrap();
        assert_eq!(version(&path), JOBS_SCHEMA);
        let old = store.view("old").unwrap().unwrap();
        assert_eq!(old.state, JobState::Done);
        assert_eq!(
            store.next_webhook_in().unwrap(),
            None,
            "the outbox exists and is empty"
        );
        drop(store);
        // Opening again changes nothing.
        JobStore::open(&path).unwrap();
        assert_eq!(version(&path), JOBS_SCHEMA);
    }

    #[test]
    fn tables_from_a_newer_precis_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precis.sqlite3");
        JobStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE schema_versions SET version = 99 WHERE component = 'jobs'",
                [],
            )
            .unwrap();
        let err = JobStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer precis"), "{err}");
    }

    #[test]
    fn a_webhook_call_is_retried_later_then_leaves_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("precis.sqlite3")).unwrap();
        let request = JobRequest {
            webhook: Some("https://hooks.example/x".into()),
            ..JobRequest::default()
        };
        let Created::New(id) = store.create(&request, Vec::new(), "", None, 1).unwrap() else {
            panic!("not created");
        };
        assert!(store
            .end(&id, JobState::Done, None, request.webhook.as_deref())
            .unwrap());
        assert!(
            !store.end(&id, JobState::Cancelled, None, None).unwrap(),
            "it had ended"
        );
        let due = store.claim_due_webhooks(4).unwrap();
        assert_eq!(
            due,
            vec![(id.clone(), "https://hooks.example/x".to_string(), 0)]
        );
        assert!(
            store.claim_due_webhooks(4).unwrap().is_empty(),
            "taken calls are not due"
        );
        store
            .webhook_tried(&id, 1, Some("refused"), Duration::from_secs(3600))
            .unwrap();
        assert!(
            store.claim_due_webhooks(4).unwrap().is_empty(),
            "due in an hour"
        );
        assert!(store.next_webhook_in().unwrap().unwrap() > 3_000_000);
        store.webhook_tried(&id, 2, None, Duration::ZERO).unwrap();
        assert_eq!(store.next_webhook_in().unwrap(), None, "delivered: gone");
        let view = store.view(&id).unwrap().unwrap();
        let webhook = view.webhook.unwrap();
        assert!(webhook.delivered);
        assert_eq!(webhook.attempts, 2);
    }

    #[test]
    fn ended_jobs_past_their_retention_are_deleted_with_their_items() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("precis.sqlite3")).unwrap();
        let request = JobRequest {
            webhook: Some("https://hooks.example/x".into()),
            ..JobRequest::default()
        };
        let item = || vec![Ok(Article::default()), Err("unreadable".to_string())];
        let mut ids = Vec::new();
        for owner in ["a", "b", "c"] {
            let Created::New(id) = store.create(&request, item(), owner, None, 8).unwrap() else {
                panic!("not created");
            };
            ids.push(id);
        }
        // Old: one done, one still running; new: one done.
        store
            .end(&ids[0], JobState::Done, None, request.webhook.as_deref())
            .unwrap();
        store.start(&ids[1]).unwrap();
        store.end(&ids[2], JobState::Done, None, None).unwrap();
        store
            .sql(|c| {
                c.execute(
                    "UPDATE jobs SET created = created - 40 * 86400 WHERE id IN (?1, ?2)",
                    params![ids[0], ids[1]],
                )
            })
            .unwrap();
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(store.prune(month).unwrap(), 1);
        assert!(store.view(&ids[0]).unwrap().is_none());
        assert!(store.view(&ids[1]).unwrap().is_some(), "running: kept");
        assert!(store.view(&ids[2]).unwrap().is_some(), "recent: kept");
        let orphans: i64 = store
            .sql(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM job_items WHERE job = ?1)
                          + (SELECT COUNT(*) FROM webhook_outbox WHERE job = ?1)",
                    params![ids[0]],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(orphans, 0);
        assert_eq!(store.prune(month).unwrap(), 0);
    }

    #[test]
    fn a_caller_past_the_cap_gets_no_new_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("precis.sqlite3")).unwrap();
        let request = JobRequest::default();
        for _ in 0..2 {
            let created = store.create(&request, Vec::new(), "a", None, 2).unwrap();
            assert!(matches!(created, Created::New(_)), "{created:?}");
        }
        assert_eq!(
            store.create(&request, Vec::new(), "a", None, 2).unwrap(),
            Created::TooMany(2)
        );
        let created = store.create(&request, Vec::new(), "b", None, 2).unwrap();
        assert!(
            matches!(created, Created::New(_)),
            "another caller: {created:?}"
        );
    }
}
