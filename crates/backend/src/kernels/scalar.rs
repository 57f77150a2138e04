//! The plain reference of every kernel: block layouts, activation
//! quantization, dot products and dequantization, written to be read.
//!
//! The layouts and rounding follow GGML (`ggml-quants.c`); dot products sum
//! integer products per (sub-)block exactly and scale them once, as GGML's
//! reference `vec_dot` functions do. The SIMD kernels must agree with these
//! up to float rounding.

use half::f16;

use super::{ActRow, QType, RowTask, KSUMS};

/// Values per block of the 32-value types and of Q8 activations.
pub const QK8: usize = 32;
/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// The f16 at byte `at`, as f32.
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `v` rounded to the nearest integer, ties to even, for |v| < 2²².
///
/// Adding 1.5 · 2²³ pushes the fraction out of the mantissa, so the float
/// addition's own round-to-nearest-even does the rounding (GGML's
/// `nearest_int`); unlike `round_ties_even` this vectorizes on any x86-64.
pub fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC) as i32
}

/// Quantizes 32 activations like GGML's `quantize_row_q8_1`: `d = amax / 127`,
/// `q = round(x / d)`. Returns the scale rounded to f16 precision (what GGML
/// stores), `Σq`, and `d · Σq` rounded to f16 precision.
pub fn quantize_q8(x: &[f32], q: &mut [i8]) -> (f32, i32, f32) {
    assert_eq!(x.len(), QK8);
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &x) in q.iter_mut().zip(x) {
        let v = round_even(x * id);
        *q = v as i8;
        sum += v;
    }
    let d16 = f16::from_f32(d).to_f32();
    let s16 = f16::from_f32(d * sum as f32).to_f32();
    (d16, sum, s16)
}

/// Quantizes 256 activations like GGML's `quantize_row_q8_K`: the value of
/// largest magnitude (its sign kept) maps to -127, `q = min(127,
/// round(-127 · x / max))`. Writes the sums of each 16 values to `ksums[..16]`
/// and of each 32 to `ksums[16..24]`; returns the scale `d` (value ≈ d · q).
/// An all-zero block gets `d = 0`, `q = 0`.
pub fn quantize_q8k(x: &[f32], q: &mut [i8], ksums: &mut [i16]) -> f32 {
    assert_eq!(x.len(), QK_K);
    assert_eq!(ksums.len(), KSUMS);
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    ksums.fill(0);
    if amax == 0.0 {
        q[..QK_K].fill(0);
        return 0.0;
    }
    let max = *x
        .iter()
        .find(|v| v.abs() == amax)
        .expect("amax is one of the values");
    let iscale = -127.0 / max;
    for (q, &x) in q.iter_mut().zip(x) {
        *q = round_even(iscale * x).min(127) as i8;
    }
    for k in 0..16 {
        ksums[k] = q[16 * k..16 * k + 16].iter().map(|&v| v as i16).sum();
    }
    for j in 0..8 {
        ksums[16 + j] = ksums[2 * j] + ksums[2 * j + 1];
    }
    1.0 / iscale
}

/// Quantizes a row of 32-value blocks with [`quantize_q8`]: quants into
/// `q`, and per block the scale into `d`, `-Σq` into `neg_sum`,
/// f16(`d · Σq`) into `s`.
pub fn quantize_row_q8(x: &[f32], q: &mut [i8], d: &mut [f32], neg_sum: &mut [i32], s: &mut [f32]) {
    for (b, x) in x.chunks_exact(QK8).enumerate() {
        let sum;
        (d[b], sum, s[b]) = quantize_q8(x, &mut q[QK8 * b..QK8 * (b + 1)]);
        neg_sum[b] = -sum;
    }
}

/// Quantizes a row of 256-value blocks with [`quantize_q8k`]: quants into
/// `q`, and per block the scale into `d`, [`KSUMS`] sums into `ksums` and
/// `d ·` each sum of 32 into `kmins` (8 per block).
pub fn quantize_row_q8k(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    ksums: &mut [i16],
    kmins: &mut [f32],
) {
    for (b, x) in x.chunks_exact(QK_K).enumerate() {
        let ks = &mut ksums[KSUMS * b..KSUMS * (b + 1)];
        d[b] = quantize_q8k(x, &mut q[QK_K * b..QK_K * (b + 1)], ks);
        for (m, &s) in kmins[8 * b..8 * b + 8].iter_mut().zip(&ks[16..24]) {
            *m = d[b] * s as f32;
        }
    }
}

