//! The engine: loaded models, each owned by one worker thread, reached through
//! a channel with a reply channel per batch of requests (the text-embeddings-inference shape).
//!
//! Concurrent requests queue at the worker instead of failing; a panic inside a
//! model fails that caller's requests only and the worker keeps serving. The engine also
//! routes work: which loaded model writes summaries and which translates into
//! each language, from configuration with a fallback order, and it is the
//! [`ModelRouter`] tasks see.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::cache::ResultCache;
use crate::task::{
    self, language_name, CancelToken, EventFn, ModelRouter, TaskError, TaskOptions, TaskRequest,
    TaskResult, TextModel,
};
use precis_backend::store::{
    Availability, ModelFamily, ModelManifest, ModelSpec, ModelStore, ModelTask,
};
use precis_backend::{ModelInfo, ModelKind};

mod loader;
mod worker;

#[cfg(feature = "test-backend")]
pub use loader::FakeLoader;
pub use loader::{ModelLoader, Quantization, StoreLoader};
pub use worker::ModelHandle;

/// Why the engine could not serve a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request named a model this engine does not know.
    #[error("unknown model `{0}`: name one of the models listed by GET /v1/models or `precis models list`")]
    UnknownModel(String),
    /// The task failed, or a model it needs could not be loaded
    /// ([`TaskError::ModelUnavailable`]).
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Which models serve which jobs, by id, in order of preference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// Models tried for summaries, first that writes the language wins.
    pub summarizers: Vec<String>,
    /// Models tried for translations, first that writes the language wins.
    pub translators: Vec<String>,
}

/// A language the engine can write, and the models that write it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LanguageOffer {
    /// Its ISO 639-1 code, as requests name it.
    pub code: String,
    /// Its English name, when precis knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The models that write it, by id.
    pub models: Vec<String>,
}

/// The models asked for by the command line and the config file, before
/// the store says which dedicated models are present or obtainable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// The model for every job nothing else covers.
    pub model: String,
    /// Whether `model` was named on the command line: it then serves every
    /// job not named below, and present dedicated models are passed over.
    pub forced: bool,
    /// The summarizer named first.
    pub summarizer: Option<String>,
    /// The translator named first.
    pub translator: Option<String>,
    /// Whether dedicated models under a non-commercial licence (NLLB-200)
    /// may be routed to; a model named above is used whatever its licence.
    pub allow_noncommercial: bool,
}

impl Routing {
    /// The routing `choice` makes with the models in `store`, and a note
    /// for the operator on each present model passed over. First the named
    /// summarizer or translator; then (unless `model` is forced) the
    /// dedicated models in the manifests' order of preference (BART and T5
    /// summarize; NLLB-200, opus-mt, MADLAD-400 and M2M100 translate: they
    /// work before the LLM does, for the languages they write), leaving out
    /// those under a non-commercial licence unless the choice allows them,
    /// and those whose files have no pinned hash unless `unverified`; then
    /// `model`. A dedicated model is routed when its files are present, or
    /// when they are obtainable from the hub and it is the first routed
    /// model to write one of its languages (so that nothing is fetched that
    /// would never be used).
    pub fn resolve(
        choice: &ModelChoice,
        store: &ModelStore,
        unverified: bool,
    ) -> (Self, Vec<String>) {
        const SUMMARIZERS: &[ModelFamily] = &[ModelFamily::Bart, ModelFamily::T5];
        const TRANSLATORS: &[ModelFamily] =
            &[ModelFamily::Marian, ModelFamily::M2m100, ModelFamily::T5];
        let serves = |m: &ModelManifest, task: ModelTask, families: &[ModelFamily]| {
            families.contains(&m.family) && m.tasks.contains(&task)
        };
        let mut notes = Vec::new();
        let candidates: Vec<&ModelManifest> = store
            .manifests()
            .iter()
            .filter(|_| !choice.forced)
            .filter(|m| {
                serves(m, ModelTask::Summarize, SUMMARIZERS)
                    || serves(m, ModelTask::Translate, TRANSLATORS)
            })
            .filter(|m| choice.allow_noncommercial || !m.noncommercial())
            .collect();
        let specs: Vec<ModelSpec> = candidates
            .iter()
            .map(|m| ModelSpec::from_manifest(m))
            .collect();
        let availability = store.availability(&specs);
        let usable: Vec<(&ModelManifest, Availability)> = candidates
            .into_iter()
            .zip(availability)
            .filter(|(m, found)| {
                let pinned = m.files.iter().all(|f| f.sha256.is_some());
                if unverified || pinned {
                    return true;
                }
                if *found == Availability::Present {
                    notes.push(format!("model `{}` is present but its files have no pinned sha256, so it is not routed to; pass --allow-unverified to use it", m.id));
                }
                false
            })
            .collect();
        let chain = |first: &Option<String>, task, families: &[ModelFamily]| -> Vec<String> {
            let mut written: BTreeSet<&str> = BTreeSet::new();
            let mut dedicated = Vec::new();
            for (m, found) in usable.iter().filter(|(m, _)| serves(m, task, families)) {
                let targets = &m.languages.targets;
                let first_for_some = targets.iter().any(|l| !written.contains(l.as_str()));
                if *found == Availability::Present
                    || (*found == Availability::Obtainable && first_for_some)
                {
                    written.extend(targets.iter().map(String::as_str));
                    dedicated.push(m.id.clone());
                }
            }
            first
                .iter()
                .cloned()
                .chain(dedicated)
                .chain([choice.model.clone()])
                .collect()
        };
        let routing = Routing {
            summarizers: chain(&choice.summarizer, ModelTask::Summarize, SUMMARIZERS),
            translators: chain(&choice.translator, ModelTask::Translate, TRANSLATORS),
        };
        (routing, notes)
    }

