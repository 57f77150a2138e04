//! Quantized matrix kernels: the one module (with the weight-file mmap) where
//! precis uses `unsafe`, for SIMD intrinsics.
//!
//! Weights stay in GGML's block layouts, read where they lie in the mapped
//! file. Activations are quantized to 8 bits in blocks of 32 with one f32
//! scale per block (like GGML's Q8_0, plus per-half sums), for every weight
//! type: a dot product is then integer multiply-adds per 32 values, scaled
//! once per block. K-quant sub-blocks (32 values for Q4_K / Q5_K, 16 for Q6_K)
//! fit that grid, so one activation layout serves all types. Each row × token
//! dot product is computed the same way whatever the batch, so a sequence's
//! results do not depend on what it is batched with.
//!
//! Every kernel has a plain scalar version ([`scalar`]); the AVX2 versions
//! ([`x86`]) are chosen at run time when the CPU has AVX2 and FMA, and are
//! property-tested against the scalar ones.
#![allow(unsafe_code)]

use half::f16;
use rayon::prelude::*;

pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// GGML tensor types the LLM backend runs.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl QType {
    /// From a GGML type id.
    pub fn from_ggml(id: u32) -> Option<QType> {
        Some(match id {
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
    /// Name.
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
    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            QType::F32 | QType::F16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => 32,
            _ => 256,
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
    /// Bytes per row.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }
}

/// Kernel errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Bad shape.
    #[error("{0}")]
    Shape(String),
}

/// A weight matrix.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    /// Type.
    pub qtype: QType,
    /// Rows.
    pub rows: usize,
    /// Cols.
    pub cols: usize,
    /// Bytes.
    pub data: &'a [u8],
}

