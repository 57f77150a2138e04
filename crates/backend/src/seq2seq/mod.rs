//! Encoder-decoder models (Marian, BART, T5, M2M100 / NLLB) and the generation
//! they share: greedy and beam search with transformers' logits processors,
//! batched across inputs, giving the ids that transformers' `generate()`
//! gives with the same settings (its 5.24 code is the reference: the
//! vectorised `_beam_search` and `_sample` of `generation/utils.py`).
//!
//! A model implements [`EncoderDecoder`]: encode a batch of inputs once
//! (cross-attention keys and values included), then step every running row
//! one token at a time, and keep or reorder rows between steps. Generation
//! drives it: rows of inputs that are done are dropped from the batch, which
//! changes nothing in the others' results.

pub mod bart;
mod layers;
pub mod m2m100;
pub mod portable;
mod safetensors;
pub mod t5;
pub use layers::DecoderState;
pub mod backend;

use rayon::prelude::*;
use serde::Deserialize;

use super::BackendError;

/// What generation needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq2SeqConfig {
    /// Logits per step.
    pub vocab_size: usize,
    /// Padding id.
    pub pad_token_id: u32,
    /// End-of-sequence id (from `config.json`).
    pub eos_token_id: u32,
    /// The decoder's first input.
    pub decoder_start_token_id: u32,
    /// Positions the decoder has.
    pub max_positions: usize,
}

/// An encoder-decoder model, stepped by [`generate`].
pub trait EncoderDecoder {
    /// The decoder state of a running batch.
    type State;

    /// Ids and sizes generation needs.
    fn seq2seq_config(&self) -> Seq2SeqConfig;

    /// Encodes the inputs (each a full id sequence, `</s>` included) and
    /// makes a decoder state of `rows_per_input` rows per input, in input
    /// order, with nothing decoded yet.
    fn start(
        &self,
        inputs: &[Vec<u32>],
        rows_per_input: usize,
    ) -> Result<Self::State, BackendError>;

    /// Feeds one token per row; writes the next-token logits into
    /// `logits`, resized to `vocab_size` per row, row after row (the caller
    /// keeps the buffer from step to step: for a large vocabulary, a fresh
    /// one each step cost more than the search over it).
    fn step(
        &self,
        state: &mut Self::State,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError>;

    /// Keeps rows `rows` (old indices, in their new order; repeats allowed).
    fn select(&self, state: &mut Self::State, rows: &[usize]) -> Result<(), BackendError>;
}

/// `early_stopping` of transformers' generation config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `False`: stop when the best running beam cannot beat the worst
    /// finished one at the current length (the default).
    #[default]
    Heuristic,
    /// `True`: stop as soon as `num_beams` hypotheses are finished.
    Done,
    /// `"never"`: canonical beam search, stop only when no running beam can
    /// improve.
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(EarlyStopping::Done),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {
                Ok(EarlyStopping::Heuristic)
            }
            serde_json::Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
            other => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", not {other}"
            ))),
        }
    }
}

/// One id or several (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IdOrIds {
    /// A single id.
    One(u32),
    /// A list of ids.
    Many(Vec<u32>),
}

/// The keys of `generation_config.json` (and of `config.json`'s
/// `task_specific_params` entries) that generation reads; every one is
/// optional, and also the shape of per-request overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Beams (1: greedy).
    pub num_beams: Option<usize>,
    /// Longest output, decoder start token included.
    pub max_length: Option<usize>,
    /// Most new tokens (wins over `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Shortest output, decoder start token included.
    pub min_length: Option<usize>,
    /// Fewest new tokens.
    pub min_new_tokens: Option<usize>,
    /// Exponent of the length in beam scores.
    pub length_penalty: Option<f32>,
    /// When beam search stops.
    pub early_stopping: Option<EarlyStopping>,
    /// No n-gram of this size occurs twice.
    pub no_repeat_ngram_size: Option<usize>,
    /// Penalty on tokens already in the output (1.0: none).
    pub repetition_penalty: Option<f32>,
    /// Token sequences never generated.
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    /// Token forced first.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last position.
    pub forced_eos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<IdOrIds>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// The decoder's first input.
    pub decoder_start_token_id: Option<u32>,
    /// Sampling is not supported; `true` is refused.
    pub do_sample: Option<bool>,
    /// Keys set to `null` (unset: `generate(forced_bos_token_id=None)`
    /// removes the checkpoint's value).
    #[serde(skip)]
    pub cleared: Vec<String>,
}

