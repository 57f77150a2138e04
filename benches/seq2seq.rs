//! Encoder-decoder benchmark: tokens/s of precis's seq2seq backend under the
//! fixed protocol of `benches/compare-marian.sh`, which runs this next to
//! Python transformers and CTranslate2 on the same checkpoint. Both families
//! of [`Bart`] are timed, Marian translation (`--family marian`, the
//! default) and BART summarization (`--family bart`), and [`M2M100`]'s NLLB
//! translation into Hindi (`--family nllb`, `hin_Deva` forced first); a T5
//! checkpoint (`model_type` `t5`) reads FLORES sentences as given, for the
//! int8 quality guard (`benches/int8-agreement.sh`). The checkpoint's
//! `config.json` (`model_type`) says which this is.
//!
//! ```sh
//! benches/compare-marian.sh                 # Marian: all engines, table and ratios
//! benches/compare-marian.sh --family bart   # BART (distilbart-cnn-12-6-shaped)
//! benches/compare-marian.sh --family nllb   # NLLB (nllb-200-distilled-600M-shaped)
//! cargo bench --bench seq2seq               # precis alone, on the Marian checkpoint the script made
//! PRECIS_BENCH_BEAMS=4 cargo bench --bench seq2seq -- ~/some/opus-mt-dir
//! PRECIS_BENCH_INPUTS=target/bench-compare/bart/inputs.txt \
//!   cargo bench --bench seq2seq -- ~/.cache/precis/bench/distilbart-cnn-12-6-random
//! ```
//!
//! The protocol: the first `PRECIS_BENCH_COUNT` inputs of a text file, one
//! input a line (Marian and NLLB: 200 FLORES-200 English sentences; BART:
//! 100 articles of ~400 tokens that the script builds from them), tokenized
//! before the clock starts (Marian: precis's `MarianTokenizer`; BART:
//! precis's `CheckpointTokenizer`, byte-level BPE; NLLB: precis's
//! `ManyToManyTokenizer`, reading English; T5: `CheckpointTokenizer`,
//! SentencePiece unigram), in batches of
//! `PRECIS_BENCH_BATCH` (8) in file order, generated with the checkpoint's
//! `generation_config.json` overridden by `num_beams` and `min_new_tokens =
//! max_new_tokens = PRECIS_BENCH_TOKENS` (Marian, NLLB and T5 32, BART 64), and
//! for NLLB `forced_bos_token_id` = the `hin_Deva` code, exactly what
//! transformers gets from `generate(**batch, num_beams=…,
//! min_new_tokens=N, max_new_tokens=N)`. For each beam size one untimed
//! warm-up batch, then every batch one after the other under one clock:
//! tokens/s = tokens × inputs / wall seconds (encoder and decoder; not
//! tokenization). The wall time is split into what [`generate`] spends in
//! the model's `start` (encoder, cross-attention keys and values), `step`
//! (one decoder pass and the logits), `select` (dropping and reordering rows
//! of the state for beam search) and the rest (log-softmax, logits
//! processors, top-k, bookkeeping), measured by wrapping the model.
//!
//! Environment:
//! - `PRECIS_BENCH_CHECKPOINT` (or `PRECIS_BENCH_MARIAN`, its old name):
//!   checkpoint directory (or the first argument)
//!   [`~/.cache/precis/bench/opus-mt-en-ru-random`, made by the script]
//! - `PRECIS_BENCH_INPUTS` (or `PRECIS_BENCH_SENTENCES`): one input a line
//!   [Marian: `../shared/eval/flores200-dev/eng_Latn.txt`; BART:
//!   `target/bench-compare/bart/inputs.txt`, written by the script]
//! - `PRECIS_BENCH_COUNT` [Marian 200, BART 100], `PRECIS_BENCH_BATCH` [8],
//!   `PRECIS_BENCH_BEAMS` (sizes, comma-separated) [4,1],
//!   `PRECIS_BENCH_TOKENS` [Marian 32, BART 64]
//! - `PRECIS_BENCH_THREADS` [2]: rayon's global pool is built with that many
//!   threads, and `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` are set before
//!   any pool exists (candle sizes its own from them); the report prints
//!   `candle_core::utils::get_num_threads()` and the cores kept busy.
//! - `PRECIS_BENCH_CANDLE_THREADS` [1, as the `precis` binary sets it]:
//!   `CANDLE_NUM_THREADS` (candle-core 0.11 runs elementwise
//!   ops of 64k elements or more on a barrier pool of that many threads,
//!   the caller included; matrix products use rayon's pool).
//! - `PRECIS_BENCH_QUANTIZE` [none]: `int8` quantizes the weights at load
//!   (`--quantize int8`).
//! - `PRECIS_BENCH_AGREEMENT=N`: time nothing; the int8 quality guard on
//!   the first N inputs (see [`int8_guard`]).
//! - `PRECIS_BENCH_SAMPLE=N`: time nothing; generate the first N inputs
//!   and record the ids (for the equality check against transformers).
//! - `PRECIS_BENCH_JSON`: write the figures (and the ids) to this path.
//! - `PRECIS_BENCH_DEVICE` [cpu]: `cuda` / `cuda:N` runs the portable path
//!   on that GPU (a build with `--features cuda`), `PRECIS_BENCH_DTYPE`
//!   [f32] in f32, f16 or bf16; `PRECIS_BENCH_PORTABLE=1` runs the portable
//!   path on the CPU.

