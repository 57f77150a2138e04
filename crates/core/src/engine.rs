//! The engine: loaded models, each owned by one worker thread, reached through
//! a channel with a reply channel per batch of requests (the text-embeddings-inference shape).
//!
//! Concurrent requests queue at the worker instead of failing; a panic inside a
//! model fails that caller's requests only and the worker keeps serving. The engine also
//! routes work: which loaded model writes summaries and which translates into
//! each language, from configuration with a fallback order, and it is the
//! [`ModelRouter`] tasks see.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::cache::{CacheKey, ResultCache};
use crate::task::{
    self, language_name, Article, CancelToken, EventFn, ModelRouter, Task, TaskError, TaskOptions,
    TaskResult, TextModel, TextSink,
};
use precis_backend::gguf::{GgufModel, GgufOptions};
use precis_backend::seq2seq::backend::{
    target_language, Architecture, Seq2SeqBackend, Seq2SeqOptions,
};
use precis_backend::store::{LocatedModel, ModelFamily, ModelSpec, ModelStore, SpecOrigin};
use precis_backend::{
    Backend, BackendError, Cached, FinishReason, Flow, Generation, GenerationRequest, ModelInfo,
    ModelKind, TokenCounter,
};

/// Why the engine could not serve a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request named a model this engine does not know.
    #[error("unknown model `{0}`: name one of the models listed by GET /v1/models or `precis models list`")]
    UnknownModel(String),
    /// A known model could not be loaded.
    #[error("model `{id}` cannot be loaded: {reason}")]
    ModelUnavailable {
        /// The model.
        id: String,
        /// Why.
        reason: String,
    },
    /// The task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Loads models by name for the engine: [`StoreLoader`] from the model
/// store, `FakeLoader` (feature `test-backend`) in tests.
pub trait ModelLoader: Send + Sync {
    /// The canonical id for `name` if this loader knows it (an HTTP request may only name these).
    fn canonical(&self, name: &str) -> Option<String>;
    /// Loads the model (never downloads when `allow_fetch` is false).
    fn load(&self, id: &str) -> Result<Box<dyn Backend>, EngineError>;
    /// What identifies the loaded model's files beyond its id and revision
    /// (for a local checkpoint, whose revision says nothing): part of its
    /// result-cache keys.
    fn fingerprint(&self, _id: &str) -> String {
        String::new()
    }
}

/// Loads the fake model (feature `test-backend`) under each of `names`,
/// for the engine, server and pipeline tests. A model named `broken` is
/// known but fails to load, as a corrupted file does.
#[cfg(feature = "test-backend")]
pub struct FakeLoader {
    names: Vec<String>,
}

#[cfg(feature = "test-backend")]
impl FakeLoader {
    /// A loader that knows `names`.
    pub fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }
}

#[cfg(feature = "test-backend")]
impl ModelLoader for FakeLoader {
    fn canonical(&self, name: &str) -> Option<String> {
        self.names.iter().find(|n| *n == name).cloned()
    }

    fn load(&self, id: &str) -> Result<Box<dyn Backend>, EngineError> {
        if id == "broken" {
            return Err(EngineError::ModelUnavailable {
                id: id.into(),
                reason: "file broken.gguf does not match its sha256".into(),
            });
        }
        Ok(Box::new(precis_backend::fake::FakeBackend::new(id)))
    }
}

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
    info: ModelInfo,
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
    pub fn spawn_cached(
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
pub const MAX_BATCH_REQUESTS: usize = 16;

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

/// Which models serve which jobs, by id, in order of preference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// Models tried for summaries, first that writes the language wins.
    pub summarizers: Vec<String>,
    /// Models tried for translations, first that writes the language wins.
    pub translators: Vec<String>,
}

/// Loaded models and the rules that pick among them.
pub struct Engine {
    loader: Arc<dyn ModelLoader>,
    models: Mutex<Vec<Arc<ModelHandle>>>,
    routing: Routing,
    cache: Option<Arc<ResultCache>>,
}

impl Engine {
    /// An engine that loads through `loader`, routing as given. Nothing is loaded yet.
    pub fn new(loader: Arc<dyn ModelLoader>, routing: Routing) -> Self {
        Self {
            loader,
            models: Mutex::new(Vec::new()),
            routing,
            cache: None,
        }
    }

