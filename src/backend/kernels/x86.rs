//! AVX2 + FMA dot products of one weight row with up to four activation rows.
//! Each 32-weight block is unpacked once into unsigned bytes and multiplied
//! with every activation row's bytes (`maddubs` → `madd` → f32 FMA), so the
//! unpacking cost is shared by the rows of a prefill batch. Same integer sums
//! and scaling as [`super::scalar`].

use std::arch::x86_64::*;

use super::{h, scale_min_k4, ActRow, QType, QK};

/// Whether this module has a kernel for the type.
pub fn supports(qt: QType) -> bool {
    matches!(
        qt,
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 | QType::Q4_K | QType::Q6_K
    )
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 32 nibbles of 16 bytes as bytes: low nibbles first, then high ones.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY (caller): p points at 16 readable bytes.
    let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let lo = _mm_and_si128(q, _mm_set1_epi8(15));
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(15));
    _mm256_set_m128i(hi, lo)
}

/// Bit `i` of a 32-bit mask to 0x10 in byte `i`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn bits_to_0x10(mask: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(mask as i32), shuffle);
    let select = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    let set = _mm256_or_si256(bytes, select);
    let is_set = _mm256_cmpeq_epi8(set, _mm256_set1_epi64x(-1));
    _mm256_and_si256(is_set, _mm256_set1_epi8(0x10))
}

/// Integer dot of 32 unsigned bytes with 32 signed bytes, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn udot(u: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
}

