//! BART-family encoder-decoders: BART (`facebook/bart-large-cnn`,
//! `sshleifer/distilbart-cnn-12-6`) and Marian (`Helsinki-NLP/opus-mt-*`),
//! post-norm transformers as transformers' `BartForConditionalGeneration`
//! and `MarianMTModel` run them (Marian's modelling code is BART's with
//! other positions).
//!
//! Papers: Lewis et al., "BART: Denoising Sequence-to-Sequence
//! Pre-training" (ACL 2020); Junczys-Dowmunt et al., "Marian: Fast Neural
//! Machine Translation in C++" (ACL 2018). Try one with
//! `precis translate --model DIR --to ru examples/sample-article.txt` or
//! `precis summarize --model DIR examples/sample-article.txt`.
//!
//! What candle-transformers' `marian` lacks (it has no BART at all) and this
//! adds:
//!
//! - padding masks: a batch of inputs of different lengths gives what each
//!   gives alone (the encoder and the cross-attention ignore padded keys);
//! - cross-attention keys and values computed once per input, not per step;
//! - per-request state: nothing is kept between calls to [`Bart::start`];
//! - rows of a running batch can be dropped or reordered (beam search).
//!
//! Computation follows `modeling_bart.py` and `modeling_marian.py`
//! (transformers 5.24): token embeddings scaled by `√d_model` when
//! `scale_embedding`, plus positions (BART: a learned table read at
//! position + 2; Marian: sinusoids), then for BART a layer norm
//! (`layernorm_embedding`); each layer is attention, residual, layer norm,
//! then the feed-forward block, residual, layer norm; logits are the tied
//! output embedding (or `lm_head`) plus `final_logits_bias`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::layers::{
    activation, pad, read_config, repad, require, unpad, weights, Attention, AttentionSpec,
    Checkpoint, DecoderState, Dense, RowNorm, Scratch, Storage, Table, SHARED_TABLE,
};
use super::safetensors::{FileRows, SafetensorsFiles};
use super::{logits_for, EncoderDecoder, Seq2SeqConfig};
use crate::kernels::Epilogue;
use crate::{BackendError, Quantize};

/// `config.json` of a BART or Marian checkpoint (the fields the model
/// reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BartConfig {
    /// `bart` or `marian` (positions and the embedding layer norm differ).
    #[serde(default = "default_model_type")]
    pub model_type: String,
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
    /// Pre-norm layers (mBART); not supported, refused at load.
    #[serde(default)]
    pub normalize_before: bool,
    /// A layer norm after the last layer (mBART); not supported, refused.
    #[serde(default)]
    pub add_final_layer_norm: bool,
}

impl BartConfig {
    /// Whether this is a Marian checkpoint (sinusoidal positions, no
    /// embedding layer norm).
    pub(crate) fn is_marian(&self) -> bool {
        self.model_type == "marian"
    }

    /// Refuses a configuration this code cannot run.
    pub(super) fn check(&self) -> Result<(), BackendError> {
        let d = self.d_model;
        require(d > 0, "d_model is 0")?;
        require(
            self.encoder_attention_heads > 0 && d.is_multiple_of(self.encoder_attention_heads),
            "d_model is not a multiple of encoder_attention_heads",
        )?;
        require(
            self.decoder_attention_heads > 0 && d.is_multiple_of(self.decoder_attention_heads),
            "d_model is not a multiple of decoder_attention_heads",
        )?;
        require(
            self.model_type == "bart" || self.is_marian(),
            "model_type is neither `bart` nor `marian`",
        )?;
        require(
            !self.normalize_before && !self.add_final_layer_norm,
            "pre-norm layers (normalize_before / add_final_layer_norm, as mBART has) are not supported",
        )
    }

    /// What generation needs to know (the output layer has a row per
    /// target token).
    pub(super) fn seq2seq(&self) -> Seq2SeqConfig {
        Seq2SeqConfig {
            vocab_size: if self.share_encoder_decoder_embeddings {
                self.vocab_size
            } else {
                self.decoder_vocab_size.unwrap_or(self.vocab_size)
            },
            pad_token_id: self.pad_token_id,
            eos_token_id: self.eos_token_id,
            decoder_start_token_id: self.decoder_start_token_id.unwrap_or(self.pad_token_id),
            max_positions: self.max_position_embeddings,
        }
    }