    /// The same engine, with every model it loads consulting `cache` first.
    pub fn with_cache(mut self, cache: Option<Arc<ResultCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// The result cache, when there is one.
    pub fn cache(&self) -> Option<&Arc<ResultCache>> {
        self.cache.as_ref()
    }

    /// Loads every model the routing names (the server does this at start-up).
    pub fn load_routed(&self) -> Result<(), EngineError> {
        let ids: BTreeSet<String> = self
            .routing
            .summarizers
            .iter()
            .chain(self.routing.translators.iter())
            .cloned()
            .collect();
        for id in ids {
            self.model(&id)?;
        }
        Ok(())
    }

    /// The loaded model named `name`, loading it on first use.
    pub fn model(&self, name: &str) -> Result<Arc<ModelHandle>, EngineError> {
        let id = self
            .loader
            .canonical(name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))?;
        let mut models = self
            .models
            .lock()
            .map_err(|_| EngineError::ModelUnavailable {
                id: id.clone(),
                reason: "engine state poisoned".into(),
            })?;
        if let Some(m) = models.iter().find(|m| m.info.id == id) {
            return Ok(Arc::clone(m));
        }
        let started = std::time::Instant::now();
        let backend = self.loader.load(&id)?;
        tracing::info!(model = %id, seconds = started.elapsed().as_secs_f32(), "model loaded");
        metrics::gauge!("precis_model_load_seconds", "model" => id.clone())
            .set(started.elapsed().as_secs_f64());
        let cache = self
            .cache
            .as_ref()
            .map(|c| (Arc::clone(c), self.loader.fingerprint(&id)));
        let handle = ModelHandle::spawn_cached(backend, cache);
        models.push(Arc::clone(&handle));
        Ok(handle)
    }

    /// Infos of the loaded models.
    pub fn loaded(&self) -> Vec<ModelInfo> {
        self.models
            .lock()
            .map(|m| m.iter().map(|h| h.info.clone()).collect())
            .unwrap_or_default()
    }

    /// The loader's canonical id for a name, if it knows it.
    pub fn canonical(&self, name: &str) -> Option<String> {
        self.loader.canonical(name)
    }

    /// Runs a task, on the model named by `model` when given, else on the routed models.
    pub fn run(
        &self,
        task: Task,
        article: &Article,
        options: &TaskOptions,
        model: Option<&str>,
        cancel: &CancelToken,
        events: EventFn<'_>,
    ) -> Result<TaskResult, EngineError> {
        let forced = model.map(|m| self.model(m)).transpose()?;
        let router = RequestRouter {
            engine: self,
            forced,
        };
        Ok(task::run(task, article, options, &router, cancel, events)?)
    }

    /// Refuses what [`run`](Self::run) would refuse before generating
    /// anything: no text, nothing left after cleaning, a language no model
    /// writes, a model that cannot be loaded.
    pub fn check(
        &self,
        task: Task,
        article: &Article,
        options: &TaskOptions,
        model: Option<&str>,
    ) -> Result<(), EngineError> {
        let forced = model.map(|m| self.model(m)).transpose()?;
        let router = RequestRouter {
            engine: self,
            forced,
        };
        task::prepare(article, options)?;
        task::validate_languages(task, options, &router)?;
        Ok(())
    }

    fn pick(
        &self,
        ids: &[String],
        language: &str,
        translation: bool,
    ) -> Result<Arc<dyn TextModel>, TaskError> {
        let mut supported = BTreeSet::new();
        for id in ids {
            let handle = self
                .model(id)
                .map_err(|e| TaskError::ModelUnavailable(e.to_string()))?;
            if writes(&handle.info, language) {
                return Ok(handle);
            }
            supported.extend(
                handle
                    .info
                    .target_languages
                    .iter()
                    .filter(|l| !translation || *l != "en")
                    .cloned(),
            );
        }
        Err(unsupported(language, supported))
    }
}

/// Whether a model writes `language`: one of its target languages, or any
/// language but English for a translator whose target is not known (a
/// checkpoint named by path is used as given).
fn writes(info: &ModelInfo, language: &str) -> bool {
    info.target_languages.iter().any(|l| l == language)
        || (info.kind == ModelKind::Translator
            && info.target_languages.is_empty()
            && language != "en")
}

fn unsupported(language: &str, supported: BTreeSet<String>) -> TaskError {
    let list: Vec<String> = supported
        .into_iter()
        .map(|c| match language_name(&c) {
            Some(n) => format!("{c} ({n})"),
            None => c,
        })
        .collect();
    TaskError::UnsupportedLanguage {
        code: language.to_string(),
        supported: list.join(", "),
    }
}

struct RequestRouter<'a> {
    engine: &'a Engine,
    forced: Option<Arc<ModelHandle>>,
}

