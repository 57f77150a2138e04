//! Many-to-many translators: NLLB-200 (`facebook/nllb-200-distilled-600M`,
//! `…-1.3B`) and M2M100 (`facebook/m2m100_418M`, `…_1.2B`), both the
//! `M2M100ForConditionalGeneration` architecture, as transformers 5.24's
//! `modeling_m2m_100.py` runs it. One checkpoint writes every language of
//! its vocabulary: the source language is a token before the text (the
//! tokenizer's business, see `tokenizer::m2m`), the target language is
//! forced as the first generated token (`forced_bos_token_id`).
//!
//! Papers: Fan et al., "Beyond English-Centric Multilingual Machine
//! Translation" (JMLR 2021); NLLB Team, "No Language Left Behind" (2022).
//! Try one with `precis translate --model DIR --to hi article.txt`.
//!
//! How it differs from BART (`bart.rs`), whose layers, attention kernels
//! and decoder state it shares:
//!
//! - positions are fixed sinusoids (fairseq's: `log(10⁴) / (half − 1)`
//!   frequencies, sines then cosines, computed in f32 as torch does), read
//!   at `padding_idx + 1 + i` for the i-th token that is not padding (a
//!   padding id reads the zero row, and is not counted);
//! - every layer is pre-norm (layer norm, sublayer, residual), and each
//!   stack ends with a layer norm; there is no embedding layer norm;
//! - the output layer is the shared embedding, with no bias.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use super::bart::{base_model, FeedForward, LN_EPS};
use super::layers::{
    activation, read_config, repad, require, weights, Attention, AttentionSpec, Checkpoint,
    DecoderState, Dense, RowNorm, Scratch, Storage, Table, SHARED_TABLE,
};
use super::safetensors::{FileRows, SafetensorsFiles};
use super::{logits_for, EncoderDecoder, Seq2SeqConfig};
use crate::kernels::Epilogue;
use crate::{BackendError, Quantize};

/// `config.json` of an M2M100 or NLLB checkpoint (the fields the model
/// reads).
#[derive(Debug, Clone, Deserialize)]
pub struct M2M100Config {
    /// Vocabulary size (embedding rows).
    pub vocab_size: usize,
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
    /// `relu` (NLLB, M2M100), `gelu`, …
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Positions the model was trained with (the table grows past them in
    /// transformers; precis refuses longer inputs, as for BART).
    pub max_position_embeddings: usize,
    /// Whether embeddings are multiplied by `√d_model` (true for every
    /// published checkpoint).
    #[serde(default = "yes")]
    pub scale_embedding: bool,
    /// Padding id (1), also the position table's zero row.
    #[serde(default = "one")]
    pub pad_token_id: u32,
    /// End of sequence (2).
    #[serde(default = "two")]
    pub eos_token_id: u32,
    /// First decoder input (2: `</s>`).
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
}

fn default_activation() -> String {
    "relu".into()
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn two() -> u32 {
    2
}

struct EncoderLayer {
    attn_norm: RowNorm,
    attn: Attention,
    ffn_norm: RowNorm,
    ffn: FeedForward,
}

struct DecoderLayer {
    attn_norm: LayerNorm,
    attn: Attention,
    cross_norm: LayerNorm,
    cross: Attention,
    ffn_norm: LayerNorm,
    ffn: FeedForward,
}

/// A loaded M2M100 or NLLB model.
pub struct M2M100 {
    cfg: M2M100Config,
    /// Row `p` is position `p` (row `pad_token_id` is zeros).
    positions: Vec<f32>,
    encoder: Vec<EncoderLayer>,
    encoder_norm: RowNorm,
    decoder: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    /// The output layer, tied to the shared embedding: also its table.
    lm_head: Dense,
    /// With int8 weights, the shared table's rows as stored in the
    /// safetensors file, which the embeddings read instead of the output
    /// layer's int8 rows (see `bart::TokenRows::File`).
    tokens: Option<FileRows>,
    embed_scale: f64,
    device: Device,
}

/// fairseq's sinusoidal table as `M2M100SinusoidalPositionalEmbedding`
/// builds it: `rows × dim`, frequencies `exp(-j · ln(10⁴) / (half − 1))`,
/// sines in the first half, cosines in the second, a zero column when `dim`
/// is odd, row `padding_idx` zeros; every step in f32, as torch computes it.
pub(super) fn fairseq_sinusoids(rows: usize, dim: usize, padding_idx: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|j| (j as f32 * -step).exp()).collect();
    let mut out = vec![0f32; rows * dim];
    for pos in 0..rows {
        if pos == padding_idx {
            continue;
        }
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for (j, f) in freqs.iter().enumerate() {
            let angle = pos as f32 * f;
            row[j] = angle.sin();
            row[half + j] = angle.cos();
        }
    }
    out
}

impl M2M100Config {
    /// Refuses a configuration this code cannot run.
    pub(super) fn check(&self) -> Result<(), BackendError> {
        let d = self.d_model;
        require(d >= 4, "d_model is under 4")?;
        for heads in [self.encoder_attention_heads, self.decoder_attention_heads] {
            require(
                heads > 0 && d.is_multiple_of(heads),
                "d_model is not a multiple of the attention heads",
            )?;
        }
        require(
            (self.pad_token_id as usize) < self.vocab_size
                && (self.eos_token_id as usize) < self.vocab_size,
            "pad_token_id or eos_token_id is outside the vocabulary",
        )
    }

