//! What the encoder-decoder families share: reading a checkpoint, linear
//! layers on packed weights, multi-head attention with an additive bias,
//! padding a batch, and the decoder state of a running batch.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use rayon::prelude::*;

use crate::backend::kernels::{self, Epilogue, Keys, PackedF32, KEY_BLOCK};
use crate::backend::BackendError;

/// A candle error as text (for load errors that name the file).
pub(super) fn e<T>(r: candle_core::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

pub(super) fn load_err(path: &Path, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `config.json` of a checkpoint directory.
pub(super) fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T, BackendError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| load_err(&path, e))
}

/// The weights of a checkpoint directory (`model.safetensors`, else
/// `pytorch_model.bin`) in f32, and the file they came from.
pub(super) fn weights(
    dir: &Path,
    device: &Device,
) -> Result<(VarBuilder<'static>, PathBuf), BackendError> {
    let safetensors = dir.join("model.safetensors");
    let pth = dir.join("pytorch_model.bin");
    if safetensors.exists() {
        let bytes = std::fs::read(&safetensors).map_err(|e| load_err(&safetensors, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| load_err(&safetensors, e))?;
        Ok((vb, safetensors))
    } else if pth.exists() {
        let vb = VarBuilder::from_pth(&pth, DType::F32, device).map_err(|e| load_err(&pth, e))?;
        Ok((vb, pth))
    } else {
        Err(load_err(
            dir,
            "no weights: expected model.safetensors or pytorch_model.bin",
        ))
    }
}

/// A linear layer `y = x Wᵀ (+ b)` on [`PackedF32`], whose weights are
/// packed once at load (candle's matmul repacks them at every call, which
/// costs more than the product itself for a decoder step's few dozen rows).
pub(super) struct Dense(PackedF32);

impl Dense {
    /// `weight` (`rows × cols`) and, when `bias`, `bias` under `vb`.
    pub(super) fn load(
        cols: usize,
        rows: usize,
        vb: VarBuilder,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let w = vb
            .get((rows, cols), "weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = if bias {
            Some(vb.get(rows, "bias")?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(Dense(PackedF32::new(&w, b.as_deref(), rows, cols)))
    }

    /// `[n, t, cols]` → `[n, t, rows]`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, Epilogue::None)
    }

    /// [`Dense::forward`] with `epilogue` applied to every output.
    pub(super) fn forward_then(
        &self,
        x: &Tensor,
        epilogue: Epilogue,
    ) -> candle_core::Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        Tensor::from_vec(
            self.0.apply_then(&input, n * t, epilogue),
            (n, t, self.0.rows()),
            x.device(),
        )
    }
}

impl Dense {
    /// `rows` rows of `cols` values (flat) → `rows` rows of outputs, with
    /// `epilogue` applied.
    pub(super) fn apply_rows(&self, x: &[f32], rows: usize, epilogue: Epilogue) -> Vec<f32> {
        self.0.apply_then(x, rows, epilogue)
    }
}

/// A layer norm (`nn.LayerNorm`) applied row by row to flat buffers, rows in
/// parallel.
pub(super) struct RowNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl RowNorm {
    /// `weight` and `bias` of `d` values under `vb`.
    pub(super) fn load(d: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get(d, "weight")?.to_vec1()?,
            beta: vb.get(d, "bias")?.to_vec1()?,
            eps: eps as f32,
        })
    }

    /// `x[r] = norm(x[r] + y[r])` for every row (the residual, then the
    /// norm: a post-norm layer's end).
    pub(super) fn add_norm(&self, x: &mut [f32], y: &[f32]) {
        let d = self.gamma.len();
        assert_eq!(x.len(), y.len(), "residual of another shape");
        x.par_chunks_mut(d)
            .zip(y.par_chunks(d))
            .for_each(|(xr, yr)| {
                for (a, b) in xr.iter_mut().zip(yr) {
                    *a += b;
                }
                let mean = xr.iter().sum::<f32>() / d as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((v, g), b) in xr.iter_mut().zip(&self.gamma).zip(&self.beta) {
                    *v = (*v - mean) * inv * g + b;
                }
            });
    }
}

/// The activation transformers' `ACT2FN` names, run as the epilogue of the
/// product before it.
pub(super) fn activation(name: &str) -> Result<Epilogue, String> {
    Ok(match name {
        "swish" | "silu" => Epilogue::Silu,
        "gelu" => Epilogue::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => Epilogue::GeluTanh,
        "relu" => Epilogue::Relu,
        other => return Err(format!("activation `{other}` is not supported")),
    })
}

