//! T5 and Flan-T5 encoder-decoders (`google/flan-t5-base`, `t5-small`, …)
//! as transformers' `T5ForConditionalGeneration` (5.24) runs them.
//!
//! Paper: Raffel et al., "Exploring the Limits of Transfer Learning with a
//! Unified Text-to-Text Transformer" (JMLR 2020); Flan-T5: Chung et al.,
//! "Scaling Instruction-Finetuned Language Models" (2022). Try one with
//! `precis summarize --model DIR examples/sample-article.txt`.
//!
//! What candle-transformers' `t5` lacks and this adds: padding masks, so a
//! batch of inputs of different lengths gives what each gives alone;
//! cross-attention keys and values computed once per input; per-request
//! state; rows of a running batch dropped or reordered for beam search.
//!
//! Computation follows `modeling_t5.py`: no positions in the embeddings;
//! each block is pre-norm (RMS norm without mean or bias, then the sublayer,
//! then the residual); attention scores are not scaled and get a learned
//! bias per relative-position bucket (computed by the first layer of each
//! stack, shared by the others; bidirectional in the encoder, causal in the
//! decoder), exactly as `_relative_position_bucket` buckets them, in f32;
//! the feed-forward block is `relu`, or gated (`gated-gelu`: tanh GELU);
//! the decoder's output is scaled by `d_model^-0.5` unless `config.json`
//! sets `tie_word_embeddings` to false, then multiplied by `lm_head` (the
//! shared embedding when the checkpoint has no `lm_head.weight`).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, RmsNorm, VarBuilder};
use serde::Deserialize;

use super::layers::{
    activation, matrix_ref, pad, read_config, unpad, weights, Attention, AttentionSpec, Checkpoint,
    DecoderState, Dense, Storage,
};
use super::{logits_for, EncoderDecoder, Seq2SeqConfig};
use crate::kernels::Epilogue;
use crate::weights::{GgufFile, TensorRef};
use crate::{BackendError, Quantize};

/// `config.json` of a T5 checkpoint (the fields the model reads).
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Size of each attention head.
    pub d_kv: usize,
    /// Feed-forward size.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (default: `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu`, `gated-silu`, …
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// Whether the decoder output is scaled by `d_model^-0.5` (anything but
    /// an explicit `false` scales, as transformers 5.24 reads it).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Padding id (also the decoder start).
    #[serde(default)]
    pub pad_token_id: u32,
    /// End of sequence.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// First decoder input (default: the padding id).
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    /// `model_type`; only `t5` is run (mT5 and UMT5 differ).
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn default_eos() -> u32 {
    1
}
fn default_model_type() -> String {
    "t5".into()
}

/// T5's feed-forward block: `wo(act(wi(x)))`, or gated
/// `wo(act(wi_0(x)) · wi_1(x))`.
struct FeedForward {
    wi: Dense,
    gate: Option<Dense>,
    wo: Dense,
    act: Epilogue,
}

impl FeedForward {
    fn load(
        vb: VarBuilder,
        cfg: &T5Config,
        (gated, act): (bool, Epilogue),
        storage: Storage,
    ) -> candle_core::Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let vb = vb.pp("DenseReluDense");
        let (wi, gate) = if gated {
            (
                Dense::load(d, ff, vb.pp("wi_0"), false, storage)?,
                Some(Dense::load(d, ff, vb.pp("wi_1"), false, storage)?),
            )
        } else {
            (Dense::load(d, ff, vb.pp("wi"), false, storage)?, None)
        };
        Ok(Self {
            wi,
            gate,
            wo: Dense::load(ff, d, vb.pp("wo"), false, storage)?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.wi.forward_then(x, self.act)?;
        if let Some(gate) = &self.gate {
            h = (h * gate.forward(x)?)?;
        }
        self.wo.forward(&h)
    }
}

struct EncoderBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: FeedForward,
}

struct DecoderBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    cross_norm: RmsNorm,
    cross: Attention,
    ffn_norm: RmsNorm,
    ffn: FeedForward,
}

impl T5Config {
    /// Refuses a configuration this code cannot run.
    pub(super) fn check(&self) -> Result<(), BackendError> {
        if self.model_type != "t5" {
            return Err(BackendError::Config(format!(
                "model_type `{}` is not run by the T5 backend (only `t5`)",
                self.model_type
            )));
        }
        if self.d_model == 0 || self.num_heads == 0 || self.d_kv == 0 {
            return Err(BackendError::Config(
                "d_model, num_heads and d_kv must be positive".into(),
            ));
        }
        feed_forward_kind(self).map(|_| ())
    }

