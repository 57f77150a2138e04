//! Kernels against hand-computed values, the scalar reference against plain
//! f32 arithmetic, and every SIMD level against the scalar reference.

use half::f16;
use proptest::prelude::*;

use super::scalar::{self, QK8, QK_K};
use super::*;

const ALL: [QType; 9] = [
    QType::F32,
    QType::F16,
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q8_0,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
];

/// SplitMix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    /// ± uniform in [lo, hi).
    fn signed(&mut self, lo: f32, hi: f32) -> f32 {
        let v = self.uniform(lo, hi);
        if self.next() & 1 == 0 {
            v
        } else {
            -v
        }
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// A row of random blocks: random quant bits, scales in realistic ranges.
fn random_row(qt: QType, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut row: Vec<u8> = (0..qt.row_bytes(cols)).map(|_| rng.byte()).collect();
    for b in row.chunks_exact_mut(qt.block_bytes()) {
        match qt {
            QType::F32 => b.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes()),
            QType::F16 => put_f16(b, 0, rng.uniform(-1.0, 1.0)),
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => put_f16(b, 0, rng.signed(1e-3, 0.05)),
            QType::Q4_1 => {
                put_f16(b, 0, rng.signed(1e-3, 0.05));
                put_f16(b, 2, rng.uniform(-0.5, 0.5));
            }
            QType::Q4_K | QType::Q5_K => {
                put_f16(b, 0, rng.signed(1e-4, 5e-3));
                put_f16(b, 2, rng.signed(1e-4, 5e-3));
            }
            QType::Q6_K => put_f16(b, 208, rng.signed(1e-4, 5e-3)),
        }
    }
    row
}

fn random_matrix(qt: QType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    (0..rows).flat_map(|_| random_row(qt, cols, rng)).collect()
}

/// Random activations, rows of different magnitudes, some all-zero runs of 32.
fn random_input(n: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = Vec::with_capacity(n * cols);
    for _ in 0..n {
        let scale = rng.uniform(0.01, 4.0);
        for c in 0..cols {
            x.push(rng.uniform(-1.0, 1.0) * scale);
            if c % 32 == 31 && rng.next().is_multiple_of(8) {
                let len = x.len();
                x[len - 32..].fill(0.0);
            }
        }
    }
    x
}

/// Per value, the magnitude of the terms the kernels add: |value|, or for
/// types with an offset `|scale · q| + |offset|`.
fn term_magnitudes(qt: QType, row: &[u8], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; cols];
    match qt {
        QType::Q4_1 => {
            for (b, y) in row.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let k = scalar::block32(qt, b);
                for (y, &q) in y.iter_mut().zip(&k.q) {
                    *y = (k.d * q as f32).abs() + k.m.abs();
                }
            }
        }
        QType::Q4_K | QType::Q5_K => {
            let bb = qt.block_bytes();
            for (b, y) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK_K)) {
                let k = scalar::block_k4(qt, b);
                for (i, y) in y.iter_mut().enumerate() {
                    let j = i / 32;
                    *y = (k.d * k.sc[j] as f32 * k.q[i] as f32).abs()
                        + (k.dmin * k.m[j] as f32).abs();
                }
            }
        }
        _ => {
            scalar::dequantize_row(qt, row, &mut out);
            out.iter_mut().for_each(|v| *v = v.abs());
        }
    }
    out
}

/// The activations as the kernels see them (dequantized).
fn seen_input(x: &Activations) -> Vec<Vec<f32>> {
    (0..x.rows())
        .map(|t| {
            let a = x.row(t);
            match x.format {
                Format::F32 => a.f.to_vec(),
                Format::Q8 => {
                    a.qs.iter()
                        .enumerate()
                        .map(|(c, &q)| a.d[c / QK8] * q as f32)
                        .collect()
                }
                Format::Q8K => {
                    a.qs.iter()
                        .enumerate()
                        .map(|(c, &q)| a.d[c / QK_K] * q as f32)
                        .collect()
                }
            }
        })
        .collect()
}

