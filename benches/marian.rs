//! Marian translation benchmark: tokens/s of precis's seq2seq backend under
//! the fixed protocol of `benches/compare-marian.sh`, which runs this next to
//! Python transformers and CTranslate2 on the same checkpoint.
//!
//! ```sh
//! benches/compare-marian.sh                 # all engines, table and ratios
//! cargo bench --bench marian                # precis alone, on the checkpoint the script made
//! PRECIS_BENCH_BEAMS=4 cargo bench --bench marian -- ~/some/opus-mt-dir
//! ```
//!
//! The protocol: the first `PRECIS_BENCH_COUNT` (200) sentences of FLORES-200
//! English, tokenized by precis's `MarianTokenizer` before the clock starts,
//! in batches of `PRECIS_BENCH_BATCH` (8) in file order, generated with the
//! checkpoint's `generation_config.json` overridden by `num_beams` and
//! `min_new_tokens = max_new_tokens = PRECIS_BENCH_TOKENS` (32), exactly what
//! transformers gets from `generate(**batch, num_beams=…,
//! min_new_tokens=32, max_new_tokens=32)`. For each beam size one untimed
//! warm-up batch, then every batch one after the other under one clock:
//! tokens/s = tokens × sentences / wall seconds (encoder and decoder; not
//! tokenization). The wall time is split into what [`generate`] spends in
//! the model's `start` (encoder, cross-attention keys and values), `step`
//! (one decoder pass and the logits), `select` (dropping and reordering rows
//! of the state for beam search) and the rest (log-softmax, logits
//! processors, top-k, bookkeeping), measured by wrapping the model.
//!
//! Environment:
//! - `PRECIS_BENCH_MARIAN`: checkpoint directory (or the first argument)
//!   [`~/.cache/precis/bench/opus-mt-en-ru-random`, made by the script]
//! - `PRECIS_BENCH_SENTENCES`: one sentence a line
//!   [`../shared/eval/flores200-dev/eng_Latn.txt`]
//! - `PRECIS_BENCH_COUNT` [200], `PRECIS_BENCH_BATCH` [8],
//!   `PRECIS_BENCH_BEAMS` (sizes, comma-separated) [4,1],
//!   `PRECIS_BENCH_TOKENS` [32]
//! - `PRECIS_BENCH_THREADS` [2]: rayon's global pool is built with that many
//!   threads, and `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` are set before
//!   any pool exists (candle sizes its own from them); the report prints
//!   `candle_core::utils::get_num_threads()` and the cores kept busy.
//! - `PRECIS_BENCH_CANDLE_THREADS` [1, as the `precis` binary sets it]:
//!   `CANDLE_NUM_THREADS` (candle-core 0.11 runs elementwise
//!   ops of 64k elements or more on a barrier pool of that many threads,
//!   the caller included; matrix products use rayon's pool).
//! - `PRECIS_BENCH_SAMPLE=N`: time nothing; generate the first N sentences
//!   and record the ids (for the equality check against transformers).
//! - `PRECIS_BENCH_JSON`: write the figures (and the ids) to this path.

mod common;
use common::{cpu_seconds, env_usize, peak_rss_mb};

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use precis::backend::seq2seq::backend::checkpoint_generation;
use precis::backend::seq2seq::bart::{Bart, BartState};
use precis::backend::seq2seq::{
    generate, pad_outputs, EncoderDecoder, GenerationOverrides, GenerationSettings, Seq2SeqConfig,
};
use precis::backend::BackendError;
use precis::tokenizer::marian::MarianTokenizer;

/// Jiffies of the whole machine so far: (all, idle + iowait).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    Some((v.iter().sum(), v.get(3)? + v.get(4)?))
}

/// Cores the whole machine kept busy between two [`machine_jiffies`].
fn machine_busy(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, i0), (t1, i1)) = (a?, b?);
    let total = t1.checked_sub(t0).filter(|&t| t > 0)? as f64;
    let busy = (total - i1.saturating_sub(i0) as f64).max(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some(busy / total * cpus)
}

/// Time spent in each of the model's calls during generation.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    start: Duration,
    step: Duration,
    select: Duration,
    steps: usize,
}

/// The model, with a clock around each call [`generate`] makes.
struct Timed<'a> {
    model: &'a Bart,
    phases: Cell<Phases>,
}

impl Timed<'_> {
    fn add(&self, f: impl FnOnce(&mut Phases)) {
        let mut p = self.phases.get();
        f(&mut p);
        self.phases.set(p);
    }
}