    /// Every model named, once.
    pub fn ids(&self) -> BTreeSet<String> {
        self.summarizers
            .iter()
            .chain(self.translators.iter())
            .cloned()
            .collect()
    }
}

/// Loaded models and the rules that pick among them.
pub struct Engine {
    loader: Arc<dyn ModelLoader>,
    models: Mutex<Vec<Arc<ModelHandle>>>,
    routing: Routing,
    cache: Option<Arc<ResultCache>>,
    max_chars: usize,
}

impl Engine {
    /// An engine that loads through `loader`, routing as given. Nothing is loaded yet.
    pub fn new(loader: Arc<dyn ModelLoader>, routing: Routing) -> Self {
        Self {
            loader,
            models: Mutex::new(Vec::new()),
            routing,
            cache: None,
            max_chars: usize::MAX,
        }
    }

    /// The same engine, refusing articles of more than `max_chars` characters.
    pub fn with_max_chars(mut self, max_chars: usize) -> Self {
        self.max_chars = max_chars;
        self
    }

    /// What the engine routes.
    pub fn routing(&self) -> &Routing {
        &self.routing
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
        self.load(self.routing.ids())
    }

    /// Loads the models named `ids` now.
    pub fn load(&self, ids: impl IntoIterator<Item = String>) -> Result<(), EngineError> {
        for id in ids {
            self.model(&id)?;
        }
        Ok(())
    }

    /// The routed models a task with these options would run, by what each
    /// declares it writes (nothing is loaded): the first summarizer that
    /// writes the summary's language, the first translator that writes each
    /// target (the last routed model where none declares it, as the
    /// fallback that would be tried).
    pub fn needed(&self, task: task::Task, options: &TaskOptions) -> BTreeSet<String> {
        let first = |ids: &[String], language: &str, translation: bool| {
            ids.iter()
                .find(|id| {
                    let declared = self.loader.declared_targets(id);
                    // Nothing declared (a checkpoint named by path): it
                    // is tried for whatever is asked, as `pick` does.
                    declared.iter().any(|l| l == language)
                        || (declared.is_empty() && (!translation || language != "en"))
                })
                .or(ids.last())
                .cloned()
        };
        let mut out = BTreeSet::new();
        if matches!(task, task::Task::Summarize | task::Task::Digest) {
            let language = options.summary_language.as_deref().unwrap_or("en");
            out.extend(first(&self.routing.summarizers, language, false));
        }
        if matches!(task, task::Task::Translate | task::Task::Digest) {
            let targets = match &options.to {
                Some(to) => to.clone(),
                None if task == task::Task::Digest => self.default_targets(),
                None => Vec::new(),
            };
            for target in targets {
                out.extend(first(&self.routing.translators, &target, true));
            }
        }
        out
    }

    /// The loaded model named `name`, loading it on first use.
    pub fn model(&self, name: &str) -> Result<Arc<ModelHandle>, EngineError> {
        let id = self
            .loader
            .canonical(name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))?;
        // A load that panicked leaves the list as it was: still usable.
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = models.iter().find(|m| m.info.id == id) {
            return Ok(Arc::clone(m));
        }
        let started = std::time::Instant::now();
        let backend = self
            .loader
            .load(&id)
            .map_err(|source| TaskError::ModelUnavailable {
                id: id.clone(),
                source,
            })?;
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