/// Products of a `rows` × `cols` matrix with `n` random activation rows:
/// every available level against the scalar reference.
fn check_levels(
    qt: QType,
    rows: usize,
    cols: usize,
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let data = random_matrix(qt, rows, cols, &mut rng);
    let w = QMatrix::new(qt, rows, cols, &data).unwrap();
    let input = random_input(n, cols, &mut rng);
    let mut x = Activations::new();
    x.quantize(&input, n, cols, qt);
    let mut want = vec![0.0; n * rows];
    matmul_reference(&w, &x, &mut want);
    let seen = seen_input(&x);
    for (level, narrow) in levels() {
        let mut got = vec![f32::NAN; n * rows];
        narrow_kernels(narrow, || matmul_at(level, &w, &x, &mut got));
        for r in 0..rows {
            let mags = term_magnitudes(qt, w.row(r), cols);
            for t in 0..n {
                let bound: f32 = mags.iter().zip(&seen[t]).map(|(m, x)| m * x.abs()).sum();
                let (g, e) = (got[t * rows + r], want[t * rows + r]);
                prop_assert!(
                    (g - e).abs() <= 1e-4 * bound + 1e-6,
                    "{qt} at {level:?} (narrow: {narrow}): row {r} token {t}: {g} vs scalar {e} (terms {bound})"
                );
            }
        }
    }
    Ok(())
}

/// Every kernel family this CPU runs, with the AVX-512 one twice: with its
/// 512-bit kernels and with its 256-bit ones (`narrow`).
fn levels() -> Vec<(Level, bool)> {
    let mut levels: Vec<(Level, bool)> =
        Level::available().into_iter().map(|l| (l, false)).collect();
    #[cfg(target_arch = "x86_64")]
    if levels.iter().any(|&(l, _)| l == Level::Avx512Vnni) {
        levels.push((Level::Avx512Vnni, true));
    }
    levels
}

/// Runs `f` (on this thread) with the AVX-512 family's 256-bit kernels if
/// `narrow`.
fn narrow_kernels(narrow: bool, f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    super::x86::NARROW.set(narrow);
    f();
    #[cfg(target_arch = "x86_64")]
    super::x86::NARROW.set(false);
    let _ = narrow;
}

fn shape() -> impl Strategy<Value = (usize, usize, usize, u64)> {
    (1usize..14, 1usize..5, 1usize..12, any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn q4_0_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q4_0, rows, 32 * blocks, n, seed)?;
    }

    #[test]
    fn q4_1_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q4_1, rows, 32 * blocks, n, seed)?;
    }

    #[test]
    fn q5_0_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q5_0, rows, 32 * blocks, n, seed)?;
    }

    #[test]
    fn q8_0_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q8_0, rows, 32 * blocks, n, seed)?;
    }

    #[test]
    fn q4_k_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q4_K, rows, 256 * blocks, n, seed)?;
    }

    #[test]
    fn q5_k_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q5_K, rows, 256 * blocks, n, seed)?;
    }

    #[test]
    fn q6_k_levels_match_scalar((rows, blocks, n, seed) in shape()) {
        check_levels(QType::Q6_K, rows, 256 * blocks, n, seed)?;
    }

    #[test]
    fn f16_levels_match_scalar((rows, _blocks, n, seed) in shape(), cols in 1usize..80) {
        check_levels(QType::F16, rows, cols, n, seed)?;
    }

    #[test]
    fn f32_levels_match_scalar((rows, _blocks, n, seed) in shape(), cols in 1usize..80) {
        check_levels(QType::F32, rows, cols, n, seed)?;
    }

    /// The full path against dequantized weights times unquantized inputs:
    /// only activation quantization error remains.
    #[test]
    fn matmul_matches_f32_dot(qi in 0usize..9, (rows, blocks, n, seed) in shape()) {
        let qt = ALL[qi];
        let cols = qt.block_len().max(32) * blocks;
        let mut rng = Rng(seed);
        let data = random_matrix(qt, rows, cols, &mut rng);
        let w = QMatrix::new(qt, rows, cols, &data).unwrap();
        let input = random_input(n, cols, &mut rng);
        let mut x = Activations::new();
        x.quantize(&input, n, cols, qt);
        let mut got = vec![0.0; n * rows];
        matmul(&w, &x, &mut got);
        let mut wr = vec![0.0; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut wr);
            for t in 0..n {
                let xt = &input[t * cols..(t + 1) * cols];
                let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                let abs: f32 = wr.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                // Rounding an activation to a step of d = amax / 127 moves it
                // at most d / 2 (plus f16 rounding of d).
                let block = x.format_block();
                let quant: f32 = wr.iter().enumerate().map(|(c, a)| {
                    let blk = &xt[c / block * block..(c / block + 1) * block];
                    let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    a.abs() * amax / 127.0 * 0.6
                }).sum();
                let g = got[t * rows + r];
                prop_assert!(
                    (g as f64 - exact).abs() <= (quant + 2e-3 * abs + 1e-5) as f64,
                    "{qt}: row {r} token {t}: {g} vs {exact}"
                );
            }
        }
    }

    /// A token's result does not depend on the batch around it.
    #[test]
    fn batching_does_not_change_results(qi in 0usize..9, (rows, blocks, n, seed) in shape()) {
        let qt = ALL[qi];
        let cols = qt.block_len().max(32) * blocks;
        let mut rng = Rng(seed);
        let data = random_matrix(qt, rows, cols, &mut rng);
        let w = QMatrix::new(qt, rows, cols, &data).unwrap();
        let input = random_input(n, cols, &mut rng);
        let mut x = Activations::new();
        x.quantize(&input, n, cols, qt);
        let mut all = vec![0.0; n * rows];
        matmul(&w, &x, &mut all);
        let mut one = vec![0.0; rows];
        for t in 0..n {
            x.quantize(&input[t * cols..], 1, cols, qt);
            matmul(&w, &x, &mut one);
            prop_assert_eq!(&all[t * rows..(t + 1) * rows], &one[..]);
        }
    }
}

