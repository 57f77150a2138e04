//! int8 products for the encoder-decoder models' layers: weights quantized
//! once at load, activations quantized per token at each product.
//!
//! Why this exists: CPU translation services run int8 (CTranslate2,
//! Bergamot). A weight takes one byte instead of four, so a decoder step
//! reads a quarter of the memory and the model holds a quarter of the
//! room, and one VNNI multiply-add does 64 byte products where an f32 FMA
//! does 16.
//!
//! Weights are quantized as CTranslate2 does: row `r` gets the scale
//! `s_r = max|W_r| / 127` and the values `round(W_r / s_r)` in [-127, 127].
//! Activations are quantized per token over their own range, zero point
//! included (CTranslate2 takes `max|x_t| / 127` symmetrically): token `t`
//! gets `a_t = (max(x_t, 0) - min(x_t, 0)) / 255`, a zero point `z_t` and
//! the bytes `u = round(x / a_t) + z_t` in [0, 255], so `x ≈ a_t · (u - z_t)`.
//! A feed-forward's second product reads a GELU's, ReLU's or SiLU's output,
//! which hardly goes below zero: its step is half the symmetric one. A
//! product is `Σ_c q_w · u - z_t · Σ_c q_w`, exact in i32, and the output
//! that times `a_t · s_r`, plus `bias_r`, then the epilogue. Every level
//! computes the same integer sums and the same float tail, so unlike the
//! f32 products the scalar, AVX2 and AVX-512 results are the same bits,
//! and a token's result does not depend on what it is batched with.
//!
//! Layout: panels of [`PANEL`] output rows, as [`super::PackedF32`]'s, in
//! groups of 4 input columns: lane `j`'s 4 bytes `W[r0 + j, 4g..4g + 4]`
//! lie together, so that one 512-bit register holds 16 lanes of one group,
//! which is what `vpdpbusd` multiplies by one token's 4 activation bytes
//! broadcast (unsigned by signed, as the bytes are). AVX2 has no such
//! instruction: its path takes the bytes as `u - 128` in [-128, 127] and
//! multiplies `|u - 128|` by `q_w` carrying the sign (`vpmaddubsw`), whose
//! pairs (at most 2 · 128 · 127) stay below i16's saturation because no
//! weight is -128; its zero point is `z_t - 128`.

use rayon::prelude::*;

use super::{level, Epilogue, Level, OutSink, PANEL};

/// Input columns per group (the bytes one i32 lane of `vpdpbusd` sums).
const GROUP: usize = 4;
/// Products smaller than this (multiply-adds) run on the calling thread.
const SERIAL_WORK: usize = 256 * 1024;
/// Tasks per thread, so that a thread slowed by other work is caught up.
const TASKS_PER_THREAD: usize = 4;
/// Activation bytes a task keeps in its core's L2 cache while every panel
/// of the task passes over them (a long encoder input is taken in tiles).
const TILE_BYTES: usize = 256 * 1024;

/// A `rows × cols` matrix quantized to int8 per row, with an f32 bias,
/// packed for [`PackedI8::forward`].
pub struct PackedI8 {
    /// Panel `p`, group `g`, lane `j`, byte `k` at
    /// `((p * groups + g) * PANEL + j) * GROUP + k`: the quantized
    /// `W[p * PANEL + j, g * GROUP + k]`, zero past the last row or column.
    panels: Vec<i8>,
    /// `s_r` per row.
    scales: Vec<f32>,
    /// `Σ_c q(W[r, c])` per row (what a token's zero point adds).
    sums: Vec<i32>,
    /// `rows` values (zeros when the layer has none).
    bias: Vec<f32>,
    rows: usize,
    cols: usize,
    groups: usize,
}

/// `y` rounded to the nearest integer, halves to even, for `|y|` well
/// under 2²²: adding 1.5 · 2²³ leaves the integer in the sum's low mantissa
/// bits (no libm call, no saturating cast, so the loops around it
/// vectorise).
#[inline(always)]
fn round_small(y: f32) -> i32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    (y + ROUND).to_bits() as i32 - ROUND.to_bits() as i32
}

