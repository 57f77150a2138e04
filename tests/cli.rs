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
}