/// Everything quantization stored for one row, for inspection.
struct RowView<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    neg_sum: &'a [i32],
    s: &'a [f32],
    ksums: &'a [i16],
    kmins: &'a [f32],
    pairs: &'a [i8],
}

impl Activations {
    fn view(&self, t: usize) -> RowView<'_> {
        let nb = self.cols / self.format_block();
        let r = self.row(t);
        let part = |len: usize| t * len..(t + 1) * len;
        RowView {
            qs: r.qs,
            d: r.d,
            neg_sum: self.neg_sum.get(part(nb)).unwrap_or(&[]),
            s: r.s,
            ksums: self.ksums.get(part(nb * KSUMS)).unwrap_or(&[]),
            kmins: self.kmins.get(part(nb * 8)).unwrap_or(&[]),
            pairs: lines_as_bytes(&self.pairs)
                .get(part(self.stride_pairs))
                .unwrap_or(&[]),
        }
    }

    /// Values per scale block of the current format.
    fn format_block(&self) -> usize {
        match self.format {
            Format::Q8 => QK8,
            Format::Q8K => QK_K,
            Format::F32 => 1,
        }
    }
}

/// A matrix big enough to be split between threads.
fn big(qt: QType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    random_matrix(qt, rows, cols, &mut Rng(seed))
}

#[test]
fn threads_do_not_change_results() {
    let (rows, cols, n) = (300, 512, 5);
    for qt in [QType::Q4_K, QType::Q8_0, QType::F16] {
        let data = big(qt, rows, cols, 7);
        let w = QMatrix::new(qt, rows, cols, &data).unwrap();
        let input = random_input(n, cols, &mut Rng(8));
        let mut x = Activations::new();
        x.quantize(&input, n, cols, qt);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0; n * rows];
            pool.install(|| matmul(&w, &x, &mut out));
            out
        };
        assert_eq!(run(1), run(3), "{qt}");
    }
}

/// Rows so wide that a cache tile holds only 8 tokens: 21 tokens take three
/// tiles, and every token's result is the one it gets alone.
#[test]
fn token_tiles_cover_every_token() {
    let (rows, cols, n) = (3, 65536, 21);
    for qt in [QType::Q4_K, QType::Q8_0] {
        let data = big(qt, rows, cols, 4);
        let w = QMatrix::new(qt, rows, cols, &data).unwrap();
        let input = random_input(n, cols, &mut Rng(6));
        let mut x = Activations::new();
        x.quantize(&input, n, cols, qt);
        let mut all = vec![f32::NAN; n * rows];
        matmul(&w, &x, &mut all);
        let mut one = vec![0.0; rows];
        for t in 0..n {
            x.quantize(&input[t * cols..], 1, cols, qt);
            matmul(&w, &x, &mut one);
            assert_eq!(&all[t * rows..(t + 1) * rows], &one[..], "{qt} token {t}");
        }
    }
}