    /// What generation needs to know.
    pub(super) fn seq2seq(&self) -> Seq2SeqConfig {
        Seq2SeqConfig {
            vocab_size: self.vocab_size,
            pad_token_id: self.pad_token_id,
            eos_token_id: self.eos_token_id,
            decoder_start_token_id: self.decoder_start_token_id.unwrap_or(self.pad_token_id),
            // Relative positions: no table to run past.
            max_positions: usize::MAX / 2,
        }
    }
}

/// Whether the feed-forward block is gated, and its activation:
/// `T5Config.__post_init__` reads `gated-ACT` or `ACT`, and `gated-gelu`
/// runs `gelu_new`.
pub(super) fn feed_forward_kind(cfg: &T5Config) -> Result<(bool, Epilogue), BackendError> {
    let parts: Vec<&str> = cfg.feed_forward_proj.split('-').collect();
    let (gated, act) = match parts.as_slice() {
        ["gated", "gelu"] => (true, "gelu_new"),
        ["gated", act] => (true, *act),
        [act] => (false, *act),
        _ => {
            return Err(BackendError::Config(format!(
                "feed_forward_proj `{}` is not `gated-ACT` or `ACT`",
                cfg.feed_forward_proj
            )))
        }
    };
    Ok((gated, activation(act)?))
}

/// The learned bias of each relative-position bucket, per head.
pub(super) struct PositionBias {
    /// `buckets × heads`.
    table: Vec<f32>,
    heads: usize,
    buckets: usize,
    max_distance: usize,
    bidirectional: bool,
}

impl PositionBias {
    pub(super) fn load(
        vb: VarBuilder,
        cfg: &T5Config,
        bidirectional: bool,
    ) -> candle_core::Result<Self> {
        let buckets = cfg.relative_attention_num_buckets;
        let table = vb
            .get((buckets, cfg.num_heads), "relative_attention_bias.weight")?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            table,
            heads: cfg.num_heads,
            buckets,
            max_distance: cfg.relative_attention_max_distance,
            bidirectional,
        })
    }

    /// `[1, heads, queries.len(), keys]`: the bias of each query position
    /// against key positions `0..keys`.
    pub(super) fn bias(
        &self,
        queries: std::ops::Range<usize>,
        keys: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = queries.len();
        let mut out = vec![0f32; self.heads * t * keys];
        for (qi, q) in queries.enumerate() {
            for k in 0..keys {
                let bucket = relative_position_bucket(
                    k as i64 - q as i64,
                    self.bidirectional,
                    self.buckets,
                    self.max_distance,
                );
                for h in 0..self.heads {
                    out[(h * t + qi) * keys + k] = self.table[bucket * self.heads + h];
                }
            }
        }
        Tensor::from_vec(out, (1, self.heads, t, keys), device)
    }
}

/// `_relative_position_bucket` of `modeling_t5.py`, with its f32 arithmetic
/// for distances past the exact range: `relative` is key position minus
/// query position.
fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut base = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            base += buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (base + distance) as usize;
    }
    // torch: log(float32(d) / max_exact) / math.log(max_distance / max_exact)
    // * (buckets - max_exact), each step in f32 (the Python scalars are
    // rounded to f32), then truncated.
    let ratio = distance as f32 / max_exact as f32;
    let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + ((ratio.ln() / scale) * (buckets - max_exact) as f32) as i64;
    (base + large.min(buckets - 1)) as usize
}

/// The shared token embedding: f32, or a GGUF file's table in its stored
/// type, whose rows are dequantized as they are looked up (MADLAD-400 3B's
/// 256k × 1024 table would take 1 GiB in f32).
enum TokenTable {
    Dense(Embedding),
    Mapped {
        file: Arc<GgufFile>,
        table: TensorRef,
    },
}

impl TokenTable {
    /// `[n, t]` ids → `[n, t, d_model]`.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            TokenTable::Dense(e) => e.forward(ids),
            TokenTable::Mapped { file, table } => {
                let (n, t) = ids.dims2()?;
                let device = ids.device().clone();
                let matrix = file.matrix(table);
                let d = table.cols;
                let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                let mut out = vec![0f32; ids.len() * d];
                for (row, &id) in out.chunks_mut(d).zip(&ids) {
                    // `pad` checked every id against the vocabulary.
                    matrix.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (n, t, d), &device)
            }
        }
    }
}

