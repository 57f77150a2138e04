//! What the encoder-decoder families share: reading a checkpoint, linear
//! layers on packed weights, multi-head attention with an additive bias,
//! padding a batch, and the decoder state of a running batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use rayon::prelude::*;

use super::safetensors::{FileRows, SafetensorsFiles};
use crate::kernels::{self, Activations, Epilogue, Keys, PackedF32, PackedI8, KEY_BLOCK};
use crate::weights::{GgufFile, TensorRef};
use crate::{BackendError, Quantize};

/// `config.json` of a checkpoint directory.
pub(super) fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T, BackendError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| BackendError::load(&path, e))?;
    serde_json::from_str(&text).map_err(|e| BackendError::load(&path, e))
}

/// `Ok` when `ok`, else the configuration error `what`: a check a family's
/// configuration must pass before its weights are read.
pub(super) fn require(ok: bool, what: &str) -> Result<(), BackendError> {
    if ok {
        Ok(())
    } else {
        Err(BackendError::Config(what.to_string()))
    }
}

/// A checkpoint's weights: every tensor by name in f32 (`vb`), the file
/// they came from, and, for a GGUF file, the mapped file itself, whose
/// matrices [`Dense`] layers and embedding lookups read in place in their
/// stored type (quantized weights are never expanded to f32 whole).
pub(super) struct Checkpoint {
    pub(super) vb: VarBuilder<'static>,
    pub(super) file: PathBuf,
    pub(super) mapped: Option<Arc<GgufFile>>,
    /// The safetensors files `vb` reads, where the checkpoint has them.
    pub(super) safetensors: Option<SafetensorsFiles>,
}

/// Where a checkpoint keeps a token table shared by the encoder and the
/// decoder (BART and M2M100 write `shared.weight`; some conversions only
/// the per-side copies of it).
pub(super) const SHARED_TABLE: [&str; 3] = [
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
];

/// A token embedding table and the full name it was read under.
#[derive(Clone)]
pub(super) struct Table {
    pub(super) values: Tensor,
    pub(super) name: String,
}

impl Table {
    /// The first of `names` under `base` (`rows × cols`).
    pub(super) fn first(
        base: &VarBuilder,
        names: &[&str],
        rows: usize,
        cols: usize,
    ) -> Result<Self, BackendError> {
        let name = names
            .iter()
            .find(|n| base.contains_tensor(n))
            .ok_or_else(|| BackendError::Config(format!("no `{}` tensor", names.join("` or `"))))?;
        let prefix = base.prefix();
        Ok(Self {
            values: base.get((rows, cols), name)?,
            name: if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            },
        })
    }

    /// Where an int8 model reads this table's rows: left in its
    /// safetensors file when the checkpoint is one ([`FileRows`]), else
    /// `None` (the output layer's int8 rows, as CTranslate2 reads them).
    pub(super) fn file_rows(
        &self,
        checkpoint: Option<&SafetensorsFiles>,
    ) -> Result<Option<FileRows>, BackendError> {
        let (rows, cols) = self.values.dims2()?;
        match checkpoint {
            Some(files) => files.rows(&self.name, rows, cols),
            None => Ok(None),
        }
    }
}

impl Checkpoint {
    /// How its linear layers keep their weights: in the mapped file's
    /// stored type for a GGUF checkpoint (already quantized: `quantize`
    /// does not apply), else as `quantize` says.
    pub(super) fn storage(&self, quantize: Quantize) -> Storage<'_> {
        match &self.mapped {
            Some(file) => Storage::Mapped(file),
            None => Storage::of(quantize),
        }
    }
}

/// How a checkpoint's linear layers keep their weights.
#[derive(Clone, Copy)]
pub(super) enum Storage<'a> {
    /// f32, packed ([`PackedF32`]).
    F32,
    /// Quantized to int8 per row at load ([`PackedI8`]).
    Int8,
    /// A mapped GGUF file's matrices, in their stored type.
    Mapped(&'a Arc<GgufFile>),
}

impl Storage<'static> {
    /// Weights read in f32, kept as `quantize` says.
    pub(super) fn of(quantize: Quantize) -> Self {
        match quantize {
            Quantize::None => Storage::F32,
            Quantize::Int8 => Storage::Int8,
        }
    }
}

