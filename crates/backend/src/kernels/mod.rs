//! Quantized matrix products for the LLM forward pass, on the weights where
//! they lie in the mapped GGUF file.
//!
//! Why this module exists: the decoder spends nearly all its time multiplying
//! GGML-quantized weight matrices by activations. Weights stay in GGML's block
//! layouts (no repacking, no copy); activations are quantized once per input
//! into the 8-bit format the weight type's dot product wants ([`Activations`]),
//! so a dot product is integer multiply-adds scaled once per block, as in
//! llama.cpp's CPU backend.
//!
//! - `scalar` holds the plain reference of every kernel (quantize, dot,
//!   dequantize), written for clarity. It also runs on CPUs without the SIMD
//!   extensions below and on other architectures.
//! - `x86` holds the AVX2 (with FMA and F16C) kernels and 512-bit AVX-512
//!   VNNI ones, picked once at run time ([`simd_level`]). Each is
//!   property-tested against the scalar reference.
//! - `attn` holds the float work around the products: causal attention over
//!   a KV cache (keys stored transposed, several query rows per pass over
//!   the keys, streaming softmax) and the SiLU gate, vectorised the same way.
//! - `packed` holds dense f32 products with weights packed once into panels
//!   ([`PackedF32`]), for the encoder-decoder models' layers: outer products
//!   on a block of 32 outputs × 8 tokens kept in registers; `int8` holds
//!   their int8 counterpart ([`PackedI8`]): weights quantized per row at
//!   load, activations per token, integer multiply-adds (VNNI or AVX2).
//!
//! A product runs in parallel over contiguous chunks of weight rows on
//! rayon's current pool (small ones on the calling thread). Within a chunk,
//! prefill-sized inputs are tiled: a tile of tokens stays in the core's L2
//! cache while each weight row is read once for it and unpacked once per 8
//! tokens; decode (one token) streams each row once.
//!
//! Every weight row × activation row product is computed the same way
//! whatever the batch and however the rows are split between threads, so a
//! token's result does not depend on what it is batched with (for a given
//! kernel family: the scalar, AVX2 and AVX-512 results differ in float
//! rounding).
//!
//! This is one of the two places where precis uses `unsafe` (the other is the
//! mmap of weight files): SIMD intrinsics, and writes of disjoint output cells
//! from several threads. An `unsafe fn` here is no licence for its body:
//! `unsafe_op_in_unsafe_fn` is denied, so every unsafe operation sits in an
//! `unsafe` block. Where a whole body is one such block, the function's own
//! contract (its `# Safety` section, or the trait method's: the CPU has the
//! instruction set, and the slices and pointers cover the lengths given) is
//! exactly what the operations in it need.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::sync::OnceLock;

use rayon::prelude::*;

pub use attn::{attention, silu_mul, sum_exp, Keys, KEY_BLOCK};
pub use int8::PackedI8;
pub use packed::{Epilogue, PackedF32, PANEL};

mod attn;
mod int8;
mod packed;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// GGML tensor types the LLM backend runs.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 4-bit, blocks of 32 with one f16 scale (values `d · (q - 8)`).
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and minimum (values `d · q + m`).
    Q4_1,
    /// 5-bit, blocks of 32 with one f16 scale (values `d · (q - 16)`).
    Q5_0,
    /// 8-bit, blocks of 32 with one f16 scale.
    Q8_0,
    /// 4-bit k-quant: super-blocks of 256, 6-bit scales and minimums per 32.
    Q4_K,
    /// 5-bit k-quant: as [`QType::Q4_K`] plus a fifth bit per value.
    Q5_K,
    /// 6-bit k-quant: super-blocks of 256, 8-bit scales per 16.
    Q6_K,
}

impl QType {
    /// The type of a GGML type id, if the backend runs it.
    pub fn from_ggml(type_id: u32) -> Option<QType> {
        Some(match type_id {
            0 => QType::F32,
            1 => QType::F16,
            2 => QType::Q4_0,
            3 => QType::Q4_1,
            6 => QType::Q5_0,
            8 => QType::Q8_0,
            12 => QType::Q4_K,
            13 => QType::Q5_K,
            14 => QType::Q6_K,
            _ => return None,
        })
    }

