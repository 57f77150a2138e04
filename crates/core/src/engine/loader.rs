//! Where the engine's models come from: the [`ModelLoader`] trait, the
//! model store's loader, and the fake one the tests use. Loading never
//! downloads: what a loader will load is fetched first
//! ([`StoreLoader::fetch`]), before the engine starts.

use std::sync::Arc;

use crate::error::LoadError;
use precis_backend::gguf::{GgufModel, GgufOptions, Speculation};
use precis_backend::seq2seq::backend::{
    target_language, Architecture, Seq2SeqBackend, Seq2SeqOptions,
};
use precis_backend::store::{LocatedModel, ModelFamily, ModelSpec, ModelStore, SpecOrigin};
use precis_backend::{Backend, Placement, Quantize};

/// Loads models by name for the engine: [`StoreLoader`] from the model
/// store, `FakeLoader` (feature `test-backend`) in tests.
pub trait ModelLoader: Send + Sync {
    /// The canonical id for `name` if this loader knows it (an HTTP request may only name these).
    fn canonical(&self, name: &str) -> Option<String>;
    /// Loads the model from files already present (it never downloads).
    fn load(&self, id: &str) -> Result<Box<dyn Backend>, LoadError>;
    /// The languages the model writes, as declared before it is loaded
    /// (its manifest); empty when nothing declares them.
    fn declared_targets(&self, _id: &str) -> Vec<String> {
        Vec::new()
    }
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

    fn load(&self, id: &str) -> Result<Box<dyn Backend>, LoadError> {
        if id == "broken" {
            return Err(LoadError::Unsupported(
                "file broken.gguf does not match its sha256".into(),
            ));
        }
        Ok(Box::new(precis_backend::fake::FakeBackend::new(id)))
    }

    fn declared_targets(&self, _id: &str) -> Vec<String> {
        precis_backend::fake::FAKE_LANGUAGES
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

/// Loads models through the [`ModelStore`]: manifests by id or hub repo, local
/// `.gguf` files by path. In `open` mode (the CLI) any name the store resolves
/// is accepted; otherwise (the server) only manifest ids and the names it was
/// configured with, so no caller can make it read arbitrary paths.
pub struct StoreLoader {
    store: Arc<ModelStore>,
    placement: Placement,
    open: bool,
    configured: Vec<String>,
    allow_unverified: bool,
    quantize: Quantization,
}

/// What each encoder-decoder model's weights are quantized to at load:
/// its own setting (the config file's `[models."ID"] quantize`), else the
/// default (`--quantize`, the file's `quantize`), else none (f32).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantization {
    /// For a model without a setting of its own.
    pub default: Quantize,
    /// By the name a model is configured or asked for.
    pub models: std::collections::BTreeMap<String, Quantize>,
}

impl Quantization {
    /// The setting of the model loaded as `id`.
    pub fn of(&self, id: &str) -> Quantize {
        self.models.get(id).copied().unwrap_or(self.default)
    }
}

/// Languages assumed for a GGUF chat model named by path, with no manifest.
pub(crate) const AD_HOC_LLM_LANGUAGES: &[&str] = &["en", "ru", "hi"];

impl StoreLoader {
    /// A loader for the CLI: accepts any name the store resolves, and
    /// files without a pinned hash (with a warning).
    pub fn open(store: Arc<ModelStore>, placement: Placement) -> Self {
        Self {
            store,
            placement,
            open: true,
            configured: Vec::new(),
            allow_unverified: true,
            quantize: Quantization::default(),
        }
    }

    /// This loader, quantizing models' weights as `quantize` says.
    pub fn with_quantization(self, quantize: Quantization) -> Self {
        Self { quantize, ..self }
    }

    /// A loader for the server: manifest ids, their hub repos, and
    /// `configured` names only; files without a pinned hash only when
    /// `allow_unverified`.
    pub fn closed(
        store: Arc<ModelStore>,
        placement: Placement,
        configured: Vec<String>,
        allow_unverified: bool,
    ) -> Self {
        Self {
            open: false,
            configured,
            allow_unverified,
            ..Self::open(store, placement)
        }
    }

    /// Downloads the files of the model named `id` that are not present yet
    /// (with the store's progress bars), so that [`load`](ModelLoader::load)
    /// finds them. The caller's runtime runs it: the engine never starts one.
    pub async fn fetch(&self, id: &str) -> Result<(), LoadError> {
        let spec = self.resolve(id)?;
        self.store.fetch(&spec).await?;
        Ok(())
    }