pub(crate) fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn dequant_block(q: QType, b: &[u8], out: &mut [f32]) {
    match q {
        QType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        QType::F16 => out[0] = h(b, 0),
        QType::Q4_0 => {
            let d = h(b, 0);
            for j in 0..16 {
                out[j] = d * ((b[2 + j] & 15) as f32 - 8.0);
                out[j + 16] = d * ((b[2 + j] >> 4) as f32 - 8.0);
            }
        }
        QType::Q4_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            for j in 0..16 {
                out[j] = d * (b[4 + j] & 15) as f32 + m;
                out[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
            }
        }
        QType::Q5_0 => {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                out[j] = d * (((b[6 + j] & 15) | h0) as f32 - 16.0);
                out[j + 16] = d * (((b[6 + j] >> 4) | h1) as f32 - 16.0);
            }
        }
        QType::Q8_0 => {
            let d = h(b, 0);
            for j in 0..32 {
                out[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        QType::Q4_K | QType::Q5_K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let sc = &b[4..16];
            let (qh, qs) = if q == QType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                let (s1, m1) = scale_min_k4(2 * c, sc);
                let (s2, m2) = scale_min_k4(2 * c + 1, sc);
                for l in 0..32 {
                    let mut lo = qs[32 * c + l] & 15;
                    let mut hi = qs[32 * c + l] >> 4;
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    out[64 * c + l] = d * s1 as f32 * lo as f32 - dmin * m1 as f32;
                    out[64 * c + 32 + l] = d * s2 as f32 * hi as f32 - dmin * m2 as f32;
                }
            }
        }
        QType::Q6_K => {
            let d = h(b, 208);
            for n in 0..2 {
                let ql = &b[64 * n..];
                let qh = &b[128 + 32 * n..];
                let sc = &b[192 + 8 * n..];
                let y = &mut out[128 * n..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

impl<'a> QMatrix<'a> {
    /// Checked constructor.
    pub fn new(
        qtype: QType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        if cols % qtype.block_len() != 0 || data.len() != rows * qtype.row_bytes(cols) {
            return Err(KernelError::Shape(format!(
                "bad {} matrix {rows}x{cols}",
                qtype.name()
            )));
        }
        Ok(Self {
            qtype,
            rows,
            cols,
            data,
        })
    }
    /// One row as f32.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let rb = self.qtype.row_bytes(self.cols);
        let bytes = &self.data[row * rb..(row + 1) * rb];
        let (bl, bb) = (self.qtype.block_len(), self.qtype.block_bytes());
        for (i, chunk) in out[..self.cols].chunks_mut(bl).enumerate() {
            dequant_block(self.qtype, &bytes[i * bb..(i + 1) * bb], chunk);
        }
    }
}

/// Values per activation block for the 32-value weight types.
pub const QK: usize = 32;
/// Values per activation block for the K-quants.
pub const QK_K: usize = 256;

/// Whether a type is a K-quant (256-value super-blocks, 256-value activations).
pub fn is_k(qt: QType) -> bool {
    matches!(qt, QType::Q4_K | QType::Q5_K | QType::Q6_K)
}

/// `n` rows of `cols` activations quantized to 8 bits. For the 32-value
/// weight types, in blocks of [`QK`] with one scale `d` each (value ≈ d · q)
/// and the scaled sums of each half (`d · Σq` over values 0..16 and 16..32),
/// like GGML's Q8_0/Q8_1. For the K-quants, in blocks of 256 with one scale
/// and the integer sums of each 16 values, like GGML's Q8_K, so a dot product
/// sums a whole super-block in integers. Reused between calls without
/// reallocating.
#[derive(Default)]
pub struct Activations {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<[f32; 2]>,
    bsums: Vec<i16>,
    rows: usize,
    cols: usize,
    k_layout: bool,
}

/// One activation row, borrowed.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    /// Quantized values, `cols` of them.
    pub qs: &'a [i8],
    /// Scale per block.
    pub d: &'a [f32],
    /// Scaled half-block sums per block (32-value layout only).
    pub sums: &'a [[f32; 2]],
    /// Sums of each 16 values (256-value layout only).
    pub bsums: &'a [i16],
}

impl Activations {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `n` rows of `cols` values (`x` is row-major). The layout is
    /// the same for every weight type; `_for_type` is accepted so callers say
    /// what the rows feed.
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize, for_type: QType) {
        assert!(
            cols % QK == 0,
            "activation rows must be whole blocks of {QK}"
        );
        assert!(
            x.len() >= n * cols,
            "activation buffer shorter than n × cols"
        );
        self.k_layout = is_k(for_type);
        self.rows = n;
        self.cols = cols;
        self.qs.resize(n * cols, 0);
        let x = &x[..n * cols];
        let parallel = n * cols >= 16_384;
        if self.k_layout {
            assert!(
                cols % QK_K == 0,
                "K-quant activation rows must be whole blocks of {QK_K}"
            );
            let blocks = n * cols / QK_K;
            self.d.resize(blocks, 0.0);
            self.bsums.resize(blocks * 16, 0);
            type KBlock<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut f32, &'a mut [i16]));
            let work = |((src, qs), (d, bs)): KBlock<'_>| {
                scalar::quantize_block_k(src, qs, d, bs);
            };
            if parallel {
                x.par_chunks_exact(QK_K)
                    .zip(self.qs.par_chunks_exact_mut(QK_K))
                    .zip(
                        self.d
                            .par_iter_mut()
                            .zip(self.bsums.par_chunks_exact_mut(16)),
                    )
                    .for_each(work);
            } else {
                x.chunks_exact(QK_K)
                    .zip(self.qs.chunks_exact_mut(QK_K))
                    .zip(self.d.iter_mut().zip(self.bsums.chunks_exact_mut(16)))
                    .for_each(work);
            }
            return;
        }
        let blocks = n * cols / QK;
        self.d.resize(blocks, 0.0);
        self.sums.resize(blocks, [0.0; 2]);
        type Block<'a> = (((&'a [f32], &'a mut [i8]), &'a mut f32), &'a mut [f32; 2]);
        let work = |(((src, qs), d), sums): Block<'_>| {
            scalar::quantize_block(src, qs, d, sums);
        };
        if parallel {
            x.par_chunks_exact(QK)
                .zip(self.qs.par_chunks_exact_mut(QK))
                .zip(self.d.par_iter_mut())
                .zip(self.sums.par_iter_mut())
                .for_each(work);
        } else {
            x.chunks_exact(QK)
                .zip(self.qs.chunks_exact_mut(QK))
                .zip(self.d.iter_mut())
                .zip(self.sums.iter_mut())
                .for_each(work);
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `t`.
    pub fn row(&self, t: usize) -> ActRow<'_> {
        let qs = &self.qs[t * self.cols..(t + 1) * self.cols];
        if self.k_layout {
            let b = self.cols / QK_K;
            ActRow {
                qs,
                d: &self.d[t * b..(t + 1) * b],
                sums: &[],
                bsums: &self.bsums[t * b * 16..(t + 1) * b * 16],
            }
        } else {
            let b = self.cols / QK;
            ActRow {
                qs,
                d: &self.d[t * b..(t + 1) * b],
                sums: &self.sums[t * b..(t + 1) * b],
                bsums: &[],
            }
        }
    }

    /// Whether the rows are in the 256-value (K-quant) layout.
    pub fn is_k_layout(&self) -> bool {
        self.k_layout
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("PRECIS_KERNELS_SCALAR").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// Which SIMD path runs on this CPU (`avx2` or `scalar`; `PRECIS_KERNELS_SCALAR`
/// set in the environment forces `scalar`).
pub fn simd_level() -> &'static str {
    match level() {
        Level::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => "avx2",
    }
}

/// Dot products of one weight row with up to four activation rows.
fn dot_row(qt: QType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 if x86::supports(qt) => {
            // SAFETY: `level()` returned Avx2 only after detecting AVX2 and FMA.
            unsafe { x86::dot_row(qt, w, acts, out) }
        }
        _ => {
            for (a, o) in acts.iter().zip(out.iter_mut()) {
                *o = scalar::dot(qt, w, a);
            }
        }
    }
}