impl GenerationConfig {
    /// Reads `generation_config.json`-style JSON (keys set to `null` are
    /// kept as [`GenerationConfig::cleared`]).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut out: Self = serde_json::from_value(value.clone())?;
        if let Some(map) = value.as_object() {
            out.cleared = map
                .iter()
                .filter(|(_, v)| v.is_null())
                .map(|(k, _)| k.clone())
                .collect();
        }
        Ok(out)
    }

    /// `self` with `other`'s values where it has them, and without the
    /// values `other` clears.
    pub fn then(mut self, other: &GenerationConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if other.$f.is_some() {
                    self.$f = other.$f.clone();
                } else if other.cleared.iter().any(|c| c == stringify!($f)) {
                    self.$f = None;
                }
            )*};
        }
        take!(
            num_beams,
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            length_penalty,
            early_stopping,
            no_repeat_ngram_size,
            repetition_penalty,
            bad_words_ids,
            forced_bos_token_id,
            forced_eos_token_id,
            eos_token_id,
            pad_token_id,
            decoder_start_token_id,
            do_sample
        );
        self
    }
}

/// Settings of one generation, with transformers' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// Beams (1: greedy).
    pub num_beams: usize,
    /// Longest output, decoder start token included.
    pub max_length: usize,
    /// Shortest output, decoder start token included (0: none).
    pub min_length: usize,
    /// Fewest new tokens (0: none).
    pub min_new_tokens: usize,
    /// Exponent of the length in beam scores.
    pub length_penalty: f32,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// 0: off.
    pub no_repeat_ngram_size: usize,
    /// 1.0: off.
    pub repetition_penalty: f32,
    /// Token sequences never generated.
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Token forced first.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last position.
    pub forced_eos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
    /// Padding id.
    pub pad_token_id: u32,
    /// The decoder's first input.
    pub decoder_start_token_id: u32,
}