    /// GGML's name of the type (`Q4_K`, `F16`, …).
    pub fn name(self) -> &'static str {
        match self {
            QType::F32 => "F32",
            QType::F16 => "F16",
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q8_0 => "Q8_0",
            QType::Q4_K => "Q4_K",
            QType::Q5_K => "Q5_K",
            QType::Q6_K => "Q6_K",
        }
    }

    /// Values per block: 1 for F32 and F16, 32 or 256 for quantized types.
    pub fn block_len(self) -> usize {
        match self {
            QType::F32 | QType::F16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => 32,
            QType::Q4_K | QType::Q5_K | QType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::F32 => 4,
            QType::F16 => 2,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q8_0 => 34,
            QType::Q4_K => 144,
            QType::Q5_K => 176,
            QType::Q6_K => 210,
        }
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of [`QType::block_len`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Whether one quantization of an input serves both types' products
    /// (so they can share an [`Activations`] and a [`matmul_many`] call).
    pub fn shares_activations(self, other: QType) -> bool {
        self.act_format() == other.act_format()
    }

    /// The activation format this type's dot product reads.
    fn act_format(self) -> Format {
        match self {
            QType::F32 | QType::F16 => Format::F32,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => Format::Q8,
            QType::Q4_K | QType::Q5_K | QType::Q6_K => Format::Q8K,
        }
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a weight matrix cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The row length is not a whole number of blocks.
    #[error("a {qtype} matrix needs rows of whole {block_len}-value blocks, but its rows have {cols} values")]
    PartialBlock {
        /// The weight type.
        qtype: QType,
        /// Values per row.
        cols: usize,
        /// Values per block of the type.
        block_len: usize,
    },
    /// The data is not exactly `rows` rows of `cols` values.
    #[error("a {qtype} matrix of {rows} × {cols} takes {expected} bytes, but {actual} were given")]
    DataLength {
        /// The weight type.
        qtype: QType,
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
        /// Bytes the shape takes (`None` if it overflows `usize`).
        expected: ExpectedBytes,
        /// Bytes given.
        actual: usize,
    },
}

/// Bytes a matrix shape takes, for [`KernelError::DataLength`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedBytes(pub Option<usize>);

impl std::fmt::Display for ExpectedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("more than fit in memory"),
        }
    }
}

/// A weight matrix in GGML layout, borrowed from the mapped file: `rows`
/// rows of `cols` values each.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    /// How the values are stored.
    pub qtype: QType,
    /// Rows (output features).
    pub rows: usize,
    /// Values per row (input features).
    pub cols: usize,
    /// `rows` rows of [`QType::row_bytes`] bytes each.
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// A matrix view, after checking that rows are whole blocks and that
    /// `data` holds exactly `rows` of them.
    pub fn new(
        qtype: QType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let block_len = qtype.block_len();
        if !cols.is_multiple_of(block_len) {
            return Err(KernelError::PartialBlock {
                qtype,
                cols,
                block_len,
            });
        }
        let expected = rows.checked_mul(qtype.row_bytes(cols));
        if expected != Some(data.len()) {
            return Err(KernelError::DataLength {
                qtype,
                rows,
                cols,
                expected: ExpectedBytes(expected),
                actual: data.len(),
            });
        }
        Ok(Self {
            qtype,
            rows,
            cols,
            data,
        })
    }

    /// The bytes of row `r`.
    fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.qtype.row_bytes(self.cols);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `row` into `out`, which must hold `cols` values (used
    /// for embedding lookups and norm weights).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows,
            "row {row} of a {} matrix with {} rows",
            self.qtype,
            self.rows
        );
        assert_eq!(
            out.len(),
            self.cols,
            "dequantize_row writes one row of {} values",
            self.cols
        );
        scalar::dequantize_row(self.qtype, self.row(row), out);
    }
}

