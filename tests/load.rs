//! The load test, short (the full one is `examples/loadtest.rs`): `precis
//! serve` with the smallest real model and `--max-concurrency 1
//! --queue-depth 1`, driven by 4 clients for a few seconds. Every answer
//! must be 2xx or 429 (a 5xx or a 504 fails), memory may grow at most 200 MB
//! over the warmed-up baseline, and the server must be healthy afterwards.

mod common;
#[path = "common/load.rs"]
mod load;

use std::time::Duration;

#[test]
fn four_times_the_concurrency_gets_2xx_or_429_and_memory_stays_bounded() {
    // Fetched by the store before the server starts (never by a request).
    common::real_model_file(common::SMALLEST, None);
    let seconds = std::env::var("PRECIS_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let server = load::Server::start(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &[
            "--model",
            common::SMALLEST,
            "--max-concurrency",
            "1",
            "--queue-depth",
            "1",
        ],
        Duration::from_secs(120),
    )
    .expect("the server starts");
    let article = include_str!("../examples/sample-article.txt");
    let mut plan = load::Load::summaries(4, Duration::from_secs(seconds), article, 16);
    plan.max_requests = 1000;
    let report = load::drive(&server, &plan);
    eprintln!("{}", report.describe());
    if let Err(e) = load::check(&report, 200.0) {
        panic!("{e}\n{}", report.describe());
    }
    // Four clients on one slot and one queue place: some were refused.
    assert!(report.count(429) > 0, "{}", report.describe());
}