impl GenerationSettings {
    /// Resolves `o` (the checkpoint's generation config with any overrides
    /// applied) against the model, as `GenerationConfig` defaults do:
    /// `max_length` 20, one beam, length penalty 1, `early_stopping` false.
    pub fn resolve(o: &GenerationConfig, model: &Seq2SeqConfig) -> Result<Self, BackendError> {
        if o.do_sample == Some(true) {
            return Err(BackendError::Config(
                "sampling (do_sample) is not supported for this model; use beams or greedy".into(),
            ));
        }
        let num_beams = o.num_beams.unwrap_or(1);
        if num_beams == 0 {
            return Err(BackendError::Config("num_beams must be at least 1".into()));
        }
        // The decoder prompt is the start token alone. With no length set
        // anywhere, `_prepare_generated_length` allows 20 new tokens, within
        // the model's positions.
        let max_length = match (o.max_new_tokens, o.max_length) {
            (Some(n), _) => n + 1,
            (None, Some(m)) => m,
            (None, None) => (20 + 1).min(model.max_positions),
        };
        if max_length < 2 {
            return Err(BackendError::Config(
                "max_length / max_new_tokens leave no room for a token".into(),
            ));
        }
        let repetition_penalty = o.repetition_penalty.unwrap_or(1.0);
        if repetition_penalty.is_nan() || repetition_penalty <= 0.0 {
            return Err(BackendError::Config(
                "repetition_penalty must be above 0".into(),
            ));
        }
        let eos_token_ids = match &o.eos_token_id {
            Some(IdOrIds::One(e)) => vec![*e],
            Some(IdOrIds::Many(v)) => v.clone(),
            None => vec![model.eos_token_id],
        };
        let vocab = model.vocab_size as u32;
        let bad_words_ids = o.bad_words_ids.clone().unwrap_or_default();
        // Every id the processors index the scores with (a forced token from
        // a tokenizer that does not match its model would be past the end).
        let forced: Vec<u32> = [o.forced_bos_token_id, o.forced_eos_token_id]
            .into_iter()
            .flatten()
            .collect();
        let lists = [&eos_token_ids, &forced];
        for ids in bad_words_ids.iter().chain(lists) {
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(BackendError::Config(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
        }
        if bad_words_ids.iter().any(Vec::is_empty) {
            return Err(BackendError::Config(
                "bad_words_ids holds an empty sequence".into(),
            ));
        }
        Ok(Self {
            num_beams,
            max_length,
            min_length: o.min_length.unwrap_or(0),
            min_new_tokens: o.min_new_tokens.unwrap_or(0),
            length_penalty: o.length_penalty.unwrap_or(1.0),
            early_stopping: o.early_stopping.unwrap_or_default(),
            no_repeat_ngram_size: o.no_repeat_ngram_size.unwrap_or(0),
            repetition_penalty,
            // `NoBadWordsLogitsProcessor` drops `[eos]` entries.
            bad_words_ids: bad_words_ids
                .into_iter()
                .filter(|w| !(w.len() == 1 && eos_token_ids.contains(&w[0])))
                .collect(),
            forced_bos_token_id: o.forced_bos_token_id,
            forced_eos_token_id: o.forced_eos_token_id,
            eos_token_ids,
            pad_token_id: o.pad_token_id.unwrap_or(model.pad_token_id),
            decoder_start_token_id: o
                .decoder_start_token_id
                .unwrap_or(model.decoder_start_token_id),
        })
    }

    /// The logits processors of `_get_logits_processor`, in its order, on
    /// one row's scores given the row's tokens so far (start token included).
    fn process(&self, history: &[u32], scores: &mut [f32]) {
        let cur_len = history.len();
        if self.repetition_penalty != 1.0 {
            let p = self.repetition_penalty;
            let mut seen = std::collections::HashSet::new();
            for &t in history {
                if seen.insert(t) {
                    if let Some(s) = scores.get_mut(t as usize) {
                        *s = if *s < 0.0 { *s * p } else { *s / p };
                    }
                }
            }
        }
        let n = self.no_repeat_ngram_size;
        if n > 0 && cur_len + 1 >= n {
            let prefix = &history[cur_len + 1 - n..];
            for w in history.windows(n) {
                if &w[..n - 1] == prefix {
                    scores[w[n - 1] as usize] = f32::NEG_INFINITY;
                }
            }
        }
        for word in &self.bad_words_ids {
            let (prefix, last) = word.split_at(word.len() - 1);
            if prefix.len() <= cur_len && history.ends_with(prefix) {
                scores[last[0] as usize] = f32::NEG_INFINITY;
            }
        }
        if cur_len < self.min_length || cur_len.saturating_sub(1) < self.min_new_tokens {
            for &e in &self.eos_token_ids {
                scores[e as usize] = f32::NEG_INFINITY;
            }
        }
        if let Some(bos) = self.forced_bos_token_id {
            if cur_len == 1 {
                scores.fill(f32::NEG_INFINITY);
                scores[bos as usize] = 0.0;
            }
        }
        if let Some(eos) = self.forced_eos_token_id {
            if cur_len + 1 == self.max_length {
                scores.fill(f32::NEG_INFINITY);
                scores[eos as usize] = 0.0;
            }
        }
    }
}

/// `logits` sized for `rows` rows of `vocab` (what it held is overwritten
/// by the step; only growth writes zeros).
fn logits_for(logits: &mut Vec<f32>, rows: usize, vocab: usize) -> &mut [f32] {
    logits.resize(rows * vocab, 0.0);
    logits
}

/// `log_softmax` of one row, in f32.
fn log_softmax(row: &mut [f32]) {
    let max = max_of(row);
    let sum = super::kernels::sum_exp(row, max);
    let log_sum = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - log_sum;
    }
}

/// The largest of `values` (NaN values passed over; -inf for none), on
/// lanes so that it vectorises (a maximum in one chain waits for each
/// comparison before the next).
fn max_of(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    for (m, &x) in lanes.iter_mut().zip(rest) {
        *m = if x > *m { x } else { *m };
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The model's most likely next token at every position of `targets`, read
/// teacher-forced: input `i`'s decoder is fed its start token, then
/// `targets[i]` one token at a time, and entry `j` of row `i` is the arg-max
/// of the raw logits (no logits processor) after `targets[i][..j]`, for
/// every `j < targets[i].len()` (the first of equal maxima). What a quality
/// guard compares between two versions of a model (int8 against f32): the
/// share of positions where they agree, on the same prefixes.
pub fn teacher_forced_top1<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    targets: &[Vec<u32>],
) -> Result<Vec<Vec<u32>>, BackendError> {
    assert_eq!(inputs.len(), targets.len(), "one target per input");
    let mut out: Vec<Vec<u32>> = targets
        .iter()
        .map(|t| Vec::with_capacity(t.len()))
        .collect();
    if inputs.is_empty() {
        return Ok(out);
    }
    let start = model.seq2seq_config().decoder_start_token_id;
    let mut state = model.start(inputs, 1)?;
    let mut tokens = vec![start; inputs.len()];
    let mut logits = Vec::new();
    let longest = targets.iter().map(Vec::len).max().unwrap_or(0);
    for j in 0..longest {
        model.step(&mut state, &tokens, &mut logits)?;
        let vocab = logits.len() / inputs.len();
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            // A finished target's row is fed its start token again; its
            // predictions are not kept.
            tokens[i] = match targets[i].get(j) {
                Some(&next) => {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (k, &v)| if v > b.1 { (k, v) } else { b },
                        );
                    out[i].push(best.0 as u32);
                    next
                }
                None => start,
            };
        }
    }
    Ok(out)
}

