//! The batch-job tables (jobs, items, the webhook outbox, idempotency
//! keys), written once for both engines ([`Sql`]): an SQLite file on one
//! machine, or PostgreSQL shared by every replica and worker.
//!
//! **Leases.** Work is claimed, not assigned: a node takes items with a
//! lease (its id and an expiry), renews it while it works, and commits an
//! item's outcome only while it still holds the lease, so each item is
//! committed once. An item whose lease ran out (its node died) is taken by
//! any node; after [`MAX_ITEM_ATTEMPTS`] claims it fails instead, so an
//! article that kills its node cannot kill them all. On PostgreSQL claims
//! skip rows another node has locked (`FOR UPDATE SKIP LOCKED`); SQLite
//! takes its write lock for the whole claim. Reading a job's feed is
//! claimed the same way, and so is each webhook call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{render_output, WEBHOOK_ATTEMPTS};
use super::{Created, JobItem, JobProgress, JobRequest, JobState, JobView, WebhookState};
use precis_backend::Cause;
use precis_core::database::{Database, Dialect, Pool, Sql, Value};
use precis_core::error::{ErrorCode, ErrorDetail};
use precis_core::task::{Article, Task};

/// Claims of one item before it fails without running again.
pub const MAX_ITEM_ATTEMPTS: i64 = 3;

/// The job tables' migrations, in order (step `i` brings the schema to
/// `i + 1`), in SQL both engines read. Kept in `schema_versions` under
/// `jobs`, since the cache owns SQLite's `user_version`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE jobs (
         id TEXT PRIMARY KEY,
         idempotency_key TEXT UNIQUE,
         request TEXT NOT NULL,
         state TEXT NOT NULL,
         error TEXT,
         created BIGINT NOT NULL,
         webhook_attempts BIGINT NOT NULL DEFAULT 0,
         webhook_delivered BIGINT NOT NULL DEFAULT 0,
         webhook_error TEXT
     );
     CREATE TABLE job_items (
         job TEXT NOT NULL,
         idx BIGINT NOT NULL,
         article TEXT,
         outcome TEXT,
         PRIMARY KEY (job, idx)
     );",
    // A webhook call waiting: its job, URL, tries so far, and when the
    // next one is due (ms since the epoch).
    "CREATE TABLE webhook_outbox (
         job TEXT PRIMARY KEY,
         url TEXT NOT NULL,
         attempts BIGINT NOT NULL DEFAULT 0,
         due_ms BIGINT NOT NULL
     );",
    // Whose job it is (a digest of the caller's API key; empty when the
    // server has no keys), and a digest of the request, so an idempotency
    // key is the caller's own and tells a retry from a different request.
    // Keys are stored scoped: `owner/key`.
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
     ALTER TABLE jobs ADD COLUMN request_hash TEXT;
     UPDATE jobs SET idempotency_key = '/' || idempotency_key
         WHERE idempotency_key IS NOT NULL;",
    // Leases: who works on an item and until when (ms), and how often it
    // was claimed; whether a job's items are still to be read from its
    // feed, and who reads it. A webhook call taken by a node is due again
    // when its lease ends (it used to be marked taken for ever).
    "ALTER TABLE job_items ADD COLUMN lease_owner TEXT;
     ALTER TABLE job_items ADD COLUMN lease_until BIGINT;
     ALTER TABLE job_items ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN feed_pending BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
     ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
     UPDATE jobs SET feed_pending = 1 WHERE state IN ('queued', 'running')
         AND NOT EXISTS (SELECT 1 FROM job_items WHERE job_items.job = jobs.id);
     UPDATE webhook_outbox SET due_ms = 0 WHERE due_ms = 9223372036854775807;
     CREATE INDEX job_items_pending ON job_items (job) WHERE outcome IS NULL;
     CREATE INDEX jobs_active ON jobs (created) WHERE state IN ('queued', 'running');",
];

/// The job tables' schema version this code writes.
pub const JOBS_SCHEMA: i64 = MIGRATIONS.len() as i64;

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
#[error("job store {database}: {source}")]
pub struct JobStoreError {
    pub(crate) database: String,
    #[source]
    pub(crate) source: Cause,
}

/// Jobs in the database (see the module's documentation).
pub struct JobStore {
    pool: Pool,
}