/// The allocator the `precis` binary uses, set as it sets it (see
/// `precis::allocator`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{bench_device, cpu_seconds, env_usize, peak_rss_mb};

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use precis_backend::seq2seq::backend::checkpoint_generation;
use precis_backend::seq2seq::bart::Bart;
use precis_backend::seq2seq::m2m100::M2M100;
use precis_backend::seq2seq::portable::Portable;
use precis_backend::seq2seq::t5::T5;
use precis_backend::seq2seq::{
    agreement, generate, pad_outputs, teacher_forced_top1, EncoderDecoder, GenerationConfig,
    GenerationSettings, Seq2SeqConfig,
};
use precis_backend::tokenizer::checkpoint::{CheckpointTokenizer, Family};
use precis_backend::tokenizer::m2m::ManyToManyTokenizer;
use precis_backend::tokenizer::marian::MarianTokenizer;
use precis_backend::{BackendError, Placement, Quantize};

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
struct Timed<'a, M> {
    model: &'a M,
    phases: Cell<Phases>,
}

impl<M> Timed<'_, M> {
    fn add(&self, f: impl FnOnce(&mut Phases)) {
        let mut p = self.phases.get();
        f(&mut p);
        self.phases.set(p);
    }
}

impl<M: EncoderDecoder> EncoderDecoder for Timed<'_, M> {
    type State = M::State;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.model.seq2seq_config()
    }

    fn start(&self, inputs: &[Vec<u32>], rows: usize) -> Result<M::State, BackendError> {
        let t = Instant::now();
        let out = self.model.start(inputs, rows);
        self.add(|p| p.start += t.elapsed());
        out
    }

    fn step(
        &self,
        state: &mut M::State,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let t = Instant::now();
        let out = self.model.step(state, tokens, logits);
        self.add(|p| {
            p.step += t.elapsed();
            p.steps += 1;
        });
        out
    }

    fn select(&self, state: &mut M::State, rows: &[usize]) -> Result<(), BackendError> {
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

/// The kinds of checkpoint the protocol runs, and its defaults for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelFamily {
    /// Translation (`model_type` `marian`).
    Marian,
    /// Summarization (`model_type` `bart`).
    Bart,
    /// Many-to-many translation, English into Hindi (`model_type` `m2m_100`).
    Nllb,
    /// T5 (`model_type` `t5`), its input the sentence as it is.
    T5,
}