impl EncoderDecoder for Timed<'_> {
    type State = BartState;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.model.seq2seq_config()
    }

    fn start(&self, inputs: &[Vec<u32>], rows: usize) -> Result<BartState, BackendError> {
        let t = Instant::now();
        let out = self.model.start(inputs, rows);
        self.add(|p| p.start += t.elapsed());
        out
    }

    fn step(&self, state: &mut BartState, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let t = Instant::now();
        let out = self.model.step(state, tokens);
        self.add(|p| {
            p.step += t.elapsed();
            p.steps += 1;
        });
        out
    }

    fn select(&self, state: &mut BartState, rows: &[usize]) -> Result<(), BackendError> {
        let t = Instant::now();
        let out = self.model.select(state, rows);
        self.add(|p| p.select += t.elapsed());
        out
    }
}

fn default_checkpoint() -> PathBuf {
    dirs::home_dir()
        .unwrap_or_default()
        .join(".cache/precis/bench/opus-mt-en-ru-random")
}

fn main() -> anyhow::Result<()> {
    let threads = env_usize("PRECIS_BENCH_THREADS", 2)?.max(1);
    // Before any thread exists: candle's pools read these when first used.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // For experiments only: candle's elementwise barrier pool of another size.
    // 1 by default, as the `precis` binary sets it.
    let candle_pool = env_usize("PRECIS_BENCH_CANDLE_THREADS", 1)?.max(1);
    std::env::set_var("CANDLE_NUM_THREADS", candle_pool.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot build the rayon global pool: {e}"))?;

    // `cargo bench` passes `--bench`; the first other argument is the checkpoint.
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("PRECIS_BENCH_MARIAN").ok())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(default_checkpoint);
    let sentences_path = std::env::var("PRECIS_BENCH_SENTENCES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared/eval/flores200-dev/eng_Latn.txt"));
    let sample = env_usize("PRECIS_BENCH_SAMPLE", 0)?;
    let count = if sample > 0 {
        sample
    } else {
        env_usize("PRECIS_BENCH_COUNT", 200)?
    };
    let batch = env_usize("PRECIS_BENCH_BATCH", 8)?.max(1);
    let tokens = env_usize("PRECIS_BENCH_TOKENS", 32)?.max(1);
    let beams: Vec<usize> = std::env::var("PRECIS_BENCH_BEAMS")
        .unwrap_or_else(|_| "4,1".into())
        .split(',')
        .filter(|b| !b.trim().is_empty())
        .map(|b| match b.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "PRECIS_BENCH_BEAMS wants beam sizes separated by commas, not '{b}'"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    let json_path = std::env::var_os("PRECIS_BENCH_JSON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);

    if !dir.join("config.json").is_file() {
        anyhow::bail!(
            "no Marian checkpoint in {} (benches/compare-marian.sh makes one; or give a directory)",
            dir.display()
        );
    }
    let load_start = Instant::now();
    let tokenizer = MarianTokenizer::from_dir(&dir)?;
    let model = Bart::load(&dir, &Device::Cpu)?;
    let load_s = load_start.elapsed().as_secs_f64();

    let sentences = read_sentences(&sentences_path, count)?;
    let input_ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| tokenizer.encode_source(s))
        .collect();
    let batches: Vec<&[Vec<u32>]> = input_ids.chunks(batch).collect();
    let checkpoint = checkpoint_generation(&dir)?;
    let cfg = model.seq2seq_config();

    println!("checkpoint       {}", dir.display());
    println!(
        "sentences        {} of {} ({:.1} source tokens on average, </s> included)",
        sentences.len(),
        sentences_path.display(),
        input_ids.iter().map(Vec::len).sum::<usize>() as f64 / input_ids.len() as f64
    );
    let candle_threads = candle_core::utils::get_num_threads();
    println!(
        "threads          {threads} (rayon global pool {}, candle {candle_threads}, \
         candle barrier pool {candle_pool})",
        rayon::current_num_threads()
    );
    if candle_threads != threads || rayon::current_num_threads() != threads {
        println!(
            "warning: the thread pools are not of {threads} threads: figures are not comparable"
        );
    }
    println!("load             {load_s:.2} s");
    println!(
        "protocol         batches of {batch}, exactly {tokens} new tokens per sentence \
         (min_new_tokens = max_new_tokens), tok/s = {tokens} × sentences / wall s of generation"
    );

    let mut runs = Vec::new();
    for &num_beams in &beams {
        let overrides = checkpoint.clone().then(&GenerationOverrides {
            num_beams: Some(num_beams),
            min_new_tokens: Some(tokens),
            max_new_tokens: Some(tokens),
            ..GenerationOverrides::default()
        });
        let settings =
            GenerationSettings::resolve(&overrides, &cfg).map_err(|e| anyhow::anyhow!(e))?;
        if sample > 0 {
            let mut ids = Vec::new();
            for b in &batches {
                let out = generate(&model, b, &settings, &mut |_| true)?;
                ids.extend(pad_outputs(&out, &settings));
            }
            println!(
                "beam={num_beams:<2}          ids of {} sentences recorded",
                ids.len()
            );
            runs.push(serde_json::json!({"beams": num_beams, "ids": ids}));
            continue;
        }
        let timed = Timed {
            model: &model,
            phases: Cell::new(Phases::default()),
        };
        // Warm-up, untimed.
        generate(&timed, batches[0], &settings, &mut |_| true)?;
        timed.phases.set(Phases::default());
        let cpu_start = cpu_seconds();
        let machine_start = machine_jiffies();
        let start = Instant::now();
        let mut new_tokens = Vec::with_capacity(sentences.len());
        for b in &batches {
            let out = generate(&timed, b, &settings, &mut |_| true)?;
            new_tokens.extend(out.iter().map(|o| o.len().saturating_sub(1)));
        }
        let wall_s = start.elapsed().as_secs_f64();
        let cores = match (cpu_start, cpu_seconds()) {
            (Some(a), Some(b)) => Some((b - a) / wall_s),
            _ => None,
        };
        // Cores other processes kept busy meanwhile: the machine's less ours.
        let others = machine_busy(machine_start, machine_jiffies())
            .zip(cores)
            .map(|(m, c)| (m - c).max(0.0));
        let tok_s = (tokens * sentences.len()) as f64 / wall_s;
        let p = timed.phases.get();
        let (start_s, step_s, select_s) = (
            p.start.as_secs_f64(),
            p.step.as_secs_f64(),
            p.select.as_secs_f64(),
        );
        let search_s = (wall_s - start_s - step_s - select_s).max(0.0);
        let lo = new_tokens.iter().copied().min().unwrap_or(0);
        let hi = new_tokens.iter().copied().max().unwrap_or(0);
        println!(
            "beam={num_beams:<2}          {tok_s:.1} tok/s ({} sentences × {tokens} tokens in {wall_s:.2} s{})",
            sentences.len(),
            cores.map_or(String::new(), |c| format!(", {c:.2} cores busy")),
        );
        if let Some(o) = others.filter(|&o| o >= 0.25) {
            println!(
                "warning: other processes kept {o:.2} cores busy meanwhile: this figure is low"
            );
        }
        let pct = |s: f64| 100.0 * s / wall_s;
        println!(
            "  time           encoder {start_s:.2} s ({:.0}%), decoder steps {step_s:.2} s ({:.0}%, {} steps, \
             {:.1} ms each), beam reorder {select_s:.2} s ({:.0}%), search {search_s:.2} s ({:.0}%)",
            pct(start_s),
            pct(step_s),
            p.steps,
            1000.0 * step_s / p.steps.max(1) as f64,
            pct(select_s),
            pct(search_s),
        );
        if lo != tokens || hi != tokens {
            println!("note: outputs have {lo}..{hi} new tokens, not {tokens}");
        }
        runs.push(serde_json::json!({
            "beams": num_beams,
            "wall_s": wall_s,
            "tok_s": tok_s,
            "cores_busy": cores,
            "others_cores_busy": others,
            "new_tokens_min": lo,
            "new_tokens_max": hi,
            "decoder_steps": p.steps,
            "breakdown": {
                "encoder": start_s,
                "decoder steps": step_s,
                "beam reorder": select_s,
                "search": search_s,
            },
        }));
    }
    let peak_mb = peak_rss_mb();
    if let Some(mb) = peak_mb {
        println!("peak RSS         {mb:.0} MB");
    }

    if let Some(json_path) = json_path {
        let report = serde_json::json!({
            "engine": "precis",
            "model": dir.display().to_string(),
            "sentences_file": sentences_path.display().to_string(),
            "sentences": sentences.len(),
            "batch": batch,
            "threads": threads,
            "rayon_threads": rayon::current_num_threads(),
            "candle_threads": candle_threads,
            "candle_barrier_pool_threads": candle_pool,
            "tokens": tokens,
            "load_s": load_s,
            "peak_rss_mb": peak_mb,
            "input_ids": input_ids,
            "runs": runs,
        });
        if let Some(parent) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&json_path, serde_json::to_string(&report)? + "\n")?;
        println!("json             {}", json_path.display());
    }
    Ok(())
}

/// The first `count` non-empty lines of `path`.
fn read_sentences(path: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(count)
        .map(str::to_string)
        .collect();
    if lines.len() < count {
        anyhow::bail!(
            "{} has {} sentences, fewer than the {count} asked",
            path.display(),
            lines.len()
        );
    }
    Ok(lines)
}