/// The weights of a checkpoint directory (`model.safetensors`; else the
/// shards `model.safetensors.index.json` names, as large checkpoints such
/// as MADLAD-400 3B ship them; else `pytorch_model.bin`; else its one
/// `.gguf` file, as candle's `tensor-tools quantize` writes a checkpoint:
/// the checkpoint's tensor names, `config.json` beside it), or the GGUF
/// file `gguf` names.
pub(super) fn weights(
    dir: &Path,
    gguf: Option<&Path>,
    device: &Device,
) -> Result<Checkpoint, BackendError> {
    if let Some(file) = gguf {
        return mapped(file, device);
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let pth = dir.join("pytorch_model.bin");
    let (vb, file, safetensors) = if single.exists() || index.exists() {
        // One tensor at a time from disk (see `safetensors`).
        let (files, named) = if single.exists() {
            (vec![single.clone()], single)
        } else {
            (shards(dir, &index)?, index)
        };
        let tensors = SafetensorsFiles::open(&files)?;
        (
            VarBuilder::from_backend(Box::new(tensors.clone()), DType::F32, device.clone()),
            named,
            Some(tensors),
        )
    } else if pth.exists() {
        let vb = VarBuilder::from_pth(&pth, DType::F32, device)
            .map_err(|e| BackendError::load(&pth, e))?;
        (vb, pth, None)
    } else {
        let ggufs = gguf_files(dir)?;
        match ggufs.as_slice() {
            [one] => return mapped(one, device),
            [] => {
                return Err(BackendError::load(
                    dir,
                    "no weights: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or one .gguf file",
                ))
            }
            several => {
                let names: Vec<String> = several
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                return Err(BackendError::load(
                    dir,
                    format!(
                        "it holds several .gguf files ({}); keep the one to run in a directory of its own, or name it in a manifest",
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    Ok(Checkpoint {
        vb,
        file,
        mapped: None,
        safetensors,
    })
}

/// The `.gguf` files in `dir`, by name.
fn gguf_files(dir: &Path) -> Result<Vec<PathBuf>, BackendError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| BackendError::load(dir, e))? {
        let path = entry.map_err(|e| BackendError::load(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "gguf") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// A GGUF checkpoint: mapped, its tensors readable in f32 by name.
fn mapped(file: &Path, device: &Device) -> Result<Checkpoint, BackendError> {
    let mapped = Arc::new(GgufFile::open(file)?);
    let vb = VarBuilder::from_backend(
        Box::new(MappedTensors(Arc::clone(&mapped))),
        DType::F32,
        device.clone(),
    );
    Ok(Checkpoint {
        vb,
        file: file.to_path_buf(),
        mapped: Some(mapped),
        safetensors: None,
    })
}

/// A failed lookup in a mapped file as candle's error, without the file's
/// name: the load that receives it names the file once.
fn lookup_error(e: BackendError) -> candle_core::Error {
    match e {
        BackendError::Load { source, .. } => candle_core::Error::Msg(source.to_string()),
        other => candle_core::Error::wrap(other),
    }
}

/// Where the matrix `name` lies in a mapped file, checked to be `rows × cols`.
pub(super) fn matrix_ref(
    file: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> candle_core::Result<TensorRef> {
    let weight = file.tensor(name).map_err(lookup_error)?;
    let dims = file.content.tensor_infos[name].shape.rank();
    if dims != 2 || (weight.rows, weight.cols) != (rows, cols) {
        candle_core::bail!(
            "tensor `{name}` is {} × {} in the file, but config.json's sizes make it {rows} × {cols}",
            weight.rows,
            weight.cols
        );
    }
    Ok(weight)
}

/// A GGUF file's tensors in f32, by name: what norms, biases and position
/// tables read (the products read the file in place).
struct MappedTensors(Arc<GgufFile>);

impl candle_nn::var_builder::SimpleBackend for MappedTensors {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        of_shape(self.get_unchecked(name, dtype, device)?, name, &shape)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.0.tensor(name).map_err(lookup_error)?;
        let values = self.0.vector(name).map_err(lookup_error)?;
        let vector = self.0.content.tensor_infos[name].shape.rank() == 1;
        let tensor = if vector {
            Tensor::from_vec(values, t.cols, device)?
        } else {
            Tensor::from_vec(values, (t.rows, t.cols), device)?
        };
        tensor.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.has(name)
    }
}

/// `tensor`, read as `name`, when it has `shape`; else an error naming both.
pub(super) fn of_shape(
    tensor: Tensor,
    name: &str,
    shape: &candle_core::Shape,
) -> candle_core::Result<Tensor> {
    if tensor.shape() != shape {
        candle_core::bail!(
            "tensor `{name}` has shape {:?} in the file; expected {shape:?}",
            tensor.shape()
        );
    }
    Ok(tensor)
}

/// The shard files a `model.safetensors.index.json` names (its
/// `weight_map`'s values, once each), each a plain file name in `dir`.
fn shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, BackendError> {
    let text = std::fs::read_to_string(index).map_err(|e| BackendError::load(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BackendError::load(index, e))?;
    let map = value["weight_map"]
        .as_object()
        .ok_or_else(|| BackendError::load(index, "it has no weight_map"))?;
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(BackendError::load(index, "its weight_map names no file"));
    }
    names
        .into_iter()
        .map(|name| {
            // A shard is a file beside the index, never a path elsewhere.
            crate::store::check_file_name(name).map_err(|e| BackendError::load(index, e))?;
            if name.contains('/') || name.contains('\\') {
                return Err(BackendError::load(
                    index,
                    format!("shard `{name}` is not a plain file name"),
                ));
            }
            Ok(dir.join(name))
        })
        .collect()
}

/// A linear layer `y = x Wᵀ (+ b)`: on [`PackedF32`], whose weights are
/// packed once at load (candle's matmul repacks them at every call, which
/// costs more than the product itself for a decoder step's few dozen rows),
/// on [`PackedI8`] (the same, quantized to int8), or on a GGUF file's matrix
/// in its stored type (Q4_K, Q6_K, Q8_0, …), read in place by the kernels'
/// quantized products.
pub(super) enum Dense {
    /// f32 weights, packed.
    Packed(PackedF32),
    /// int8 weights, packed.
    Int8(PackedI8),
    /// A matrix of a mapped GGUF file, and its bias in f32.
    Mapped {
        file: Arc<GgufFile>,
        weight: TensorRef,
        bias: Option<Vec<f32>>,
    },
}

impl Dense {
    /// `weight` (`rows × cols`) and, when `bias`, `bias` under `vb`, kept
    /// as `storage` says.
    pub(super) fn load(
        cols: usize,
        rows: usize,
        vb: VarBuilder,
        bias: bool,
        storage: Storage,
    ) -> candle_core::Result<Self> {
        let b = if bias {
            Some(vb.get(rows, "bias")?.to_vec1::<f32>()?)
        } else {
            None
        };
        if let Storage::Mapped(file) = storage {
            return Self::mapped(file, &format!("{}.weight", vb.prefix()), rows, cols, b);
        }
        let w = vb.get((rows, cols), "weight")?;
        Self::new(&w, b.as_deref(), storage)
    }

    /// The matrix `w` (`rows × cols`) and `bias` packed as `storage` says
    /// (f32 for a mapped file's: it has no such matrix).
    pub(super) fn new(
        w: &Tensor,
        bias: Option<&[f32]>,
        storage: Storage,
    ) -> candle_core::Result<Self> {
        let (rows, cols) = w.dims2()?;
        with_values(w, |w| match storage {
            Storage::Int8 if cols <= PackedI8::MAX_COLS => {
                Dense::Int8(PackedI8::new(w, bias, rows, cols))
            }
            _ => Dense::Packed(PackedF32::new(w, bias, rows, cols)),
        })
    }

    /// The matrix `name` of a mapped file, checked to be `rows × cols`.
    pub(super) fn mapped(
        file: &Arc<GgufFile>,
        name: &str,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> candle_core::Result<Self> {
        Ok(Dense::Mapped {
            file: Arc::clone(file),
            weight: matrix_ref(file, name, rows, cols)?,
            bias,
        })
    }

    /// Output features.
    pub(super) fn rows(&self) -> usize {
        match self {
            Dense::Packed(p) => p.rows(),
            Dense::Int8(p) => p.rows(),
            Dense::Mapped { weight, .. } => weight.rows,
        }
    }

    /// Row `r` of the weights (`cols` values, as the layer holds them)
    /// into `out`: an embedding lookup in a table kept as an output layer.
    /// Panics unless `r < rows` and `out` holds `cols` values.
    pub(super) fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Dense::Packed(p) => p.row(r, out),
            Dense::Int8(p) => p.row(r, out),
            Dense::Mapped { file, weight, .. } => file.matrix(weight).dequantize_row(r, out),
        }
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
            self.apply_rows(&input, n * t, epilogue),
            (n, t, self.rows()),
            x.device(),
        )
    }

    /// `rows` rows of `cols` values (flat) → `rows` rows of outputs, with
    /// `epilogue` applied.
    pub(super) fn apply_rows(&self, x: &[f32], rows: usize, epilogue: Epilogue) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.rows()];
        self.write_rows(x, rows, epilogue, &mut out);
        out
    }

    /// [`Dense::apply_rows`] into `out`, made `rows` rows of outputs long:
    /// a buffer reused from layer to layer is neither reallocated nor
    /// cleared (every output is written).
    pub(super) fn write_into(
        &self,
        x: &[f32],
        rows: usize,
        epilogue: Epilogue,
        out: &mut Vec<f32>,
    ) {
        out.resize(rows * self.rows(), 0.0);
        self.write_rows(x, rows, epilogue, out);
    }

    /// [`Dense::apply_rows`] into `out` (`rows` rows of outputs).
    pub(super) fn write_rows(&self, x: &[f32], rows: usize, epilogue: Epilogue, out: &mut [f32]) {
        match self {
            Dense::Packed(p) => p.forward_then(x, rows, out, epilogue),
            Dense::Int8(p) => p.forward_then(x, rows, out, epilogue),
            Dense::Mapped { file, weight, bias } => {
                let matrix = file.matrix(weight);
                let mut acts = Activations::new();
                acts.quantize(x, rows, weight.cols, weight.qtype);
                kernels::matmul(&matrix, &acts, out);
                out.par_chunks_mut(weight.rows).for_each(|row| {
                    if let Some(b) = bias {
                        for (v, b) in row.iter_mut().zip(b) {
                            *v += b;
                        }
                    }
                    if epilogue != Epilogue::None {
                        for v in row.iter_mut() {
                            *v = epilogue.apply(*v);
                        }
                    }
                });
            }
        }
    }
}

/// `f` of the values of `t` in f32, row-major: borrowed from the tensor's
/// own storage when it is an f32 tensor on the CPU laid out in order (no
/// copy: an output layer of 256206 rows is 1 GB), else a copy.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[start..end]));
        }
    }
    Ok(f(&t
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?))
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
                self.norm_row(xr);
            });
    }

    /// `norm(x[r])` for every row, into a new buffer (a pre-norm layer's
    /// start).
    pub(super) fn norm(&self, x: &[f32]) -> Vec<f32> {
        let mut out = x.to_vec();
        out.par_chunks_mut(self.gamma.len())
            .for_each(|row| self.norm_row(row));
        out
    }

    fn norm_row(&self, xr: &mut [f32]) {
        let d = self.gamma.len() as f32;
        let mean = xr.iter().sum::<f32>() / d;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, g), b) in xr.iter_mut().zip(&self.gamma).zip(&self.beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// The activation transformers' `ACT2FN` names, run as the epilogue of the
/// product before it.
pub(super) fn activation(name: &str) -> Result<Epilogue, BackendError> {
    Ok(match name {
        "swish" | "silu" => Epilogue::Silu,
        "gelu" => Epilogue::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => Epilogue::GeluTanh,
        "relu" => Epilogue::Relu,
        other => {
            return Err(BackendError::Config(format!(
                "activation `{other}` is not supported"
            )))
        }
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
pub(super) struct AttentionSpec<'a> {
    pub(super) d_model: usize,
    pub(super) heads: usize,
    pub(super) head_dim: usize,
    /// The four projections' names: query, key, value, output.
    pub(super) names: [&'static str; 4],
    pub(super) bias: bool,
    pub(super) scale: f64,
    /// How the projections keep their weights.
    pub(super) storage: Storage<'a>,
}

impl Attention {
    pub(super) fn load(vb: VarBuilder, spec: &AttentionSpec) -> candle_core::Result<Self> {
        let (d, inner) = (spec.d_model, spec.heads * spec.head_dim);
        let [q, k, v, o] = spec.names;
        Ok(Self {
            q: Dense::load(d, inner, vb.pp(q), spec.bias, spec.storage)?,
            k: Dense::load(d, inner, vb.pp(k), spec.bias, spec.storage)?,
            v: Dense::load(d, inner, vb.pp(v), spec.bias, spec.storage)?,
            out: Dense::load(inner, d, vb.pp(o), spec.bias, spec.storage)?,
            heads: spec.heads,
            head_dim: spec.head_dim,
            scale: spec.scale,
        })
    }

    /// `[n, t, heads · head_dim]` → `[n, heads, t, head_dim]`.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        split_heads(x, self.heads, self.head_dim)
    }

    /// Keys and values of `x` (`rows` rows of `d`, flat): `rows` rows of
    /// `heads · head_dim` each.
    pub(super) fn project_kv(&self, x: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
        (
            self.k.apply_rows(x, rows, Epilogue::None),
            self.v.apply_rows(x, rows, Epilogue::None),
        )
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
        let q = self.split(&self.q.forward(x)?)?;
        self.out.forward(&attend_heads(&q, k, v, self.scale, bias)?)
    }
}

/// `[n, t, heads · head_dim]` → `[n, heads, t, head_dim]`, contiguous.
pub(super) fn split_heads(
    x: &Tensor,
    heads: usize,
    head_dim: usize,
) -> candle_core::Result<Tensor> {
    let (n, t, _) = x.dims3()?;
    x.reshape((n, t, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// Attention over split heads: `softmax(q kᵀ · scale + bias) v` for `q`
/// (`[n, heads, t, hd]`) over `k`, `v` (`[n, heads, s, hd]`), `bias`
/// broadcast to `[n, heads, t, s]`; the heads joined again,
/// `[n, t, heads · hd]`. Candle ops only: the CPU path's T5 encoder and
/// every layer of the portable path run it.
pub(super) fn attend_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (n, heads, t, hd) = q.dims4()?;
    let mut scores = q.matmul(&k.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(v)?
        .transpose(1, 2)?
        .reshape((n, t, heads * hd))
}

/// Keys and values of several sequences in [`kernels::attention`]'s
/// layout: for each (sequence, head), the keys transposed (`head_dim ×
/// stride`) and the values (`stride × head_dim`), where `stride` is the
/// longest sequence rounded up to [`KEY_BLOCK`] and positions past a
/// sequence's end hold zeros (read with weight exactly zero).
#[derive(Default)]
pub(super) struct HeadKv {
    kt: Vec<f32>,
    v: Vec<f32>,
    lens: Vec<usize>,
    heads: usize,
    head_dim: usize,
    stride: usize,
}

impl HeadKv {
    /// From projected keys and values (`Σ lens` rows of `heads · head_dim`,
    /// the sequences one after the other, no padding).
    fn new(k: &[f32], v: &[f32], lens: &[usize], heads: usize, head_dim: usize) -> Self {
        let mut kv = Self::default();
        kv.fill(k, v, lens, heads, head_dim);
        kv
    }

    /// [`HeadKv::new`] in this one's buffers (reallocated only to grow).
    fn fill(&mut self, k: &[f32], v: &[f32], lens: &[usize], heads: usize, head_dim: usize) {
        /// Positions transposed together: their keys' rows stay in the L1
        /// cache while each dimension's stretch of them is written.
        const TILE: usize = 16;
        let inner = heads * head_dim;
        let stride = lens
            .iter()
            .max()
            .map_or(0, |&m| m.div_ceil(KEY_BLOCK) * KEY_BLOCK);
        let block = head_dim * stride;
        let offsets = offsets(lens);
        self.kt.resize(lens.len() * heads * block, 0.0);
        self.v.resize(lens.len() * heads * block, 0.0);
        self.kt
            .par_chunks_mut(block.max(1))
            .zip(self.v.par_chunks_mut(block.max(1)))
            .enumerate()
            .for_each(|(ih, (kt, vv))| {
                let (i, h) = (ih / heads, ih % heads);
                let (len, first) = (lens[i], offsets[i] * inner + h * head_dim);
                for j0 in (0..len).step_by(TILE) {
                    let n = TILE.min(len - j0);
                    for d in 0..head_dim {
                        let to = &mut kt[d * stride + j0..d * stride + j0 + n];
                        for (jj, t) in to.iter_mut().enumerate() {
                            *t = k[first + (j0 + jj) * inner + d];
                        }
                    }
                }
                for j in 0..len {
                    let row = first + j * inner;
                    vv[j * head_dim..(j + 1) * head_dim].copy_from_slice(&v[row..row + head_dim]);
                }
                // Past the sequence: zeros (read with weight exactly zero).
                for d in 0..head_dim {
                    kt[d * stride + len..(d + 1) * stride].fill(0.0);
                }
                vv[len * head_dim..].fill(0.0);
            });
        self.lens = lens.to_vec();
        (self.heads, self.head_dim, self.stride) = (heads, head_dim, stride);
    }

    fn view(&self) -> KvView<'_> {
        KvView {
            kt: &self.kt,
            v: &self.v,
            lens: &self.lens,
            heads: self.heads,
            head_dim: self.head_dim,
            stride: self.stride,
        }
    }
}

/// Keys and values of several sequences in [`HeadKv`]'s layout, borrowed.
#[derive(Clone, Copy)]
pub(super) struct KvView<'a> {
    kt: &'a [f32],
    v: &'a [f32],
    lens: &'a [usize],
    heads: usize,
    head_dim: usize,
    stride: usize,
}

impl KvView<'_> {
    fn keys(&self, sequence: usize, head: usize) -> Keys<'_> {
        let block = self.head_dim * self.stride;
        let at = (sequence * self.heads + head) * block;
        Keys {
            kt: &self.kt[at..at + block],
            v: &self.v[at..at + block],
            stride: self.stride,
        }
    }
}

/// Where each sequence starts among rows that hold them one after the other.
fn offsets(lens: &[usize]) -> Vec<usize> {
    lens.iter()
        .scan(0, |at, &l| {
            let start = *at;
            *at += l;
            Some(start)
        })
        .collect()
}

impl Attention {
    /// Keys and values of `x` (`Σ lens` rows of `d`, the sequences one
    /// after the other) in the layout [`Attention::attend_rows`] reads.
    pub(super) fn head_kv(&self, x: &[f32], lens: &[usize]) -> HeadKv {
        let (k, v) = self.project_kv(x, lens.iter().sum());
        HeadKv::new(&k, &v, lens, self.heads, self.head_dim)
    }

    /// Attention of `x`'s rows (`rows` rows of `d`, flat) over `kv`, where
    /// row `r` is a query of sequence `sequence[r]` and sees all of it (no
    /// other mask, no bias); then the output projection. Each (sequence,
    /// head) runs on [`kernels::attention`] (streaming softmax), in
    /// parallel.
    pub(super) fn attend_rows(&self, x: &[f32], sequence: &[usize], kv: KvView<'_>) -> Vec<f32> {
        let mut out = Vec::new();
        self.attend_rows_into(x, sequence, kv, &mut Vec::new(), &mut Vec::new(), &mut out);
        out
    }

    /// [`Attention::attend_rows`] into `out`, with `q` and `heads` the
    /// buffers of the queries and of the heads' outputs (all reused).
    fn attend_rows_into(
        &self,
        x: &[f32],
        sequence: &[usize],
        kv: KvView<'_>,
        q: &mut Vec<f32>,
        heads_out: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        let (heads, hd) = (self.heads, self.head_dim);
        let inner = heads * hd;
        let rows = sequence.len();
        self.q.write_into(x, rows, Epilogue::None, q);
        let q = &*q;
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); kv.lens.len()];
        for (r, &i) in sequence.iter().enumerate() {
            members[i].push(r);
        }
        // A task per sequence and group of heads, with at least
        // TASK_PAIRS (query, head) pairs where the sequence has the heads
        // for it: a decoder step's one query per sequence would otherwise
        // make tasks of a few thousand multiply-adds, fewer than the task
        // costs to start.
        const TASK_PAIRS: usize = 64;
        let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..kv.lens.len())
            .filter(|&i| !members[i].is_empty())
            .flat_map(|i| {
                let per = (TASK_PAIRS / members[i].len()).clamp(1, heads);
                (0..heads)
                    .step_by(per)
                    .map(move |h0| (i, h0..(h0 + per).min(heads)))
            })
            .collect();
        let scale = self.scale as f32;
        let per_task: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|(i, hs)| {
                let rows = &members[*i];
                let size = rows.len() * hd;
                let limits = vec![kv.lens[*i]; rows.len()];
                let mut qq = Vec::with_capacity(size);
                let mut o = vec![0f32; size * hs.len()];
                for (h, o) in hs.clone().zip(o.chunks_mut(size)) {
                    qq.clear();
                    for &r in rows {
                        qq.extend_from_slice(&q[r * inner + h * hd..r * inner + (h + 1) * hd]);
                    }
                    kernels::attention(&qq, &limits, kv.keys(*i, h), hd, scale, o);
                }
                o
            })
            .collect();
        heads_out.resize(rows * inner, 0.0);
        for ((i, hs), o) in tasks.iter().zip(&per_task) {
            let size = members[*i].len() * hd;
            for (h, o) in hs.clone().zip(o.chunks(size)) {
                for (&r, o) in members[*i].iter().zip(o.chunks(hd)) {
                    heads_out[r * inner + h * hd..r * inner + (h + 1) * hd].copy_from_slice(o);
                }
            }
        }
        self.out.write_into(heads_out, rows, Epilogue::None, out);
    }

    /// Self-attention of `x` (`Σ lens` rows of `d`, the sequences one
    /// after the other, no padding) within each sequence: the encoder's,
    /// into `scratch.attn`.
    pub(super) fn attend_within(&self, x: &[f32], lens: &[usize], scratch: &mut Scratch) {
        let sequence: Vec<usize> = lens
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| std::iter::repeat_n(i, l))
            .collect();
        let rows = sequence.len();
        let s = scratch;
        self.k.write_into(x, rows, Epilogue::None, &mut s.k);
        self.v.write_into(x, rows, Epilogue::None, &mut s.v);
        s.kv.fill(&s.k, &s.v, lens, self.heads, self.head_dim);
        self.attend_rows_into(
            x,
            &sequence,
            s.kv.view(),
            &mut s.q,
            &mut s.heads,
            &mut s.attn,
        );
    }
}