impl ModelFamily {
    /// From `config.json`'s `model_type`.
    fn of(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "no checkpoint in {} ({}: {e}; benches/compare-marian.sh makes one, or give a directory)",
                dir.display(),
                path.display()
            )
        })?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
        match config["model_type"].as_str() {
            Some("marian") => Ok(Self::Marian),
            Some("bart") => Ok(Self::Bart),
            Some("m2m_100") => Ok(Self::Nllb),
            Some("t5") => Ok(Self::T5),
            other => anyhow::bail!(
                "{}: model_type {other:?} is not \"marian\", \"bart\", \"m2m_100\" or \"t5\"",
                path.display()
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Marian => "marian",
            Self::Bart => "bart",
            Self::Nllb => "nllb",
            Self::T5 => "t5",
        }
    }

    /// Inputs, one a line, when `PRECIS_BENCH_INPUTS` is not set (relative
    /// to the repository root, where `cargo bench` runs).
    fn default_inputs(self) -> PathBuf {
        PathBuf::from(match self {
            Self::Marian | Self::Nllb | Self::T5 => "../shared/eval/flores200-dev/eng_Latn.txt",
            Self::Bart => "target/bench-compare/bart/inputs.txt",
        })
    }

    fn default_count(self) -> usize {
        match self {
            Self::Marian | Self::Nllb | Self::T5 => 200,
            Self::Bart => 100,
        }
    }

    fn default_tokens(self) -> usize {
        match self {
            Self::Marian | Self::Nllb | Self::T5 => 32,
            Self::Bart => 64,
        }
    }
}

/// The checkpoint's tokenizer, as precis uses it for that family.
enum SourceTokenizer {
    Marian(Box<MarianTokenizer>),
    Bart(Box<CheckpointTokenizer>),
    Nllb(Box<ManyToManyTokenizer>),
    T5(Box<CheckpointTokenizer>),
}

/// The language NLLB inputs are read in, and the one they are translated into.
const NLLB_SOURCE: &str = "en";
const NLLB_TARGET: &str = "hi";

impl SourceTokenizer {
    fn load(dir: &Path, family: ModelFamily) -> anyhow::Result<Self> {
        Ok(match family {
            ModelFamily::Marian => Self::Marian(Box::new(MarianTokenizer::from_dir(dir)?)),
            ModelFamily::Bart => {
                Self::Bart(Box::new(CheckpointTokenizer::from_dir(dir, Family::Bart)?))
            }
            ModelFamily::Nllb => Self::Nllb(Box::new(ManyToManyTokenizer::from_dir(dir)?)),
            ModelFamily::T5 => Self::T5(Box::new(CheckpointTokenizer::from_dir(dir, Family::T5)?)),
        })
    }

    /// The token forced first (NLLB: the target language's code).
    fn forced_first(&self) -> anyhow::Result<Option<u32>> {
        match self {
            Self::Nllb(t) => t
                .language_id(NLLB_TARGET)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("the tokenizer has no code for `{NLLB_TARGET}`")),
            _ => Ok(None),
        }
    }

    /// The input ids of `text`, special tokens included (`tokenizer(text)["input_ids"]`).
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match self {
            Self::Marian(t) => Ok(t.encode_source(text)),
            Self::Bart(t) | Self::T5(t) => t.encode(text).map_err(|e| anyhow::anyhow!(e)),
            Self::Nllb(t) => t.encode(text, NLLB_SOURCE).map_err(|e| anyhow::anyhow!(e)),
        }
    }

    /// What the printed average counts.
    fn specials(&self) -> &'static str {
        match self {
            Self::Marian(_) => "</s> included",
            Self::Bart(_) => "<s> and </s> included",
            Self::Nllb(_) => "eng_Latn and </s> included",
            Self::T5(_) => "</s> included",
        }
    }
}

