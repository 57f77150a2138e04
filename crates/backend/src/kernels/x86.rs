//! x86-64 kernels: AVX2 with FMA and F16C, and AVX-512 (F, BW, VL, VNNI,
//! with BMI2) kernels that take 64 values per vector and multiply-add bytes
//! with `vpdpbusd` / `vpdpwssd`.
//!
//! One kernel call computes one weight row against `T` activation rows
//! (tokens, up to 8): each weight block is unpacked into bytes once and
//! multiplied with every token's bytes, and each (row, token) pair keeps its
//! own accumulators, so its result does not depend on how many tokens share
//! the call. The integer sums are the scalar reference's, exactly; the float
//! scaling per block is the same arithmetic in another order.
//!
//! The 256-bit code is written once, generic over [`Isa`] (the few
//! instructions that differ), and always inlined into `#[target_feature]`
//! entry points, one per family and weight type; `has_avx2` /
//! `has_avx512_vnni` gate them. The AVX-512 family runs the 512-bit kernels
//! (its 256-bit build of the others serves an odd last block of 32-value
//! types, and tests). Loops index per-token arrays by token, so they are
//! written as `for t in 0..T`.
//!
//! Codegen matters here: helpers are `#[inline(always)]` so that they are
//! compiled with the entry points' features (a closure passed to
//! `std::array::from_fn` is not, hence [`each`]), and loads are written so
//! that LLVM does not merge them into registers that carry accumulators
//! ([`f16x2_at`]).

use std::arch::x86_64::*;

use super::scalar::{QK8, QK_K};
use super::{ActPtrs, QType, RowTask, KSUMS};

/// Whether the AVX2 kernels run here.
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the AVX-512 kernels run here.
pub(super) fn has_avx512_vnni() -> bool {
    has_avx2()
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// The instructions that differ between the two kernel families.
///
/// Every method is `unsafe`: it may only run inside a function compiled with
/// the family's target features, on a CPU that has them.
trait Isa {
    /// Whether kernels may take 8 tokens at once (enough registers).
    const WIDE: bool;
    /// Prepared Q8_0 weights.
    type Q8W: Copy;

    /// `acc` plus, per i32 lane, the sum of 4 adjacent `u · s` (`u` unsigned
    /// bytes below 128, `s` signed bytes).
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// `acc` plus, per i32 lane, the sum of 2 adjacent `a · b` (i16).
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    /// 0x10 in byte `i` where bit `i` of `mask` is set, else 0.
    unsafe fn bits_0x10(mask: u32) -> __m256i;
    /// Q8_0 weights (32 signed bytes) ready for [`Isa::dot_q8`].
    unsafe fn prep_q8(w: __m256i) -> Self::Q8W;
    /// Lanes that sum to `Σ w · a`, given `neg_sum_a = -Σ a`.
    unsafe fn dot_q8(w: Self::Q8W, a: __m256i, neg_sum_a: i32) -> __m256i;
    /// The family's version of kernel `K`.
    unsafe fn run<K: Kernel, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T];
}

/// AVX2: `vpmaddubsw` + `vpmaddwd` for the byte products.
struct Avx2;

impl Isa for Avx2 {
    const WIDE: bool = false;
    /// `|w|` and `w`: signed × signed goes through `|w| · (a · sign(w))`.
    type Q8W = (__m256i, __m256i);

    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe {
            // u < 128 and |s| ≤ 127: each pair sum fits i16 without saturating.
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }

    #[inline(always)]
    unsafe fn bits_0x10(mask: u32) -> __m256i {
        unsafe {
            // Byte i gets byte i / 8 of the mask, then keeps bit i % 8 of it.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(mask as i32),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }
    }

    #[inline(always)]
    unsafe fn prep_q8(w: __m256i) -> Self::Q8W {
        unsafe { (_mm256_abs_epi8(w), w) }
    }

    #[inline(always)]
    unsafe fn dot_q8(w: Self::Q8W, a: __m256i, _neg_sum_a: i32) -> __m256i {
        unsafe {
            // |w| ≤ 128 and |a| ≤ 127: pair sums fit i16.
            let pairs = _mm256_maddubs_epi16(w.0, _mm256_sign_epi8(a, w.1));
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn run<K: Kernel, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
        unsafe { K::dot::<Self, T>(w, a, t0) }
    }
}

/// AVX-512: 512-bit kernels, and VNNI multiply-adds in the 256-bit ones.
struct Avx512;

impl Isa for Avx512 {
    const WIDE: bool = true;
    /// `w + 128` as unsigned bytes.
    type Q8W = __m256i;

    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }

    #[inline(always)]
    unsafe fn bits_0x10(mask: u32) -> __m256i {
        unsafe { _mm256_maskz_mov_epi8(mask, _mm256_set1_epi8(0x10)) }
    }

    #[inline(always)]
    unsafe fn prep_q8(w: __m256i) -> Self::Q8W {
        unsafe { _mm256_xor_si256(w, _mm256_set1_epi8(-128)) }
    }

    #[inline(always)]
    unsafe fn dot_q8(w: Self::Q8W, a: __m256i, neg_sum_a: i32) -> __m256i {
        unsafe {
            // Σ (w + 128) · a = Σ w · a + 128 · Σ a; the 8 lanes start at -128 · Σ a.
            _mm256_dpbusd_epi32(_mm256_set1_epi32(16 * neg_sum_a), w, a)
        }
    }

    #[inline(always)]
    unsafe fn run<K: Kernel, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
        unsafe {
            #[cfg(test)]
            if NARROW.get() {
                return K::dot::<Self, T>(w, a, t0);
            }
            K::dot512::<T>(w, a, t0)
        }
    }
}

/// One weight type's kernel: the products of one weight row with activation
/// rows `t0..t0 + T`.
trait Kernel {
    /// The 256-bit kernel.
    ///
    /// # Safety
    /// `I`'s features are enabled; `w` is a whole row of the kernel's type,
    /// `a` activations of the same length in its format, `t0 + T ≤ a.rows`.
    unsafe fn dot<I: Isa, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T];

    /// The 512-bit kernel (by default, the 256-bit one built for
    /// [`Avx512`]).
    ///
    /// # Safety
    /// As [`Kernel::dot`], with [`Avx512`]'s features.
    #[inline(always)]
    unsafe fn dot512<const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
        unsafe { Self::dot::<Avx512, T>(w, a, t0) }
    }
}

/// Per token `t0 + t`, `base` advanced by `stride` elements per row (in
/// bounds by the kernels' contracts).
#[inline(always)]
fn rows<P, const T: usize>(base: *const P, stride: usize, t0: usize) -> [*const P; T] {
    let mut p = [base; T];
    for (t, p) in p.iter_mut().enumerate() {
        *p = base.wrapping_add((t0 + t) * stride);
    }
    p
}

/// `f(t)` for `t` in `0..T`, always inlined (`std::array::from_fn` goes
/// through adapters that would not be compiled with the kernels' target
/// features).
#[inline(always)]
fn each<R: Copy, const T: usize>(init: R, mut f: impl FnMut(usize) -> R) -> [R; T] {
    let mut out = [init; T];
    for (t, o) in out.iter_mut().enumerate() {
        *o = f(t);
    }
    out
}

