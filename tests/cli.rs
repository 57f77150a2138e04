//! The `precis` binary: `--help` pinned by snapshots, exit codes, and a
//! corrupted model file reported by `models verify` and refused at load.

mod common;

use std::process::Output;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_texts() {
    for (name, args) in [
        ("help_main", vec!["--help"]),
        ("help_digest", vec!["digest", "--help"]),
        ("help_summarize", vec!["summarize", "--help"]),
        ("help_translate", vec!["translate", "--help"]),
        ("help_serve", vec!["serve", "--help"]),
        ("help_models", vec!["models", "--help"]),
    ] {
        let out = common::precis().args(&args).output().unwrap();
        assert!(out.status.success());
        insta::assert_snapshot!(name, text(&out).0);
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = common::precis().args(["digest"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = common::precis()
        .args(["translate", "x.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "translate needs --to");
    let out = common::precis()
        .args(["summarize", "--sentences", "0", "x.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn database_and_role_settings_are_checked_and_a_password_never_shown() {
    for args in [
        vec!["serve", "--role", "boss"],
        vec!["serve", "--job-lease-secs", "0"],
    ] {
        let out = common::precis().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    for url in [
        "postgres://app:hunter2@db.example:notaport/precis",
        "postgres://app:hunter2@db.example/precis?sslmode=sometimes",
        "mysql://app:hunter2@db.example/precis",
    ] {
        let out = common::precis()
            .args(["cache", "stats", "--database", url])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("error:"), "{stderr}");
        assert!(!format!("{stdout}{stderr}").contains("hunter2"), "{stderr}");
    }
}

#[test]
fn a_missing_model_is_exit_3_with_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args([
            "summarize",
            "--model",
            "no-such-model",
            "examples/sample-article.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let (_, err) = text(&out);
    assert!(err.contains("no-such-model"), "{err}");
}

#[test]
fn corrupt_model_file_is_reported_by_verify_and_refused_at_load() {
    let real = common::real_model_file(common::SMALLEST, Some("PRECIS_TEST_SMOL_GGUF"));
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("models").join(common::SMALLEST);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut bytes = std::fs::read(&real).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a; // same size, different bytes
    std::fs::write(&copy, &bytes).unwrap();
    drop(bytes);

    let out = common::precis_offline(home.path())
        .args(["models", "verify", common::SMALLEST])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("mismatch"), "{stdout}");
    assert!(stderr.contains("models fetch"), "{stderr}");

    let out = common::precis_offline(home.path())
        .args([
            "summarize",
            "--model",
            common::SMALLEST,
            "examples/sample-article.txt",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{stderr}"
    );
    assert!(stderr.contains("sha256"), "{stderr}");
    // The corrupt file is neither trusted nor silently replaced.
    assert_eq!(
        std::fs::metadata(&copy).unwrap().len(),
        std::fs::metadata(&real).unwrap().len()
    );

    let out = common::precis_offline(home.path())
        .args(["models", "list"])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("mismatch"), "{stdout}");
    // Each model's licence is shown: a user picks what they may use.
    assert!(
        stdout.lines().next().unwrap().contains("LICENCE"),
        "{stdout}"
    );
    let smollm = stdout
        .lines()
        .find(|l| l.starts_with("smollm2-135m-instruct-q4_1"))
        .unwrap();
    assert!(smollm.contains("Apache-2.0"), "{smollm}");
    let marian = stdout
        .lines()
        .find(|l| l.starts_with("opus-mt-en-ru"))
        .unwrap();
    assert!(marian.contains("CC-BY-4.0"), "{marian}");
    // NLLB-200's licence forbids commercial use; a missing model is one row.
    let nllb: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("nllb-200-distilled-600m"))
        .collect();
    assert_eq!(nllb.len(), 1, "{stdout}");
    assert!(
        nllb[0].contains("CC-BY-NC-4.0") && nllb[0].contains("76 languages"),
        "{}",
        nllb[0]
    );
}

/// What a careless operator could do without noticing is refused before
/// the server starts: an empty API key (which would turn the keys off), a
/// keys file others may read, the webhook secret given twice.
#[test]
fn serve_refuses_settings_that_would_quietly_weaken_it() {
    let home = tempfile::tempdir().unwrap();
    let serve = |envs: &[(&str, &str)], args: &[&str]| {
        let mut cmd = common::precis_offline(home.path());
        cmd.args(["serve", "--lazy", "--addr", "127.0.0.1:0"])
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{envs:?} {args:?} started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    for keys in ["", ",", "k1,,k2", " "] {
        let err = serve(&[("PRECIS_API_KEYS", keys)], &[]);
        assert!(err.contains("empty key"), "{keys:?}: {err}");
    }
    let file = home.path().join("keys.txt");
    std::fs::write(&file, "k1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = serve(&[], &["--api-keys-file", file.to_str().unwrap()]);
        assert!(
            err.contains("chmod 600") && err.contains("--allow-shared-key-file"),
            "{err}"
        );
    }
    let secret = home.path().join("secret.txt");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let err = serve(
        &[("PRECIS_WEBHOOK_SECRET", "s3cret")],
        &["--webhook-secret-file", secret.to_str().unwrap()],
    );
    assert!(err.contains("give the webhook secret once"), "{err}");
}

/// `precis jobs prune` deletes, from the server's database, the jobs that
/// ended before the retention, and keeps the rest.
#[test]
fn jobs_prune_deletes_only_jobs_past_their_retention() {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("precis.sqlite3");
    let store =
        precis_service::jobs::JobStore::open(&precis_core::database::Database::Sqlite(db.clone()))
            .unwrap();
    let request = precis_service::jobs::JobRequest::default();
    for _ in 0..2 {
        store.create(&request, Vec::new(), "", None, 8).unwrap();
    }
    drop(store);
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute(
        "UPDATE jobs SET state = 'done', created = created - 3 * 86400 WHERE rowid = 1",
        [],
    )
    .unwrap();
    let out = common::precis_offline(home.path())
        .args(["jobs", "prune", "--job-retention-days", "2", "--cache"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deleted 1 jobs"), "{said}");
    let left: i64 = sql
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1);
}

/// A proxy named by the environment would resolve the host again, after
/// the address check: fetching never goes through one. The page is read
/// from the (allowed) local server although `HTTP_PROXY` points at a port
/// where nothing listens.
#[test]
fn fetching_ignores_proxy_variables() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if started.elapsed() < std::time::Duration::from_secs(30) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return format!("no request came: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        let mut request = [0u8; 1024];
        let n = conn.read(&mut request).unwrap();
        let page = "<html><head><title>Talks</title></head><body><p>Ministers met on Tuesday.</p></body></html>";
        write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        )
        .unwrap();
        String::from_utf8_lossy(&request[..n]).to_string()
    });
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args(["summarize", "--allow-address", "127.0.0.1"])
        .arg(format!("http://127.0.0.1:{port}/talks.html"))
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /talks.html "),
        "{request}: {out:?}"
    );
}

/// A server that anyone on the network could reach, with no API key, says
/// so when it starts; on loopback it does not.
#[test]
fn serve_warns_when_open_to_the_network_without_keys() {
    use std::io::BufRead;
    let home = tempfile::tempdir().unwrap();
    let first_lines = |addr: &str| {
        let mut child = common::precis_offline(home.path())
            .args(["serve", "--lazy", "--addr", addr])
            .env_remove("PRECIS_API_KEYS")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Up to the line that says it listens (or 20 s).
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
            let listening = line.contains("listening on");
            lines.push(line);
            if listening {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        lines.join("\n")
    };
    let open = first_lines("0.0.0.0:0");
    assert!(
        open.contains("warning: listening on 0.0.0.0:0 with no API key"),
        "{open}"
    );
    let local = first_lines("127.0.0.1:0");
    assert!(local.contains("listening on"), "{local}");
    assert!(!local.contains("no API key"), "{local}");
}

/// `precis languages` lists what the models would write, from their
/// manifests, without fetching anything.
#[test]
fn languages_lists_the_models_languages_without_fetching() {
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args(["languages", "--model", common::SMALLEST])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for (code, name) in [("en", "English"), ("ru", "Russian"), ("hi", "Hindi")] {
        let line = text
            .lines()
            .find(|l| l.starts_with(code))
            .unwrap_or_else(|| panic!("{code} missing: {text}"));
        assert!(
            line.contains(name) && line.contains(common::SMALLEST),
            "{line}"
        );
    }
    let out = common::precis_offline(home.path())
        .args(["languages", "--json", "--model", common::SMALLEST])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["code"], "en");
}