/// Activation layouts: what [`Activations::quantize`] produces for a weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Blocks of 32: f16-rounded scale, Σq, and f16(d·Σq) per block (GGML's
    /// Q8_0 and Q8_1 together), for Q4_0, Q4_1, Q5_0 and Q8_0 weights.
    Q8,
    /// Blocks of 256 with an f32 scale and sums per 16 and per 32 values
    /// (GGML's Q8_K), for the k-quants.
    Q8K,
    /// Plain f32, for F32 and F16 weights.
    F32,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Q8 => "Q8_0/Q8_1",
            Format::Q8K => "Q8_K",
            Format::F32 => "F32",
        }
    }
}

/// i16 slots per Q8_K block in [`Activations`]: 16 sums of 16 values, 8 sums
/// of 32 values, 8 unused (a block's sums start 64-byte aligned).
pub(crate) const KSUMS: usize = 32;

/// 64 quantized activations; the unit of the quantized buffer, so that rows
/// start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// `n` rows of `cols` activations, quantized the way a weight type's dot
/// product wants them: Q8_0 blocks with their sums (GGML's Q8_1) for Q4_0,
/// Q4_1, Q5_0 and Q8_0 weights, Q8_K for Q4_K, Q5_K and Q6_K, plain f32 for
/// F32 and F16. Owns reusable buffers: quantizing again does not reallocate
/// when the size fits.
#[derive(Clone)]
pub struct Activations {
    format: Format,
    rows: usize,
    cols: usize,
    /// Bytes between rows in `qs` (`cols` rounded up to 64).
    stride: usize,
    qs: Vec<Line>,
    /// Scale per block.
    d: Vec<f32>,
    /// Q8: -Σq per block.
    neg_sum: Vec<i32>,
    /// Q8, for the AVX-512 kernels: each pair of blocks with their 4-byte
    /// groups interleaved (`x86::interleave_pairs`), `stride_pairs` per row.
    pairs: Vec<Line>,
    /// Bytes between rows in `pairs`.
    stride_pairs: usize,
    /// Q8: f16(d · Σq) per block, for Q4_1's minimum.
    s: Vec<f32>,
    /// Q8_K: [`KSUMS`] slots per block.
    ksums: Vec<i16>,
    /// Q8_K: `d · Σq` of each 32 values, 8 per block (the k-quant minimums'
    /// term in float).
    kmins: Vec<f32>,
    /// F32: the values, `cols` per row.
    f: Vec<f32>,
}

impl Default for Activations {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activations")
            .field("format", &self.format.name())
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// One row's input and outputs in Q8 quantization: values, quants, scales,
/// -Σq and f16(d·Σq) per block.
type Q8Row<'a> = (
    ((&'a [f32], &'a mut [i8]), &'a mut [f32]),
    (&'a mut [i32], &'a mut [f32]),
);

/// One row's input and outputs in Q8_K quantization: values, quants,
/// scales, sums and float sums per block.
type Q8KRow<'a> = (
    (&'a [f32], &'a mut [i8]),
    (&'a mut [f32], (&'a mut [i16], &'a mut [f32])),
);

/// Quantize in parallel from this many values on.
const PAR_QUANTIZE_VALUES: usize = 1 << 16;

impl Activations {
    /// Empty buffers; the first [`Activations::quantize`] allocates.
    pub fn new() -> Self {
        Self {
            format: Format::F32,
            rows: 0,
            cols: 0,
            stride: 0,
            qs: Vec::new(),
            d: Vec::new(),
            neg_sum: Vec::new(),
            pairs: Vec::new(),
            stride_pairs: 0,
            s: Vec::new(),
            ksums: Vec::new(),
            kmins: Vec::new(),
            f: Vec::new(),
        }
    }

