//! Dense f32 products with weights packed once at load, for the per-step
//! layers of encoder-decoder models.
//!
//! A decoder step multiplies a few dozen activation rows (the beams of a
//! batch) by every weight matrix of the decoder and by the output layer.
//! [`PackedF32`] stores a `rows × cols` matrix in panels of [`PANEL`] output
//! rows, column-major inside a panel: for each input column `c`, the panel's
//! 32 weights `W[r0..r0 + 32, c]` lie next to each other. The kernel then
//! keeps a 32-output × 8-token block of sums in registers, and each step
//! over `c` loads 32 weights once and broadcasts one value of each token
//! (outer products, as BLAS micro-kernels do), instead of a horizontal dot
//! product per (row, token) that loads an activation for every multiply-add.
//! Panels are split between rayon's threads; a panel meets every group of 8
//! tokens while it is in the core's L2 cache.
//!
//! Each output cell is `bias[r] + Σ_c W[r, c] · x[t, c]` summed in column
//! order by one multiply-add chain, so a token's result does not depend on
//! what it is batched with or how panels are split (for a given level: the
//! scalar, AVX2 and AVX-512 paths differ in float rounding).

use rayon::prelude::*;

use super::{level, Level, OutSink};

/// Output rows per panel.
pub const PANEL: usize = 32;

/// A function applied to each output after the bias, as the product is
/// written (so a feed-forward block's activation runs on every thread and
/// costs no pass of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Epilogue {
    /// The output as it is.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `x / (1 + e^-x)` (SiLU, swish).
    Silu,
    /// `x · (1 + erf(x / √2)) / 2` (exact GELU, transformers' `gelu`).
    Gelu,
    /// `x · (1 + tanh(√(2/π) · (x + 0.044715 x³))) / 2` (`gelu_new`).
    GeluTanh,
}

impl Epilogue {
    /// The function at `x`, computed as candle computes it.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Epilogue::None => x,
            Epilogue::Relu => x.max(0.0),
            Epilogue::Silu => x / ((-x).exp() + 1.0),
            Epilogue::Gelu => (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x,
            Epilogue::GeluTanh => {
                let c = (2.0f32 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * x * (1.0 + 0.044715 * x * x)).tanh())
            }
        }
    }
}

/// Products smaller than this (multiply-adds) run on the calling thread.
const SERIAL_WORK: usize = 64 * 1024;
/// Tasks per thread, so that a thread slowed by other work is caught up.
const TASKS_PER_THREAD: usize = 4;