/// A 32-value block unpacked: values are `d · q[i] + m`.
pub struct Block32 {
    /// Scale.
    pub d: f32,
    /// Offset (Q4_1's minimum; 0 for the others).
    pub m: f32,
    /// Integer quants, offsets already subtracted.
    pub q: [i32; QK8],
}

/// Unpacks a Q4_0, Q4_1, Q5_0 or Q8_0 block.
pub fn block32(qt: QType, b: &[u8]) -> Block32 {
    let mut q = [0i32; QK8];
    let (d, m) = match qt {
        QType::Q4_0 => {
            for j in 0..16 {
                q[j] = (b[2 + j] & 15) as i32 - 8;
                q[j + 16] = (b[2 + j] >> 4) as i32 - 8;
            }
            (f16_at(b, 0), 0.0)
        }
        QType::Q4_1 => {
            for j in 0..16 {
                q[j] = (b[4 + j] & 15) as i32;
                q[j + 16] = (b[4 + j] >> 4) as i32;
            }
            (f16_at(b, 0), f16_at(b, 2))
        }
        QType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let hi0 = (((qh >> j) << 4) & 0x10) as u8;
                let hi1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = ((b[6 + j] & 15) | hi0) as i32 - 16;
                q[j + 16] = ((b[6 + j] >> 4) | hi1) as i32 - 16;
            }
            (f16_at(b, 0), 0.0)
        }
        QType::Q8_0 => {
            for j in 0..32 {
                q[j] = b[2 + j] as i8 as i32;
            }
            (f16_at(b, 0), 0.0)
        }
        _ => unreachable!("{qt} is not a 32-value block type"),
    };
    Block32 { d, m, q }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K / Q5_K block
/// (GGML's `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// A Q4_K / Q5_K block unpacked: value `i` of sub-block `j` (32 values) is
/// `d · sc[j] · q[32j + i] - dmin · m[j]`.
pub struct BlockK4 {
    /// Super-block scale.
    pub d: f32,
    /// Super-block scale of the minimums.
    pub dmin: f32,
    /// Sub-block scales.
    pub sc: [u8; 8],
    /// Sub-block minimums.
    pub m: [u8; 8],
    /// Integer quants (0..16 for Q4_K, 0..32 for Q5_K).
    pub q: [u8; QK_K],
}

/// Unpacks a Q4_K or Q5_K block.
pub fn block_k4(qt: QType, b: &[u8]) -> BlockK4 {
    let scales = &b[4..16];
    let (qh, qs) = match qt {
        QType::Q4_K => (None, &b[16..144]),
        QType::Q5_K => (Some(&b[16..48]), &b[48..176]),
        _ => unreachable!("{qt} is not Q4_K or Q5_K"),
    };
    let mut k = BlockK4 {
        d: f16_at(b, 0),
        dmin: f16_at(b, 2),
        sc: [0; 8],
        m: [0; 8],
        q: [0; QK_K],
    };
    for j in 0..8 {
        (k.sc[j], k.m[j]) = scale_min_k4(j, scales);
    }
    for c in 0..4 {
        for l in 0..32 {
            let byte = qs[32 * c + l];
            let (mut lo, mut hi) = (byte & 15, byte >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            k.q[64 * c + l] = lo;
            k.q[64 * c + 32 + l] = hi;
        }
    }
    k
}

/// A Q6_K block unpacked: value `i` is `d · sc[i / 16] · q[i]`.
pub struct BlockQ6K {
    /// Super-block scale.
    pub d: f32,
    /// Scales per 16 values.
    pub sc: [i8; 16],
    /// Integer quants, -32..32.
    pub q: [i32; QK_K],
}

/// Unpacks a Q6_K block.
pub fn block_q6k(b: &[u8]) -> BlockQ6K {
    let mut k = BlockQ6K {
        d: f16_at(b, 208),
        sc: [0; 16],
        q: [0; QK_K],
    };
    for (s, &byte) in k.sc.iter_mut().zip(&b[192..208]) {
        *s = byte as i8;
    }
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let y = &mut k.q[128 * n..128 * n + 128];
        for l in 0..32 {
            y[l] = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
            y[l + 32] = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
        }
    }
    k
}