/// Positions where two [`teacher_forced_top1`] readings of the same
/// `inputs` and `targets` agree, and positions counted: each distinct
/// (input, target prefix) once. Outputs of one input under several
/// settings share their first tokens, and counting a shared prefix once
/// per output would weigh one near-tie as many times as it is repeated.
/// `benches/marian_compare.py ct2-agreement` counts CTranslate2's the same.
pub fn agreement(
    inputs: &[Vec<u32>],
    targets: &[Vec<u32>],
    a: &[Vec<u32>],
    b: &[Vec<u32>],
) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let (mut same, mut total) = (0, 0);
    for (((input, target), a), b) in inputs.iter().zip(targets).zip(a).zip(b) {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            if seen.insert((input.as_slice(), &target[..j])) {
                total += 1;
                same += usize::from(x == y);
            }
        }
    }
    (same, total)
}

/// Generates for every input; returns each input's best sequence, decoder
/// start token first, up to and including its end token (or cut at
/// `max_length`).
///
/// `on_step` is called after each step with the number of inputs still
/// running; returning `false` stops generation (every output is then what
/// it was at that point).
pub fn generate<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    settings: &GenerationSettings,
    on_step: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Vec<u32>>, BackendError> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = model.seq2seq_config();
    if settings.max_length > cfg.max_positions + 1 {
        return Err(BackendError::Runtime(format!(
            "max_length {} is beyond the decoder's {} positions",
            settings.max_length, cfg.max_positions
        )));
    }
    if settings.num_beams == 1 {
        greedy(model, inputs, settings, &cfg, on_step)
    } else {
        beam_search(model, inputs, settings, &cfg, on_step)
    }
}

