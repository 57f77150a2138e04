//! Marian (opus-mt) translation models: a post-norm transformer encoder and
//! decoder with sinusoidal positions, as transformers' `MarianMTModel` runs
//! them.
//!
//! Paper: Junczys-Dowmunt et al., "Marian: Fast Neural Machine Translation in
//! C++" (ACL 2018). Checkpoints: `Helsinki-NLP/opus-mt-*` on the Hugging Face
//! hub. Try one with
//! `precis translate --model DIR --to ru examples/sample-article.txt`.
//!
//! What candle-transformers' `marian` lacks and this adds:
//!
//! - padding masks: a batch of sentences of different lengths gives what each
//!   gives alone (the encoder and the cross-attention ignore padded keys);
//! - cross-attention keys and values computed once per input, not per step;
//! - per-request state: nothing is kept between calls to [`Marian::start`];
//! - rows of a running batch can be dropped or reordered (beam search).
//!
//! Computation follows `modeling_marian.py` (transformers 5.24): embeddings
//! scaled by `√d_model` when `scale_embedding`, plus positions; each layer
//! is attention, residual, layer norm, then the feed-forward block, residual,
//! layer norm; logits are the tied output embedding plus
//! `final_logits_bias`.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::{EncoderDecoder, Seq2SeqConfig};
use crate::backend::kernels::PackedF32;
use crate::backend::BackendError;

/// `config.json` of a Marian checkpoint (the fields the model reads).
#[derive(Debug, Clone, Deserialize)]
pub struct MarianConfig {
    /// Source (and shared) vocabulary size.
    pub vocab_size: usize,
    /// Target vocabulary size when embeddings are not shared.
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
    /// Hidden size.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward size.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward size.
    pub decoder_ffn_dim: usize,
    /// `swish`, `gelu`, `relu`, `gelu_new`, …
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Positions the model knows.
    pub max_position_embeddings: usize,
    /// Whether embeddings are multiplied by `√d_model`.
    #[serde(default)]
    pub scale_embedding: bool,
    /// Padding id (also the decoder start id of opus-mt).
    pub pad_token_id: u32,
    /// End of sequence.
    pub eos_token_id: u32,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    /// Whether encoder and decoder share one embedding table.
    #[serde(default = "yes")]
    pub share_encoder_decoder_embeddings: bool,
    /// Whether the output layer is the decoder's embedding table.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Forced end-of-sequence token at the last position.
    #[serde(default)]
    pub forced_eos_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu".into()
}

fn yes() -> bool {
    true
}

/// Layer norm epsilon of `nn.LayerNorm`.
const LN_EPS: f64 = 1e-5;

/// A linear layer `y = x Wᵀ + b` on [`PackedF32`], whose weights are packed
/// once at load (candle's matmul repacks them at every call, which costs
/// more than the product itself for a decoder step's few dozen rows).
struct Dense(PackedF32);

impl Dense {
    fn load(cols: usize, rows: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = vb
            .get((rows, cols), "weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = vb.get(rows, "bias")?.to_vec1::<f32>()?;
        Ok(Dense(PackedF32::new(&w, Some(&b), rows, cols)))
    }

    /// `[n, t, cols]` → `[n, t, rows]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        Tensor::from_vec(
            self.0.apply(&input, n * t),
            (n, t, self.0.rows()),
            x.device(),
        )
    }
}

struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, d: usize, heads: usize) -> candle_core::Result<Self> {
        Ok(Self {
            q: Dense::load(d, d, vb.pp("q_proj"))?,
            k: Dense::load(d, d, vb.pp("k_proj"))?,
            v: Dense::load(d, d, vb.pp("v_proj"))?,
            out: Dense::load(d, d, vb.pp("out_proj"))?,
            heads,
            head_dim: d / heads,
        })
    }

    /// `[n, t, d]` → `[n, heads, t, head_dim]`.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        x.reshape((n, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// Attention of `x`'s queries over `k`, `v` (`[n, heads, s, head_dim]`),
    /// with an additive `bias` broadcast to `[n, heads, t, s]`.
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let q = self.split(&self.q.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(v)?.transpose(1, 2)?.reshape((n, t, d))?;
        self.out.forward(&out)
    }
}