/// Dequantizes one row (`out.len()` values) of type `qt`.
pub fn dequantize_row(qt: QType, row: &[u8], out: &mut [f32]) {
    let blocks = row.chunks_exact(qt.block_bytes());
    let outs = out.chunks_exact_mut(qt.block_len());
    for (b, y) in blocks.zip(outs) {
        match qt {
            QType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            QType::F16 => y[0] = f16_at(b, 0),
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => {
                let k = block32(qt, b);
                for (y, &q) in y.iter_mut().zip(&k.q) {
                    *y = k.d * q as f32 + k.m;
                }
            }
            QType::Q4_K | QType::Q5_K => {
                let k = block_k4(qt, b);
                for (j, y) in y.chunks_exact_mut(32).enumerate() {
                    let scale = k.d * k.sc[j] as f32;
                    let min = k.dmin * k.m[j] as f32;
                    for (y, &q) in y.iter_mut().zip(&k.q[32 * j..]) {
                        *y = scale * q as f32 - min;
                    }
                }
            }
            QType::Q6_K => {
                let k = block_q6k(b);
                for (i, y) in y.iter_mut().enumerate() {
                    *y = k.d * k.sc[i / 16] as f32 * k.q[i] as f32;
                }
            }
        }
    }
}

/// `Σ a[i] · b[i]` over integers.
fn idot<A: Copy + Into<i32>, B: Copy + Into<i32>>(a: &[A], b: &[B]) -> i32 {
    a.iter().zip(b).map(|(&a, &b)| a.into() * b.into()).sum()
}

/// The dot product of one weight row with one activation row.
pub fn dot(qt: QType, w: &[u8], a: &ActRow<'_>) -> f32 {
    let blocks = w.chunks_exact(qt.block_bytes());
    match qt {
        QType::F32 | QType::F16 => {
            let mut sum = 0.0f32;
            for (b, &x) in blocks.zip(a.f) {
                let v = match qt {
                    QType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    _ => f16_at(b, 0),
                };
                sum += v * x;
            }
            sum
        }
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => {
            let mut sum = 0.0f32;
            for (i, b) in blocks.enumerate() {
                let k = block32(qt, b);
                let sumi = idot(&k.q, &a.qs[QK8 * i..QK8 * (i + 1)]);
                sum += k.d * a.d[i] * sumi as f32 + k.m * a.s[i];
            }
            sum
        }
        QType::Q4_K | QType::Q5_K => {
            let mut sum = 0.0f32;
            for (i, b) in blocks.enumerate() {
                let k = block_k4(qt, b);
                let q8 = &a.qs[QK_K * i..QK_K * (i + 1)];
                let mut sumi = 0;
                let mut summ = 0;
                for j in 0..8 {
                    let q8 = &q8[32 * j..32 * j + 32];
                    sumi += k.sc[j] as i32 * idot(&k.q[32 * j..32 * j + 32], q8);
                    summ += k.m[j] as i32 * q8.iter().map(|&v| v as i32).sum::<i32>();
                }
                sum += a.d[i] * (k.d * sumi as f32 - k.dmin * summ as f32);
            }
            sum
        }
        QType::Q6_K => {
            let mut sum = 0.0f32;
            for (i, b) in blocks.enumerate() {
                let k = block_q6k(b);
                let q8 = &a.qs[QK_K * i..QK_K * (i + 1)];
                let mut sumi = 0;
                for j in 0..16 {
                    let r = 16 * j..16 * j + 16;
                    sumi += k.sc[j] as i32 * idot(&k.q[r.clone()], &q8[r]);
                }
                sum += a.d[i] * k.d * sumi as f32;
            }
            sum
        }
    }
}

/// Runs a task with [`dot`], one weight row × activation row at a time.
pub(super) fn run_rows(task: &RowTask<'_>) {
    let n = task.x.rows();
    for r in task.r0..task.r1 {
        let w = task.row(r);
        for t in 0..n {
            task.out.put(t, r, dot(task.w.qtype, w, &task.x.row(t)));
        }
    }
}
