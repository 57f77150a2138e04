//! Generation helpers shared by every decoder: the token sampler (greedy or
//! seeded sampling with a repetition penalty), the loop guard, and the
//! incremental detokenizer that turns a growing id list into streamed text
//! without splitting a UTF-8 character.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::{BackendError, GenerationParams};

/// Picks the next token from logits according to [`GenerationParams`].
pub struct Sampler {
    processor: LogitsProcessor,
    repetition_penalty: f32,
    repeat_last_n: usize,
}

impl Sampler {
    /// A sampler for these parameters (greedy when `temperature` is 0).
    pub fn new(params: &GenerationParams) -> Self {
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match params.top_p {
                Some(p) if p > 0.0 && p < 1.0 => Sampling::TopP {
                    p,
                    temperature: params.temperature,
                },
                _ => Sampling::All {
                    temperature: params.temperature,
                },
            }
        };
        Self {
            processor: LogitsProcessor::from_sampling(params.seed, sampling),
            repetition_penalty: params.repetition_penalty,
            repeat_last_n: params.repeat_last_n,
        }
    }

    /// The next token as [`next`](Self::next) picks it, among the tokens
    /// `allowed` accepts: a token it refuses is taken out and the pick made
    /// again, up to [`GUARD_TRIES`] picks; `None` when none was accepted.
    pub fn next_where(
        &mut self,
        logits: &Tensor,
        generated: &[u32],
        allowed: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Option<u32>, BackendError> {
        let mut pick = self.next(logits, generated)?;
        if allowed(pick) {
            return Ok(Some(pick));
        }
        let mut masked: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        for _ in 1..GUARD_TRIES {
            match masked.get_mut(pick as usize) {
                Some(slot) if *slot != f32::NEG_INFINITY => *slot = f32::NEG_INFINITY,
                // Every token is out (the pick of all -inf logits).
                _ => break,
            }
            let tensor = Tensor::from_slice(&masked, masked.len(), logits.device())?;
            pick = self.next(&tensor, generated)?;
            if allowed(pick) {
                return Ok(Some(pick));
            }
        }
        Ok(None)
    }

    /// The next token, given the logits of the last position (`[vocab]`) and the tokens generated so far.
    pub fn next(&mut self, logits: &Tensor, generated: &[u32]) -> Result<u32, BackendError> {
        let logits = logits.to_dtype(candle_core::DType::F32)?;
        let logits =
            if (self.repetition_penalty - 1.0).abs() > f32::EPSILON && !generated.is_empty() {
                let start = generated.len().saturating_sub(self.repeat_last_n);
                candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    self.repetition_penalty,
                    &generated[start..],
                )?
            } else {
                logits
            };
        Ok(self.processor.sample(&logits)?)
    }
}

/// Most picks [`Sampler::next_where`] makes before it gives up on a guard.
pub const GUARD_TRIES: usize = 64;

/// Longest repeated block the loop guard looks for, in tokens.
pub(crate) const LOOP_MAX_PERIOD: usize = 256;
/// Copies of a short block (under [`LOOP_LONG_BLOCK`] tokens) that count as a loop.
pub(crate) const LOOP_MIN_REPEATS: usize = 3;
/// A block at least this long counts as a loop on its second verbatim copy.
pub(crate) const LOOP_LONG_BLOCK: usize = 16;
/// Fewest tokens the repeated copies must cover together.
pub(crate) const LOOP_MIN_SPAN: usize = 24;

/// Longest run of last tokens prompt-lookup drafting looks for.
const LOOKUP_NGRAM: usize = 3;
/// Shortest: a single token matches too often to predict what follows.
const LOOKUP_MIN_NGRAM: usize = 2;

/// Prompt-lookup drafting: up to `max` tokens that followed the latest
/// earlier occurrence, in `tokens` (the prompt, then what was generated), of
/// its last [`LOOKUP_NGRAM`] tokens, else of fewer (down to
/// [`LOOKUP_MIN_NGRAM`]); none when they occur nowhere before.
pub(crate) fn prompt_lookup(tokens: &[u32], max: usize) -> &[u32] {
    let len = tokens.len();
    for n in (LOOKUP_MIN_NGRAM..=LOOKUP_NGRAM.min(len.saturating_sub(1))).rev() {
        let tail = &tokens[len - n..];
        if let Some(start) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == tail) {
            let from = start + n;
            return &tokens[from..(from + max).min(len)];
        }
    }
    &[]
}

/// The loop guard. When the generated tokens end with one block of `p` tokens
/// (1 ≤ p ≤ [`LOOP_MAX_PERIOD`]) repeated back to back, covering at least
/// [`LOOP_MIN_SPAN`] tokens, at least [`LOOP_MIN_REPEATS`] times for a short
/// block or twice for a block of [`LOOP_LONG_BLOCK`] tokens or more (a
/// sentence repeated verbatim), returns the length to keep: the output up to
/// and including the first copy of the block.
pub(crate) fn loop_cut(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    for p in 1..=LOOP_MAX_PERIOD.min(n / 2) {
        // Count how many trailing tokens follow the period-p pattern.
        let mut run = p;
        while run < n && tokens[n - 1 - run] == tokens[n - 1 - run + p] {
            run += 1;
        }
        let repeats = run / p;
        let needed = if p >= LOOP_LONG_BLOCK {
            2
        } else {
            LOOP_MIN_REPEATS
        };
        if repeats >= needed && repeats * p >= LOOP_MIN_SPAN {
            return Some(n - (repeats - 1) * p);
        }
    }
    None
}