    /// Quantizes `n` rows of `cols` values (`x[..n * cols]`, row-major) for
    /// products with `for_type` weights.
    ///
    /// Panics if `cols` is not a whole number of the weight type's blocks or
    /// `x` is shorter than `n * cols`.
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize, for_type: QType) {
        let format = for_type.act_format();
        let block = match format {
            Format::Q8 => scalar::QK8,
            Format::Q8K => scalar::QK_K,
            Format::F32 => 1,
        };
        assert!(
            cols.is_multiple_of(block),
            "{for_type} weights need activation rows of whole {block}-value blocks, got {cols} values"
        );
        let len = n
            .checked_mul(cols)
            .expect("activation size overflows usize");
        assert!(
            x.len() >= len,
            "quantize: {n} rows of {cols} values need {len} inputs, got {}",
            x.len()
        );
        let x = &x[..len];
        self.format = format;
        self.rows = n;
        self.cols = cols;
        if len == 0 {
            self.stride = 0;
            return;
        }
        let parallel = len >= PAR_QUANTIZE_VALUES && n > 1;
        match format {
            Format::F32 => {
                self.stride = cols;
                self.f.clear();
                self.f.extend_from_slice(x);
            }
            Format::Q8 => {
                let nb = cols / block;
                self.stride = cols.next_multiple_of(64);
                self.qs.resize(n * self.stride / 64, Line([0; 64]));
                self.d.resize(n * nb, 0.0);
                self.neg_sum.resize(n * nb, 0);
                self.s.resize(n * nb, 0.0);
                let qs = lines_as_bytes_mut(&mut self.qs);
                let work = |(((x, q), d), (neg_sum, s)): Q8Row<'_>| {
                    quantize_row_q8(x, q, d, neg_sum, s);
                };
                if parallel {
                    x.par_chunks(cols)
                        .zip(qs.par_chunks_mut(self.stride))
                        .zip(self.d.par_chunks_mut(nb))
                        .zip(
                            self.neg_sum
                                .par_chunks_mut(nb)
                                .zip(self.s.par_chunks_mut(nb)),
                        )
                        .for_each(work);
                } else {
                    x.chunks(cols)
                        .zip(qs.chunks_mut(self.stride))
                        .zip(self.d.chunks_mut(nb))
                        .zip(self.neg_sum.chunks_mut(nb).zip(self.s.chunks_mut(nb)))
                        .for_each(work);
                }
                self.interleave_pairs(nb);
            }
            Format::Q8K => {
                let nb = cols / block;
                self.stride = cols.next_multiple_of(64);
                self.qs.resize(n * self.stride / 64, Line([0; 64]));
                self.d.resize(n * nb, 0.0);
                self.ksums.resize(n * nb * KSUMS, 0);
                self.kmins.resize(n * nb * 8, 0.0);
                let qs = lines_as_bytes_mut(&mut self.qs);
                let work = |((x, q), (d, (ks, km))): Q8KRow<'_>| {
                    quantize_row_q8k(x, q, d, ks, km);
                };
                if parallel {
                    x.par_chunks(cols)
                        .zip(qs.par_chunks_mut(self.stride))
                        .zip(
                            self.d.par_chunks_mut(nb).zip(
                                self.ksums
                                    .par_chunks_mut(nb * KSUMS)
                                    .zip(self.kmins.par_chunks_mut(nb * 8)),
                            ),
                        )
                        .for_each(work);
                } else {
                    x.chunks(cols)
                        .zip(qs.chunks_mut(self.stride))
                        .zip(
                            self.d.chunks_mut(nb).zip(
                                self.ksums
                                    .chunks_mut(nb * KSUMS)
                                    .zip(self.kmins.chunks_mut(nb * 8)),
                            ),
                        )
                        .for_each(work);
                }
            }
        }
    }

    /// Copies the Q8 blocks into the pair layout of the AVX-512 kernels,
    /// when those can run here.
    fn interleave_pairs(&mut self, nb: usize) {
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx512_vnni() {
            self.stride_pairs = nb / 2 * 64;
            self.pairs
                .resize(self.rows * self.stride_pairs / 64, Line([0; 64]));
            let pairs = lines_as_bytes_mut(&mut self.pairs);
            let qs = lines_as_bytes(&self.qs);
            let work = |(src, dst): (&[i8], &mut [i8])| {
                // SAFETY: checked above: the CPU has AVX-512.
                unsafe { x86::interleave_pairs_avx512(src, dst) }
            };
            if self.stride_pairs == 0 {
            } else if self.rows * self.cols >= PAR_QUANTIZE_VALUES && self.rows > 1 {
                qs.par_chunks(self.stride)
                    .zip(pairs.par_chunks_mut(self.stride_pairs))
                    .for_each(work);
            } else {
                qs.chunks(self.stride)
                    .zip(pairs.chunks_mut(self.stride_pairs))
                    .for_each(work);
            }
            return;
        }
        let _ = nb;
        self.stride_pairs = 0;
    }

    /// Rows (tokens) quantized by the last [`Activations::quantize`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `t`, borrowed (`t < rows`).
    pub(crate) fn row(&self, t: usize) -> ActRow<'_> {
        assert!(t < self.rows, "activation row {t} of {}", self.rows);
        let cols = self.cols;
        match self.format {
            Format::F32 => ActRow {
                f: &self.f[t * cols..(t + 1) * cols],
                ..ActRow::EMPTY
            },
            Format::Q8 => {
                let nb = cols / scalar::QK8;
                let qs = lines_as_bytes(&self.qs);
                ActRow {
                    qs: &qs[t * self.stride..t * self.stride + cols],
                    d: &self.d[t * nb..(t + 1) * nb],
                    s: &self.s[t * nb..(t + 1) * nb],
                    ..ActRow::EMPTY
                }
            }
            Format::Q8K => {
                let nb = cols / scalar::QK_K;
                let qs = lines_as_bytes(&self.qs);
                ActRow {
                    qs: &qs[t * self.stride..t * self.stride + cols],
                    d: &self.d[t * nb..(t + 1) * nb],
                    ..ActRow::EMPTY
                }
            }
        }
    }

    /// Raw views of the buffers, for the SIMD kernels.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn ptrs(&self) -> ActPtrs {
        let blocks = match self.format {
            Format::Q8 => self.cols / scalar::QK8,
            Format::Q8K => self.cols / scalar::QK_K,
            Format::F32 => 0,
        };
        ActPtrs {
            rows: self.rows,
            cols: self.cols,
            qs: lines_as_bytes(&self.qs).as_ptr(),
            qs_stride: self.stride,
            pairs: lines_as_bytes(&self.pairs).as_ptr(),
            pairs_stride: self.stride_pairs,
            blocks,
            d: self.d.as_ptr(),
            neg_sum: self.neg_sum.as_ptr(),
            s: self.s.as_ptr(),
            ksums: self.ksums.as_ptr(),
            kmins: self.kmins.as_ptr(),
            f: self.f.as_ptr(),
        }
    }

    /// Bytes of one row as the kernels read it (for cache tiling).
    fn row_footprint(&self) -> usize {
        match self.format {
            Format::F32 => 4 * self.cols,
            Format::Q8 | Format::Q8K => self.stride + self.cols / 8,
        }
    }
}

