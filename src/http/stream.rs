//! Streaming answers: a task route asked with `"stream": true` (or
//! `Accept: text/event-stream`) answers with Server-Sent Events as the work
//! goes, instead of one JSON body at the end.
//!
//! Events, each a JSON object in `data`:
//! - `summary`: summary text as the model writes it ([`SummaryTextEvent`]);
//! - `paragraph`: a translated headline or paragraph ([`ParagraphEvent`]);
//! - `progress`: steps done of the task's total ([`ProgressEvent`]);
//! - then exactly one of `result` (the same object a plain request gets) or
//!   `error` ([`StreamError`]), and the stream ends.
//!
//! Everything that can be refused before work starts (the body, limits,
//! the queue, an empty text, a language no model writes) is refused as
//! usual, with a 4xx / 429 / 503 JSON answer; once the stream has started a
//! failure is its `error` event. A client that
//! closes the stream cancels the work and frees its slot.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::{ApiError, ErrorDetail};
use super::{run_call, TaskCall};
use precis_core::admission::Slot;
use precis_core::engine::Engine;
use precis_core::task::{TaskEvent, TranslationSource};

/// Whether the client asked for a stream: the body's `stream`, else its
/// `Accept` header naming `text/event-stream`.
pub(super) fn wanted(headers: &HeaderMap, stream: Option<bool>) -> bool {
    stream.unwrap_or_else(|| {
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
    })
}

/// `summary` event: new summary text. The model's raw output, a token at a
/// time (a beam-search summarizer's whole text at once); the `result`
/// event's summary is the tidied text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"language": "en", "text": " ministers"}))]
pub struct SummaryTextEvent<'a> {
    /// Language of the summary.
    pub language: &'a str,
    /// The new text, to append to what came before.
    pub text: &'a str,
}

/// `paragraph` event: a translated headline or paragraph, final.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"language": "ru", "source": "article", "part": "paragraph", "index": 0, "text": "Министры иностранных дел G20 встретились в Йоханнесбурге."}))]
pub struct ParagraphEvent<'a> {
    /// Target language.
    pub language: &'a str,
    /// What is being translated: the summary or the whole article.
    pub source: TranslationSource,
    /// `headline` or `paragraph`.
    pub part: &'static str,
    /// The paragraph's position (absent for the headline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The translation.
    pub text: &'a str,
}

/// `progress` event: steps (the summary, each translated paragraph) done.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"done": 2, "total": 5}))]
pub struct ProgressEvent {
    /// Steps finished.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// `error` event: why the work failed after the stream started, with the
/// status a plain request would have got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": 504, "error": {"code": "timeout", "message": "the request took longer than this server allows (--timeout-secs); its work was cancelled: send a shorter text or raise the limit"}}))]
pub struct StreamError {
    /// The HTTP status the error stands for.
    pub status: u16,
    /// The error.
    pub error: ErrorDetail,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One message to the client; `last` ends the stream.
struct Message {
    event: Event,
    last: bool,
}

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name))
}

fn task_event(e: TaskEvent<'_>) -> Event {
    match e {
        TaskEvent::Progress(p) => event(
            "progress",
            &ProgressEvent {
                done: p.done,
                total: p.total,
            },
        ),
        TaskEvent::SummaryText { language, text } => {
            event("summary", &SummaryTextEvent { language, text })
        }
        TaskEvent::Paragraph {
            language,
            source,
            index,
            text,
        } => event(
            "paragraph",
            &ParagraphEvent {
                language,
                source,
                part: if index.is_some() {
                    "paragraph"
                } else {
                    "headline"
                },
                index,
                text,
            },
        ),
    }
}

fn error_event(e: &ApiError) -> Event {
    // The answer's status went out with the stream's start: the middleware
    // cannot see this failure, so its cause is logged here.
    if let Some(cause) = &e.cause {
        tracing::error!("{cause}");
    }
    event(
        "error",
        &StreamError {
            status: e.code.status(),
            error: e.detail(),
        },
    )
}

/// Runs an admitted `call` and answers with its events as they come (see
/// the module's documentation), once the checks a stream cannot report
/// with a status have passed. `slot` travels with the work.
pub(super) async fn respond(
    engine: Arc<Engine>,
    call: TaskCall,
    deadline: Instant,
    slot: Arc<Slot>,
) -> Result<Response, ApiError> {
    let (engine, call) = tokio::task::spawn_blocking(move || {
        let checked = engine.check(&call.request);
        checked.map(|()| (engine, call))
    })
    .await
    .map_err(|e| ApiError::internal(format!("check thread failed: {e}")))??;
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    let events = tx.clone();
    let send = move |e: TaskEvent<'_>| {
        let _ = events.send(Message {
            event: task_event(e),
            last: false,
        });
    };
    // The stream holds the driver: a client that goes away drops the
    // stream, which aborts the driver, whose work is then cancelled.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let last = match run_call(engine, call, deadline, slot, send).await {
            Ok(result) => event("result", &result),
            Err(e) => error_event(&e),
        };
        let _ = tx.send(Message {
            event: last,
            last: true,
        });
    }));
    let stream = futures_util::stream::unfold(Some((rx, driver)), |state| async move {
        let (mut rx, driver) = state?;
        let message = rx.recv().await?;
        let next = (!message.last).then_some((rx, driver));
        Some((Ok::<_, Infallible>(message.event), next))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