fn greedy<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    s: &GenerationSettings,
    cfg: &Seq2SeqConfig,
    on_step: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Vec<u32>>, BackendError> {
    let vocab = cfg.vocab_size;
    let mut state = model.start(inputs, 1)?;
    let mut outputs: Vec<Vec<u32>> = vec![vec![s.decoder_start_token_id]; inputs.len()];
    // Inputs still running, in state row order.
    let mut running: Vec<usize> = (0..inputs.len()).collect();
    let mut logits = Vec::new();
    while !running.is_empty() {
        let tokens: Vec<u32> = running
            .iter()
            .map(|&i| *outputs[i].last().unwrap_or(&0))
            .collect();
        model.step(&mut state, &tokens, &mut logits)?;
        let mut keep = Vec::with_capacity(running.len());
        for (row, &i) in running.iter().enumerate() {
            let scores = &mut logits[row * vocab..(row + 1) * vocab];
            s.process(&outputs[i], scores);
            // `argmax`: the first of equal maxima (the first token when it
            // is NaN, as a scan comparing with the best so far gives).
            let max = max_of(scores);
            let best = match scores.first() {
                Some(v) if v.is_nan() => 0,
                _ => scores.iter().position(|&v| v == max).unwrap_or(0),
            };
            outputs[i].push(best as u32);
            let done = s.eos_token_ids.contains(&(best as u32)) || outputs[i].len() >= s.max_length;
            if !done {
                keep.push(row);
            }
        }
        if keep.len() < running.len() && !keep.is_empty() {
            model.select(&mut state, &keep)?;
        }
        running = keep.iter().map(|&r| running[r]).collect();
        if !on_step(running.len()) {
            break;
        }
    }
    Ok(outputs)
}

/// Beam search state of one input.
struct Beams {
    /// Running hypotheses (tokens, start token included) and scores.
    running: Vec<(Vec<u32>, f32)>,
    /// Finished hypotheses with their length-penalised scores; `num_beams`
    /// slots, empty ones scored -1e9 as in transformers.
    finished: Vec<(Vec<u32>, f32, bool)>,
    /// `is_early_stop_heuristic_unsatisfied`.
    improvable: bool,
    /// No longer stepped.
    done: bool,
}

