//! The model worker: one thread owns a loaded model and runs what callers
//! send it, batching the requests queued together; a panic inside the model
//! fails that batch's callers only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::cache::{CacheKey, ResultCache};
use crate::task::{CancelToken, TextModel, TextSink};
use precis_backend::{
    Arrivals, Backend, BackendError, Cached, FinishReason, Flow, Generation, GenerationRequest,
    ModelInfo, TokenCounter,
};

/// One caller's generation requests, sent to the model worker together; it
/// joins the batches already running.
enum WorkerBatch {
    Generate {
        requests: Vec<GenerationRequest>,
        cancel: CancelToken,
        /// Whether the caller wants the text as it is produced.
        stream: bool,
        reply: mpsc::Sender<Reply>,
    },
}

/// What the worker sends back for a batch.
enum Reply {
    /// New text of the batch's request `usize` (streaming batches only).
    Text(usize, String),
    /// The batch's results, in order; nothing follows.
    Done(Vec<Result<Generation, BackendError>>),
}

/// A loaded model: its worker thread and the channel to it, and the result
/// cache it consults first.
pub struct ModelHandle {
    pub(super) info: ModelInfo,
    counter: TokenCounter,
    tx: Mutex<mpsc::Sender<WorkerBatch>>,
    cache: Option<(Arc<ResultCache>, String)>,
}

impl ModelHandle {
    /// Starts a worker thread that owns `backend`.
    pub fn spawn(backend: Box<dyn Backend>) -> Arc<Self> {
        Self::spawn_cached(backend, None)
    }

    /// Starts a worker thread that owns `backend`; generations are looked up
    /// in and added to `cache` (with the model's file fingerprint) when given.
    pub(crate) fn spawn_cached(
        backend: Box<dyn Backend>,
        cache: Option<(Arc<ResultCache>, String)>,
    ) -> Arc<Self> {
        let info = backend.info().clone();
        let counter = backend.token_counter();
        let (tx, rx) = mpsc::channel::<WorkerBatch>();
        let name = format!("model-{}", info.id);
        let spawned = thread::Builder::new()
            .name(name)
            .spawn(move || worker(backend, rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start a model worker thread: {e}");
        }
        Arc::new(Self {
            info,
            counter,
            tx: Mutex::new(tx),
            cache,
        })
    }
}

/// Most requests the worker runs at once: a batch that arrives while this
/// many run waits for some to finish.
pub(crate) const MAX_BATCH_REQUESTS: usize = 16;

/// The worker loop: waits for a batch, then runs it with every batch that
/// arrives while it runs ([`Backend::generate_joining`]: on the CPU decoder
/// a request joins the running sequences at the next step); each batch gets
/// its results as soon as its last request is finished. A panic in the
/// model fails only the batches it stopped, each tried again alone first.
fn worker(mut backend: Box<dyn Backend>, rx: mpsc::Receiver<WorkerBatch>) {
    while let Ok(first) = rx.recv() {
        let mut run = Run::new(first, &rx);
        let outcome = catch_unwind(AssertUnwindSafe(|| backend.generate_joining(&mut run)));
        count_generated(backend.as_ref(), run.generated);
        if outcome.is_err() {
            tracing::error!(model = %backend.info().id, "the model panicked; the batches it was running are tried again one by one");
            for joined in run.unfinished() {
                rerun_alone(backend.as_mut(), joined);
            }
        }
    }
}

fn count_generated(backend: &dyn Backend, tokens: usize) {
    metrics::counter!("precis_tokens_generated_total", "model" => backend.info().id.clone())
        .increment(tokens as u64);
}

/// A batch in the running set, with the results of its requests so far.
struct Joined {
    batch: WorkerBatch,
    results: Vec<Option<Result<Generation, BackendError>>>,
    /// Per request, the bytes of text streamed to the caller.
    streamed: Vec<usize>,
    /// Whether its results have gone back.
    answered: bool,
}

/// The batches the worker is running, as the backend's [`Arrivals`]:
/// waiting batches join while fewer than [`MAX_BATCH_REQUESTS`] requests
/// run; request number `i` is `owners[i]`.
struct Run<'a> {
    rx: &'a mpsc::Receiver<WorkerBatch>,
    first: Option<WorkerBatch>,
    joined: Vec<Joined>,
    /// Per request: its batch in `joined` and its index there.
    owners: Vec<(usize, usize)>,
    running: usize,
    generated: usize,
}

