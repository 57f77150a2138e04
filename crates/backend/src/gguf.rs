//! Decoder-only LLMs from GGUF files (Qwen2 / Qwen2.5, and Llama-architecture
//! models such as SmolLM2): tokenizer, chat template and the generation loop.
//! On the CPU the forward pass is precis's own (the `decoder` module, on the
//! memory-mapped file, with batched decoding of several requests); on a GPU
//! (`--features cuda`, unverified) it is candle-transformers' quantized models.
//!
//! The tokenizer and chat template come from the file's own metadata
//! ([`crate::tokenizer`]), so one `.gguf` file is the whole model.
//!
//! ```no_run
//! # fn main() -> Result<(), precis_backend::BackendError> {
//! use precis_backend::{Backend, ChatMessage, GenerationParams, GenerationRequest, Flow};
//! use precis_backend::gguf::{GgufModel, GgufOptions};
//! let mut model = GgufModel::load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), GgufOptions::default())?;
//! let req = GenerationRequest { messages: vec![ChatMessage::user("Hello")], params: GenerationParams::default(), seq2seq: None, direction: None };
//! let out = model.generate(&[req], &mut |_, _| Flow::Continue);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::decoder::{Decoder, KvCache, SeqInput};
use super::generation::{loop_cut, prompt_lookup, IncrementalText, Sampler};
use super::script::{Script, ScriptGuard};
use super::weights::GgufFile;
use super::{
    batch_after_batch, Arrivals, Backend, BackendError, Cached, ChatMessage, FinishReason, Flow,
    Generation, GenerationRequest, ModelInfo, Placement, TokenCounter, WholeBatch,
};
use crate::tokenizer::{tokenizer_from_gguf, GgufTokenizer};

/// How to load a GGUF model.
#[derive(Debug, Clone, Default)]
pub struct GgufOptions {
    /// Id reported in results (defaults to the file name).
    pub id: Option<String>,
    /// Revision reported in results (defaults to `local`).
    pub revision: Option<String>,
    /// Languages the model may write (from its manifest).
    pub target_languages: Vec<String>,
    /// The weights' licence, from its manifest.
    pub license: Option<String>,
    /// Where it runs: on a CUDA GPU (needs the `cuda` feature) through
    /// candle-transformers' quantized models instead of precis's CPU decoder.
    pub placement: Placement,
    /// Worker threads of the CPU decoder (0: one per core).
    pub threads: usize,
    /// How greedy decoding on the CPU drafts tokens to verify in one pass.
    pub speculation: Speculation,
}

/// Speculative decoding of greedy generations on the CPU decoder: tokens
/// are drafted cheaply, then the model runs the sequence's next token and
/// the drafts in one forward pass and keeps the drafts it would itself have
/// chosen, so the output is token for token that of plain decoding (the
/// pass computes each token's logits as a pass of one token does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Speculation {
    /// One token per forward pass.
    Off,
    /// Drafts copied from the prompt (and the text so far): the tokens that
    /// followed the latest earlier occurrence of the last few tokens.
    /// Summaries and translations copy names, numbers and phrases of their
    /// article.
    #[default]
    PromptLookup,
    /// Drafts written greedily by a smaller model with the same vocabulary
    /// ([`GgufModel::set_draft`]; Qwen2.5-0.5B for the 1.5B), which reads
    /// every prompt too and keeps its own caches.
    DraftModel,
}

/// Most tokens drafted at once by prompt lookup. On two cores a verifying
/// pass costs more with every token it carries: 3 measured best on
/// Qwen2.5-Coder-1.5B (1.34–1.43× plain decoding; 6 gave 1.09×) and as good as
/// 6 on the 0.5B.
const DRAFT_MAX: usize = 3;

/// Tokens the draft model writes ahead per step: each costs one of its
/// forward passes whether the target keeps it or not.
const DRAFT_MODEL_TOKENS: usize = 4;

/// Tokens drafted and kept by speculative decoding, since the model loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Forward passes that verified at least one drafted token.
    pub passes: u64,
    /// Tokens drafted.
    pub drafted: u64,
    /// Drafted tokens the model kept.
    pub accepted: u64,
}

/// candle-transformers' quantized models: the CUDA path.
enum CandleWeights {
    Qwen2(quantized_qwen2::ModelWeights),
    Llama(quantized_llama::ModelWeights),
}

impl CandleWeights {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            CandleWeights::Qwen2(m) => m.forward(x, pos),
            CandleWeights::Llama(m) => m.forward(x, pos),
        }
    }
    fn clear(&mut self) {
        match self {
            CandleWeights::Qwen2(m) => m.clear_kv_cache(),
            CandleWeights::Llama(m) => m.clear_kv_cache(),
        }
    }
}