/// A loaded T5 model.
pub struct T5 {
    cfg: T5Config,
    embed: TokenTable,
    encoder: Vec<EncoderBlock>,
    encoder_bias: PositionBias,
    encoder_norm: RmsNorm,
    decoder: Vec<DecoderBlock>,
    decoder_bias: PositionBias,
    decoder_norm: RmsNorm,
    lm_head: Dense,
    scale_output: bool,
    device: Device,
}

/// The decoder state of a running batch.
pub(crate) type T5State = DecoderState;

impl T5 {
    /// Loads `config.json` and the weights (`model.safetensors`, its
    /// shards, `pytorch_model.bin`, or one `.gguf` file) of a checkpoint
    /// directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, BackendError> {
        Self::load_weights(dir, None, device, Quantize::None)
    }

    /// [`T5::load`], with the weights from the GGUF file `gguf` when given
    /// (a quantized checkpoint, as candle's `tensor-tools quantize` writes
    /// one: the checkpoint's tensor names; `config.json` in `dir`). Its
    /// matrices are multiplied in their stored type (Q4_K, Q6_K, Q8_0, …);
    /// those of other weights are kept as `quantize` says.
    pub fn load_weights(
        dir: &Path,
        gguf: Option<&Path>,
        device: &Device,
        quantize: Quantize,
    ) -> Result<Self, BackendError> {
        let cfg: T5Config = read_config(dir)?;
        let checkpoint = weights(dir, gguf, device)?;
        let file = checkpoint.file.clone();
        Self::from_checkpoint(cfg, checkpoint, quantize, device).map_err(|e| match e {
            BackendError::Candle(e) => BackendError::load(&file, e),
            other => other,
        })
    }

    fn from_checkpoint(
        cfg: T5Config,
        checkpoint: Checkpoint,
        quantize: Quantize,
        device: &Device,
    ) -> Result<Self, BackendError> {
        let storage = checkpoint.storage(quantize);
        let (vb, mapped) = (&checkpoint.vb, checkpoint.mapped.as_ref());
        cfg.check()?;
        let ffn = feed_forward_kind(&cfg)?;
        let d = cfg.d_model;
        let norm = |vb: VarBuilder| candle_nn::rms_norm(d, cfg.layer_norm_epsilon, vb);
        let spec = AttentionSpec {
            d_model: d,
            heads: cfg.num_heads,
            head_dim: cfg.d_kv,
            names: ["q", "k", "v", "o"],
            bias: false,
            scale: 1.0,
            storage,
        };
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let vb = vb.pp(format!("encoder.block.{i}.layer"));
            encoder.push(EncoderBlock {
                attn_norm: norm(vb.pp("0.layer_norm"))?,
                attn: Attention::load(vb.pp("0.SelfAttention"), &spec)?,
                ffn_norm: norm(vb.pp("1.layer_norm"))?,
                ffn: FeedForward::load(vb.pp("1"), &cfg, ffn, storage)?,
            });
        }
        let layers = cfg.num_decoder_layers.unwrap_or(cfg.num_layers);
        let mut decoder = Vec::with_capacity(layers);
        for i in 0..layers {
            let vb = vb.pp(format!("decoder.block.{i}.layer"));
            decoder.push(DecoderBlock {
                attn_norm: norm(vb.pp("0.layer_norm"))?,
                attn: Attention::load(vb.pp("0.SelfAttention"), &spec)?,
                cross_norm: norm(vb.pp("1.layer_norm"))?,
                cross: Attention::load(vb.pp("1.EncDecAttention"), &spec)?,
                ffn_norm: norm(vb.pp("2.layer_norm"))?,
                ffn: FeedForward::load(vb.pp("2"), &cfg, ffn, storage)?,
            });
        }
        let encoder_bias =
            PositionBias::load(vb.pp("encoder.block.0.layer.0.SelfAttention"), &cfg, true)?;
        let decoder_bias =
            PositionBias::load(vb.pp("decoder.block.0.layer.0.SelfAttention"), &cfg, false)?;
        let head = if vb.contains_tensor("lm_head.weight") {
            "lm_head.weight"
        } else {
            "shared.weight"
        };
        let (embed, lm_head) = match mapped {
            Some(file) => {
                let lm_head = Dense::mapped(file, head, cfg.vocab_size, d, None)?;
                let table = matrix_ref(file, "shared.weight", cfg.vocab_size, d)?;
                let file = Arc::clone(file);
                (TokenTable::Mapped { file, table }, lm_head)
            }
            None => {
                let shared = vb.get((cfg.vocab_size, d), "shared.weight")?;
                let lm_head = Dense::load(
                    d,
                    cfg.vocab_size,
                    vb.pp(head.trim_end_matches(".weight")),
                    false,
                    storage,
                )?;
                (TokenTable::Dense(Embedding::new(shared, d)), lm_head)
            }
        };
        Ok(Self {
            embed,
            encoder,
            encoder_bias,
            encoder_norm: norm(vb.pp("encoder.final_layer_norm"))?,
            decoder,
            decoder_bias,
            decoder_norm: norm(vb.pp("decoder.final_layer_norm"))?,
            lm_head,
            scale_output: cfg.tie_word_embeddings != Some(false),
            device: device.clone(),
            cfg,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The encoder's last hidden states (`[n, s, d]`, padded rows included)
    /// and the source mask.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let (ids, mask) = pad(
            inputs,
            self.cfg.pad_token_id,
            self.cfg.vocab_size,
            None,
            &self.device,
        )?;
        let s = ids.dim(1)?;
        let bias = self
            .encoder_bias
            .bias(0..s, s, &self.device)?
            .broadcast_add(&mask)?;
        let mut x = self.embed.forward(&ids)?;
        for block in &self.encoder {
            let h = block.attn_norm.forward(&x)?;
            let (k, v) = block.attn.keys_values(&h)?;
            x = (x + block.attn.attend(&h, &k, &v, Some(&bias))?)?;
            let h = block.ffn_norm.forward(&x)?;
            x = (x + block.ffn.forward(&h)?)?;
        }
        Ok((self.encoder_norm.forward(&x)?, mask))
    }
}