#[test]
fn matmul_many_equals_separate_products() {
    let cols = 512;
    let n = 3;
    let shapes = [(QType::Q4_K, 200), (QType::Q6_K, 64), (QType::Q5_K, 1)];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(qt, rows))| big(qt, rows, cols, i as u64))
        .collect();
    let mats: Vec<QMatrix<'_>> = shapes
        .iter()
        .zip(&data)
        .map(|(&(qt, rows), d)| QMatrix::new(qt, rows, cols, d).unwrap())
        .collect();
    let input = random_input(n, cols, &mut Rng(3));
    let mut x = Activations::new();
    x.quantize(&input, n, cols, QType::Q4_K);
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; n * m.rows]).collect();
    let mut products: Vec<(QMatrix<'_>, &mut [f32])> = mats
        .iter()
        .copied()
        .zip(outs.iter_mut().map(|o| &mut o[..]))
        .collect();
    matmul_many(&mut products, &x);
    for (m, o) in mats.iter().zip(&outs) {
        let mut one = vec![0.0; n * m.rows];
        matmul(m, &x, &mut one);
        assert_eq!(o, &one);
    }
}

#[test]
#[should_panic(expected = "need activations quantized for them")]
fn wrong_activation_format_panics() {
    let data = big(QType::Q4_0, 2, 256, 1);
    let w = QMatrix::new(QType::Q4_0, 2, 256, &data).unwrap();
    let mut x = Activations::new();
    x.quantize(&[0.5; 256], 1, 256, QType::Q4_K);
    matmul(&w, &x, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "multiplied by activations of 64 values")]
fn wrong_width_panics() {
    let data = big(QType::Q8_0, 2, 32, 1);
    let w = QMatrix::new(QType::Q8_0, 2, 32, &data).unwrap();
    let mut x = Activations::new();
    x.quantize(&[0.5; 64], 1, 64, QType::Q8_0);
    matmul(&w, &x, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "output holds 3 values")]
fn short_output_panics() {
    let data = big(QType::Q8_0, 2, 32, 1);
    let w = QMatrix::new(QType::Q8_0, 2, 32, &data).unwrap();
    let mut x = Activations::new();
    x.quantize(&[0.5; 64], 2, 32, QType::Q8_0);
    matmul(&w, &x, &mut [0.0; 3]);
}

#[test]
fn qmatrix_checks_its_shape() {
    let e = QMatrix::new(QType::Q4_K, 2, 300, &[0; 288]).unwrap_err();
    assert!(matches!(e, KernelError::PartialBlock { .. }), "{e}");
    assert!(e.to_string().contains("whole 256-value blocks"), "{e}");
    let e = QMatrix::new(QType::Q4_K, 2, 256, &[0; 287]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a Q4_K matrix of 2 × 256 takes 288 bytes, but 287 were given"
    );
    let e = QMatrix::new(QType::Q8_0, usize::MAX, 64, &[]).unwrap_err();
    assert!(e.to_string().contains("more than fit in memory"), "{e}");
    assert!(QMatrix::new(QType::Q4_K, 2, 256, &[0; 288]).is_ok());
    assert!(QMatrix::new(QType::F32, 3, 5, &[0; 60]).is_ok());
}

#[test]
fn qtype_tables() {
    for (id, qt) in [0, 1, 2, 3, 6, 8, 12, 13, 14].into_iter().zip(ALL) {
        assert_eq!(QType::from_ggml(id), Some(qt));
        assert_eq!(qt.row_bytes(qt.block_len() * 3), 3 * qt.block_bytes());
    }
    assert_eq!(QType::from_ggml(7), None);
    assert_eq!(QType::Q4_K.name(), "Q4_K");
    assert_eq!(QType::Q6_K.row_bytes(512), 420);
}

#[test]
fn simd_level_is_named() {
    assert!(["avx512vnni", "avx2", "scalar"].contains(&simd_level()));
}

// --- Hand-computed blocks ---------------------------------------------------

fn dequant(qt: QType, block: &[u8]) -> Vec<f32> {
    let w = QMatrix::new(qt, 1, qt.block_len(), block).unwrap();
    let mut out = vec![0.0; qt.block_len()];
    w.dequantize_row(0, &mut out);
    out
}

#[test]
fn dequantize_float_rows() {
    let mut b = Vec::new();
    for v in [1.5f32, -2.25, 0.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let w = QMatrix::new(QType::F32, 1, 3, &b).unwrap();
    let mut out = [0.0; 3];
    w.dequantize_row(0, &mut out);
    assert_eq!(out, [1.5, -2.25, 0.0]);
    let b: Vec<u8> = [0.5f32, -3.0]
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let w = QMatrix::new(QType::F16, 1, 2, &b).unwrap();
    let mut out = [0.0; 2];
    w.dequantize_row(0, &mut out);
    assert_eq!(out, [0.5, -3.0]);
}

#[test]
fn dequantize_q4_0() {
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 0.5);
    b[2] = 0x3f; // value 0: 15 - 8 = 7; value 16: 3 - 8 = -5
    b[17] = 0x80; // value 15: 0 - 8 = -8; value 31: 8 - 8 = 0
    let v = dequant(QType::Q4_0, &b);
    assert_eq!(
        (v[0], v[16], v[15], v[31], v[1]),
        (3.5, -2.5, -4.0, 0.0, -4.0)
    );
}

