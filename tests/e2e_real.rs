//! End to end on a real model: the smallest one the project can fetch
//! (SmolLM2-135M-Instruct, Q4_1 GGUF), through the `precis` binary and through
//! its server, on the project's own sample article. The model is fetched
//! through the store on first use. These tests assert shape, lengths and flags,
//! not exact text: the model is tiny and its words are poor.
//!
//! Generation is capped with `--max-new-tokens` so the suite stays quick on two
//! CPU cores; outputs cut by the cap carry the `token_limit_reached` flag.

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/sse.rs"]
mod sse;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SAMPLE: &str = "examples/sample-article.txt";
const CAP: &str = "40";

fn precis() -> Command {
    // Fetch (once) before the binary needs it, so a failure to fetch names the model.
    common::real_model_file(common::SMALLEST, None);
    common::precis()
}

fn run_json(args: &[&str]) -> Value {
    let out = precis().args(args).output().expect("precis runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "precis {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn flag_codes(v: &Value) -> Vec<String> {
    v["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["code"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn sample_chars() -> usize {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/sample-article.txt"
    ))
    .expect("sample article")
    .chars()
    .count()
}

fn assert_digest_shape(v: &Value) {
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["task"], "digest");
    let summary = &v["summary"];
    let text = summary["text"].as_str().expect("summary text");
    assert!(!text.trim().is_empty(), "empty summary");
    assert!(
        text.chars().count() * 4 < sample_chars(),
        "summary is not shorter than a quarter of the article"
    );
    assert_eq!(summary["model"]["id"], common::SMALLEST);
    assert_eq!(
        summary["model"]["revision"],
        "ab810cf68114990406fdf996510dd3d3c6adbdf5"
    );
    assert_eq!(summary["params"]["max_new_tokens"], 40);
    assert!(summary["tokens"]["generated"].as_u64().unwrap() <= 40);
    let translations = v["translations"].as_array().expect("translations");
    let langs: Vec<&str> = translations
        .iter()
        .map(|t| t["language"].as_str().unwrap())
        .collect();
    assert_eq!(langs, ["ru", "hi"]);
    for t in translations {
        assert_eq!(t["source"], "summary");
        assert_eq!(t["paragraphs"].as_array().unwrap().len(), 1);
        assert!(!t["text"].as_str().unwrap().trim().is_empty());
        assert_eq!(t["model"]["id"], common::SMALLEST);
        // Every flag is one of the documented codes.
        for code in flag_codes(t) {
            assert!(
                [
                    "script_share_low",
                    "mixed_script_words",
                    "sentence_count_mismatch",
                    "loop_detected",
                    "token_limit_reached",
                    "numbers_not_in_source",
                    "numbers_missing",
                    "entities_missing",
                    "length_ratio_out_of_range"
                ]
                .contains(&code.as_str()),
                "undocumented flag {code}"
            );
        }
    }
    // The sample's three non-story paragraphs are dropped and listed.
    let reasons: Vec<&str> = v["input"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["photo_credit", "contributor_line", "comment_form"]
    );
}

#[test]
fn cli_digest_of_the_sample_article() {
    let v = run_json(&[
        "digest",
        "--quiet",
        "--model",
        common::SMALLEST,
        "--to",
        "ru,hi",
        "--format",
        "json",
        "--max-new-tokens",
        CAP,
        SAMPLE,
    ]);
    assert_digest_shape(&v);
}

#[test]
fn cli_translate_keeps_every_paragraph() {
    let v = run_json(&[
        "translate",
        "--quiet",
        "--model",
        common::SMALLEST,
        "--to",
        "ru",
        "--max-new-tokens",
        CAP,
        SAMPLE,
    ]);
    let kept = v["input"]["paragraphs_kept"].as_u64().unwrap() as usize;
    assert_eq!(
        kept,
        v["input"]["paragraphs_in"].as_u64().unwrap() as usize - 3
    );
    let t = &v["translations"][0];
    assert_eq!(t["language"], "ru");
    assert_eq!(t["source"], "article");
    let paragraphs = t["paragraphs"].as_array().unwrap();
    assert_eq!(paragraphs.len(), kept, "N paragraphs in, N out");
    assert!(paragraphs
        .iter()
        .all(|p| !p.as_str().unwrap().trim().is_empty()));
    assert!(t["title"].is_string(), "the headline is translated too");
    // The decoding keeps to Cyrillic: every run of Latin letters begins a
    // span the article protects (an acronym, a URL, …); the tiny model,
    // left alone, writes English words and half-English ones.
    let article = std::fs::read_to_string(SAMPLE).unwrap();
    let spans = precis_backend::script::protected_spans(&article);
    let joiner = |c: char| c.is_ascii_alphanumeric() || "._-/:@?=&%#+~".contains(c);
    for text in paragraphs.iter().chain([&t["title"]]) {
        let text = text.as_str().unwrap();
        for run in text.split(|c: char| !joiner(c)) {
            let run = run.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            if run.chars().any(|c| c.is_ascii_alphabetic()) {
                assert!(
                    spans.iter().any(|s| s.starts_with(run)),
                    "`{run}` in {text:?} is Latin outside the protected spans {spans:?}"
                );
            }
        }
    }
}

fn summarize_smallest(format: &str, input: &std::path::Path) -> std::process::Output {
    precis()
        .args([
            "summarize",
            "--quiet",
            "--model",
            common::SMALLEST,
            "--max-new-tokens",
            CAP,
        ])
        .args(["--format", format])
        .arg(input)
        .output()
        .unwrap()
}

#[test]
fn cli_summarize_jsonl_and_markdown() {
    // Two JSON Lines records in, two results out, in order; one is empty and fails.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{}", json!({"id": "a", "title": "Rain", "text": "Heavy rain closed 12 schools in the city on Monday. Officials said they would reopen on Wednesday."})).unwrap();
    writeln!(f, "{}", json!({"id": "b", "text": "   "})).unwrap();
    drop(f);
    let out = summarize_smallest("jsonl", &input);
    assert_eq!(out.status.code(), Some(1), "one article failed: exit 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("items.jsonl:2"),
        "the failed item is named: {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    assert!(lines[0]["summary"]["text"].as_str().unwrap().len() > 5);
    assert_eq!(lines[1]["error"]["code"], "empty_text");
    assert_eq!(lines[1]["id"], "b", "a failed item keeps its id");

    let out = summarize_smallest("markdown", std::path::Path::new(SAMPLE));
    assert!(out.status.success());
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.starts_with("## Four river nations"), "{md}");
    // The model is named, its `_` escaped as all Markdown punctuation is.
    assert!(md.contains(&common::SMALLEST.replace('_', "\\_")), "{md}");
}

#[test]
fn server_digest_bad_input_and_graceful_shutdown() {
    // Fetched first, so a failure to fetch names the model.
    common::real_model_file(common::SMALLEST, None);
    // /health answers while the model loads; this waits for /ready.
    let mut server = load::Server::start(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &["--model", common::SMALLEST],
        Duration::from_secs(120),
    )
    .expect("server starts");
    let base = server.base.clone();
    let client = load::client(Duration::from_secs(600));

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["models"][0]["id"], common::SMALLEST);

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/sample-article.txt"
    ))
    .unwrap();
    let resp = client
        .post(format!("{base}/v1/digest"))
        .json(&json!({"text": text, "to": ["ru", "hi"], "generation": {"max_new_tokens": 40}}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_digest_shape(&v);

    // Streamed: the summary token by token, then its translation, then the result.
    let resp = client
        .post(format!("{base}/v1/digest"))
        .json(&json!({"text": text, "to": ["ru"], "stream": true, "generation": {"max_new_tokens": 24}}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse::parse_events(&resp.text().unwrap());
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let summary_events = names.iter().filter(|n| **n == "summary").count();
    assert!(summary_events > 5, "{names:?}");
    let last = events.last().unwrap();
    assert_eq!(last.event, "result", "{names:?}");
    assert_eq!(last.data["translations"][0]["language"], "ru");
    let paragraphs: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "paragraph")
        .map(|e| &e.data)
        .collect();
    let translation = &last.data["translations"][0];
    assert_eq!(
        paragraphs.last().unwrap()["text"],
        translation["paragraphs"][0]
    );

    // Bad input gets a 4xx JSON error and the server keeps serving.
    let bad: [(Vec<u8>, u16, &str); 4] = [
        (b"{\"text\": ".to_vec(), 400, "malformed_json"),
        (
            serde_json::to_vec(&json!({"text": ""})).unwrap(),
            422,
            "empty_text",
        ),
        (
            serde_json::to_vec(&json!({"text": "Hi.", "to": ["xx"]})).unwrap(),
            422,
            "unsupported_language",
        ),
        (vec![b'{', 0xff, b'}'], 400, "invalid_utf8"),
    ];
    for (body, status, code) in bad {
        let resp = client
            .post(format!("{base}/v1/digest"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().unwrap();
        assert_eq!(v["error"]["code"], code);
    }
    let mut big = b"{\"text\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 50 * 1024 * 1024));
    big.extend(b"\"}");
    // The server may answer 413 before reading the whole body and close the
    // connection; either way it must not have stopped.
    if let Ok(resp) = client
        .post(format!("{base}/v1/digest"))
        .header("content-type", "application/json")
        .body(big)
        .send()
    {
        assert_eq!(resp.status().as_u16(), 413);
    }
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .unwrap()
            .status(),
        200
    );

    // SIGTERM during a request: the request finishes with 200, then the
    // server exits 0.
    let in_flight = std::thread::spawn({
        let (client, base, text) = (client.clone(), base.clone(), text.clone());
        move || {
            client
                .post(format!("{base}/v1/summarize"))
                .json(&json!({"text": text, "generation": {"max_new_tokens": 40}}))
                .send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        }
    });
    let started = Instant::now();
    while !client
        .get(format!("{base}/metrics"))
        .send()
        .and_then(|r| r.text())
        .is_ok_and(|m| m.contains("precis_requests_in_flight 1"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the request never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = server
        .terminate()
        .expect("the server stops within 30 s of SIGTERM");
    assert!(exit.success(), "server exit status {exit:?}");
    let (status, body) = in_flight
        .join()
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(status, 200, "{body}");
}

/// Stored generations in the cache file (0 before it exists).
fn cache_entries(path: &std::path::Path) -> u64 {
    if !path.exists() {
        return 0;
    }
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row("SELECT COUNT(*) FROM generations", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as u64)
}

#[test]
fn a_run_killed_midway_resumes_without_recomputing_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    // 20 short articles: consecutive sentence pairs of the sample.
    let text = std::fs::read_to_string(SAMPLE).unwrap();
    let sentences: Vec<&str> = text
        .split_inclusive(['.', '!', '?'])
        .map(str::trim)
        .filter(|s| s.split_whitespace().count() > 5)
        .collect();
    assert!(sentences.len() >= 21, "{}", sentences.len());
    let items = dir.path().join("items.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let text = format!("{} {}", sentences[i], sentences[i + 1]);
            json!({"id": format!("item-{i}"), "text": text}).to_string()
        })
        .collect();
    std::fs::write(&items, lines.join("\n") + "\n").unwrap();
    let cache = dir.path().join("cache.sqlite3");
    let out = dir.path().join("out.jsonl");
    let run = || {
        let mut cmd = precis();
        cmd.env_remove("PRECIS_NO_CACHE")
            .args(["summarize", "--quiet", "--model", common::SMALLEST])
            .args(["--max-new-tokens", "8", "--format", "jsonl"])
            .arg("--cache")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .arg(&items);
        cmd
    };
    let mut child = run()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while cache_entries(&cache) < 5 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = cache_entries(&cache);
    assert!(
        (5..20).contains(&done),
        "{done} of 20 were done at the kill"
    );
    assert!(!out.exists(), "a killed run left a partial output file");

    let rerun = run().output().unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let results: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 20);
    // Those finished before the kill (several run at once, so not always
    // the first ones) are hits; the rest ran once each.
    let mut hits = 0;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["id"], format!("item-{i}"), "results in input order");
        let cache = &r["cache"];
        assert!(
            *cache == json!({"hits": 1, "misses": 0}) || *cache == json!({"hits": 0, "misses": 1}),
            "item {i}: {cache}"
        );
        hits += cache["hits"].as_u64().unwrap();
    }
    assert_eq!(
        hits, done,
        "every generation finished before the kill is reused"
    );
    assert_eq!(cache_entries(&cache), 20);
}

