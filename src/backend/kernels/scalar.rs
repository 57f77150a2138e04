//! Plain reference versions of every kernel: activation quantization, and the
//! dot product of one weight row with one quantized activation row. The SIMD
//! kernels compute the same integer sums and scale them the same way.

use super::{h, is_k, scale_min_k4, ActRow, QType, QK, QK_K};

/// Quantizes one block of [`QK`] values: `d = max|x| / 127`, `q = round(x / d)`,
/// and the scaled sums `d · Σq` of each half.
pub fn quantize_block(x: &[f32], qs: &mut [i8], d: &mut f32, sums: &mut [f32; 2]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut s = [0i32; 2];
    for (i, (q, &v)) in qs.iter_mut().zip(x).enumerate() {
        let r = (v * inv).round().clamp(-127.0, 127.0) as i8;
        *q = r;
        s[i / 16] += r as i32;
    }
    *d = scale;
    *sums = [scale * s[0] as f32, scale * s[1] as f32];
}

/// Quantizes one block of [`QK_K`] values for the K-quants: `d = max|x| / 127`,
/// `q = round(x / d)`, and the integer sums of each 16 values.
pub fn quantize_block_k(x: &[f32], qs: &mut [i8], d: &mut f32, bsums: &mut [i16]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    for (g, s) in bsums.iter_mut().enumerate() {
        *s = qs[16 * g..16 * (g + 1)].iter().map(|&q| q as i16).sum();
    }
    *d = scale;
}

/// Dot product of a K-quant weight row with a row in the 256-value layout:
/// per super-block, the integer sum of scale × Σ(u · q) over its sub-blocks
/// times `d_w · d_a`, plus the offset terms from the 16-value sums.
pub fn dot_k(qt: QType, row: &[u8], a: &ActRow<'_>) -> f32 {
    let mut total = 0.0f32;
    for sb in 0..a.d.len() {
        let q = &a.qs[sb * QK_K..(sb + 1) * QK_K];
        let bs = &a.bsums[sb * 16..(sb + 1) * 16];
        match qt {
            QType::Q4_K | QType::Q5_K => {
                let bb = qt.block_bytes();
                let b = &row[sb * bb..(sb + 1) * bb];
                let (d, dmin) = (h(b, 0), h(b, 2));
                let (mut isum, mut msum) = (0i32, 0i32);
                for sub in 0..8 {
                    let blk = block32(qt, row, sb * 8 + sub);
                    let (sc, m) = scale_min_k4(sub, &b[4..16]);
                    let dotp: i32 = (0..32).map(|i| blk.u[i] * q[32 * sub + i] as i32).sum();
                    isum += sc as i32 * dotp;
                    msum += m as i32 * (bs[2 * sub] as i32 + bs[2 * sub + 1] as i32);
                }
                total += d * a.d[sb] * isum as f32 - dmin * a.d[sb] * msum as f32;
            }
            QType::Q6_K => {
                let b = &row[sb * 210..(sb + 1) * 210];
                let d = h(b, 208);
                let (mut isum, mut osum) = (0i32, 0i32);
                for j in 0..8 {
                    let blk = block32(qt, row, sb * 8 + j);
                    let (n, k) = (j / 4, j % 4);
                    for half in 0..2 {
                        let sc = b[192 + 8 * n + 2 * k + half] as i8 as i32;
                        let dotp: i32 = (0..16)
                            .map(|i| blk.u[16 * half + i] * q[32 * j + 16 * half + i] as i32)
                            .sum();
                        isum += sc * dotp;
                        osum += sc * bs[2 * j + half] as i32;
                    }
                }
                total += d * a.d[sb] * (isum - 32 * osum) as f32;
            }
            _ => unreachable!("dot_k is for K-quants"),
        }
    }
    total
}

/// One block of 32 weights as integers `u` with, per half, the real value
/// `mul[h] · u + add[h]`.
pub struct Block32 {
    /// Integer weights.
    pub u: [i32; 32],
    /// Multiplier of each half.
    pub mul: [f32; 2],
    /// Constant of each half.
    pub add: [f32; 2],
}

