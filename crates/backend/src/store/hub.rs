//! Downloads from the Hugging Face hub through `hf-hub`, and read-only lookups
//! in an existing Hugging Face cache.
//!
//! `hf-hub` downloads into a cache of its own, which we point at a staging
//! directory inside the model's store directory (so the final rename stays on
//! one file system). Its partial files are resumable but never looked at by the
//! store: only after the downloaded blob matches the manifest is it renamed to
//! `ROOT/models/ID/FILE`. `hf-hub` sets no timeouts, so the first request is
//! bounded by `hub_timeout` (an unreachable hub fails in seconds) and the
//! download by a watchdog that gives up when no data arrives for a while.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hf_hub::api::tokio::{Api, ApiBuilder, ApiError, Metadata, Progress};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::ProgressBar;

use super::{byte_bar, hash_with_progress, remove_empty_dirs, Downloaded, StoreError};
use super::{HubSource, ModelFile, StoreConfig};

/// One file of a model's hub repo, as the store asks for it.
pub(crate) struct HubFile<'a> {
    pub cfg: &'a StoreConfig,
    pub id: &'a str,
    pub hub: &'a HubSource,
    pub file: &'a ModelFile,
}

/// Everything one hub download needs.
pub(crate) struct HubDownload<'a> {
    pub source: HubFile<'a>,
    /// Final path of the file.
    pub dest: &'a Path,
    /// `ROOT/models/ID`, which holds the staging directory.
    pub model_dir: &'a Path,
}

/// Looks a file up in a Hugging Face cache: `snapshots/REV/FILE` when the
/// revision is a commit, else through `refs/REV`.
pub(crate) fn hf_cache_lookup(
    cache: &Path,
    repo: &str,
    revision: &str,
    file: &str,
) -> Option<PathBuf> {
    let repo_dir = cache.join(Repo::model(repo.to_string()).folder_name());
    let direct = repo_dir.join("snapshots").join(revision).join(file);
    if direct.is_file() {
        return Some(direct);
    }
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return None;
    }
    let via_ref = repo_dir.join("snapshots").join(commit).join(file);
    via_ref.is_file().then_some(via_ref)
}

/// Downloads, checks and renames one file into place.
pub(crate) async fn download(req: HubDownload<'_>) -> Result<Downloaded, StoreError> {
    let staging = req.model_dir.join(".staging").join("hub");
    let result = download_into(&req, &staging).await;
    // Keep a partial download for resumption only when it may complete later.
    let keep = matches!(result, Err(StoreError::Hub { .. }));
    if !keep {
        let _ = std::fs::remove_dir_all(&staging);
        remove_empty_dirs(
            staging.parent().unwrap_or(&staging),
            req.source.cfg.root.join("models").as_path(),
        );
    }
    result
}

/// An API client for the configured endpoint, with `cache` as hf-hub's cache.
fn client(cfg: &StoreConfig, cache: &Path) -> Result<Api, ApiError> {
    ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(cfg.endpoint())
        .with_token(hub_token())
        .with_progress(false)
        .with_user_agent("precis", env!("CARGO_PKG_VERSION"))
        .build()
}

/// The hub's metadata of the file, asked within `deadline` (an unreachable
/// hub fails here, fast) and checked against the manifest's size.
async fn ask(src: &HubFile<'_>, api: &Api, deadline: Duration) -> Result<Metadata, StoreError> {
    let repo = api.repo(Repo::with_revision(
        src.hub.repo.clone(),
        RepoType::Model,
        src.hub.revision.clone(),
    ));
    let url = repo.url(&src.file.name);
    let meta = match tokio::time::timeout(deadline, api.metadata(&url)).await {
        Err(_) => {
            return Err(StoreError::HubUnreachable {
                id: src.id.to_string(),
                file: src.file.name.clone(),
                endpoint: src.cfg.endpoint(),
                message: format!("no answer within {} s", deadline.as_secs_f32()),
            })
        }
        Ok(Err(e)) => return Err(classify(src, e)),
        Ok(Ok(meta)) => meta,
    };
    match src.file.size {
        Some(expected) if meta.size() as u64 != expected => Err(StoreError::DownloadMismatch {
            id: src.id.to_string(),
            file: src.file.name.clone(),
            origin: "hub",
            expected: format!("{expected} bytes"),
            actual: format!("{} bytes", meta.size()),
        }),
        _ => Ok(meta),
    }
}

/// Whether the hub serves the file at the manifest's size, asked within
/// `deadline`: `Ok(false)` when the hub answers that it does not (missing,
/// denied, another size), an error when it cannot be asked.
pub(crate) async fn probe(src: HubFile<'_>, deadline: Duration) -> Result<bool, StoreError> {
    // Asking for metadata writes nothing into hf-hub's cache.
    let api = client(src.cfg, &src.cfg.root).map_err(|e| classify(&src, e))?;
    match ask(&src, &api, deadline).await {
        Ok(_) => Ok(true),
        Err(e @ (StoreError::HubUnreachable { .. } | StoreError::Hub { .. })) => Err(e),
        Err(_) => Ok(false),
    }
}