/// Multi-head attention: query, key, value and output projections.
pub(super) struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    heads: usize,
    head_dim: usize,
    /// Factor on the scores (BART: `head_dim^-0.5`; T5: 1).
    scale: f64,
}

/// The shape and names of an [`Attention`]'s weights.
pub(super) struct AttentionSpec {
    pub(super) d_model: usize,
    pub(super) heads: usize,
    pub(super) head_dim: usize,
    /// The four projections' names: query, key, value, output.
    pub(super) names: [&'static str; 4],
    pub(super) bias: bool,
    pub(super) scale: f64,
}

impl Attention {
    pub(super) fn load(vb: VarBuilder, spec: &AttentionSpec) -> candle_core::Result<Self> {
        let (d, inner) = (spec.d_model, spec.heads * spec.head_dim);
        let [q, k, v, o] = spec.names;
        Ok(Self {
            q: Dense::load(d, inner, vb.pp(q), spec.bias)?,
            k: Dense::load(d, inner, vb.pp(k), spec.bias)?,
            v: Dense::load(d, inner, vb.pp(v), spec.bias)?,
            out: Dense::load(inner, d, vb.pp(o), spec.bias)?,
            heads: spec.heads,
            head_dim: spec.head_dim,
            scale: spec.scale,
        })
    }

    /// `[n, t, heads · head_dim]` → `[n, heads, t, head_dim]`.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        x.reshape((n, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x` (`[n, heads, t, head_dim]` each).
    pub(super) fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// Attention of `x`'s queries over `k`, `v` (`[n, heads, s, head_dim]`),
    /// with an additive `bias` broadcast to `[n, heads, t, s]`.
    pub(super) fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let q = self.split(&self.q.forward(x)?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if self.scale != 1.0 {
            scores = (scores * self.scale)?;
        }
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((n, t, self.heads * self.head_dim))?;
        self.out.forward(&out)
    }
}

impl Attention {
    /// Self-attention of `x` (`n × s` rows of `d`, inputs right-padded,
    /// flat) where the
    /// queries of input `i` see its first `lens[i]` positions: the encoder's
    /// (a padding mask, no other bias). Each (input, head) runs on
    /// [`kernels::attention`] (keys transposed, streaming softmax), in
    /// parallel; padded rows get finite values that nothing reads.
    pub(super) fn attend_prefix(&self, x: &[f32], n: usize, s: usize, lens: &[usize]) -> Vec<f32> {
        let (heads, hd) = (self.heads, self.head_dim);
        let inner = heads * hd;
        let q = self.q.0.apply(x, n * s);
        let k = self.k.0.apply(x, n * s);
        let v = self.v.0.apply(x, n * s);
        let stride = s.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let scale = self.scale as f32;
        let per_head: Vec<Vec<f32>> = (0..n * heads)
            .into_par_iter()
            .map(|ih| {
                let (i, h) = (ih / heads, ih % heads);
                let at = |j: usize, d: usize| (i * s + j) * inner + h * hd + d;
                let mut kt = vec![0f32; hd * stride];
                let mut vv = vec![0f32; stride * hd];
                let mut qq = vec![0f32; s * hd];
                for j in 0..s {
                    for d in 0..hd {
                        kt[d * stride + j] = k[at(j, d)];
                        vv[j * hd + d] = v[at(j, d)];
                        qq[j * hd + d] = q[at(j, d)];
                    }
                }
                let limits = vec![lens[i].clamp(1, s); s];
                let mut o = vec![0f32; s * hd];
                let keys = Keys {
                    kt: &kt,
                    v: &vv,
                    stride,
                };
                kernels::attention(&qq, &limits, keys, hd, scale, &mut o);
                o
            })
            .collect();
        let mut out = vec![0f32; n * s * inner];
        for (ih, o) in per_head.iter().enumerate() {
            let (i, h) = (ih / heads, ih % heads);
            for j in 0..s {
                let row = (i * s + j) * inner + h * hd;
                out[row..row + hd].copy_from_slice(&o[j * hd..(j + 1) * hd]);
            }
        }
        self.out.0.apply(&out, n * s)
    }
}

/// The inputs padded with `pad_id` into one `[n, s]` tensor, and the
/// additive mask (`[n, 1, 1, s]`: 0 on tokens, -inf on padding). Refuses
/// empty inputs, ids outside `vocab`, and inputs longer than `max_len`.
pub(super) fn pad(
    inputs: &[Vec<u32>],
    pad_id: u32,
    vocab: usize,
    max_len: Option<usize>,
    device: &Device,
) -> Result<(Tensor, Tensor), BackendError> {
    let s = inputs.iter().map(Vec::len).max().unwrap_or(0);
    if s == 0 || inputs.iter().any(Vec::is_empty) {
        return Err(BackendError::Runtime("an input has no tokens".into()));
    }
    if let Some(max) = max_len.filter(|&m| s > m) {
        return Err(BackendError::Runtime(format!(
            "an input of {s} tokens is longer than the model's {max} positions"
        )));
    }
    let mut ids = Vec::with_capacity(inputs.len() * s);
    let mut bias = Vec::with_capacity(inputs.len() * s);
    for input in inputs {
        if let Some(&bad) = input.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::Runtime(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        ids.extend_from_slice(input);
        ids.extend(std::iter::repeat_n(pad_id, s - input.len()));
        bias.extend(std::iter::repeat_n(0f32, input.len()));
        bias.extend(std::iter::repeat_n(f32::NEG_INFINITY, s - input.len()));
    }
    let n = inputs.len();
    Ok((
        Tensor::from_vec(ids, (n, s), device)?,
        Tensor::from_vec(bias, (n, 1, 1, s), device)?,
    ))
}

/// The state of a batch being decoded: per layer, the self-attention keys
/// and values so far and the cross-attention ones, and each row's mask over
/// the source.
pub struct DecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    source_bias: Tensor,
    /// The input each row belongs to.
    row_input: Vec<usize>,
    /// Tokens decoded so far.
    len: usize,
}

impl DecoderState {
    /// `rows_per_input` rows per input over the encoder's `hidden` states
    /// (`[inputs, s, d]`) and `source_bias`, with each cross-attention's
    /// keys and values computed once.
    pub(super) fn new<'a>(
        cross: impl ExactSizeIterator<Item = &'a Attention>,
        hidden: &Tensor,
        source_bias: &Tensor,
        rows_per_input: usize,
    ) -> Result<Self, BackendError> {
        let inputs = hidden.dim(0)?;
        let row_input: Vec<usize> = (0..inputs)
            .flat_map(|i| std::iter::repeat_n(i, rows_per_input))
            .collect();
        let index: Vec<u32> = row_input.iter().map(|&i| i as u32).collect();
        let index = Tensor::new(index.as_slice(), hidden.device())?;
        let layers = cross.len();
        let mut cross_kv = Vec::with_capacity(layers);
        for attn in cross {
            let (k, v) = attn.keys_values(hidden)?;
            cross_kv.push((k.index_select(&index, 0)?, v.index_select(&index, 0)?));
        }
        Ok(Self {
            self_kv: vec![None; layers],
            cross_kv,
            source_bias: source_bias.index_select(&index, 0)?,
            row_input,
            len: 0,
        })
    }