/// 32 bytes at `p`.
#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// 32 signed bytes at `p`.
#[inline(always)]
unsafe fn load_i8(p: *const i8) -> __m256i {
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// The little-endian f16 values at `p` and `p + 2` as f32 lanes 0 and 1
/// (reads 4 bytes).
///
/// A 32-bit load fills the whole register: loading only the 16 bits, LLVM
/// merges them (`vpinsrw`) into whatever register it likes, often an
/// accumulator, which then chains every block to the previous block's sums.
#[inline(always)]
unsafe fn f16x2_at(p: *const u8) -> __m128 {
    unsafe { _mm_cvtph_ps(_mm_loadu_si32(p)) }
}

/// An f16 as f32 in integer registers (for values that end a block, where
/// [`f16x2_at`] would read past it).
#[inline(always)]
pub(super) fn f16_bits_to_f32(h: u16) -> f32 {
    let magnitude = (h & 0x7fff) as u32;
    if magnitude.wrapping_sub(0x0400) < 0x7c00 - 0x0400 {
        // Normal: rebias the exponent (15 → 127) and widen the mantissa.
        let sign = ((h & 0x8000) as u32) << 16;
        f32::from_bits(sign | ((magnitude + ((127 - 15) << 10)) << 13))
    } else {
        f16_rare(h)
    }
}

/// Zero, subnormal, infinite and NaN f16 values, out of line.
#[cold]
#[inline(never)]
fn f16_rare(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// The 8 lanes of `v` added up.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// The 16 lanes of `v` added up (halves folded, then as [`hsum`]).
#[inline(always)]
unsafe fn hsum512(v: __m512) -> f32 {
    unsafe {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }
}

/// The 32 nibbles of the 16 bytes at `p` as bytes: low nibbles, then high.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    unsafe {
        let q = _mm_loadu_si128(p.cast());
        let m = _mm_set1_epi8(15);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(q), m),
            _mm_and_si128(q, m),
        )
    }
}

const KIND_Q4_0: u8 = 0;
const KIND_Q4_1: u8 = 1;
const KIND_Q5_0: u8 = 2;
const KIND_Q8_0: u8 = 3;

/// Bytes per block of a 32-value type.
const fn block_bytes(kind: u8) -> usize {
    match kind {
        KIND_Q4_0 => 18,
        KIND_Q4_1 => 20,
        KIND_Q5_0 => 22,
        _ => 34,
    }
}

/// Offset of the quants in a block of a 32-value type.
const fn quants_at(kind: u8) -> usize {
    match kind {
        KIND_Q4_0 => 2,
        KIND_Q4_1 => 4,
        KIND_Q5_0 => 6,
        _ => 2,
    }
}

/// A Q4_0 / Q4_1 / Q5_0 block's quants as unsigned bytes in value order
/// (offsets not taken off), or a Q8_0 block's signed bytes.
#[inline(always)]
unsafe fn unpack32<I: Isa, const KIND: u8>(b: *const u8) -> __m256i {
    unsafe {
        match KIND {
            KIND_Q8_0 => load(b.add(2)),
            KIND_Q5_0 => {
                let qh = std::ptr::read_unaligned(b.add(2).cast::<u32>());
                _mm256_or_si256(nibbles(b.add(6)), I::bits_0x10(u32::from_le(qh)))
            }
            _ => nibbles(b.add(quants_at(KIND))),
        }
    }
}

/// Per token, the 256-bit accumulators of blocks `blocks` of a Q4_0, Q4_1,
/// Q5_0 or Q8_0 row (`KIND`) against Q8 activations: lanes that add up to
/// the dot product over those blocks.
///
/// Per block: the quants as unsigned bytes `u`, the offset (8 or 16) taken
/// off through the activations' `Σa` (`Σ (u - 8) a = Σ u a - 8 Σ a`), then
/// one FMA with `d_w · d_a`; Q4_1 adds `m · s_a` into a second accumulator.
#[inline(always)]
unsafe fn q8_family_acc<I: Isa, const T: usize, const KIND: u8>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
    blocks: std::ops::Range<usize>,
) -> [__m256; T] {
    unsafe {
        let bb = block_bytes(KIND);
        debug_assert!(blocks.end * bb <= w.len() && w.len() / bb == a.blocks);
        let qs: [*const i8; T] = rows(a.qs, a.qs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        let ns: [*const i32; T] = rows(a.neg_sum, a.blocks, t0);
        let ss: [*const f32; T] = rows(a.s, a.blocks, t0);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut acc_m = [_mm256_setzero_ps(); T];
        for i in blocks {
            // In bounds: the row holds at least `blocks.end` blocks of `bb` bytes.
            let b = w.as_ptr().add(i * bb);
            // d (and Q4_1's m); the 4 bytes read are in the block.
            let scales = f16x2_at(b);
            let dw = _mm256_broadcastss_ps(scales);
            let u = unpack32::<I, KIND>(b);
            let q8 = I::prep_q8(u);
            // Q4_1: m · s_a spread over 8 lanes (× 1/8 is exact).
            let m8 = if KIND == KIND_Q4_1 {
                _mm256_mul_ps(
                    _mm256_broadcastss_ps(_mm_movehdup_ps(scales)),
                    _mm256_set1_ps(0.125),
                )
            } else {
                _mm256_setzero_ps()
            };
            for t in 0..T {
                // In bounds: activation rows hold as many blocks as the weight row.
                let x = load_i8(qs[t].add(QK8 * i));
                let neg_sum = *ns[t].add(i);
                let p = match KIND {
                    KIND_Q4_0 => I::dot_u8i8(_mm256_set1_epi32(neg_sum), u, x),
                    KIND_Q4_1 => I::dot_u8i8(_mm256_setzero_si256(), u, x),
                    KIND_Q5_0 => I::dot_u8i8(_mm256_set1_epi32(2 * neg_sum), u, x),
                    _ => I::dot_q8(q8, x, neg_sum),
                };
                let scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&*ds[t].add(i)));
                acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[t]);
                if KIND == KIND_Q4_1 {
                    acc_m[t] = _mm256_fmadd_ps(m8, _mm256_broadcast_ss(&*ss[t].add(i)), acc_m[t]);
                }
            }
        }
        each(_mm256_setzero_ps(), |t| _mm256_add_ps(acc[t], acc_m[t]))
    }
}

/// Q4_0, Q4_1, Q5_0 and Q8_0 (`KIND`) against Q8 activations, 256-bit.
#[inline(always)]
unsafe fn dot_q8_family<I: Isa, const T: usize, const KIND: u8>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
) -> [f32; T] {
    unsafe {
        let acc = q8_family_acc::<I, T, KIND>(w, a, t0, 0..w.len() / block_bytes(KIND));
        each(0.0, |t| hsum(acc[t]))
    }
}

/// Where the 512-bit kernels take each 4-byte group of a pair of 32-value
/// blocks from: group `j` of the pair is group `PAIR_GROUPS[j] % 16` of the
/// pair's first block (below 16) or second block (16 and up). Adjacent i32
/// lanes of a product then alternate between the two blocks, so one 64-bit
/// broadcast of two per-block values (`[x0, x1, x0, x1, …]`) lines up with
/// them.
static PAIR_GROUPS: [u32; 16] = {
    let mut g = [0u32; 16];
    let mut j = 0;
    while j < 16 {
        g[j] = (j as u32 % 2) * 16 + 4 * (j as u32 / 8) + (j as u32 % 8) / 2;
        j += 1;
    }
    g
};

/// [`PAIR_GROUPS`] for nibble blocks unpacked two at a time: group `j` comes
/// from `lo` (the low nibbles of both blocks: 4 groups of the first, then 4
/// of the second) below 16, or from `hi` (their high nibbles) from 16 on.
static PAIR_NIBBLE_GROUPS: [u32; 16] = {
    let mut g = [0u32; 16];
    let mut j = 0;
    while j < 16 {
        let block = j as u32 % 2;
        let group = PAIR_GROUPS[j] % 16; // 0..4 low nibbles, 4..8 high
        g[j] = (group / 4) * 16 + block * 4 + group % 4;
        j += 1;
    }
    g
};