struct FeedForward {
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

impl FeedForward {
    fn load(vb: &VarBuilder, d: usize, ffn: usize, act: Activation) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Dense::load(d, ffn, vb.pp("fc1"))?,
            fc2: Dense::load(ffn, d, vb.pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

struct EncoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

struct DecoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    cross: Attention,
    cross_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

/// A loaded Marian model.
pub struct Marian {
    cfg: MarianConfig,
    enc_embed: Embedding,
    dec_embed: Embedding,
    positions: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// The output layer with `final_logits_bias`, packed once: candle's
    /// matmul would repack this largest matrix at every step.
    lm_head: PackedF32,
    vocab: usize,
    embed_scale: f64,
    device: Device,
}

/// The state of a batch being decoded: per layer, the self-attention keys
/// and values so far and the cross-attention ones, and each row's mask over
/// the source.
pub struct MarianState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    source_bias: Tensor,
    /// The input each row belongs to.
    row_input: Vec<usize>,
    len: usize,
}

/// The sinusoidal position table of `modeling_marian.py` (sines in the first
/// half, cosines in the second; computed in f64 as numpy does, then f32).
fn sinusoids(positions: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; positions * dim];
    let sentinel = dim.div_ceil(2);
    for pos in 0..positions {
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            if j % 2 == 0 {
                row[j / 2] = angle.sin() as f32;
            } else {
                row[sentinel + j / 2] = angle.cos() as f32;
            }
        }
    }
    out
}

fn activation(name: &str) -> Result<Activation, String> {
    Ok(match name {
        "swish" | "silu" => Activation::Silu,
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::NewGelu,
        "relu" => Activation::Relu,
        other => return Err(format!("activation `{other}` is not supported")),
    })
}