/// [`scalar::quantize_row_q8`], with the AVX2 version (same results) where
/// a SIMD level runs.
fn quantize_row_q8(x: &[f32], q: &mut [i8], d: &mut [f32], neg_sum: &mut [i32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() != Level::Scalar {
        // SAFETY: every SIMD level has AVX2, FMA and F16C.
        return unsafe { x86::quantize_row_q8(x, q, d, neg_sum, s) };
    }
    scalar::quantize_row_q8(x, q, d, neg_sum, s)
}

/// [`scalar::quantize_row_q8k`], with the AVX2 version (same results) where
/// a SIMD level runs.
fn quantize_row_q8k(x: &[f32], q: &mut [i8], d: &mut [f32], ksums: &mut [i16], kmins: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() != Level::Scalar {
        // SAFETY: every SIMD level has AVX2, FMA and F16C.
        return unsafe { x86::quantize_row_q8k(x, q, d, ksums, kmins) };
    }
    scalar::quantize_row_q8k(x, q, d, ksums, kmins)
}

/// The quantized values as bytes.
fn lines_as_bytes(lines: &[Line]) -> &[i8] {
    // SAFETY: `Line` is `repr(C)` around `[i8; 64]`, with size 64 equal to its
    // alignment, so `lines` is `64 * lines.len()` contiguous initialized i8.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<i8>(), lines.len() * 64) }
}

/// The quantized values as bytes, mutable.
fn lines_as_bytes_mut(lines: &mut [Line]) -> &mut [i8] {
    // SAFETY: as in `lines_as_bytes`; the borrow of `lines` is exclusive.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<i8>(), lines.len() * 64) }
}

/// One activation row as the kernels read it; fields a format does not use
/// are empty.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    /// Quantized values (Q8, Q8_K).
    pub(crate) qs: &'a [i8],
    /// Scale per block (Q8, Q8_K).
    pub(crate) d: &'a [f32],
    /// f16(d · Σq) per block (Q8).
    pub(crate) s: &'a [f32],
    /// The values (F32).
    pub(crate) f: &'a [f32],
}