/// What runs the forward pass.
enum Runner {
    /// precis's own decoder on the mapped file (CPU).
    Cpu(Box<Decoder>),
    /// candle's quantized models on a GPU.
    Candle(Box<CandleWeights>, Device),
}

/// A sequence being generated: first its prompt is read into its cache,
/// then it generates.
struct Active {
    index: usize,
    request: GenerationRequest,
    /// The prompt's ids (what drafts are looked up in).
    prompt: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    /// For a translation into a script other than Latin: keeps to it.
    guard: Option<Guard>,
    generated: Vec<u32>,
    text: IncrementalText,
    next: Option<u32>,
    finish: Option<FinishReason>,
    /// Under [`Speculation::DraftModel`], a greedy sequence's cache in the
    /// draft model: a start of the prompt and the text so far (what the
    /// target kept).
    draft: Option<KvCache>,
}

impl Active {
    /// Tokens it may still generate.
    fn room(&self) -> usize {
        (self.request.params.max_new_tokens).saturating_sub(self.generated.len())
    }

    /// The prompt's tokens not yet in the cache.
    fn unread(&self) -> &[u32] {
        self.prompt.get(self.cache.len()..).unwrap_or(&[])
    }
}

/// Most prompt tokens a step reads while sequences are generating: a
/// request joining a running batch delays them by no more than this per
/// token (on two cores, about 0.4 s for Qwen2.5-0.5B).
const PREFILL_STEP: usize = 128;

/// A loaded GGUF decoder.
pub struct GgufModel {
    runner: Runner,
    tokenizer: Arc<GgufTokenizer>,
    template: ChatTemplate,
    info: ModelInfo,
    /// The starts of the last prompts prefilled on the CPU, with their
    /// caches, the most recently used last.
    prefixes: Vec<PromptPrefix>,
    /// Per script, which tokens hold a letter of another script.
    foreign: HashMap<Script, Arc<Vec<bool>>>,
    speculation: Speculation,
    stats: SpeculationStats,
    /// The draft model's decoder ([`Speculation::DraftModel`]).
    draft: Option<Box<Decoder>>,
}

/// A script guard with its vocabulary table.
struct Guard {
    rule: ScriptGuard,
    /// Indexed by token id: whether the token holds a letter the rule's
    /// script does not have.
    foreign: Arc<Vec<bool>>,
}

/// The first tokens of a prompt and their cache. Prompts of one task share
/// their start (the instructions for a language), so a later prompt copies
/// the cache of what it shares instead of computing it.
struct PromptPrefix {
    ids: Vec<u32>,
    cache: KvCache,
}

/// Most prompt tokens kept for later prompts to share: what prompts share
/// comes first, and a copy stays small (15 MB for Qwen2.5-1.5B).
const PREFIX_KEEP: usize = 256;

/// Prompt starts kept: one per prompt kind in use (a digest alternates a
/// summary and a translation into each language).
const PREFIX_SLOTS: usize = 4;

/// Fewest shared tokens worth copying instead of computing.
const PREFIX_MIN: usize = 16;

impl PromptPrefix {
    /// How many of the first tokens of `ids` this prefix has computed,
    /// leaving at least the last one to run (its logits are needed); 0 when
    /// too few to be worth a copy.
    fn shared(&self, ids: &[u32]) -> usize {
        let common = self.ids.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let usable = common.min(ids.len().saturating_sub(1));
        if usable >= PREFIX_MIN {
            usable
        } else {
            0
        }
    }
}

