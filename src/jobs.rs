//! Batch jobs for the server: a job (articles, or a feed URL, and a task)
//! is accepted at once, kept in the SQLite database the result cache uses,
//! worked on in the background item by item, and read back by id. Each
//! item's result is committed as it finishes, so a server that stops (or is
//! killed) loses no accepted job: on start-up every unfinished job is taken
//! up again, and its finished items are not run again. When a job ends its
//! answer is POSTed to its webhook, if it has one, signed with an HMAC of
//! the body, and retried on failure.
//!
//! Jobs are per node: the database is a local file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::cli::output::{json_feeds, render, ErrorBody, Format, Outcome};
use crate::engine::Engine;
use crate::fetch::{fetch, FetchPolicy};
use crate::http::error::{engine_error_code, ErrorDetail};
use crate::task::{Article, CancelToken, Length, Task, TaskOptions, TaskResult};

/// Most articles one job may hold.
pub const MAX_JOB_ITEMS: usize = 1000;

/// Webhook deliveries tried before giving up.
pub const WEBHOOK_ATTEMPTS: u32 = 4;

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
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
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

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
#[error("job store {path}: {reason}")]
pub struct JobStoreError {
    path: PathBuf,
    reason: String,
}

/// Jobs in the database (see the module's documentation).
pub struct JobStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl JobStore {
    /// Opens the job tables in the database at `path` (created when missing).
    pub fn open(path: &Path) -> Result<Self, JobStoreError> {
        let fail = |reason: String| JobStoreError {
            path: path.to_path_buf(),
            reason,
        };
        let conn = crate::cache::open_database(path).map_err(fail)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
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
             CREATE TABLE IF NOT EXISTS job_items (
                 job TEXT NOT NULL,
                 idx INTEGER NOT NULL,
                 article TEXT,
                 outcome TEXT,
                 PRIMARY KEY (job, idx)
             );",
        )
        .map_err(|e| fail(e.to_string()))?;
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
            reason: "the connection's lock is poisoned".into(),
        })?;
        f(&mut conn).map_err(|e| JobStoreError {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Accepts a job: its request and its items (an item that could not be
    /// read carries its error). With an idempotency key already used, the
    /// job made then is given instead, and `false`.
    pub fn create(
        &self,
        request: &JobRequest,
        items: Vec<Result<Article, String>>,
        idempotency_key: Option<&str>,
    ) -> Result<(String, bool), JobStoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let request_json = serde_json::to_string(request).unwrap_or_default();
        self.sql(|c| {
            let tx = c.transaction()?;
            if let Some(key) = idempotency_key {
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT id FROM jobs WHERE idempotency_key = ?1",
                        params![key],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(existing) = existing {
                    return Ok((existing, false));
                }
            }
            tx.execute(
                "INSERT INTO jobs (id, idempotency_key, request, state, created) VALUES (?1, ?2, ?3, 'queued', ?4)",
                params![id, idempotency_key, request_json, now()],
            )?;
            insert_items(&tx, &id, items)?;
            tx.commit()?;
            Ok((id.clone(), true))
        })
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

    fn set_state(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
    ) -> Result<(), JobStoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1",
                params![id, state.name(), error],
            )
        })?;
        Ok(())
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

    fn record_webhook(
        &self,
        id: &str,
        delivered: bool,
        error: Option<&str>,
    ) -> Result<(), JobStoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE jobs SET webhook_attempts = webhook_attempts + 1, webhook_delivered = ?2, webhook_error = ?3 WHERE id = ?1",
                params![id, delivered, error],
            )
        })?;
        Ok(())
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
                        code: crate::http::ErrorCode::InvalidRequest,
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
    /// Items of one job worked on at once.
    pub parallel: usize,
    /// What feed URLs and webhooks may be reached.
    pub fetch: FetchPolicy,
    /// Key of the webhook signature; without one, webhooks are not signed.
    pub webhook_secret: Option<String>,
    /// Delay before the first webhook retry (doubled each time).
    pub retry_delay: Duration,
    /// Targets of a digest without `to`.
    pub default_targets: Arc<std::sync::RwLock<Vec<String>>>,
}