fn beam_search<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    s: &GenerationSettings,
    cfg: &Seq2SeqConfig,
    on_step: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Vec<u32>>, BackendError> {
    const NEG: f32 = -1.0e9;
    let k = s.num_beams;
    let vocab = cfg.vocab_size;
    let keep_n = 2usize.max(1 + s.eos_token_ids.len()) * k;
    let start = vec![s.decoder_start_token_id];
    let mut beams: Vec<Beams> = inputs
        .iter()
        .map(|_| Beams {
            running: (0..k)
                .map(|b| (start.clone(), if b == 0 { 0.0 } else { NEG }))
                .collect(),
            finished: (0..k).map(|_| (start.clone(), NEG, false)).collect(),
            improvable: true,
            done: false,
        })
        .collect();
    let mut state = model.start(inputs, k)?;
    // Inputs in the state, in row order (k rows each).
    let mut active: Vec<usize> = (0..inputs.len()).collect();
    let mut cur_len = 1;
    let mut logits = Vec::new();
    loop {
        let tokens: Vec<u32> = active
            .iter()
            .flat_map(|&i| {
                beams[i]
                    .running
                    .iter()
                    .map(|(t, _)| *t.last().unwrap_or(&0))
            })
            .collect();
        model.step(&mut state, &tokens, &mut logits)?;
        // Per row, in parallel and in place: log-softmax, the logits
        // processors, then its best `keep_n` (value, token) with the beam's
        // score added.
        let histories: Vec<(&[u32], f32)> = active
            .iter()
            .flat_map(|&i| beams[i].running.iter().map(|(h, sc)| (h.as_slice(), *sc)))
            .collect();
        let per_row: Vec<Vec<(f32, usize)>> = histories
            .par_iter()
            .zip(logits.par_chunks_mut(vocab))
            .map(|(&(hist, score), lp)| {
                log_softmax(lp);
                s.process(hist, lp);
                top_n(lp, score, keep_n)
            })
            .collect();
        drop(histories);
        let mut rows = Vec::with_capacity(active.len() * k);
        let mut next_active = Vec::with_capacity(active.len());
        let mut all_hit_max = true;
        for (slot, &i) in active.iter().enumerate() {
            let b = &mut beams[i];
            // The best `keep_n` continuations over all beams (`torch.topk`
            // over the accumulated log-probabilities: largest first, equal
            // values by index), from each beam's own best `keep_n`.
            let mut best: Vec<(f32, usize)> = per_row[slot * k..(slot + 1) * k]
                .iter()
                .enumerate()
                .flat_map(|(j, top)| top.iter().map(move |&(v, t)| (v, j * vocab + t)))
                .collect();
            best.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)));
            best.truncate(keep_n);
            let candidates: Vec<(usize, u32, f32, bool)> = best
                .iter()
                .map(|&(score, idx)| {
                    let (beam, token) = (idx / vocab, (idx % vocab) as u32);
                    let hits = s.eos_token_ids.contains(&token) || cur_len + 1 >= s.max_length;
                    (beam, token, score, hits)
                })
                .collect();
            all_hit_max &= candidates.iter().all(|c| c.3);
            // Next running beams: the best `k` with finished ones pushed down.
            let mut running_order: Vec<usize> = (0..candidates.len()).collect();
            let penalised = |c: &(usize, u32, f32, bool)| c.2 + if c.3 { NEG } else { 0.0 };
            running_order.sort_by(|&a, &c| {
                penalised(&candidates[c])
                    .total_cmp(&penalised(&candidates[a]))
                    .then(a.cmp(&c))
            });
            let new_running: Vec<(Vec<u32>, f32, usize)> = running_order[..k]
                .iter()
                .map(|&ci| {
                    let (beam, token, _, _) = candidates[ci];
                    let mut h = b.running[beam].0.clone();
                    h.push(token);
                    (h, penalised(&candidates[ci]), beam)
                })
                .collect();
            // Finished beams: the best `k` of the old ones and the top-`k`
            // candidates that just finished.
            let full = b.finished.iter().all(|f| f.2) && s.early_stopping == EarlyStopping::Done;
            let denom = ((cur_len + 1 - 1) as f64).powf(s.length_penalty as f64) as f32;
            let mut merged: Vec<(Vec<u32>, f32, bool)> = b.finished.clone();
            for (ci, c) in candidates.iter().enumerate() {
                let just_finished = c.3 && ci < k;
                let mut score = c.2 / denom;
                if full {
                    score += NEG;
                }
                if !b.improvable {
                    score += NEG;
                }
                if !just_finished {
                    score += NEG;
                }
                let mut h = b.running[c.0].0.clone();
                h.push(c.1);
                merged.push((h, score, just_finished));
            }
            let mut merged_order: Vec<usize> = (0..merged.len()).collect();
            merged_order.sort_by(|&a, &c| merged[c].1.total_cmp(&merged[a].1).then(a.cmp(&c)));
            b.finished = merged_order[..k]
                .iter()
                .map(|&m| merged[m].clone())
                .collect();
            b.running = new_running
                .iter()
                .map(|(h, sc, _)| (h.clone(), *sc))
                .collect();
            // The early-stop heuristic, at the new length.
            let new_len = cur_len + 1;
            let hyp_len = if s.early_stopping == EarlyStopping::Never && s.length_penalty > 0.0 {
                s.max_length - 1
            } else {
                new_len - 1
            };
            let best_possible =
                b.running[0].1 / (hyp_len as f64).powf(s.length_penalty as f64) as f32;
            let worst = b.finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
            b.improvable &= b
                .finished
                .iter()
                .any(|f| best_possible > if f.2 { worst } else { NEG });
            let all_finished = b.finished.iter().all(|f| f.2);
            b.done = !b.improvable || (all_finished && s.early_stopping == EarlyStopping::Done);
            if !b.done {
                next_active.push(i);
                rows.extend(new_running.iter().map(|(_, _, beam)| slot * k + beam));
            }
        }
        cur_len += 1;
        let go_on = on_step(next_active.len());
        if next_active.is_empty() || all_hit_max || !go_on {
            break;
        }
        model.select(&mut state, &rows)?;
        active = next_active;
    }
    Ok(beams
        .into_iter()
        .map(|b| {
            b.finished
                .into_iter()
                .next()
                .map(|f| f.0)
                .unwrap_or_default()
        })
        .collect())
}