impl<'a> Run<'a> {
    fn new(first: WorkerBatch, rx: &'a mpsc::Receiver<WorkerBatch>) -> Self {
        Self {
            rx,
            first: Some(first),
            joined: Vec::new(),
            owners: Vec::new(),
            running: 0,
            generated: 0,
        }
    }

    /// The batches whose results have not gone back (after a panic).
    fn unfinished(self) -> impl Iterator<Item = Joined> {
        self.joined.into_iter().filter(|j| !j.answered)
    }
}

impl Arrivals for Run<'_> {
    fn join(&mut self) -> Vec<(usize, GenerationRequest)> {
        let mut requests = Vec::new();
        while self.running < MAX_BATCH_REQUESTS {
            let Some(batch) = self.first.take().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            let WorkerBatch::Generate {
                requests: reqs,
                cancel,
                reply,
                ..
            } = &batch;
            if cancel.is_cancelled() {
                let _ = reply.send(Reply::Done(Vec::new()));
                continue;
            }
            let j = self.joined.len();
            requests.extend(
                (reqs.iter().cloned().enumerate()).map(|(k, r)| (self.owners.len() + k, r)),
            );
            self.owners.extend((0..reqs.len()).map(|k| (j, k)));
            self.running += reqs.len();
            let empty = reqs.is_empty();
            self.joined.push(Joined {
                results: (0..reqs.len()).map(|_| None).collect(),
                streamed: vec![0; reqs.len()],
                batch,
                answered: empty,
            });
            if empty {
                let WorkerBatch::Generate { reply, .. } = &self.joined[j].batch;
                let _ = reply.send(Reply::Done(Vec::new()));
            }
        }
        requests
    }

    fn text(&mut self, i: usize, piece: &str) -> Flow {
        let (j, k) = self.owners[i];
        let joined = &mut self.joined[j];
        joined.streamed[k] += joined.batch.send_text(k, piece);
        joined.batch.flow()
    }

    fn done(&mut self, i: usize, result: Result<Generation, BackendError>) {
        let (j, k) = self.owners[i];
        if let Ok(g) = &result {
            self.generated += g.generated_tokens;
        }
        self.running -= 1;
        let joined = &mut self.joined[j];
        joined.results[k] = Some(result);
        if joined.results.iter().all(Option::is_some) {
            // The batch is finished: its caller may go on (or may have gone).
            let results = joined
                .results
                .iter_mut()
                .map(|r| r.take().expect("checked"))
                .collect();
            let WorkerBatch::Generate { reply, .. } = &joined.batch;
            let _ = reply.send(Reply::Done(results));
            joined.answered = true;
        }
    }
}

/// Runs the unfinished requests of one batch on their own after a panic
/// stopped the run they were in (the finished ones keep their results);
/// they fail if the model panics again. Their text is what it would have
/// been in the run (a sequence writes the same alone), so what was already
/// streamed is not sent again.
fn rerun_alone(backend: &mut dyn Backend, joined: Joined) {
    let Joined {
        batch,
        mut results,
        streamed,
        ..
    } = joined;
    let WorkerBatch::Generate { requests, .. } = &batch;
    let pending: Vec<usize> = (0..results.len())
        .filter(|&k| results[k].is_none())
        .collect();
    let rerun: Vec<GenerationRequest> = pending.iter().map(|&k| requests[k].clone()).collect();
    let mut written = vec![0; pending.len()];
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        backend.generate(&rerun, &mut |r, piece| {
            let k = pending[r];
            let before = written[r];
            written[r] += piece.len();
            let new = streamed[k].saturating_sub(before);
            if let Some(rest) = piece.get(new.min(piece.len())..) {
                batch.send_text(k, rest);
            }
            batch.flow()
        })
    }));
    let rerun_results = outcome.unwrap_or_else(|_| {
        tracing::error!(model = %backend.info().id, "the model panicked again on a batch run alone; its requests fail");
        (0..pending.len())
            .map(|_| {
                Err(BackendError::Runtime(
                    "the model crashed on this input".into(),
                ))
            })
            .collect()
    });
    let generated = (rerun_results.iter().filter_map(|r| r.as_ref().ok()))
        .map(|g| g.generated_tokens)
        .sum();
    count_generated(backend, generated);
    for (k, result) in pending.into_iter().zip(rerun_results) {
        results[k] = Some(result);
    }
    let results = (results.into_iter())
        .map(|r| {
            r.unwrap_or_else(|| Err(BackendError::Runtime("the model returned no result".into())))
        })
        .collect();
    let WorkerBatch::Generate { reply, .. } = &batch;
    let _ = reply.send(Reply::Done(results));
}

