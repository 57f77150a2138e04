//! The forward pass of a quantized decoder-only transformer (Qwen2 and Llama
//! architectures, as laid out in GGUF files), run on the weights where they lie
//! in the mapped file.
//!
//! candle-transformers' quantized models copy every weight into memory, grow the
//! KV cache by concatenation at each step, feed one sequence at a time, and have
//! no fast dot product for some of the types these files hold. This owns the
//! small forward pass instead: quantized matrix products through
//! [`super::kernels`], a KV cache allocated once per sequence, and batches that
//! mix sequences of different lengths and positions (prefill of one prompt, or
//! one new token for each of several sequences, in one pass).

use std::sync::Arc;

use rayon::prelude::*;

use super::kernels::{self, Activations, QMatrix};
use super::weights::{GgufFile, TensorRef};
use super::BackendError;

/// How a layer applies rotary position embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotates pairs `(i, i + d/2)` (GPT-NeoX layout; Qwen2 files).
    Halves,
    /// Rotates adjacent pairs `(2i, 2i + 1)` (Llama files, whose converter permutes q/k).
    Adjacent,
}

/// Shape and hyper-parameters, from the file's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub ffn: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary base frequency.
    pub rope_base: f32,
    /// Rotary layout.
    pub rope_style: RopeStyle,
    /// Vocabulary size (rows of the output matrix).
    pub vocab: usize,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o: TensorRef,
    ffn_norm: Vec<f32>,
    gate: TensorRef,
    up: TensorRef,
    down: TensorRef,
}

/// Keys and values of one sequence, for every layer, allocated once for the
/// sequence's whole length.
///
/// Per layer and key/value head, keys are stored transposed (`[dim][position]`,
/// what [`kernels::attention`] reads) and values by position; both over
/// `stride` positions, the capacity rounded up to [`kernels::KEY_BLOCK`]
/// (the positions not yet filled hold zeros).
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    capacity: usize,
    stride: usize,
    len: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn base(&self, layer: usize, head: usize) -> usize {
        (layer * self.kv_heads + head) * self.stride * self.head_dim
    }

    /// Makes this cache hold the first `len` positions of `other` (a prompt
    /// prefix computed before), as if they had been fed here. Refused
    /// unless this cache is empty, has room, and has `other`'s shape.
    pub fn fill_from(&mut self, other: &KvCache, len: usize) -> Result<(), BackendError> {
        let same_shape = self.kv_heads == other.kv_heads
            && self.head_dim == other.head_dim
            && self.k.len() / self.stride == other.k.len() / other.stride;
        if !self.is_empty() || len > other.len || len > self.capacity || !same_shape {
            return Err(BackendError::Runtime(format!(
                "cannot copy {len} cached positions (of {}) into a cache of {} holding {}",
                other.len, self.capacity, self.len
            )));
        }
        let blocks = self.k.len() / (self.stride * self.head_dim);
        for block in 0..blocks {
            let (to, from) = (
                block * self.stride * self.head_dim,
                block * other.stride * other.head_dim,
            );
            // Keys are stored transposed: one row of positions per dimension.
            for d in 0..self.head_dim {
                let (t, f) = (to + d * self.stride, from + d * other.stride);
                self.k[t..t + len].copy_from_slice(&other.k[f..f + len]);
            }
            let n = len * self.head_dim;
            self.v[to..to + n].copy_from_slice(&other.v[from..from + n]);
        }
        self.len = len;
        Ok(())
    }

    /// Forgets every position from `len` on (the drafted tokens a
    /// speculative step did not keep), zeroing them as a new cache holds
    /// them. Nothing happens when `len` is not below what is filled.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let (stride, hd) = (self.stride, self.head_dim);
        for block in 0..self.k.len() / (stride * hd) {
            let base = block * stride * hd;
            for d in 0..hd {
                let row = base + d * stride;
                self.k[row + len..row + self.len].fill(0.0);
            }
            self.v[base + len * hd..base + self.len * hd].fill(0.0);
        }
        self.len = len;
    }

    /// Stores the key and value of position `pos` for `layer` and `head`.
    fn put(&mut self, layer: usize, head: usize, pos: usize, key: &[f32], value: &[f32]) {
        let (base, hd, stride) = (self.base(layer, head), self.head_dim, self.stride);
        for (d, &k) in key.iter().enumerate() {
            self.k[base + d * stride + pos] = k;
        }
        self.v[base + pos * hd..base + (pos + 1) * hd].copy_from_slice(value);
    }

    /// The keys and values of `layer` and `head`.
    fn keys(&self, layer: usize, head: usize) -> kernels::Keys<'_> {
        let (base, size) = (self.base(layer, head), self.stride * self.head_dim);
        kernels::Keys {
            kt: &self.k[base..base + size],
            v: &self.v[base..base + size],
            stride: self.stride,
        }
    }
}