    /// What generation needs to know.
    pub(super) fn seq2seq(&self) -> Seq2SeqConfig {
        Seq2SeqConfig {
            vocab_size: self.vocab_size,
            pad_token_id: self.pad_token_id,
            eos_token_id: self.eos_token_id,
            decoder_start_token_id: self.decoder_start_token_id.unwrap_or(self.eos_token_id),
            max_positions: self.max_position_embeddings,
        }
    }

    /// The shared token table under the base model `base`.
    pub(super) fn table(&self, base: &VarBuilder) -> Result<Table, BackendError> {
        Table::first(base, &SHARED_TABLE, self.vocab_size, self.d_model)
    }
}

/// The position row of each token of `ids` (one sequence, no batch
/// padding), counting from `start` tokens already seen:
/// `create_position_ids_from_input_ids` (a padding token reads row `pad`,
/// the i-th other token row `pad + 1 + i`).
pub(super) fn counted_positions(ids: &[u32], start: usize, pad: u32) -> Vec<usize> {
    let mut seen = start;
    ids.iter()
        .map(|&t| {
            if t == pad {
                pad as usize
            } else {
                seen += 1;
                seen + pad as usize
            }
        })
        .collect()
}

impl M2M100 {
    /// Loads `config.json` and the weights (`model.safetensors`, or
    /// `pytorch_model.bin`) of a checkpoint directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, BackendError> {
        Self::load_quantized(dir, device, Quantize::None)
    }

    /// [`M2M100::load`], the linear layers (and the tied embedding, read
    /// from the output layer) kept as `quantize` says.
    pub fn load_quantized(
        dir: &Path,
        device: &Device,
        quantize: Quantize,
    ) -> Result<Self, BackendError> {
        let cfg: M2M100Config = read_config(dir)?;
        let Checkpoint {
            vb,
            file,
            safetensors,
            ..
        } = weights(dir, None, device)?;
        let storage = Storage::of(quantize);
        Self::from_var_builder(cfg, vb, storage, safetensors.as_ref(), device).map_err(
            |e| match e {
                BackendError::Candle(e) => BackendError::load(&file, e),
                other => other,
            },
        )
    }