/// The background worker's handle: queue a job id to have it run.
#[derive(Clone)]
pub struct JobQueue {
    /// The store.
    pub store: Arc<JobStore>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl JobQueue {
    /// Starts the worker on the current tokio runtime and queues every
    /// unfinished job in the store (a restart resumes them).
    pub fn start(store: Arc<JobStore>, engine: Arc<Engine>, settings: JobSettings) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let queue = Self {
            store: Arc::clone(&store),
            tx,
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
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                if let Err(e) = run_job(&store, &engine, &settings, &id).await {
                    tracing::error!(job = %id, "{e}");
                }
            }
        });
        queue
    }

    /// Queues a job to run.
    pub fn submit(&self, id: &str) {
        let _ = self.tx.send(id.to_string());
    }
}

async fn run_job(
    store: &Arc<JobStore>,
    engine: &Arc<Engine>,
    settings: &JobSettings,
    id: &str,
) -> Result<(), JobStoreError> {
    let Some(request) = store.request(id)? else {
        return Ok(());
    };
    store.set_state(id, JobState::Running, None)?;
    if let Some(url) = request
        .feed_url
        .as_deref()
        .filter(|_| request.items.is_none())
    {
        if store.item_count(id)? == 0 {
            match read_feed(url, &settings.fetch).await {
                Ok(items) => store.add_items(id, items)?,
                Err(e) => {
                    store.set_state(id, JobState::Failed, Some(&e))?;
                    return deliver(store, settings, id, &request).await;
                }
            }
        }
    }
    let task = request.task.unwrap_or(Task::Digest);
    let options = options(&request, task, settings);
    let pending = store.pending_items(id)?;
    let mut set = tokio::task::JoinSet::new();
    let mut queue = pending.into_iter();
    loop {
        while set.len() < settings.parallel.max(1) {
            let Some((index, article)) = queue.next() else {
                break;
            };
            let (engine, options) = (Arc::clone(engine), options.clone());
            set.spawn_blocking(move || {
                let r = engine.run(task, &article, &options, None, &CancelToken::new(), &|_| {});
                (index, r)
            });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let Ok((index, result)) = done else { continue };
        let item = match result {
            Ok(r) => JobItem {
                index,
                status: 200,
                result: serde_json::to_value(&r).ok(),
                error: None,
            },
            Err(e) => {
                let code = engine_error_code(&e);
                let detail = ErrorDetail {
                    code,
                    message: e.to_string(),
                };
                JobItem::failed(index, code.status().as_u16(), detail)
            }
        };
        store.finish_item(id, &item)?;
    }
    store.set_state(id, JobState::Done, None)?;
    deliver(store, settings, id, &request).await
}

fn options(request: &JobRequest, task: Task, settings: &JobSettings) -> TaskOptions {
    let to = match (&request.to, task) {
        (Some(to), _) => crate::task::normalise_languages(to),
        (None, Task::Digest) => settings
            .default_targets
            .read()
            .map(|t| t.clone())
            .unwrap_or_default(),
        (None, _) => Vec::new(),
    };
    TaskOptions {
        to,
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

/// The signature header of a webhook body: `sha256=` and the hex HMAC-SHA256
/// of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// POSTs the job's answer to its webhook, retrying with a doubling delay.
async fn deliver(
    store: &JobStore,
    settings: &JobSettings,
    id: &str,
    request: &JobRequest,
) -> Result<(), JobStoreError> {
    let Some(url) = &request.webhook else {
        return Ok(());
    };
    let Some(view) = store.view(id)? else {
        return Ok(());
    };
    let body = serde_json::to_vec(&view).unwrap_or_default();
    let mut delay = settings.retry_delay;
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let outcome = post_webhook(url, &body, settings).await;
        store.record_webhook(
            id,
            outcome.is_ok(),
            outcome.as_ref().err().map(String::as_str),
        )?;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(job = %id, attempt, "webhook failed: {e}");
                if attempt < WEBHOOK_ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
    Ok(())
}

async fn post_webhook(url: &str, body: &[u8], settings: &JobSettings) -> Result<(), String> {
    // The same address rules as feeds: checked, then connected to.
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let addr = crate::fetch::vet_url(&parsed, &settings.fetch)
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
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
        req = req.header("x-precis-signature", signature(secret, body));
    }
    let response = req.send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}