/// An item a node has claimed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claimed {
    pub job: String,
    pub index: usize,
    /// The article; `None` when it could not be read back.
    pub article: Option<Article>,
    /// Claims so far, this one included.
    pub attempts: i64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now() -> i64 {
    now_ms() / 1000
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Brings the job tables to [`JOBS_SCHEMA`]; refused when a newer precis
/// wrote them. An SQLite file whose tables predate the version record is
/// at version 1.
fn migrate(c: &mut dyn Sql) -> Result<(), Cause> {
    if c.dialect() == Dialect::Sqlite {
        c.batch(
            "CREATE TABLE IF NOT EXISTS schema_versions (
                 component TEXT PRIMARY KEY,
                 version BIGINT NOT NULL
             )",
        )?;
        let recorded = c.one(
            "SELECT version FROM schema_versions WHERE component = 'jobs'",
            &[],
        )?;
        let tables = c
            .one(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
                &[],
            )?
            .int();
        if recorded == Value::Null && tables > Some(0) {
            c.execute(
                "INSERT INTO schema_versions (component, version) VALUES ('jobs', 1)",
                &[],
            )?;
        }
    }
    precis_core::database::migrate(c, "jobs", MIGRATIONS)
}

impl JobStore {
    /// Opens the job tables in `database` (created when missing), migrated
    /// to this version.
    pub fn open(database: &Database) -> Result<Self, JobStoreError> {
        let pool = Pool::open(database)
            .and_then(|pool| {
                pool.with(migrate)?;
                Ok(pool)
            })
            .map_err(|source| JobStoreError {
                database: database.to_string(),
                source,
            })?;
        Ok(Self { pool })
    }