/// The buffers an encoder's layers write, reused from layer to layer: a
/// long input's activations (tens of megabytes per product) are allocated,
/// and their pages cleared, once per input instead of once per layer.
#[derive(Default)]
pub(super) struct Scratch {
    kv: HeadKv,
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>,
    heads: Vec<f32>,
    /// The last [`Attention::attend_within`]'s output.
    pub(super) attn: Vec<f32>,
    /// The feed-forward block's hidden layer and output.
    pub(super) hidden: Vec<f32>,
    pub(super) ffn: Vec<f32>,
}

/// The rows of `hidden` (`[n, s, d]`, right-padded) that hold tokens, input
/// after input: `Σ lens` rows of `d`.
pub(super) fn unpad(hidden: &Tensor, lens: &[usize]) -> candle_core::Result<Vec<f32>> {
    let (_, s, d) = hidden.dims3()?;
    let all: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
    let mut rows = Vec::with_capacity(lens.iter().sum::<usize>() * d);
    for (i, &l) in lens.iter().enumerate() {
        rows.extend_from_slice(&all[i * s * d..(i * s + l) * d]);
    }
    Ok(rows)
}

/// `rows` (`Σ lens` rows of `d`, input after input) right-padded with zero
/// rows into `[n, max lens, d]`.
pub(super) fn repad(
    rows: &[f32],
    lens: &[usize],
    d: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let s = lens.iter().copied().max().unwrap_or(0);
    let mut all = vec![0f32; lens.len() * s * d];
    for ((i, &l), at) in lens.iter().enumerate().zip(offsets(lens)) {
        all[i * s * d..(i * s + l) * d].copy_from_slice(&rows[at * d..(at + l) * d]);
    }
    Tensor::from_vec(all, (lens.len(), s, d), device)
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
/// and values so far and the cross-attention ones (once per input, however
/// many rows decode it), and the input each row belongs to.
pub struct DecoderState {
    self_kv: Vec<SelfKv>,
    /// The cache rows to keep, in their new order, since the last
    /// [`DecoderState::select`]: each layer applies them in the copy that
    /// appends its next keys and values ([`SelfKv::push`]).
    keep: Option<Vec<usize>>,
    cross_kv: Vec<HeadKv>,
    /// The input each row belongs to.
    row_input: Vec<usize>,
    /// Tokens decoded so far.
    len: usize,
}

impl DecoderState {
    /// `rows_per_input` rows per input over the encoder's `hidden` states
    /// (`Σ lens` rows of `d`, input after input, no padding), with each
    /// cross-attention's keys and values computed once.
    pub(super) fn new<'a>(
        cross: impl ExactSizeIterator<Item = &'a Attention>,
        hidden: &[f32],
        lens: &[usize],
        rows_per_input: usize,
    ) -> Self {
        let row_input: Vec<usize> = (0..lens.len())
            .flat_map(|i| std::iter::repeat_n(i, rows_per_input))
            .collect();
        let layers = cross.len();
        Self {
            self_kv: (0..layers).map(|_| SelfKv::default()).collect(),
            keep: None,
            cross_kv: cross.map(|attn| attn.head_kv(hidden, lens)).collect(),
            row_input,
            len: 0,
        }
    }

    /// Tokens decoded so far (the position of the next one).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Counts a decoded token (after every layer has run, so every cache
    /// has had the rows kept applied).
    pub(super) fn advance(&mut self) {
        self.len += 1;
        self.keep = None;
    }

    /// Appends this step's keys and values of layer `layer` (one position
    /// per row: `rows` rows of `heads · head_dim`, flat) to its cache, its
    /// rows reordered first after a [`DecoderState::select`].
    pub(super) fn push_self(&mut self, layer: usize, attn: &Attention, k: &[f32], v: &[f32]) {
        let keep = self.keep.as_deref();
        self.self_kv[layer].push(keep, attn.heads, attn.head_dim, k, v);
    }

    /// Layer `layer`'s self-attention `attn` of `x` (`rows` rows of `d`,
    /// flat, a row per row of the state, this step's keys and values
    /// pushed) over the row's positions so far, then the output
    /// projection.
    pub(super) fn self_attend(&self, layer: usize, attn: &Attention, x: &[f32]) -> Vec<f32> {
        let (kv, slot) = self.self_kv[layer].view();
        attn.attend_rows(x, slot, kv)
    }

    /// Layer `layer`'s self-attention keys and values as tensors
    /// (`[rows, heads, len, head_dim]` each), for attention with a bias.
    pub(super) fn self_tensors(
        &self,
        layer: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        self.self_kv[layer].tensors(device)
    }

    /// Layer `layer`'s cross-attention `attn` of `x` (`[rows, 1, d]`, a
    /// row per row of the state) over its input's encoder states.
    pub(super) fn cross_attend(
        &self,
        layer: usize,
        attn: &Attention,
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (rows, t, d) = x.dims3()?;
        let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let sequence: Vec<usize> = (self.row_input.iter())
            .flat_map(|&i| std::iter::repeat_n(i, t))
            .collect();
        let out = attn.attend_rows(&flat, &sequence, self.cross_kv[layer].view());
        Tensor::from_vec(out, (rows, t, d), x.device())
    }

    /// Keeps rows `rows` (old indices, in their new order; repeats
    /// allowed). The self-attention caches are reordered by the next step,
    /// as it appends to them; the cross-attention keys and values stay:
    /// they belong to the inputs.
    pub(super) fn select(&mut self, rows: &[usize]) -> Result<(), BackendError> {
        self.keep = Some(match &self.keep {
            Some(keep) => rows.iter().map(|&r| keep[r]).collect(),
            None => rows.to_vec(),
        });
        self.row_input = rows.iter().map(|&r| self.row_input[r]).collect();
        Ok(())
    }
}