/// Copies one row of Q8 activations (`src`, whole blocks of 32) into the
/// pair layout of the 512-bit kernels (`dst`: 64 bytes per complete pair):
/// the plain statement of what [`interleave_pairs_avx512`] does.
#[cfg(test)]
pub(super) fn interleave_pairs(src: &[i8], dst: &mut [i8]) {
    for (pair, out) in src.chunks_exact(2 * QK8).zip(dst.chunks_exact_mut(2 * QK8)) {
        for (j, &g) in PAIR_GROUPS.iter().enumerate() {
            let from = 4 * (g as usize % 16) + if g >= 16 { QK8 } else { 0 };
            out[4 * j..4 * j + 4].copy_from_slice(&pair[from..from + 4]);
        }
    }
}

/// [`PAIR_GROUPS`] for a pair read as one 64-byte vector: the second
/// block's groups are dwords 8..16.
static PAIR_GROUPS_64: [u32; 16] = {
    let mut g = [0u32; 16];
    let mut j = 0;
    while j < 16 {
        g[j] = (j as u32 % 2) * 8 + 4 * (j as u32 / 8) + (j as u32 % 8) / 2;
        j += 1;
    }
    g
};

/// Copies one row of Q8 activations (`src`, whole blocks of 32) into the
/// pair layout of the 512-bit kernels (`dst`: 64 bytes per complete pair),
/// one permutation per pair.
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn interleave_pairs_avx512(src: &[i8], dst: &mut [i8]) {
    unsafe {
        let groups = _mm512_loadu_si512(PAIR_GROUPS_64.as_ptr().cast());
        let pairs = src.len().min(dst.len()) / (2 * QK8);
        for p in 0..pairs {
            // In bounds: pair p is inside both slices.
            let v = _mm512_loadu_si512(src.as_ptr().add(2 * QK8 * p).cast());
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(2 * QK8 * p).cast(),
                _mm512_permutexvar_epi32(groups, v),
            );
        }
    }
}

/// `v` rounded to f16 precision (nearest, ties to even), as f32.
#[inline(always)]
unsafe fn round_f16(v: f32) -> f32 {
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
            _mm_set_ss(v),
        )))
    }
}

/// The largest of the 8 lanes.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }
}

/// The 8 i32 lanes added up.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
    }
}

/// `x · scale` rounded to the nearest integer, ties to even (the scalar
/// `round_even`), as i32 lanes.
#[inline(always)]
unsafe fn round_scaled(x: __m256, scale: __m256) -> __m256i {
    unsafe {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, scale),
        );
        _mm256_cvttps_epi32(r)
    }
}

/// 32 i32 lanes (each in -128..128) packed to bytes, in order, at `q`.
#[inline(always)]
unsafe fn store_i8x32(q: *mut i8, v: [__m256i; 4]) {
    unsafe {
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(v[0], v[1]),
            _mm256_packs_epi32(v[2], v[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), p);
    }
}

/// `scalar::quantize_row_q8` with AVX2, to the same results.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    neg_sum: &mut [i32],
    s: &mut [f32],
) {
    unsafe {
        let nb = x.len() / QK8;
        assert!(q.len() >= nb * QK8 && d.len() >= nb && neg_sum.len() >= nb && s.len() >= nb);
        let sign = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            // In bounds: block b is inside `x` and `q` (checked above).
            let p = x.as_ptr().add(QK8 * b);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let abs = |v: __m256| _mm256_andnot_ps(sign, v);
            let m = _mm256_max_ps(
                _mm256_max_ps(abs(v[0]), abs(v[1])),
                _mm256_max_ps(abs(v[2]), abs(v[3])),
            );
            let amax = hmax(m);
            let scale = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let i = [
                round_scaled(v[0], id),
                round_scaled(v[1], id),
                round_scaled(v[2], id),
                round_scaled(v[3], id),
            ];
            let sum = hsum_i32(_mm256_add_epi32(
                _mm256_add_epi32(i[0], i[1]),
                _mm256_add_epi32(i[2], i[3]),
            ));
            store_i8x32(q.as_mut_ptr().add(QK8 * b), i);
            d[b] = round_f16(scale);
            neg_sum[b] = -sum;
            s[b] = round_f16(scale * sum as f32);
        }
    }
}

/// `scalar::quantize_row_q8k` with AVX2, to the same results.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8k(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    ksums: &mut [i16],
    kmins: &mut [f32],
) {
    unsafe {
        let nb = x.len() / QK_K;
        assert!(
            q.len() >= nb * QK_K
                && d.len() >= nb
                && ksums.len() >= nb * KSUMS
                && kmins.len() >= nb * 8
        );
        let sign = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            // In bounds: block b is inside `x` and `q` (checked above).
            let p = x.as_ptr().add(QK_K * b);
            let mut m = _mm256_setzero_ps();
            for k in 0..32 {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))));
            }
            let amax = hmax(m);
            let ks = &mut ksums[KSUMS * b..KSUMS * (b + 1)];
            let km = &mut kmins[8 * b..8 * b + 8];
            ks.fill(0);
            if amax == 0.0 {
                q[QK_K * b..QK_K * (b + 1)].fill(0);
                d[b] = 0.0;
                km.fill(0.0);
                continue;
            }
            // The first value of largest magnitude, its sign kept.
            let mut max = amax;
            for k in 0..32 {
                let v = _mm256_loadu_ps(p.add(8 * k));
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                    _mm256_andnot_ps(sign, v),
                    _mm256_set1_ps(amax),
                ));
                if hit != 0 {
                    max = *p.add(8 * k + hit.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            let scale = _mm256_set1_ps(iscale);
            let top = _mm256_set1_epi32(127);
            for g in 0..8 {
                let x = p.add(32 * g);
                let i = [
                    _mm256_min_epi32(round_scaled(_mm256_loadu_ps(x), scale), top),
                    _mm256_min_epi32(round_scaled(_mm256_loadu_ps(x.add(8)), scale), top),
                    _mm256_min_epi32(round_scaled(_mm256_loadu_ps(x.add(16)), scale), top),
                    _mm256_min_epi32(round_scaled(_mm256_loadu_ps(x.add(24)), scale), top),
                ];
                ks[2 * g] = hsum_i32(_mm256_add_epi32(i[0], i[1])) as i16;
                ks[2 * g + 1] = hsum_i32(_mm256_add_epi32(i[2], i[3])) as i16;
                ks[16 + g] = ks[2 * g] + ks[2 * g + 1];
                store_i8x32(q.as_mut_ptr().add(QK_K * b + 32 * g), i);
            }
            d[b] = 1.0 / iscale;
            for (m, &s) in km.iter_mut().zip(&ks[16..24]) {
                *m = d[b] * s as f32;
            }
        }
    }
}

/// Two per-block f32 values repeated over 16 lanes: `[x0, x1, x0, x1, …]`.
#[inline(always)]
unsafe fn pair_f32(p: *const f32) -> __m512 {
    unsafe { _mm512_castpd_ps(_mm512_set1_pd(std::ptr::read_unaligned(p.cast::<f64>()))) }
}

/// Two per-block i32 values repeated over 16 lanes.
#[inline(always)]
unsafe fn pair_i32(p: *const i32) -> __m512i {
    unsafe { _mm512_set1_epi64(std::ptr::read_unaligned(p.cast::<i64>())) }
}

/// The f16 scales at `b0` and `b1` as `[x0, x1, x0, x1, …]`.
#[inline(always)]
unsafe fn pair_f16(b0: *const u8, b1: *const u8) -> __m512 {
    unsafe {
        let bits = u16::from_le_bytes([*b0, *b0.add(1)]) as u32
            | (u16::from_le_bytes([*b1, *b1.add(1)]) as u32) << 16;
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_castps_pd(v)))
    }
}

