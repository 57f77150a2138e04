//! Requests arriving one after another: what a service sees. `k` summary
//! requests reach the model's worker (the engine's `ModelHandle`, as
//! `precis serve` uses it) `gap` apart, each from its own thread, streaming
//! its text; the report gives every request's time to first token (from its
//! arrival), their median, and the total tokens/s from the first arrival to
//! the last answer.
//!
//! ```sh
//! cargo bench --bench arrivals                   # Qwen2.5-Coder-0.5B, 8 requests 0.5 s apart
//! PRECIS_BENCH_MODEL=smollm2-135m-instruct-q4_1 cargo bench --bench arrivals
//! ```
//!
//! Each request summarizes a different stretch of the article (its
//! paragraphs from the `i`-th on, the first ones after the last,
//! `PRECIS_BENCH_ARRIVAL_CHARS` characters),
//! greedy, no repetition penalty, loop guard off, at most
//! `PRECIS_BENCH_ARRIVAL_TOKENS` tokens: the same requests every run, so two
//! runs (before and after a change) compare.
//!
//! Environment:
//! - `PRECIS_BENCH_MODEL`: manifest id or `.gguf` path [qwen2.5-coder-0.5b-instruct-q4_k_m]
//! - `PRECIS_BENCH_ARTICLE`: the article [examples/sample-article.txt]
//! - `PRECIS_BENCH_ARRIVALS`: requests [8]
//! - `PRECIS_BENCH_ARRIVAL_GAP_MS`: time between arrivals [500]
//! - `PRECIS_BENCH_ARRIVAL_TOKENS`: most tokens per answer [64]
//! - `PRECIS_BENCH_ARRIVAL_CHARS`: characters of article per request [1200]
//! - `PRECIS_BENCH_THREADS`: threads [2]
//! - `PRECIS_BENCH_JSON`: also write the figures as JSON to this path

/// The allocator the `precis` binary uses, set as it sets it (see
/// `precis::allocator`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{argmax_params, bench_article, bench_threads, env_usize, load_gguf, peak_rss_mb};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use precis_backend::{ChatMessage, GenerationRequest};
use precis_core::engine::ModelHandle;
use precis_core::task::{clean, CancelToken, TextModel};

/// What one request saw.
struct Seen {
    arrived_s: f64,
    first_token_s: Option<f64>,
    done_s: f64,
    tokens: usize,
}