#[test]
fn a_feed_gives_markdown_and_html_digests_and_a_rerun_runs_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.sqlite3");
    let digest = |format: &str| {
        let out = precis()
            .env_remove("PRECIS_NO_CACHE")
            .args(["digest", "--model", common::SMALLEST, "--to", "ru,hi"])
            .args(["--max-new-tokens", "16", "--format", format])
            .arg("--cache")
            .arg(&cache)
            .arg("examples/feeds/basin-weekly.rss")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stderr}");
        (stdout, stderr)
    };
    let (md, stderr) = digest("markdown");
    assert!(stderr.contains("cache: 0 of 3 articles"), "{stderr}");
    assert_eq!(
        md.matches("\n## [").count() + usize::from(md.starts_with("## [")),
        3,
        "{md}"
    );
    assert!(md.contains("](<https://news.example/2024/05/vessa-next>)"));
    assert_eq!(md.matches("### Русский (Russian)").count(), 3);
    assert_eq!(md.matches("### हिन्दी (Hindi)").count(), 3);
    // The same feed again: every generation from the cache.
    let (html, stderr) = digest("html");
    assert!(
        stderr.contains("cache: 3 of 3 articles entirely from the cache")
            && stderr.contains(", 0 run)"),
        "{stderr}"
    );
    assert_eq!(html.matches("<article>").count(), 3);
    assert_eq!(html.matches("<section lang=\"ru\">").count(), 3);
}