    /// Whether the tables are shared by several nodes (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.pool.database(), Database::Postgres(_))
    }

    /// Runs `f` on a connection (blocking this thread: call from
    /// synchronous code or `spawn_blocking`).
    pub(crate) fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, Cause> + Send + 'static,
    ) -> Result<T, JobStoreError> {
        self.pool.with(f).map_err(|source| JobStoreError {
            database: self.pool.database().to_string(),
            source,
        })
    }

    /// Accepts `owner`'s job: its request and its items (an item that
    /// could not be read carries its error). An idempotency key is the
    /// owner's own: used before with the same request, the job made then
    /// is given back; with another request, nothing is made. Nor is
    /// anything made while the owner has `max_active` jobs queued or
    /// running. Two nodes given the same key at once make one job.
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
        let feed_pending = i64::from(request.feed_url.is_some() && request.items.is_none());
        let owner = owner.to_string();
        self.sql(move |c| {
            c.transaction(|tx| {
                let existing = |tx: &mut dyn Sql, key: &str| -> Result<Option<Created>, Cause> {
                    let row = tx.row(
                        "SELECT id, request_hash FROM jobs WHERE idempotency_key = $1",
                        &[key.into()],
                    )?;
                    Ok(row.map(|r| match (r[0].text(), r[1].text()) {
                        // A job from before requests were hashed is taken as the same.
                        (Some(id), None) => Created::Existing(id),
                        (Some(id), Some(hash)) if hash == request_hash => Created::Existing(id),
                        _ => Created::KeyReused,
                    }))
                };
                if let Some(key) = &scoped {
                    if let Some(found) = existing(tx, key)? {
                        return Ok(found);
                    }
                }
                let active = tx
                    .one(
                        "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND state IN ('queued', 'running')",
                        &[owner.as_str().into()],
                    )?
                    .int()
                    .unwrap_or(0) as usize;
                if active >= max_active {
                    return Ok(Created::TooMany(active));
                }
                let inserted = tx.execute(
                    "INSERT INTO jobs (id, idempotency_key, request, state, created, owner, request_hash, feed_pending)
                     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7)
                     ON CONFLICT (idempotency_key) DO NOTHING",
                    &[
                        id.as_str().into(),
                        scoped.clone().into(),
                        request_json.as_str().into(),
                        now().into(),
                        owner.as_str().into(),
                        request_hash.as_str().into(),
                        feed_pending.into(),
                    ],
                )?;
                if inserted == 0 {
                    // Another node made the job for this key meanwhile.
                    let key = scoped.as_deref().unwrap_or_default();
                    return Ok(existing(tx, key)?.unwrap_or(Created::KeyReused));
                }
                insert_items(tx, &id, items)?;
                Ok(Created::New(id.clone()))
            })
        })
    }

    /// Deletes the jobs that have ended and were created more than
    /// `older_than` ago, with their items and webhook calls; gives how many.
    pub fn prune(&self, older_than: Duration) -> Result<usize, JobStoreError> {
        let cutoff = now().saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
        self.sql(move |c| {
            c.transaction(|tx| {
                const EXPIRED: &str = "SELECT id FROM jobs
                     WHERE state IN ('done', 'failed', 'cancelled') AND created < $1";
                let cutoff = [cutoff.into()];
                tx.execute(
                    &format!("DELETE FROM job_items WHERE job IN ({EXPIRED})"),
                    &cutoff,
                )?;
                tx.execute(
                    &format!("DELETE FROM webhook_outbox WHERE job IN ({EXPIRED})"),
                    &cutoff,
                )?;
                let n = tx.execute(
                    &format!("DELETE FROM jobs WHERE id IN ({EXPIRED})"),
                    &cutoff,
                )?;
                Ok(n as usize)
            })
        })
    }

    /// Whether job `id` exists and is `owner`'s.
    pub fn owned_by(&self, id: &str, owner: &str) -> Result<bool, JobStoreError> {
        let params = [id.into(), owner.into()];
        self.sql(move |c| {
            Ok(c.one(
                "SELECT COUNT(*) FROM jobs WHERE id = $1 AND owner = $2",
                &params,
            )?
            .int()
                > Some(0))
        })
    }

    /// The request of job `id`.
    pub(crate) fn request(&self, id: &str) -> Result<Option<JobRequest>, JobStoreError> {
        let params = [id.into()];
        let text = self.sql(move |c| {
            Ok(c.one("SELECT request FROM jobs WHERE id = $1", &params)?
                .text())
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Claims the oldest job whose items are still to be read from its
    /// feed, for `lease`; gives its id and request.
    pub(crate) fn claim_feed(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Option<(String, JobRequest)>, JobStoreError> {
        let node = node.to_string();
        let row = self.sql(move |c| {
            let lock = skip_locked(c, "");
            let now = now_ms();
            c.transaction(|tx| {
                tx.row(
                    &format!(
                        "UPDATE jobs SET lease_owner = $1, lease_until = $2, state = 'running'
                         WHERE id = (SELECT id FROM jobs
                             WHERE feed_pending = 1 AND state IN ('queued', 'running')
                               AND (lease_until IS NULL OR lease_until < $3)
                             ORDER BY created, id LIMIT 1 {lock})
                         RETURNING id, request"
                    ),
                    &[node.into(), (now + ms(lease)).into(), now.into()],
                )
            })
        })?;
        Ok(row.and_then(|r| {
            let request = serde_json::from_str(&r[1].text()?).ok()?;
            Some((r[0].text()?, request))
        }))
    }

    /// Adds the items read from job `id`'s feed (its feed is then read).
    pub(crate) fn add_feed_items(
        &self,
        id: &str,
        items: Vec<Result<Article, String>>,
    ) -> Result<(), JobStoreError> {
        let id = id.to_string();
        self.sql(move |c| {
            c.transaction(|tx| {
                tx.execute(
                    "UPDATE jobs SET feed_pending = 0, lease_owner = NULL, lease_until = NULL WHERE id = $1",
                    &[id.as_str().into()],
                )?;
                insert_items(tx, &id, items)
            })
        })
    }

    /// Claims up to `limit` items still to run, oldest job first, for
    /// `lease`, marking their jobs running. Items of jobs that ended are
    /// never claimed.
    pub(crate) fn claim_items(
        &self,
        node: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, JobStoreError> {
        let node = node.to_string();
        let rows = self.sql(move |c| {
            let lock = skip_locked(c, "OF i");
            let now = now_ms();
            c.transaction(|tx| {
                let rows = tx.query(
                    &format!(
                        "UPDATE job_items SET lease_owner = $1, lease_until = $2, attempts = attempts + 1
                         WHERE (job, idx) IN (
                             SELECT i.job, i.idx FROM job_items i JOIN jobs j ON j.id = i.job
                             WHERE j.state IN ('queued', 'running') AND i.outcome IS NULL
                               AND (i.lease_until IS NULL OR i.lease_until < $3)
                             ORDER BY j.created, j.id, i.idx LIMIT $4 {lock})
                         RETURNING job, idx, article, attempts"
                    ),
                    &[
                        node.into(),
                        (now + ms(lease)).into(),
                        now.into(),
                        (limit as i64).into(),
                    ],
                )?;
                let mut jobs: Vec<String> = rows.iter().filter_map(|r| r[0].text()).collect();
                jobs.sort();
                jobs.dedup();
                for job in jobs {
                    tx.execute(
                        "UPDATE jobs SET state = 'running' WHERE id = $1 AND state = 'queued'",
                        &[job.into()],
                    )?;
                }
                Ok(rows)
            })
        })?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .filter_map(|r| {
                Some(Claimed {
                    job: r[0].text()?,
                    index: r[1].int()? as usize,
                    article: r[2].text().and_then(|a| serde_json::from_str(&a).ok()),
                    attempts: r[3].int()?,
                })
            })
            .collect();
        // RETURNING gives no order: oldest job, then item order, as claimed.
        claimed.sort_by(|a, b| (a.job.as_str(), a.index).cmp(&(b.job.as_str(), b.index)));
        Ok(claimed)
    }

    /// Extends `node`'s leases on its items still to finish to `lease` from
    /// now; gives the items it still holds (an item missing was lost: its
    /// job ended, or its lease ran out and another node took it).
    pub(crate) fn renew(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Vec<(String, usize)>, JobStoreError> {
        let node = node.to_string();
        let rows = self.sql(move |c| {
            c.query(
                "UPDATE job_items SET lease_until = $2
                 WHERE lease_owner = $1 AND outcome IS NULL
                   AND job IN (SELECT id FROM jobs WHERE state IN ('queued', 'running'))
                 RETURNING job, idx",
                &[node.into(), (now_ms() + ms(lease)).into()],
            )
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r[0].text()?, r[1].int()? as usize)))
            .collect())
    }

    /// Lets go of every lease (items and feeds) that no node may hold any
    /// more: on one machine, those of a server that stopped.
    pub(crate) fn release_all_leases(&self) -> Result<(), JobStoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE job_items SET lease_owner = NULL, lease_until = NULL
                 WHERE outcome IS NULL AND lease_owner IS NOT NULL",
                &[],
            )?;
            c.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
                &[],
            )?;
            Ok(())
        })
    }

    /// Commits `item` of job `id`, when `node` still holds its lease, and
    /// ends the job as done when it was its last item (its webhook, if
    /// any, put in the outbox in the same transaction). Gives whether that
    /// ended the job; `None` when the item was not committed (its lease
    /// was lost, or it has an outcome).
    pub(crate) fn finish_item(
        &self,
        node: &str,
        id: &str,
        item: &JobItem,
    ) -> Result<Option<bool>, JobStoreError> {
        let outcome = serde_json::to_string(item).unwrap_or_default();
        let (node, id, index) = (node.to_string(), id.to_string(), item.index as i64);
        self.sql(move |c| {
            c.transaction(|tx| {
                let committed = tx.execute(
                    "UPDATE job_items SET outcome = $4, lease_owner = NULL, lease_until = NULL
                     WHERE job = $1 AND idx = $2 AND lease_owner = $3 AND outcome IS NULL",
                    &[
                        id.as_str().into(),
                        index.into(),
                        node.into(),
                        outcome.into(),
                    ],
                )? > 0;
                if !committed {
                    return Ok(None);
                }
                Ok(Some(settle(tx, Some(&id))? > 0))
            })
        })
    }

    /// Ends every active job that has nothing left to run (its items all
    /// have outcomes, its feed is read); gives how many.
    pub(crate) fn settle(&self) -> Result<usize, JobStoreError> {
        self.sql(|c| c.transaction(|tx| settle(tx, None)))
    }

    /// Ends a job that is still queued or running: sets its state and, when
    /// it has a webhook, puts the call in the outbox, in one transaction.
    /// False when the job had already ended (nothing changes).
    pub(crate) fn end(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
        webhook: Option<&str>,
    ) -> Result<bool, JobStoreError> {
        let (id, error, webhook) = (
            id.to_string(),
            error.map(str::to_string),
            webhook.map(str::to_string),
        );
        self.sql(move |c| c.transaction(|tx| end(tx, &id, state, error, webhook)))
    }

    /// Takes up to `limit` webhook calls that are due, for `lease` (a node
    /// that dies while calling leaves the call due again after it). Gives
    /// each call's job, URL and tries so far.
    pub(crate) fn claim_due_webhooks(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<(String, String, u32)>, JobStoreError> {
        let rows = self.sql(move |c| {
            let lock = skip_locked(c, "");
            let now = now_ms();
            c.transaction(|tx| {
                tx.query(
                    &format!(
                        "UPDATE webhook_outbox SET due_ms = $3
                         WHERE job IN (SELECT job FROM webhook_outbox WHERE due_ms <= $1
                                       ORDER BY due_ms LIMIT $2 {lock})
                         RETURNING job, url, attempts"
                    ),
                    &[now.into(), (limit as i64).into(), (now + ms(lease)).into()],
                )
            })
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r[0].text()?, r[1].text()?, r[2].int()? as u32)))
            .collect())
    }

    /// Milliseconds until the next webhook call is due (0: one is due now).
    pub(crate) fn next_webhook_in(&self) -> Result<Option<u64>, JobStoreError> {
        let due = self.sql(|c| Ok(c.one("SELECT MIN(due_ms) FROM webhook_outbox", &[])?.int()))?;
        Ok(due.map(|d| d.saturating_sub(now_ms()).max(0) as u64))
    }

    /// Records a webhook try (`attempt` counts from 1): delivered or out of
    /// tries, the call leaves the outbox; else it is due again after
    /// `retry_in`.
    pub(crate) fn webhook_tried(
        &self,
        id: &str,
        attempt: u32,
        error: Option<&str>,
        retry_in: Duration,
    ) -> Result<(), JobStoreError> {
        let delivered = i64::from(error.is_none());
        let (id, error) = (id.to_string(), error.map(str::to_string));
        self.sql(move |c| {
            c.transaction(|tx| {
                tx.execute(
                    "UPDATE jobs SET webhook_attempts = $2, webhook_delivered = $3, webhook_error = $4 WHERE id = $1",
                    &[id.as_str().into(), i64::from(attempt).into(), delivered.into(), error.into()],
                )?;
                if delivered == 1 || attempt >= WEBHOOK_ATTEMPTS {
                    tx.execute("DELETE FROM webhook_outbox WHERE job = $1", &[id.as_str().into()])?;
                } else {
                    tx.execute(
                        "UPDATE webhook_outbox SET attempts = $2, due_ms = $3 WHERE job = $1",
                        &[
                            id.as_str().into(),
                            i64::from(attempt).into(),
                            now_ms().saturating_add(ms(retry_in)).into(),
                        ],
                    )?;
                }
                Ok(())
            })
        })
    }

    /// A job as `GET /v1/jobs/{id}` shows it.
    pub fn view(&self, id: &str) -> Result<Option<JobView>, JobStoreError> {
        let key = id.to_string();
        let found = self.sql(move |c| {
            let Some(row) = c.row(
                "SELECT request, state, error, created, webhook_attempts, webhook_delivered, webhook_error
                 FROM jobs WHERE id = $1",
                &[key.as_str().into()],
            )?
            else {
                return Ok(None);
            };
            let outcomes: Vec<Option<String>> = c
                .query(
                    "SELECT outcome FROM job_items WHERE job = $1 ORDER BY idx",
                    &[key.into()],
                )?
                .into_iter()
                .map(|r| r[0].text())
                .collect();
            Ok(Some((row, outcomes)))
        })?;
        let Some((row, outcomes)) = found else {
            return Ok(None);
        };
        let request: JobRequest = row[0]
            .text()
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default();
        let results: Vec<JobItem> = outcomes
            .iter()
            .flatten()
            .filter_map(|o| serde_json::from_str(o).ok())
            .collect();
        let state = JobState::parse(&row[1].text().unwrap_or_default());
        let output = request
            .format
            .filter(|_| state == JobState::Done)
            .map(|f| render_output(f, &results));
        Ok(Some(JobView {
            id: id.to_string(),
            state,
            task: request.task.unwrap_or(Task::Digest),
            created: row[3].int().unwrap_or(0),
            progress: JobProgress {
                done: results.len(),
                total: outcomes.len(),
            },
            error: row[2].text(),
            results,
            webhook: request.webhook.map(|url| WebhookState {
                url,
                delivered: row[5].int() == Some(1),
                attempts: row[4].int().unwrap_or(0) as u32,
                last_error: row[6].text(),
            }),
            output,
        }))
    }
}