/// A pointer to the output that tasks write disjoint cells of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only the cells of its own weight rows (see `matmul_rows`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; no cell is read or written by two tasks.
unsafe impl Sync for OutPtr {}

/// Rows per task.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows / (threads * 8)).clamp(4, 64)
}

fn matmul_rows(w: &QMatrix<'_>, x: &Activations, out: OutPtr, r0: usize, r1: usize) {
    let rb = w.qtype.row_bytes(w.cols);
    let rows: Vec<ActRow<'_>> = (0..x.rows).map(|t| x.row(t)).collect();
    let mut tmp = [0.0f32; 4];
    for group in (0..x.rows).step_by(4) {
        let g = &rows[group..(group + 4).min(x.rows)];
        for r in r0..r1 {
            dot_row(
                w.qtype,
                &w.data[r * rb..(r + 1) * rb],
                g,
                &mut tmp[..g.len()],
            );
            for (i, &v) in tmp[..g.len()].iter().enumerate() {
                // SAFETY: (group + i) < x.rows and r < w.rows, so the cell is
                // inside `out` (checked in `matmul`), and only this task
                // writes row r's cells.
                unsafe { *out.0.add((group + i) * w.rows + r) = v };
            }
        }
    }
}

/// `out[t * w.rows + r] = Σ_c W[r, c] · x[t, c]` for every weight row `r` and
/// activation row `t`, in parallel over weight rows on rayon's current pool.
pub fn matmul(w: &QMatrix<'_>, x: &Activations, out: &mut [f32]) {
    matmul_many(&mut [(*w, out)], x);
}