/// A candle error as text (for load errors that name the file).
fn e<T>(r: candle_core::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Marian {
    /// Loads `config.json` and the weights (`model.safetensors`, or
    /// `pytorch_model.bin`) of a checkpoint directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, BackendError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| load_err(&config_path, e))?;
        let cfg: MarianConfig =
            serde_json::from_str(&text).map_err(|e| load_err(&config_path, e))?;
        let safetensors = dir.join("model.safetensors");
        let pth = dir.join("pytorch_model.bin");
        let (vb, weights) = if safetensors.exists() {
            let bytes = std::fs::read(&safetensors).map_err(|e| load_err(&safetensors, e))?;
            (
                VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
                    .map_err(|e| load_err(&safetensors, e))?,
                safetensors,
            )
        } else if pth.exists() {
            (
                VarBuilder::from_pth(&pth, DType::F32, device).map_err(|e| load_err(&pth, e))?,
                pth,
            )
        } else {
            return Err(load_err(
                dir,
                "no weights: expected model.safetensors or pytorch_model.bin",
            ));
        };
        Self::from_var_builder(cfg, vb, device).map_err(|e| load_err(&weights, e))
    }

    fn from_var_builder(
        cfg: MarianConfig,
        vb: VarBuilder,
        device: &Device,
    ) -> Result<Self, String> {
        let d = cfg.d_model;
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(d > 0, "d_model is 0")?;
        check(
            cfg.encoder_attention_heads > 0 && d.is_multiple_of(cfg.encoder_attention_heads),
            "d_model is not a multiple of encoder_attention_heads",
        )?;
        check(
            cfg.decoder_attention_heads > 0 && d.is_multiple_of(cfg.decoder_attention_heads),
            "d_model is not a multiple of decoder_attention_heads",
        )?;
        let act = activation(&cfg.activation_function)?;
        // Checkpoints saved from `MarianMTModel` prefix the base model with
        // `model.`; those of `MarianModel` do not.
        let base = if vb.contains_tensor("model.shared.weight")
            || vb.contains_tensor("model.encoder.embed_tokens.weight")
        {
            vb.pp("model")
        } else {
            vb.clone()
        };
        let target_vocab = if cfg.share_encoder_decoder_embeddings {
            cfg.vocab_size
        } else {
            cfg.decoder_vocab_size.unwrap_or(cfg.vocab_size)
        };
        let table = |names: &[&str], rows: usize| -> Result<Tensor, String> {
            for name in names {
                if base.contains_tensor(name) {
                    return e(base.get((rows, d), name));
                }
            }
            Err(format!("no `{}` tensor", names.join("` or `")))
        };
        let (enc_table, dec_table) = if cfg.share_encoder_decoder_embeddings {
            let shared = table(
                &[
                    "shared.weight",
                    "encoder.embed_tokens.weight",
                    "decoder.embed_tokens.weight",
                ],
                cfg.vocab_size,
            )?;
            (shared.clone(), shared)
        } else {
            (
                table(&["encoder.embed_tokens.weight"], cfg.vocab_size)?,
                table(&["decoder.embed_tokens.weight"], target_vocab)?,
            )
        };
        let lm_head = if !cfg.tie_word_embeddings && vb.contains_tensor("lm_head.weight") {
            e(vb.get((target_vocab, d), "lm_head.weight"))?
        } else {
            dec_table.clone()
        };
        let final_logits_bias = if vb.contains_tensor("final_logits_bias") {
            e(vb.get((1, target_vocab), "final_logits_bias")
                .and_then(|t| t.squeeze(0)))?
        } else {
            e(Tensor::zeros(target_vocab, DType::F32, device))?
        };
        let positions = e(Tensor::from_vec(
            sinusoids(cfg.max_position_embeddings, d),
            (cfg.max_position_embeddings, d),
            device,
        ))?;
        let ln = |vb: VarBuilder| e(candle_nn::layer_norm(d, LN_EPS, vb));
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let vb = base.pp(format!("encoder.layers.{i}"));
            encoder.push(EncoderLayer {
                attn: e(Attention::load(
                    vb.pp("self_attn"),
                    d,
                    cfg.encoder_attention_heads,
                ))?,
                attn_norm: ln(vb.pp("self_attn_layer_norm"))?,
                ffn: e(FeedForward::load(&vb, d, cfg.encoder_ffn_dim, act))?,
                ffn_norm: ln(vb.pp("final_layer_norm"))?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let vb = base.pp(format!("decoder.layers.{i}"));
            decoder.push(DecoderLayer {
                attn: e(Attention::load(
                    vb.pp("self_attn"),
                    d,
                    cfg.decoder_attention_heads,
                ))?,
                attn_norm: ln(vb.pp("self_attn_layer_norm"))?,
                cross: e(Attention::load(
                    vb.pp("encoder_attn"),
                    d,
                    cfg.decoder_attention_heads,
                ))?,
                cross_norm: ln(vb.pp("encoder_attn_layer_norm"))?,
                ffn: e(FeedForward::load(&vb, d, cfg.decoder_ffn_dim, act))?,
                ffn_norm: ln(vb.pp("final_layer_norm"))?,
            });
        }
        let embed_scale = if cfg.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        let vocab = lm_head.dim(0).map_err(|e| e.to_string())?;
        let lm_head = PackedF32::new(
            &e(lm_head.flatten_all().and_then(|t| t.to_vec1::<f32>()))?,
            Some(&e(final_logits_bias.to_vec1::<f32>())?),
            vocab,
            d,
        );
        Ok(Self {
            vocab,
            enc_embed: Embedding::new(enc_table, d),
            dec_embed: Embedding::new(dec_table, d),
            positions,
            encoder,
            decoder,
            lm_head,
            embed_scale,
            device: device.clone(),
            cfg,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &MarianConfig {
        &self.cfg
    }

    /// Embeddings of `ids` (`[n, t]`) at positions `start..`, scaled.
    fn embed(&self, table: &Embedding, ids: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let t = ids.dim(1)?;
        let x = (table.forward(ids)? * self.embed_scale)?;
        x.broadcast_add(&self.positions.i(start..start + t)?)
    }

    /// The inputs padded into one `[n, s]` tensor, and the additive mask
    /// (`[n, 1, 1, s]`: 0 on tokens, -inf on padding).
    fn pad(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let s = inputs.iter().map(Vec::len).max().unwrap_or(0);
        if s == 0 || inputs.iter().any(Vec::is_empty) {
            return Err(BackendError::Runtime("an input has no tokens".into()));
        }
        if s > self.cfg.max_position_embeddings {
            return Err(BackendError::Runtime(format!(
                "an input of {s} tokens is longer than the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        let mut ids = Vec::with_capacity(inputs.len() * s);
        let mut bias = Vec::with_capacity(inputs.len() * s);
        for input in inputs {
            if let Some(&bad) = input.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(BackendError::Runtime(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
            ids.extend_from_slice(input);
            ids.extend(std::iter::repeat_n(self.cfg.pad_token_id, s - input.len()));
            bias.extend(std::iter::repeat_n(0f32, input.len()));
            bias.extend(std::iter::repeat_n(f32::NEG_INFINITY, s - input.len()));
        }
        let n = inputs.len();
        Ok((
            Tensor::from_vec(ids, (n, s), &self.device)?,
            Tensor::from_vec(bias, (n, 1, 1, s), &self.device)?,
        ))
    }

    /// The encoder's last hidden states (`[n, s, d]`, padded rows included)
    /// and the source mask.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let (ids, bias) = self.pad(inputs)?;
        let mut x = self.embed(&self.enc_embed, &ids, 0)?;
        for layer in &self.encoder {
            let (k, v) = layer.attn.keys_values(&x)?;
            let a = layer.attn.attend(&x, &k, &v, Some(&bias))?;
            x = layer.attn_norm.forward(&(x + a)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.ffn_norm.forward(&(x + f)?)?;
        }
        Ok((x, bias))
    }
}

impl EncoderDecoder for Marian {
    type State = MarianState;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        Seq2SeqConfig {
            vocab_size: self.vocab,
            pad_token_id: self.cfg.pad_token_id,
            eos_token_id: self.cfg.eos_token_id,
            decoder_start_token_id: self
                .cfg
                .decoder_start_token_id
                .unwrap_or(self.cfg.pad_token_id),
            max_positions: self.cfg.max_position_embeddings,
        }
    }

    fn start(
        &self,
        inputs: &[Vec<u32>],
        rows_per_input: usize,
    ) -> Result<MarianState, BackendError> {
        let (hidden, bias) = self.encode(inputs)?;
        let index: Vec<u32> = (0..inputs.len() as u32)
            .flat_map(|i| std::iter::repeat_n(i, rows_per_input))
            .collect();
        let index = Tensor::new(index.as_slice(), &self.device)?;
        let mut cross_kv = Vec::with_capacity(self.decoder.len());
        for layer in &self.decoder {
            let (k, v) = layer.cross.keys_values(&hidden)?;
            cross_kv.push((k.index_select(&index, 0)?, v.index_select(&index, 0)?));
        }
        Ok(MarianState {
            self_kv: vec![None; self.decoder.len()],
            cross_kv,
            source_bias: bias.index_select(&index, 0)?,
            row_input: (0..inputs.len())
                .flat_map(|i| std::iter::repeat_n(i, rows_per_input))
                .collect(),
            len: 0,
        })
    }

    fn step(&self, state: &mut MarianState, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        if state.len >= self.cfg.max_position_embeddings {
            return Err(BackendError::Runtime(format!(
                "the output reached the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (n, 1), &self.device)?;
        let mut x = self.embed(&self.dec_embed, &ids, state.len)?;
        for (i, layer) in self.decoder.iter().enumerate() {
            let (k, v) = layer.attn.keys_values(&x)?;
            let (k, v) = match state.self_kv[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            let a = layer.attn.attend(&x, &k, &v, None)?;
            state.self_kv[i] = Some((k, v));
            x = layer.attn_norm.forward(&(x + a)?)?;
            let (ck, cv) = &state.cross_kv[i];
            let c = layer.cross.attend(&x, ck, cv, Some(&state.source_bias))?;
            x = layer.cross_norm.forward(&(x + c)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.ffn_norm.forward(&(x + f)?)?;
        }
        state.len += 1;
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        Ok(self.lm_head.apply(&x, n))
    }

    fn select(&self, state: &mut MarianState, rows: &[usize]) -> Result<(), BackendError> {
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), &self.device)?;
        for kv in state.self_kv.iter_mut().flatten() {
            *kv = (kv.0.index_select(&index, 0)?, kv.1.index_select(&index, 0)?);
        }
        let row_input: Vec<usize> = rows.iter().map(|&r| state.row_input[r]).collect();
        // Beams reordered within their inputs share the inputs' cross-attention
        // keys and values: they only move when rows change inputs.
        if row_input != state.row_input {
            for kv in state.cross_kv.iter_mut() {
                *kv = (kv.0.index_select(&index, 0)?, kv.1.index_select(&index, 0)?);
            }
            state.source_bias = state.source_bias.index_select(&index, 0)?;
            state.row_input = row_input;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoids_put_sines_first_and_cosines_second() {
        let t = sinusoids(3, 4);
        // position 1: angles 1/10000^(0/4) = 1 and 1/10000^(2/4) = 0.01
        assert_eq!(&t[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert!((t[4] - 1f32.sin()).abs() < 1e-7);
        assert!((t[5] - 0.01f32.sin()).abs() < 1e-7);
        assert!((t[6] - 1f32.cos()).abs() < 1e-7);
        assert!((t[7] - 0.01f32.cos()).abs() < 1e-7);
    }

    #[test]
    fn unknown_activations_are_refused_by_name() {
        assert!(activation("swish").is_ok());
        assert!(activation("tanhshrink").unwrap_err().contains("tanhshrink"));
    }
}
