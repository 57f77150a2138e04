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
    Backend, BackendError, Cached, FinishReason, Flow, Generation, GenerationRequest, ModelInfo,
    TokenCounter,
};

/// One caller's generation requests, sent to the model worker together; the
/// worker runs every batch queued at the time as one backend batch.
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

/// Most queued requests the worker runs together in one batch.
pub(crate) const MAX_BATCH_REQUESTS: usize = 16;

/// The worker loop: takes the next batch, and with it every batch already queued
/// (up to [`MAX_BATCH_REQUESTS`] requests), so concurrent callers share one
/// batched generation (the CPU decoder decodes them in the same forward
/// passes); each batch gets its own results back.
fn worker(mut backend: Box<dyn Backend>, rx: mpsc::Receiver<WorkerBatch>) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        let mut queued: usize = batches.iter().map(WorkerBatch::len).sum();
        while queued < MAX_BATCH_REQUESTS {
            match rx.try_recv() {
                Ok(batch) => {
                    queued += batch.len();
                    batches.push(batch);
                }
                Err(_) => break,
            }
        }
        run_batches(backend.as_mut(), batches);
    }
}

impl WorkerBatch {
    fn len(&self) -> usize {
        match self {
            WorkerBatch::Generate { requests, .. } => requests.len(),
        }
    }
}

fn crashed(n: usize) -> Vec<Result<Generation, BackendError>> {
    (0..n)
        .map(|_| {
            Err(BackendError::Runtime(
                "the model crashed on this input".into(),
            ))
        })
        .collect()
}

/// Runs one batch; `None` when the model panicked (logged). Request `i`
/// is request `locals[i]` of batch `owners[i]`; its text goes to the batch as
/// it comes when the batch streams.
fn generate_guarded(
    backend: &mut dyn Backend,
    requests: &[GenerationRequest],
    owners: &[usize],
    locals: &[usize],
    batches: &[WorkerBatch],
) -> Option<Vec<Result<Generation, BackendError>>> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        backend.generate(requests, &mut |i, piece| {
            let WorkerBatch::Generate {
                cancel,
                stream,
                reply,
                ..
            } = &batches[owners[i]];
            if *stream && !piece.is_empty() {
                let _ = reply.send(Reply::Text(locals[i], piece.to_string()));
            }
            if cancel.is_cancelled() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
    }));
    if result.is_err() {
        tracing::error!(model = %backend.info().id, "the model panicked; the batch failed and the worker goes on");
    }
    result.ok()
}

fn run_batches(backend: &mut dyn Backend, batches: Vec<WorkerBatch>) {
    let mut requests = Vec::new();
    let mut owners = Vec::new(); // batch index of each request
    let mut locals = Vec::new(); // its index within the batch
    let mut live = Vec::new();
    for (j, batch) in batches.iter().enumerate() {
        let WorkerBatch::Generate {
            requests: reqs,
            cancel,
            reply,
            ..
        } = batch;
        if cancel.is_cancelled() {
            let _ = reply.send(Reply::Done(Vec::new()));
            continue;
        }
        live.push(j);
        for (k, r) in reqs.iter().enumerate() {
            requests.push(r.clone());
            owners.push(j);
            locals.push(k);
        }
    }
    if live.is_empty() {
        return;
    }
    let mut out = match generate_guarded(backend, &requests, &owners, &locals, &batches) {
        Some(out) => out,
        // A panic in a shared batch: run each batch on its own, so only the batch
        // whose input crashes the model fails.
        None if live.len() > 1 => {
            let mut out = Vec::with_capacity(requests.len());
            for &j in &live {
                let idx: Vec<usize> = (0..requests.len()).filter(|&i| owners[i] == j).collect();
                let reqs: Vec<GenerationRequest> =
                    idx.iter().map(|&i| requests[i].clone()).collect();
                let own = vec![j; reqs.len()];
                let local: Vec<usize> = idx.iter().map(|&i| locals[i]).collect();
                out.extend(
                    generate_guarded(backend, &reqs, &own, &local, &batches)
                        .unwrap_or_else(|| crashed(reqs.len())),
                );
            }
            out
        }
        None => crashed(requests.len()),
    };
    let model = backend.info().id.clone();
    let generated: usize = out
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|g| g.generated_tokens)
        .sum();
    metrics::counter!("precis_tokens_generated_total", "model" => model)
        .increment(generated as u64);
    // Hand each batch its results, in order; the caller may have gone away.
    let mut per_batch: Vec<Vec<Result<Generation, BackendError>>> =
        batches.iter().map(|_| Vec::new()).collect();
    for (i, r) in out.drain(..).enumerate() {
        per_batch[owners[i]].push(r);
    }
    for j in live {
        let WorkerBatch::Generate { reply, .. } = &batches[j];
        let _ = reply.send(Reply::Done(std::mem::take(&mut per_batch[j])));
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