#[test]
fn dequantize_q4_1() {
    let mut b = vec![0u8; 20];
    put_f16(&mut b, 0, 0.25);
    put_f16(&mut b, 2, -1.0);
    b[4] = 0xa4; // value 0: 4 · 0.25 - 1 = 0; value 16: 10 · 0.25 - 1 = 1.5
    let v = dequant(QType::Q4_1, &b);
    assert_eq!((v[0], v[16], v[1]), (0.0, 1.5, -1.0));
}

#[test]
fn dequantize_q5_0() {
    let mut b = vec![0u8; 22];
    put_f16(&mut b, 0, 2.0);
    // High bits: value 0 (bit 0) and value 17 (bit 17).
    b[2..6].copy_from_slice(&(1u32 | 1 << 17).to_le_bytes());
    b[6] = 0x01; // value 0: 16 + 1 - 16 = 1; value 16: 0 - 16
    b[7] = 0x20; // value 1: 0 - 16; value 17: 16 + 2 - 16 = 2
    let v = dequant(QType::Q5_0, &b);
    assert_eq!((v[0], v[16], v[1], v[17]), (2.0, -32.0, -32.0, 4.0));
}

#[test]
fn dequantize_q8_0() {
    let mut b = vec![0u8; 34];
    put_f16(&mut b, 0, 0.5);
    b[2] = 5;
    b[33] = (-128i8) as u8;
    let v = dequant(QType::Q8_0, &b);
    assert_eq!((v[0], v[31], v[1]), (2.5, -64.0, 0.0));
}

/// Q4_K / Q5_K scales: sub-block 0 (scale 3, min 2) and sub-block 5
/// (scale 33, min 17, with high bits from bytes 1 and 5).
fn k4_scales() -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0] = 3; // sc0
    s[4] = 2; // m0
    s[1] = 0b10 << 6; // sc5 high bits: 2 → 32
    s[5] = 0b01 << 6; // m5 high bits: 1 → 16
    s[9] = 0x11; // sc5 low 4 bits 1, m5 low 4 bits 1
    s
}

#[test]
fn dequantize_q4_k() {
    assert_eq!(scalar::scale_min_k4(5, &k4_scales()), (33, 17));
    let mut b = vec![0u8; 144];
    put_f16(&mut b, 0, 0.5);
    put_f16(&mut b, 2, 0.25);
    b[4..16].copy_from_slice(&k4_scales());
    b[16] = 0x07; // value 0: sub-block 0, q 7; value 32: sub-block 1, q 0
    b[16 + 64 + 1] = 0x90; // chunk 2, l 1: value 129 (sub-block 4) q 0, value 161 (sub-block 5) q 9
    let v = dequant(QType::Q4_K, &b);
    assert_eq!(v[0], 0.5 * 3.0 * 7.0 - 0.25 * 2.0);
    assert_eq!(v[32], 0.0);
    assert_eq!(v[161], 0.5 * 33.0 * 9.0 - 0.25 * 17.0);
}

#[test]
fn dequantize_q5_k() {
    let mut b = vec![0u8; 176];
    put_f16(&mut b, 0, 0.5);
    put_f16(&mut b, 2, 0.25);
    b[4..16].copy_from_slice(&k4_scales());
    b[16 + 1] = 1 << 5; // qh[1] bit 5: high bit of value 161 (chunk 2, high nibbles)
    b[16] = 1; // qh[0] bit 0: high bit of value 0
    b[48] = 0x07;
    b[48 + 64 + 1] = 0x90;
    let v = dequant(QType::Q5_K, &b);
    assert_eq!(v[0], 0.5 * 3.0 * 23.0 - 0.25 * 2.0);
    assert_eq!(v[161], 0.5 * 33.0 * 25.0 - 0.25 * 17.0);
    assert_eq!(v[129], 0.0);
}