/// The `n` largest of `values` plus `shift` with their indices, largest
/// first (equal sums by index): one pass that keeps the best `n` seen so
/// far, the sums ranked as they are (not the values: adding rounds, and
/// transformers ranks the sums).
fn top_n(values: &[f32], shift: f32, n: usize) -> Vec<(f32, usize)> {
    // Whether (a, i) ranks before (b, j).
    let before = |a: f32, i: usize, b: f32, j: usize| a.total_cmp(&b).then(j.cmp(&i)).is_gt();
    const CHUNK: usize = 16;
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (c, chunk) in values.chunks(CHUNK).enumerate() {
        // Most values lose to the worst kept one: plain comparisons, a
        // chunk at a time (on vectors), tell them apart before the exact
        // order is needed.
        if best.len() == n {
            let lv = best[n - 1].0;
            let beaten = chunk.iter().fold(true, |all, &v| all & (v + shift < lv));
            if beaten {
                continue;
            }
        }
        for (k, &v) in chunk.iter().enumerate() {
            let (v, i) = (v + shift, c * CHUNK + k);
            if best.len() == n {
                let (lv, li) = best[n - 1];
                if v < lv || !before(v, i, lv, li) {
                    continue;
                }
                best.pop();
            }
            let at = best.partition_point(|&(bv, bi)| before(bv, bi, v, i));
            best.insert(at, (v, i));
        }
    }
    best
}

/// Outputs padded to the longest, as `generate()` returns them: with the pad
/// id (or the first end id when the pad id is 0) for beam search, with the
/// pad id for greedy.
pub fn pad_outputs(outputs: &[Vec<u32>], settings: &GenerationSettings) -> Vec<Vec<u32>> {
    let fill = if settings.num_beams > 1 && settings.pad_token_id == 0 {
        settings.eos_token_ids.first().copied().unwrap_or(0)
    } else {
        settings.pad_token_id
    };
    let len = outputs.iter().map(Vec::len).max().unwrap_or(0);
    outputs
        .iter()
        .map(|o| {
            let mut o = o.clone();
            o.resize(len, fill);
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass selection equals a full sort of the shifted values
        /// (ties by index, -inf included).
        #[test]
        fn top_n_equals_sorting(
            values in proptest::collection::vec(-4i8..5, 0..300),
            shift in prop_oneof![Just(0.0f32), -3.0f32..3.0],
            n in 0usize..20,
        ) {
            let values: Vec<f32> = values
                .into_iter()
                .map(|v| if v == 4 { f32::NEG_INFINITY } else { f32::from(v) * 0.1 })
                .collect();
            let mut all: Vec<(f32, usize)> = values.iter().map(|&v| v + shift).zip(0..).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(n);
            prop_assert_eq!(top_n(&values, shift, n), all);
        }

        /// The lanes' maximum is the plain one (NaN passed over).
        #[test]
        fn max_of_equals_the_plain_maximum(
            values in proptest::collection::vec(
                prop_oneof![8 => -1.0e3f32..1.0e3, 1 => Just(f32::NAN), 1 => Just(f32::NEG_INFINITY)],
                0..100,
            ),
        ) {
            let want = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(max_of(&values), want);
        }
    }

    #[test]
    fn forced_tokens_past_the_vocabulary_are_refused() {
        let model = Seq2SeqConfig {
            vocab_size: 10,
            pad_token_id: 1,
            eos_token_id: 2,
            decoder_start_token_id: 2,
            max_positions: 64,
        };
        let with = |bos: Option<u32>, eos: Option<u32>| GenerationConfig {
            forced_bos_token_id: bos,
            forced_eos_token_id: eos,
            ..GenerationConfig::default()
        };
        assert!(GenerationSettings::resolve(&with(Some(9), Some(2)), &model).is_ok());
        for config in [with(Some(10), None), with(None, Some(12))] {
            let err = GenerationSettings::resolve(&config, &model).unwrap_err();
            assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        }
    }
}
