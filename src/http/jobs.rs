//! `POST /v1/jobs`, `GET /v1/jobs/{id}` and `DELETE /v1/jobs/{id}`: batch
//! jobs, worked on in the background and kept in the database (see
//! [`precis_service::jobs`]).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::{ApiError, ErrorCode};
use super::ops::Caller;
use super::{read_body, AppState};
use precis_core::task::{Article, Task};
use precis_service::jobs::{Created, JobQueue, JobRequest, JobStoreError, JobView, MAX_JOB_ITEMS};

/// Seconds a caller with too many jobs is told to wait.
const JOB_RETRY_AFTER_SECS: u64 = 30;

fn queue(state: &AppState) -> Result<&JobQueue, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotReady,
            "batch jobs are off on this server: its database could not be opened (see its log)",
        )
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// Refuses a feed or webhook URL that could never be reached: not
/// http(s), or a literal address the server's rules do not allow (a name
/// is checked against its addresses when it is fetched).
fn web_url(queue: &JobQueue, url: &str, what: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(format!("`{what}` must be an http:// or https:// URL")))?;
    queue
        .fetch_policy()
        .check_url(&parsed)
        .map_err(|e| invalid(format!("`{what}`: {e}")))
}

/// The request's articles (the engine refuses an item it would not run
/// when it comes to it: that item fails, the others go on).
fn check(queue: &JobQueue, request: &JobRequest) -> Result<Vec<Result<Article, String>>, ApiError> {
    if request.task == Some(Task::Translate) && request.to.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::new(
            ErrorCode::NoTargetLanguage,
            "a translate job needs `to`, e.g. [\"ru\", \"hi\"]",
        ));
    }
    if let Some(hook) = &request.webhook {
        web_url(queue, hook, "webhook")?;
    }
    match (&request.items, &request.feed_url) {
        (Some(_), Some(_)) => Err(invalid("give `items` or `feed_url`, not both")),
        (None, None) => Err(invalid("a job needs `items` (articles) or a `feed_url`")),
        (None, Some(url)) => web_url(queue, url, "feed_url").map(|()| Vec::new()),
        (Some(items), None) => {
            if items.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::EmptyBatch,
                    "`items` is empty: give at least one article",
                ));
            }
            if items.len() > MAX_JOB_ITEMS {
                return Err(ApiError::new(
                    ErrorCode::BatchTooLarge,
                    format!(
                        "the job has {} articles; a job takes at most {MAX_JOB_ITEMS}: split it",
                        items.len()
                    ),
                ));
            }
            Ok(items
                .iter()
                .cloned()
                .map(|a| Ok(Article::from(a)))
                .collect())
        }
    }
}

fn answer(status: StatusCode, view: JobView) -> Response {
    let location = format!("/v1/jobs/{}", view.id);
    (status, [(header::LOCATION, location)], Json(view)).into_response()
}

/// Accepts a batch job: articles, or a feed URL whose items are the
/// articles. Answers 202 with the job at once; `GET /v1/jobs/{id}` follows
/// it. With an `Idempotency-Key` header used before, the job made then is
/// answered (200) and nothing new runs.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key gets the same job, once")),
    responses(
        (status = 202, description = "accepted; `Location` names it", body = JobView),
        (status = 200, description = "a job with this Idempotency-Key exists", body = JobView),
        (status = 422, description = "a field is not acceptable (see the code)", body = super::error::ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let owner = owner(caller);
    let queue = queue(&state)?.clone();
    let bytes = read_body(req, &state).await?;
    let request: JobRequest = super::parse_body(&bytes)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| invalid("Idempotency-Key must be 1 to 255 visible characters"))?
                .to_string(),
        ),
        None => None,
    };
    let items = check(&queue, &request)?;
    let store = std::sync::Arc::clone(&queue.store);
    let max_active = queue.max_active_per_caller();
    let created = tokio::task::spawn_blocking(move || {
        store.create(&request, items, &owner, key.as_deref(), max_active)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let (id, created) = match created {
        Created::New(id) => (id, true),
        Created::Existing(id) => (id, false),
        Created::KeyReused => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used before for a different request: use a new key for a new job",
            ))
        }
        Created::TooMany(active) => {
            let mut refused = ApiError::new(
                ErrorCode::QueueFull,
                format!(
                    "you have {active} jobs queued or running, the most this server keeps per API key (--max-jobs-per-key): wait for one to end, or cancel one"
                ),
            );
            refused.retry_after = Some(JOB_RETRY_AFTER_SECS);
            return Err(refused);
        }
    };
    if created {
        queue.submit(&id);
    }
    let view = queue
        .store
        .view(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal(format!("job {id} was stored but cannot be read")))?;
    Ok(answer(
        if created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        view,
    ))
}

/// A job: its state, progress, and the results of its finished items.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the job's id")),
    responses(
        (status = 200, description = "the job", body = JobView),
        (status = 404, description = "no such job", body = super::error::ErrorBody),
    ))]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    on_own_job(&state, caller, id, |queue, job| queue.store.view(job)).await
}

/// Cancels a job: a queued one never starts, a running one stops its items
/// in flight; the items finished before are kept. A job that had ended is
/// shown unchanged.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the job's id")),
    responses(
        (status = 200, description = "the job, `cancelled` unless it had ended", body = JobView),
        (status = 404, description = "no such job", body = super::error::ErrorBody),
    ))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    on_own_job(&state, caller, id, |queue, job| queue.cancel(job)).await
}

/// Answers with what `f` gives for job `id` when it is the caller's (another
/// caller's job is answered as one that does not exist); run off the async
/// threads, since the store waits for its database.
async fn on_own_job(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    id: String,
    f: impl FnOnce(&JobQueue, &str) -> Result<Option<JobView>, JobStoreError> + Send + 'static,
) -> Result<Response, ApiError> {
    let queue = queue(state)?.clone();
    let owner = owner(caller);
    let job = id.clone();
    let view = tokio::task::spawn_blocking(move || match queue.store.owned_by(&job, &owner)? {
        true => f(&queue, &job),
        false => Ok(None),
    })
    .await
    .map_err(ApiError::internal)?;
    answer_view(&id, view)
}

/// The scope a caller's jobs are kept in (see [`Caller`]).
fn owner(caller: Option<Extension<Caller>>) -> String {
    caller.map(|Extension(c)| c.0).unwrap_or_default()
}

fn answer_view(
    id: &str,
    view: Result<Option<JobView>, JobStoreError>,
) -> Result<Response, ApiError> {
    match view {
        Ok(Some(view)) => Ok(answer(StatusCode::OK, view)),
        Ok(None) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no job `{id}`: it does not exist, belongs to another API key, or was deleted after its retention"),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}