/// One decoder layer's self-attention keys and values, in
/// [`kernels::attention`]'s layout: per (slot, head), the keys transposed
/// over `stride` positions and the values by position, each row in a slot
/// of its own. A step writes its position in place. A beam reorder moves
/// no row whose parent it keeps once: the first child of each kept row takes
/// over its slot, and only the further children are copied, into the slots
/// of rows no longer kept. A full cache (whose stride then doubles) or a
/// change in the number of rows copies every row into a second buffer, kept
/// for the next time, so a step neither allocates nor zeroes memory.
#[derive(Default)]
pub(super) struct SelfKv {
    /// The slots as sequences (every one `len` positions long).
    kv: HeadKv,
    /// The other buffers, for the next copy.
    spare: (Vec<f32>, Vec<f32>),
    /// The slot each row is in (a permutation of the rows).
    slot: Vec<usize>,
    rows: usize,
    len: usize,
}

impl SelfKv {
    /// Appends one position per row (`k`, `v`: rows of `heads · head_dim`),
    /// the rows `keep` (old indices, in their new order) first.
    fn push(
        &mut self,
        keep: Option<&[usize]>,
        heads: usize,
        head_dim: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let inner = heads * head_dim;
        let rows = k.len() / inner.max(1);
        assert_eq!(v.len(), k.len(), "keys and values of different sizes");
        if self.len == 0 {
            (self.kv.heads, self.kv.head_dim, self.kv.stride) = (heads, head_dim, 0);
        }
        let full = self.len + 1 > self.kv.stride;
        if full || rows != self.rows {
            let stride = if full {
                (self.kv.stride * 2).max(KEY_BLOCK)
            } else {
                self.kv.stride
            };
            self.copy_rows(keep, rows, stride);
        } else if let Some(keep) = keep {
            self.reslot(keep);
        }
        let mut row_of = vec![0; rows];
        for (r, &s) in self.slot.iter().enumerate() {
            row_of[s] = r;
        }
        let (len, stride, block) = (self.len, self.kv.stride, head_dim * self.kv.stride);
        self.kv
            .kt
            .par_chunks_mut(block)
            .zip(self.kv.v.par_chunks_mut(block))
            .enumerate()
            .for_each(|(sh, (kt, vv))| {
                let at = row_of[sh / heads] * inner + (sh % heads) * head_dim;
                for (d, &x) in k[at..at + head_dim].iter().enumerate() {
                    kt[d * stride + len] = x;
                }
                vv[len * head_dim..(len + 1) * head_dim].copy_from_slice(&v[at..at + head_dim]);
            });
        self.len += 1;
        self.kv.lens = vec![self.len; rows];
    }

