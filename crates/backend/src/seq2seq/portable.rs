//! The portable path: every encoder-decoder family (Marian, BART, M2M100 /
//! NLLB, T5) written once more with candle tensors and ops only, so that it
//! runs on whatever device candle runs on (a CUDA GPU, or the CPU).
//!
//! Why this exists: the CPU path (`bart.rs`, `m2m100.rs`, `t5.rs`) is built
//! on this crate's own kernels (packed f32 and int8 products, attention on
//! flat buffers), which are fast on a CPU and cannot run anywhere else. This
//! path reads the same checkpoints, computes what the same modelling code
//! computes, and implements the same [`EncoderDecoder`] contract, so
//! generation (greedy, beams, batching, cancellation, streaming) is shared;
//! it is proven by running the families' parity suites on `Device::Cpu`
//! (`tests/portable_parity.rs`), so that on a GPU only the device differs.
//!
//! One network covers the four families; what differs is data
//! (`Design`): where the norms sit (after each sublayer's residual, as
//! BART and Marian, or before the sublayer, as M2M100 and T5), layer norm
//! or T5's RMS norm, absolute positions (a learned or sinusoidal table) or
//! T5's relative-position bias, the feed-forward block (plain or gated),
//! and the output layer's scale and bias. Each family's loader is below,
//! next to the others, reading its own `config.json` type.
//!
//! Weights are kept in the dtype asked for (f32, or f16 / bf16 on a GPU);
//! the logits leave the device as f32. The decoder state keeps, per layer,
//! the self-attention keys and values so far and the cross-attention ones,
//! one row per running hypothesis (a beam's rows are reordered with
//! `index_select`).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, RmsNorm, VarBuilder};

use super::bart::{base_model, marian_sinusoids, BartConfig, LN_EPS};
use super::layers::{activation, attend_heads, pad, read_config, split_heads, weights, Checkpoint};
use super::m2m100::{counted_positions, fairseq_sinusoids, M2M100Config};
use super::t5::{feed_forward_kind, PositionBias, T5Config};
use super::{logits_for, EncoderDecoder, Seq2SeqConfig};
use crate::kernels::Epilogue;
use crate::BackendError;

/// A norm: `nn.LayerNorm`, or T5's RMS norm (no mean, no bias).
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// Multi-head attention: query, key, value and output projections.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    /// Factor on the queries (BART: `head_dim^-0.5`; T5: 1).
    scale: f64,
}

impl Attention {
    /// `[n, t, heads · head_dim]` → `[n, heads, t, head_dim]`.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        split_heads(x, self.heads, self.head_dim)
    }

    /// Keys and values of `x` (`[n, s, d]`), split into heads.
    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// `x` (`[n, t, d]`) attending to keys and values `[n, heads, s, hd]`,
    /// `bias` added to the scores (masks, T5's position bias).
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let q = self.split(&self.q.forward(x)?)?;
        self.out.forward(&attend_heads(&q, k, v, self.scale, bias)?)
    }
}

/// The feed-forward block: `out(act(inner(x)))`, or gated
/// `out(act(inner(x)) · gate(x))` (Flan-T5).
struct FeedForward {
    inner: Linear,
    gate: Option<Linear>,
    out: Linear,
    act: Epilogue,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.inner.forward(x)?;
        let mut h = match self.act {
            Epilogue::None => h,
            Epilogue::Relu => h.relu()?,
            Epilogue::Gelu => h.gelu_erf()?,
            Epilogue::GeluTanh => h.gelu()?,
            Epilogue::Silu => h.silu()?,
        };
        if let Some(gate) = &self.gate {
            h = (h * gate.forward(x)?)?;
        }
        self.out.forward(&h)
    }
}

/// A layer: self-attention, cross-attention (decoder), feed-forward, each
/// with its norm.
struct Layer {
    attn: Attention,
    attn_norm: Norm,
    cross: Option<(Attention, Norm)>,
    ffn: FeedForward,
    ffn_norm: Norm,
}

/// How one side reads positions.
enum Positions {
    /// None in the embeddings (T5: a bias on the scores instead).
    Relative(PositionBias),
    /// Row `p` of the table is position `p` (BART's offset of 2 already
    /// skipped; Marian's sinusoids).
    Table(Tensor),
    /// M2M100's: the row of the i-th token that is not padding is
    /// `pad + 1 + i`; a padding token reads row `pad` (zeros).
    Counted { table: Tensor, pad: u32 },
}