fn main() -> anyhow::Result<()> {
    precis::allocator::keep_freed_pages();
    let threads = bench_threads()?;
    let model_name = std::env::var("PRECIS_BENCH_MODEL")
        .unwrap_or_else(|_| "qwen2.5-coder-0.5b-instruct-q4_k_m".to_string());
    let article_path = bench_article();
    let k = env_usize("PRECIS_BENCH_ARRIVALS", 8)?.max(1);
    let gap = Duration::from_millis(env_usize("PRECIS_BENCH_ARRIVAL_GAP_MS", 500)? as u64);
    let max_tokens = env_usize("PRECIS_BENCH_ARRIVAL_TOKENS", 64)?;
    let chars = env_usize("PRECIS_BENCH_ARRIVAL_CHARS", 1200)?;
    let json_path = std::env::var_os("PRECIS_BENCH_JSON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);

    let (id, model) = load_gguf(&model_name, threads)?;

    let text = std::fs::read_to_string(&article_path)?;
    let prepared = clean::prepare(&text, None, &clean::CleanOptions { enabled: true });
    let paragraphs = &prepared.paragraphs;
    if paragraphs.is_empty() {
        anyhow::bail!("{} has no paragraphs", article_path.display());
    }
    let request = |i: usize| {
        let from_i: Vec<&str> = (paragraphs.iter().cycle().skip(i))
            .take(paragraphs.len())
            .map(String::as_str)
            .collect();
        let stretch: String = from_i.join("\n\n").chars().take(chars).collect();
        GenerationRequest {
            messages: vec![ChatMessage::user(format!(
                "Summarize in one paragraph:\n\n{stretch}"
            ))],
            params: argmax_params(max_tokens),
            seq2seq: None,
            direction: None,
        }
    };

    let handle: Arc<dyn TextModel> = ModelHandle::spawn(Box::new(model));
    // Warm-up: one short request, so page faults and allocations are not
    // timed (its text is none of the requests', so no request finds its
    // start already read).
    let mut warm = request(0);
    warm.messages = vec![ChatMessage::user(
        "Summarize in one paragraph:\n\nA warm-up.",
    )];
    warm.params.max_new_tokens = 1;
    handle.generate(vec![warm], &CancelToken::new(), None);

    let start = Instant::now();
    let runs: Vec<_> = (0..k)
        .map(|i| {
            let handle = Arc::clone(&handle);
            let request = request(i);
            std::thread::spawn(move || -> anyhow::Result<Seen> {
                std::thread::sleep(
                    (start + gap * i as u32).saturating_duration_since(Instant::now()),
                );
                let arrived_s = start.elapsed().as_secs_f64();
                let mut first_token_s = None;
                let mut sink = |_: usize, _: &str| {
                    first_token_s.get_or_insert_with(|| start.elapsed().as_secs_f64());
                };
                let out = handle.generate(vec![request], &CancelToken::new(), Some(&mut sink));
                let done_s = start.elapsed().as_secs_f64();
                let g = out.into_iter().next().expect("one result")?;
                Ok(Seen {
                    arrived_s,
                    first_token_s,
                    done_s,
                    tokens: g.generated_tokens,
                })
            })
        })
        .collect();
    let mut seen = Vec::new();
    for run in runs {
        seen.push(
            run.join()
                .map_err(|_| anyhow::anyhow!("a request thread panicked"))??,
        );
    }

    let mut ttft: Vec<f64> = seen
        .iter()
        .map(|s| s.first_token_s.unwrap_or(s.done_s) - s.arrived_s)
        .collect();
    let tokens: usize = seen.iter().map(|s| s.tokens).sum();
    let end = seen.iter().map(|s| s.done_s).fold(0.0, f64::max);
    let first = seen.iter().map(|s| s.arrived_s).fold(f64::MAX, f64::min);
    let rate = tokens as f64 / (end - first).max(1e-9);
    println!("model            {}", id);
    println!("article          {}", article_path.display());
    println!(
        "arrivals         {k} requests {:.1} s apart, at most {max_tokens} tokens each, {threads} threads",
        gap.as_secs_f64()
    );
    for (i, s) in seen.iter().enumerate() {
        println!(
            "request {i}        arrived {:6.2} s, first token after {:5.2} s, done at {:6.2} s, {} tokens",
            s.arrived_s, ttft[i], s.done_s, s.tokens
        );
    }
    let per_request = ttft.clone();
    ttft.sort_by(f64::total_cmp);
    let median = if k % 2 == 1 {
        ttft[k / 2]
    } else {
        (ttft[k / 2 - 1] + ttft[k / 2]) / 2.0
    };
    println!(
        "throughput       {rate:.2} tok/s in all ({tokens} tokens in {:.2} s)",
        end - first
    );
    println!(
        "first token      median {median:.2} s, max {:.2} s",
        ttft[k - 1]
    );
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS         {mb:.0} MB");
    }
    if let Some(json_path) = json_path {
        let report = serde_json::json!({
            "model": id,
            "article": article_path.display().to_string(),
            "requests": k,
            "gap_s": gap.as_secs_f64(),
            "max_new_tokens": max_tokens,
            "threads": threads,
            "tokens": tokens,
            "tok_s": rate,
            "ttft_s": per_request,
            "ttft_median_s": median,
            "peak_rss_mb": peak_rss_mb(),
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
        println!("json             {}", json_path.display());
    }
    Ok(())
}