    /// Tokens decoded so far (the position of the next one).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Counts a decoded token (after every layer has run).
    pub(super) fn advance(&mut self) {
        self.len += 1;
    }

    /// Appends this step's keys and values of layer `layer` to its cache;
    /// returns the whole cache.
    pub(super) fn push_self(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = match self.self_kv[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.self_kv[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Layer `layer`'s cross-attention keys and values.
    pub(super) fn cross(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.cross_kv[layer];
        (k, v)
    }

    /// The additive mask over the source (`[rows, 1, 1, s]`).
    pub(super) fn source_bias(&self) -> &Tensor {
        &self.source_bias
    }

    /// Keeps rows `rows` (old indices, in their new order).
    pub(super) fn select(&mut self, rows: &[usize]) -> Result<(), BackendError> {
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), self.source_bias.device())?;
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (kv.0.index_select(&index, 0)?, kv.1.index_select(&index, 0)?);
        }
        let row_input: Vec<usize> = rows.iter().map(|&r| self.row_input[r]).collect();
        // Beams reordered within their inputs share the inputs' cross-attention
        // keys and values: they only move when rows change inputs.
        if row_input != self.row_input {
            for kv in self.cross_kv.iter_mut() {
                *kv = (kv.0.index_select(&index, 0)?, kv.1.index_select(&index, 0)?);
            }
            self.source_bias = self.source_bias.index_select(&index, 0)?;
            self.row_input = row_input;
        }
        Ok(())
    }
}