    /// Resolves a model name: what the store resolves, plus `owner/repo/file.gguf`
    /// for a GGUF file in a hub repo that has no manifest.
    fn resolve(&self, name: &str) -> Result<ModelSpec, LoadError> {
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
                LoadError::Unsupported(format!("hub repo `{name}` has no manifest here; name the GGUF file in it, e.g. `{name}/model-q4_k_m.gguf`")),
            ),
            (Ok(spec), _) => Ok(spec),
            (Err(_), [owner, repo, file]) if file.ends_with(".gguf") => {
                let mut spec = self.store.resolve(&format!("{owner}/{repo}"))?;
                if spec.manifest.is_some() {
                    return Err(LoadError::Unsupported(format!("`{owner}/{repo}` has a manifest: name it by its id, `{}`", spec.id)));
                }
                // The file becomes a path under the store: it must stay there.
                precis_backend::store::check_file_name(file).map_err(LoadError::Unsupported)?;
                spec = spec.with_files([file.to_string()]);
                spec.id = name.to_string();
                Ok(spec)
            }
            (Err(e), _) => Err(e.into()),
        }
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
/// `t5`, `m2m_100`); its directory and architecture.
fn seq2seq_dir(located: &LocatedModel) -> Option<(std::path::PathBuf, Architecture)> {
    let dir = match located.path("config.json") {
        Some(config) => config.parent()?.to_path_buf(),
        // A quantized T5 named by its file: the checkpoint's directory.
        None => only_gguf(located)?.parent()?.to_path_buf(),
    };
    let arch = Architecture::of_dir(&dir)?;
    Some((dir, arch))
}

/// The model's one `.gguf` file, if it has exactly one.
fn only_gguf(located: &LocatedModel) -> Option<&std::path::PathBuf> {
    let mut ggufs = located
        .files
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"));
    match (ggufs.next(), ggufs.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
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
    hex::encode(&hash.finalize()[..8])
}

impl ModelLoader for StoreLoader {
    fn fingerprint(&self, id: &str) -> String {
        self.resolve(id)
            .and_then(|spec| Ok(self.store.locate(&spec)?))
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
        // A caller's name: the manifests only, no path looked at.
        self.store.resolve_manifest(name).map(|spec| spec.id)
    }

    fn declared_targets(&self, id: &str) -> Vec<String> {
        let Ok(spec) = self.resolve(id) else {
            return Vec::new();
        };
        match spec.manifest {
            Some(m) => m.languages.targets,
            // A GGUF chat model without a manifest: what `load` assumes.
            None if spec.files.iter().any(|f| f.name.ends_with(".gguf")) => {
                AD_HOC_LLM_LANGUAGES.iter().map(|s| s.to_string()).collect()
            }
            None => Vec::new(),
        }
    }

    fn load(&self, id: &str) -> Result<Box<dyn Backend>, LoadError> {
        let unsupported = |reason: &str| LoadError::Unsupported(reason.to_string());
        let spec = self.resolve(id)?;
        let located = self.store.locate(&spec)?;
        let unverified: Vec<&str> = located
            .spec
            .files
            .iter()
            .filter(|f| f.sha256.is_none())
            .map(|f| f.name.as_str())
            .collect();
        if !unverified.is_empty() {
            let files = unverified.join(", ");
            if !self.allow_unverified {
                return Err(LoadError::Unverified(files));
            }
            tracing::warn!(model = %id, %files, "no pinned sha256 to check these files against; using them as they are");
        }
        // The id the engine knows the model by (`canonical`).
        let model_id = match &spec.origin {
            SpecOrigin::LocalPath(p) => p.display().to_string(),
            _ => spec.id.clone(),
        };
        let seq2seq_family = matches!(
            spec.family,
            Some(ModelFamily::Marian | ModelFamily::Bart | ModelFamily::T5 | ModelFamily::M2m100)
        );
        if seq2seq_family || seq2seq_dir(&located).is_some() {
            let (dir, arch) = seq2seq_dir(&located).ok_or_else(|| {
                unsupported("it is not an encoder-decoder checkpoint: a config.json with model_type `marian`, `bart`, `t5` or `m2m_100` is needed")
            })?;
            let target_languages = match &spec.manifest {
                Some(m) => m.languages.targets.clone(),
                None if arch == Architecture::Marian => target_language(&dir).into_iter().collect(),
                None => Vec::new(),
            };
            // A quantized T5 (MADLAD-400 GGUF): the file the manifest or the
            // command line names, not whichever the directory holds.
            let gguf = only_gguf(&located).cloned();
            let model = Seq2SeqBackend::load(
                &dir,
                Seq2SeqOptions {
                    id: model_id,
                    revision: located.revision.clone(),
                    target_languages,
                    license: spec.manifest.as_ref().map(|m| m.license.clone()),
                    gguf,
                    quantize: self.quantize.of(id),
                    placement: self.placement,
                    portable: false,
                },
            )?;
            return Ok(Box::new(model));
        }
        let path = located
            .files
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
            .ok_or_else(|| unsupported("the model has no .gguf file"))?;
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
                license: spec.manifest.as_ref().map(|m| m.license.clone()),
                placement: self.placement,
                threads: 0,
                speculation: Speculation::default(),
            },
        )?;
        Ok(Box::new(model))
    }
}