/// Turns a growing list of token ids into text pieces, holding back bytes that
/// do not yet form a whole character.
pub(crate) struct IncrementalText {
    emitted: usize,
}

impl IncrementalText {
    /// Starts with nothing emitted.
    pub fn new() -> Self {
        Self { emitted: 0 }
    }

    /// Given the full decoded text so far, the new part that is safe to emit.
    pub fn push(&mut self, decoded: &str) -> Option<String> {
        // A trailing replacement character is an incomplete multi-byte sequence: wait.
        if decoded.ends_with('\u{FFFD}') || decoded.len() <= self.emitted {
            return None;
        }
        let piece = decoded.get(self.emitted..)?.to_string();
        self.emitted = decoded.len();
        Some(piece)
    }
}

impl Default for IncrementalText {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_copies_what_followed_the_latest_match() {
        // "… 7 8 9 | 1 2 3 4 5 … 1 2" → what followed "1 2": "3 4 5".
        let t = [7, 8, 9, 1, 2, 3, 4, 5, 6, 1, 2];
        assert_eq!(prompt_lookup(&t, 3), [3, 4, 5]);
        assert_eq!(prompt_lookup(&t, 100), [3, 4, 5, 6, 1, 2]);
        // The longest tail wins over a later shorter match.
        let t = [1, 2, 3, 10, 9, 2, 3, 11, 1, 2, 3];
        assert_eq!(prompt_lookup(&t, 1), [10]);
        // The latest of equal matches.
        let t = [4, 5, 20, 4, 5, 21, 4, 5];
        assert_eq!(prompt_lookup(&t, 1), [21]);
        // No match, a single token, nothing at all.
        assert!(prompt_lookup(&[1, 2, 3, 4], 5).is_empty());
        assert!(
            prompt_lookup(&[1, 2, 1], 5).is_empty(),
            "one token does not draft"
        );
        assert!(prompt_lookup(&[], 5).is_empty());
        assert!(prompt_lookup(&[1, 2, 1, 2], 0).is_empty());
    }
    use proptest::prelude::*;

    #[test]
    fn loop_guard_cuts_a_repeated_phrase_to_one_copy() {
        let mut t: Vec<u32> = vec![1, 2, 3];
        let block: Vec<u32> = (10..20).collect();
        for _ in 0..4 {
            t.extend(&block);
        }
        assert_eq!(loop_cut(&t), Some(3 + 10));
    }

    #[test]
    fn loop_guard_ignores_short_repeats() {
        // Two copies of a short phrase are not a loop, nor is a short stutter.
        let mut t: Vec<u32> = (100..110).collect();
        t.extend(0..8);
        t.extend(0..8);
        assert_eq!(loop_cut(&t), None);
        assert_eq!(loop_cut(&[5, 5, 5, 5]), None);
        let distinct: Vec<u32> = (0..500).collect();
        assert_eq!(loop_cut(&distinct), None);
    }

    #[test]
    fn loop_guard_cuts_a_long_sentence_repeated_once() {
        let mut t: Vec<u32> = vec![1, 2];
        let sentence: Vec<u32> = (10..150).collect();
        t.extend(&sentence);
        t.extend(&sentence);
        assert_eq!(loop_cut(&t), Some(2 + 140));
    }

    #[test]
    fn loop_guard_catches_a_single_token_run() {
        let t = vec![7u32; 30];
        assert_eq!(loop_cut(&t), Some(1));
    }

    proptest! {
        #[test]
        fn loop_cut_keeps_a_prefix_with_one_copy(prefix in proptest::collection::vec(0u32..50, 0..40),
                                                 block in proptest::collection::vec(100u32..200, 1..20),
                                                 reps in 3usize..8) {
            let mut t = prefix.clone();
            for _ in 0..reps { t.extend(&block); }
            if let Some(keep) = loop_cut(&t) {
                prop_assert!(keep <= t.len());
                prop_assert!(keep >= prefix.len());
                // What is cut is made only of copies of what is kept.
                let cut = &t[keep..];
                prop_assert!(cut.iter().all(|x| t[..keep].contains(x)));
            } else {
                prop_assert!(block.len() * reps < LOOP_MIN_SPAN);
            }
        }
    }

    #[test]
    fn a_guarded_pick_takes_the_best_token_the_guard_accepts() {
        let greedy = GenerationParams {
            temperature: 0.0,
            ..GenerationParams::default()
        };
        let logits = Tensor::new(&[0.1f32, 0.9, 0.5, 0.3], &candle_core::Device::Cpu).unwrap();
        let mut sampler = Sampler::new(&greedy);
        let mut asked = Vec::new();
        let mut not_1 = |t: u32| {
            asked.push(t);
            t != 1
        };
        assert_eq!(
            sampler.next_where(&logits, &[], &mut not_1).unwrap(),
            Some(2)
        );
        assert_eq!(asked, [1, 2]);
        let mut none = |_| false;
        assert_eq!(sampler.next_where(&logits, &[], &mut none).unwrap(), None);
    }

    #[test]
    fn incremental_text_waits_for_whole_characters() {
        let mut inc = IncrementalText::new();
        assert_eq!(inc.push("Пр"), Some("Пр".into()));
        assert_eq!(inc.push("Пр\u{FFFD}"), None);
        assert_eq!(inc.push("При"), Some("и".into()));
        assert_eq!(inc.push("При"), None);
    }
}