    /// The slots as sequences of [`kernels::attention`], a row's slot
    /// standing for the row.
    fn view(&self) -> (KvView<'_>, &[usize]) {
        (self.kv.view(), &self.slot)
    }

    /// Row `r` becomes the old row `keep[r]`, as many rows as before, in
    /// place: each kept row's first child takes over its slot; a further
    /// child is copied into the slot of a row not kept.
    fn reslot(&mut self, keep: &[usize]) {
        let parent: Vec<usize> = keep.iter().map(|&r| self.slot[r]).collect();
        let mut taken = vec![false; self.rows];
        let mut slot = vec![usize::MAX; self.rows];
        for (r, &p) in parent.iter().enumerate() {
            if !taken[p] {
                taken[p] = true;
                slot[r] = p;
            }
        }
        // As many free slots as children still without one.
        let mut free = (0..self.rows).filter(|&s| !taken[s]);
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (r, s) in slot.iter_mut().enumerate() {
            if *s == usize::MAX {
                *s = free.next().expect("a free slot per child without one");
                copies.push((parent[r], *s));
            }
        }
        self.slot = slot;
        if copies.is_empty() || self.len == 0 {
            return;
        }
        let (heads, hd, stride, len) = (self.kv.heads, self.kv.head_dim, self.kv.stride, self.len);
        let block = heads * hd * stride;
        for (buffer, transposed) in [(&mut self.kv.kt, true), (&mut self.kv.v, false)] {
            // The targets are slots no row was kept in, so never a source.
            let mut slots: Vec<Option<&mut [f32]>> = buffer.chunks_mut(block).map(Some).collect();
            let targets: Vec<(&mut [f32], usize)> = copies
                .iter()
                .map(|&(from, to)| (slots[to].take().expect("each free slot once"), from))
                .collect();
            let sources: Vec<Option<&[f32]>> = slots.into_iter().map(|s| s.map(|s| &*s)).collect();
            targets.into_par_iter().for_each(|(to, from)| {
                let from = sources[from].expect("a source is a kept slot");
                // The positions so far only: keys by dimension, values at
                // the start of each head's block.
                for (to, from) in to.chunks_mut(block / heads).zip(from.chunks(block / heads)) {
                    if transposed {
                        for (to, from) in to.chunks_mut(stride).zip(from.chunks(stride)) {
                            to[..len].copy_from_slice(&from[..len]);
                        }
                    } else {
                        to[..len * hd].copy_from_slice(&from[..len * hd]);
                    }
                }
            });
        }
    }