impl RequestRouter<'_> {
    fn choose(
        &self,
        ids: &[String],
        language: &str,
        translation: bool,
    ) -> Result<Arc<dyn TextModel>, TaskError> {
        match &self.forced {
            Some(m) if writes(&m.info, language) => Ok(Arc::clone(m) as Arc<dyn TextModel>),
            Some(m) => Err(unsupported(
                language,
                m.info
                    .target_languages
                    .iter()
                    .filter(|l| !translation || *l != "en")
                    .cloned()
                    .collect(),
            )),
            None => self.engine.pick(ids, language, translation),
        }
    }
}

impl ModelRouter for RequestRouter<'_> {
    fn summarizer(&self, language: &str) -> Result<Arc<dyn TextModel>, TaskError> {
        self.choose(&self.engine.routing.summarizers, language, false)
    }

    fn translator(&self, language: &str) -> Result<Arc<dyn TextModel>, TaskError> {
        if language == "en" {
            let targets: Vec<String> = self
                .engine
                .loaded()
                .iter()
                .flat_map(|m| m.target_languages.iter().filter(|l| *l != "en").cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            return Err(TaskError::SameLanguage(targets.join(", ")));
        }
        self.choose(&self.engine.routing.translators, language, true)
    }
}

/// Loads models through the [`ModelStore`]: manifests by id or hub repo, local
/// `.gguf` files by path. In `open` mode (the CLI) any name the store resolves
/// is accepted; otherwise (the server) only manifest ids and the names it was
/// configured with, so no caller can make it read arbitrary paths.
pub struct StoreLoader {
    store: Arc<ModelStore>,
    allow_fetch: AtomicBool,
    cuda: bool,
    open: bool,
    configured: Vec<String>,
}

/// Languages assumed for a GGUF chat model named by path, with no manifest.
pub const AD_HOC_LLM_LANGUAGES: &[&str] = &["en", "ru", "hi"];

impl StoreLoader {
    /// A loader for the CLI: accepts any name the store resolves.
    pub fn open(store: Arc<ModelStore>, allow_fetch: bool, cuda: bool) -> Self {
        Self {
            store,
            allow_fetch: AtomicBool::new(allow_fetch),
            cuda,
            open: true,
            configured: Vec::new(),
        }
    }

    /// A loader for the server: manifest ids, their hub repos, and `configured` names only.
    pub fn closed(
        store: Arc<ModelStore>,
        allow_fetch: bool,
        cuda: bool,
        configured: Vec<String>,
    ) -> Self {
        Self {
            open: false,
            configured,
            ..Self::open(store, allow_fetch, cuda)
        }
    }

    /// From now on, only files already present are loaded.
    pub fn forbid_fetch(&self) {
        self.allow_fetch.store(false, AtomicOrdering::SeqCst);
    }

    /// Resolves a model name: what the store resolves, plus `owner/repo/file.gguf`
    /// for a GGUF file in a hub repo that has no manifest.
    fn resolve(&self, name: &str) -> Result<ModelSpec, String> {
        let direct = self.store.resolve(name);
        let parts: Vec<&str> = name.splitn(3, '/').collect();
        match (direct, parts.as_slice()) {
            // A Marian repo without a manifest: its files have fixed names.
            (Ok(spec), _)
                if spec.origin == SpecOrigin::HubRepo
                    && spec.files.is_empty()
                    && is_marian_repo(name) =>
            {
                Ok(spec
                    .with_files(MARIAN_HUB_FILES.iter().copied())
                    .with_family(ModelFamily::Marian))
            }
            (Ok(spec), _) if spec.origin == SpecOrigin::HubRepo && spec.files.is_empty() => Err(
                format!("hub repo `{name}` has no manifest here; name the GGUF file in it, e.g. `{name}/model-q4_k_m.gguf`"),
            ),
            (Ok(spec), _) => Ok(spec),
            (Err(_), [owner, repo, file]) if file.ends_with(".gguf") => {
                let mut spec = self
                    .store
                    .resolve(&format!("{owner}/{repo}"))
                    .map_err(|e| e.to_string())?;
                if spec.manifest.is_some() {
                    return Err(format!("`{owner}/{repo}` has a manifest: name it by its id, `{}`", spec.id));
                }
                spec = spec.with_files([file.to_string()]);
                spec.id = name.to_string();
                Ok(spec)
            }
            (Err(e), _) => Err(e.to_string()),
        }
    }

