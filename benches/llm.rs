//! LLM backend benchmark: prefill and decode tokens/s and peak memory on a real
//! GGUF model, on the summary prompt built from an article.
//!
//! ```sh
//! cargo bench --bench llm                                  # SmolLM2-135M, the sample article
//! PRECIS_BENCH_MODEL=qwen2.5-coder-1.5b-instruct-q4_k_m \
//! PRECIS_BENCH_ARTICLE=../shared/seeds/g20-blinken-lavrov.txt cargo bench --bench llm
//! ```
//!
//! The model (a manifest id or a `.gguf` path) is fetched through the model
//! store on first use. After a one-token warm-up run, one timed run generates
//! `PRECIS_BENCH_TOKENS` (64) + 1 greedy tokens with the loop guard off:
//! prefill is the time to the first token (prompt tokens / that time), decode
//! the remaining tokens over the remaining time. A model that emits an end
//! token earlier is reported, and the figure covers what it made.
//! Peak memory is the process's high-water RSS (VmHWM) after both runs.

use std::path::PathBuf;
use std::time::Instant;

use precis::backend::gguf::{GgufModel, GgufOptions};
use precis::backend::{Backend, Flow, GenerationParams, GenerationRequest};
use precis::store::{ModelStore, StoreConfig};
use precis::task::{clean, prompt, Length};

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let model_name = std::env::var("PRECIS_BENCH_MODEL")
        .unwrap_or_else(|_| "smollm2-135m-instruct-q4_1".to_string());
    let article_path = std::env::var("PRECIS_BENCH_ARTICLE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("examples/sample-article.txt"));
    let tokens: usize = std::env::var("PRECIS_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);

    let store = ModelStore::open(StoreConfig::from_env())?;
    let spec = store.resolve(&model_name)?;
    let located = tokio::runtime::Runtime::new()?.block_on(store.fetch(&spec))?;
    let path = located.first_path().to_path_buf();
    let load_start = Instant::now();
    let mut model = GgufModel::load(
        &path,
        GgufOptions {
            id: Some(spec.id.clone()),
            ..GgufOptions::default()
        },
    )?;
    let load_s = load_start.elapsed().as_secs_f64();

    let text = std::fs::read_to_string(&article_path)?;
    let prepared = clean::prepare(&text, None, &clean::CleanOptions { enabled: true });
    let messages = prompt::summary(&prepared, "en", Length::Sentences(3));
    let prompt_tokens = model.prompt_tokens(&messages)?;
    let request = |max_new_tokens| GenerationRequest {
        messages: messages.clone(),
        params: GenerationParams {
            max_new_tokens,
            loop_guard: false,
            ..GenerationParams::default()
        },
    };

    // Warm-up: one short run, so page faults and allocations are not timed.
    let warm = model.generate(&[request(1)], &mut |_, _| Flow::Continue);
    warm.into_iter().next().transpose()?;

    // One timed run: prefill ends when the first token arrives, decode is the rest.
    let start = Instant::now();
    let mut first_token: Option<f64> = None;
    let out = model.generate(&[request(tokens + 1)], &mut |_, _| {
        first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
        Flow::Continue
    });
    let total_s = start.elapsed().as_secs_f64();
    let generated = out
        .into_iter()
        .next()
        .transpose()?
        .map(|g| g.generated_tokens)
        .unwrap_or(0);
    let prefill_s = first_token.unwrap_or(total_s);
    let decode_tokens = generated.saturating_sub(1).max(1);
    let decode_s = (total_s - prefill_s).max(1e-9);

    println!("model            {}", spec.id);
    println!("file             {}", path.display());
    println!("article          {}", article_path.display());
    println!("threads          {}", candle_core::utils::get_num_threads());
    println!("load             {load_s:.2} s");
    println!("prompt tokens    {prompt_tokens}");
    println!(
        "prefill          {:.1} tok/s ({prefill_s:.2} s)",
        prompt_tokens as f64 / prefill_s
    );
    println!(
        "decode           {:.2} tok/s ({decode_tokens} tokens, {decode_s:.2} s)",
        decode_tokens as f64 / decode_s
    );
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS         {mb:.0} MB");
    }
    if generated < tokens + 1 {
        println!("note: the model stopped after {generated} tokens (end token); decode figure covers those");
    }
    Ok(())
}
