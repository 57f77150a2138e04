//! Several `precis serve` processes sharing one PostgreSQL database, as
//! replicas behind a load balancer run: each started with the fake model
//! (`PRECIS_TEST_FAKE_MODEL`, a binary built with `test-backend`) and
//! `PRECIS_DATABASE_URL` pointing at a schema of the test's own in the test
//! server (`PRECIS_TEST_DATABASE_URL`; `.ci/run` starts one). Without that
//! server these tests say so and pass. They run one at a time: one of them
//! restarts the server.

#[path = "common/load.rs"]
mod load;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use precis_core::database::{test_database, Database};
use serde_json::{json, Value};

/// The URL of a fresh schema in the test server.
fn database(test: &str) -> Option<String> {
    match test_database(test) {
        Some(Database::Postgres(url)) => Some(url.expose_secret().to_string()),
        _ => {
            eprintln!("PRECIS_TEST_DATABASE_URL unset: {test} skipped");
            None
        }
    }
}

/// One test at a time (see the module's documentation).
static SERIAL: Mutex<()> = Mutex::new(());

/// A replica on `url` with the fake model and 2-second job leases.
fn replica(url: &str) -> load::Server {
    node(url, "all")
}

/// A process of `role` (`all`, `api` or `worker`) on `url`, as [`replica`].
fn node(url: &str, role: &str) -> load::Server {
    load::Server::start_with(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &["--model", "fake", "--job-lease-secs", "2", "--role", role],
        &[
            ("PRECIS_TEST_FAKE_MODEL", "1"),
            ("PRECIS_DATABASE_URL", url),
        ],
        Duration::from_secs(60),
    )
    .expect("the replica starts")
}

/// Posts a summarize job of `items` articles (each about 0.5 s of the fake
/// model's time, each text its own) to `server`, with an idempotency key
/// when given; gives the status and the answer.
fn post_job(server: &load::Server, items: usize, key: Option<&str>) -> (u16, Value) {
    let items: Vec<Value> = (0..items)
        .map(|i| json!({"text": format!("Item {i} FAKE_SLOW said one two three four five six seven eight nine. Nothing else.")}))
        .collect();
    let mut request = load::client(Duration::from_secs(30))
        .post(format!("{}/v1/jobs", server.base))
        .json(&json!({"task": "summarize", "items": items}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().expect("the replica answers");
    (
        response.status().as_u16(),
        response.json().expect("a JSON answer"),
    )
}

fn job(server: &load::Server, id: &str) -> Value {
    load::client(Duration::from_secs(30))
        .get(format!("{}/v1/jobs/{id}", server.base))
        .send()
        .expect("the replica answers")
        .json()
        .expect("a JSON answer")
}

/// Waits (at most `wait`) for job `id` to end, reading it from `server`.
fn ended(server: &load::Server, id: &str, wait: Duration) -> Value {
    let started = Instant::now();
    loop {
        let view = job(server, id);
        if view["state"] != "queued" && view["state"] != "running" {
            return view;
        }
        assert!(started.elapsed() < wait, "the job did not end: {view}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks that every one of `n` items has exactly one result, a 200.
fn every_item_once(view: &Value, n: usize) {
    assert_eq!(view["state"], "done", "{view}");
    let results = view["results"].as_array().unwrap();
    let mut indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    indices.sort();
    assert_eq!(indices, (0..n as u64).collect::<Vec<_>>(), "{view}");
    for r in results {
        assert_eq!(r["status"], 200, "{r}");
    }
}

fn summarize(server: &load::Server, text: &str) -> Value {
    let response = load::client(Duration::from_secs(30))
        .post(format!("{}/v1/summarize", server.base))
        .json(&json!({ "text": text }))
        .send()
        .expect("the replica answers");
    assert_eq!(response.status(), 200);
    response.json().expect("a JSON answer")
}

#[test]
fn a_result_cached_through_one_replica_is_a_hit_through_the_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(url) = database("cache_replicas") else {
        return;
    };
    let (a, b) = (replica(&url), replica(&url));
    let text =
        "The council approved the new bridge on Monday. Work starts in May and ends in 2028.";
    let first = summarize(&a, text);
    assert_eq!(first["cache"]["hits"], 0, "{first}");
    assert!(first["cache"]["misses"].as_u64() > Some(0), "{first}");
    let second = summarize(&b, text);
    assert_eq!(second["cache"]["misses"], 0, "{second}");
    assert_eq!(
        second["cache"]["hits"], first["cache"]["misses"],
        "{second}"
    );
    assert_eq!(second["summary"], first["summary"]);
}

#[test]
fn a_worker_killed_mid_item_loses_nothing_and_no_finished_item_runs_twice() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(url) = database("kill_worker") else {
        return;
    };
    let api = node(&url, "api");
    let mut workers: Vec<load::Server> = (0..3).map(|_| node(&url, "worker")).collect();
    // A worker serves no API.
    let refused = load::client(Duration::from_secs(5))
        .get(format!("{}/v1/models", workers[0].base))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 404);
    let (status, posted) = post_job(&api, 60, None);
    assert_eq!(status, 202, "{posted}");
    let id = posted["id"].as_str().unwrap().to_string();
    // Kill a worker while it has items in flight.
    let started = Instant::now();
    while workers[0].metric("precis_requests_in_flight") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "worker 0 never took an item"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    workers[0].kill();
    let view = ended(&api, &id, Duration::from_secs(120));
    every_item_once(&view, 60);
    // A finished item is in the shared cache: had it run again anywhere,
    // that run would have been a hit. The killed worker's unfinished items
    // were run again (misses), the others once.
    let survivors = [&workers[1], &workers[2]];
    let hits: f64 = survivors
        .iter()
        .map(|s| s.metric("precis_cache_hits_total"))
        .sum();
    assert_eq!(hits, 0.0, "a finished item was computed again");
    let runs: f64 = survivors
        .iter()
        .map(|s| s.metric("precis_cache_misses_total"))
        .sum();
    assert!(runs <= 60.0, "{runs} model runs on the survivors");
    for s in survivors {
        assert!(s.metric("precis_cache_misses_total") > 0.0);
    }
    // The api replica ran no item.
    assert_eq!(api.metric("precis_cache_misses_total"), 0.0);
}

#[test]
fn workers_reconnect_when_the_database_restarts_mid_job() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (Some(url), Ok(dir)) = (
        database("restart"),
        std::env::var("PRECIS_TEST_POSTGRES_DIR"),
    ) else {
        eprintln!("PRECIS_TEST_POSTGRES_DIR unset: the database cannot be restarted here");
        return;
    };
    let (a, b) = (replica(&url), replica(&url));
    let (status, posted) = post_job(&a, 24, None);
    assert_eq!(status, 202, "{posted}");
    let id = posted["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    while job(&b, &id)["progress"]["done"].as_u64() < Some(2) {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted = std::process::Command::new("scripts/throwaway-postgres.sh")
        .args(["restart", &dir])
        .status()
        .expect("the restart script runs");
    assert!(restarted.success());
    let view = ended(&b, &id, Duration::from_secs(120));
    every_item_once(&view, 24);
}

#[test]
fn the_same_idempotency_key_sent_to_two_replicas_at_once_makes_one_job() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(url) = database("idempotency") else {
        return;
    };
    let (a, b) = (replica(&url), replica(&url));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|server| scope.spawn(move || post_job(server, 2, Some("weekly-7"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let created = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(created, 1, "{answers:?}");
    let id = ids.into_iter().next().unwrap().to_string();
    every_item_once(&ended(&b, &id, Duration::from_secs(60)), 2);
}