    /// The encoder's and the decoder's token tables (the same one when
    /// shared) under the base model `base`.
    pub(super) fn tables(&self, base: &VarBuilder) -> Result<(Table, Table), BackendError> {
        let d = self.d_model;
        Ok(if self.share_encoder_decoder_embeddings {
            let shared = Table::first(base, &SHARED_TABLE, self.vocab_size, d)?;
            (shared.clone(), shared)
        } else {
            (
                Table::first(base, &["encoder.embed_tokens.weight"], self.vocab_size, d)?,
                Table::first(
                    base,
                    &["decoder.embed_tokens.weight"],
                    self.seq2seq().vocab_size,
                    d,
                )?,
            )
        })
    }
}

/// The base model's weights: under `model.` in checkpoints saved from
/// `…ForConditionalGeneration`, at the top in those of `BartModel` /
/// `MarianModel` / `M2M100Model`.
pub(super) fn base_model<'a>(vb: &VarBuilder<'a>) -> VarBuilder<'a> {
    if vb.contains_tensor("model.shared.weight")
        || vb.contains_tensor("model.encoder.embed_tokens.weight")
    {
        vb.pp("model")
    } else {
        vb.clone()
    }
}

fn default_model_type() -> String {
    "bart".into()
}

fn default_activation() -> String {
    "gelu".into()
}

fn yes() -> bool {
    true
}

/// Layer norm epsilon of `nn.LayerNorm`.
pub(super) const LN_EPS: f64 = 1e-5;

/// The feed-forward block: `fc2(act(fc1(x)))`.
pub(super) struct FeedForward {
    pub(super) fc1: Dense,
    pub(super) fc2: Dense,
    pub(super) act: Epilogue,
}

impl FeedForward {
    pub(super) fn load(
        vb: &VarBuilder,
        d: usize,
        ffn: usize,
        act: Epilogue,
        storage: Storage,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Dense::load(d, ffn, vb.pp("fc1"), true, storage)?,
            fc2: Dense::load(ffn, d, vb.pp("fc2"), true, storage)?,
            act,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_then(x, self.act)?)
    }

    /// The block over `rows` rows of `x` (flat), into `s.ffn`.
    pub(super) fn apply_rows(&self, x: &[f32], rows: usize, s: &mut Scratch) {
        self.fc1.write_into(x, rows, self.act, &mut s.hidden);
        self.fc2
            .write_into(&s.hidden, rows, Epilogue::None, &mut s.ffn);
    }
}

/// An encoder layer, run on flat buffers (rows in parallel).
struct EncoderLayer {
    attn: Attention,
    attn_norm: RowNorm,
    ffn: FeedForward,
    ffn_norm: RowNorm,
}

struct DecoderLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    cross: Attention,
    cross_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

/// The input side of the encoder or the decoder.
struct Embeddings {
    tokens: TokenRows,
    /// Row `p` is position `p` (BART's offset of 2 already skipped).
    positions: Tensor,
    /// BART's `layernorm_embedding`.
    norm: Option<LayerNorm>,
}

/// Where one side's token embeddings are read.
#[derive(Clone)]
enum TokenRows {
    /// Its own f32 table.
    Table(Embedding),
    /// With int8 weights, a table tied to the output layer is not kept a
    /// second time in f32: its rows are read as stored from the
    /// safetensors file. An embedding's error would reach every layer's
    /// residual stream: measured on the trained parity checkpoints, int8
    /// rows here double the int8 model's divergence from f32 (tiny-cnn).
    File(Arc<FileRows>),
    /// A checkpoint that is not safetensors: the output layer's int8 rows
    /// (as CTranslate2 reads its tied tables).
    Head,
}

/// A loaded BART or Marian model.
pub struct Bart {
    cfg: BartConfig,
    enc_embed: Embeddings,
    dec_embed: Embeddings,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// The output layer with `final_logits_bias`, packed once: candle's
    /// matmul would repack this largest matrix at every step.
    lm_head: Dense,
    embed_scale: f64,
    device: Device,
}

/// The decoder state of a running batch.
pub type BartState = DecoderState;

