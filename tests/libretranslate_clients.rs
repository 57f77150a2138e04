//! LibreTranslate's own clients against `precis serve` with the fake model:
//! the Python client (`libretranslatepy`, PyPI) and the npm `libretranslate`
//! package, each installed from its registry by
//! `scripts/libretranslate-clients.sh`, and the requests of LibreTranslate's
//! API documentation as written there (`tests/clients/`).
//!
//! `.ci/run` installs the clients. Elsewhere, without PRECIS_TEST_LT_PYTHON
//! and PRECIS_TEST_LT_NODE_MODULES (`eval "$(scripts/libretranslate-clients.sh)"`
//! sets them), the test says so and passes, unless `CI` is set, where it
//! fails.

#[path = "common/load.rs"]
mod load;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const KEY: &str = "lt-client-key";

/// Starts `precis serve` with the fake model, and `env`.
fn server(env: &[(&str, &str)]) -> load::Server {
    let env: Vec<(&str, &str)> = [("PRECIS_TEST_FAKE_MODEL", "1")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    load::Server::start_with(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &["--model", "fake", "--no-cache"],
        &env,
        Duration::from_secs(60),
    )
    .expect("the server starts")
}

/// Runs `command`; panics with its output unless it succeeds.
fn run(mut command: Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    eprintln!("{text}");
}

#[test]
fn libretranslate_clients_work_against_precis() {
    let (Some(python), Some(node_modules)) = (
        std::env::var_os("PRECIS_TEST_LT_PYTHON"),
        std::env::var_os("PRECIS_TEST_LT_NODE_MODULES"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the clients (scripts/libretranslate-clients.sh)"
        );
        eprintln!("skipped: run `eval \"$(scripts/libretranslate-clients.sh)\"` first");
        return;
    };
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let keyed = server(&[("PRECIS_API_KEYS", KEY)]);
    let open = server(&[]);

    let mut py = Command::new(python);
    py.arg(clients.join("libretranslatepy_check.py"))
        .arg(&keyed.base)
        .arg(KEY);
    run(py, "the libretranslatepy check");

    let mut node = Command::new("node");
    node.arg(clients.join("libretranslate_npm_check.cjs"))
        .arg(&keyed.base)
        .arg(KEY)
        .arg(&open.base)
        .env("NODE_PATH", node_modules);
    run(node, "the npm libretranslate check");
}