/// The quants of blocks `b0` and `b1` (32-value types) as unsigned bytes in
/// the [`PAIR_GROUPS`] order (Q8_0: `w + 128`).
#[inline(always)]
unsafe fn unpack_pair<const KIND: u8>(b0: *const u8, b1: *const u8) -> __m512i {
    unsafe {
        if KIND == KIND_Q8_0 {
            let w = _mm512_permutex2var_epi32(
                _mm512_castsi256_si512(load(b0.add(2))),
                _mm512_loadu_si512(PAIR_GROUPS.as_ptr().cast()),
                _mm512_castsi256_si512(load(b1.add(2))),
            );
            return _mm512_xor_si512(w, _mm512_set1_epi8(-128));
        }
        let at = quants_at(KIND);
        let raw = _mm256_loadu2_m128i(b1.add(at).cast(), b0.add(at).cast());
        let m4 = _mm256_set1_epi8(15);
        let lo = _mm256_and_si256(raw, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
        let u = _mm512_permutex2var_epi32(
            _mm512_castsi256_si512(lo),
            _mm512_loadu_si512(PAIR_NIBBLE_GROUPS.as_ptr().cast()),
            _mm512_castsi256_si512(hi),
        );
        if KIND == KIND_Q5_0 {
            // Fifth bits: in pair order, the first block's bytes are those of the
            // even 4-byte groups, in value order; the second's the odd ones.
            let qh0 = u32::from_le(std::ptr::read_unaligned(b0.add(2).cast::<u32>())) as u64;
            let qh1 = u32::from_le(std::ptr::read_unaligned(b1.add(2).cast::<u32>())) as u64;
            let mask =
                _pdep_u64(qh0, 0x0f0f_0f0f_0f0f_0f0f) | _pdep_u64(qh1, 0xf0f0_f0f0_f0f0_f0f0);
            return _mm512_or_si512(u, _mm512_maskz_mov_epi8(mask, _mm512_set1_epi8(0x10)));
        }
        u
    }
}

/// Q4_0, Q4_1, Q5_0 and Q8_0 (`KIND`) against Q8 activations, two blocks
/// per 512-bit vector (in the [`PAIR_GROUPS`] order), an odd last block with
/// the 256-bit code.
#[inline(always)]
unsafe fn dot_q8_family_512<const T: usize, const KIND: u8>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
) -> [f32; T] {
    unsafe {
        let bb = block_bytes(KIND);
        let nb = w.len() / bb;
        debug_assert!(nb == a.blocks && a.pairs_stride == nb / 2 * 2 * QK8);
        let ps: [*const i8; T] = rows(a.pairs, a.pairs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        let ns: [*const i32; T] = rows(a.neg_sum, a.blocks, t0);
        let ss: [*const f32; T] = rows(a.s, a.blocks, t0);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_m = [_mm512_setzero_ps(); T];
        for p in 0..nb / 2 {
            // In bounds: blocks 2p and 2p + 1 are in the row.
            let b0 = w.as_ptr().add(2 * p * bb);
            let b1 = b0.add(bb);
            let u = unpack_pair::<KIND>(b0, b1);
            let dw = pair_f16(b0, b1);
            let m8 = if KIND == KIND_Q4_1 {
                // m · s_a spread over a block's 8 lanes (× 1/8 is exact).
                _mm512_mul_ps(pair_f16(b0.add(2), b1.add(2)), _mm512_set1_ps(0.125))
            } else {
                _mm512_setzero_ps()
            };
            for t in 0..T {
                // In bounds: activation rows hold as many blocks as the weight row.
                let x = _mm512_loadu_si512(ps[t].add(2 * QK8 * p).cast());
                // The offsets (8 or 16; Q8_0's 128) through -Σa, over 8 lanes.
                let init = match KIND {
                    KIND_Q4_0 => pair_i32(ns[t].add(2 * p)),
                    KIND_Q5_0 => _mm512_slli_epi32::<1>(pair_i32(ns[t].add(2 * p))),
                    KIND_Q8_0 => _mm512_slli_epi32::<4>(pair_i32(ns[t].add(2 * p))),
                    _ => _mm512_setzero_si512(),
                };
                let prod = _mm512_dpbusd_epi32(init, u, x);
                let scale = _mm512_mul_ps(dw, pair_f32(ds[t].add(2 * p)));
                acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
                if KIND == KIND_Q4_1 {
                    acc_m[t] = _mm512_fmadd_ps(m8, pair_f32(ss[t].add(2 * p)), acc_m[t]);
                }
            }
        }
        let tail = if nb % 2 == 1 {
            q8_family_acc::<Avx512, T, KIND>(w, a, t0, nb - 1..nb)
        } else {
            [_mm256_setzero_ps(); T]
        };
        each(0.0, |t| {
            hsum512(_mm512_add_ps(acc[t], acc_m[t])) + hsum(tail[t])
        })
    }
}

/// The 8 scales and 8 minimums of a Q4_K / Q5_K block (12 bytes at `p`) as
/// i16 lanes (GGML's `utmp` unpacking of `get_scale_min_k4`).
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> (__m128i, __m128i) {
    unsafe {
        let word = |k: usize| u32::from_le(std::ptr::read_unaligned(p.add(4 * k).cast::<u32>()));
        let (s0, s1, s2) = (word(0), word(1), word(2));
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        let sc_lo = s0 & LOW6;
        let sc_hi = (s2 & LOW4) | (((s0 >> 6) & LOW2) << 4);
        let m_lo = s1 & LOW6;
        let m_hi = ((s2 >> 4) & LOW4) | (((s1 >> 6) & LOW2) << 4);
        (
            _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, sc_hi as i32, sc_lo as i32)),
            _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, m_hi as i32, m_lo as i32)),
        )
    }
}

/// Q4_K and Q5_K (`Q5`), against Q8_K activations.
///
/// Per 32-value sub-block `j`: `vpmaddubsw` of the quants with the
/// activations, times the 6-bit scale into i32 lanes; per block one FMA with
/// `d · d_a`, and one for the minimums, `dmin · Σ_j m_j · (d_a Σa_j)`, with
/// the activations' float sums per 32.
#[inline(always)]
unsafe fn dot_k4<I: Isa, const T: usize, const Q5: bool>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
) -> [f32; T] {
    unsafe {
        let bb = if Q5 { 176 } else { 144 };
        let nb = w.len() / bb;
        debug_assert!(nb == a.blocks);
        let qs: [*const i8; T] = rows(a.qs, a.qs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        let km: [*const f32; T] = rows(a.kmins, 8 * a.blocks, t0);
        let m4 = _mm256_set1_epi8(0x0f);
        let bit4 = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); T];
        for i in 0..nb {
            // In bounds: the row holds `nb` blocks of `bb` bytes.
            let b = w.as_ptr().add(i * bb);
            let scales = f16x2_at(b);
            let d = _mm256_broadcastss_ps(scales);
            let (sc, mins) = k4_scales(b.add(4));
            let mins = _mm256_mul_ps(
                _mm256_broadcastss_ps(_mm_movehdup_ps(scales)),
                _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(mins)),
            );
            let sc = _mm256_broadcastsi128_si256(sc);
            let q4 = b.add(if Q5 { 48 } else { 16 });
            let mut hb = if Q5 {
                load(b.add(16))
            } else {
                _mm256_setzero_si256()
            };
            let mut isum = [_mm256_setzero_si256(); T];
            for c in 0..4 {
                let raw = load(q4.add(32 * c));
                let mut lo = _mm256_and_si256(raw, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                if Q5 {
                    // Bits 2c and 2c + 1 of each qh byte (hb is shifted by 2 per
                    // chunk; 16-bit shifts never carry a neighbour's bit into
                    // the bits read).
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(hb), bit4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(hb), bit4));
                    hb = _mm256_srli_epi16::<2>(hb);
                }
                // Scale of sub-block j in every i16 lane.
                let j = 2 * c as i16;
                let s_lo = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j)));
                let s_hi =
                    _mm256_shuffle_epi8(sc, _mm256_set1_epi16(((2 * j + 3) << 8) | (2 * j + 2)));
                for t in 0..T {
                    // In bounds: activation rows hold `nb` blocks.
                    let x = qs[t].add(QK_K * i + 64 * c);
                    let p_lo = _mm256_maddubs_epi16(lo, load_i8(x));
                    let p_hi = _mm256_maddubs_epi16(hi, load_i8(x.add(32)));
                    isum[t] = I::dot_i16(I::dot_i16(isum[t], p_lo, s_lo), p_hi, s_hi);
                }
            }
            for t in 0..T {
                let da = _mm256_broadcast_ss(&*ds[t].add(i));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
                acc[t] = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(km[t].add(8 * i)), acc[t]);
            }
        }
        each(0.0, |t| hsum(acc[t]))
    }
}