/// One side's input: token table, scale, positions, embedding norm.
struct Embeddings {
    tokens: Tensor,
    scale: f64,
    positions: Positions,
    norm: Option<Norm>,
}

/// One stack (encoder or decoder).
struct Stack {
    embed: Embeddings,
    layers: Vec<Layer>,
    /// The norm after the last layer (pre-norm families).
    final_norm: Option<Norm>,
}

/// Where the norms sit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// `norm(x + sublayer(x))` (BART, Marian).
    Post,
    /// `x + sublayer(norm(x))` (M2M100, T5).
    Pre,
}

/// What differs between the families beyond their weights.
struct Design {
    norms: Placement,
    /// Positions an input or an output may take (`None`: relative).
    max_positions: Option<usize>,
    /// Factor on the decoder's output before the output layer (T5 tied).
    output_scale: f64,
}

/// An encoder-decoder on any candle device.
pub struct Portable {
    design: Design,
    config: Seq2SeqConfig,
    encoder: Stack,
    decoder: Stack,
    head: Linear,
    dtype: DType,
    device: Device,
}

/// The decoder state of a running batch on the device.
pub struct PortableState {
    /// Per layer: the cross-attention keys and values, one row per
    /// running hypothesis (`[rows, heads, s, hd]`).
    cross: Vec<(Tensor, Tensor)>,
    /// `[rows, 1, 1, s]`: 0 on the input's tokens, -inf on padding.
    mask: Tensor,
    /// Per layer: the self-attention keys and values so far.
    own: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens decoded so far.
    len: usize,
}