    /// Makes the cache `rows` rows over `stride` positions, row `r` the old
    /// row `keep[r]` (`r` when `None`), each in the slot of its index.
    fn copy_rows(&mut self, keep: Option<&[usize]>, rows: usize, stride: usize) {
        let (heads, hd, len) = (self.kv.heads, self.kv.head_dim, self.len);
        let (old_stride, old_block) = (self.kv.stride, hd * self.kv.stride);
        let block = hd * stride;
        let (mut kt, mut vv) = std::mem::take(&mut self.spare);
        // What a buffer held past a row's positions is read with weight
        // zero: it only needs to be finite, which old keys and values are.
        kt.resize(rows * heads * block, 0.0);
        vv.resize(rows * heads * block, 0.0);
        let (old_kt, old_v, slot) = (&self.kv.kt, &self.kv.v, &self.slot);
        if len > 0 {
            kt.par_chunks_mut(block)
                .zip(vv.par_chunks_mut(block))
                .enumerate()
                .for_each(|(rh, (kt, vv))| {
                    let (r, h) = (rh / heads, rh % heads);
                    let from = slot[keep.map_or(r, |keep| keep[r])];
                    let at = (from * heads + h) * old_block;
                    for d in 0..hd {
                        let from = at + d * old_stride;
                        kt[d * stride..d * stride + len].copy_from_slice(&old_kt[from..from + len]);
                    }
                    vv[..len * hd].copy_from_slice(&old_v[at..at + len * hd]);
                });
        }
        self.spare = (
            std::mem::replace(&mut self.kv.kt, kt),
            std::mem::replace(&mut self.kv.v, vv),
        );
        (self.rows, self.kv.stride) = (rows, stride);
        self.slot = (0..rows).collect();
    }