    fn from_var_builder(
        cfg: M2M100Config,
        vb: VarBuilder,
        storage: Storage,
        safetensors: Option<&SafetensorsFiles>,
        device: &Device,
    ) -> Result<Self, BackendError> {
        cfg.check()?;
        let d = cfg.d_model;
        let act = activation(&cfg.activation_function)?;
        let base = base_model(&vb);
        let table = cfg.table(&base)?;
        let spec = |heads: usize| AttentionSpec {
            d_model: d,
            heads,
            head_dim: d / heads,
            names: ["q_proj", "k_proj", "v_proj", "out_proj"],
            bias: true,
            scale: ((d / heads) as f64).powf(-0.5),
            storage,
        };
        let ln = |vb: VarBuilder| candle_nn::layer_norm(d, LN_EPS, vb);
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let vb = base.pp(format!("encoder.layers.{i}"));
            encoder.push(EncoderLayer {
                attn_norm: RowNorm::load(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
                attn: Attention::load(vb.pp("self_attn"), &spec(cfg.encoder_attention_heads))?,
                ffn_norm: RowNorm::load(d, LN_EPS, vb.pp("final_layer_norm"))?,
                ffn: FeedForward::load(&vb, d, cfg.encoder_ffn_dim, act, storage)?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let vb = base.pp(format!("decoder.layers.{i}"));
            decoder.push(DecoderLayer {
                attn_norm: ln(vb.pp("self_attn_layer_norm"))?,
                attn: Attention::load(vb.pp("self_attn"), &spec(cfg.decoder_attention_heads))?,
                cross_norm: ln(vb.pp("encoder_attn_layer_norm"))?,
                cross: Attention::load(vb.pp("encoder_attn"), &spec(cfg.decoder_attention_heads))?,
                ffn_norm: ln(vb.pp("final_layer_norm"))?,
                ffn: FeedForward::load(&vb, d, cfg.decoder_ffn_dim, act, storage)?,
            });
        }
        // The output layer is tied to the shared embedding
        // (`_tied_weights_keys`); a checkpoint that stores `lm_head.weight`
        // stores the same table.
        let head = if vb.contains_tensor("lm_head.weight") {
            vb.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            table.values.clone()
        };
        let lm_head = Dense::new(&head, None, storage)?;
        let tokens = match lm_head {
            Dense::Int8(_) => table.file_rows(safetensors)?,
            _ => None,
        };
        let embed_scale = if cfg.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        // Rows up to the last position a token can take: padding_idx + 1 +
        // max_position_embeddings (transformers builds `+ 2`).
        let pad = cfg.pad_token_id as usize;
        let rows = pad + 1 + cfg.max_position_embeddings;
        Ok(Self {
            positions: fairseq_sinusoids(rows, d, pad),
            encoder,
            encoder_norm: RowNorm::load(d, LN_EPS, base.pp("encoder.layer_norm"))?,
            decoder,
            decoder_norm: ln(base.pp("decoder.layer_norm"))?,
            lm_head,
            tokens,
            embed_scale,
            device: device.clone(),
            cfg,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &M2M100Config {
        &self.cfg
    }

    /// Scaled token embeddings of `ids` plus the position rows `positions`
    /// (one each), `ids.len()` rows of `d`. The table is the output layer's
    /// (tied), read from its packed f32 copy (it is not kept twice), or
    /// with int8 weights from the file ([`M2M100::tokens`]).
    fn embed(&self, ids: &[u32], positions: &[usize]) -> Result<Vec<f32>, BackendError> {
        let d = self.cfg.d_model;
        let mut x = vec![0f32; ids.len() * d];
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(BackendError::Runtime(format!(
                "token id {id} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        match &self.tokens {
            Some(rows) => rows.gather(ids, &mut x)?,
            None => {
                for (row, &id) in x.chunks_mut(d).zip(ids) {
                    self.lm_head.row(id as usize, row);
                }
            }
        }
        // As candle's `tensor * scale` computes it: `v · scale + 0` in f32.
        let scale = self.embed_scale as f32;
        for v in x.iter_mut() {
            *v = *v * scale + 0.0;
        }
        for (row, &p) in x.chunks_mut(d).zip(positions) {
            let Some(pos) = self.positions.get(p * d..(p + 1) * d) else {
                return Err(BackendError::Runtime(format!(
                    "the sequence reached the model's {} positions",
                    self.cfg.max_position_embeddings
                )));
            };
            for (v, p) in row.iter_mut().zip(pos) {
                *v += p;
            }
        }
        Ok(x)
    }

    /// The encoder's last hidden states (`[n, s, d]`; padded rows are
    /// zeros) and, for the parity tests' signature, an empty mask.
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let rows = self.encode_rows(inputs)?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let hidden = repad(&rows, &lens, self.cfg.d_model, &self.device)?;
        Ok((
            hidden,
            Tensor::zeros(0, candle_core::DType::F32, &self.device)?,
        ))
    }

    /// The encoder's last hidden states of the inputs' tokens, input after
    /// input (`Σ lens` rows of `d`).
    fn encode_rows(&self, inputs: &[Vec<u32>]) -> Result<Vec<f32>, BackendError> {
        let max = self.cfg.max_position_embeddings;
        let mut positions = Vec::new();
        for input in inputs {
            if input.is_empty() {
                return Err(BackendError::Runtime("an input has no tokens".into()));
            }
            if input.len() > max {
                return Err(BackendError::Runtime(format!(
                    "an input of {} tokens is longer than the model's {max} positions",
                    input.len()
                )));
            }
            if let Some(&bad) = input.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(BackendError::Runtime(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
            positions.extend(counted_positions(input, 0, self.cfg.pad_token_id));
        }
        let mut x = self.embed(&inputs.concat(), &positions)?;
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let rows = x.len() / self.cfg.d_model;
        let mut s = Scratch::default();
        for layer in &self.encoder {
            let h = layer.attn_norm.norm(&x);
            layer.attn.attend_within(&h, &lens, &mut s);
            add(&mut x, &s.attn);
            let h = layer.ffn_norm.norm(&x);
            layer.ffn.apply_rows(&h, rows, &mut s);
            add(&mut x, &s.ffn);
        }
        Ok(self.encoder_norm.norm(&x))
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl EncoderDecoder for M2M100 {
    type State = DecoderState;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.cfg.seq2seq()
    }

    fn start(
        &self,
        inputs: &[Vec<u32>],
        rows_per_input: usize,
    ) -> Result<DecoderState, BackendError> {
        let hidden = self.encode_rows(inputs)?;
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
        state: &mut DecoderState,
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
        let d = self.cfg.d_model;
        // Each row's one token sits after `state.len()` earlier ones.
        let positions: Vec<usize> = tokens
            .iter()
            .flat_map(|&t| counted_positions(&[t], state.len(), self.cfg.pad_token_id))
            .collect();
        let rows = self.embed(tokens, &positions)?;
        let mut x = Tensor::from_vec(rows, (n, 1, d), &self.device)?;
        for (i, layer) in self.decoder.iter().enumerate() {
            let h: Vec<f32> = layer.attn_norm.forward(&x)?.flatten_all()?.to_vec1()?;
            let (k, v) = layer.attn.project_kv(&h, n);
            state.push_self(i, &layer.attn, &k, &v);
            let a = state.self_attend(i, &layer.attn, &h);
            x = (x + Tensor::from_vec(a, (n, 1, d), &self.device)?)?;
            let h = layer.cross_norm.forward(&x)?;
            x = (&x + state.cross_attend(i, &layer.cross, &h)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            x = (&x + layer.ffn.forward(&h)?)?;
        }
        state.advance();
        let x: Vec<f32> = self.decoder_norm.forward(&x)?.flatten_all()?.to_vec1()?;
        let out = logits_for(logits, n, self.lm_head.rows());
        self.lm_head.write_rows(&x, n, Epilogue::None, out);
        Ok(())
    }

    fn select(&self, state: &mut DecoderState, rows: &[usize]) -> Result<(), BackendError> {
        state.select(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoids_skip_the_padding_row_and_put_sines_first() {
        let t = fairseq_sinusoids(4, 6, 1);
        assert!(
            t[6..12].iter().all(|&v| v == 0.0),
            "the padding row is zeros"
        );
        // Row 2, half 3: frequencies 1, 10⁻², 10⁻⁴.
        let row = &t[12..18];
        assert!((row[0] - 2f32.sin()).abs() < 1e-6);
        assert!((row[1] - 0.02f32.sin()).abs() < 1e-6);
        assert!((row[3] - 2f32.cos()).abs() < 1e-6);
        assert!((row[5] - 0.0002f32.cos()).abs() < 1e-6);
    }
}