#[test]
fn dequantize_q6_k() {
    let mut b = vec![0u8; 210];
    put_f16(&mut b, 208, 0.5);
    for (k, s) in b[192..208].iter_mut().enumerate() {
        *s = (k as i8 - 8) as u8; // scale of values 16k..16k+16
    }
    // Half 1, l = 17: ql[64 + 17] low → value 128 + 17 (q1), high → value 128 + 81 (q3);
    // qh[32 + 17] bits 0-1 → q1, bits 4-5 → q3.
    b[64 + 17] = 0x5a;
    b[128 + 32 + 17] = 0b0011_0001;
    let v = dequant(QType::Q6_K, &b);
    // Value 145: q = 0x1a - 32 = -6, scale index 9 → 1.
    assert_eq!(v[145], 0.5 * 1.0 * -6.0);
    // Value 209: q = 0x35 - 32 = 21, scale index 13 → 5.
    assert_eq!(v[209], 0.5 * 5.0 * 21.0);
    // Value 0: q = -32, scale -8.
    assert_eq!(v[0], 0.5 * -8.0 * -32.0);
}

// --- Activation quantization -------------------------------------------------

#[test]
fn quantize_q8_blocks() {
    let mut x = vec![0.0f32; 64];
    x[0] = 1.27;
    x[1] = -0.635;
    x[2] = 0.005; // 0.5 steps: rounds to even (0)
    x[3] = 0.015; // 1.5 steps: rounds to even (2)
    let mut a = Activations::new();
    a.quantize(&x, 1, 64, QType::Q4_1);
    let r = a.view(0);
    assert_eq!(&r.qs[..5], &[127, -64, 0, 2, 0]);
    assert_eq!(r.d[0], f16::from_f32(0.01).to_f32());
    assert_eq!(r.neg_sum[0], -(127 - 64 + 2));
    assert_eq!(r.s[0], f16::from_f32(0.01 * 65.0).to_f32());
    // The all-zero block.
    assert_eq!((r.d[1], r.neg_sum[1], r.s[1]), (0.0, 0, 0.0));
    assert!(r.qs[32..].iter().all(|&q| q == 0));
}

#[test]
fn quantize_q8_k_blocks() {
    let mut x = vec![0.0f32; 512];
    // Block 0: the largest magnitude is negative; it maps to +127.
    x[0] = -2.54;
    x[1] = 1.0;
    x[17] = 2.54; // same magnitude, later: the first one sets the sign
    x[40] = -0.01; // -0.5 steps → -0 (ties to even)
    let mut a = Activations::new();
    a.quantize(&x, 1, 512, QType::Q6_K);
    let r = a.view(0);
    let d = 1.0 / (-127.0 / -2.54f32);
    assert_eq!(r.d[0], d);
    assert_eq!((r.qs[0], r.qs[1], r.qs[17], r.qs[40]), (-127, 50, 127, 0));
    // Sums per 16: values 0..16 and 16..32, then per 32.
    assert_eq!(&r.ksums[..3], &[-127 + 50, 127, 0]);
    assert_eq!(r.ksums[16], -127 + 50 + 127);
    assert_eq!(r.ksums[17], 0);
    // The sums per 32 times d, as floats.
    assert_eq!(r.kmins[0], d * 50.0);
    assert_eq!(r.kmins[1], 0.0);
    // Block 1 is all zeros.
    assert_eq!(r.d[1], 0.0);
    assert!(r.qs[256..].iter().all(|&q| q == 0));
    assert!(r.ksums[KSUMS..].iter().all(|&s| s == 0));
}

#[test]
fn pair_layout_permutes_whole_blocks() {
    // Values 0..96 (three blocks: one pair and a lone block).
    let x: Vec<f32> = (0..96).map(|v| v as f32 / 96.0).collect();
    let mut a = Activations::new();
    a.quantize(&x, 1, 96, QType::Q8_0);
    let r = a.view(0);
    if r.pairs.is_empty() {
        return; // no AVX-512 kernels here
    }
    assert_eq!(r.pairs.len(), 64);
    // 4-byte groups alternate between the two blocks, in value order.
    assert_eq!(
        &r.pairs[..8],
        &[r.qs[0], r.qs[1], r.qs[2], r.qs[3], r.qs[32], r.qs[33], r.qs[34], r.qs[35]]
    );
    let mut sorted = r.pairs.to_vec();
    sorted.sort();
    let mut want = r.qs[..64].to_vec();
    want.sort();
    assert_eq!(sorted, want);
}