/// The clause that makes a claim's select pass over rows another node has
/// locked (PostgreSQL; `of` names the table, when the select joins);
/// nothing on SQLite, whose write lock covers the whole claim.
fn skip_locked(c: &dyn Sql, of: &str) -> String {
    match c.dialect() {
        Dialect::Postgres => format!("FOR UPDATE {of} SKIP LOCKED"),
        Dialect::Sqlite => String::new(),
    }
}

/// Ends job `id` (see [`JobStore::end`]) inside a transaction.
fn end(
    tx: &mut dyn Sql,
    id: &str,
    state: JobState,
    error: Option<String>,
    webhook: Option<String>,
) -> Result<bool, Cause> {
    let changed = tx.execute(
        "UPDATE jobs SET state = $2, error = $3, lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND state IN ('queued', 'running')",
        &[id.into(), state.name().into(), error.into()],
    )? > 0;
    if changed {
        if let Some(url) = webhook {
            tx.execute(
                "INSERT INTO webhook_outbox (job, url, attempts, due_ms) VALUES ($1, $2, 0, $3)
                 ON CONFLICT (job) DO UPDATE SET url = EXCLUDED.url, attempts = 0, due_ms = EXCLUDED.due_ms",
                &[id.into(), url.into(), now_ms().into()],
            )?;
        }
    }
    Ok(changed)
}