/// The sinusoidal position table of `modeling_marian.py` (sines in the first
/// half, cosines in the second; computed in f64 as numpy does, then f32).
pub(super) fn marian_sinusoids(positions: usize, dim: usize) -> Vec<f32> {
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

impl Bart {
    /// Loads `config.json` and the weights (`model.safetensors`, or
    /// `pytorch_model.bin`) of a checkpoint directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, BackendError> {
        Self::load_quantized(dir, device, Quantize::None)
    }

    /// [`Bart::load`], the linear layers kept as `quantize` says.
    pub fn load_quantized(
        dir: &Path,
        device: &Device,
        quantize: Quantize,
    ) -> Result<Self, BackendError> {
        let cfg: BartConfig = read_config(dir)?;
        let Checkpoint {
            vb,
            file,
            safetensors,
            ..
        } = weights(dir, None, device)?;
        Self::from_var_builder(cfg, vb, Storage::of(quantize), safetensors.as_ref(), device)
            .map_err(|e| BackendError::load(&file, e))
    }

    fn from_var_builder(
        cfg: BartConfig,
        vb: VarBuilder,
        storage: Storage,
        safetensors: Option<&SafetensorsFiles>,
        device: &Device,
    ) -> Result<Self, BackendError> {
        cfg.check()?;
        let d = cfg.d_model;
        let act = activation(&cfg.activation_function)?;
        let base = base_model(&vb);
        let target_vocab = cfg.seq2seq().vocab_size;
        let (enc_table, dec_table) = cfg.tables(&base)?;
        let tied = cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight");
        let final_logits_bias = if vb.contains_tensor("final_logits_bias") {
            vb.get((1, target_vocab), "final_logits_bias")
                .and_then(|t| t.squeeze(0))?
        } else {
            Tensor::zeros(target_vocab, DType::F32, device)?
        };
        // The output layer first: with int8 weights the f32 tables it
        // replaces are dropped before the layers are read, so the load's
        // peak holds one table, not a table and every layer.
        let lm_head = Dense::new(
            &if tied {
                dec_table.values.clone()
            } else {
                vb.get((target_vocab, d), "lm_head.weight")?
            },
            Some(&final_logits_bias.to_vec1::<f32>()?),
            storage,
        )?;
        let head_rows = tied && matches!(lm_head, Dense::Int8(_));
        let tokens = |table: Table, tied: bool| -> Result<TokenRows, BackendError> {
            Ok(if head_rows && tied {
                match table.file_rows(safetensors)? {
                    Some(rows) => TokenRows::File(Arc::new(rows)),
                    None => TokenRows::Head,
                }
            } else {
                TokenRows::Table(Embedding::new(table.values, d))
            })
        };
        let dec_tokens = tokens(dec_table, true)?;
        let enc_tokens = if cfg.share_encoder_decoder_embeddings {
            dec_tokens.clone()
        } else {
            tokens(enc_table, false)?
        };
        let ln = |vb: VarBuilder| candle_nn::layer_norm(d, LN_EPS, vb);
        let max_pos = cfg.max_position_embeddings;
        let (enc_positions, dec_positions) = if cfg.is_marian() {
            let table = Tensor::from_vec(marian_sinusoids(max_pos, d), (max_pos, d), device)?;
            (table.clone(), table)
        } else {
            // `BartLearnedPositionalEmbedding`: position p reads row p + 2.
            let learned = |side: &str| {
                base.get((max_pos + 2, d), &format!("{side}.embed_positions.weight"))
                    .and_then(|t| t.i(2..))
            };
            (learned("encoder")?, learned("decoder")?)
        };
        let (enc_norm, dec_norm) = if cfg.is_marian() {
            (None, None)
        } else {
            (
                Some(ln(base.pp("encoder.layernorm_embedding"))?),
                Some(ln(base.pp("decoder.layernorm_embedding"))?),
            )
        };
        let spec = |heads: usize| AttentionSpec {
            d_model: d,
            heads,
            head_dim: d / heads,
            names: ["q_proj", "k_proj", "v_proj", "out_proj"],
            bias: true,
            scale: ((d / heads) as f64).powf(-0.5),
            storage,
        };
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let vb = base.pp(format!("encoder.layers.{i}"));
            encoder.push(EncoderLayer {
                attn: Attention::load(vb.pp("self_attn"), &spec(cfg.encoder_attention_heads))?,
                attn_norm: RowNorm::load(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
                ffn: FeedForward::load(&vb, d, cfg.encoder_ffn_dim, act, storage)?,
                ffn_norm: RowNorm::load(d, LN_EPS, vb.pp("final_layer_norm"))?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let vb = base.pp(format!("decoder.layers.{i}"));
            decoder.push(DecoderLayer {
                attn: Attention::load(vb.pp("self_attn"), &spec(cfg.decoder_attention_heads))?,
                attn_norm: ln(vb.pp("self_attn_layer_norm"))?,
                cross: Attention::load(vb.pp("encoder_attn"), &spec(cfg.decoder_attention_heads))?,
                cross_norm: ln(vb.pp("encoder_attn_layer_norm"))?,
                ffn: FeedForward::load(&vb, d, cfg.decoder_ffn_dim, act, storage)?,
                ffn_norm: ln(vb.pp("final_layer_norm"))?,
            });
        }
        let embed_scale = if cfg.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        Ok(Self {
            enc_embed: Embeddings {
                tokens: enc_tokens,
                positions: enc_positions,
                norm: enc_norm,
            },
            dec_embed: Embeddings {
                tokens: dec_tokens,
                positions: dec_positions,
                norm: dec_norm,
            },
            encoder,
            decoder,
            lm_head,
            embed_scale,
            device: device.clone(),
            cfg,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BartConfig {
        &self.cfg
    }

    /// Embeddings of `ids` (`[n, t]`) at positions `start..`: scaled
    /// tokens plus positions, then the embedding layer norm (BART).
    fn embed(&self, side: &Embeddings, ids: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let d = self.cfg.d_model;
        let tokens = match &side.tokens {
            TokenRows::Table(table) => table.forward(ids)?,
            rows => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut x = vec![0f32; ids.len() * d];
                if let TokenRows::File(rows) = rows {
                    rows.gather(&ids, &mut x)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                } else {
                    let vocab = self.lm_head.rows();
                    for (row, &id) in x.chunks_exact_mut(d).zip(&ids) {
                        if id as usize >= vocab {
                            candle_core::bail!(
                                "token id {id} is outside the vocabulary of {vocab}"
                            );
                        }
                        self.lm_head.row(id as usize, row);
                    }
                }
                Tensor::from_vec(x, (n, t, d), &self.device)?
            }
        };
        let x = (tokens * self.embed_scale)?;
        let x = x.broadcast_add(&side.positions.i(start..start + t)?)?;
        match &side.norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// The encoder's last hidden states (`[n, s, d]`; padded rows are
    /// zeros) and the source mask.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let (rows, bias) = self.encode_rows(inputs)?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        Ok((repad(&rows, &lens, self.cfg.d_model, &self.device)?, bias))
    }

    /// The encoder's last hidden states of the inputs' tokens, input after
    /// input (`Σ lens` rows of `d`: padding is never computed), and the
    /// source mask.
    fn encode_rows(&self, inputs: &[Vec<u32>]) -> Result<(Vec<f32>, Tensor), BackendError> {
        let (ids, bias) = pad(
            inputs,
            self.cfg.pad_token_id,
            self.cfg.vocab_size,
            Some(self.cfg.max_position_embeddings),
            &self.device,
        )?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let mut x = unpad(&self.embed(&self.enc_embed, &ids, 0)?, &lens)?;
        let rows = x.len() / self.cfg.d_model;
        let mut s = Scratch::default();
        for layer in &self.encoder {
            layer.attn.attend_within(&x, &lens, &mut s);
            layer.attn_norm.add_norm(&mut x, &s.attn);
            layer.ffn.apply_rows(&x, rows, &mut s);
            layer.ffn_norm.add_norm(&mut x, &s.ffn);
        }
        Ok((x, bias))
    }
}

impl EncoderDecoder for Bart {
    type State = BartState;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.cfg.seq2seq()
    }

    fn start(&self, inputs: &[Vec<u32>], rows_per_input: usize) -> Result<BartState, BackendError> {
        let (hidden, _) = self.encode_rows(inputs)?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        Ok(DecoderState::new(
            self.decoder.iter().map(|l| &l.cross),
            &hidden,
            &lens,
            rows_per_input,
        ))
    }

    fn step(
        &self,
        state: &mut BartState,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        if state.len() >= self.cfg.max_position_embeddings {
            return Err(BackendError::Runtime(format!(
                "the output reached the model's {} positions",
                self.cfg.max_position_embeddings
            )));
        }
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (n, 1), &self.device)?;
        let mut x = self.embed(&self.dec_embed, &ids, state.len())?;
        let d = self.cfg.d_model;
        for (i, layer) in self.decoder.iter().enumerate() {
            let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let (k, v) = layer.attn.project_kv(&flat, n);
            state.push_self(i, &layer.attn, &k, &v);
            let a = state.self_attend(i, &layer.attn, &flat);
            let a = Tensor::from_vec(a, (n, 1, d), &self.device)?;
            x = layer.attn_norm.forward(&(x + a)?)?;
            let c = state.cross_attend(i, &layer.cross, &x)?;
            x = layer.cross_norm.forward(&(x + c)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.ffn_norm.forward(&(x + f)?)?;
        }
        state.advance();
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let out = logits_for(logits, n, self.lm_head.rows());
        self.lm_head.write_rows(&x, n, Epilogue::None, out);
        Ok(())
    }

    fn select(&self, state: &mut BartState, rows: &[usize]) -> Result<(), BackendError> {
        state.select(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoids_put_sines_first_and_cosines_second() {
        let t = marian_sinusoids(3, 4);
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
        assert!(activation("tanhshrink")
            .unwrap_err()
            .to_string()
            .contains("tanhshrink"));
    }
}