    /// The languages a digest is translated into when its request names
    /// none: Russian and Hindi, those of them the routed models write (as
    /// loaded, or as declared before loading); where they write neither,
    /// every language but English that they write. A many-to-many
    /// translator writes dozens: a digest into all of them is never what a
    /// request without `to` means.
    pub fn default_targets(&self) -> Vec<String> {
        let written: Vec<String> = self
            .languages()
            .into_iter()
            .map(|l| l.code)
            .filter(|l| l != "en")
            .collect();
        // Russian before Hindi reads better in a newsletter than alphabetical order.
        let preferred: Vec<String> = ["ru", "hi"]
            .into_iter()
            .filter(|l| written.iter().any(|w| w == l))
            .map(str::to_string)
            .collect();
        if preferred.is_empty() {
            written
        } else {
            preferred
        }
    }

    /// The languages the routed models write (as loaded, or as declared
    /// before loading), in code order, each with the models that write it.
    pub fn languages(&self) -> Vec<LanguageOffer> {
        let loaded = self.loaded();
        let mut offers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for id in self.routing.ids() {
            let targets = match loaded.iter().find(|m| m.id == id) {
                Some(info) => info.target_languages.clone(),
                None => self.loader.declared_targets(&id),
            };
            for code in targets {
                offers.entry(code).or_default().push(id.clone());
            }
        }
        offers
            .into_iter()
            .map(|(code, models)| LanguageOffer {
                name: language_name(&code).map(str::to_string),
                code,
                models,
            })
            .collect()
    }

    /// Each language the routed translators read or write, in code order,
    /// with the languages they translate it into (none for a language they
    /// only write).
    pub fn translation_pairs(&self) -> Vec<(String, Vec<String>)> {
        let loaded = self.loaded();
        let mut pairs: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for id in &self.routing.translators {
            let info = loaded.iter().find(|m| &m.id == id);
            let written = match info {
                Some(info) => info.target_languages.clone(),
                None => self.loader.declared_targets(id),
            };
            let read: Vec<String> = std::iter::once("en".to_string())
                .chain(written.iter().cloned())
                .filter(|from| info.map_or(from == "en", |info| reads(info, from)))
                .collect();
            for code in written.iter().chain(&read) {
                pairs.entry(code.clone()).or_default();
            }
            for from in &read {
                let targets = pairs.entry(from.clone()).or_default();
                targets.extend(written.iter().filter(|to| *to != from).cloned());
            }
        }
        pairs
            .into_iter()
            .map(|(code, targets)| (code, targets.into_iter().collect()))
            .collect()
    }

    /// Runs a task, on the model the request names, else on the routed models.
    pub fn run(
        &self,
        request: &TaskRequest,
        cancel: &CancelToken,
        events: EventFn<'_>,
    ) -> Result<TaskResult, EngineError> {
        let (options, router) = self.admit(request)?;
        Ok(task::run(
            request.task,
            &request.article,
            &options,
            &router,
            cancel,
            events,
        )?)
    }

    /// Refuses what [`run`](Self::run) would refuse before generating
    /// anything: too many characters, no text, nothing left after cleaning,
    /// a language no model writes, a model that cannot be loaded.
    pub fn check(&self, request: &TaskRequest) -> Result<(), EngineError> {
        let (options, router) = self.admit(request)?;
        let prepared = task::prepare(&request.article, &options)?;
        let language = task::article_language(request.article.language.as_deref(), &prepared);
        task::validate_languages(request.task, &options, &router, &language)?;
        Ok(())
    }

    /// Refuses, without loading anything, a request the engine would never
    /// run: an article over its character limit, a model it does not know.
    /// Gives the article's characters.
    pub fn screen(&self, request: &TaskRequest) -> Result<usize, EngineError> {
        let chars = request.article.text.chars().count();
        if chars > self.max_chars {
            return Err(TaskError::TextTooLong {
                chars,
                limit: self.max_chars,
            }
            .into());
        }
        if let Some(m) = &request.model {
            if self.loader.canonical(m).is_none() {
                return Err(EngineError::UnknownModel(m.clone()));
            }
        }
        Ok(chars)
    }

    /// The request's options with the engine's defaults filled in, and the
    /// router for its model; or why the engine refuses it.
    fn admit(
        &self,
        request: &TaskRequest,
    ) -> Result<(TaskOptions, RequestRouter<'_>), EngineError> {
        self.screen(request)?;
        let mut options = request.options.clone();
        if request.task == task::Task::Digest && options.to.is_none() {
            options.to = Some(self.default_targets());
        }
        let forced = request
            .model
            .as_deref()
            .map(|m| self.model(m))
            .transpose()?;
        let router = RequestRouter {
            engine: self,
            forced,
        };
        Ok((options, router))
    }