/// A `rows × cols` f32 matrix with an optional bias, packed for
/// [`PackedF32::forward`].
pub struct PackedF32 {
    /// Panel `p`, column `c`, lane `j` at `(p * cols + c) * PANEL + j`:
    /// `W[p * PANEL + j, c]`, zero past the last row.
    panels: Vec<f32>,
    /// `rows` values (zeros when the layer has none).
    bias: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl PackedF32 {
    /// Packs `w` (`rows × cols`, row-major, as `nn.Linear.weight` stores it)
    /// and `bias` (`rows` values). Panics if the lengths do not match the
    /// shape.
    pub fn new(w: &[f32], bias: Option<&[f32]>, rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weights of {rows} × {cols}");
        let count = rows.div_ceil(PANEL);
        let mut panels = vec![0f32; count * cols * PANEL];
        for (r, row) in w.chunks_exact(cols.max(1)).enumerate().take(rows) {
            let (p, j) = (r / PANEL, r % PANEL);
            let panel = &mut panels[p * cols * PANEL..(p + 1) * cols * PANEL];
            for (c, &v) in row.iter().enumerate() {
                panel[c * PANEL + j] = v;
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
            bias,
            rows,
            cols,
        }
    }

    /// Row `r` of the matrix (`cols` values) into `out`: an embedding
    /// lookup in a table packed as an output layer. Panics unless `r <
    /// rows` and `out` holds `cols` values.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let (p, j) = (r / PANEL, r % PANEL);
        let panel = &self.panels[p * self.cols * PANEL..(p + 1) * self.cols * PANEL];
        for (v, lanes) in out[..self.cols].iter_mut().zip(panel.chunks_exact(PANEL)) {
            *v = lanes[j];
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

    /// `out[t * rows + r] = bias[r] + Σ_c W[r, c] · x[t * cols + c]` for the
    /// `n` tokens of `x`, in parallel over panels on rayon's current pool.
    /// Panics unless `x` holds `n × cols` values and `out` `n × rows`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.forward_then(x, n, out, Epilogue::None);
    }

    /// [`PackedF32::forward`] with `epilogue` applied to every output.
    pub fn forward_then(&self, x: &[f32], n: usize, out: &mut [f32], epilogue: Epilogue) {
        self.forward_at(level(), x, n, out, epilogue);
    }

    /// [`PackedF32::forward`] into a new vector.
    pub fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.apply_then(x, n, Epilogue::None)
    }

    /// [`PackedF32::apply`] with `epilogue` applied to every output.
    pub fn apply_then(&self, x: &[f32], n: usize, epilogue: Epilogue) -> Vec<f32> {
        let mut out = vec![0f32; n * self.rows];
        self.forward_then(x, n, &mut out, epilogue);
        out
    }

    /// [`PackedF32::forward`] at a given level (tests compare the levels),
    /// with `epilogue` applied to every output.
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
        let sink = OutSink::new(out, self.rows);
        let threads = rayon::current_num_threads();
        let run = |panels: std::ops::Range<usize>| {
            self.run(
                &Task {
                    m: self,
                    x,
                    n,
                    panels,
                    out: sink,
                    epilogue,
                },
                level,
            )
        };
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

    fn run(&self, task: &Task<'_>, level: Level) {
        match level {
            Level::Scalar => scalar_panels(task),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only chosen when the CPU has AVX2 and FMA.
            Level::Avx2 => unsafe { x86::panels_avx2(task) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Vnni` is only chosen when the CPU has AVX-512F.
            Level::Avx512Vnni => unsafe { x86::panels_avx512(task) },
        }
    }
}

/// `erf(x)` within 4.2e-7 of the exact value (libm's `erff` is within
/// 6e-8; torch's vectorised GELU uses an approximation of its own too).
/// A rational `x·P(x²)/Q(x²)` fitted by least squares (for precis, on
/// |x| ≤ 3.925, past which `erf` in f32 is ±1), without branches or table
/// look-ups, so that a panel's 32 outputs vectorise; with fused multiply-
/// adds on every level, so that every level gives the same bits.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        // erf(x) / x → 2/√π at 0.
        std::f32::consts::FRAC_2_SQRT_PI,
        0.196_142_46,
        0.050_063_78,
        0.003_542_673_8,
        0.000_138_257_67,
        -1.950_196e-6,
        2.011_909_7e-8,
    ];
    const Q: [f32; 5] = [
        1.0,
        0.507_158_95,
        0.113_427_62,
        0.014_027_47,
        0.000_918_279_6,
    ];
    let x = x.clamp(-3.925, 3.925);
    let t = x * x;
    let p = P.iter().rev().fold(0.0, |acc: f32, &c| acc.mul_add(t, c));
    let q = Q.iter().rev().fold(0.0, |acc: f32, &c| acc.mul_add(t, c));
    (x * p / q).clamp(-1.0, 1.0)
}

/// One thread's share of a product: a range of panels against every token.
struct Task<'a> {
    m: &'a PackedF32,
    x: &'a [f32],
    n: usize,
    panels: std::ops::Range<usize>,
    out: OutSink,
    epilogue: Epilogue,
}

impl Task<'_> {
    /// Panel `p`'s weights.
    fn panel(&self, p: usize) -> &[f32] {
        let len = self.m.cols * PANEL;
        &self.m.panels[p * len..(p + 1) * len]
    }

    /// Writes the sums of panel `p` for token `t` (`PANEL` lanes, those past
    /// the last row dropped), adding the bias.
    #[inline(always)]
    fn put(&self, p: usize, t: usize, sums: &[f32; PANEL]) {
        let r0 = p * PANEL;
        let live = (self.m.rows - r0).min(PANEL);
        let mut v = [0f32; PANEL];
        let bias = &self.m.bias[r0..r0 + live];
        // One loop per function, so that each vectorises.
        macro_rules! each {
            ($e:expr) => {
                for ((v, s), b) in v.iter_mut().zip(sums).zip(bias) {
                    *v = $e.apply(s + b);
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
    let cols = task.m.cols;
    for p in task.panels.clone() {
        let panel = task.panel(p);
        for t in 0..task.n {
            let x = &task.x[t * cols..(t + 1) * cols];
            let mut sums = [0f32; PANEL];
            for (c, &xv) in x.iter().enumerate() {
                let w = &panel[c * PANEL..(c + 1) * PANEL];
                for (s, &wv) in sums.iter_mut().zip(w) {
                    *s = wv.mul_add(xv, *s);
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

    use super::{Task, PANEL};

    /// Asks for the `PANEL` weights at `at` (two cache lines) to be brought
    /// into L2: the weights of the slice swept next, while this one is
    /// computed, so that reading memory and multiplying overlap (without
    /// it, a product whose weights come from memory took the sum of the two
    /// times). A prefetch never faults, so `at` may lie past the matrix.
    #[inline(always)]
    unsafe fn fetch(at: *const f32) {
        unsafe {
            let at = at as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(at);
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64));
        }
    }

    /// `T` tokens from `t0` against one panel, 512-bit: two registers of
    /// sums per token, over input columns `cols` only. The sums start at
    /// zero on the first columns, else at what `partial` (32 sums per
    /// token of the task) holds; they are written out on the last columns,
    /// else kept in `partial`. Every sum stays one chain in column order.
    #[inline(always)]
    unsafe fn block_512<const T: usize, const FETCH: bool>(
        task: &Task<'_>,
        p: usize,
        t0: usize,
        cols: std::ops::Range<usize>,
        partial: &mut [f32],
    ) {
        unsafe {
            let width = task.m.cols;
            let (first, last) = (cols.start == 0, cols.end == width);
            let w = task.panel(p).as_ptr();
            let x = task.x.as_ptr().add(t0 * width);
            let part = partial.as_mut_ptr().add(t0 * PANEL);
            let mut acc = [[_mm512_setzero_ps(); 2]; T];
            if !first {
                for (t, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm512_loadu_ps(part.add(t * PANEL));
                    acc[1] = _mm512_loadu_ps(part.add(t * PANEL + 16));
                }
            }
            // The weights swept next lie right after this slice's.
            let ahead = w.wrapping_add((cols.end - cols.start) * PANEL);
            for c in cols {
                if FETCH {
                    fetch(ahead.wrapping_add(c * PANEL));
                }
                let w0 = _mm512_loadu_ps(w.add(c * PANEL));
                let w1 = _mm512_loadu_ps(w.add(c * PANEL + 16));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(t * width + c));
                    acc[0] = _mm512_fmadd_ps(w0, xv, acc[0]);
                    acc[1] = _mm512_fmadd_ps(w1, xv, acc[1]);
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                if last {
                    let mut sums = [0f32; PANEL];
                    _mm512_storeu_ps(sums.as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(sums.as_mut_ptr().add(16), acc[1]);
                    task.put(p, t0 + t, &sums);
                } else {
                    _mm512_storeu_ps(part.add(t * PANEL), acc[0]);
                    _mm512_storeu_ps(part.add(t * PANEL + 16), acc[1]);
                }
            }
        }
    }

    /// `T` tokens from `t0` against one panel, 256-bit: four registers of
    /// sums per token.
    #[inline(always)]
    unsafe fn block_256<const T: usize, const FETCH: bool>(task: &Task<'_>, p: usize, t0: usize) {
        unsafe {
            let cols = task.m.cols;
            let w = task.panel(p).as_ptr();
            let x = task.x.as_ptr().add(t0 * cols);
            let mut acc = [[_mm256_setzero_ps(); 4]; T];
            for c in 0..cols {
                if FETCH {
                    fetch(w.wrapping_add((cols + c) * PANEL));
                }
                let ws = [0, 8, 16, 24].map(|j| _mm256_loadu_ps(w.add(c * PANEL + j)));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(*x.add(t * cols + c));
                    for (a, &wv) in acc.iter_mut().zip(&ws) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                let mut sums = [0f32; PANEL];
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(sums.as_mut_ptr().add(8 * j), *a);
                }
                task.put(p, t0 + t, &sums);
            }
        }
    }

    /// Runs `block::<T, FETCH>(args)` on the next `T` of `left` tokens,
    /// `T` the widest of `wide`, 4, 2, 1 that fits, prefetching the
    /// weights swept next only on a slice's first group (which streams them
    /// while the other groups find this slice in cache); the number of
    /// tokens taken.
    macro_rules! tokens {
        ($wide:literal, $left:expr, $first:expr, $block:ident($($arg:expr),*)) => {{
            let (left, first) = ($left, $first);
            macro_rules! run {
                ($t:literal) => {{
                    if first {
                        $block::<$t, true>($($arg),*)
                    } else {
                        $block::<$t, false>($($arg),*)
                    }
                    $t
                }};
            }
            if left >= $wide {
                run!($wide)
            } else if left >= 4 {
                run!(4)
            } else if left >= 2 {
                run!(2)
            } else {
                run!(1)
            }
        }};
    }

    /// # Safety
    /// The CPU must have AVX-512F (and AVX2, FMA).
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn panels_avx512(task: &Task<'_>) {
        unsafe {
            // A panel of many columns is swept in slices of `SLICE` columns
            // over every token, so that the slice stays in L2 between groups.
            let width = task.m.cols;
            let mut partial = if width > SLICE {
                vec![0f32; task.n * PANEL]
            } else {
                Vec::new()
            };
            for p in task.panels.clone() {
                for c0 in (0..width).step_by(SLICE) {
                    let cols = c0..(c0 + SLICE).min(width);
                    let mut t = 0;
                    while t < task.n {
                        let part = &mut partial[..];
                        t += tokens!(
                            8,
                            task.n - t,
                            t == 0,
                            block_512(task, p, t, cols.clone(), part)
                        );
                    }
                }
            }
        }
    }

    /// Input columns per slice of a panel (32 × 1024 weights: 128 KiB).
    const SLICE: usize = 1024;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panels_avx2(task: &Task<'_>) {
        unsafe {
            for p in task.panels.clone() {
                let mut t = 0;
                while t < task.n {
                    t += tokens!(2, task.n - t, t == 0, block_256(task, p, t));
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix in [-1, 1) (the int8 tests'
    /// too).
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rows_read_back_as_they_were_packed() {
        let (rows, cols) = (70, 37);
        let w = values(rows * cols, 4);
        let m = PackedF32::new(&w, None, rows, cols);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.row(r, &mut row);
            assert_eq!(row, w[r * cols..(r + 1) * cols], "row {r}");
        }
    }

    #[test]
    fn every_level_matches_the_definition_and_batching_changes_nothing() {
        // Shapes with a partial last panel, odd token counts and a column
        // count that is not a multiple of anything; one swept in slices.
        for (rows, cols, n) in [
            (70, 37, 11),
            (32, 64, 8),
            (5, 3, 1),
            (96, 129, 33),
            (40, 2500, 13),
        ] {
            let w = values(rows * cols, 1);
            let b = values(rows, 2);
            let x = values(n * cols, 3);
            let m = PackedF32::new(&w, Some(&b), rows, cols);
            for level in Level::available() {
                let mut out = vec![f32::NAN; n * rows];
                m.forward_at(level, &x, n, &mut out, Epilogue::None);
                for t in 0..n {
                    for r in 0..rows {
                        let want: f64 = b[r] as f64
                            + (0..cols)
                                .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                                .sum::<f64>();
                        let got = out[t * rows + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{level:?} ({t}, {r}): {got} vs {want}"
                        );
                    }
                    // The same token alone gives the same bits.
                    let mut alone = vec![0f32; rows];
                    let one = &x[t * cols..(t + 1) * cols];
                    m.forward_at(level, one, 1, &mut alone, Epilogue::None);
                    assert_eq!(alone, out[t * rows..(t + 1) * rows], "{level:?} token {t}");
                }
            }
        }
    }

    #[test]
    fn epilogues_apply_their_function_to_every_output() {
        let (rows, cols, n) = (40, 24, 9);
        let (w, b, x) = (values(rows * cols, 6), values(rows, 7), values(n * cols, 8));
        let m = PackedF32::new(&w, Some(&b), rows, cols);
        let plain = m.apply(&x, n);
        for e in [
            Epilogue::Relu,
            Epilogue::Silu,
            Epilogue::Gelu,
            Epilogue::GeluTanh,
        ] {
            let want: Vec<f32> = plain.iter().map(|&v| e.apply(v)).collect();
            assert_eq!(m.apply_then(&x, n, e), want, "{e:?}");
        }
        // Reference values (torch.nn.functional at 1.0 and -0.5).
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(Epilogue::Gelu.apply(1.0), 0.841_344_7));
        assert!(close(Epilogue::GeluTanh.apply(1.0), 0.841_192));
        assert!(close(Epilogue::Silu.apply(-0.5), -0.188_770_33));
        assert_eq!(Epilogue::Relu.apply(-0.5), 0.0);
    }

    #[test]
    fn erf_is_within_its_bound_of_libm_and_odd() {
        let mut worst = 0f32;
        for i in 0..=2_000_000 {
            let x = i as f32 * 3e-6;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
            assert_eq!(erf(-x), -erf(x), "at {x}");
        }
        assert!(worst < 4.2e-7 + 6e-8, "{worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(4.0), 1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn no_bias_means_zero_bias_and_empty_inputs_write_nothing() {
        let w = values(40 * 16, 4);
        let m = PackedF32::new(&w, None, 40, 16);
        let x = values(3 * 16, 5);
        let with_zero = PackedF32::new(&w, Some(&[0.0; 40]), 40, 16);
        assert_eq!(m.apply(&x, 3), with_zero.apply(&x, 3));
        assert!(m.apply(&[], 0).is_empty());
    }
}
