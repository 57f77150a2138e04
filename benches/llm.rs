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
//! `PRECIS_BENCH_TOKENS` (64) + 1 greedy tokens with the loop guard off and no
//! repetition penalty (pure arg-max, as llama.cpp's greedy sampling):
//! prefill is the time to the first token (prompt tokens / that time), decode
//! the remaining tokens over the remaining time. A model that emits an end
//! token earlier is reported, and the figure covers what it made.
//! Peak memory is the process's high-water RSS (VmHWM) after both runs.
//! Then batched decoding: 1, 2 and 4 requests with prompts of different
//! lengths (the article's first 400, 600, 800, 1000 characters) generated
//! together, `PRECIS_BENCH_CONCURRENT_TOKENS` (32) tokens each; the figure is
//! the total decode tok/s of all sequences once every prompt has been read.
//!
//! Environment:
//! - `PRECIS_BENCH_MODEL`: manifest id or `.gguf` path [smollm2-135m-instruct-q4_1]
//! - `PRECIS_BENCH_ARTICLE`: the article [examples/sample-article.txt]
//! - `PRECIS_BENCH_TOKENS`: decode tokens after the first one [64]
//! - `PRECIS_BENCH_THREADS`: worker threads [2]. Every pool the backend may use
//!   is sized to it: rayon's global pool (built here), and, because they read
//!   the environment when first used, candle's own pools (`RAYON_NUM_THREADS`,
//!   `CANDLE_NUM_THREADS`: candle-core 0.11 sizes its rayon pool and the
//!   barrier pool of its quantized matmuls from them, else from the number of
//!   physical cores) and a decoder pool built with the default size. The
//!   report shows the CPU time over wall time of the timed run, which checks it.
//! - `PRECIS_BENCH_DRAFT`: a draft model (manifest id or `.gguf` path, same
//!   vocabulary) for the speculative section's `draft-model` line
//!   (Qwen2.5-Coder-0.5B for the 1.5B); unset: no such line
//! - `PRECIS_BENCH_DEVICE` [cpu]: `cuda` / `cuda:N` runs the model on that GPU
//!   through candle's quantized models (a build with `--features cuda`);
//!   speculative decoding and the greedy ids are the CPU decoder's, and are
//!   left out there
//! - `PRECIS_BENCH_SKELETON_OUT`: write the model's skeleton (metadata and
//!   tensor shapes, no weights) to this path and stop; a skeleton given as
//!   the model is made into a model of random weights of those shapes and
//!   block types, and timed (`scripts/gpu-check.sh` carries skeletons)
//! - `PRECIS_BENCH_JSON`: also write the figures as JSON to this path: model,
//!   file, threads, the prompt's token ids, prefill/decode tok/s, peak RSS,
//!   load time, and the greedy ids (from an extra, untimed pure arg-max run of
//!   the same length through `GgufModel::greedy_ids`; `PRECIS_BENCH_IDS=0`
//!   skips it). `benches/compare-llamacpp.sh` reads this file.

/// The allocator the `precis` binary uses, set as it sets it (see
/// `precis::allocator`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{
    argmax_params, bench_article, bench_device, bench_threads, cpu_seconds, env_usize, gguf_file,
    is_skeleton, load_gguf, peak_rss_mb, proc_status_field, synthesize, write_skeleton,
};

use std::path::{Path, PathBuf};
use std::time::Instant;

use precis_backend::gguf::{GgufModel, GgufOptions, Speculation};
use precis_backend::{Backend, ChatMessage, Flow, GenerationRequest, Placement};
use precis_core::task::{clean, prompt, Length};

