//! Batch jobs for the server: a job (articles, or a feed URL, and a task)
//! is accepted at once, kept in the database the result cache uses,
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
//! Jobs live in the database the settings name (see [`JobStore`]): on one
//! machine an SQLite file; with PostgreSQL every replica shares them, any
//! node runs any job's items under a lease, and a node that dies leaves
//! its items to the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{watch, Notify};

use crate::fetch::{fetch, FetchPolicy};
use crate::render::{json_feeds, render, ErrorBody, Format, Outcome};
use precis_core::admission::{run_admitted, Admission, Priority, RunError};
use precis_core::engine::Engine;
use precis_core::error::{ErrorCode, ErrorDetail};
use precis_core::task::{Article, CancelToken, Length, Task, TaskOptions, TaskRequest, TaskResult};

mod store;

pub use store::{JobStore, JobStoreError, JOBS_SCHEMA, MAX_ITEM_ATTEMPTS};

/// Most articles one job may hold.
pub const MAX_JOB_ITEMS: usize = 1000;

/// Webhook deliveries tried before giving up.
pub(crate) const WEBHOOK_ATTEMPTS: u32 = 4;

/// Webhook deliveries in flight at once, all jobs together.
pub const WEBHOOK_PARALLEL: usize = 4;

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

/// What the job runner needs besides the store.
#[derive(Clone)]
pub struct JobSettings {
    /// Items this node works on at once (all jobs together, oldest job
    /// first), each then waiting for a batch slot.
    pub parallel: usize,
    /// How long a claimed item stays this node's without a renewal (it is
    /// renewed every third of it while the item runs); a node that dies
    /// leaves its items to others after this long.
    pub lease: Duration,
    /// Whether this node runs items (false: `--role api`, which accepts,
    /// shows and cancels jobs and leaves the work to workers).
    pub run_items: bool,
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

/// How often an idle runner looks for work it was not told about: jobs
/// another node accepted, items whose lease ran out.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long a node may take to deliver one webhook call before another
/// node may take it (the call's own time-outs are far shorter).
const WEBHOOK_LEASE: Duration = Duration::from_secs(600);

/// Items this node works on, each with the sender that cancels it.
type Running = Arc<Mutex<HashMap<(String, usize), watch::Sender<bool>>>>;

/// The job runner's handle: wake it for a new job, cancel one.
#[derive(Clone)]
pub struct JobQueue {
    /// The store.
    pub store: Arc<JobStore>,
    wake: Arc<Notify>,
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
    /// runtime. The runner claims work from the store (see
    /// [`JobStore`]): every unfinished job's items, whichever
    /// node accepted it; on one machine (SQLite, where one process runs
    /// the items) the leases of a server that stopped are let go first, so
    /// its jobs resume at once.
    pub fn start(store: Arc<JobStore>, engine: Arc<Engine>, settings: JobSettings) -> Self {
        let queue = Self {
            store: Arc::clone(&store),
            wake: Arc::new(Notify::new()),
            running: Running::default(),
            outbox: Arc::new(Notify::new()),
            fetch: settings.fetch.clone(),
            max_active_per_caller: settings.max_active_per_caller,
        };
        if !store.shared() && settings.run_items {
            if let Err(e) = store.release_all_leases() {
                tracing::error!("{e}");
            }
        }
        let node = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        tracing::info!(node = %node, "job runner started");
        tokio::spawn(drain_outbox(
            Arc::clone(&store),
            settings.clone(),
            Arc::clone(&queue.outbox),
        ));
        if let Some(retention) = settings.retention {
            tokio::spawn(prune_regularly(Arc::clone(&store), retention));
        }
        if !settings.run_items {
            tracing::info!(node = %node, "job items are left to the workers (--role api)");
            return queue;
        }
        tokio::spawn(work(
            Runner {
                store,
                engine,
                settings,
                node,
                running: Arc::clone(&queue.running),
                outbox: Arc::clone(&queue.outbox),
            },
            Arc::clone(&queue.wake),
        ));
        queue
    }