impl GgufModel {
    /// Loads the model, its tokenizer and its chat template from one GGUF file.
    /// On the CPU the file is memory-mapped, not read.
    pub fn load(path: &Path, opts: GgufOptions) -> Result<Self, BackendError> {
        let file = GgufFile::open(path)?;
        let architecture = file
            .metadata()
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let family = match architecture.as_str() {
            "qwen2" => "gguf-qwen2",
            "llama" => "gguf-llama",
            other => {
                return Err(BackendError::UnsupportedArchitecture {
                    path: path.display().to_string(),
                    architecture: other.to_string(),
                })
            }
        };
        let tokenizer =
            tokenizer_from_gguf(&file.content).map_err(|e| BackendError::load(path, e))?;
        let template = ChatTemplate::new(tokenizer.chat_template.clone());
        let (runner, context_length) = if opts.placement != Placement::Cpu {
            let device = opts.placement.device()?;
            let mut reader = File::open(path).map_err(|e| BackendError::load(path, e))?;
            let content = gguf_file::Content::read(&mut reader)
                .map_err(|e| BackendError::load(path, format!("not a valid GGUF file ({e})")))?;
            let context_length = content
                .metadata
                .get(&format!("{architecture}.context_length"))
                .and_then(|v| v.to_u32().ok())
                .map_or(2048, |v| v as usize);
            let weights = if architecture == "qwen2" {
                CandleWeights::Qwen2(
                    quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, &device)
                        .map_err(|e| BackendError::load(path, e))?,
                )
            } else {
                CandleWeights::Llama(
                    quantized_llama::ModelWeights::from_gguf(content, &mut reader, &device)
                        .map_err(|e| BackendError::load(path, e))?,
                )
            };
            (Runner::Candle(Box::new(weights), device), context_length)
        } else {
            let decoder = Decoder::new(file, opts.threads)?;
            let context_length = decoder.config().context_length;
            (Runner::Cpu(Box::new(decoder)), context_length)
        };
        let id = opts.id.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        });
        Ok(Self {
            runner,
            tokenizer: Arc::new(tokenizer),
            template,
            info: ModelInfo {
                kind: crate::ModelKind::Chat,
                id,
                revision: opts.revision.unwrap_or_else(|| "local".into()),
                family: family.to_string(),
                context_length,
                target_languages: opts.target_languages,
                license: opts.license,
                quantize: crate::Quantize::None,
                device: opts.placement,
            },
            prefixes: Vec::new(),
            foreign: HashMap::new(),
            speculation: opts.speculation,
            stats: SpeculationStats::default(),
            draft: None,
        })
    }

    /// Renders the prompt. Text that looks like a chat-control token (`<|im_end|>`)
    /// is broken up first (`< |im_end|>`), so an article cannot end the user's turn.
    fn render(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        let safe: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content.replace("<|", "< |"),
            })
            .collect();
        self.template.render(&safe)
    }

    /// The token ids of the rendered chat prompt (what [`Backend::generate`] feeds the model).
    pub fn chat_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, BackendError> {
        let prompt = self.render(messages)?;
        self.tokenizer
            .encode(&prompt)
            .map_err(|e| BackendError::Prompt(e.to_string()))
    }

    /// The CPU decoder, when the model runs on it.
    pub fn decoder(&mut self) -> Option<&mut Decoder> {
        match &mut self.runner {
            Runner::Cpu(d) => Some(d),
            Runner::Candle(..) => None,
        }
    }

    /// Pure greedy decoding from token ids: up to `max_new_tokens` arg-max tokens
    /// (no repetition penalty, no loop guard), ending after the first stop token.
    /// The raw path that reference fixtures and parity tests compare.
    pub fn greedy_ids(
        &mut self,
        prompt_ids: &[u32],
        max_new_tokens: usize,
    ) -> Result<Vec<u32>, BackendError> {
        let stop_ids = self.tokenizer.stop_ids.clone();
        let mut out = Vec::with_capacity(max_new_tokens);
        match &mut self.runner {
            Runner::Cpu(decoder) => {
                let mut cache = decoder.new_cache(prompt_ids.len() + max_new_tokens);
                let mut input = prompt_ids.to_vec();
                while out.len() < max_new_tokens {
                    let logits = decoder.forward(&mut [SeqInput {
                        cache: &mut cache,
                        logits_from: input.len() - 1,
                        tokens: &input,
                    }])?;
                    let next = argmax(&logits[0]);
                    out.push(next);
                    if stop_ids.contains(&next) {
                        break;
                    }
                    input = vec![next];
                }
            }
            Runner::Candle(weights, device) => {
                weights.clear();
                let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
                let mut logits = weights.forward(&input, 0)?.squeeze(0)?;
                while out.len() < max_new_tokens {
                    let next = logits
                        .to_dtype(candle_core::DType::F32)?
                        .argmax(0)?
                        .to_scalar::<u32>()?;
                    out.push(next);
                    if stop_ids.contains(&next) || out.len() == max_new_tokens {
                        break;
                    }
                    let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
                    logits = weights
                        .forward(&input, prompt_ids.len() + out.len() - 1)?
                        .squeeze(0)?;
                }
                weights.clear();
            }
        }
        Ok(out)
    }

    /// Teacher forcing: feeds `prompt_ids` then `continuation` in one pass and
    /// returns the arg-max prediction at each continuation position (the
    /// model's guess for `continuation[i]`). CPU decoder only.
    pub fn teacher_forced_argmax(
        &mut self,
        prompt_ids: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<u32>, BackendError> {
        let Runner::Cpu(decoder) = &mut self.runner else {
            return Err(BackendError::Runtime(
                "teacher forcing runs on the CPU decoder only".into(),
            ));
        };
        if prompt_ids.is_empty() || continuation.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = prompt_ids.to_vec();
        ids.extend_from_slice(&continuation[..continuation.len() - 1]);
        let mut cache = decoder.new_cache(ids.len());
        let vocab = decoder.config().vocab;
        let logits = decoder.forward(&mut [SeqInput {
            cache: &mut cache,
            logits_from: prompt_ids.len() - 1,
            tokens: &ids,
        }])?;
        Ok(logits[0].chunks_exact(vocab).map(argmax).collect())
    }

    /// The script guard of a translation request (one naming its
    /// direction) into a language written in a script other than Latin,
    /// with the vocabulary's table for that script (made on first use).
    fn guard_for(&mut self, request: &GenerationRequest) -> Option<Guard> {
        let direction = request.direction.as_ref()?;
        let rule = ScriptGuard::new(&direction.target, request.source_text())?;
        let tokenizer = &self.tokenizer;
        let foreign = self.foreign.entry(rule.script()).or_insert_with(|| {
            Arc::new(
                (0..tokenizer.vocab_size() as u32)
                    .map(|id| rule.has_foreign_letter(&tokenizer.token_bytes(id)))
                    .collect(),
            )
        });
        Some(Guard {
            foreign: Arc::clone(foreign),
            rule,
        })
    }

    fn check_fits(&self, prompt_tokens: usize, max_new_tokens: usize) -> Result<(), BackendError> {
        if prompt_tokens + max_new_tokens > self.info.context_length {
            return Err(BackendError::ContextOverflow {
                prompt_tokens,
                max_new_tokens,
                context_length: self.info.context_length,
            });
        }
        Ok(())
    }

    /// Takes the next token of a sequence from its logits; returns whether it goes on.
    fn advance(
        &self,
        seq: &mut Active,
        logits: &[f32],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Result<(), BackendError> {
        let params = &seq.request.params;
        let logits = Tensor::from_slice(logits, logits.len(), &Device::Cpu)?;
        let next = pick(
            &self.tokenizer,
            &mut seq.sampler,
            seq.guard.as_ref(),
            &logits,
            &seq.generated,
        )?;
        if self.tokenizer.stop_ids.contains(&next) {
            seq.finish = Some(FinishReason::Stop);
            return Ok(());
        }
        seq.generated.push(next);
        if params.loop_guard {
            if let Some(keep) = loop_cut(&seq.generated) {
                seq.generated.truncate(keep);
                seq.finish = Some(FinishReason::Loop);
                return Ok(());
            }
        }
        let decoded = self.tokenizer.decode(&seq.generated)?;
        if let Some(piece) = seq.text.push(&decoded) {
            if on_token(seq.index, &piece) == Flow::Stop {
                seq.finish = Some(FinishReason::Cancelled);
                return Ok(());
            }
        }
        if seq.generated.len() >= params.max_new_tokens {
            seq.finish = Some(FinishReason::Length);
        } else {
            seq.next = Some(next);
        }
        Ok(())
    }

    /// What a decoding step feeds a sequence: its next token, then the
    /// tokens drafted after it (by prompt lookup for a greedy sequence under
    /// [`Speculation::PromptLookup`], else `drafted`), no more than it may
    /// still generate.
    fn feed(&self, seq: &Active, drafted: &[u32]) -> Vec<u32> {
        let next = seq.next.expect("an active sequence has a next token");
        let greedy = seq.request.params.temperature <= 0.0;
        let room = seq.room();
        let mut feed = vec![next];
        if self.speculation == Speculation::PromptLookup && greedy && room > 0 {
            // `generated` ends with `next`.
            let context: Vec<u32> = seq.prompt.iter().chain(&seq.generated).copied().collect();
            feed.extend_from_slice(prompt_lookup(&context, DRAFT_MAX.min(room)));
        } else {
            feed.extend_from_slice(&drafted[..drafted.len().min(room)]);
        }
        feed
    }

    /// Under [`Speculation::DraftModel`]: runs the draft model for the
    /// sequences that have a cache in it, in passes shared by all of them.
    /// A sequence reading its prompt reads there what the target holds and
    /// its chunk (`chunks[i]`); a generating one catches up with its text
    /// (what the target kept since the last step) and writes up to
    /// [`DRAFT_MODEL_TOKENS`] greedy tokens ahead, returned per sequence. On a failure of the draft model nothing is
    /// drafted (the target decodes on, one token a step).
    fn draft(&mut self, active: &mut [Active], chunks: &[Vec<u32>]) -> Vec<Vec<u32>> {
        let mut drafts = vec![Vec::new(); active.len()];
        let Some(decoder) = self.draft.as_mut() else {
            return drafts;
        };
        // First pass: chunks and catching up; the last token's logits.
        let mut tails: Vec<Vec<u32>> = Vec::with_capacity(active.len());
        let mut wanted = vec![0; active.len()];
        for (i, seq) in active.iter().enumerate() {
            let Some(draft) = &seq.draft else {
                tails.push(Vec::new());
                continue;
            };
            // Up to what the target holds after this step's chunk, or all
            // the text so far (ending with the next token).
            let upto = match seq.next {
                None => seq.cache.len() + chunks[i].len(),
                Some(_) => {
                    wanted[i] = DRAFT_MODEL_TOKENS.min(seq.room());
                    seq.prompt.len() + seq.generated.len()
                }
            };
            let context = seq.prompt.iter().chain(&seq.generated);
            let behind = upto.saturating_sub(draft.len());
            tails.push(context.skip(draft.len()).take(behind).copied().collect());
        }
        let mut first = true;
        loop {
            let mut inputs = Vec::new();
            let mut who = Vec::new();
            for (i, (seq, tail)) in active.iter_mut().zip(&tails).enumerate() {
                let Some(draft) = seq.draft.as_mut() else {
                    continue;
                };
                let tokens: &[u32] = if first {
                    tail
                } else if drafts[i].len() < wanted[i] {
                    std::slice::from_ref(drafts[i].last().expect("a draft before"))
                } else {
                    continue;
                };
                if tokens.is_empty() {
                    continue;
                }
                who.push(i);
                inputs.push(SeqInput {
                    cache: draft,
                    tokens,
                    // Logits only where a draft is wanted.
                    logits_from: if wanted[i] > 0 {
                        tokens.len() - 1
                    } else {
                        tokens.len()
                    },
                });
            }
            if inputs.is_empty() {
                break;
            }
            let Ok(logits) = decoder.forward(&mut inputs) else {
                drop(inputs);
                for seq in active.iter_mut() {
                    seq.draft = None;
                }
                return vec![Vec::new(); active.len()];
            };
            drop(inputs);
            for (i, l) in who.into_iter().zip(logits) {
                if !l.is_empty() {
                    let token = argmax(&l);
                    drafts[i].push(token);
                    if self.tokenizer.stop_ids.contains(&token) {
                        // It would end there: nothing to draft after.
                        wanted[i] = drafts[i].len();
                    }
                }
            }
            first = false;
        }
        drafts
    }

    /// Takes the tokens of one decoding step from its logits (one row per
    /// token of `feed`): the next token after `feed[0]`, and while each is
    /// the drafted token that follows, the next after that one, exactly as
    /// plain decoding would have taken them one pass at a time. The cache
    /// keeps the fed tokens up to the last one kept.
    fn verify(
        &mut self,
        seq: &mut Active,
        logits: &[f32],
        feed: &[u32],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Result<(), BackendError> {
        let vocab = logits.len() / feed.len();
        let start = seq.cache.len() - feed.len();
        let mut kept = 0;
        for (row, drafted) in logits
            .chunks_exact(vocab)
            .zip(feed[1..].iter().map(Some).chain([None]))
        {
            seq.next = None;
            self.advance(seq, row, on_token)?;
            match (seq.next, drafted) {
                (Some(next), Some(&d)) if seq.finish.is_none() && next == d => kept += 1,
                _ => break,
            }
        }
        if feed.len() > 1 {
            self.stats.passes += 1;
            self.stats.drafted += (feed.len() - 1) as u64;
            self.stats.accepted += kept as u64;
        }
        seq.cache.truncate(start + 1 + kept);
        if let Some(draft) = &mut seq.draft {
            // What it drafted past the first token not kept is gone.
            draft.truncate(seq.cache.len());
        }
        Ok(())
    }

    /// Tokens drafted and kept by speculative decoding since the model
    /// loaded.
    pub fn speculation_stats(&self) -> SpeculationStats {
        self.stats
    }

    /// Decodes greedy generations with `speculation` from now on.
    pub fn set_speculation(&mut self, speculation: Speculation) {
        self.speculation = speculation;
    }

    /// Makes `draft` this model's draft model ([`Speculation::DraftModel`]):
    /// a smaller model with the same vocabulary, token for token, both on
    /// the CPU decoder.
    pub fn set_draft(&mut self, draft: GgufModel) -> Result<(), BackendError> {
        let same_vocabulary = draft.tokenizer.vocab_size() == self.tokenizer.vocab_size()
            && (0..self.tokenizer.vocab_size() as u32)
                .all(|id| draft.tokenizer.token_bytes(id) == self.tokenizer.token_bytes(id));
        if !same_vocabulary {
            return Err(BackendError::Config(format!(
                "{} cannot draft for {}: their vocabularies differ (a draft model must share the target's tokenizer)",
                draft.info.id, self.info.id
            )));
        }
        match (draft.runner, &self.runner) {
            (Runner::Cpu(decoder), Runner::Cpu(target))
                if decoder.config().vocab > target.config().vocab =>
            {
                Err(BackendError::Config(format!(
                    "{} cannot draft for {}: it writes token ids past the target's {} rows",
                    draft.info.id,
                    self.info.id,
                    target.config().vocab
                )))
            }
            (Runner::Cpu(mut decoder), Runner::Cpu(target)) => {
                decoder.share_threads(target);
                self.draft = Some(decoder);
                Ok(())
            }
            _ => Err(BackendError::Config(
                "a draft model runs on the CPU decoder only".into(),
            )),
        }
    }

    fn finish(&self, seq: &Active) -> Result<Generation, BackendError> {
        let out = self.tokenizer.decode(&seq.generated)?;
        Ok(Generation {
            text: out.trim().to_string(),
            prompt_tokens: seq.prompt.len(),
            generated_tokens: seq.generated.len(),
            finish: seq.finish.unwrap_or(FinishReason::Length),
            cache: Cached::Off,
        })
    }

    /// Makes a request a sequence: its prompt's ids, checked against the
    /// context, and an empty cache.
    fn admit(&mut self, index: usize, request: GenerationRequest) -> Result<Active, BackendError> {
        let ids = self.chat_ids(&request.messages)?;
        if ids.is_empty() {
            return Err(BackendError::Prompt(
                "the chat template made an empty prompt; give the request some text".into(),
            ));
        }
        self.check_fits(ids.len(), request.params.max_new_tokens)?;
        let guard = self.guard_for(&request);
        let Runner::Cpu(decoder) = &mut self.runner else {
            unreachable!("admit runs on the CPU decoder");
        };
        let cache = decoder.new_cache(ids.len() + request.params.max_new_tokens);
        let positions = ids.len() + request.params.max_new_tokens;
        let draft = (self.draft.as_ref())
            .filter(|d| {
                self.speculation == Speculation::DraftModel
                    && request.params.temperature <= 0.0
                    && positions <= d.config().context_length
            })
            .map(|d| d.new_cache(positions));
        Ok(Active {
            index,
            sampler: Sampler::new(&request.params),
            request,
            prompt: ids,
            cache,
            guard,
            generated: Vec::new(),
            text: IncrementalText::new(),
            next: None,
            finish: None,
            draft,
        })
    }

    /// Before a sequence reads its first chunk: copies into its cache the
    /// longest start its prompt shares with a kept prompt (one read in an
    /// earlier step, possibly one that joined with it).
    fn share_prefix(&self, seq: &mut Active) {
        if let Some(prefix) = (self.prefixes.iter()).max_by_key(|p| p.shared(&seq.prompt)) {
            let shared = prefix.shared(&seq.prompt);
            if shared > 0 && seq.cache.fill_from(&prefix.cache, shared).is_err() {
                seq.cache.truncate(0);
            }
        }
    }

    /// Keeps the start of a prompt just read for later prompts: it replaces
    /// the kept start it shares the most with (it holds that part too),
    /// else the least recently used.
    fn keep_prefix(&mut self, seq: &Active) {
        let best = (self.prefixes.iter().enumerate())
            .map(|(slot, p)| (slot, p.shared(&seq.prompt)))
            .max_by_key(|&(_, shared)| shared)
            .filter(|&(_, shared)| shared > 0);
        if let Some((slot, _)) = best {
            self.prefixes.remove(slot);
        } else if self.prefixes.len() == PREFIX_SLOTS {
            self.prefixes.remove(0);
        }
        let Runner::Cpu(decoder) = &mut self.runner else {
            return;
        };
        let keep = seq.prompt.len().min(PREFIX_KEEP);
        let ids = &seq.prompt[..keep];
        let mut kept = decoder.new_cache(keep);
        if kept.fill_from(&seq.cache, keep).is_ok() {
            self.prefixes.push(PromptPrefix {
                ids: ids.to_vec(),
                cache: kept,
            });
        }
    }

    /// Generates on the CPU decoder for every request that joins, in shared
    /// forward passes: each step runs every generating sequence's next token
    /// (and its drafts) together with up to [`PREFILL_STEP`] tokens of the
    /// prompts still being read, oldest first, so a request that joins
    /// starts at the next step and those generating wait for no more than
    /// a chunk of its prompt. A finished sequence leaves at once. What a
    /// sequence writes does not depend on what runs beside it: every token's
    /// logits are computed as they would be alone.
    fn generate_joining_cpu(&mut self, arrivals: &mut dyn Arrivals) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            for (index, request) in arrivals.join() {
                match self.admit(index, request) {
                    Ok(seq) if seq.request.params.max_new_tokens == 0 => {
                        arrivals.done(index, self.finish(&seq));
                    }
                    Ok(seq) => active.push(seq),
                    Err(e) => arrivals.done(index, Err(e)),
                }
            }
            if active.is_empty() {
                return;
            }
            // What each sequence runs in this step: a generating one its next
            // token and drafts; one reading its prompt, the next chunk of it
            // (none once the step's prompt tokens are spent). While none
            // generates, no one waits: the oldest prompt is read whole (one
            // prompt per pass, as memory allows), and the next ones start
            // from the start it leaves.
            let generating = active.iter().any(|seq| seq.unread().is_empty());
            let mut budget = match active.first() {
                Some(oldest) if !generating => oldest.unread().len(),
                _ => PREFILL_STEP,
            };
            let mut chunks: Vec<Vec<u32>> = Vec::with_capacity(active.len());
            for seq in active.iter_mut() {
                if budget > 0 && seq.cache.is_empty() {
                    self.share_prefix(seq);
                }
                let unread = seq.unread();
                let n = unread.len().min(budget);
                budget -= n;
                chunks.push(unread[..n].to_vec());
            }
            let drafts = self.draft(&mut active, &chunks);
            let feeds: Vec<Vec<u32>> = (active.iter().zip(chunks).zip(&drafts))
                .map(|((seq, chunk), drafted)| match seq.next {
                    Some(_) => self.feed(seq, drafted),
                    None => chunk,
                })
                .collect();
            let Runner::Cpu(decoder) = &mut self.runner else {
                unreachable!("generate_joining_cpu runs on the CPU decoder");
            };
            let mut inputs: Vec<SeqInput<'_>> = (active.iter_mut().zip(&feeds))
                .filter(|(_, feed)| !feed.is_empty())
                .map(|(seq, feed)| {
                    let unread = seq.unread().len();
                    SeqInput {
                        logits_from: match unread {
                            0 => 0,
                            // The prompt's last token gives the first token;
                            // an earlier chunk gives nothing.
                            n if n == feed.len() => n - 1,
                            _ => feed.len(),
                        },
                        cache: &mut seq.cache,
                        tokens: feed,
                    }
                })
                .collect();
            let logits = decoder.forward(&mut inputs);
            drop(inputs);
            let mut logits = match logits {
                Ok(l) => l.into_iter(),
                Err(e) => {
                    let msg = e.to_string();
                    for seq in active.drain(..) {
                        arrivals.done(seq.index, Err(BackendError::Runtime(msg.clone())));
                    }
                    continue;
                }
            };
            let mut still = Vec::with_capacity(active.len());
            for (mut seq, feed) in active.drain(..).zip(&feeds) {
                let stepped = if feed.is_empty() || !seq.unread().is_empty() {
                    // Still reading its prompt: the caller may have gone.
                    if !feed.is_empty() {
                        logits.next();
                    }
                    if arrivals.text(seq.index, "") == Flow::Stop {
                        seq.finish = Some(FinishReason::Cancelled);
                    }
                    Ok(())
                } else {
                    let l = logits.next().expect("logits for every sequence run");
                    if seq.next.is_some() {
                        self.verify(&mut seq, &l, feed, &mut |i, piece| arrivals.text(i, piece))
                    } else {
                        // The prompt is read: keep its start, take the first token.
                        self.keep_prefix(&seq);
                        self.advance(&mut seq, &l, &mut |i, piece| arrivals.text(i, piece))
                    }
                };
                match stepped {
                    Err(e) => arrivals.done(seq.index, Err(e)),
                    Ok(()) if seq.finish.is_some() => arrivals.done(seq.index, self.finish(&seq)),
                    Ok(()) => still.push(seq),
                }
            }
            active = still;
        }
    }

    fn generate_candle(
        &mut self,
        request: &GenerationRequest,
        on_token: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Generation, BackendError> {
        let prompt_ids = self.chat_ids(&request.messages)?;
        let params = &request.params;
        self.check_fits(prompt_ids.len(), params.max_new_tokens)?;
        let guard = self.guard_for(request);
        let Runner::Candle(weights, device) = &mut self.runner else {
            unreachable!("generate_candle runs on candle's models");
        };
        weights.clear();
        let mut sampler = Sampler::new(params);
        let mut generated: Vec<u32> = Vec::new();
        let mut text = IncrementalText::new();
        let mut finish = FinishReason::Length;
        let input = Tensor::new(prompt_ids.as_slice(), device)?.unsqueeze(0)?;
        let mut logits = weights.forward(&input, 0)?.squeeze(0)?;
        while generated.len() < params.max_new_tokens {
            let next = pick(
                &self.tokenizer,
                &mut sampler,
                guard.as_ref(),
                &logits,
                &generated,
            )?;
            if self.tokenizer.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            generated.push(next);
            if params.loop_guard {
                if let Some(keep) = loop_cut(&generated) {
                    generated.truncate(keep);
                    finish = FinishReason::Loop;
                    break;
                }
            }
            let decoded = self.tokenizer.decode(&generated)?;
            if let Some(piece) = text.push(&decoded) {
                if on_token(&piece) == Flow::Stop {
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            if generated.len() == params.max_new_tokens {
                break;
            }
            let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
            logits = weights
                .forward(&input, prompt_ids.len() + generated.len() - 1)?
                .squeeze(0)?;
        }
        weights.clear();
        let out = self.tokenizer.decode(&generated)?;
        Ok(Generation {
            text: out.trim().to_string(),
            prompt_tokens: prompt_ids.len(),
            generated_tokens: generated.len(),
            finish,
            cache: Cached::Off,
        })
    }
}

/// The next token: the sampler's pick, among those that keep the text in
/// the guard's script when there is a guard (a stop token always may). The
/// model's first choices are tried, then its choices among the tokens with
/// no foreign letter at all (a small model may rank hundreds of
/// wrong-script tokens first); when nothing passes, its own first choice
/// (the quality flags then show what the guard could not stop).
fn pick(
    tokenizer: &GgufTokenizer,
    sampler: &mut Sampler,
    guard: Option<&Guard>,
    logits: &Tensor,
    generated: &[u32],
) -> Result<u32, BackendError> {
    let Some(guard) = guard else {
        return sampler.next(logits, generated);
    };
    let before: Vec<u8> = generated
        .iter()
        .flat_map(|&t| tokenizer.token_bytes(t))
        .collect();
    let mut allowed = |token: u32| {
        tokenizer.stop_ids.contains(&token)
            || guard.rule.allows(&before, &tokenizer.token_bytes(token))
    };
    if let Some(token) = sampler.next_where(logits, generated, &mut allowed)? {
        return Ok(token);
    }
    let mut masked: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    for (value, foreign) in masked.iter_mut().zip(guard.foreign.iter()) {
        if *foreign {
            *value = f32::NEG_INFINITY;
        }
    }
    let masked = Tensor::from_slice(&masked, masked.len(), logits.device())?;
    match sampler.next_where(&masked, generated, &mut allowed)? {
        Some(token) => Ok(token),
        None => sampler.next(logits, generated),
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Backend for GgufModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn token_counter(&self) -> TokenCounter {
        let tok = Arc::clone(&self.tokenizer);
        Arc::new(move |text: &str| {
            tok.encode(text)
                .map(|ids| ids.len())
                .map_err(|e| BackendError::Prompt(e.to_string()))
        })
    }

    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError> {
        let prompt = self.render(messages)?;
        self.tokenizer
            .encode(&prompt)
            .map(|ids| ids.len())
            .map_err(|e| BackendError::Prompt(e.to_string()))
    }

    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>> {
        match self.runner {
            Runner::Cpu(_) => {
                let mut batch = WholeBatch::new(requests, on_token);
                self.generate_joining_cpu(&mut batch);
                batch.results()
            }
            Runner::Candle(..) => requests
                .iter()
                .enumerate()
                .map(|(i, req)| self.generate_candle(req, &mut |piece| on_token(i, piece)))
                .collect(),
        }
    }
    fn generate_joining(&mut self, arrivals: &mut dyn Arrivals) {
        match self.runner {
            Runner::Cpu(_) => self.generate_joining_cpu(arrivals),
            Runner::Candle(..) => batch_after_batch(self, arrivals),
        }
    }
}

/// The model's chat template (Jinja, from GGUF metadata), or ChatML when the file has none.
pub(crate) struct ChatTemplate {
    source: Option<String>,
}

impl ChatTemplate {
    /// Wraps the template text from `tokenizer.chat_template`.
    pub fn new(source: Option<String>) -> Self {
        Self { source }
    }

    /// Renders the conversation with a generation prompt for the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, BackendError> {
        let Some(source) = &self.source else {
            return Ok(chatml(messages));
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let tmpl = env
            .template_from_str(source)
            .map_err(|e| BackendError::Prompt(format!("chat template does not parse: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => "",
            eos_token => "",
        })
        .map_err(|e| BackendError::Prompt(format!("chat template failed: {e}")))
    }
}

/// The ChatML layout used by Qwen2.5 and SmolLM2.
pub(crate) fn chatml(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = match m.role {
            super::Role::System => "system",
            super::Role::User => "user",
            super::Role::Assistant => "assistant",
        };
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_layout() {
        let s = chatml(&[ChatMessage::system("S"), ChatMessage::user("U")]);
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_template_renders_like_chatml() {
        let t = ChatTemplate::new(Some(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
        ));
        let msgs = [ChatMessage::system("S"), ChatMessage::user("U")];
        assert_eq!(t.render(&msgs).unwrap(), chatml(&msgs));
    }

    #[test]
    fn broken_template_is_an_error_not_a_panic() {
        let t = ChatTemplate::new(Some("{% for x in %}".into()));
        assert!(matches!(
            t.render(&[ChatMessage::user("U")]),
            Err(BackendError::Prompt(_))
        ));
    }
}