fn main() -> anyhow::Result<()> {
    precis::allocator::keep_freed_pages();
    let threads = bench_threads()?;

    let model_name = std::env::var("PRECIS_BENCH_MODEL")
        .unwrap_or_else(|_| "smollm2-135m-instruct-q4_1".to_string());
    let article_path = bench_article();
    let tokens = env_usize("PRECIS_BENCH_TOKENS", 64)?;
    let json_path = std::env::var_os("PRECIS_BENCH_JSON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let skip_ids = std::env::var("PRECIS_BENCH_IDS").is_ok_and(|v| v.trim() == "0");
    let want_ids = json_path.is_some() && !skip_ids;

    let placement = bench_device()?;
    let on_cpu = placement == Placement::Cpu;
    let want_ids = want_ids && on_cpu;
    let (id, mut path) = gguf_file(&model_name)?;
    if let Some(out) = std::env::var_os("PRECIS_BENCH_SKELETON_OUT").filter(|v| !v.is_empty()) {
        write_skeleton(&path, Path::new(&out))?;
        println!(
            "skeleton of {} written to {}",
            path.display(),
            Path::new(&out).display()
        );
        return Ok(());
    }
    if is_skeleton(&path)? {
        let real = std::env::temp_dir().join(format!("precis-synthetic-{id}.gguf"));
        let start = Instant::now();
        synthesize(&path, &real)?;
        println!(
            "model            random weights in the shapes and block types of {} ({:.1} s to make)",
            path.display(),
            start.elapsed().as_secs_f64()
        );
        path = real;
    }
    let load_start = Instant::now();
    let mut model = GgufModel::load(
        &path,
        GgufOptions {
            id: Some(id.clone()),
            threads,
            // Plain decoding, as llama.cpp's greedy run; speculative
            // decoding is measured on its own below.
            speculation: Speculation::Off,
            placement,
            ..GgufOptions::default()
        },
    )?;
    let load_s = load_start.elapsed().as_secs_f64();

    let text = std::fs::read_to_string(&article_path)?;
    let prepared = clean::prepare(&text, None, &clean::CleanOptions { enabled: true });
    let messages = prompt::summary(&prepared, "en", Length::Sentences(3));
    let prompt_tokens = model.prompt_tokens(&messages)?;
    let prompt_ids = model.chat_ids(&messages)?;
    let request = |max_new_tokens| GenerationRequest {
        messages: messages.clone(),
        params: argmax_params(max_new_tokens),
        seq2seq: None,
        direction: None,
    };

    // Warm-up: one short run, so page faults and allocations are not timed.
    let warm = model.generate(&[request(1)], &mut |_, _| Flow::Continue);
    warm.into_iter().next().transpose()?;

    // One timed run: prefill ends when the first token arrives, decode is the rest.
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut first_token: Option<(f64, Option<f64>)> = None;
    let out = model.generate(&[request(tokens + 1)], &mut |_, piece| {
        if piece.is_empty() {
            return Flow::Continue;
        }
        first_token.get_or_insert_with(|| (start.elapsed().as_secs_f64(), cpu_seconds()));
        Flow::Continue
    });
    let total_s = start.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds();
    let generated = out
        .into_iter()
        .next()
        .transpose()?
        .map(|g| g.generated_tokens)
        .unwrap_or(0);
    let (prefill_s, cpu_first) = first_token.unwrap_or((total_s, cpu_end));
    let decode_tokens = generated.saturating_sub(1).max(1);
    let decode_s = (total_s - prefill_s).max(1e-9);
    let prefill_tok_s = prompt_tokens as f64 / prefill_s;
    let decode_tok_s = decode_tokens as f64 / decode_s;
    // Cores kept busy: CPU seconds over wall seconds.
    let busy = |cpu_a: Option<f64>, cpu_b: Option<f64>, wall: f64| match (cpu_a, cpu_b) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
        _ => None,
    };
    let prefill_cores = busy(cpu_start, cpu_first, prefill_s);
    let decode_cores = busy(cpu_first, cpu_end, decode_s);
    let peak_mb = peak_rss_mb();
    let os_threads = proc_status_field("Threads:");

    println!("model            {}", id);
    println!("file             {}", path.display());
    println!("article          {}", article_path.display());
    println!(
        "threads          {threads} (rayon global pool {}, candle {}, OS threads {})",
        rayon::current_num_threads(),
        candle_core::utils::get_num_threads(),
        os_threads.map_or("?".into(), |t| format!("{t:.0}")),
    );
    println!("load             {load_s:.2} s");
    println!("prompt tokens    {prompt_tokens}");
    let cores = |c: Option<f64>| c.map_or(String::new(), |c| format!(", {c:.2} cores busy"));
    println!(
        "prefill          {prefill_tok_s:.1} tok/s ({prefill_s:.2} s{})",
        cores(prefill_cores)
    );
    println!(
        "decode           {decode_tok_s:.2} tok/s ({decode_tokens} tokens, {decode_s:.2} s{})",
        cores(decode_cores)
    );
    if let Some(mb) = peak_mb {
        println!("peak RSS         {mb:.0} MB");
    }
    if generated < tokens + 1 {
        println!("note: the model stopped after {generated} tokens (end token); decode figure covers those");
    }
    if prompt_ids.len() != prompt_tokens {
        println!(
            "note: chat_ids gives {} ids but prompt_tokens {prompt_tokens}",
            prompt_ids.len()
        );
    }

    // Concurrent sequences: k requests with prompts of different lengths
    // (the article's first 400, 600, … characters), decoded together in one
    // forward pass per step. Decode throughput counts every sequence's tokens
    // after the last prompt has been read.
    let concurrent_tokens = env_usize("PRECIS_BENCH_CONCURRENT_TOKENS", 32)?;
    let mut concurrent = Vec::new();
    for k in [1usize, 2, 4] {
        let requests: Vec<GenerationRequest> = (0..k)
            .map(|i| {
                let chars: String = prepared
                    .paragraphs
                    .join("\n\n")
                    .chars()
                    .take(400 + 200 * i)
                    .collect();
                GenerationRequest {
                    messages: vec![ChatMessage::user(format!(
                        "Summarize in one paragraph:\n\n{chars}"
                    ))],
                    params: argmax_params(concurrent_tokens),
                    seq2seq: None,
                    direction: None,
                }
            })
            .collect();
        let start = Instant::now();
        let mut firsts = vec![false; k];
        let mut all_first: Option<f64> = None;
        let out = model.generate(&requests, &mut |i, piece| {
            if !firsts[i] && !piece.is_empty() {
                firsts[i] = true;
                if firsts.iter().all(|&f| f) {
                    all_first = Some(start.elapsed().as_secs_f64());
                }
            }
            Flow::Continue
        });
        let end = start.elapsed().as_secs_f64();
        let mut tokens_after = 0usize;
        for g in out {
            tokens_after += g?.generated_tokens.saturating_sub(1);
        }
        let decode_s = (end - all_first.unwrap_or(end)).max(1e-9);
        let rate = tokens_after as f64 / decode_s;
        println!("decode ×{k}        {rate:.2} tok/s in all ({tokens_after} tokens after the prompts, {decode_s:.2} s)");
        concurrent.push(
            serde_json::json!({"sequences": k, "decode_tok_s": rate, "tokens": tokens_after}),
        );
    }

    // Speculative decoding: the summary request again, `PRECIS_BENCH_SPEC_TOKENS`
    // greedy tokens, plain and with each drafting method; the outputs must be
    // the same tokens.
    let spec_tokens = env_usize("PRECIS_BENCH_SPEC_TOKENS", 128)?;
    let mut speculative = Vec::new();
    let mut plain_text: Option<String> = None;
    let mut methods = if on_cpu {
        vec![
            ("plain", Speculation::Off),
            ("prompt-lookup", Speculation::PromptLookup),
        ]
    } else {
        Vec::new()
    };
    if let Some(draft) = std::env::var("PRECIS_BENCH_DRAFT")
        .ok()
        .filter(|v| on_cpu && !v.is_empty())
    {
        let (draft_id, draft) = load_gguf(&draft, threads)?;
        println!("draft model      {draft_id}");
        model.set_draft(draft)?;
        methods.push(("draft-model", Speculation::DraftModel));
    }
    for (name, method) in methods {
        model.set_speculation(method);
        let before = model.speculation_stats();
        let start = Instant::now();
        let mut first: Option<f64> = None;
        let out = model.generate(&[request(spec_tokens + 1)], &mut |_, piece| {
            if !piece.is_empty() {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
            Flow::Continue
        });
        let end = start.elapsed().as_secs_f64();
        let g = out.into_iter().next().transpose()?.expect("one result");
        let decode_s = (end - first.unwrap_or(end)).max(1e-9);
        let rate = g.generated_tokens.saturating_sub(1) as f64 / decode_s;
        let after = model.speculation_stats();
        let drafted = after.drafted - before.drafted;
        let accepted = after.accepted - before.accepted;
        let passes = after.passes - before.passes;
        let acceptance = (drafted > 0).then(|| accepted as f64 / drafted as f64);
        let same = match &plain_text {
            None => {
                plain_text = Some(g.text.clone());
                true
            }
            Some(p) => *p == g.text,
        };
        println!(
            "decode {name:<14} {rate:.2} tok/s ({} tokens{}){}",
            g.generated_tokens,
            acceptance.map_or(String::new(), |a| format!(
                ", {accepted} of {drafted} drafted tokens kept ({:.0}%) in {passes} passes",
                100.0 * a
            )),
            if same {
                ""
            } else {
                "  OUTPUT DIFFERS FROM PLAIN DECODING"
            }
        );
        speculative.push(serde_json::json!({
            "method": name, "decode_tok_s": rate, "tokens": g.generated_tokens,
            "drafted": drafted, "accepted": accepted, "passes": passes,
            "acceptance": acceptance, "same_output": same,
        }));
    }
    model.set_speculation(Speculation::Off);

    if let Some(json_path) = json_path {
        // Untimed: the ids of a pure arg-max run of the same length, for comparison.
        let greedy = if want_ids {
            Some(model.greedy_ids(&prompt_ids, tokens + 1)?)
        } else {
            None
        };
        let report = serde_json::json!({
            "engine": "precis",
            "model": id,
            "file": path.display().to_string(),
            "article": article_path.display().to_string(),
            "threads": threads,
            "device": placement.to_string(),
            "rayon_threads": rayon::current_num_threads(),
            "candle_threads": candle_core::utils::get_num_threads(),
            "load_s": load_s,
            "prompt_tokens": prompt_tokens,
            "prompt_ids": prompt_ids,
            "max_new_tokens": tokens + 1,
            "generated_tokens": generated,
            "greedy_ids": greedy,
            "prefill_s": prefill_s,
            "prefill_tok_s": prefill_tok_s,
            "prefill_cores_busy": prefill_cores,
            "decode_tokens": decode_tokens,
            "decode_s": decode_s,
            "decode_tok_s": decode_tok_s,
            "decode_cores_busy": decode_cores,
            "peak_rss_mb": peak_mb,
            "concurrent": concurrent,
            "speculative": speculative,
        });
        if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
        println!("json             {}", json_path.display());
    }
    Ok(())
}