/// `(min(v, 0), max(v, 0))`, or `None` when a value is NaN or infinite.
/// Written so that it vectorises: lanes of minima and maxima (a float
/// reduction in one chain does not), and lanes of `Σ x · 0`, which is NaN
/// exactly when a value is not finite (fewer registers than flags).
fn range(v: &[f32]) -> Option<(f32, f32)> {
    const LANES: usize = 8;
    let (mut lows, mut highs, mut zeros) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for j in 0..LANES {
            let x = chunk[j];
            lows[j] = if x < lows[j] { x } else { lows[j] };
            highs[j] = if x > highs[j] { x } else { highs[j] };
            zeros[j] += x * 0.0;
        }
    }
    for (j, &x) in rest.iter().enumerate() {
        lows[j] = if x < lows[j] { x } else { lows[j] };
        highs[j] = if x > highs[j] { x } else { highs[j] };
        zeros[j] += x * 0.0;
    }
    if zeros.iter().any(|z| z.is_nan()) {
        return None;
    }
    let lo = lows.iter().fold(0f32, |m, &a| if a < m { a } else { m });
    let hi = highs.iter().fold(0f32, |m, &a| if a > m { a } else { m });
    Some((lo, hi))
}

/// `round(v · 127 / max|v|)` of every value into `q` (halves to even), and
/// the scale `max|v| / 127` (0 for a row of zeros, or of values so small
/// that the scale would not be a normal float, whose values are all 0; NaN
/// for a row with a value that is not finite). Its passes vectorise:
/// [`range`], and [`round_small`].
fn quantize_row(v: &[f32], q: &mut [i8]) -> f32 {
    let Some((lo, hi)) = range(v) else {
        q.iter_mut().for_each(|q| *q = 0);
        return f32::NAN;
    };
    let max = if -lo > hi { -lo } else { hi };
    // A row whose step would not be a normal float (and its reciprocal
    // finite) reads as zeros.
    if max / 127.0 < f32::MIN_POSITIVE {
        q.iter_mut().for_each(|q| *q = 0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (q, &x) in q.iter_mut().zip(v) {
        // |x · inv| ≤ 127 (and a rounding), well inside the trick's range.
        let y = (x * inv).clamp(-127.0, 127.0);
        *q = round_small(y) as i8;
    }
    max / 127.0
}

/// A token's values `v` into `u` as `round(v / a) + z` in [0, 255], and
/// `(a, z)`: the scale `a = (hi - lo) / 255` over `lo = min(v, 0)` and
/// `hi = max(v, 0)` (zero is in the range, so it is exact), and the zero
/// point `z = round(-lo / a)`. A token of zeros (or of values so small that
/// `a` would not be a normal float) gives `(0, 0)` and zeros; a token with
/// a value that is not finite `(NaN, 0)` and zeros. The reference for
/// [`quantize_token_at`]'s levels.
fn quantize_token(v: &[f32], u: &mut [u8]) -> (f32, u8) {
    quantize_token_by(v, u, range, token_bytes)
}

/// [`quantize_token`] with its two passes given: `range` as [`range`],
/// `bytes` as [`token_bytes`].
#[inline(always)]
fn quantize_token_by(
    v: &[f32],
    u: &mut [u8],
    range: impl Fn(&[f32]) -> Option<(f32, f32)>,
    bytes: impl Fn(&[f32], f32, f32, &mut [u8]),
) -> (f32, u8) {
    let Some((lo, hi)) = range(v) else {
        u.iter_mut().for_each(|u| *u = 0);
        return (f32::NAN, 0);
    };
    // A range past f32's largest is divided end by end. A token whose step
    // would not be a normal float (nor its reciprocal finite) reads as
    // zeros.
    let range = hi - lo;
    let (a, inv) = if range.is_finite() {
        (range / 255.0, 255.0 / range)
    } else {
        let a = hi / 255.0 - lo / 255.0;
        (a, 1.0 / a)
    };
    if a < f32::MIN_POSITIVE {
        u.iter_mut().for_each(|u| *u = 0);
        return (0.0, 0);
    }
    let z = (-lo * inv).round().clamp(0.0, 255.0);
    bytes(v, inv, z, u);
    (a, z as u8)
}

/// `u = round(x · inv + z)` (halves to even) of every finite value `x` of
/// `v`, clamped to [0, 255].
fn token_bytes(v: &[f32], inv: f32, z: f32, u: &mut [u8]) {
    for (u, &x) in u.iter_mut().zip(v) {
        // In [0, 255] (and a rounding), well inside the trick's range.
        let y = (x * inv + z).clamp(0.0, 255.0);
        *u = round_small(y) as u8;
    }
}

/// [`quantize_token`] on `level`'s registers, the same bits: its passes are
/// minima, maxima, products and sums (none fused), and a rounding to
/// nearest, halves to even.
fn quantize_token_at(level: Level, v: &[f32], u: &mut [u8]) -> (f32, u8) {
    match level {
        Level::Scalar => quantize_token(v, u),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only chosen when the CPU has AVX2.
        Level::Avx2 => quantize_token_by(
            v,
            u,
            |v| unsafe { x86::range_avx2(v) },
            |v, inv, z, u| unsafe { x86::bytes_avx2(v, inv, z, u) },
        ),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Vnni` is only chosen when the CPU has AVX-512F and
        // BW.
        Level::Avx512Vnni => quantize_token_by(
            v,
            u,
            |v| unsafe { x86::range_avx512(v) },
            |v, inv, z, u| unsafe { x86::bytes_avx512(v, inv, z, u) },
        ),
    }
}

impl PackedI8 {
    /// Most input columns: `cols · 255 · 127` must stay inside an i32.
    pub const MAX_COLS: usize = 65_536;

    /// Quantizes and packs `w` (`rows × cols`, row-major, as
    /// `nn.Linear.weight` stores it) and keeps `bias` (`rows` values).
    /// Panics if the lengths do not match the shape or `cols` is above
    /// [`PackedI8::MAX_COLS`].
    pub fn new(w: &[f32], bias: Option<&[f32]>, rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weights of {rows} × {cols}");
        assert!(
            cols <= Self::MAX_COLS,
            "{cols} input columns (at most {})",
            Self::MAX_COLS
        );
        let groups = cols.div_ceil(GROUP);
        let panel_len = groups * PANEL * GROUP;
        let mut panels = vec![0i8; rows.div_ceil(PANEL) * panel_len];
        let mut scales = vec![0f32; rows];
        let mut sums = vec![0i32; rows];
        let mut q = vec![0i8; cols];
        for r in 0..rows {
            scales[r] = quantize_row(&w[r * cols..(r + 1) * cols], &mut q);
            sums[r] = q.iter().map(|&v| v as i32).sum::<i32>();
            let (p, j) = (r / PANEL, r % PANEL);
            let panel = &mut panels[p * panel_len..(p + 1) * panel_len];
            for (c, &v) in q.iter().enumerate() {
                panel[((c / GROUP) * PANEL + j) * GROUP + c % GROUP] = v;
            }
        }
        let bias = match bias {
            Some(b) => {
                assert_eq!(b.len(), rows, "bias of {rows}");
                b.to_vec()
            }
            None => vec![0.0; rows],
        };
        Self {
            panels,
            scales,
            sums,
            bias,
            rows,
            cols,
            groups,
        }
    }

    /// Row `r` of the matrix as it is quantized (`q · s_r`, `cols` values)
    /// into `out`: an embedding lookup in a table packed as an output
    /// layer. Panics unless `r < rows` and `out` holds `cols` values.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let (p, j) = (r / PANEL, r % PANEL);
        let panel = self.panel(p);
        for (c, v) in out[..self.cols].iter_mut().enumerate() {
            *v = panel[((c / GROUP) * PANEL + j) * GROUP + c % GROUP] as f32 * self.scales[r];
        }
    }

    /// Output values per token.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix holds (weights, scales, sums and bias).
    pub fn bytes(&self) -> usize {
        self.panels.len() + 12 * self.rows
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.groups * PANEL * GROUP;
        &self.panels[p * len..(p + 1) * len]
    }

    /// `out[t * rows + r] ≈ bias[r] + Σ_c W[r, c] · x[t * cols + c]` for the
    /// `n` tokens of `x`, each token quantized to int8 first, `epilogue`
    /// applied to every output, in parallel over panels on rayon's current
    /// pool. Panics unless `x` holds `n × cols` values and `out` `n × rows`.
    pub fn forward_then(&self, x: &[f32], n: usize, out: &mut [f32], epilogue: Epilogue) {
        self.forward_at(level(), x, n, out, epilogue);
    }

    /// [`PackedI8::forward_then`] at a given level (tests compare them).
    pub(crate) fn forward_at(
        &self,
        level: Level,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        epilogue: Epilogue,
    ) {
        assert_eq!(x.len(), n * self.cols, "{n} tokens of {}", self.cols);
        assert_eq!(out.len(), n * self.rows, "{n} tokens of {}", self.rows);
        let count = self.rows.div_ceil(PANEL);
        if count == 0 || n == 0 {
            return;
        }
        let x = Tokens::quantize(level, x, n, self.cols, self.groups);
        let sink = OutSink::new(out, self.rows);
        let run = |panels: std::ops::Range<usize>| {
            let task = Task {
                m: self,
                x: &x,
                panels,
                out: sink,
                epilogue,
            };
            match level {
                Level::Scalar => scalar_panels(&task),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Avx2` is only chosen when the CPU has AVX2.
                Level::Avx2 => unsafe { x86::panels_avx2(&task) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Avx512Vnni` is only chosen when the CPU has
                // AVX-512F, BW and VNNI.
                Level::Avx512Vnni => unsafe { x86::panels_vnni(&task) },
            }
        };
        let threads = rayon::current_num_threads();
        if n * self.rows * self.cols < SERIAL_WORK || threads == 1 {
            run(0..count);
            return;
        }
        let tasks = (threads * TASKS_PER_THREAD).min(count);
        let step = count.div_ceil(tasks);
        (0..count.div_ceil(step))
            .into_par_iter()
            .with_max_len(1)
            .for_each(|i| run(i * step..((i + 1) * step).min(count)));
    }
}

/// Whether `level` takes activations as signed bytes (`u - 128`).
fn signed(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 {
        return true;
    }
    let _ = level;
    false
}

/// A product's activations, quantized per token.
struct Tokens {
    /// Token `t`'s `width` bytes at `t · width`: `u`, or `u - 128` as i8
    /// when `signed` (past the last column, where the weights are zero,
    /// any value).
    bytes: Vec<u8>,
    /// `a_t` per token, and its zero point as the bytes hold it: `z_t`, or
    /// `z_t - 128` when `signed`.
    scales: Vec<(f32, i32)>,
    width: usize,
    n: usize,
    signed: bool,
}

impl Tokens {
    fn quantize(level: Level, x: &[f32], n: usize, cols: usize, groups: usize) -> Self {
        let signed = signed(level);
        let width = groups * GROUP;
        let mut bytes = vec![0u8; n * width];
        let mut scales = vec![(0f32, 0i32); n];
        // One token's bytes (`width`, the first `cols` its values') and its
        // scale and zero point as the bytes hold it.
        let token = |u: &mut [u8], x: &[f32]| -> (f32, i32) {
            let (a, z) = quantize_token_at(level, x, &mut u[..cols]);
            if !signed {
                return (a, z as i32);
            }
            u.iter_mut().for_each(|b| *b ^= 0x80);
            (a, z as i32 - 128)
        };
        let rows = bytes
            .chunks_exact_mut(width)
            .zip(x.chunks_exact(cols.max(1)))
            .zip(&mut scales);
        if n * cols < SERIAL_WORK / 4 {
            rows.for_each(|((u, x), s)| *s = token(u, x));
        } else {
            // A long encoder input: its rows on every thread.
            let rows: Vec<_> = rows.collect();
            rows.into_par_iter()
                .for_each(|((u, x), s)| *s = token(u, x));
        }
        Self {
            bytes,
            scales,
            width,
            n,
            signed,
        }
    }

    /// Tokens per tile kept in L2 (at least 8).
    fn tile(&self) -> usize {
        (TILE_BYTES / self.width.max(1)).max(8)
    }
}

/// One thread's share of a product: a range of panels against every token.
struct Task<'a> {
    m: &'a PackedI8,
    x: &'a Tokens,
    panels: std::ops::Range<usize>,
    out: OutSink,
    epilogue: Epilogue,
}

impl Task<'_> {
    /// Writes panel `p`'s integer sums for token `t` (`PANEL` lanes, those
    /// past the last row dropped): scaled, the bias added, the epilogue
    /// applied.
    #[inline(always)]
    fn put(&self, p: usize, t: usize, sums: &[i32; PANEL]) {
        let m = self.m;
        let r0 = p * PANEL;
        let live = (m.rows - r0).min(PANEL);
        let (a, z) = self.x.scales[t];
        let (w_sums, scales, bias) = (
            &m.sums[r0..r0 + live],
            &m.scales[r0..r0 + live],
            &m.bias[r0..r0 + live],
        );
        let mut v = [0f32; PANEL];
        // One loop per function, so that each vectorises.
        macro_rules! each {
            ($e:expr) => {
                for ((((v, &s), &w), &ws), &b) in
                    v.iter_mut().zip(sums).zip(w_sums).zip(scales).zip(bias)
                {
                    // `Σ (u - z) · q_w`: each term and the result are at
                    // most 255 · 127 · cols, inside an i32 (`MAX_COLS`).
                    let s = s - z * w;
                    *v = $e.apply(s as f32 * (a * ws) + b);
                }
            };
        }
        match self.epilogue {
            Epilogue::None => each!(Epilogue::None),
            Epilogue::Relu => each!(Epilogue::Relu),
            Epilogue::Silu => each!(Epilogue::Silu),
            Epilogue::Gelu => each!(Epilogue::Gelu),
            Epilogue::GeluTanh => each!(Epilogue::GeluTanh),
        }
        self.out.put_row(t, r0, &v[..live]);
    }
}

/// The plain reference: one token at a time, lanes in a scalar loop.
fn scalar_panels(task: &Task<'_>) {
    let (groups, width) = (task.m.groups, task.x.width);
    for p in task.panels.clone() {
        let panel = task.m.panel(p);
        for t in 0..task.x.n {
            let x = &task.x.bytes[t * width..(t + 1) * width];
            let mut sums = [0i32; PANEL];
            for g in 0..groups {
                let w = &panel[g * PANEL * GROUP..(g + 1) * PANEL * GROUP];
                for (j, s) in sums.iter_mut().enumerate() {
                    for k in 0..GROUP {
                        let xv = x[g * GROUP + k] as i32;
                        *s += w[j * GROUP + k] as i32 * xv;
                    }
                }
            }
            task.put(p, t, &sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Task, GROUP, PANEL};

    /// The first index and the lane mask of each 16 values of `n`: all
    /// lanes, then the tail's.
    #[inline(always)]
    fn chunks16(n: usize) -> impl Iterator<Item = (usize, u16)> {
        (0..n).step_by(16).map(move |i| {
            (
                i,
                if n - i >= 16 {
                    u16::MAX
                } else {
                    (1 << (n - i)) - 1
                },
            )
        })
    }

    /// [`super::range`] in 512-bit registers (the tail under a mask, its
    /// other lanes zeros).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn range_avx512(v: &[f32]) -> Option<(f32, f32)> {
        let (zero, n, p) = (_mm512_setzero_ps(), v.len(), v.as_ptr());
        let (mut lo, mut hi, mut nan) = (zero, zero, zero);
        for (i, mask) in chunks16(n) {
            // SAFETY: the mask's lanes lie inside `v`.
            let x = unsafe { _mm512_maskz_loadu_ps(mask, p.add(i)) };
            // Minimum and maximum return their second operand on a tie,
            // as `range`'s comparisons keep the lane's value.
            lo = _mm512_min_ps(x, lo);
            hi = _mm512_max_ps(x, hi);
            nan = _mm512_add_ps(nan, _mm512_mul_ps(x, zero));
        }
        if _mm512_reduce_add_ps(nan).is_nan() {
            return None;
        }
        Some((_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)))
    }

    /// [`super::token_bytes`] in 512-bit registers: `vcvtps2dq` rounds to
    /// nearest, halves to even, as the trick does.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn bytes_avx512(v: &[f32], inv: f32, z: f32, u: &mut [u8]) {
        assert!(
            u.len() >= v.len(),
            "{} bytes for {} values",
            u.len(),
            v.len()
        );
        let (inv, z) = (_mm512_set1_ps(inv), _mm512_set1_ps(z));
        let (zero, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
        let (n, p, q) = (v.len(), v.as_ptr(), u.as_mut_ptr());
        for (i, mask) in chunks16(n) {
            // SAFETY: the mask's lanes lie inside `v` and `u`.
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, p.add(i));
                let y = _mm512_add_ps(_mm512_mul_ps(x, inv), z);
                let y = _mm512_min_ps(_mm512_max_ps(y, zero), top);
                _mm512_mask_cvtepi32_storeu_epi8(q.add(i).cast(), mask, _mm512_cvtps_epi32(y));
            }
        }
    }

    /// [`super::range`] in 256-bit registers: its lanes' minima, maxima and
    /// `Σ x · 0`, and the tail, then `range` over those (zero is in every
    /// lane's range, so the extremes are the same).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn range_avx2(v: &[f32]) -> Option<(f32, f32)> {
        let zero = _mm256_setzero_ps();
        let (mut lo, mut hi, mut nan) = (zero, zero, zero);
        let chunks = v.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            // SAFETY: the chunk holds 8 values.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            lo = _mm256_min_ps(x, lo);
            hi = _mm256_max_ps(x, hi);
            nan = _mm256_add_ps(nan, _mm256_mul_ps(x, zero));
        }
        let mut lanes = [0f32; 32];
        // SAFETY: `lanes` holds 3 · 8 values and the tail (under 8).
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(16), nan);
        }
        lanes[24..24 + rest.len()].copy_from_slice(rest);
        super::range(&lanes[..24 + rest.len()])
    }

    /// [`super::token_bytes`] in 256-bit registers (the tail as it does):
    /// `vcvtps2dq` rounds to nearest, halves to even, as the trick does.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn bytes_avx2(v: &[f32], inv: f32, z: f32, u: &mut [u8]) {
        let (vinv, vz) = (_mm256_set1_ps(inv), _mm256_set1_ps(z));
        let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        let chunks = v.chunks_exact(8);
        let rest = chunks.remainder();
        let mut out = u.chunks_exact_mut(8);
        for (chunk, out) in chunks.zip(&mut out) {
            // SAFETY: the chunk holds 8 values, `out` 8 bytes.
            unsafe {
                let x = _mm256_loadu_ps(chunk.as_ptr());
                let y = _mm256_add_ps(_mm256_mul_ps(x, vinv), vz);
                let y = _mm256_min_ps(_mm256_max_ps(y, zero), top);
                let i = _mm256_cvtps_epi32(y);
                // [0, 255] in i32, packed to i16 then to u8 exactly.
                let w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
                _mm_storel_epi64(out.as_mut_ptr().cast(), _mm_packus_epi16(w, w));
            }
        }
        let done = v.len() - rest.len();
        super::token_bytes(rest, inv, z, &mut u[done..]);
    }

    /// Token `t`'s 4 activation bytes of group `g`, as one i32.
    #[inline(always)]
    unsafe fn group_of(x: *const u8, width: usize, t: usize, g: usize) -> i32 {
        // SAFETY: the caller's `t` is a token of the task and `g` a group,
        // so the 4 bytes lie inside `Tokens::bytes`.
        unsafe { std::ptr::read_unaligned(x.add(t * width + g * GROUP).cast::<i32>()) }
    }

    /// `T` tokens from `t0` against panel `p`, 512-bit: two registers of
    /// i32 sums per token, one `vpdpbusd` each per group.
    #[inline(always)]
    unsafe fn block_vnni<const T: usize>(task: &Task<'_>, p: usize, t0: usize) {
        unsafe {
            let (groups, width) = (task.m.groups, task.x.width);
            let w = task.m.panel(p).as_ptr();
            let x = task.x.bytes.as_ptr();
            let mut acc = [[_mm512_setzero_si512(); 2]; T];
            for g in 0..groups {
                let w0 = _mm512_loadu_si512(w.add(g * PANEL * GROUP).cast());
                let w1 = _mm512_loadu_si512(w.add(g * PANEL * GROUP + 64).cast());
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(group_of(x, width, t0 + t, g));
                    acc[0] = _mm512_dpbusd_epi32(acc[0], xv, w0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], xv, w1);
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                let mut sums = [0i32; PANEL];
                _mm512_storeu_si512(sums.as_mut_ptr().cast(), acc[0]);
                _mm512_storeu_si512(sums.as_mut_ptr().add(16).cast(), acc[1]);
                task.put(p, t0 + t, &sums);
            }
        }
    }

    /// `T` tokens from `t0` against panel `p`, 256-bit: four registers of
    /// i32 sums per token; per group and register, `|x| · sign(w, x)` in
    /// i16 pairs, then widened.
    #[inline(always)]
    unsafe fn block_avx2<const T: usize>(task: &Task<'_>, p: usize, t0: usize) {
        unsafe {
            let (groups, width) = (task.m.groups, task.x.width);
            let w = task.m.panel(p).as_ptr();
            let x = task.x.bytes.as_ptr();
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_si256(); 4]; T];
            for g in 0..groups {
                let ws = [0, 32, 64, 96]
                    .map(|o| _mm256_loadu_si256(w.add(g * PANEL * GROUP + o).cast()));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32(group_of(x, width, t0 + t, g));
                    let ax = _mm256_abs_epi8(xv);
                    for (a, &wv) in acc.iter_mut().zip(&ws) {
                        let pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                let mut sums = [0i32; PANEL];
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_si256(sums.as_mut_ptr().add(8 * j).cast(), *a);
                }
                task.put(p, t0 + t, &sums);
            }
        }
    }

    /// Runs `block::<T>(task, p, t)` over tokens `tokens` of panel `p`, `T`
    /// the widest of `wide`, 4, 2, 1 that fits the tokens left.
    macro_rules! sweep {
        ($wide:literal, $block:ident, $task:expr, $p:expr, $tokens:expr) => {{
            let (task, p, tokens) = ($task, $p, $tokens);
            let mut t = tokens.start;
            while t < tokens.end {
                let left = tokens.end - t;
                t += if left >= $wide {
                    $block::<$wide>(task, p, t);
                    $wide
                } else if left >= 4 {
                    $block::<4>(task, p, t);
                    4
                } else if left >= 2 {
                    $block::<2>(task, p, t);
                    2
                } else {
                    $block::<1>(task, p, t);
                    1
                };
            }
        }};
    }

    /// # Safety
    /// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI, and the
    /// task's activations must be unsigned.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn panels_vnni(task: &Task<'_>) {
        debug_assert!(!task.x.signed);
        let (n, tile) = (task.x.n, task.x.tile());
        for t0 in (0..n).step_by(tile) {
            for p in task.panels.clone() {
                // SAFETY: this function's target features are the blocks'.
                unsafe { sweep!(8, block_vnni, task, p, t0..(t0 + tile).min(n)) }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2, and the task's activations must be signed.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn panels_avx2(task: &Task<'_>) {
        debug_assert!(task.x.signed);
        let (n, tile) = (task.x.n, task.x.tile());
        for t0 in (0..n).step_by(tile) {
            for p in task.panels.clone() {
                // SAFETY: this function's target features are the blocks'.
                unsafe { sweep!(2, block_avx2, task, p, t0..(t0 + tile).min(n)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packed::tests::values;
    use super::*;

    /// The definition, written out: each row and token quantized on its own,
    /// the integer sum, scaled.
    fn reference(w: &[f32], b: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let n = x.len() / cols;
        let mut out = vec![0f32; n * rows];
        for t in 0..n {
            let mut u = vec![0u8; cols];
            let (a, z) = quantize_token(&x[t * cols..(t + 1) * cols], &mut u);
            for r in 0..rows {
                let mut qw = vec![0i8; cols];
                let s = quantize_row(&w[r * cols..(r + 1) * cols], &mut qw);
                let sum: i32 = u
                    .iter()
                    .zip(&qw)
                    .map(|(&u, &w)| (u as i32 - z as i32) * w as i32)
                    .sum();
                out[t * rows + r] = sum as f32 * (a * s) + b[r];
            }
        }
        out
    }

    #[test]
    fn every_level_gives_the_reference_bits_whatever_the_batch() {
        // Partial last panels and groups, odd token counts, more tokens
        // than one tile, columns past i16's reach.
        for (rows, cols, n) in [
            (70, 37, 11),
            (32, 64, 8),
            (5, 3, 1),
            (96, 129, 33),
            (40, 2500, 13),
            (33, 40, 7000),
        ] {
            let (w, b, x) = (values(rows * cols, 1), values(rows, 2), values(n * cols, 3));
            let want = reference(&w, &b, &x, rows, cols);
            let m = PackedI8::new(&w, Some(&b), rows, cols);
            for level in Level::available() {
                let mut out = vec![f32::NAN; n * rows];
                m.forward_at(level, &x, n, &mut out, Epilogue::None);
                assert_eq!(out, want, "{level:?} {rows}×{cols}, {n} tokens");
                let t = n / 2;
                let mut alone = vec![0f32; rows];
                let one = &x[t * cols..(t + 1) * cols];
                m.forward_at(level, one, 1, &mut alone, Epilogue::None);
                assert_eq!(alone, want[t * rows..(t + 1) * rows], "{level:?} token {t}");
            }
        }
    }

    #[test]
    fn extreme_values_neither_saturate_nor_overflow() {
        // Every weight at ±127 and every activation at an end of its range
        // (bytes 0 and 255; -128 and 127 on the AVX2 path, whose i16 pairs
        // reach 2 · 128 · 127, under saturation only because no weight is
        // -128), the zero point 128 times sums of up to 127 · cols.
        let (rows, cols, n) = (40, 4096, 9);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| if (i / 3) % 2 == 0 { 2.0 } else { -2.0 })
            .collect();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| if (i / 5) % 3 == 0 { -128.0 } else { 127.0 })
            .collect();
        let b = vec![0.25; rows];
        let want = reference(&w, &b, &x, rows, cols);
        let m = PackedI8::new(&w, Some(&b), rows, cols);
        for level in Level::available() {
            let mut out = vec![f32::NAN; n * rows];
            m.forward_at(level, &x, n, &mut out, Epilogue::None);
            assert_eq!(out, want, "{level:?}");
        }
        // And the exact products: ±2, -128 and 127 quantize without error.
        let exact: Vec<f32> = (0..n)
            .flat_map(|t| {
                let (w, x) = (&w, &x);
                (0..rows).map(move |r| {
                    0.25 + (0..cols)
                        .map(|c| w[r * cols + c] * x[t * cols + c])
                        .sum::<f32>()
                })
            })
            .collect();
        for (got, want) in want.iter().zip(&exact) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
    }

    #[test]
    fn products_are_close_to_f32_and_zeros_stay_zero() {
        let (rows, cols, n) = (64, 512, 6);
        let (w, x) = (values(rows * cols, 4), values(n * cols, 5));
        let m = PackedI8::new(&w, None, rows, cols);
        let mut out = vec![0f32; n * rows];
        m.forward_then(&x, n, &mut out, Epilogue::None);
        let f = super::super::PackedF32::new(&w, None, rows, cols).apply(&x, n);
        // Each sum of 512 products of values in [-1, 1) is a few units;
        // int8 rounding errs by well under 1 % of the largest.
        let scale = f.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in out.iter().zip(&f) {
            assert!((a - b).abs() < 0.01 * scale, "{a} vs {b} (scale {scale})");
        }
        // A token of zeros gives the bias; a row of zero weights gives it too.
        let zero = vec![0f32; cols];
        let b = values(rows, 6);
        let m = PackedI8::new(&w, Some(&b), rows, cols);
        let mut out = vec![f32::NAN; rows];
        m.forward_then(&zero, 1, &mut out, Epilogue::None);
        assert_eq!(out, b);
    }

    #[test]
    fn tokens_of_any_range_read_back_within_half_a_step() {
        let cases: [Vec<f32>; 8] = [
            values(37, 11),
            values(1003, 15).iter().map(|v| v * 40.0 + 3.0).collect(),
            values(40, 12).iter().map(|v| v.abs() + 0.5).collect(),
            values(40, 13).iter().map(|v| -v.abs() - 0.5).collect(),
            vec![3.0e38, -3.0e38, 1.0e38, 0.0, -2.5e38],
            vec![1.0e-30, -3.0e-31, 0.0],
            vec![1.0e-40, -1.0e-41],
            vec![0.0, 7.0, 0.0],
        ];
        for (i, v) in cases.iter().enumerate() {
            let mut u = vec![0u8; v.len()];
            let (a, z) = quantize_token(v, &mut u);
            for level in Level::available() {
                let mut at = vec![0u8; v.len()];
                let got = quantize_token_at(level, v, &mut at);
                assert_eq!((got, at), ((a, z), u.clone()), "case {i}, {level:?}");
            }
            assert!(a.is_finite(), "case {i}: scale {a}");
            if a == 0.0 {
                // Only a range under 255 normal floats' least reads as zeros.
                assert!(
                    v.iter().all(|x| x.abs() < 255.0 * f32::MIN_POSITIVE),
                    "case {i}"
                );
                assert!(u.iter().all(|&u| u == 0) && z == 0, "case {i}");
                continue;
            }
            for (&x, &u) in v.iter().zip(&u) {
                let back = a * (u as f32 - z as f32);
                assert!(
                    (back - x).abs() <= a * 0.5001,
                    "case {i}: {x} read back as {back}"
                );
                if x == 0.0 {
                    assert_eq!(back, 0.0, "case {i}: zero is exact");
                }
            }
        }
        let mut u = vec![0u8; 3];
        for level in Level::available() {
            assert!(quantize_token_at(level, &[1.0, f32::NAN, 2.0], &mut u)
                .0
                .is_nan());
            assert!(
                quantize_token_at(level, &[1.0, f32::NEG_INFINITY], &mut u[..2])
                    .0
                    .is_nan()
            );
            // A long token: the vector lanes and the tail.
            let mut long = values(1000, 14);
            long[997] = f32::INFINITY;
            let mut b = vec![0u8; long.len()];
            assert!(quantize_token_at(level, &long, &mut b).0.is_nan());
        }
        assert_eq!(quantize_token(&[0.0; 3], &mut u), (0.0, 0));
        assert_eq!(u, [0; 3]);
        // A weight row of values too small for a normal step reads as zeros.
        let mut q = vec![1i8; 2];
        assert_eq!(quantize_row(&[1.0e-40, -1.0e-41], &mut q), 0.0);
        assert_eq!(q, [0, 0]);
    }

    #[test]
    fn rows_read_back_within_half_a_step() {
        let (rows, cols) = (70, 37);
        let w = values(rows * cols, 7);
        let m = PackedI8::new(&w, None, rows, cols);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.row(r, &mut row);
            let want = &w[r * cols..(r + 1) * cols];
            let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() <= step * 0.5 + 1e-7, "row {r}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn epilogues_apply_after_the_scale_and_bias() {
        let (rows, cols, n) = (40, 24, 9);
        let (w, b, x) = (
            values(rows * cols, 8),
            values(rows, 9),
            values(n * cols, 10),
        );
        let m = PackedI8::new(&w, Some(&b), rows, cols);
        let mut plain = vec![0f32; n * rows];
        m.forward_then(&x, n, &mut plain, Epilogue::None);
        for e in [Epilogue::Relu, Epilogue::Gelu, Epilogue::Silu] {
            let mut out = vec![0f32; n * rows];
            m.forward_then(&x, n, &mut out, e);
            let want: Vec<f32> = plain.iter().map(|&v| e.apply(v)).collect();
            assert_eq!(out, want, "{e:?}");
        }
    }
}