async fn download_into(req: &HubDownload<'_>, staging: &Path) -> Result<Downloaded, StoreError> {
    let src = &req.source;
    let file = &src.file.name;
    let id = src.id;
    let other = |message: String| StoreError::Hub {
        id: id.to_string(),
        file: file.clone(),
        message,
    };
    std::fs::create_dir_all(staging)
        .map_err(|e| StoreError::io("create the staging directory", staging, e))?;
    let api = client(src.cfg, staging).map_err(|e| other(e.to_string()))?;
    let meta = ask(src, &api, src.cfg.hub_timeout).await?;
    let repo = api.repo(Repo::with_revision(
        src.hub.repo.clone(),
        RepoType::Model,
        src.hub.revision.clone(),
    ));

    let what = format!("{id}: {file}");
    let watch = Watch::new(byte_bar(src.cfg.progress, 0, "downloading", &what));
    let stall = src.cfg.hub_timeout * 6;
    let pointer = tokio::select! {
        result = repo.download_with_progress(file, watch.clone()) => {
            result.map_err(|e| classify(src, e))?
        }
        _ = watch.stalled(stall) => {
            return Err(other(format!("no data arrived for {} s", stall.as_secs())));
        }
    };
    if let Some(bar) = &watch.bar {
        bar.finish_and_clear();
    }

    // hf-hub leaves a symlink in snapshots/ to the blob it wrote.
    let blob = std::fs::canonicalize(&pointer)
        .map_err(|e| StoreError::io("find the downloaded file", &pointer, e))?;
    let (size, sha256) = {
        let blob_for_hash = blob.clone();
        let bar = byte_bar(
            src.cfg.progress && meta.size() as u64 >= super::HASH_PROGRESS_MIN,
            meta.size() as u64,
            "verifying",
            file,
        );
        tokio::task::spawn_blocking(move || {
            let r = hash_with_progress(&blob_for_hash, bar.as_ref());
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            r
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|e| StoreError::io("read the downloaded file", &blob, e))?
    };
    let mismatch = |expected: String, actual: String| StoreError::DownloadMismatch {
        id: id.to_string(),
        file: file.clone(),
        origin: "hub",
        expected,
        actual,
    };
    if let Some(expected) = src.file.size {
        if size != expected {
            return Err(mismatch(
                format!("{expected} bytes"),
                format!("{size} bytes"),
            ));
        }
    }
    if let Some(expected) = &src.file.sha256 {
        if *expected != sha256 {
            return Err(mismatch(
                format!("sha256 {expected}"),
                format!("sha256 {sha256}"),
            ));
        }
    }
    let dest_dir = req.dest.parent().unwrap_or(req.model_dir);
    std::fs::create_dir_all(dest_dir)
        .map_err(|e| StoreError::io("create the model directory", dest_dir, e))?;
    std::fs::rename(&blob, req.dest)
        .map_err(|e| StoreError::io("rename into place", req.dest, e))?;
    Ok(Downloaded { sha256 })
}

/// Turns an `hf-hub` error into one that says what to do.
fn classify(req: &HubFile<'_>, err: ApiError) -> StoreError {
    let id = req.id.to_string();
    let file = req.file.name.clone();
    let endpoint = req.cfg.endpoint();
    let mut inner = &err;
    while let ApiError::TooManyRetries(e) = inner {
        inner = e;
    }
    if let ApiError::RequestError(e) = inner {
        match e.status().map(|s| s.as_u16()) {
            Some(404) => {
                return StoreError::HubFileNotFound {
                    id,
                    file,
                    repo: req.hub.repo.clone(),
                    revision: req.hub.revision.clone(),
                    endpoint,
                }
            }
            Some(status @ (401 | 403)) => {
                return StoreError::HubDenied {
                    id,
                    file,
                    repo: req.hub.repo.clone(),
                    status,
                }
            }
            Some(_) => {}
            None if e.is_connect() || e.is_timeout() => {
                return StoreError::HubUnreachable {
                    id,
                    file,
                    endpoint,
                    message: error_chain(e),
                }
            }
            None => {}
        }
    }
    StoreError::Hub {
        id,
        file,
        message: error_chain(&err),
    }
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// The token `huggingface-cli login` leaves, or `$HF_TOKEN`, as hf-hub's own
/// `from_env` would find it (our hf-hub cache is the staging directory, where
/// no token is).
fn hub_token() -> Option<String> {
    if let Some(token) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(token.trim().to_string());
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface")))?;
    let token = std::fs::read_to_string(home.join("token")).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Progress for hf-hub: drives the bar and remembers when data last came.
#[derive(Clone)]
struct Watch {
    bar: Option<ProgressBar>,
    start: Instant,
    /// Milliseconds after `start` of the last sign of life.
    last: Arc<AtomicU64>,
}

impl Watch {
    fn new(bar: Option<ProgressBar>) -> Self {
        Watch {
            bar,
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once no data has come for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idle = self.start.elapsed().as_millis() as u64 - self.last.load(Ordering::Relaxed);
            if idle > limit.as_millis() as u64 {
                return;
            }
        }
    }
}

impl Progress for Watch {
    async fn init(&mut self, size: usize, _filename: &str) {
        if let Some(bar) = &self.bar {
            bar.set_length(size as u64);
        }
        self.touch();
    }

    async fn update(&mut self, size: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
        self.touch();
    }

    async fn finish(&mut self) {
        self.touch();
    }
}