/// The `j`-th block of 32 weights of a row (of a quantized type).
pub fn block32(qt: QType, row: &[u8], j: usize) -> Block32 {
    let mut u = [0i32; 32];
    let both = |m: f32, a: f32| ([m, m], [a, a]);
    let (mul, add) = match qt {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => {
            let b = &row[j * qt.block_bytes()..(j + 1) * qt.block_bytes()];
            let d = h(b, 0);
            match qt {
                QType::Q4_0 => {
                    for i in 0..16 {
                        u[i] = (b[2 + i] & 15) as i32;
                        u[i + 16] = (b[2 + i] >> 4) as i32;
                    }
                    both(d, -8.0 * d)
                }
                QType::Q4_1 => {
                    for i in 0..16 {
                        u[i] = (b[4 + i] & 15) as i32;
                        u[i + 16] = (b[4 + i] >> 4) as i32;
                    }
                    both(d, h(b, 2))
                }
                QType::Q5_0 => {
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    for i in 0..16 {
                        let h0 = ((qh >> i) & 1) << 4;
                        let h1 = ((qh >> (i + 16)) & 1) << 4;
                        u[i] = (b[6 + i] & 15) as i32 | h0 as i32;
                        u[i + 16] = (b[6 + i] >> 4) as i32 | h1 as i32;
                    }
                    both(d, -16.0 * d)
                }
                _ => {
                    for i in 0..32 {
                        u[i] = b[2 + i] as i8 as i32;
                    }
                    both(d, 0.0)
                }
            }
        }
        QType::Q4_K | QType::Q5_K => {
            let bb = qt.block_bytes();
            let b = &row[(j / 8) * bb..(j / 8 + 1) * bb];
            let sub = j % 8;
            let (c, high) = (sub / 2, sub % 2 == 1);
            let (d, dmin) = (h(b, 0), h(b, 2));
            let (sc, m) = scale_min_k4(sub, &b[4..16]);
            let qs = if qt == QType::Q5_K {
                &b[48..176]
            } else {
                &b[16..144]
            };
            for l in 0..32 {
                let q = qs[32 * c + l];
                let mut v = if high { q >> 4 } else { q & 15 } as i32;
                if qt == QType::Q5_K {
                    v |= (((b[16 + l] >> sub) & 1) as i32) << 4;
                }
                u[l] = v;
            }
            both(d * sc as f32, -dmin * m as f32)
        }
        QType::Q6_K => {
            let b = &row[(j / 8) * 210..(j / 8 + 1) * 210];
            let d = h(b, 208);
            let (n, k) = ((j % 8) / 4, j % 4);
            let ql = &b[64 * n..];
            let qh = &b[128 + 32 * n..];
            let sc = &b[192 + 8 * n..];
            for l in 0..32 {
                let low = match k {
                    0 => ql[l] & 15,
                    1 => ql[l + 32] & 15,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                u[l] = (low | (((qh[l] >> (2 * k)) & 3) << 4)) as i32;
            }
            let s0 = d * (sc[2 * k] as i8) as f32;
            let s1 = d * (sc[2 * k + 1] as i8) as f32;
            ([s0, s1], [-32.0 * s0, -32.0 * s1])
        }
        QType::F32 | QType::F16 => unreachable!("float weights have no integer blocks"),
    };
    Block32 { u, mul, add }
}

/// Dot product of a weight row with a quantized activation row.
pub fn dot(qt: QType, row: &[u8], a: &ActRow<'_>) -> f32 {
    if is_k(qt) {
        return dot_k(qt, row, a);
    }
    let blocks = a.d.len();
    match qt {
        QType::F32 | QType::F16 => {
            let mut w = vec![0.0f32; blocks * QK];
            for (i, v) in w.iter_mut().enumerate() {
                *v = if qt == QType::F32 {
                    f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
                } else {
                    h(row, 2 * i)
                };
            }
            w.iter()
                .enumerate()
                .map(|(i, v)| v * a.d[i / QK] * a.qs[i] as f32)
                .sum()
        }
        _ => {
            let mut total = 0.0f32;
            for j in 0..blocks {
                let blk = block32(qt, row, j);
                let q = &a.qs[j * QK..(j + 1) * QK];
                for half in 0..2 {
                    let isum: i32 = (0..16)
                        .map(|i| blk.u[16 * half + i] * q[16 * half + i] as i32)
                        .sum();
                    total += blk.mul[half] * a.d[j] * isum as f32 + blk.add[half] * a.sums[j][half];
                }
            }
            total
        }
    }
}