impl ActRow<'_> {
    const EMPTY: ActRow<'static> = ActRow {
        qs: &[],
        d: &[],
        s: &[],
        f: &[],
    };
}

/// Where the SIMD kernels find activation row `t`: `qs + t · qs_stride`,
/// `pairs + t · pairs_stride`, `d`, `neg_sum` and `s` at `t · blocks`,
/// `ksums` at `t · blocks · KSUMS`, `kmins` at `t · blocks · 8`, `f` at
/// `t · cols`, for `t < rows` (pointers of buffers the format does not use
/// are not read).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct ActPtrs {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) qs: *const i8,
    pub(crate) qs_stride: usize,
    pub(crate) pairs: *const i8,
    pub(crate) pairs_stride: usize,
    pub(crate) blocks: usize,
    pub(crate) d: *const f32,
    pub(crate) neg_sum: *const i32,
    pub(crate) s: *const f32,
    pub(crate) ksums: *const i16,
    pub(crate) kmins: *const f32,
    pub(crate) f: *const f32,
}

/// The kernel family that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// The plain reference kernels.
    Scalar,
    /// AVX2 + FMA + F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 512-bit kernels with AVX-512 VNNI multiply-adds.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => "avx512vnni",
        }
    }

    /// Every level this CPU runs, best last.
    pub(crate) fn available() -> Vec<Level> {
        let mut levels = vec![Level::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2() {
                levels.push(Level::Avx2);
            }
            if x86::has_avx512_vnni() {
                levels.push(Level::Avx512Vnni);
            }
        }
        levels
    }

    /// The best level, capped by `PRECIS_SIMD` (`scalar`, `avx2`) if set.
    fn detect() -> Level {
        let available = Level::available();
        let best = *available.last().expect("scalar is always available");
        match std::env::var("PRECIS_SIMD") {
            Ok(cap) => available
                .iter()
                .rev()
                .copied()
                .find(|l| l.name() == cap.trim())
                .unwrap_or(best),
            Err(_) => best,
        }
    }
}

/// The level chosen for this process.
fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(Level::detect)
}

/// Which SIMD path runs on this CPU: `avx512vnni`, `avx2` or `scalar`, for
/// logs and benches. Setting `PRECIS_SIMD=avx2` or `PRECIS_SIMD=scalar` in
/// the environment caps it (read once per process).
pub fn simd_level() -> &'static str {
    level().name()
}

/// Where the tasks of one product write: `out[t * rows + r]`.
///
/// Tasks own disjoint ranges of weight rows, so no cell is written by two
/// threads; each write is bounds-checked.
#[derive(Clone, Copy)]
pub(crate) struct OutSink {
    ptr: *mut f32,
    len: usize,
    rows: usize,
}

// SAFETY: an `OutSink` is only shared between the tasks of one product, which
// write disjoint cells (their own weight rows) while the `&mut [f32]` it was
// made from stays borrowed by that product.
unsafe impl Send for OutSink {}
// SAFETY: as above.
unsafe impl Sync for OutSink {}

