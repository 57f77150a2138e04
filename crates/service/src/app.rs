//! The composition root: ready settings in, the working parts out. The
//! server, the batch CLI and the tests make the model store, the loader, the
//! result cache, the engine and the job runner here, one way, instead of
//! each wiring them field by field.
//!
//! Models are fetched by [`Services::fetch_models`], on the caller's
//! runtime, before the engine loads them: loading never downloads.

use std::sync::Arc;

use precis_backend::store::{ModelStore, StoreConfig, StoreError};
use precis_backend::Placement;
use precis_core::cache::{CacheLimits, ResultCache};
use precis_core::database::Database;
use precis_core::engine::{
    Engine, EngineError, ModelChoice, ModelLoader, Quantization, Routing, StoreLoader,
};
use precis_core::task::TaskError;

use crate::jobs::{JobQueue, JobSettings, JobStore, JobStoreError};

/// Which model names the loader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAccess {
    /// Any name the store resolves, a local path included (the CLI: its
    /// user is the machine's operator).
    Any,
    /// Manifest ids and the names the routing was configured with (the
    /// server: no client can make it read an arbitrary path).
    Configured,
}

/// Everything the parts are made from, resolved once from the command
/// line, the environment and the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where models are kept and where they are fetched from.
    pub store: StoreConfig,
    /// The models asked for.
    pub models: ModelChoice,
    /// Which model names are accepted.
    pub access: ModelAccess,
    /// Where models run (`--device`).
    pub placement: Placement,
    /// What encoder-decoder models' weights are quantized to at load.
    pub quantize: Quantization,
    /// The database of the result cache and of batch jobs: an SQLite
    /// file, or PostgreSQL shared by every replica.
    pub database: Database,
    /// The result cache's limits; `None`: no result cache.
    pub cache: Option<CacheLimits>,
    /// Most characters of one article; `None`: no limit.
    pub max_chars: Option<usize>,
    /// Load model files that have no pinned sha256 (the CLI always does,
    /// with a warning).
    pub allow_unverified: bool,
}

/// The working parts: the engine over its loader and cache, and what
/// could not be opened (the work goes on without it).
pub struct Services {
    /// The engine.
    pub engine: Arc<Engine>,
    /// What was not available, each said once for the operator.
    pub warnings: Vec<String>,
    /// The database batch jobs are kept in.
    pub database: Option<Database>,
    loader: Option<Arc<StoreLoader>>,
}

impl Services {
    /// Opens the store and the cache and makes the loader and the engine;
    /// nothing is fetched or loaded yet. Fails only when the store cannot
    /// be opened; a cache that cannot is a warning.
    pub fn build(settings: &Settings) -> Result<Self, Box<StoreError>> {
        #[cfg(feature = "test-backend")]
        if std::env::var_os("PRECIS_TEST_FAKE_MODEL").is_some() {
            return Ok(Self::fake(settings));
        }
        let store = Arc::new(ModelStore::open(settings.store.clone())?);
        let unverified = settings.allow_unverified || settings.access == ModelAccess::Any;
        let (routing, notes) = Routing::resolve(&settings.models, &store, unverified);
        let loader = match settings.access {
            ModelAccess::Any => StoreLoader::open(Arc::clone(&store), settings.placement),
            ModelAccess::Configured => StoreLoader::closed(
                Arc::clone(&store),
                settings.placement,
                routing.ids().into_iter().collect(),
                settings.allow_unverified,
            ),
        };
        let loader = Arc::new(loader.with_quantization(settings.quantize.clone()));
        let mut services = Self::with_databases(
            settings,
            Arc::clone(&loader) as Arc<dyn ModelLoader>,
            routing,
        );
        services.loader = Some(loader);
        services.warnings.splice(0..0, notes);
        Ok(services)
    }

    /// The parts over `loader`, with the cache and the job file `settings`
    /// name.
    fn with_databases(settings: &Settings, loader: Arc<dyn ModelLoader>, routing: Routing) -> Self {
        let mut warnings = Vec::new();
        let cache = settings.cache.and_then(|limits| {
            ResultCache::open(&settings.database, limits)
                .map(Arc::new)
                .map_err(|e| warnings.push(format!("{e}; running without the cache")))
                .ok()
        });
        let mut services = Self::assemble(loader, routing, cache, settings.max_chars);
        services.database = Some(settings.database.clone());
        services.warnings = warnings;
        services
    }

    /// The fake model (feature `test-backend`) under the chosen model's
    /// name, for every job, with the databases `settings` name: what the
    /// tests that start `precis` processes run (`PRECIS_TEST_FAKE_MODEL`
    /// set). A binary built without the feature has no such path.
    #[cfg(feature = "test-backend")]
    fn fake(settings: &Settings) -> Self {
        let name = settings.models.model.clone();
        let loader = Arc::new(precis_core::engine::FakeLoader::new(&[name.as_str()]));
        let routing = Routing {
            summarizers: vec![name.clone()],
            translators: vec![name],
        };
        Self::with_databases(settings, loader, routing)
    }

    /// The parts over a loader the caller made (the tests' fake models);
    /// there is nothing to fetch and no job database.
    pub fn assemble(
        loader: Arc<dyn ModelLoader>,
        routing: Routing,
        cache: Option<Arc<ResultCache>>,
        max_chars: Option<usize>,
    ) -> Self {
        let mut engine = Engine::new(loader, routing).with_cache(cache);
        if let Some(limit) = max_chars {
            engine = engine.with_max_chars(limit);
        }
        Self {
            engine: Arc::new(engine),
            warnings: Vec::new(),
            loader: None,
            database: None,
        }
    }

    /// Downloads the files of the models `ids` (every routed model, or what
    /// [`Engine::needed`] says a task needs) that are not present yet (the
    /// store shows progress), on the caller's runtime.
    pub async fn fetch_models(
        &self,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<(), EngineError> {
        let Some(loader) = &self.loader else {
            return Ok(());
        };
        for id in ids {
            loader
                .fetch(&id)
                .await
                .map_err(|source| TaskError::ModelUnavailable { id, source })?;
        }
        Ok(())
    }

    /// Starts the batch-job runner and its webhook outbox on the current
    /// tokio runtime, the jobs kept in [`database`](Self::database).
    pub fn start_jobs(&self, settings: JobSettings) -> Result<JobQueue, JobStoreError> {
        let database = self.database.as_ref().ok_or_else(|| JobStoreError {
            database: String::new(),
            source: "no database was configured".into(),
        })?;
        let store = Arc::new(JobStore::open(database)?);
        Ok(JobQueue::start(store, Arc::clone(&self.engine), settings))
    }
}