impl WorkerBatch {
    /// Sends new text of request `k` when the caller streams; the bytes sent.
    fn send_text(&self, k: usize, piece: &str) -> usize {
        let WorkerBatch::Generate { stream, reply, .. } = self;
        if !*stream || piece.is_empty() {
            return 0;
        }
        let _ = reply.send(Reply::Text(k, piece.to_string()));
        piece.len()
    }

    /// Whether the batch's requests go on.
    fn flow(&self) -> Flow {
        let WorkerBatch::Generate { cancel, .. } = self;
        if cancel.is_cancelled() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

impl TextModel for ModelHandle {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, text: &str) -> Result<usize, BackendError> {
        (self.counter)(text)
    }

    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
        cancel: &CancelToken,
        mut on_text: Option<TextSink<'_>>,
    ) -> Vec<Result<Generation, BackendError>> {
        let Some((cache, fingerprint)) = &self.cache else {
            return self.run_on_worker(requests, cancel, on_text);
        };
        // Hits are answered here; the misses go to the model, and each one
        // finished is stored at once (a run killed later keeps it).
        let keys: Vec<CacheKey> = requests
            .iter()
            .map(|r| CacheKey::new(&self.info, fingerprint, r))
            .collect();
        let mut results: Vec<Option<Result<Generation, BackendError>>> = Vec::new();
        let mut missing = Vec::new();
        let mut to_run = Vec::new();
        for (i, (request, key)) in requests.into_iter().zip(&keys).enumerate() {
            match cache.get(key) {
                Some(mut g) => {
                    g.cache = Cached::Hit;
                    if let Some(f) = on_text.as_mut() {
                        f(i, &g.text);
                    }
                    results.push(Some(Ok(g)));
                }
                None => {
                    results.push(None);
                    missing.push(i);
                    to_run.push(request);
                }
            }
        }
        let model = self.info.id.clone();
        metrics::counter!("precis_cache_hits_total", "model" => model.clone())
            .increment((keys.len() - missing.len()) as u64);
        metrics::counter!("precis_cache_misses_total", "model" => model)
            .increment(missing.len() as u64);
        if !missing.is_empty() {
            // The worker sends text back only when someone takes it.
            let out = match on_text {
                Some(f) => {
                    let mut sink = |k: usize, piece: &str| f(missing[k], piece);
                    self.run_on_worker(to_run, cancel, Some(&mut sink))
                }
                None => self.run_on_worker(to_run, cancel, None),
            };
            for (k, mut r) in out.into_iter().enumerate() {
                if let Ok(g) = &mut r {
                    g.cache = Cached::Miss;
                    if g.finish != FinishReason::Cancelled && !cancel.is_cancelled() {
                        cache.put(&keys[missing[k]], &self.info.id, g);
                    }
                }
                results[missing[k]] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(BackendError::Runtime("the model returned no result".into()))
                })
            })
            .collect()
    }
}

impl ModelHandle {
    /// Sends `requests` to the model's worker and waits for the results,
    /// handing text to `on_text` as it comes.
    fn run_on_worker(
        &self,
        requests: Vec<GenerationRequest>,
        cancel: &CancelToken,
        mut on_text: Option<TextSink<'_>>,
    ) -> Vec<Result<Generation, BackendError>> {
        let n = requests.len();
        let (reply, rx) = mpsc::channel();
        let sent = self.tx.lock().map_err(|_| ()).and_then(|tx| {
            tx.send(WorkerBatch::Generate {
                requests,
                cancel: cancel.clone(),
                stream: on_text.is_some(),
                reply,
            })
            .map_err(|_| ())
        });
        let stopped = || {
            (0..n)
                .map(|_| Err(BackendError::Runtime("the model worker has stopped".into())))
                .collect()
        };
        if sent.is_err() {
            return stopped();
        }
        loop {
            match rx.recv() {
                Ok(Reply::Text(i, piece)) => {
                    if let Some(f) = on_text.as_mut() {
                        f(i, &piece);
                    }
                }
                Ok(Reply::Done(results)) => return results,
                Err(_) => return stopped(),
            }
        }
    }
}