/// An environment variable under its name or an older one, unless empty.
fn env_either(name: &str, old: &str) -> Option<String> {
    [name, old]
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn main() -> anyhow::Result<()> {
    precis::allocator::keep_freed_pages();
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
        .filter(|d| !d.is_empty())
        .or_else(|| env_either("PRECIS_BENCH_CHECKPOINT", "PRECIS_BENCH_MARIAN"))
        .map(PathBuf::from)
        .unwrap_or_else(default_checkpoint);
    let family = ModelFamily::of(&dir)?;
    let inputs_path = env_either("PRECIS_BENCH_INPUTS", "PRECIS_BENCH_SENTENCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| family.default_inputs());
    let sample = env_usize("PRECIS_BENCH_SAMPLE", 0)?;
    let count = if sample > 0 {
        sample
    } else {
        env_usize("PRECIS_BENCH_COUNT", family.default_count())?
    };
    let batch = env_usize("PRECIS_BENCH_BATCH", 8)?.max(1);
    let tokens = env_usize("PRECIS_BENCH_TOKENS", family.default_tokens())?.max(1);
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

    let quantize = match std::env::var("PRECIS_BENCH_QUANTIZE") {
        Ok(v) if !v.trim().is_empty() => v
            .parse::<Quantize>()
            .map_err(|e| anyhow::anyhow!("PRECIS_BENCH_QUANTIZE: {e}"))?,
        _ => Quantize::None,
    };
    let tokenizer = SourceTokenizer::load(&dir, family)?;
    let inputs = read_inputs(&inputs_path, count)?;
    let input_ids: Vec<Vec<u32>> = inputs
        .iter()
        .map(|s| tokenizer.encode(s))
        .collect::<anyhow::Result<_>>()?;
    let batches: Vec<&[Vec<u32>]> = input_ids.chunks(batch).collect();
    let mut checkpoint = checkpoint_generation(&dir)?;
    if let Some(forced) = tokenizer.forced_first()? {
        checkpoint.forced_bos_token_id = Some(forced);
    }
    let agreement_inputs = env_usize("PRECIS_BENCH_AGREEMENT", 0)?;
    if agreement_inputs > 0 {
        let n = agreement_inputs.min(input_ids.len());
        let report = int8_guard(&dir, family, &input_ids[..n], &checkpoint, tokens, batch)?;
        if let Some(path) = &json_path {
            std::fs::write(path, serde_json::to_string(&report)? + "\n")?;
        }
        return Ok(());
    }
    let placement = bench_device()?;
    let dtype = match std::env::var("PRECIS_BENCH_DTYPE").as_deref() {
        Err(_) | Ok("" | "f32") => DType::F32,
        Ok("f16") => DType::F16,
        Ok("bf16") => DType::BF16,
        Ok(other) => anyhow::bail!("PRECIS_BENCH_DTYPE wants f32, f16 or bf16, not `{other}`"),
    };
    let portable = placement != Placement::Cpu
        || std::env::var("PRECIS_BENCH_PORTABLE").is_ok_and(|v| v == "1");
    if portable && !quantize.is_none() {
        anyhow::bail!("PRECIS_BENCH_QUANTIZE=int8 runs on the CPU path only");
    }
    let load_start = Instant::now();
    let model = if portable {
        Model::Portable(Portable::load(&dir, &placement.device()?, dtype)?)
    } else {
        Model::load(&dir, family, quantize)?
    };
    let load_s = load_start.elapsed().as_secs_f64();

    println!("checkpoint       {} ({})", dir.display(), family.name());
    println!(
        "inputs           {} of {} ({:.1} source tokens on average, {}; {}..{})",
        inputs.len(),
        inputs_path.display(),
        input_ids.iter().map(Vec::len).sum::<usize>() as f64 / input_ids.len() as f64,
        tokenizer.specials(),
        input_ids.iter().map(Vec::len).min().unwrap_or(0),
        input_ids.iter().map(Vec::len).max().unwrap_or(0),
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
    println!(
        "load             {load_s:.2} s ({} path on {placement}{})",
        if portable { "portable" } else { "CPU" },
        if portable {
            format!(", {dtype:?}")
        } else {
            String::new()
        }
    );
    println!(
        "protocol         batches of {batch}, exactly {tokens} new tokens per input \
         (min_new_tokens = max_new_tokens), tok/s = {tokens} × inputs / wall s of generation"
    );

    let plan = Plan {
        batches: &batches,
        inputs: inputs.len(),
        checkpoint: &checkpoint,
        beams: &beams,
        tokens,
        sample,
    };
    let runs = match &model {
        Model::Bart(m) => plan.run(m)?,
        Model::M2M100(m) => plan.run(m)?,
        Model::T5(m) => plan.run(m)?,
        Model::Portable(m) => plan.run(m)?,
    };
    let peak_mb = peak_rss_mb();
    if let Some(mb) = peak_mb {
        println!("peak RSS         {mb:.0} MB");
    }

    if let Some(json_path) = json_path {
        let report = serde_json::json!({
            "engine": "precis",
            "family": family.name(),
            "model": dir.display().to_string(),
            "inputs_file": inputs_path.display().to_string(),
            "inputs": inputs.len(),
            "batch": batch,
            "threads": threads,
            "rayon_threads": rayon::current_num_threads(),
            "candle_threads": candle_threads,
            "candle_barrier_pool_threads": candle_pool,
            "tokens": tokens,
            "load_s": load_s,
            "quantize": quantize.name(),
            "device": placement.to_string(),
            "path": if portable { "portable" } else { "cpu" },
            "dtype": format!("{dtype:?}").to_lowercase(),
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

/// What every timed run shares: the batches, the checkpoint's generation
/// settings, the beam sizes and the number of new tokens.
struct Plan<'a> {
    batches: &'a [&'a [Vec<u32>]],
    inputs: usize,
    checkpoint: &'a GenerationConfig,
    beams: &'a [usize],
    tokens: usize,
    sample: usize,
}

/// The loaded model: one of the families the protocol times.
enum Model {
    Bart(Bart),
    M2M100(M2M100),
    T5(T5),
    Portable(Portable),
}

impl Model {
    fn load(dir: &Path, family: ModelFamily, quantize: Quantize) -> anyhow::Result<Self> {
        Ok(match family {
            ModelFamily::Marian | ModelFamily::Bart => {
                Model::Bart(Bart::load_quantized(dir, &Device::Cpu, quantize)?)
            }
            ModelFamily::Nllb => {
                Model::M2M100(M2M100::load_quantized(dir, &Device::Cpu, quantize)?)
            }
            ModelFamily::T5 => Model::T5(T5::load_weights(dir, None, &Device::Cpu, quantize)?),
        })
    }
}

/// What [`int8_guard`] read: the inputs it used, the f32 model's outputs,
/// and the positions where int8 and f32 agree out of those counted.
struct Guard {
    inputs: Vec<Vec<u32>>,
    targets: Vec<Vec<u32>>,
    same: usize,
    total: usize,
}

/// The int8 quality guard on this checkpoint (`PRECIS_BENCH_AGREEMENT`):
/// the f32 model's greedy outputs of `inputs` (exactly `tokens` new
/// tokens; inputs longer than the model's positions left out), read
/// teacher-forced by the f32 and the int8 model; the share of positions
/// whose top-1 tokens agree (each distinct prefix once), printed and
/// returned with the ids (which `marian_compare.py ct2-agreement` gives
/// CTranslate2).
fn int8_guard(
    dir: &Path,
    family: ModelFamily,
    inputs: &[Vec<u32>],
    checkpoint: &GenerationConfig,
    tokens: usize,
    batch: usize,
) -> anyhow::Result<serde_json::Value> {
    fn run<M: EncoderDecoder>(
        f: &M,
        q: &M,
        inputs: &[Vec<u32>],
        checkpoint: &GenerationConfig,
        tokens: usize,
        batch: usize,
    ) -> anyhow::Result<Guard> {
        // A small parity checkpoint reads fewer positions than some inputs
        // have: those inputs are left out (and the count says so).
        let max = f.seq2seq_config().max_positions;
        let inputs: Vec<Vec<u32>> = inputs.iter().filter(|i| i.len() <= max).cloned().collect();
        let overrides = checkpoint.clone().then(&GenerationConfig {
            num_beams: Some(1),
            min_new_tokens: Some(tokens),
            max_new_tokens: Some(tokens),
            ..GenerationConfig::default()
        });
        let settings = GenerationSettings::resolve(&overrides, &f.seq2seq_config())
            .map_err(|e| anyhow::anyhow!(e))?;
        let (mut targets, mut a, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for b in inputs.chunks(batch) {
            let out = generate(f, b, &settings, &mut |_| true)?;
            let t: Vec<Vec<u32>> = out.into_iter().map(|o| o[1..].to_vec()).collect();
            a.extend(teacher_forced_top1(f, b, &t)?);
            c.extend(teacher_forced_top1(q, b, &t)?);
            targets.extend(t);
        }
        let (same, total) = agreement(&inputs, &targets, &a, &c);
        Ok(Guard {
            inputs,
            targets,
            same,
            total,
        })
    }
    let (f, q) = (
        Model::load(dir, family, Quantize::None)?,
        Model::load(dir, family, Quantize::Int8)?,
    );
    let Guard {
        inputs: used,
        targets,
        same,
        total,
    } = match (&f, &q) {
        (Model::Bart(f), Model::Bart(q)) => run(f, q, inputs, checkpoint, tokens, batch)?,
        (Model::M2M100(f), Model::M2M100(q)) => run(f, q, inputs, checkpoint, tokens, batch)?,
        (Model::T5(f), Model::T5(q)) => run(f, q, inputs, checkpoint, tokens, batch)?,
        _ => unreachable!("one family"),
    };
    let share = same as f64 / total.max(1) as f64;
    println!(
        "agreement precis-int8/precis-f32={share:.4} ({same} of {total} teacher-forced positions, \
         {} inputs{})",
        used.len(),
        match inputs.len() - used.len() {
            0 => String::new(),
            n => format!("; {n} longer than the model's positions left out"),
        }
    );
    Ok(serde_json::json!({
        "engine": "precis",
        "family": family.name(),
        "input_ids": used,
        "targets": targets,
        "same": same,
        "total": total,
        "agreement": share,
    }))
}

impl Plan<'_> {
    /// Each beam size's run (or, with a sample, its ids), as JSON.
    fn run<M: EncoderDecoder>(&self, model: &M) -> anyhow::Result<Vec<serde_json::Value>> {
        let tokens = self.tokens;
        let mut runs = Vec::new();
        for &num_beams in self.beams {
            let overrides = self.checkpoint.clone().then(&GenerationConfig {
                num_beams: Some(num_beams),
                min_new_tokens: Some(self.tokens),
                max_new_tokens: Some(self.tokens),
                ..GenerationConfig::default()
            });
            let settings = GenerationSettings::resolve(&overrides, &model.seq2seq_config())
                .map_err(|e| anyhow::anyhow!(e))?;
            if self.sample > 0 {
                let mut ids = Vec::new();
                for b in self.batches {
                    let out = generate(model, b, &settings, &mut |_| true)?;
                    ids.extend(pad_outputs(&out, &settings));
                }
                println!(
                    "beam={num_beams:<2}          ids of {} inputs recorded",
                    ids.len()
                );
                runs.push(serde_json::json!({"beams": num_beams, "ids": ids}));
                continue;
            }
            let timed = Timed {
                model,
                phases: Cell::new(Phases::default()),
            };
            // Warm-up, untimed.
            generate(&timed, self.batches[0], &settings, &mut |_| true)?;
            timed.phases.set(Phases::default());
            let cpu_start = cpu_seconds();
            let machine_start = machine_jiffies();
            let start = Instant::now();
            let mut new_tokens = Vec::with_capacity(self.inputs);
            for b in self.batches {
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
            let tok_s = (tokens * self.inputs) as f64 / wall_s;
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
                "beam={num_beams:<2}          {tok_s:.1} tok/s ({} inputs × {tokens} tokens in {wall_s:.2} s{})",
                self.inputs,
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
        Ok(runs)
    }
}

/// The first `count` non-empty lines of `path`.
fn read_inputs(path: &Path, count: usize) -> anyhow::Result<Vec<String>> {
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
            "{} has {} inputs, fewer than the {count} asked",
            path.display(),
            lines.len()
        );
    }
    Ok(lines)
}