    /// `[rows, heads, len, head_dim]` keys and values, row by row.
    fn tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (heads, hd, len, stride) = (self.kv.heads, self.kv.head_dim, self.len, self.kv.stride);
        let block = hd * stride;
        let mut k = Vec::with_capacity(self.rows * heads * len * hd);
        let mut v = Vec::with_capacity(k.capacity());
        for &s in &self.slot {
            for h in 0..heads {
                let at = (s * heads + h) * block;
                let (kt, vv) = (&self.kv.kt[at..at + block], &self.kv.v[at..at + block]);
                for j in 0..len {
                    k.extend((0..hd).map(|d| kt[d * stride + j]));
                }
                v.extend_from_slice(&vv[..len * hd]);
            }
        }
        let shape = (self.rows, heads, len, hd);
        Ok((
            Tensor::from_vec(k, shape, device)?,
            Tensor::from_vec(v, shape, device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, heads, len, hd]` tensor whose values say where they are.
    fn cache(rows: usize, heads: usize, len: usize, hd: usize, base: f32) -> Tensor {
        let n = rows * heads * len * hd;
        let values: Vec<f32> = (0..n).map(|i| base + i as f32).collect();
        Tensor::from_vec(values, (rows, heads, len, hd), &Device::Cpu).unwrap()
    }

    /// What candle's own index-select and concatenation give.
    fn reference(old: &Tensor, keep: Option<&[usize]>, new: &Tensor) -> Tensor {
        let old = match keep {
            Some(keep) => {
                let index: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
                let index = Tensor::new(index.as_slice(), &Device::Cpu).unwrap();
                old.contiguous().unwrap().index_select(&index, 0).unwrap()
            }
            None => old.clone(),
        };
        Tensor::cat(&[&old, new], 2).unwrap()
    }

    /// `[rows, heads, 1, hd]` as the flat rows `push` takes.
    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn pushes_reorder_and_grow_as_index_select_then_cat() {
        let (heads, hd) = (3, 2);
        let mut kv = SelfKv::default();
        let mut want: Option<(Tensor, Tensor)> = None;
        let mut rows = 4;
        // 150 positions: the stride doubles past 64 and 128; rows are
        // reordered, repeated and dropped on the way.
        for step in 0..150 {
            let keep: Option<Vec<usize>> = match step % 7 {
                3 => Some((0..rows).rev().collect()),
                // Some rows kept twice, some dropped, as a beam search does.
                4 if rows > 2 => Some((0..rows).map(|r| [1, 1, 0][r % 3].min(rows - 1)).collect()),
                5 if rows > 1 => Some(vec![rows - 1; rows - 1]),
                6 => Some(vec![0; rows]),
                _ => None,
            };
            let new_rows = keep.as_ref().map_or(rows, Vec::len);
            let k = cache(new_rows, heads, 1, hd, 1000.0 * step as f32);
            let v = cache(new_rows, heads, 1, hd, -1000.0 * step as f32);
            kv.push(keep.as_deref(), heads, hd, &flat(&k), &flat(&v));
            want = Some(match want {
                None => (k, v),
                Some((wk, wv)) => (
                    reference(&wk, keep.as_deref(), &k),
                    reference(&wv, keep.as_deref(), &v),
                ),
            });
            rows = new_rows;
            let (gk, gv) = kv.tensors(&Device::Cpu).unwrap();
            let (wk, wv) = want.as_ref().unwrap();
            assert_eq!(gk.dims(), wk.dims(), "step {step}");
            assert_eq!(flat(&gk), flat(wk), "keys at step {step}");
            assert_eq!(flat(&gv), flat(wv), "values at step {step}");
        }
        assert!(kv.kv.stride >= 150 && kv.kv.stride.is_multiple_of(KEY_BLOCK));
    }

    #[test]
    fn rows_kept_by_two_selects_compose_before_the_next_step() {
        let attn: Vec<&Attention> = Vec::new();
        let mut state = DecoderState::new(attn.into_iter(), &[], &[1, 1, 1], 1);
        let mut layer = SelfKv::default();
        // Rows 0, 1, 2 hold keys 0, 1 / 10, 11 / 20, 21.
        for p in 0..2 {
            let k = [p as f32, 10.0 + p as f32, 20.0 + p as f32];
            layer.push(None, 1, 1, &k, &k);
        }
        state.self_kv = vec![layer];
        state.select(&[2, 0, 1]).unwrap();
        state.select(&[1, 1]).unwrap();
        assert_eq!(state.row_input, [0, 0]);
        let keep = state.keep.clone();
        state.self_kv[0].push(keep.as_deref(), 1, 1, &[100.0, 101.0], &[0.0, 0.0]);
        // Both rows are old row 0 (positions 0, 1), then this step's key.
        let (k, _) = state.self_tensors(0, &Device::Cpu).unwrap();
        assert_eq!(flat(&k), [0.0, 1.0, 100.0, 0.0, 1.0, 101.0]);
        state.advance();
        assert!(state.keep.is_none());
    }
}