    /// Tells the runner a job was accepted (it would find it within
    /// a second anyway).
    pub fn submit(&self, _id: &str) {
        self.wake.notify_one();
    }

    /// Cancels a job: one still queued never starts, one running stops its
    /// items in flight here at once and on other nodes at their next lease
    /// renewal (they stay without a result); finished items are kept.
    /// `None` for an unknown job; a job that had ended is shown unchanged.
    pub fn cancel(&self, id: &str) -> Result<Option<JobView>, JobStoreError> {
        let Some(request) = self.store.request(id)? else {
            return Ok(None);
        };
        if self
            .store
            .end(id, JobState::Cancelled, None, request.webhook.as_deref())?
        {
            for ((job, _), cancel) in lock(&self.running).iter() {
                if job == id {
                    let _ = cancel.send(true);
                }
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

/// What the work loop holds.
struct Runner {
    store: Arc<JobStore>,
    engine: Arc<Engine>,
    settings: JobSettings,
    /// This process's id in leases.
    node: String,
    running: Running,
    outbox: Arc<Notify>,
}

/// Runs `f` on the store from a blocking thread (the store's calls wait
/// for the database).
async fn blocking<T: Send + 'static>(
    store: &Arc<JobStore>,
    f: impl FnOnce(&JobStore) -> Result<T, JobStoreError> + Send + 'static,
) -> Result<T, JobStoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| {
            Err(JobStoreError {
                database: String::new(),
                source: format!("a job store call failed: {e}").into(),
            })
        })
}

/// The work loop: reads feeds, claims items up to `parallel` at once and
/// runs them, commits each as it finishes, renews the leases of those in
/// flight, and ends the jobs that have nothing left. A database that
/// fails is logged and tried again: nothing is lost, since unfinished
/// items stay in the database until some node commits them.
async fn work(runner: Runner, wake: Arc<Notify>) {
    let Runner {
        store,
        engine,
        settings,
        node,
        running,
        outbox,
    } = runner;
    let lease = settings.lease.max(Duration::from_secs(1));
    let mut set: tokio::task::JoinSet<(String, usize, Option<JobItem>)> =
        tokio::task::JoinSet::new();
    let mut renew_at = tokio::time::Instant::now() + lease / 3;
    // Requests of the jobs whose items run here, read once per job.
    let mut requests: HashMap<String, Arc<JobRequest>> = HashMap::new();
    loop {
        let room = settings.parallel.max(1).saturating_sub(set.len());
        // Busy: every slot taken, or filled just now (more may be waiting).
        let mut claimed_all = room == 0;
        if room > 0 {
            let (n, l) = (node.clone(), lease);
            match blocking(&store, move |s| s.claim_items(&n, room, l)).await {
                Ok(items) => {
                    claimed_all = items.len() == room;
                    for item in items {
                        let request = job_request(&store, &mut requests, &item.job).await;
                        start_item(&engine, &settings, &node, &running, &mut set, item, request);
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        if !claimed_all {
            // Nothing more to claim now: read a feed whose items are the
            // next work, and end the jobs left with nothing to run.
            let (n, l) = (node.clone(), lease);
            match blocking(&store, move |s| s.claim_feed(&n, l)).await {
                Ok(Some((id, request))) => {
                    read_job_feed(&store, &settings, &id, &request).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::error!("{e}"),
            }
            match blocking(&store, |s| s.settle()).await {
                Ok(0) => {}
                Ok(_) => outbox.notify_one(),
                Err(e) => tracing::error!("{e}"),
            }
        }
        if set.is_empty() {
            requests.clear();
        }
        tokio::select! {
            Some(done) = set.join_next(), if !set.is_empty() => {
                let Ok((job, index, item)) = done else { continue };
                lock(&running).remove(&(job.clone(), index));
                if let Some(item) = item {
                    if commit(&store, &node, &job, item, lease).await {
                        outbox.notify_one();
                    }
                }
            }
            _ = tokio::time::sleep_until(renew_at), if !set.is_empty() => {
                renew_at = tokio::time::Instant::now() + lease / 3;
                let n = node.clone();
                match blocking(&store, move |s| s.renew(&n, lease)).await {
                    Ok(held) => {
                        // An item not held any more: its job ended (cancelled
                        // on another node), or another node took it.
                        for (key, cancel) in lock(&running).iter() {
                            if !held.contains(key) {
                                let _ = cancel.send(true);
                            }
                        }
                    }
                    Err(e) => tracing::error!("lease renewal failed: {e}"),
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL_EVERY), if !claimed_all || set.is_empty() => {}
        }
    }
}

/// Commits a finished item; while the database cannot be reached (it
/// restarts), tries again for as long as the lease, so that the work is
/// not lost. Gives whether the item ended its job.
async fn commit(
    store: &Arc<JobStore>,
    node: &str,
    job: &str,
    item: JobItem,
    lease: Duration,
) -> bool {
    let started = tokio::time::Instant::now();
    let index = item.index;
    loop {
        let (n, j, i) = (node.to_string(), job.to_string(), item.clone());
        match blocking(store, move |s| s.finish_item(&n, &j, &i)).await {
            Ok(Some(ended)) => return ended,
            Ok(None) => {
                tracing::warn!(job, index, "item finished after its lease was lost (its job ended, or another node took it); this result is dropped");
                return false;
            }
            Err(e) if started.elapsed() < lease => {
                tracing::warn!(job, index, "cannot commit the item yet, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!(
                    job,
                    index,
                    "the item's result is lost; another node will run it again: {e}"
                );
                return false;
            }
        }
    }
}

/// The request of job `id`, from `requests` or else the store (`None`:
/// it cannot be read, logged).
async fn job_request(
    store: &Arc<JobStore>,
    requests: &mut HashMap<String, Arc<JobRequest>>,
    id: &str,
) -> Option<Arc<JobRequest>> {
    if let Some(r) = requests.get(id) {
        return Some(Arc::clone(r));
    }
    let job = id.to_string();
    match blocking(store, move |s| s.request(&job)).await {
        Ok(Some(r)) => {
            let r = Arc::new(r);
            requests.insert(id.to_string(), Arc::clone(&r));
            Some(r)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(job = %id, "{e}");
            None
        }
    }
}

/// Starts a claimed item of the job `request` asks for (or fails it, when
/// it was claimed too often or it cannot be read back).
fn start_item(
    engine: &Arc<Engine>,
    settings: &JobSettings,
    node: &str,
    running: &Running,
    set: &mut tokio::task::JoinSet<(String, usize, Option<JobItem>)>,
    item: store::Claimed,
    request: Option<Arc<JobRequest>>,
) {
    let store::Claimed {
        job,
        index,
        article,
        attempts,
    } = item;
    let failed = move |message: String| {
        JobItem::failed(
            index,
            500,
            ErrorDetail {
                code: ErrorCode::Internal,
                message,
            },
        )
    };
    let (Some(article), Some(request)) = (article, request) else {
        let message = "the item could not be read back from the job store".to_string();
        set.spawn(async move { (job, index, Some(failed(message))) });
        return;
    };
    if attempts > store::MAX_ITEM_ATTEMPTS {
        let message = format!(
            "the item was started {} times and its node stopped each time before it finished; it is not tried again",
            attempts - 1
        );
        tracing::error!(job = %job, index, node, "{message}");
        set.spawn(async move { (job, index, Some(failed(message))) });
        return;
    }
    let (cancel, cancelled) = watch::channel(false);
    lock(running).insert((job.clone(), index), cancel);
    let task = TaskRequest {
        task: request.task.unwrap_or(Task::Digest),
        article,
        options: options(&request),
        model: None,
    };
    let (engine, settings) = (Arc::clone(engine), settings.clone());
    set.spawn(async move {
        let item = run_item(engine, settings, (index, task), cancelled).await;
        (job, index, item)
    });
}

/// Reads job `id`'s feed (claimed) and adds its items; a feed that cannot
/// be read fails the job.
async fn read_job_feed(
    store: &Arc<JobStore>,
    settings: &JobSettings,
    id: &str,
    request: &JobRequest,
) {
    let read = match request.feed_url.as_deref() {
        Some(url) => read_feed(url, &settings.fetch).await,
        None => Ok(Vec::new()),
    };
    let id = id.to_string();
    let webhook = request.webhook.clone();
    let stored = match read {
        Ok(items) => blocking(store, move |s| s.add_feed_items(&id, items)).await,
        Err(e) => {
            blocking(store, move |s| {
                s.end(&id, JobState::Failed, Some(&e), webhook.as_deref())
                    .map(|_| ())
            })
            .await
        }
    };
    if let Err(e) = stored {
        tracing::error!("{e}");
    }
}

/// Runs one item: a batch slot, then the task until the item's deadline.
/// `None` when it was cancelled first (the item stays without a result).
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
        match blocking(&pruning, move |s| s.prune(retention)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "deleted jobs past their retention"),
            Err(e) => tracing::error!("{e}"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

/// Delivers the outbox's webhook calls, at most [`WEBHOOK_PARALLEL`] at
/// once, each retried with a doubling delay; woken when a job ends. Each
/// call is claimed for [`WEBHOOK_LEASE`], so that with several nodes
/// draining one outbox a call goes out once, and a node that dies while
/// calling leaves it to another.
async fn drain_outbox(store: Arc<JobStore>, settings: JobSettings, wake: Arc<Notify>) {
    let mut calls = tokio::task::JoinSet::new();
    loop {
        let room = WEBHOOK_PARALLEL.saturating_sub(calls.len());
        if room > 0 {
            match blocking(&store, move |s| s.claim_due_webhooks(room, WEBHOOK_LEASE)).await {
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
                            let job = id.clone();
                            let tried = blocking(&store, move |s| {
                                s.webhook_tried(&job, attempt, error.as_deref(), retry_in)
                            });
                            if let Err(e) = tried.await {
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
            match blocking(&store, |s| s.next_webhook_in()).await {
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
    store: &Arc<JobStore>,
    settings: &JobSettings,
    id: &str,
    url: &str,
) -> Result<(), String> {
    let job = id.to_string();
    let view = blocking(store, move |s| s.view(&job))
        .await
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
        let timestamp = u64::try_from(store::now_ms() / 1000).unwrap_or_default();
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
    use precis_core::database::{test_database, Database, Pool};

    /// The job tables as precis wrote them before they had a version.
    const SCHEMA_1: &str = "CREATE TABLE jobs (
            id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, request TEXT NOT NULL,
            state TEXT NOT NULL, error TEXT, created INTEGER NOT NULL,
            webhook_attempts INTEGER NOT NULL DEFAULT 0,
            webhook_delivered INTEGER NOT NULL DEFAULT 0, webhook_error TEXT);
        CREATE TABLE job_items (job TEXT NOT NULL, idx INTEGER NOT NULL, article TEXT,
            outcome TEXT, PRIMARY KEY (job, idx));
        INSERT INTO jobs (id, request, state, created) VALUES ('old', '{\"task\": \"summarize\"}', 'done', 1);
        INSERT INTO jobs (id, request, state, created) VALUES ('feed', '{\"feed_url\": \"https://x.example/f\"}', 'queued', 2);";

    /// The databases the shared suite runs on: a new SQLite file, and a
    /// schema of its own in the test PostgreSQL server when there is one.
    fn engines(test: &str) -> Vec<(Database, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let file = Database::Sqlite(dir.path().join("precis.sqlite3"));
        let mut out = vec![(file, dir)];
        match test_database(test) {
            Some(db) => out.push((db, tempfile::tempdir().unwrap())),
            None => eprintln!("PRECIS_TEST_DATABASE_URL unset: {test} runs on SQLite only"),
        }
        out
    }

    fn version(database: &Database) -> i64 {
        Pool::open(database)
            .unwrap()
            .with(|c| {
                c.one(
                    "SELECT version FROM schema_versions WHERE component = 'jobs'",
                    &[],
                )
            })
            .unwrap()
            .int()
            .unwrap()
    }

    fn new_job(
        store: &JobStore,
        request: &JobRequest,
        items: Vec<Result<Article, String>>,
    ) -> String {
        match store.create(request, items, "", None, 100).unwrap() {
            Created::New(id) => id,
            other => panic!("not created: {other:?}"),
        }
    }

    fn article(text: &str) -> Article {
        Article {
            text: text.into(),
            ..Article::default()
        }
    }

    fn done(index: usize) -> JobItem {
        JobItem {
            index,
            status: 200,
            result: Some(serde_json::json!({"index": index})),
            error: None,
        }
    }

    #[test]
    fn unversioned_job_tables_are_migrated_and_keep_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("precis.sqlite3"));
        precis_core::database::open_sqlite(database.sqlite_path().unwrap())
            .unwrap()
            .execute_batch(SCHEMA_1)
            .unwrap();
        let store = JobStore::open(&database).unwrap();
        assert_eq!(version(&database), JOBS_SCHEMA);
        let old = store.view("old").unwrap().unwrap();
        assert_eq!(old.state, JobState::Done);
        assert_eq!(
            store.next_webhook_in().unwrap(),
            None,
            "the outbox exists and is empty"
        );
        // A queued feed job whose feed was never read is read now.
        let (id, request) = store
            .claim_feed("n", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(
            (id.as_str(), request.feed_url.as_deref()),
            ("feed", Some("https://x.example/f"))
        );
        drop(store);
        // Opening again changes nothing.
        JobStore::open(&database).unwrap();
        assert_eq!(version(&database), JOBS_SCHEMA);
    }

    #[test]
    fn tables_from_a_newer_precis_are_refused() {
        for (database, _dir) in engines("jobs_newer") {
            JobStore::open(&database).unwrap();
            Pool::open(&database)
                .unwrap()
                .with(|c| {
                    c.batch("UPDATE schema_versions SET version = 99 WHERE component = 'jobs'")
                })
                .unwrap();
            let err = JobStore::open(&database).err().unwrap().to_string();
            assert!(err.contains("newer precis"), "{err}");
        }
    }

    #[test]
    fn items_are_claimed_once_renewed_and_taken_over_when_their_lease_ends() {
        for (database, _dir) in engines("jobs_leases") {
            let store = JobStore::open(&database).unwrap();
            let request = JobRequest {
                webhook: Some("https://hooks.example/x".into()),
                ..JobRequest::default()
            };
            let id = new_job(
                &store,
                &request,
                vec![Ok(article("a")), Ok(article("b")), Err("bad".into())],
            );
            let long = Duration::from_secs(60);
            let a = store.claim_items("a", 1, long).unwrap();
            assert_eq!(a.len(), 1, "{database}");
            assert_eq!((a[0].index, a[0].attempts), (0, 1));
            assert_eq!(a[0].article.as_ref().map(|x| x.text.as_str()), Some("a"));
            assert_eq!(store.view(&id).unwrap().unwrap().state, JobState::Running);
            // Node b gets the other item only: a's is leased.
            let b = store.claim_items("b", 5, Duration::ZERO).unwrap();
            assert_eq!(
                b.iter().map(|c| c.index).collect::<Vec<_>>(),
                vec![1],
                "{database}"
            );
            // b's lease (zero) ran out: node c takes the item over; b's result is refused.
            std::thread::sleep(Duration::from_millis(5));
            let c = store.claim_items("c", 5, long).unwrap();
            assert_eq!(
                (c.len(), c[0].index, c[0].attempts),
                (1, 1, 2),
                "{database}"
            );
            assert_eq!(store.finish_item("b", &id, &done(1)).unwrap(), None);
            assert_eq!(store.renew("b", long).unwrap(), vec![]);
            assert_eq!(store.renew("a", long).unwrap(), vec![(id.clone(), 0)]);
            assert_eq!(store.finish_item("a", &id, &done(0)).unwrap(), Some(false));
            assert_eq!(
                store.finish_item("a", &id, &done(0)).unwrap(),
                None,
                "committed once"
            );
            assert_eq!(store.view(&id).unwrap().unwrap().state, JobState::Running);
            assert_eq!(store.finish_item("c", &id, &done(1)).unwrap(), Some(true));
            // The last item ends the job and queues its webhook, at once.
            let view = store.view(&id).unwrap().unwrap();
            assert_eq!(view.state, JobState::Done, "{database}");
            assert_eq!(view.progress, JobProgress { done: 3, total: 3 });
            assert_eq!(store.next_webhook_in().unwrap(), Some(0));
            assert!(store.claim_items("a", 5, long).unwrap().is_empty());
        }
    }

    #[test]
    fn a_cancelled_job_gives_no_more_work_and_its_leases_are_not_renewed() {
        for (database, _dir) in engines("jobs_cancel") {
            let store = JobStore::open(&database).unwrap();
            let id = new_job(
                &store,
                &JobRequest::default(),
                vec![Ok(article("a")), Ok(article("b"))],
            );
            let long = Duration::from_secs(60);
            assert_eq!(store.claim_items("a", 1, long).unwrap().len(), 1);
            assert!(store.end(&id, JobState::Cancelled, None, None).unwrap());
            assert!(
                store.claim_items("b", 5, long).unwrap().is_empty(),
                "{database}"
            );
            assert_eq!(store.renew("a", long).unwrap(), vec![], "{database}");
            assert_eq!(store.settle().unwrap(), 0);
            assert_eq!(store.view(&id).unwrap().unwrap().state, JobState::Cancelled);
        }
    }

    #[test]
    fn a_job_with_nothing_left_to_run_is_settled_as_done() {
        for (database, _dir) in engines("jobs_settle") {
            let store = JobStore::open(&database).unwrap();
            let id = new_job(
                &store,
                &JobRequest::default(),
                vec![Err("unreadable".into())],
            );
            assert_eq!(store.settle().unwrap(), 1, "{database}");
            assert_eq!(store.view(&id).unwrap().unwrap().state, JobState::Done);
            // A feed job waits for its feed.
            let feed = JobRequest {
                feed_url: Some("https://x.example/feed".into()),
                ..JobRequest::default()
            };
            let id = new_job(&store, &feed, Vec::new());
            assert_eq!(store.settle().unwrap(), 0);
            let (claimed, _) = store
                .claim_feed("a", Duration::from_secs(60))
                .unwrap()
                .unwrap();
            assert_eq!(claimed, id);
            assert!(
                store
                    .claim_feed("b", Duration::from_secs(60))
                    .unwrap()
                    .is_none(),
                "leased"
            );
            store.add_feed_items(&id, vec![Ok(article("x"))]).unwrap();
            assert_eq!(
                store
                    .claim_items("b", 5, Duration::from_secs(60))
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    #[test]
    fn the_same_idempotency_key_on_two_nodes_at_once_makes_one_job() {
        for (database, _dir) in engines("jobs_idempotency") {
            let stores: Vec<Arc<JobStore>> = (0..4)
                .map(|_| Arc::new(JobStore::open(&database).unwrap()))
                .collect();
            let made: Vec<Created> = std::thread::scope(|scope| {
                let handles: Vec<_> = stores
                    .iter()
                    .map(|store| {
                        scope.spawn(move || {
                            store
                                .create(
                                    &JobRequest::default(),
                                    vec![Ok(article("a"))],
                                    "k",
                                    Some("key-1"),
                                    10,
                                )
                                .unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let new: Vec<&String> = made
                .iter()
                .filter_map(|c| match c {
                    Created::New(id) => Some(id),
                    _ => None,
                })
                .collect();
            assert_eq!(new.len(), 1, "{database}: {made:?}");
            for c in &made {
                assert!(
                    matches!(c, Created::New(id) | Created::Existing(id) if id == new[0]),
                    "{database}: {made:?}"
                );
            }
        }
    }

    #[test]
    fn a_webhook_call_is_retried_later_then_leaves_the_outbox() {
        for (database, _dir) in engines("jobs_webhook") {
            let store = JobStore::open(&database).unwrap();
            let request = JobRequest {
                webhook: Some("https://hooks.example/x".into()),
                ..JobRequest::default()
            };
            let id = new_job(&store, &request, Vec::new());
            assert!(store
                .end(&id, JobState::Done, None, request.webhook.as_deref())
                .unwrap());
            assert!(
                !store.end(&id, JobState::Cancelled, None, None).unwrap(),
                "it had ended"
            );
            let lease = Duration::from_secs(600);
            let due = store.claim_due_webhooks(4, lease).unwrap();
            assert_eq!(
                due,
                vec![(id.clone(), "https://hooks.example/x".to_string(), 0)],
                "{database}"
            );
            assert!(
                store.claim_due_webhooks(4, lease).unwrap().is_empty(),
                "taken calls are not due"
            );
            store
                .webhook_tried(&id, 1, Some("refused"), Duration::from_secs(3600))
                .unwrap();
            assert!(
                store.claim_due_webhooks(4, lease).unwrap().is_empty(),
                "due in an hour"
            );
            assert!(store.next_webhook_in().unwrap().unwrap() > 3_000_000);
            store.webhook_tried(&id, 2, None, Duration::ZERO).unwrap();
            assert_eq!(store.next_webhook_in().unwrap(), None, "delivered: gone");
            let view = store.view(&id).unwrap().unwrap();
            let webhook = view.webhook.unwrap();
            assert!(webhook.delivered);
            assert_eq!(webhook.attempts, 2);
            // A node that died while calling leaves the call due after its lease.
            let id = new_job(&store, &request, Vec::new());
            store
                .end(&id, JobState::Done, None, request.webhook.as_deref())
                .unwrap();
            assert_eq!(
                store.claim_due_webhooks(4, Duration::ZERO).unwrap().len(),
                1
            );
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(
                store.claim_due_webhooks(4, lease).unwrap().len(),
                1,
                "{database}"
            );
        }
    }

    #[test]
    fn ended_jobs_past_their_retention_are_deleted_with_their_items() {
        for (database, _dir) in engines("jobs_prune") {
            let store = JobStore::open(&database).unwrap();
            let request = JobRequest {
                webhook: Some("https://hooks.example/x".into()),
                ..JobRequest::default()
            };
            let item = || vec![Ok(Article::default()), Err("unreadable".to_string())];
            let mut ids = Vec::new();
            for owner in ["a", "b", "c"] {
                let Created::New(id) = store.create(&request, item(), owner, None, 8).unwrap()
                else {
                    panic!("not created");
                };
                ids.push(id);
            }
            // Old: one done, one still running; new: one done.
            store
                .end(&ids[0], JobState::Done, None, request.webhook.as_deref())
                .unwrap();
            store.claim_items("n", 5, Duration::from_secs(60)).unwrap();
            store.end(&ids[2], JobState::Done, None, None).unwrap();
            let params = [ids[0].as_str().into(), ids[1].as_str().into()];
            store
                .sql(move |c| {
                    c.execute(
                        "UPDATE jobs SET created = created - 40 * 86400 WHERE id IN ($1, $2)",
                        &params,
                    )
                })
                .unwrap();
            let month = Duration::from_secs(30 * 86_400);
            assert_eq!(store.prune(month).unwrap(), 1, "{database}");
            assert!(store.view(&ids[0]).unwrap().is_none());
            assert!(store.view(&ids[1]).unwrap().is_some(), "running: kept");
            assert!(store.view(&ids[2]).unwrap().is_some(), "recent: kept");
            let params = [ids[0].as_str().into()];
            let orphans = store
                .sql(move |c| {
                    c.one(
                        "SELECT (SELECT COUNT(*) FROM job_items WHERE job = $1)
                              + (SELECT COUNT(*) FROM webhook_outbox WHERE job = $1)",
                        &params,
                    )
                })
                .unwrap();
            assert_eq!(orphans.int(), Some(0));
            assert_eq!(store.prune(month).unwrap(), 0);
        }
    }

    #[test]
    fn a_caller_past_the_cap_gets_no_new_job() {
        for (database, _dir) in engines("jobs_cap") {
            let store = JobStore::open(&database).unwrap();
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
}