/// Ends as done each active job (job `only`, or all) with nothing left to
/// run; gives how many.
fn settle(tx: &mut dyn Sql, only: Option<&str>) -> Result<usize, Cause> {
    let rows = tx.query(
        "SELECT id, request FROM jobs
         WHERE state IN ('queued', 'running') AND feed_pending = 0
           AND (CAST($1 AS TEXT) IS NULL OR id = CAST($1 AS TEXT))
           AND NOT EXISTS (SELECT 1 FROM job_items WHERE job_items.job = jobs.id AND outcome IS NULL)",
        &[only.into()],
    )?;
    let mut n = 0;
    for row in rows {
        let (Some(id), request) = (row[0].text(), row[1].text()) else {
            continue;
        };
        let webhook = request
            .and_then(|r| serde_json::from_str::<JobRequest>(&r).ok())
            .and_then(|r| r.webhook);
        if end(tx, &id, JobState::Done, None, webhook)? {
            n += 1;
        }
    }
    Ok(n)
}

fn insert_items(
    tx: &mut dyn Sql,
    id: &str,
    items: Vec<Result<Article, String>>,
) -> Result<(), Cause> {
    let start = tx
        .one(
            "SELECT COUNT(*) FROM job_items WHERE job = $1",
            &[id.into()],
        )?
        .int()
        .unwrap_or(0);
    for (k, item) in items.into_iter().enumerate() {
        let index = start + k as i64;
        match item {
            Ok(article) => tx.execute(
                "INSERT INTO job_items (job, idx, article) VALUES ($1, $2, $3)",
                &[
                    id.into(),
                    index.into(),
                    serde_json::to_string(&article).unwrap_or_default().into(),
                ],
            )?,
            Err(message) => {
                let failed = JobItem::failed(
                    index as usize,
                    422,
                    ErrorDetail {
                        code: ErrorCode::InvalidRequest,
                        message,
                    },
                );
                tx.execute(
                    "INSERT INTO job_items (job, idx, outcome) VALUES ($1, $2, $3)",
                    &[
                        id.into(),
                        index.into(),
                        serde_json::to_string(&failed).unwrap_or_default().into(),
                    ],
                )?
            }
        };
    }
    Ok(())
}
