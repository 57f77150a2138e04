//! The server's load test, full length: starts `precis serve` on loopback
//! with a real small model, sends 4× its `--max-concurrency` in concurrent
//! summarize requests for 60 s (bounded in count too), and fails unless every
//! answer is 2xx or 429, resident memory grows no more than 200 MB over the
//! warmed-up baseline, and the server is healthy afterwards. `--throughput`
//! instead measures total generated tokens/s at 1, 2 and 4 concurrent
//! requests (a queue deep enough that none is refused).
//!
//! ```sh
//! cargo build --release && cargo run --release --example loadtest
//! cargo run --release --example loadtest -- --seconds 20 --concurrency 2 --model smollm2-135m-instruct-q4_1
//! cargo run --release --example loadtest -- --throughput --seconds 30 --article short.txt
//! ```
//!
//! `tests/load.rs` runs the same driver for a few seconds in CI.

#[path = "../tests/common/load.rs"]
mod load;

use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: loadtest [--precis PATH] [--model ID] [--article FILE] [--seconds N] [--concurrency N] [--max-requests N] [--max-new-tokens N] [--throughput]";

fn main() {
    let mut precis: Option<PathBuf> = None;
    let mut model = "smollm2-135m-instruct-q4_1".to_string();
    let (mut seconds, mut concurrency, mut max_requests, mut tokens) =
        (60u64, 2usize, 10_000usize, 32usize);
    let mut throughput = false;
    let mut article_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("{a} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        let number = |v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {v}\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--precis" => precis = Some(PathBuf::from(value())),
            "--model" => model = value(),
            "--article" => article_file = Some(PathBuf::from(value())),
            "--seconds" => seconds = number(value()),
            "--concurrency" => concurrency = number(value()) as usize,
            "--max-requests" => max_requests = number(value()) as usize,
            "--max-new-tokens" => tokens = number(value()) as usize,
            "--throughput" => throughput = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    // target/<profile>/examples/loadtest → target/<profile>/precis
    let precis = precis.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("own path");
        exe.parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("precis"))
            .expect("a target directory")
    });
    if !precis.exists() {
        eprintln!(
            "no precis binary at {} (build it: cargo build --release, or give --precis PATH)",
            precis.display()
        );
        std::process::exit(2);
    }
    let article = match &article_file {
        Some(path) => std::fs::read_to_string(path).unwrap_or_else(|e| {
            eprintln!("cannot read {}: {e}", path.display());
            std::process::exit(2)
        }),
        None => include_str!("sample-article.txt").to_string(),
    };
    let article = article.as_str();
    let duration = Duration::from_secs(seconds);
    if throughput {
        let what = article_file.as_ref().map_or_else(
            || "the sample article".to_string(),
            |p| p.display().to_string(),
        );
        println!("total generated tokens/s, {model}, summaries of {what} ({} characters), {tokens} new tokens each, {seconds} s per level", article.chars().count());
        for clients in [1, 2, 4] {
            let c = clients.to_string();
            let server = start(
                &precis,
                &model,
                &["--max-concurrency", &c, "--queue-depth", "64"],
            );
            let report = load::drive(
                &server,
                &load::Load::summaries(clients, duration, article, tokens),
            );
            println!(
                "{clients} concurrent: {:.1} tok/s ({} requests answered 200)",
                report.tokens_per_second(),
                report.count(200)
            );
        }
        return;
    }
    let c = concurrency.to_string();
    let server = start(
        &precis,
        &model,
        &["--max-concurrency", &c, "--queue-depth", &c],
    );
    let mut load = load::Load::summaries(4 * concurrency, duration, article, tokens);
    load.max_requests = max_requests;
    println!(
        "{} clients against --max-concurrency {concurrency} --queue-depth {concurrency}, {seconds} s, at most {max_requests} requests, {model}",
        load.clients
    );
    let report = load::drive(&server, &load);
    println!("{}", report.describe());
    match load::check(&report, 200.0) {
        Ok(()) => println!("load test passed"),
        Err(e) => {
            eprintln!("load test failed: {e}");
            std::process::exit(1);
        }
    }
}

fn start(precis: &std::path::Path, model: &str, args: &[&str]) -> load::Server {
    let mut all = vec!["--model", model];
    all.extend_from_slice(args);
    load::Server::start(precis, &all, Duration::from_secs(600)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    })
}