/// i16 lane indices: `a` in lanes 0..16, `b` in lanes 16..32.
#[inline(always)]
unsafe fn halves_epi16(a: i16, b: i16) -> __m512i {
    unsafe { _mm512_inserti64x4::<1>(_mm512_set1_epi16(a), _mm256_set1_epi16(b)) }
}

/// Where the i16 lanes of `vpackssdw(p, q)` come from, for two products
/// `p` and `q` of `vpdpbusd` (i32 lane `k` of each the sum of the products
/// of bytes `4k..4k + 4`): the 16-byte group (`0..4` of `p`, `4..8` of
/// `q`) that i16 lane `i` sums.
///
/// `vpackssdw` works per 128-bit lane `l`: i16 lanes `8l..8l + 4` are
/// `p`'s i32 lanes `4l..4l + 4`, lanes `8l + 4..8l + 8` are `q`'s. So each
/// adjacent pair of i16 lanes, which one `vpdpwssd` multiplies by one pair
/// of scales and adds into one i32 lane, sums one 16-byte group of values.
const fn packs_groups() -> [i16; 32] {
    let mut g = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        g[i] = (i / 8) as i16 + if i % 8 < 4 { 0 } else { 4 };
        i += 1;
    }
    g
}

/// For Q4_K / Q5_K chunk `c` (64 values) of two blocks A and B packed
/// together (A's products `p`, B's `q`), the scale of each i16 lane as an
/// index into A's 8 scales (i16 lanes 0..8) and B's (8..16): a chunk's
/// 16-byte groups 0 and 1 are sub-block `2c`, groups 2 and 3 sub-block
/// `2c + 1` ([`k4_chunk`]). `2c` is added at run time.
static K4_PAIR_SCALES: [i16; 32] = {
    let groups = packs_groups();
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = (groups[i] / 4) * 8 + (groups[i] % 4) / 2;
        i += 1;
    }
    s
};

/// The 64 quants of chunk `c` (sub-blocks `2c` and `2c + 1`) of the Q4_K /
/// Q5_K block at `b`, as bytes: the low nibbles in bytes 0..32, the high
/// ones in 32..64; for Q5_K with their fifth bits from `hb`, which then
/// moves on to the next chunk's (16-bit shifts never carry a neighbour's
/// bit into the bits read).
#[inline(always)]
unsafe fn k4_chunk<const Q5: bool>(b: *const u8, c: usize, hb: &mut __m512i) -> __m512i {
    unsafe {
        let raw = load(b.add(if Q5 { 48 } else { 16 } + 32 * c));
        let both =
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(raw), _mm256_srli_epi16::<4>(raw));
        let mut q = _mm512_and_si512(both, _mm512_set1_epi8(0x0f));
        if Q5 {
            q = _mm512_or_si512(
                q,
                _mm512_and_si512(_mm512_slli_epi16::<4>(*hb), _mm512_set1_epi8(0x10)),
            );
            *hb = _mm512_srli_epi16::<2>(*hb);
        }
        q
    }
}

/// Q5_K's fifth bits of the block at `b`, for [`k4_chunk`]: the low half
/// for the low nibbles (bit 2c of each byte), the high half for the high
/// ones (bit 2c + 1).
#[inline(always)]
unsafe fn k5_high(b: *const u8) -> __m512i {
    unsafe {
        let h = load(b.add(16));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<1>(h))
    }
}

/// Q4_K and Q5_K (`Q5`) against Q8_K activations, 512-bit, two blocks (A
/// and B) at a time; otherwise as [`dot_k4`].
///
/// Per 64 values (one chunk: two sub-blocks), `vpdpbusd` of the quants with
/// the activations from zero: each i32 lane is the sum of 4 products of one
/// sub-block, at most `4 · 31 · 128 < 2^15` in magnitude. So A's and B's
/// products of the same chunk pack into i16 lanes (`vpackssdw`, which then
/// never saturates), each adjacent pair of lanes from one sub-block of one
/// block ([`packs_groups`]), and one `vpdpwssd` with the matching 6-bit
/// scales ([`K4_PAIR_SCALES`]) adds them into the i32 sums: 3 multiply-adds
/// per 128 values where `vpmaddubsw` + `vpdpwssd` take 4. The sums then
/// hold block A in lanes `4l, 4l + 1` and B in lanes `4l + 2, 4l + 3` of
/// each 128-bit lane `l`, so the float work (× `d · d_a`, the minimums)
/// runs once per pair. An odd last block runs alone (B's lanes zero). With
/// one or two tokens, the integer sums run in two chains (exact) to
/// overlap latencies.
#[inline(always)]
unsafe fn dot_k4_512<const T: usize, const Q5: bool>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
    unsafe {
        let bb = if Q5 { 176 } else { 144 };
        let nb = w.len() / bb;
        debug_assert!(nb == a.blocks);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut i = 0;
        while i + 2 <= nb {
            k4_pair::<T, Q5, false>(w, a, t0, i, &mut acc);
            i += 2;
        }
        if i < nb {
            k4_pair::<T, Q5, true>(w, a, t0, i, &mut acc);
        }
        each(0.0, |t| hsum512(acc[t]))
    }
}