/// Inputs that stress quantization: zero blocks, ties, a negative maximum
/// repeated with both signs, tiny and huge magnitudes.
fn awkward_input(cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = random_input(1, cols, rng);
    for (b, block) in x.chunks_mut(32).enumerate() {
        match b % 6 {
            0 => block.fill(0.0),
            1 => {
                // Exact ties after scaling: amax 127 → steps of 1.
                for (i, v) in block.iter_mut().enumerate() {
                    *v = (i as f32 - 16.0) + 0.5;
                }
                block[3] = -127.0;
                block[9] = 127.0;
            }
            2 => block.iter_mut().for_each(|v| *v *= 1e-30),
            3 => block.iter_mut().for_each(|v| *v *= 1e30),
            _ => {}
        }
    }
    x
}

#[test]
fn simd_quantization_equals_scalar() {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        let mut rng = Rng(21);
        for _ in 0..50 {
            let x = awkward_input(1024, &mut rng);
            let (mut q1, mut q2) = (vec![0i8; 1024], vec![0i8; 1024]);
            let (mut d1, mut d2) = (vec![0.0; 32], vec![0.0; 32]);
            let (mut n1, mut n2) = (vec![0; 32], vec![0; 32]);
            let (mut s1, mut s2) = (vec![0.0; 32], vec![0.0; 32]);
            scalar::quantize_row_q8(&x, &mut q1, &mut d1, &mut n1, &mut s1);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { super::x86::quantize_row_q8(&x, &mut q2, &mut d2, &mut n2, &mut s2) };
            assert_eq!((&q1, &n1), (&q2, &n2));
            assert_eq!(
                d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );

            let (mut d1, mut d2) = (vec![0.0; 4], vec![0.0; 4]);
            let (mut k1, mut k2) = (vec![0; 4 * KSUMS], vec![0; 4 * KSUMS]);
            let (mut m1, mut m2) = (vec![0.0; 32], vec![0.0; 32]);
            scalar::quantize_row_q8k(&x, &mut q1, &mut d1, &mut k1, &mut m1);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { super::x86::quantize_row_q8k(&x, &mut q2, &mut d2, &mut k2, &mut m2) };
            assert_eq!((&q1, &k1), (&q2, &k2));
            assert_eq!(
                d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                m1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                m2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn simd_pair_layout_equals_scalar() {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx512_vnni() {
        let src: Vec<i8> = (0..256).map(|v| (v % 251) as i8).collect();
        let (mut a, mut b) = (vec![0i8; 256], vec![0i8; 256]);
        super::x86::interleave_pairs(&src, &mut a);
        // SAFETY: the CPU has AVX-512 (checked above).
        unsafe { super::x86::interleave_pairs_avx512(&src, &mut b) };
        assert_eq!(a, b);
    }
}

#[test]
fn quantize_q8_k_sums_match_values() {
    let input = random_input(3, 512, &mut Rng(11));
    let mut a = Activations::new();
    a.quantize(&input, 3, 512, QType::Q4_K);
    for t in 0..3 {
        let r = a.view(t);
        for b in 0..2 {
            let q = &r.qs[256 * b..256 * (b + 1)];
            let ks = &r.ksums[KSUMS * b..KSUMS * (b + 1)];
            for k in 0..16 {
                assert_eq!(
                    ks[k] as i32,
                    q[16 * k..16 * k + 16]
                        .iter()
                        .map(|&v| v as i32)
                        .sum::<i32>()
                );
            }
            for j in 0..8 {
                assert_eq!(ks[16 + j], ks[2 * j] + ks[2 * j + 1]);
            }
            // Dequantized values are within half a step of the input.
            for (c, &v) in q.iter().enumerate() {
                let x = input[t * 512 + 256 * b + c];
                assert!(
                    (r.d[b] * v as f32 - x).abs() <= r.d[b].abs() * 0.5001,
                    "{x} vs {v}"
                );
            }
        }
    }
}

#[test]
fn quantize_reuses_its_buffers() {
    let input = random_input(8, 1024, &mut Rng(5));
    let mut a = Activations::new();
    a.quantize(&input, 8, 1024, QType::Q4_K);
    let (qs, d, ks) = (a.qs.as_ptr(), a.d.as_ptr(), a.ksums.as_ptr());
    a.quantize(&input, 2, 1024, QType::Q6_K);
    a.quantize(&input, 8, 1024, QType::Q5_K);
    assert_eq!((qs, d, ks), (a.qs.as_ptr(), a.d.as_ptr(), a.ksums.as_ptr()));
    assert_eq!((a.rows(), a.cols()), (8, 1024));
    // Rows start on 64-byte boundaries.
    assert_eq!(a.row(1).qs.as_ptr() as usize % 64, 0);
}

#[test]
fn parallel_quantize_matches_serial() {
    let (n, cols) = (64, 2048);
    let input = random_input(n, cols, &mut Rng(9));
    for qt in [QType::Q8_0, QType::Q4_K] {
        let mut all = Activations::new();
        all.quantize(&input, n, cols, qt);
        let mut one = Activations::new();
        for t in 0..n {
            one.quantize(&input[t * cols..], 1, cols, qt);
            let (a, b) = (all.view(t), one.view(0));
            assert_eq!((a.qs, a.d, a.neg_sum, a.s), (b.qs, b.d, b.neg_sum, b.s));
            assert_eq!((a.ksums, a.kmins, a.pairs), (b.ksums, b.kmins, b.pairs));
        }
    }
}

#[test]
fn empty_products_are_fine() {
    let data = big(QType::Q4_K, 3, 256, 1);
    let w = QMatrix::new(QType::Q4_K, 3, 256, &data).unwrap();
    let mut x = Activations::new();
    x.quantize(&[], 0, 256, QType::Q4_K);
    matmul(&w, &x, &mut []);
    let w = QMatrix::new(QType::Q4_K, 0, 256, &[]).unwrap();
    x.quantize(&[0.0; 256], 1, 256, QType::Q4_K);
    matmul(&w, &x, &mut []);
}

#[test]
fn f16_scales_convert_exactly() {
    #[cfg(target_arch = "x86_64")]
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32();
        let got = super::x86::f16_bits_to_f32(h);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{h:#06x}"
        );
    }
}

/// The k-quant kernels' integer sums at their extremes: every quant at its
/// smallest or largest (Q6_K: -32 or 31 once offset), scales of the largest
/// magnitude, against activations all -128 (which quantization never
/// makes, but the byte products must not saturate even then), all 127, or
/// alternating. Block counts odd and even, token counts over 8.
#[test]
fn extreme_k_quants_do_not_saturate() {
    for qt in [QType::Q4_K, QType::Q5_K, QType::Q6_K] {
        for fill in [0xffu8, 0x00] {
            for blocks in [1, 2, 3] {
                let cols = QK_K * blocks;
                let rows = 2;
                let mut data = vec![fill; rows * qt.row_bytes(cols)];
                for b in data.chunks_exact_mut(qt.block_bytes()) {
                    if qt == QType::Q6_K {
                        b[192..208].fill(if fill == 0 { 0x80 } else { 0x7f });
                        put_f16(b, 208, 1e-3);
                    } else {
                        put_f16(b, 0, 1e-3);
                        put_f16(b, 2, 1e-3);
                        b[4..16].fill(0xff);
                    }
                }
                let w = QMatrix::new(qt, rows, cols, &data).unwrap();
                for pattern in 0..3 {
                    let n = 9;
                    let mut x = Activations::new();
                    x.quantize(&vec![1.0; n * cols], n, cols, qt);
                    let q = lines_as_bytes_mut(&mut x.qs);
                    for (c, v) in q[..n * cols].iter_mut().enumerate() {
                        *v = match pattern {
                            0 => -128,
                            1 => 127,
                            _ if c % 2 == 0 => -128,
                            _ => 127,
                        };
                    }
                    // The sums the kernels read, as quantization would
                    // have made them from these quants.
                    for (b, block) in q[..n * cols].chunks_exact(QK_K).enumerate() {
                        let ks = &mut x.ksums[KSUMS * b..KSUMS * (b + 1)];
                        for k in 0..16 {
                            ks[k] = block[16 * k..16 * k + 16].iter().map(|&v| v as i16).sum();
                        }
                        for j in 0..8 {
                            ks[16 + j] = ks[2 * j] + ks[2 * j + 1];
                            x.kmins[8 * b + j] = x.d[b] * ks[16 + j] as f32;
                        }
                    }
                    let mut want = vec![0.0; n * rows];
                    matmul_reference(&w, &x, &mut want);
                    for (level, narrow) in levels() {
                        let mut got = vec![f32::NAN; n * rows];
                        narrow_kernels(narrow, || matmul_at(level, &w, &x, &mut got));
                        for (g, e) in got.iter().zip(&want) {
                            assert!(
                                (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                                "{qt} fill {fill:#x} blocks {blocks} pattern {pattern} at \
                                 {level:?} (narrow: {narrow}): {g} vs scalar {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