/// Several products of the same input in one parallel region (q/k/v, gate/up).
pub fn matmul_many(jobs: &mut [(QMatrix<'_>, &mut [f32])], x: &Activations) {
    let mut tasks = Vec::new();
    for (j, (w, out)) in jobs.iter_mut().enumerate() {
        assert_eq!(w.cols, x.cols, "activation width does not match the matrix");
        assert_eq!(
            is_k(w.qtype),
            x.k_layout,
            "activations quantized for another weight type"
        );
        assert!(out.len() >= x.rows * w.rows, "output buffer too small");
        let step = chunk_rows(w.rows);
        let ptr = OutPtr(out.as_mut_ptr());
        let mut r = 0;
        while r < w.rows {
            tasks.push((j, ptr, r, (r + step).min(w.rows)));
            r += step;
        }
    }
    let mats: Vec<QMatrix<'_>> = jobs.iter().map(|(w, _)| *w).collect();
    let run =
        |&(j, ptr, r0, r1): &(usize, OutPtr, usize, usize)| matmul_rows(&mats[j], x, ptr, r0, r1);
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random row of `blocks32 * 32` weights of type `qt`: random bytes with
    /// sane f16 scales written over the scale fields.
    fn random_row(qt: QType, cols: usize, seed: &[u8]) -> Vec<u8> {
        let len = qt.row_bytes(cols);
        let mut row: Vec<u8> = (0..len)
            .map(|i| seed[i % seed.len()].wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        let bb = qt.block_bytes();
        let put = |row: &mut Vec<u8>, at: usize, v: f32| {
            row[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        };
        for b in 0..len / bb {
            let o = b * bb;
            let s = 0.001 + (seed[b % seed.len()] as f32) / 5000.0;
            match qt {
                QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => put(&mut row, o, s),
                QType::Q4_1 => {
                    put(&mut row, o, s);
                    put(&mut row, o + 2, -s * 3.0);
                }
                QType::Q4_K | QType::Q5_K => {
                    put(&mut row, o, s);
                    put(&mut row, o + 2, s / 2.0);
                }
                QType::Q6_K => put(&mut row, o + 208, s),
                _ => {}
            }
        }
        row
    }

    fn float_dot(qt: QType, row: &[u8], cols: usize, x: &[f32]) -> f32 {
        let m = QMatrix::new(qt, 1, cols, row).unwrap();
        let mut w = vec![0.0; cols];
        m.dequantize_row(0, &mut w);
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    }

    const TYPES_ALL: [QType; 7] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q8_0,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn simd_and_scalar_agree_with_the_float_dot(
            seed in proptest::collection::vec(any::<u8>(), 1..64),
            xs in proptest::collection::vec(-4.0f32..4.0, 512),
            rows in 1usize..4,
        ) {
            let cols = 512;
            for qt in TYPES_ALL {
                let row = random_row(qt, cols, &seed);
                let mut acts = Activations::new();
                let x: Vec<f32> = (0..rows).flat_map(|r| xs.iter().map(move |v| v * (r as f32 + 1.0))).collect();
                acts.quantize(&x, rows, cols, qt);
                let act_rows: Vec<ActRow<'_>> = (0..rows).map(|t| acts.row(t)).collect();
                let mut simd = vec![0.0; rows];
                dot_row(qt, &row, &act_rows, &mut simd);
                for t in 0..rows {
                    let reference = scalar::dot(qt, &row, &act_rows[t]);
                    let exact = float_dot(qt, &row, cols, &x[t * cols..(t + 1) * cols]);
                    let w = QMatrix::new(qt, 1, cols, &row).unwrap();
                    let mut wf = vec![0.0; cols];
                    w.dequantize_row(0, &mut wf);
                    let mag: f32 = wf.iter().zip(&x[t * cols..]).map(|(a, b)| (a * b).abs()).sum();
                    prop_assert!((simd[t] - reference).abs() <= 1e-4 * mag + 1e-5,
                        "{qt:?}: simd {} vs scalar {reference}", simd[t]);
                    // 8-bit activations: within a few per cent of the float dot's magnitude.
                    prop_assert!((reference - exact).abs() <= 0.02 * mag + 1e-4,
                        "{qt:?}: quantized {reference} vs float {exact} (magnitude {mag})");
                }
            }
        }
    }

    #[test]
    fn matmul_batches_give_the_same_bits_as_single_rows() {
        let (rows, cols, n) = (37, 256, 5);
        for qt in TYPES_ALL {
            let w: Vec<u8> = (0..rows)
                .flat_map(|r| random_row(qt, cols, &[r as u8 + 1, 7, 99]))
                .collect();
            let m = QMatrix::new(qt, rows, cols, &w).unwrap();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut acts = Activations::new();
            acts.quantize(&x, n, cols, qt);
            let mut all = vec![0.0; n * rows];
            matmul(&m, &acts, &mut all);
            for t in 0..n {
                let mut one = Activations::new();
                one.quantize(&x[t * cols..(t + 1) * cols], 1, cols, qt);
                let mut single = vec![0.0; rows];
                matmul(&m, &one, &mut single);
                assert_eq!(
                    &all[t * rows..(t + 1) * rows],
                    &single[..],
                    "{qt:?} row {t}"
                );
            }
        }
    }
}