/// Blocks `i` and `i + 1` (only `i` if `SINGLE`) of [`dot_k4_512`], added
/// into `acc`.
#[inline(always)]
unsafe fn k4_pair<const T: usize, const Q5: bool, const SINGLE: bool>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
    i: usize,
    acc: &mut [__m512; T],
) {
    unsafe {
        let bb = if Q5 { 176 } else { 144 };
        debug_assert!((i + if SINGLE { 1 } else { 2 }) * bb <= w.len());
        let qs: [*const i8; T] = rows(a.qs, a.qs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        let km: [*const f32; T] = rows(a.kmins, 8 * a.blocks, t0);
        // In bounds: the row holds block i, and unless SINGLE block i + 1 (B is
        // not read otherwise).
        let ba = w.as_ptr().add(i * bb);
        let bx = ba.wrapping_add(bb);
        // d and dmin of A, and of B (zero if SINGLE).
        let dm_a = f16x2_at(ba);
        let dm_b = if SINGLE {
            _mm_setzero_ps()
        } else {
            f16x2_at(bx)
        };
        let (sc_a, m_a) = k4_scales(ba.add(4));
        let (sc_b, m_b) = if SINGLE {
            (_mm_setzero_si128(), _mm_setzero_si128())
        } else {
            k4_scales(bx.add(4))
        };
        // [dA, dA, dB, dB] in each 128-bit lane, as the i32 sums.
        let d = _mm512_broadcast_f32x4(_mm_permute_ps::<0x50>(_mm_unpacklo_ps(dm_a, dm_b)));
        // dmin · m per sub-block: A's 8 in lanes 0..8, B's in 8..16, as the
        // activations' float sums of blocks i and i + 1 lie.
        let dmin = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_broadcastss_ps(_mm_movehdup_ps(dm_a))),
            _mm256_castps_pd(_mm256_broadcastss_ps(_mm_movehdup_ps(dm_b))),
        ));
        let mins = _mm512_mul_ps(
            dmin,
            _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_set_m128i(m_b, m_a))),
        );
        let sc = _mm512_castsi256_si512(_mm256_set_m128i(sc_b, sc_a));
        let pair_scales = _mm512_loadu_si512(K4_PAIR_SCALES.as_ptr().cast());
        let mut hb_a = if Q5 {
            k5_high(ba)
        } else {
            _mm512_setzero_si512()
        };
        let mut hb_b = if Q5 && !SINGLE {
            k5_high(bx)
        } else {
            _mm512_setzero_si512()
        };
        let mut isum = [[_mm512_setzero_si512(); T]; 2];
        for c in 0..4 {
            let q_a = k4_chunk::<Q5>(ba, c, &mut hb_a);
            let q_b = if SINGLE {
                _mm512_setzero_si512()
            } else {
                k4_chunk::<Q5>(bx, c, &mut hb_b)
            };
            let s = _mm512_permutexvar_epi16(
                _mm512_add_epi16(pair_scales, _mm512_set1_epi16(2 * c as i16)),
                sc,
            );
            let chain = if T <= 2 { c % 2 } else { 0 };
            for t in 0..T {
                // In bounds: activation rows hold as many blocks as the row.
                let x = qs[t].add(QK_K * i + 64 * c);
                let p_a =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_a, _mm512_loadu_si512(x.cast()));
                let p_b = if SINGLE {
                    _mm512_setzero_si512()
                } else {
                    _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        q_b,
                        _mm512_loadu_si512(x.add(QK_K).cast()),
                    )
                };
                isum[chain][t] =
                    _mm512_dpwssd_epi32(isum[chain][t], _mm512_packs_epi32(p_a, p_b), s);
            }
        }
        for t in 0..T {
            let isum = if T <= 2 {
                _mm512_add_epi32(isum[0][t], isum[1][t])
            } else {
                isum[0][t]
            };
            // In bounds: the activations' scales and float sums of block i and
            // (unless SINGLE) i + 1.
            let (da, m) = if SINGLE {
                (
                    _mm512_set1_ps(*ds[t].add(i)),
                    _mm512_zextps256_ps512(_mm256_loadu_ps(km[t].add(8 * i))),
                )
            } else {
                (
                    _mm512_permute_ps::<0x50>(pair_f32(ds[t].add(i))),
                    _mm512_loadu_ps(km[t].add(8 * i)),
                )
            };
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(isum), acc[t]);
            acc[t] = _mm512_fnmadd_ps(mins, m, acc[t]);
        }
    }
}

/// Q6_K against Q8_K activations.
///
/// Per 32 values: the 6-bit quants as unsigned bytes (0..64), `vpmaddubsw`
/// with the activations, times the two 16-value scales; the -32 offset comes
/// off through the activations' sums per 16: `-32 · Σ_k sc_k Σa_k`.
#[inline(always)]
unsafe fn dot_q6k<I: Isa, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
    unsafe {
        let nb = w.len() / 210;
        debug_assert!(nb == a.blocks);
        let qs: [*const i8; T] = rows(a.qs, a.qs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        let ks: [*const i16; T] = rows(a.ksums, KSUMS * a.blocks, t0);
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        // Per 128-bit lane: i16 0 of an i32 into the low lane, i16 1 into the high.
        let pick = _mm256_setr_epi8(
            0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, //
            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        );
        let mut acc = [_mm256_setzero_ps(); T];
        for i in 0..nb {
            // In bounds: the row holds `nb` blocks of 210 bytes.
            let b = w.as_ptr().add(i * 210);
            let d = _mm256_set1_ps(f16_bits_to_f32(u16::from_le_bytes([
                *b.add(208),
                *b.add(209),
            ])));
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
            // -32 · sc fits i16 (|sc| ≤ 128).
            let offset = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(sc));
            let mut isum: [__m256i; T] = each(_mm256_setzero_si256(), |t| {
                let sums16 = _mm256_loadu_si256(ks[t].add(KSUMS * i).cast());
                I::dot_i16(_mm256_setzero_si256(), offset, sums16)
            });
            for h in 0..2 {
                let ql = b.add(64 * h);
                let q1 = load(ql);
                let q2 = load(ql.add(32));
                let hb = load(b.add(128 + 32 * h));
                let v = [
                    _mm256_or_si256(
                        _mm256_and_si256(q1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(q2, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q1), m4),
                        _mm256_and_si256(hb, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q2), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                    ),
                ];
                for (j, &v) in v.iter().enumerate() {
                    // Scales 2k and 2k + 1 of chunk k, for its two halves of 16.
                    let k = (4 * h + j) as i32;
                    let s = _mm256_shuffle_epi8(
                        _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(k)),
                        pick,
                    );
                    for t in 0..T {
                        // In bounds: activation rows hold `nb` blocks.
                        let x = load_i8(qs[t].add(QK_K * i + 128 * h + 32 * j));
                        isum[t] = I::dot_i16(isum[t], _mm256_maddubs_epi16(v, x), s);
                    }
                }
            }
            for t in 0..T {
                let da = _mm256_broadcast_ss(&*ds[t].add(i));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            }
        }
        each(0.0, |t| hsum(acc[t]))
    }
}

/// For Q6_K chunk `k` (64 values: sub-blocks `4k..4k + 4`, one per 16-byte
/// group) of two blocks A and B packed together (A's products `p`, B's
/// `q`), the scale of each i16 lane as an index into A's 16 scales (i16
/// lanes 0..16) and B's (16..32). `4k` is added at run time.
static Q6K_PAIR_SCALES: [i16; 32] = {
    let groups = packs_groups();
    let mut s = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = (groups[i] / 4) * 16 + groups[i] % 4;
        i += 1;
    }
    s
};

/// The 128 quants `128h..128h + 128` of the Q6_K block at `b` as bytes
/// (0..64): values `128h..128h + 64` (sub-blocks `8h..8h + 4`), then the
/// next 64.
#[inline(always)]
unsafe fn q6k_half(b: *const u8, h: usize) -> [__m512i; 2] {
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        // Per 256-bit half: where qh's bit pairs go for the low nibbles (bits
        // 0-1 then 2-3 to bits 4-5) and for the high ones (bits 4-5, 6-7).
        let shift_lo = halves_epi16(4, 2);
        let shift_hi = halves_epi16(0, 2);
        let ql = _mm512_loadu_si512(b.add(64 * h).cast());
        let hb = _mm512_broadcast_i64x4(load(b.add(128 + 32 * h)));
        [
            _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_sllv_epi16(hb, shift_lo), m30),
            ),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(_mm512_srlv_epi16(hb, shift_hi), m30),
            ),
        ]
    }
}