/// Dot products of the weight row `w` with each row of `acts` (at most 4).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` must hold one whole row of `qt`
/// with as many values as the activation rows.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_row(qt: QType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let na = acts.len().min(4);
    let blocks = acts[0].d.len();
    let cols = acts[0].qs.len();
    debug_assert_eq!(w.len(), qt.row_bytes(cols));
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut corr = [0.0f32; 4];
    let wp = w.as_ptr();
    // SAFETY (all pointer reads below): block offsets stay within `w`, whose
    // length is `blocks * QK / block_len * block_bytes`, and activation offsets
    // within `qs` (`blocks * QK` bytes).
    unsafe {
        let act = |k: usize, j: usize| {
            _mm256_loadu_si256(acts[k].qs.as_ptr().add(j * QK) as *const __m256i)
        };
        match qt {
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 => {
                let bb = qt.block_bytes();
                for j in 0..blocks {
                    let b = std::slice::from_raw_parts(wp.add(j * bb), bb);
                    let d = h(b, 0);
                    let (u, add) = match qt {
                        QType::Q4_0 => (nibbles(b.as_ptr().add(2)), -8.0 * d),
                        QType::Q4_1 => (nibbles(b.as_ptr().add(4)), h(b, 2)),
                        _ => {
                            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                            (
                                _mm256_or_si256(nibbles(b.as_ptr().add(6)), bits_to_0x10(qh)),
                                -16.0 * d,
                            )
                        }
                    };
                    for k in 0..na {
                        let p = udot(u, act(k, j));
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_set1_ps(d * acts[k].d[j]),
                            acc[k],
                        );
                        corr[k] += add * (acts[k].sums[j][0] + acts[k].sums[j][1]);
                    }
                }
            }
            QType::Q8_0 => {
                for j in 0..blocks {
                    let b = wp.add(j * 34);
                    let d = h(std::slice::from_raw_parts(b, 2), 0);
                    let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
                    let absq = _mm256_sign_epi8(q, q);
                    for k in 0..na {
                        let a = _mm256_sign_epi8(act(k, j), q);
                        let p = udot(absq, a);
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_set1_ps(d * acts[k].d[j]),
                            acc[k],
                        );
                    }
                }
            }
            QType::Q4_K => {
                let m4 = _mm256_set1_epi8(15);
                for sb in 0..blocks {
                    let b = std::slice::from_raw_parts(wp.add(sb * 144), 144);
                    let (d, dmin) = (h(b, 0), h(b, 2));
                    let mut sc = [0i16; 8];
                    let mut mn = [0i16; 16];
                    for (sub, s) in sc.iter_mut().enumerate() {
                        let (a, bm) = scale_min_k4(sub, &b[4..16]);
                        *s = a as i16;
                        // Each min scales two 16-value sums.
                        mn[2 * sub] = bm as i16;
                        mn[2 * sub + 1] = bm as i16;
                    }
                    let mins = _mm256_loadu_si256(mn.as_ptr() as *const __m256i);
                    let mut u = [_mm256_setzero_si256(); 8];
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i);
                        u[2 * c] = _mm256_and_si256(q, m4);
                        u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    }
                    for k in 0..na {
                        let a = acts[k];
                        let ap = a.qs.as_ptr().add(sb * 256);
                        let mut sumi = _mm256_setzero_si256();
                        for sub in 0..8 {
                            let av = _mm256_loadu_si256(ap.add(32 * sub) as *const __m256i);
                            let p = _mm256_madd_epi16(
                                _mm256_maddubs_epi16(u[sub], av),
                                _mm256_set1_epi16(sc[sub]),
                            );
                            sumi = _mm256_add_epi32(sumi, p);
                        }
                        let da = a.d[sb];
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sumi),
                            _mm256_set1_ps(d * da),
                            acc[k],
                        );
                        let bs =
                            _mm256_loadu_si256(a.bsums.as_ptr().add(sb * 16) as *const __m256i);
                        let msum = _mm256_madd_epi16(bs, mins);
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(msum),
                            _mm256_set1_ps(-dmin * da),
                            acc[k],
                        );
                    }
                }
            }
            QType::Q6_K => {
                let m4 = _mm256_set1_epi8(15);
                for sb in 0..blocks {
                    let b = std::slice::from_raw_parts(wp.add(sb * 210), 210);
                    let d = h(b, 208);
                    let mut us = [_mm256_setzero_si256(); 8];
                    let mut scv = [_mm256_setzero_si256(); 8];
                    for n in 0..2 {
                        let qa = _mm256_loadu_si256(b.as_ptr().add(64 * n) as *const __m256i);
                        let qb = _mm256_loadu_si256(b.as_ptr().add(64 * n + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * n) as *const __m256i);
                        us[4 * n] = _mm256_or_si256(
                            _mm256_and_si256(qa, m4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4),
                        );
                        us[4 * n + 1] = _mm256_or_si256(
                            _mm256_and_si256(qb, m4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2),
                        );
                        us[4 * n + 2] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                            _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                        );
                        us[4 * n + 3] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                            _mm256_srli_epi16(
                                _mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)),
                                2,
                            ),
                        );
                        for k4 in 0..4 {
                            let s0 = b[192 + 8 * n + 2 * k4] as i8 as i16;
                            let s1 = b[192 + 8 * n + 2 * k4 + 1] as i8 as i16;
                            scv[4 * n + k4] =
                                _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                        }
                    }
                    let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                        b.as_ptr().add(192) as *const __m128i
                    ));
                    for k in 0..na {
                        let a = acts[k];
                        let ap = a.qs.as_ptr().add(sb * 256);
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..8 {
                            let av = _mm256_loadu_si256(ap.add(32 * j) as *const __m256i);
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(us[j], av), scv[j]);
                            sumi = _mm256_add_epi32(sumi, p);
                        }
                        // Offsets: 32 · Σ scale · (sum of the 16 activations it
                        // scales); scale g goes with activation sum g.
                        let bs =
                            _mm256_loadu_si256(a.bsums.as_ptr().add(sb * 16) as *const __m256i);
                        let osum = _mm256_madd_epi16(bs, scales16);
                        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(osum, 5));
                        acc[k] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sumi),
                            _mm256_set1_ps(d * a.d[sb]),
                            acc[k],
                        );
                    }
                }
            }
            QType::F32 | QType::F16 | QType::Q5_K => unreachable!("no AVX2 kernel for {qt:?}"),
        }
    }
    for k in 0..na {
        out[k] = hsum(acc[k]) + corr[k];
    }
}