impl OutSink {
    fn new(out: &mut [f32], rows: usize) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            rows,
        }
    }

    /// Writes the product of weight row `r` and activation row `t`.
    #[inline]
    pub(crate) fn put(&self, t: usize, r: usize, v: f32) {
        let i = t * self.rows + r;
        assert!(i < self.len && r < self.rows, "output cell out of range");
        // SAFETY: `i` is inside the buffer (checked above), which outlives the
        // product; only the task owning row `r` writes this cell.
        unsafe { *self.ptr.add(i) = v };
    }

    /// Writes the products of weight rows `r0..r0 + v.len()` and activation
    /// row `t`.
    #[inline]
    pub(crate) fn put_row(&self, t: usize, r0: usize, v: &[f32]) {
        let i = t * self.rows + r0;
        assert!(
            i + v.len() <= self.len && r0 + v.len() <= self.rows,
            "output cells out of range"
        );
        // SAFETY: the cells are inside the buffer (checked above), which
        // outlives the product; only the task owning these rows writes them.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i), v.len()) };
    }
}

/// One matrix's share of a product: weight rows `r0..r1`.
pub(crate) struct RowTask<'a> {
    pub(crate) w: &'a QMatrix<'a>,
    pub(crate) x: &'a Activations,
    pub(crate) r0: usize,
    pub(crate) r1: usize,
    pub(crate) out: OutSink,
    /// Activation rows per cache tile.
    pub(crate) tile: usize,
}

impl<'a> RowTask<'a> {
    pub(crate) fn row(&self, r: usize) -> &'a [u8] {
        self.w.row(r)
    }
}