/// Q6_K against Q8_K activations, 512-bit, two blocks (A and B) at a time;
/// otherwise as [`dot_q6k`].
///
/// As [`dot_k4_512`], with the signed quants `q - 32` (-32..32) as
/// `vpdpbusd`'s signed operand and the activations plus 128 (`a ^ 0x80`,
/// 1..256) as its unsigned one. The 128s add `128 · Σ (q - 32)` per 4
/// values, which depends on the weights only: each product starts from
/// minus that (one `vpdpbusd` of `q` with -128 from 16384, per 64 weights),
/// so its i32 lanes are exactly `Σ a · (q - 32)` over 4 values of one
/// 16-value sub-block, at most `4 · 128 · 32 = 2^14` in magnitude. A's and
/// B's then pack into i16 lanes, and one `vpdpwssd` with their i8 scales
/// ([`Q6K_PAIR_SCALES`]) adds them; the float work runs once per pair. No
/// activation sums are read (the -32 offset is in the quants). With one or
/// two tokens, the integer sums run in two chains (exact).
#[inline(always)]
unsafe fn dot_q6k_512<const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] {
    unsafe {
        let nb = w.len() / 210;
        debug_assert!(nb == a.blocks);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut i = 0;
        while i + 2 <= nb {
            q6k_pair::<T, false>(w, a, t0, i, &mut acc);
            i += 2;
        }
        if i < nb {
            q6k_pair::<T, true>(w, a, t0, i, &mut acc);
        }
        each(0.0, |t| hsum512(acc[t]))
    }
}

/// Blocks `i` and `i + 1` (only `i` if `SINGLE`) of [`dot_q6k_512`], added
/// into `acc`.
#[inline(always)]
unsafe fn q6k_pair<const T: usize, const SINGLE: bool>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
    i: usize,
    acc: &mut [__m512; T],
) {
    unsafe {
        debug_assert!((i + if SINGLE { 1 } else { 2 }) * 210 <= w.len());
        let qs: [*const i8; T] = rows(a.qs, a.qs_stride, t0);
        let ds: [*const f32; T] = rows(a.d, a.blocks, t0);
        // In bounds: the row holds block i, and unless SINGLE block i + 1 (B is
        // not read otherwise).
        let ba = w.as_ptr().add(i * 210);
        let bx = ba.wrapping_add(210);
        let scale = |b: *const u8| f16_bits_to_f32(u16::from_le_bytes([*b.add(208), *b.add(209)]));
        let d_a = scale(ba);
        let d_b = if SINGLE { 0.0 } else { scale(bx) };
        // [dA, dA, dB, dB] in each 128-bit lane, as the i32 sums.
        let d = _mm512_broadcast_f32x4(_mm_setr_ps(d_a, d_a, d_b, d_b));
        let sc_a = _mm256_cvtepi8_epi16(_mm_loadu_si128(ba.add(192).cast()));
        let sc_b = if SINGLE {
            _mm256_setzero_si256()
        } else {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(bx.add(192).cast()))
        };
        let sc = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(sc_a), sc_b);
        let pair_scales = _mm512_loadu_si512(Q6K_PAIR_SCALES.as_ptr().cast());
        let x80 = _mm512_set1_epi8(-128);
        let k32 = _mm512_set1_epi8(32);
        // -128 · Σ (q - 32) per 4 values = 16384 - 128 · Σ q.
        let start = |q: __m512i| _mm512_dpbusd_epi32(_mm512_set1_epi32(16384), q, x80);
        let mut isum = [[_mm512_setzero_si512(); T]; 2];
        for h in 0..2 {
            let q_a = q6k_half(ba, h);
            let q_b = if SINGLE {
                [_mm512_setzero_si512(); 2]
            } else {
                q6k_half(bx, h)
            };
            for part in 0..2 {
                let k = 2 * h + part;
                let s = _mm512_permutexvar_epi16(
                    _mm512_add_epi16(pair_scales, _mm512_set1_epi16(4 * k as i16)),
                    sc,
                );
                let (from_a, w_a) = (start(q_a[part]), _mm512_sub_epi8(q_a[part], k32));
                let (from_b, w_b) = (start(q_b[part]), _mm512_sub_epi8(q_b[part], k32));
                let chain = if T <= 2 { part } else { 0 };
                for t in 0..T {
                    // In bounds: activation rows hold as many blocks as the row.
                    let x = qs[t].add(QK_K * i + 64 * k);
                    let p_a = _mm512_dpbusd_epi32(
                        from_a,
                        _mm512_xor_si512(_mm512_loadu_si512(x.cast()), x80),
                        w_a,
                    );
                    let p_b = if SINGLE {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_dpbusd_epi32(
                            from_b,
                            _mm512_xor_si512(_mm512_loadu_si512(x.add(QK_K).cast()), x80),
                            w_b,
                        )
                    };
                    isum[chain][t] =
                        _mm512_dpwssd_epi32(isum[chain][t], _mm512_packs_epi32(p_a, p_b), s);
                }
            }
        }
        for t in 0..T {
            let isum = if T <= 2 {
                _mm512_add_epi32(isum[0][t], isum[1][t])
            } else {
                isum[0][t]
            };
            // In bounds: the activations' scales of block i and (unless SINGLE)
            // i + 1.
            let da = if SINGLE {
                _mm512_set1_ps(*ds[t].add(i))
            } else {
                _mm512_permute_ps::<0x50>(pair_f32(ds[t].add(i)))
            };
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(isum), acc[t]);
        }
    }
}

/// F32 and F16 (`HALF`) weights against f32 activations: FMAs on two
/// accumulators per token, the tail (cols % 8) in scalar.
#[inline(always)]
unsafe fn dot_float<I: Isa, const T: usize, const HALF: bool>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
) -> [f32; T] {
    unsafe {
        let cols = w.len() / if HALF { 2 } else { 4 };
        debug_assert!(cols == a.cols);
        let fs: [*const f32; T] = rows(a.f, a.cols, t0);
        // In bounds for c + 8 ≤ cols.
        #[inline(always)]
        unsafe fn load_w<const HALF: bool>(w: &[u8], c: usize) -> __m256 {
            unsafe {
                if HALF {
                    _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * c).cast()))
                } else {
                    _mm256_loadu_ps(w.as_ptr().add(4 * c).cast())
                }
            }
        }
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut c = 0;
        while c + 16 <= cols {
            let (w0, w1) = (load_w::<HALF>(w, c), load_w::<HALF>(w, c + 8));
            for t in 0..T {
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(fs[t].add(c)), acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(fs[t].add(c + 8)), acc1[t]);
            }
            c += 16;
        }
        if c + 8 <= cols {
            let w0 = load_w::<HALF>(w, c);
            for t in 0..T {
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(fs[t].add(c)), acc0[t]);
            }
            c += 8;
        }
        each(0.0, |t| {
            let mut sum = hsum(_mm256_add_ps(acc0[t], acc1[t]));
            for k in c..cols {
                let v = if HALF {
                    f16_bits_to_f32(u16::from_le_bytes([w[2 * k], w[2 * k + 1]]))
                } else {
                    f32::from_le_bytes([w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]])
                };
                sum += v * *fs[t].add(k);
            }
            sum
        })
    }
}