/// Tokens of one sequence to run in a batch.
pub struct SeqInput<'a> {
    /// The sequence's cache; the tokens go at positions `cache.len()..`.
    pub cache: &'a mut KvCache,
    /// New tokens.
    pub tokens: &'a [u32],
    /// Index (within `tokens`) of the first token whose logits are wanted; the
    /// logits of every token from there to the last are returned (none when
    /// it is `tokens.len()`: a prompt read in chunks needs no logits until
    /// its last one).
    pub logits_from: usize,
}

/// Buffers reused from one forward pass to the next.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    attn_tiles: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rope: Vec<f32>,
    acts: Activations,
    acts2: Activations,
}

/// A loaded decoder: configuration, tensor views and scratch buffers.
pub struct Decoder {
    file: GgufFile,
    cfg: DecoderConfig,
    embed: TensorRef,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: TensorRef,
    scratch: Scratch,
    pool: Arc<rayon::ThreadPool>,
}

fn err(file: &GgufFile, source: impl Into<crate::Cause>) -> BackendError {
    BackendError::load(file.path(), source)
}

impl Decoder {
    /// Reads the configuration and tensor table of a mapped GGUF file.
    /// `threads` is the number of worker threads (0: one per core).
    pub fn new(file: GgufFile, threads: usize) -> Result<Self, BackendError> {
        let md = file.metadata();
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let rope_style = match arch.as_str() {
            "qwen2" => RopeStyle::Halves,
            "llama" => RopeStyle::Adjacent,
            other => {
                return Err(BackendError::UnsupportedArchitecture {
                    path: file.path().display().to_string(),
                    architecture: other.to_string(),
                })
            }
        };
        let get_u = |key: &str| -> Option<usize> {
            md.get(&format!("{arch}.{key}"))
                .and_then(|v| {
                    v.to_u32()
                        .ok()
                        .or_else(|| v.to_u64().ok().map(|x| x as u32))
                })
                .map(|v| v as usize)
        };
        let get_f = |key: &str| -> Option<f32> {
            md.get(&format!("{arch}.{key}"))
                .and_then(|v| v.to_f32().ok())
        };
        let need = |key: &str| {
            get_u(key).ok_or_else(|| err(&file, format!("metadata `{arch}.{key}` is missing")))
        };
        let layers_n = need("block_count")?;
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let kv_heads = get_u("attention.head_count_kv").unwrap_or(heads);
        let ffn = need("feed_forward_length")?;
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(err(
                &file,
                format!("inconsistent attention shape: {hidden} hidden, {heads} heads, {kv_heads} key/value heads"),
            ));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 {
            return Err(err(&file, format!("odd head size {head_dim}")));
        }
        let embed = file.tensor("token_embd.weight")?;
        let output = if file.has("output.weight") {
            file.tensor("output.weight")?
        } else {
            embed
        };
        let cfg = DecoderConfig {
            architecture: arch.clone(),
            layers: layers_n,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_base: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_style,
            vocab: output.rows,
            context_length: get_u("context_length").unwrap_or(2048),
        };
        let kv = kv_heads * head_dim;
        let expect = |t: &TensorRef, name: &str, rows: usize, cols: usize| {
            if t.rows == rows && t.cols == cols {
                Ok(())
            } else {
                Err(err(
                    &file,
                    format!(
                        "tensor `{name}` is {}×{}, expected {rows}×{cols}",
                        t.rows, t.cols
                    ),
                ))
            }
        };
        expect(&embed, "token_embd.weight", embed.rows, hidden)?;
        expect(&output, "output.weight", output.rows, hidden)?;
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, BackendError> {
            let v = file.vector(name)?;
            if v.len() != len {
                return Err(err(
                    &file,
                    format!("tensor `{name}` has {} values, expected {len}", v.len()),
                ));
            }
            Ok(v)
        };
        let bias = |name: &str, len: usize| -> Result<Option<Vec<f32>>, BackendError> {
            if file.has(name) {
                vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(layers_n);
        for i in 0..layers_n {
            let name = |s: &str| format!("blk.{i}.{s}");
            let matrix = |s: &str, rows: usize, cols: usize| -> Result<TensorRef, BackendError> {
                let t = file.tensor(&name(s))?;
                expect(&t, &name(s), rows, cols)?;
                Ok(t)
            };
            layers.push(Layer {
                attn_norm: vector(&name("attn_norm.weight"), hidden)?,
                q: matrix("attn_q.weight", hidden, hidden)?,
                k: matrix("attn_k.weight", kv, hidden)?,
                v: matrix("attn_v.weight", kv, hidden)?,
                q_bias: bias(&name("attn_q.bias"), hidden)?,
                k_bias: bias(&name("attn_k.bias"), kv)?,
                v_bias: bias(&name("attn_v.bias"), kv)?,
                o: matrix("attn_output.weight", hidden, hidden)?,
                ffn_norm: vector(&name("ffn_norm.weight"), hidden)?,
                gate: matrix("ffn_gate.weight", ffn, hidden)?,
                up: matrix("ffn_up.weight", ffn, hidden)?,
                down: matrix("ffn_down.weight", hidden, ffn)?,
            });
        }
        let out_norm = vector("output_norm.weight", hidden)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("precis-llm-{i}"))
            .build()
            .map_err(|e| BackendError::Runtime(format!("cannot start worker threads: {e}")))?;
        Ok(Self {
            file,
            cfg,
            embed,
            layers,
            out_norm,
            output,
            scratch: Scratch::default(),
            pool: Arc::new(pool),
        })
    }

    /// Runs on `other`'s threads from now on: a draft model and its target
    /// take turns, and two pools would keep each other's cores spinning.
    pub fn share_threads(&mut self, other: &Decoder) {
        self.pool = Arc::clone(&other.pool);
    }

    /// The model's shape.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// A KV cache for a sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let stride = capacity.div_ceil(kernels::KEY_BLOCK).max(1) * kernels::KEY_BLOCK;
        let size = self.cfg.layers * self.cfg.kv_heads * stride * self.cfg.head_dim;
        KvCache {
            k: vec![0.0; size],
            v: vec![0.0; size],
            capacity,
            stride,
            len: 0,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// Runs the new tokens of every sequence through the model in one pass,
    /// appends their keys and values to each sequence's cache, and returns, per
    /// sequence, the logits (`vocab` values per token) of its tokens from
    /// `logits_from` on.
    pub fn forward(&mut self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        for s in batch.iter() {
            if s.tokens.is_empty() {
                return Err(BackendError::Runtime(
                    "a sequence in the batch has no tokens".into(),
                ));
            }
            if s.cache.len + s.tokens.len() > s.cache.capacity {
                return Err(BackendError::Runtime(format!(
                    "sequence of {} positions does not fit its cache of {}",
                    s.cache.len + s.tokens.len(),
                    s.cache.capacity
                )));
            }
            if s.logits_from > s.tokens.len() {
                return Err(BackendError::Runtime(
                    "logits requested past the last token".into(),
                ));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= self.embed.rows) {
                return Err(BackendError::Runtime(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.embed.rows
                )));
            }
        }
        let pool = &self.pool;
        let (file, cfg, layers, scratch) = (&self.file, &self.cfg, &self.layers, &mut self.scratch);
        let embed = file.matrix(&self.embed);
        let output = file.matrix(&self.output);
        let out_norm = &self.out_norm;
        pool.install(|| forward(file, cfg, layers, embed, output, out_norm, scratch, batch))
    }
}

/// Where one token of the batch belongs.
#[derive(Clone, Copy)]
struct Slot {
    seq: usize,
    pos: usize,
}

#[allow(clippy::too_many_arguments)]
fn forward(
    file: &GgufFile,
    cfg: &DecoderConfig,
    layers: &[Layer],
    embed: QMatrix<'_>,
    output: QMatrix<'_>,
    out_norm: &[f32],
    s: &mut Scratch,
    batch: &mut [SeqInput<'_>],
) -> Result<Vec<Vec<f32>>, BackendError> {
    let hidden = cfg.hidden;
    let (hd, nkv) = (cfg.head_dim, cfg.kv_heads);
    let kv = nkv * hd;
    let slots: Vec<Slot> = batch
        .iter()
        .enumerate()
        .flat_map(|(seq, b)| {
            (0..b.tokens.len()).map(move |i| Slot {
                seq,
                pos: b.cache.len + i,
            })
        })
        .collect();
    let t_n = slots.len();

    // Embeddings.
    s.x.resize(t_n * hidden, 0.0);
    let tokens: Vec<u32> = batch
        .iter()
        .flat_map(|b| b.tokens.iter().copied())
        .collect();
    par_rows(&mut s.x, hidden, |t, row| {
        embed.dequantize_row(tokens[t] as usize, row)
    });

    // Rotary tables: cos and sin of each token's angles.
    let half = hd / 2;
    s.rope.resize(t_n * hd, 0.0);
    for (t, slot) in slots.iter().enumerate() {
        let row = &mut s.rope[t * hd..(t + 1) * hd];
        for i in 0..half {
            let freq = cfg.rope_base.powf(-(2.0 * i as f32) / hd as f32);
            let angle = slot.pos as f32 * freq;
            row[i] = angle.cos();
            row[half + i] = angle.sin();
        }
    }

    for (li, layer) in layers.iter().enumerate() {
        // Attention block.
        rms_norm(&s.x, &mut s.h, hidden, &layer.attn_norm, cfg.eps);
        s.q.resize(t_n * hidden, 0.0);
        s.k.resize(t_n * kv, 0.0);
        s.v.resize(t_n * kv, 0.0);
        project_many(
            file,
            &[&layer.q, &layer.k, &layer.v],
            &s.h,
            t_n,
            vec![&mut s.q, &mut s.k, &mut s.v],
            &mut s.acts,
            &mut s.acts2,
        );
        add_bias(&mut s.q, layer.q_bias.as_deref());
        add_bias(&mut s.k, layer.k_bias.as_deref());
        add_bias(&mut s.v, layer.v_bias.as_deref());
        let rope = &s.rope;
        par_rows(&mut s.q, hidden, |t, row| {
            for head in row.chunks_exact_mut(hd) {
                rotate(head, &rope[t * hd..(t + 1) * hd], cfg.rope_style);
            }
        });
        par_rows(&mut s.k, kv, |t, row| {
            for head in row.chunks_exact_mut(hd) {
                rotate(head, &rope[t * hd..(t + 1) * hd], cfg.rope_style);
            }
        });
        for (t, slot) in slots.iter().enumerate() {
            let cache = &mut *batch[slot.seq].cache;
            for g in 0..nkv {
                let at = t * kv + g * hd;
                cache.put(li, g, slot.pos, &s.k[at..at + hd], &s.v[at..at + hd]);
            }
        }
        let caches: Vec<&KvCache> = batch.iter().map(|b| &*b.cache).collect();
        s.attn.resize(t_n * hidden, 0.0);
        attention(
            cfg,
            li,
            &s.q,
            &slots,
            &caches,
            &mut s.attn,
            &mut s.attn_tiles,
        );
        project_add(
            file,
            &layer.o,
            &s.attn,
            t_n,
            &mut s.x,
            &mut s.h,
            &mut s.acts,
        );

        // Feed-forward block.
        rms_norm(&s.x, &mut s.h, hidden, &layer.ffn_norm, cfg.eps);
        s.gate.resize(t_n * cfg.ffn, 0.0);
        s.up.resize(t_n * cfg.ffn, 0.0);
        project_many(
            file,
            &[&layer.gate, &layer.up],
            &s.h,
            t_n,
            vec![&mut s.gate, &mut s.up],
            &mut s.acts,
            &mut s.acts2,
        );
        let up = &s.up;
        par_rows(&mut s.gate, cfg.ffn, |t, row| {
            kernels::silu_mul(row, &up[t * cfg.ffn..(t + 1) * cfg.ffn]);
        });
        project_add(
            file,
            &layer.down,
            &s.gate,
            t_n,
            &mut s.x,
            &mut s.h,
            &mut s.acts,
        );
    }

    // Logits of the requested rows.
    let mut rows = Vec::new();
    let mut offset = 0;
    for b in batch.iter() {
        rows.extend(offset + b.logits_from..offset + b.tokens.len());
        offset += b.tokens.len();
    }
    let mut picked = Vec::with_capacity(rows.len() * hidden);
    for &r in &rows {
        picked.extend_from_slice(&s.x[r * hidden..(r + 1) * hidden]);
    }
    let mut logits = vec![0.0; rows.len() * output.rows];
    if !rows.is_empty() {
        rms_norm(&picked, &mut s.h, hidden, out_norm, cfg.eps);
        s.acts.quantize(&s.h, rows.len(), hidden, output.qtype);
        kernels::matmul(&output, &s.acts, &mut logits);
    }

    // Split per sequence and advance the caches.
    let mut out = Vec::with_capacity(batch.len());
    let mut at = 0;
    for b in batch.iter_mut() {
        let n = b.tokens.len() - b.logits_from;
        out.push(logits[at * output.rows..(at + n) * output.rows].to_vec());
        at += n;
        b.cache.len += b.tokens.len();
    }
    Ok(out)
}

/// Runs `f(row_index, row)` over the rows of `buf` (each `width` long), in
/// parallel when there are several.
fn par_rows(buf: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if buf.len() <= width {
        for (t, row) in buf.chunks_exact_mut(width).enumerate() {
            f(t, row);
        }
    } else {
        buf.par_chunks_exact_mut(width)
            .enumerate()
            .for_each(|(t, row)| f(t, row));
    }
}

fn rms_norm(x: &[f32], out: &mut Vec<f32>, width: usize, weight: &[f32], eps: f32) {
    out.resize(x.len(), 0.0);
    par_rows(out, width, |t, row| {
        let src = &x[t * width..(t + 1) * width];
        let ms = src.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in row.iter_mut().zip(src).zip(weight) {
            *o = v * scale * w;
        }
    });
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

/// Rotates one head by the angles whose cos/sin are `table` (`[cos…, sin…]`).
fn rotate(head: &mut [f32], table: &[f32], style: RopeStyle) {
    let half = head.len() / 2;
    let (cos, sin) = table.split_at(half);
    match style {
        RopeStyle::Halves => {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Adjacent => {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// Projections of one input (q, k, v; gate, up): the input is quantized once
/// for the first matrix, and every matrix that reads that layout runs in one
/// parallel region; any other is run on its own quantization.
fn project_many(
    file: &GgufFile,
    w: &[&TensorRef],
    x: &[f32],
    n: usize,
    out: Vec<&mut Vec<f32>>,
    acts: &mut Activations,
    acts2: &mut Activations,
) {
    let m: Vec<QMatrix<'_>> = w.iter().map(|t| file.matrix(t)).collect();
    let (first, cols) = (m[0].qtype, m[0].cols);
    acts.quantize(x, n, cols, first);
    let mut shared = Vec::new();
    for (mm, o) in m.iter().zip(out) {
        if mm.qtype.shares_activations(first) {
            shared.push((*mm, &mut o[..]));
        } else {
            acts2.quantize(x, n, cols, mm.qtype);
            kernels::matmul(mm, acts2, o);
        }
    }
    kernels::matmul_many(&mut shared, acts);
}

/// `x += W · input` (row-wise), using `tmp` for the product.
fn project_add(
    file: &GgufFile,
    w: &TensorRef,
    input: &[f32],
    n: usize,
    x: &mut [f32],
    tmp: &mut Vec<f32>,
    acts: &mut Activations,
) {
    let m = file.matrix(w);
    acts.quantize(input, n, m.cols, m.qtype);
    tmp.resize(n * m.rows, 0.0);
    kernels::matmul(&m, acts, tmp);
    for (a, b) in x.iter_mut().zip(tmp.iter()) {
        *a += b;
    }
}

/// Query tokens of one sequence that share a call to the attention kernel
/// (with every query head of one key/value head).
const QUERY_TOKENS: usize = 16;

/// A call to the attention kernel: the query heads of key/value head `head`
/// for batch tokens `t0..t1`, all of sequence `seq`.
#[derive(Clone, Copy)]
struct AttnTile {
    seq: usize,
    head: usize,
    t0: usize,
    t1: usize,
}

/// Causal attention of every query token over its own sequence's cache.
///
/// Work is split into tiles (up to [`QUERY_TOKENS`] tokens of one sequence ×
/// one key/value head and its query heads), run in parallel, each writing
/// its rows to its own stretch of `tiles`; the rows are then put in place.
fn attention(
    cfg: &DecoderConfig,
    layer: usize,
    q: &[f32],
    slots: &[Slot],
    caches: &[&KvCache],
    out: &mut [f32],
    tiles_out: &mut Vec<f32>,
) {
    let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let (hidden, group) = (nh * hd, nh / nkv);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut tiles = Vec::new();
    let mut t = 0;
    while t < slots.len() {
        let seq = slots[t].seq;
        let end = t + slots[t..].iter().take_while(|s| s.seq == seq).count();
        for t0 in (t..end).step_by(QUERY_TOKENS) {
            let t1 = (t0 + QUERY_TOKENS).min(end);
            tiles.extend((0..nkv).map(|head| AttnTile { seq, head, t0, t1 }));
        }
        t = end;
    }
    tiles_out.resize(slots.len() * hidden, 0.0);
    let mut rest = &mut tiles_out[..];
    let mut parts = Vec::with_capacity(tiles.len());
    for tile in &tiles {
        let (mine, others) = rest.split_at_mut((tile.t1 - tile.t0) * group * hd);
        parts.push((*tile, mine));
        rest = others;
    }
    parts.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(rows, limits), (tile, o)| {
            rows.clear();
            limits.clear();
            for t in tile.t0..tile.t1 {
                let heads = tile.head * group * hd..(tile.head + 1) * group * hd;
                rows.extend_from_slice(&q[t * hidden..(t + 1) * hidden][heads]);
                limits.extend(std::iter::repeat_n(slots[t].pos + 1, group));
            }
            let keys = caches[tile.seq].keys(layer, tile.head);
            kernels::attention(rows, limits, keys, hd, scale, o);
        },
    );
    let mut at = 0;
    for tile in &tiles {
        for t in tile.t0..tile.t1 {
            let dst = t * hidden + tile.head * group * hd;
            let n = group * hd;
            out[dst..dst + n].copy_from_slice(&tiles_out[at..at + n]);
            at += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_length_and_matches_the_definition() {
        let table = {
            let angles = [0.3f32, 1.1];
            let mut t: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            t.extend(angles.iter().map(|a| a.sin()));
            t
        };
        let mut h = [1.0f32, 2.0, 3.0, 4.0];
        rotate(&mut h, &table, RopeStyle::Halves);
        // pair (0, 2) by 0.3, pair (1, 3) by 1.1
        assert!((h[0] - (0.3f32.cos() - 3.0 * 0.3f32.sin())).abs() < 1e-6);
        assert!((h[2] - (0.3f32.sin() + 3.0 * 0.3f32.cos())).abs() < 1e-6);
        let mut a = [1.0f32, 2.0, 3.0, 4.0];
        rotate(&mut a, &table, RopeStyle::Adjacent);
        // pair (0, 1) by 0.3, pair (2, 3) by 1.1
        assert!((a[0] - (0.3f32.cos() - 2.0 * 0.3f32.sin())).abs() < 1e-6);
        assert!((a[3] - (3.0 * 1.1f32.sin() + 4.0 * 1.1f32.cos())).abs() < 1e-6);
        let n: f32 = a.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
    }

    #[test]
    fn rms_norm_scales_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = Vec::new();
        rms_norm(&x, &mut out, 2, &[1.0, 2.0], 1e-9);
        let s = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / s).abs() < 1e-6 && (out[1] - 8.0 / s).abs() < 1e-6);
        assert_eq!(&out[2..], &[0.0, 0.0]);
    }
}