    fn pick(
        &self,
        ids: &[String],
        language: &str,
        translation: bool,
        from: &str,
    ) -> Result<Arc<dyn TextModel>, TaskError> {
        let mut supported = BTreeSet::new();
        for id in ids {
            let handle = self.model(id).map_err(|e| match e {
                EngineError::Task(t) => t,
                // The routing names only models the loader was configured with.
                EngineError::UnknownModel(m) => {
                    TaskError::Internal(format!("the routed model `{m}` is unknown to its loader"))
                }
            })?;
            if !reads(&handle.info, from) {
                continue;
            }
            if writes(&handle.info, language) {
                return Ok(handle);
            }
            supported.extend(
                handle
                    .info
                    .target_languages
                    .iter()
                    .filter(|l| !translation || *l != from)
                    .cloned(),
            );
        }
        Err(unsupported(language, supported))
    }
}

/// Whether a model reads text in `from`: English, which every model reads,
/// or one of the languages of a many-to-many translator (it writes English
/// and that language, so it reads both).
fn reads(info: &ModelInfo, from: &str) -> bool {
    from == "en"
        || (info.kind == ModelKind::Translator
            && info.target_languages.iter().any(|l| l == "en")
            && info.target_languages.iter().any(|l| l == from))
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
        from: &str,
    ) -> Result<Arc<dyn TextModel>, TaskError> {
        match &self.forced {
            Some(m) if writes(&m.info, language) && reads(&m.info, from) => {
                Ok(Arc::clone(m) as Arc<dyn TextModel>)
            }
            Some(m) => Err(unsupported(
                language,
                m.info
                    .target_languages
                    .iter()
                    .filter(|l| !translation || *l != from)
                    .cloned()
                    .collect(),
            )),
            None => self.engine.pick(ids, language, translation, from),
        }
    }
}

impl ModelRouter for RequestRouter<'_> {
    fn summarizer(&self, language: &str) -> Result<Arc<dyn TextModel>, TaskError> {
        self.choose(&self.engine.routing.summarizers, language, false, "en")
    }

    fn translator(&self, from: &str, to: &str) -> Result<Arc<dyn TextModel>, TaskError> {
        if to == from {
            let targets: Vec<String> = self
                .engine
                .loaded()
                .iter()
                .filter(|m| reads(m, from))
                .flat_map(|m| m.target_languages.iter().filter(|l| *l != from).cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            return Err(TaskError::SameLanguage {
                from: from.to_string(),
                targets: targets.join(", "),
            });
        }
        self.choose(&self.engine.routing.translators, to, true, from)
    }
}

#[cfg(all(test, feature = "test-backend"))]
mod tests {
    use super::*;
    use crate::task::{Article, Task};

    fn engine(max_chars: usize) -> Engine {
        let routing = Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake-2".into(), "fake".into()],
        };
        Engine::new(Arc::new(FakeLoader::new(&["fake", "fake-2"])), routing)
            .with_max_chars(max_chars)
    }

    fn request(text: &str, model: Option<&str>) -> TaskRequest {
        TaskRequest {
            task: Task::Digest,
            article: Article {
                text: text.into(),
                ..Article::default()
            },
            options: TaskOptions::default(),
            model: model.map(str::to_string),
        }
    }

    #[test]
    fn screening_refuses_without_loading_anything() {
        let engine = engine(10);
        let long = engine.screen(&request("eleven char", None)).unwrap_err();
        assert!(matches!(
            long,
            EngineError::Task(TaskError::TextTooLong {
                chars: 11,
                limit: 10
            })
        ));
        let unknown = engine.screen(&request("short", Some("nope"))).unwrap_err();
        assert!(matches!(unknown, EngineError::UnknownModel(m) if m == "nope"));
        assert_eq!(engine.screen(&request("short", Some("fake"))).unwrap(), 5);
        assert!(engine.loaded().is_empty());
    }

    #[test]
    fn default_targets_are_the_same_before_and_after_loading() {
        let engine = engine(usize::MAX);
        let declared = engine.default_targets();
        assert_eq!(declared, ["ru", "hi"]);
        engine.load_routed().unwrap();
        assert_eq!(engine.loaded().len(), 2);
        assert_eq!(engine.default_targets(), declared);
    }

    #[test]
    fn a_model_that_fails_to_load_keeps_its_cause() {
        let engine = Engine::new(
            Arc::new(FakeLoader::new(&["broken"])),
            Routing {
                summarizers: vec!["broken".into()],
                translators: vec!["broken".into()],
            },
        );
        let e = engine.load_routed().unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::ModelUnavailable);
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(
            source.as_deref(),
            Some("file broken.gguf does not match its sha256")
        );
    }
}