/// F32 and F16 (`HALF`) weights against f32 activations, 512-bit: 32
/// values per step on two accumulators per token, then 8 at a time, the
/// tail (cols % 8) in scalar.
#[inline(always)]
unsafe fn dot_float_512<const T: usize, const HALF: bool>(
    w: &[u8],
    a: &ActPtrs,
    t0: usize,
) -> [f32; T] {
    unsafe {
        let cols = w.len() / if HALF { 2 } else { 4 };
        debug_assert!(cols == a.cols);
        let fs: [*const f32; T] = rows(a.f, a.cols, t0);
        // In bounds for c + 16 ≤ cols.
        #[inline(always)]
        unsafe fn load_w16<const HALF: bool>(w: &[u8], c: usize) -> __m512 {
            unsafe {
                if HALF {
                    _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().add(2 * c).cast()))
                } else {
                    _mm512_loadu_ps(w.as_ptr().add(4 * c).cast())
                }
            }
        }
        let mut acc0 = [_mm512_setzero_ps(); T];
        let mut acc1 = [_mm512_setzero_ps(); T];
        let mut c = 0;
        while c + 32 <= cols {
            let (w0, w1) = (load_w16::<HALF>(w, c), load_w16::<HALF>(w, c + 16));
            for t in 0..T {
                acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(fs[t].add(c)), acc0[t]);
                acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(fs[t].add(c + 16)), acc1[t]);
            }
            c += 32;
        }
        let mut acc8 = [_mm256_setzero_ps(); T];
        while c + 8 <= cols {
            let w0 = if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * c).cast()))
            } else {
                _mm256_loadu_ps(w.as_ptr().add(4 * c).cast())
            };
            for t in 0..T {
                acc8[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(fs[t].add(c)), acc8[t]);
            }
            c += 8;
        }
        each(0.0, |t| {
            let mut sum = hsum512(_mm512_add_ps(acc0[t], acc1[t])) + hsum(acc8[t]);
            for k in c..cols {
                let v = if HALF {
                    f16_bits_to_f32(u16::from_le_bytes([w[2 * k], w[2 * k + 1]]))
                } else {
                    f32::from_le_bytes([w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]])
                };
                sum += v * *fs[t].add(k);
            }
            sum
        })
    }
}

macro_rules! kernels {
    ($($name:ident => $body:expr $(, $wide:expr)?;)*) => {
        $(
            struct $name;
            impl Kernel for $name {
                #[inline(always)]
                unsafe fn dot<I: Isa, const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] { unsafe {
                    $body(w, a, t0)
                }}
                $(
                    #[inline(always)]
                    unsafe fn dot512<const T: usize>(w: &[u8], a: &ActPtrs, t0: usize) -> [f32; T] { unsafe {
                        $wide(w, a, t0)
                    }}
                )?
            }
        )*
    };
}

kernels! {
    KF32 => dot_float::<I, T, false>, dot_float_512::<T, false>;
    KF16 => dot_float::<I, T, true>, dot_float_512::<T, true>;
    KQ4_0 => dot_q8_family::<I, T, KIND_Q4_0>, dot_q8_family_512::<T, KIND_Q4_0>;
    KQ4_1 => dot_q8_family::<I, T, KIND_Q4_1>, dot_q8_family_512::<T, KIND_Q4_1>;
    KQ5_0 => dot_q8_family::<I, T, KIND_Q5_0>, dot_q8_family_512::<T, KIND_Q5_0>;
    KQ8_0 => dot_q8_family::<I, T, KIND_Q8_0>, dot_q8_family_512::<T, KIND_Q8_0>;
    KQ4K => dot_k4::<I, T, false>, dot_k4_512::<T, false>;
    KQ5K => dot_k4::<I, T, true>, dot_k4_512::<T, true>;
    KQ6K => dot_q6k::<I, T>, dot_q6k_512::<T>;
}

/// `T` tokens from `t` against weight row `r`, written out.
#[inline(always)]
unsafe fn emit<I: Isa, K: Kernel, const T: usize>(
    task: &RowTask<'_>,
    a: &ActPtrs,
    w: &[u8],
    r: usize,
    t: usize,
) {
    unsafe {
        let v = I::run::<K, T>(w, a, t);
        for (i, v) in v.into_iter().enumerate() {
            task.out.put(t + i, r, v);
        }
    }
}

/// Weight bytes a block of rows may take in [`tiles`] (with 8 tokens of a
/// short row's activations, well inside a 48 KiB L1 data cache).
const ROW_BLOCK_BYTES: usize = 24 * 1024;

/// A task's rows against all tokens: tiles of `task.tile` tokens stay in
/// the L2 cache while each weight row (read once per tile) meets them, 8
/// (or 4) tokens per kernel call.
///
/// Within a tile, rows go in blocks of about [`ROW_BLOCK_BYTES`], each
/// block against 8 tokens at a time: those tokens' activations are read
/// from L2 once per block and then from L1 for its other rows, where one
/// row at a time would read all the tile's activations from L2 for every
/// row (the kernels' loads would wait on L2 bandwidth). Each (row, token)
/// product is computed the same way whatever the block.
#[inline(always)]
unsafe fn tiles<I: Isa, K: Kernel>(task: &RowTask<'_>) {
    unsafe {
        let a = task.x.ptrs();
        let n = a.rows;
        let row_bytes = task.w.qtype.row_bytes(task.w.cols).max(1);
        let block = (ROW_BLOCK_BYTES / row_bytes).max(1);
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + task.tile).min(n);
            let mut r0 = task.r0;
            while r0 < task.r1 {
                let r1 = (r0 + block).min(task.r1);
                let mut t = t0;
                while t < t1 {
                    let left = t1 - t;
                    let width = if I::WIDE && left >= 8 {
                        8
                    } else if left >= 4 {
                        4
                    } else if left >= 2 {
                        2
                    } else {
                        1
                    };
                    for r in r0..r1 {
                        let w = task.row(r);
                        match width {
                            8 => emit::<I, K, 8>(task, &a, w, r, t),
                            4 => emit::<I, K, 4>(task, &a, w, r, t),
                            2 => emit::<I, K, 2>(task, &a, w, r, t),
                            _ => emit::<I, K, 1>(task, &a, w, r, t),
                        }
                    }
                    t += width;
                }
                r0 = r1;
            }
            t0 = t1;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles_avx2<K: Kernel>(task: &RowTask<'_>) {
    unsafe { tiles::<Avx2, K>(task) }
}

#[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tiles_avx512<K: Kernel>(task: &RowTask<'_>) {
    unsafe { tiles::<Avx512, K>(task) }
}

/// Runs a task with the AVX2 kernels.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C ([`has_avx2`]), and the task's shapes
/// were checked (`matmul`'s `check`).
pub(super) unsafe fn run_rows_avx2(task: &RowTask<'_>) {
    unsafe {
        match task.w.qtype {
            QType::F32 => tiles_avx2::<KF32>(task),
            QType::F16 => tiles_avx2::<KF16>(task),
            QType::Q4_0 => tiles_avx2::<KQ4_0>(task),
            QType::Q4_1 => tiles_avx2::<KQ4_1>(task),
            QType::Q5_0 => tiles_avx2::<KQ5_0>(task),
            QType::Q8_0 => tiles_avx2::<KQ8_0>(task),
            QType::Q4_K => tiles_avx2::<KQ4K>(task),
            QType::Q5_K => tiles_avx2::<KQ5K>(task),
            QType::Q6_K => tiles_avx2::<KQ6K>(task),
        }
    }
}

/// Runs a task with the AVX-512 kernels.
///
/// # Safety
/// The CPU has the features [`has_avx512_vnni`] checks, and the task's
/// shapes were checked (`matmul`'s `check`).
pub(super) unsafe fn run_rows_avx512(task: &RowTask<'_>) {
    unsafe {
        match task.w.qtype {
            QType::F32 => tiles_avx512::<KF32>(task),
            QType::F16 => tiles_avx512::<KF16>(task),
            QType::Q4_0 => tiles_avx512::<KQ4_0>(task),
            QType::Q4_1 => tiles_avx512::<KQ4_1>(task),
            QType::Q5_0 => tiles_avx512::<KQ5_0>(task),
            QType::Q8_0 => tiles_avx512::<KQ8_0>(task),
            QType::Q4_K => tiles_avx512::<KQ4K>(task),
            QType::Q5_K => tiles_avx512::<KQ5K>(task),
            QType::Q6_K => tiles_avx512::<KQ6K>(task),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Test hook: run the AVX-512 family's 256-bit kernels instead of its
    /// 512-bit ones, on this thread.
    pub(super) static NARROW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