#[cfg(all(test, feature = "test-backend"))]
mod tests {
    use super::*;
    use precis_backend::fake::FakeBackend;
    use precis_backend::{ChatMessage, GenerationParams};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A request for the fake model: it writes `text` back a word per step,
    /// 50 ms a step (`FAKE_SLOW`).
    fn slow(text: &str, max_new_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            messages: vec![ChatMessage::user(format!("FAKE_SLOW {text}"))],
            params: GenerationParams {
                max_new_tokens,
                ..GenerationParams::default()
            },
            seq2seq: None,
            direction: None,
        }
    }

    fn long() -> GenerationRequest {
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        slow(&words.join(" "), 256)
    }

    /// Runs `request` on the model from another thread, streaming; returns
    /// the thread, a channel that says when its first text came, and a flag
    /// set when it has its result.
    #[allow(clippy::type_complexity)]
    fn start(
        model: &Arc<ModelHandle>,
        request: GenerationRequest,
    ) -> (
        thread::JoinHandle<(String, Result<Generation, BackendError>)>,
        mpsc::Receiver<()>,
        Arc<AtomicBool>,
    ) {
        let (first_tx, first) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let (model, flag) = (Arc::clone(model), Arc::clone(&finished));
        let run = thread::spawn(move || {
            let mut streamed = String::new();
            let mut sink = |_: usize, piece: &str| {
                streamed.push_str(piece);
                let _ = first_tx.send(());
            };
            let mut out = model.generate(vec![request], &CancelToken::new(), Some(&mut sink));
            flag.store(true, Ordering::SeqCst);
            (streamed, out.remove(0))
        });
        (run, first, finished)
    }

    fn alone(request: GenerationRequest) -> Generation {
        let model = ModelHandle::spawn(Box::new(FakeBackend::new("fake")));
        let mut out = model.generate(vec![request], &CancelToken::new(), None);
        out.remove(0).expect("generates")
    }

    #[test]
    fn a_request_that_arrives_joins_the_running_batch_and_leaves_when_done() {
        let model = ModelHandle::spawn(Box::new(FakeBackend::new("fake")));
        let (run, first, finished) = start(&model, long());
        first.recv().expect("the long request writes");
        // Three words, with a limit of two: it joins at the next step and
        // is answered long before the 40-word request ends.
        let short = slow("one two three.", 2);
        let out = model.generate(vec![short.clone()], &CancelToken::new(), None);
        assert!(
            !finished.load(Ordering::SeqCst),
            "the request that joined waited for the running one"
        );
        let joined = out.into_iter().next().unwrap().expect("generates");
        assert_eq!(joined, alone(short));
        assert_eq!(joined.finish, FinishReason::Length);
        let (streamed, result) = run.join().unwrap();
        let result = result.expect("generates");
        assert_eq!(result, alone(long()));
        assert_eq!(streamed.trim(), result.text);
    }

    #[test]
    fn cancelling_a_request_that_joined_leaves_the_others_running() {
        let model = ModelHandle::spawn(Box::new(FakeBackend::new("fake")));
        let (run, first, _) = start(&model, long());
        first.recv().expect("the long request writes");
        let cancel = CancelToken::new();
        let words: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        let mut sink = |_: usize, _: &str| cancel.cancel();
        let out = model.generate(vec![slow(&words.join(" "), 256)], &cancel, Some(&mut sink));
        let cancelled = out.into_iter().next().unwrap().expect("a result");
        assert_eq!(cancelled.finish, FinishReason::Cancelled);
        assert!(cancelled.generated_tokens < 30, "{cancelled:?}");
        let (_, result) = run.join().unwrap();
        assert_eq!(result.expect("generates"), alone(long()));
    }

    #[test]
    fn a_request_that_crashes_the_model_fails_alone_and_nothing_is_streamed_twice() {
        let model = ModelHandle::spawn(Box::new(FakeBackend::new("fake")));
        let (run, first, _) = start(&model, long());
        first.recv().expect("the long request writes");
        thread::sleep(std::time::Duration::from_millis(120));
        let crash = GenerationRequest {
            messages: vec![ChatMessage::user("Boom. FAKE_PANIC")],
            ..long()
        };
        let out = model.generate(vec![crash], &CancelToken::new(), None);
        assert!(matches!(&out[0], Err(BackendError::Runtime(m)) if m.contains("crashed")));
        let (streamed, result) = run.join().unwrap();
        let result = result.expect("the running request survives the crash beside it");
        assert_eq!(result, alone(long()));
        assert_eq!(streamed.trim(), result.text, "streamed once, in order");
        // The worker goes on.
        let after = model.generate(vec![slow("after.", 8)], &CancelToken::new(), None);
        assert_eq!(
            after[0].as_ref().expect("generates").text,
            "FAKE_SLOW after."
        );
    }
}