impl Portable {
    /// Loads the checkpoint in `dir` (Marian, BART, M2M100 / NLLB or T5,
    /// by `config.json`'s `model_type`) onto `device`, its weights in
    /// `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, BackendError> {
        Self::load_weights(dir, None, device, dtype)
    }

    /// [`Portable::load`], with the weights from the GGUF file `gguf` when
    /// given (a quantized T5 such as MADLAD-400's, or a directory holding
    /// one): its matrices are dequantized at load into `dtype`, this path's
    /// products being candle's plain ones (MADLAD-400 3B takes 6 GB in f16).
    pub fn load_weights(
        dir: &Path,
        gguf: Option<&Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, BackendError> {
        let value: serde_json::Value = read_config(dir)?;
        // The family's own configuration, from the file read once.
        fn typed<T: serde::de::DeserializeOwned>(
            dir: &Path,
            value: &serde_json::Value,
        ) -> Result<T, BackendError> {
            T::deserialize(value).map_err(|e| BackendError::load(&dir.join("config.json"), e))
        }
        let Checkpoint { vb, file, .. } = weights(dir, gguf, device)?;
        let vb = vb.set_dtype(dtype);
        let model = match value["model_type"].as_str() {
            Some("marian" | "bart") => Self::bart(typed(dir, &value)?, vb),
            Some("m2m_100") => Self::m2m100(typed(dir, &value)?, vb),
            Some("t5") => Self::t5(typed(dir, &value)?, vb),
            other => {
                return Err(BackendError::load(
                    &dir.join("config.json"),
                    format!(
                    "model_type {} is not one the portable path runs (marian, bart, m2m_100, t5)",
                    other.map_or("(none)".to_string(), |t| format!("`{t}`"))
                ),
                ))
            }
        };
        model.map_err(|e| match e {
            BackendError::Candle(e) => BackendError::load(&file, e),
            other => other,
        })
    }

    /// The device the model is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// BART and Marian (see `bart.rs` for what they compute).
    fn bart(cfg: BartConfig, vb: VarBuilder) -> Result<Self, BackendError> {
        cfg.check()?;
        let shape = cfg.seq2seq();
        let d = cfg.d_model;
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let base = base_model(&vb);
        let (enc_table, dec_table) = cfg.tables(&base)?;
        let (enc_table, dec_table) = (enc_table.values, dec_table.values);
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            dec_table.clone()
        } else {
            vb.get((shape.vocab_size, d), "lm_head.weight")?
        };
        let bias = if vb.contains_tensor("final_logits_bias") {
            Some(
                vb.get((1, shape.vocab_size), "final_logits_bias")?
                    .squeeze(0)?,
            )
        } else {
            None
        };
        let max_pos = cfg.max_position_embeddings;
        let ln = |vb: VarBuilder| candle_nn::layer_norm(d, LN_EPS, vb).map(Norm::Layer);
        let (enc_pos, dec_pos, enc_norm, dec_norm) = if cfg.is_marian() {
            let table = Tensor::from_vec(marian_sinusoids(max_pos, d), (max_pos, d), &device)?
                .to_dtype(dtype)?;
            (table.clone(), table, None, None)
        } else {
            let learned = |side: &str| {
                base.get((max_pos + 2, d), &format!("{side}.embed_positions.weight"))
                    .and_then(|t| t.i(2..))
            };
            (
                learned("encoder")?,
                learned("decoder")?,
                Some(ln(base.pp("encoder.layernorm_embedding"))?),
                Some(ln(base.pp("decoder.layernorm_embedding"))?),
            )
        };
        let act = activation(&cfg.activation_function)?;
        let scale = if cfg.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        let encoder = Stack {
            embed: Embeddings {
                tokens: enc_table,
                scale,
                positions: Positions::Table(enc_pos),
                norm: enc_norm,
            },
            layers: fairseq_layers(
                &base.pp("encoder"),
                cfg.encoder_layers,
                cfg.encoder_attention_heads,
                d,
                cfg.encoder_ffn_dim,
                act,
                false,
            )?,
            final_norm: None,
        };
        let decoder = Stack {
            embed: Embeddings {
                tokens: dec_table,
                scale,
                positions: Positions::Table(dec_pos),
                norm: dec_norm,
            },
            layers: fairseq_layers(
                &base.pp("decoder"),
                cfg.decoder_layers,
                cfg.decoder_attention_heads,
                d,
                cfg.decoder_ffn_dim,
                act,
                true,
            )?,
            final_norm: None,
        };
        Ok(Self {
            design: Design {
                norms: Placement::Post,
                max_positions: Some(max_pos),
                output_scale: 1.0,
            },
            config: shape,
            encoder,
            decoder,
            head: Linear::new(lm_head, bias),
            dtype,
            device,
        })
    }

    /// M2M100 and NLLB (see `m2m100.rs`).
    fn m2m100(cfg: M2M100Config, vb: VarBuilder) -> Result<Self, BackendError> {
        cfg.check()?;
        let shape = cfg.seq2seq();
        let d = cfg.d_model;
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let base = base_model(&vb);
        let table = cfg.table(&base)?.values;
        let head = if vb.contains_tensor("lm_head.weight") {
            vb.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            table.clone()
        };
        let pad = cfg.pad_token_id;
        let rows = pad as usize + 1 + cfg.max_position_embeddings;
        let positions =
            Tensor::from_vec(fairseq_sinusoids(rows, d, pad as usize), (rows, d), &device)?
                .to_dtype(dtype)?;
        let act = activation(&cfg.activation_function)?;
        let scale = if cfg.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        let ln = |vb: VarBuilder| candle_nn::layer_norm(d, LN_EPS, vb).map(Norm::Layer);
        let side = |name: &str,
                    table: &Tensor,
                    layers,
                    heads,
                    ffn,
                    cross|
         -> Result<Stack, BackendError> {
            Ok(Stack {
                embed: Embeddings {
                    tokens: table.clone(),
                    scale,
                    positions: Positions::Counted {
                        table: positions.clone(),
                        pad,
                    },
                    norm: None,
                },
                layers: fairseq_layers(&base.pp(name), layers, heads, d, ffn, act, cross)?,
                final_norm: Some(ln(base.pp(format!("{name}.layer_norm")))?),
            })
        };
        let encoder = side(
            "encoder",
            &table,
            cfg.encoder_layers,
            cfg.encoder_attention_heads,
            cfg.encoder_ffn_dim,
            false,
        )?;
        let decoder = side(
            "decoder",
            &table,
            cfg.decoder_layers,
            cfg.decoder_attention_heads,
            cfg.decoder_ffn_dim,
            true,
        )?;
        Ok(Self {
            design: Design {
                norms: Placement::Pre,
                max_positions: Some(cfg.max_position_embeddings),
                output_scale: 1.0,
            },
            config: shape,
            encoder,
            decoder,
            head: Linear::new(head, None),
            dtype,
            device,
        })
    }

    /// T5 and Flan-T5 (see `t5.rs`).
    fn t5(cfg: T5Config, vb: VarBuilder) -> Result<Self, BackendError> {
        cfg.check()?;
        let shape = cfg.seq2seq();
        let (gated, act) = feed_forward_kind(&cfg)?;
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let norm =
            |vb: VarBuilder| candle_nn::rms_norm(d, cfg.layer_norm_epsilon, vb).map(Norm::Rms);
        let attention = |vb: VarBuilder| -> candle_core::Result<Attention> {
            let inner = cfg.num_heads * cfg.d_kv;
            Ok(Attention {
                q: candle_nn::linear_no_bias(d, inner, vb.pp("q"))?,
                k: candle_nn::linear_no_bias(d, inner, vb.pp("k"))?,
                v: candle_nn::linear_no_bias(d, inner, vb.pp("v"))?,
                out: candle_nn::linear_no_bias(inner, d, vb.pp("o"))?,
                heads: cfg.num_heads,
                head_dim: cfg.d_kv,
                scale: 1.0,
            })
        };
        let ffn = |vb: VarBuilder| -> candle_core::Result<FeedForward> {
            let vb = vb.pp("DenseReluDense");
            let (inner, gate) = if gated {
                (
                    candle_nn::linear_no_bias(d, ff, vb.pp("wi_0"))?,
                    Some(candle_nn::linear_no_bias(d, ff, vb.pp("wi_1"))?),
                )
            } else {
                (candle_nn::linear_no_bias(d, ff, vb.pp("wi"))?, None)
            };
            Ok(FeedForward {
                inner,
                gate,
                out: candle_nn::linear_no_bias(ff, d, vb.pp("wo"))?,
                act,
            })
        };
        let shared = vb.get((cfg.vocab_size, d), "shared.weight")?;
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let vb = vb.pp(format!("encoder.block.{i}.layer"));
            encoder.push(Layer {
                attn_norm: norm(vb.pp("0.layer_norm"))?,
                attn: attention(vb.pp("0.SelfAttention"))?,
                cross: None,
                ffn_norm: norm(vb.pp("1.layer_norm"))?,
                ffn: ffn(vb.pp("1"))?,
            });
        }
        let layers = cfg.num_decoder_layers.unwrap_or(cfg.num_layers);
        let mut decoder = Vec::with_capacity(layers);
        for i in 0..layers {
            let vb = vb.pp(format!("decoder.block.{i}.layer"));
            decoder.push(Layer {
                attn_norm: norm(vb.pp("0.layer_norm"))?,
                attn: attention(vb.pp("0.SelfAttention"))?,
                cross: Some((
                    attention(vb.pp("1.EncDecAttention"))?,
                    norm(vb.pp("1.layer_norm"))?,
                )),
                ffn_norm: norm(vb.pp("2.layer_norm"))?,
                ffn: ffn(vb.pp("2"))?,
            });
        }
        // The bias tables stay in f32 on the host: a step's row of biases
        // is built there and sent in the model's dtype.
        let host = vb.clone().set_device(Device::Cpu).set_dtype(DType::F32);
        let bias = |side: &str, bidirectional| {
            PositionBias::load(
                host.pp(format!("{side}.block.0.layer.0.SelfAttention")),
                &cfg,
                bidirectional,
            )
        };
        let head = if vb.contains_tensor("lm_head.weight") {
            vb.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            shared.clone()
        };
        let embeddings = |positions| Embeddings {
            tokens: shared.clone(),
            scale: 1.0,
            positions,
            norm: None,
        };
        Ok(Self {
            design: Design {
                norms: Placement::Pre,
                max_positions: None,
                output_scale: if cfg.tie_word_embeddings != Some(false) {
                    (d as f64).powf(-0.5)
                } else {
                    1.0
                },
            },
            config: shape,
            encoder: Stack {
                embed: embeddings(Positions::Relative(bias("encoder", true)?)),
                layers: encoder,
                final_norm: Some(norm(vb.pp("encoder.final_layer_norm"))?),
            },
            decoder: Stack {
                embed: embeddings(Positions::Relative(bias("decoder", false)?)),
                layers: decoder,
                final_norm: Some(norm(vb.pp("decoder.final_layer_norm"))?),
            },
            head: Linear::new(head, None),
            dtype,
            device,
        })
    }

    /// `ids` (`[n, t]`, row `r`'s tokens at `positions[r]`) embedded:
    /// scaled tokens, plus positions when the side has a table, then the
    /// embedding norm (BART).
    fn embed(
        &self,
        side: &Embeddings,
        ids: &Tensor,
        positions: &[Vec<usize>],
    ) -> candle_core::Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let d = side.tokens.dim(1)?;
        let tokens = side
            .tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, t, d))?;
        let mut x = (tokens * side.scale)?;
        let table = match &side.positions {
            Positions::Relative(_) => None,
            Positions::Table(table) | Positions::Counted { table, .. } => Some(table),
        };
        if let Some(table) = table {
            let rows = table.dim(0)?;
            let flat: Vec<u32> = positions.iter().flatten().map(|&p| p as u32).collect();
            if let Some(&p) = flat.iter().find(|&&p| p as usize >= rows) {
                candle_core::bail!("position {p} is past the model's {rows} positions");
            }
            let index = Tensor::from_vec(flat, n * t, &self.device)?;
            x = (x + table.index_select(&index, 0)?.reshape((n, t, d))?)?;
        }
        match &side.norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// The position rows of each input's tokens, from `start` on.
    fn positions(side: &Embeddings, ids: &[Vec<u32>], start: usize) -> Vec<Vec<usize>> {
        ids.iter()
            .map(|row| match &side.positions {
                Positions::Counted { pad, .. } => counted_positions(row, start, *pad),
                _ => (start..start + row.len()).collect(),
            })
            .collect()
    }

    /// One sublayer with its norm and residual, as the design places them.
    fn residual(
        &self,
        x: &Tensor,
        norm: &Norm,
        sublayer: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self.design.norms {
            Placement::Post => norm.forward(&(x + sublayer(x)?)?),
            Placement::Pre => x + sublayer(&norm.forward(x)?)?,
        }
    }

    /// The encoder's last hidden states (`[n, s, d]`, in the model's dtype;
    /// what padded rows hold is read by nothing) and the source mask
    /// (`[n, 1, 1, s]`).
    pub fn encode(&self, inputs: &[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError> {
        let (ids, mask) = pad(
            inputs,
            self.config.pad_token_id,
            self.encoder.embed.tokens.dim(0)?,
            self.design.max_positions,
            &self.device,
        )?;
        let mask = mask.to_dtype(self.dtype)?;
        let s = ids.dim(1)?;
        let padded: Vec<Vec<u32>> = inputs
            .iter()
            .map(|i| {
                let mut row = i.clone();
                row.resize(s, self.config.pad_token_id);
                row
            })
            .collect();
        let positions = Self::positions(&self.encoder.embed, &padded, 0);
        let mut x = self.embed(&self.encoder.embed, &ids, &positions)?;
        let bias = match &self.encoder.embed.positions {
            Positions::Relative(b) => b
                .bias(0..s, s, &Device::Cpu)?
                .to_device(&self.device)?
                .to_dtype(self.dtype)?
                .broadcast_add(&mask)?,
            _ => mask.clone(),
        };
        for layer in &self.encoder.layers {
            x = self.residual(&x, &layer.attn_norm, |h| {
                let (k, v) = layer.attn.keys_values(h)?;
                layer.attn.attend(h, &k, &v, Some(&bias))
            })?;
            x = self.residual(&x, &layer.ffn_norm, |h| layer.ffn.forward(h))?;
        }
        if let Some(norm) = &self.encoder.final_norm {
            x = norm.forward(&x)?;
        }
        Ok((x, mask))
    }
}

/// The layers of a BART-shaped stack (`{side}.layers.{i}`): attention and
/// feed-forward blocks with biases, layer norms named as fairseq names
/// them; `cross` for the decoder's `encoder_attn`.
fn fairseq_layers(
    vb: &VarBuilder,
    count: usize,
    heads: usize,
    d: usize,
    ffn: usize,
    act: Epilogue,
    cross: bool,
) -> Result<Vec<Layer>, BackendError> {
    if heads == 0 || !d.is_multiple_of(heads) {
        return Err(BackendError::Config(
            "d_model is not a multiple of the attention heads".into(),
        ));
    }
    let ln = |vb: VarBuilder| candle_nn::layer_norm(d, LN_EPS, vb).map(Norm::Layer);
    let attention = |vb: VarBuilder| -> candle_core::Result<Attention> {
        Ok(Attention {
            q: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads,
            head_dim: d / heads,
            scale: ((d / heads) as f64).powf(-0.5),
        })
    };
    let mut layers = Vec::with_capacity(count);
    for i in 0..count {
        let vb = vb.pp(format!("layers.{i}"));
        layers.push(Layer {
            attn: attention(vb.pp("self_attn"))?,
            attn_norm: ln(vb.pp("self_attn_layer_norm"))?,
            cross: if cross {
                Some((
                    attention(vb.pp("encoder_attn"))?,
                    ln(vb.pp("encoder_attn_layer_norm"))?,
                ))
            } else {
                None
            },
            ffn: FeedForward {
                inner: candle_nn::linear(d, ffn, vb.pp("fc1"))?,
                gate: None,
                out: candle_nn::linear(ffn, d, vb.pp("fc2"))?,
                act,
            },
            ffn_norm: ln(vb.pp("final_layer_norm"))?,
        });
    }
    Ok(layers)
}

impl EncoderDecoder for Portable {
    type State = PortableState;

    fn seq2seq_config(&self) -> Seq2SeqConfig {
        self.config.clone()
    }

    fn start(
        &self,
        inputs: &[Vec<u32>],
        rows_per_input: usize,
    ) -> Result<PortableState, BackendError> {
        let (hidden, mask) = self.encode(inputs)?;
        // Row r decodes input r / rows_per_input.
        let rows: Vec<u32> = (0..inputs.len() as u32)
            .flat_map(|i| std::iter::repeat_n(i, rows_per_input))
            .collect();
        let rows = Tensor::from_vec(rows.clone(), rows.len(), &self.device)?;
        let mut cross = Vec::with_capacity(self.decoder.layers.len());
        for layer in &self.decoder.layers {
            let (attn, _) = layer
                .cross
                .as_ref()
                .expect("decoder layers attend to the input");
            let (k, v) = attn.keys_values(&hidden)?;
            cross.push((k.index_select(&rows, 0)?, v.index_select(&rows, 0)?));
        }
        Ok(PortableState {
            cross,
            mask: mask.index_select(&rows, 0)?,
            own: vec![None; self.decoder.layers.len()],
            len: 0,
        })
    }

    fn step(
        &self,
        state: &mut PortableState,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        if let Some(max) = self.design.max_positions.filter(|&m| state.len >= m) {
            return Err(BackendError::Runtime(format!(
                "the output reached the model's {max} positions"
            )));
        }
        let vocab = self.decoder.embed.tokens.dim(0)?;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::Runtime(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let n = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (n, 1), &self.device)?;
        let rows: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let positions = Self::positions(&self.decoder.embed, &rows, state.len);
        let mut x = self.embed(&self.decoder.embed, &ids, &positions)?;
        let bias = match &self.decoder.embed.positions {
            Positions::Relative(b) => Some(
                b.bias(state.len..state.len + 1, state.len + 1, &Device::Cpu)?
                    .to_device(&self.device)?
                    .to_dtype(self.dtype)?,
            ),
            _ => None,
        };
        for (i, layer) in self.decoder.layers.iter().enumerate() {
            x = self.residual(&x, &layer.attn_norm, |h| {
                let (k, v) = layer.attn.keys_values(h)?;
                let (k, v) = match state.own[i].take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                let out = layer.attn.attend(h, &k, &v, bias.as_ref());
                state.own[i] = Some((k, v));
                out
            })?;
            let (cross, norm) = layer
                .cross
                .as_ref()
                .expect("decoder layers attend to the input");
            let (k, v) = &state.cross[i];
            x = self.residual(&x, norm, |h| cross.attend(h, k, v, Some(&state.mask)))?;
            x = self.residual(&x, &layer.ffn_norm, |h| layer.ffn.forward(h))?;
        }
        state.len += 1;
        if let Some(norm) = &self.decoder.final_norm {
            x = norm.forward(&x)?;
        }
        if self.design.output_scale != 1.0 {
            x = (x * self.design.output_scale)?;
        }
        let out: Vec<f32> = self
            .head
            .forward(&x)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let rows = logits_for(logits, n, self.config.vocab_size);
        rows.copy_from_slice(&out);
        Ok(())
    }

    fn select(&self, state: &mut PortableState, rows: &[usize]) -> Result<(), BackendError> {
        let count = state.mask.dim(0)?;
        if let Some(&bad) = rows.iter().find(|&&r| r >= count) {
            return Err(BackendError::Runtime(format!(
                "row {bad} of a batch of {count}"
            )));
        }
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::from_vec(index, rows.len(), &self.device)?;
        let pick = |t: &Tensor| t.index_select(&index, 0);
        for (k, v) in &mut state.cross {
            (*k, *v) = (pick(k)?, pick(v)?);
        }
        for (k, v) in state.own.iter_mut().flatten() {
            (*k, *v) = (pick(k)?, pick(v)?);
        }
        state.mask = pick(&state.mask)?;
        Ok(())
    }
}