/// Runs one task at `level`.
fn run_task(level: Level, task: &RowTask<'_>) {
    match level {
        Level::Scalar => scalar::run_rows(task),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only chosen when `x86::has_avx2()` said so.
        Level::Avx2 => unsafe { x86::run_rows_avx2(task) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Vnni` is only chosen when `x86::has_avx512_vnni()` said so.
        Level::Avx512Vnni => unsafe { x86::run_rows_avx512(task) },
    }
}

/// Products smaller than this (weight bytes × activation rows) run on the
/// calling thread: a parallel region costs a few microseconds.
const SERIAL_WORK: usize = 96 * 1024;
/// Tasks per thread, so that a thread slowed by other work is caught up.
const TASKS_PER_THREAD: usize = 4;
/// Activation bytes a task keeps in its core's L2 cache while it runs a
/// block of weight rows over them.
const TILE_BYTES: usize = 384 * 1024;

/// Checks a product's operands; panics on a mismatch.
///
/// This is what keeps the SIMD kernels' reads in bounds: each weight row is
/// sliced from `w.data` (checked), and has `w.cols / block_len` blocks; the
/// activations hold as many per row, since their format is the one `w`
/// reads and `x.cols == w.cols` (whole blocks, checked by `quantize`).
fn check(w: &QMatrix<'_>, x: &Activations, out_len: usize) {
    assert!(
        w.qtype.act_format() == x.format,
        "{} weights need activations quantized for them ({}), but these are {}",
        w.qtype,
        w.qtype.act_format().name(),
        x.format.name()
    );
    assert_eq!(
        w.cols, x.cols,
        "{} matrix of {} × {} multiplied by activations of {} values per row",
        w.qtype, w.rows, w.cols, x.cols
    );
    let need = x.rows * w.rows;
    assert!(
        out_len >= need,
        "output holds {out_len} values, but {} tokens × {} rows need {need}",
        x.rows,
        w.rows
    );
}

/// One product of a parallel region.
#[derive(Clone, Copy)]
struct ParallelProduct<'a> {
    w: QMatrix<'a>,
    out: OutSink,
    /// Rows per task.
    step: usize,
    /// Tasks.
    tasks: usize,
}

impl<'a> ParallelProduct<'a> {
    /// `w` times the activations into `out` (checked by the caller).
    fn new(w: QMatrix<'a>, out: &mut [f32]) -> Self {
        Self {
            w,
            out: OutSink::new(out, w.rows),
            step: 0,
            tasks: 0,
        }
    }

    /// A placeholder that is never run.
    fn idle() -> Self {
        Self {
            w: QMatrix {
                qtype: QType::F32,
                rows: 0,
                cols: 0,
                data: &[],
            },
            out: OutSink::new(&mut [], 0),
            step: 0,
            tasks: 0,
        }
    }
}

/// Runs products of the same activations, splitting their rows into
/// contiguous chunks over rayon's current pool.
fn run(level: Level, products: &mut [ParallelProduct<'_>], x: &Activations) {
    let tile = (TILE_BYTES / x.row_footprint().max(1)).clamp(8, 256) / 8 * 8;
    let work: usize = products.iter().map(|j| j.w.data.len() * x.rows).sum();
    let threads = rayon::current_num_threads();
    if work < SERIAL_WORK || threads == 1 {
        for product in products.iter() {
            run_task(
                level,
                &RowTask {
                    w: &product.w,
                    x,
                    r0: 0,
                    r1: product.w.rows,
                    out: product.out,
                    tile,
                },
            );
        }
        return;
    }
    // Task counts in proportion to each product's work, at least one each.
    let target = threads * TASKS_PER_THREAD;
    for product in products.iter_mut() {
        let share = (product.w.data.len() * x.rows * target).div_ceil(work.max(1));
        let tasks = share.clamp(1, product.w.rows.max(1));
        product.step = product.w.rows.div_ceil(tasks).max(1);
        product.tasks = product.w.rows.div_ceil(product.step);
    }
    let total: usize = products.iter().map(|j| j.tasks).sum();
    let products = &*products;
    (0..total)
        .into_par_iter()
        .with_max_len(1)
        .for_each(|mut i| {
            for product in products {
                if i < product.tasks {
                    let r0 = i * product.step;
                    run_task(
                        level,
                        &RowTask {
                            w: &product.w,
                            x,
                            r0,
                            r1: (r0 + product.step).min(product.w.rows),
                            out: product.out,
                            tile,
                        },
                    );
                    return;
                }
                i -= product.tasks;
            }
        });
}

/// `out[t * w.rows + r] = Σ_c W[r, c] · x[t, c]` for every weight row `r` and
/// activation row `t`, in parallel over weight rows on rayon's current pool.
///
/// `x` must have been quantized for `w.qtype` with `x.cols() == w.cols`, and
/// `out` must hold at least `x.rows() * w.rows` values (only those are
/// written); anything else is a programming error and panics.
pub fn matmul(w: &QMatrix<'_>, x: &Activations, out: &mut [f32]) {
    matmul_at(level(), w, x, out);
}

/// [`matmul`] at a given level (tests compare the levels).
pub(crate) fn matmul_at(level: Level, w: &QMatrix<'_>, x: &Activations, out: &mut [f32]) {
    check(w, x, out.len());
    run(level, &mut [ParallelProduct::new(*w, out)], x);
}

/// Most products [`matmul_many`] runs in one parallel region.
const MANY: usize = 8;

/// Several products of the same activations in one parallel region (q/k/v,
/// gate/up): for each `(w, out)` pair, what [`matmul`] does.
///
/// All matrices share `x`, so they must read the same activation format
/// (Q4_0, Q5_0 and Q8_0 weights share one, and Q4_1 reads it too; the
/// k-quants share another; F32 and F16 a third); panics otherwise.
pub fn matmul_many(products: &mut [(QMatrix<'_>, &mut [f32])], x: &Activations) {
    matmul_many_at(level(), products, x);
}

/// [`matmul_many`] at a given level.
pub(crate) fn matmul_many_at(
    level: Level,
    products: &mut [(QMatrix<'_>, &mut [f32])],
    x: &Activations,
) {
    for group in products.chunks_mut(MANY) {
        let mut packed = [ParallelProduct::idle(); MANY];
        for ((w, out), product) in group.iter_mut().zip(packed.iter_mut()) {
            check(w, x, out.len());
            *product = ParallelProduct::new(*w, out);
        }
        run(level, &mut packed[..group.len()], x);
    }
}

/// [`matmul`] with the plain scalar kernels on the calling thread: the
/// reference the SIMD kernels are tested against, for tests and benches.
pub fn matmul_reference(w: &QMatrix<'_>, x: &Activations, out: &mut [f32]) {
    check(w, x, out.len());
    let task = RowTask {
        w,
        x,
        r0: 0,
        r1: w.rows,
        out: OutSink::new(out, w.rows),
        tile: x.rows.max(1),
    };
    scalar::run_rows(&task);
}