    fn locate(&self, spec: &ModelSpec) -> Result<LocatedModel, String> {
        if !self.allow_fetch.load(AtomicOrdering::SeqCst) {
            return self.store.locate(spec).map_err(|e| e.to_string());
        }
        let fetch = self.store.fetch(spec);
        let located = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(fetch),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the download runtime: {e}"))?
                .block_on(fetch),
        };
        located.map_err(|e| e.to_string())
    }
}

/// Files fetched for a Marian repo named by hub id without a manifest.
const MARIAN_HUB_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "source.spm",
    "target.spm",
    "vocab.json",
    "pytorch_model.bin",
];

/// Whether a hub repo id names an opus-mt (Marian) checkpoint.
fn is_marian_repo(name: &str) -> bool {
    let repo = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    repo.starts_with("opus-mt-") || name.to_ascii_lowercase().starts_with("helsinki-nlp/")
}

/// Whether located files make an encoder-decoder checkpoint: a
/// `config.json` whose `model_type` is one precis runs (`marian`, `bart`,
/// `t5`); its directory and architecture.
fn seq2seq_dir(located: &LocatedModel) -> Option<(std::path::PathBuf, Architecture)> {
    let config = located.path("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let arch = Architecture::of_dir(&dir)?;
    Some((dir, arch))
}

/// Names, sizes and modification times of a model's files, hashed: what
/// changes when a checkpoint is replaced in place or re-downloaded.
fn files_fingerprint(located: &LocatedModel) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (name, path) in &located.files {
        let meta = std::fs::metadata(path).ok();
        let modified = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hash.update(format!(
            "{name}\0{}\0{modified}\0",
            meta.map_or(0, |m| m.len())
        ));
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ModelLoader for StoreLoader {
    fn fingerprint(&self, id: &str) -> String {
        self.resolve(id)
            .and_then(|spec| self.store.locate(&spec).map_err(|e| e.to_string()))
            .map_or_else(|_| String::new(), |located| files_fingerprint(&located))
    }

    fn canonical(&self, name: &str) -> Option<String> {
        if self.open || self.configured.iter().any(|c| c == name) {
            // Any name goes; one that does not resolve fails at load with the store's reason.
            // A local path stays a path (its spec's id is only the file or
            // directory name, which would not resolve again).
            return Some(self.resolve(name).map_or_else(
                |_| name.to_string(),
                |s| match s.origin {
                    SpecOrigin::LocalPath(p) => p.display().to_string(),
                    _ => s.id,
                },
            ));
        }
        let spec = self.store.resolve(name).ok()?;
        (spec.manifest.is_some()).then_some(spec.id)
    }

    fn load(&self, id: &str) -> Result<Box<dyn Backend>, EngineError> {
        let unavailable = |reason: String| EngineError::ModelUnavailable {
            id: id.to_string(),
            reason,
        };
        let spec = self.resolve(id).map_err(unavailable)?;
        let located = self.locate(&spec).map_err(unavailable)?;
        // The id the engine knows the model by (`canonical`).
        let model_id = match &spec.origin {
            SpecOrigin::LocalPath(p) => p.display().to_string(),
            _ => spec.id.clone(),
        };
        let seq2seq_family = matches!(
            spec.family,
            Some(ModelFamily::Marian | ModelFamily::Bart | ModelFamily::T5)
        );
        if seq2seq_family || seq2seq_dir(&located).is_some() {
            let (dir, arch) = seq2seq_dir(&located).ok_or_else(|| {
                unavailable("it is not an encoder-decoder checkpoint: a config.json with model_type `marian`, `bart` or `t5` is needed".into())
            })?;
            let target_languages = match &spec.manifest {
                Some(m) => m.languages.targets.clone(),
                None if arch == Architecture::Marian => target_language(&dir).into_iter().collect(),
                None => Vec::new(),
            };
            let model = Seq2SeqBackend::load(
                &dir,
                Seq2SeqOptions {
                    id: model_id,
                    revision: located.revision.clone(),
                    target_languages,
                },
            )
            .map_err(|e| unavailable(e.to_string()))?;
            return Ok(Box::new(model));
        }
        let path = located
            .files
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
            .ok_or_else(|| unavailable("the model has no .gguf file".into()))?;
        let target_languages = match &spec.manifest {
            Some(m) => m.languages.targets.clone(),
            None => AD_HOC_LLM_LANGUAGES.iter().map(|s| s.to_string()).collect(),
        };
        let model = GgufModel::load(
            path,
            GgufOptions {
                id: Some(model_id),
                revision: Some(located.revision.clone()),
                target_languages,
                cuda: self.cuda,
                threads: 0,
            },
        )
        .map_err(|e| unavailable(e.to_string()))?;
        Ok(Box::new(model))
    }
}