impl EncoderDecoder for T5 {
    type State = T5State;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.cfg.seq2seq()
    }

    fn start(&self, inputs: &[Vec<u32>], rows_per_input: usize) -> Result<T5State, BackendError> {
        let (hidden, _) = self.encode(inputs)?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        Ok(DecoderState::new(
            self.decoder.iter().map(|b| &b.cross),
            &unpad(&hidden, &lens)?,
            &lens,
            rows_per_input,
        ))
    }

    fn step(
        &self,
        state: &mut T5State,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (n, 1), &self.device)?;
        let pos = state.len();
        let self_bias = self
            .decoder_bias
            .bias(pos..pos + 1, pos + 1, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        for (i, block) in self.decoder.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let flat: Vec<f32> = h.flatten_all()?.to_vec1()?;
            let (k, v) = block.attn.project_kv(&flat, flat.len() / self.cfg.d_model);
            state.push_self(i, &block.attn, &k, &v);
            let (k, v) = state.self_tensors(i, &self.device)?;
            x = (x + block.attn.attend(&h, &k, &v, Some(&self_bias))?)?;
            let h = block.cross_norm.forward(&x)?;
            x = (x + state.cross_attend(i, &block.cross, &h)?)?;
            let h = block.ffn_norm.forward(&x)?;
            x = (x + block.ffn.forward(&h)?)?;
        }
        state.advance();
        let mut x = self.decoder_norm.forward(&x)?;
        if self.scale_output {
            x = (x * (self.cfg.d_model as f64).powf(-0.5))?;
        }
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let out = logits_for(logits, n, self.lm_head.rows());
        self.lm_head.write_rows(&x, n, Epilogue::None, out);
        Ok(())
    }

    fn select(&self, state: &mut T5State, rows: &[usize]) -> Result<(), BackendError> {
        state.select(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // torch: T5Attention._relative_position_bucket at a few points
        // (checked once against all of -1000..=1000 for six bucket
        // settings).
        let bi = |r| relative_position_bucket(r, true, 32, 128);
        assert_eq!(
            [-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 127, 128, 200].map(bi),
            [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31, 31]
        );
        let uni = |r| relative_position_bucket(r, false, 32, 128);
        assert_eq!(
            [-200, -128, -40, -16, -15, -1, 0, 5].map(uni),
            [31, 31, 23, 16, 15, 1, 0, 0]
        );
    }
}
