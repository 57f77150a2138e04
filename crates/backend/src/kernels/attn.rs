//! Causal attention over a KV cache, and the SiLU gate of the feed-forward
//! block: the float work of the forward pass that is not a quantized product.
//!
//! Why it is here: written as plain loops compiled for the baseline x86-64
//! target, attention ran 4 floats at a time, one query row at a time, each
//! row streaming every key and value of its head from memory, and `expf` was
//! a library call per score; on a 968-token prefill of Qwen2.5-1.5B that was
//! a fifth of the time. Here
//!
//! - keys are stored transposed (`[dim][position]`), so a block of scores is
//!   `Σ_d q[d] · K[d][j..j + n]`: vertical multiply-adds, no horizontal sums;
//! - several query rows that read the same keys (the heads of one key/value
//!   group, the tokens of one sequence) go through each block of keys and
//!   values together while it is in cache;
//! - the softmax is the streaming one (a running maximum and sum per row,
//!   rescaled once per block of [`KEY_BLOCK`] keys), so no row of scores as
//!   long as the sequence is kept;
//! - `exp` is a polynomial the compiler vectorises.
//!
//! The same generic code is compiled three times: for the baseline target
//! (the `Scalar` level, plain multiply and add), and inside
//! `#[target_feature]` entry points for AVX2 + FMA and for AVX-512, where it
//! vectorises with fused multiply-adds. The only `unsafe` is calling those
//! entry points after the features were detected.
//!
//! Every score, weight and output element is the same chain of operations
//! whatever rows share a call and however many there are, so a query's
//! result does not depend on what it is batched with (for a given level).

use super::Level;

/// Keys per block of the streaming softmax. A cache's position stride must
/// be a multiple of it (see [`Keys`]).
pub const KEY_BLOCK: usize = 64;

/// Query rows that go through a block of keys together.
const ROWS: usize = 4;

/// The head size whose weighted sums have a loop of their own.
const HEAD: usize = 64;

/// The keys and values of one key/value head of one sequence.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    /// Keys transposed: `kt[d * stride + j]` is dimension `d` of position `j`.
    pub kt: &'a [f32],
    /// Values: `v[j * dim + d]`.
    pub v: &'a [f32],
    /// Positions per key row (a multiple of [`KEY_BLOCK`]); positions past
    /// those a query sees are read (their weight is exactly zero) and must
    /// hold finite numbers, e.g. the zeros of a fresh cache.
    pub stride: usize,
}

/// `out[r] = softmax(scale · q[r] · Kᵀ[.., ..limits[r]]) · V[..limits[r]]`
/// for each query row `r` (`dim` values each).
///
/// # Panics
/// On inconsistent shapes: `q` and `out` not `limits.len() × dim`, a limit of
/// zero or past `stride`, `stride` not a multiple of [`KEY_BLOCK`], or `kt` /
/// `v` shorter than `dim × stride`.
pub fn attention(
    q: &[f32],
    limits: &[usize],
    keys: Keys<'_>,
    dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    attention_at(super::level(), q, limits, keys, dim, scale, out);
}

/// [`attention`] at a given level.
pub(crate) fn attention_at(
    level: Level,
    q: &[f32],
    limits: &[usize],
    keys: Keys<'_>,
    dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let rows = limits.len();
    assert!(dim > 0, "attention over heads of size 0");
    assert_eq!(q.len(), rows * dim, "queries are not {rows} rows of {dim}");
    assert_eq!(out.len(), rows * dim, "output is not {rows} rows of {dim}");
    assert!(
        keys.stride.is_multiple_of(KEY_BLOCK),
        "key stride {} is not a multiple of {KEY_BLOCK}",
        keys.stride
    );
    assert!(
        limits.iter().all(|&l| l >= 1 && l <= keys.stride),
        "a query sees no key, or more than the {} stored",
        keys.stride
    );
    assert!(
        keys.kt.len() >= dim * keys.stride && keys.v.len() >= dim * keys.stride,
        "keys or values shorter than {dim} × {}",
        keys.stride
    );
    match level {
        Level::Scalar => rows_loop::<Plain>(q, limits, keys, dim, scale, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
        Level::Avx2 => unsafe { x86::attention_avx2(q, limits, keys, dim, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Vnni` is only chosen when the CPU has AVX-512 F and VL.
        Level::Avx512Vnni => unsafe { x86::attention_avx512(q, limits, keys, dim, scale, out) },
    }
}

/// `gate[i] = silu(gate[i]) · up[i]`, with `silu(x) = x / (1 + e^-x)`.
///
/// # Panics
/// If the slices differ in length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_at(super::level(), gate, up);
}

/// [`silu_mul`] at a given level.
pub(crate) fn silu_mul_at(level: Level, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    match level {
        Level::Scalar => silu_loop::<false>(gate, up),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `attention_at`.
        Level::Avx2 => unsafe { x86::silu_avx2(gate, up) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `attention_at`.
        Level::Avx512Vnni => unsafe { x86::silu_avx512(gate, up) },
    }
}

/// `Σ_i e^(x[i] - shift)`, with the vectorised `exp` of this module (for a
/// log-softmax over a vocabulary).
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    match super::level() {
        Level::Scalar => sum_exp_loop::<false>(x, shift),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `attention_at`.
        Level::Avx2 => unsafe { x86::sum_exp_avx2(x, shift) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `attention_at`.
        Level::Avx512Vnni => unsafe { x86::sum_exp_avx512(x, shift) },
    }
}

/// Sixteen running sums, then added pairwise.
#[inline(always)]
fn sum_exp_loop<const FMA: bool>(x: &[f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += exp::<FMA>(v - shift);
        }
    }
    let mut total = sum_lanes(&lanes);
    for &v in rest {
        total += exp::<FMA>(v - shift);
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The `#[target_feature]` entry points, and the two loops that carry the
    //! multiply-adds (scores, weighted sum of values) written with
    //! intrinsics so that the accumulators stay in registers. They do the
    //! same fused multiply-adds in the same order as [`Fused`]'s plain loops
    //! (which serve head sizes they do not tile), so results are the same.
    //! Loops over the fixed register tiles index them by row and column.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::*;

    /// A float vector type.
    trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn splat(x: f32) -> Self;
        /// `a · b + c`, fused.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn mul(a: Self, b: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn sub(a: Self, b: Self) -> Self;
        unsafe fn max(a: Self, b: Self) -> Self;
        /// Each lane clamped to `[lo, hi]` (as `f32::clamp` for numbers).
        unsafe fn clamp(self, lo: f32, hi: f32) -> Self;
        /// The largest lane.
        unsafe fn max_lane(self) -> f32;
        /// [`exp`] (fused) of each lane.
        unsafe fn exp(self) -> Self;
    }

    /// [`exp`]'s operations on vectors up to its last step: `(y, n)`, the
    /// result being `y · 2^n` where `x > EXP_CUT`, 0 elsewhere.
    #[inline(always)]
    unsafe fn exp_parts<L: Lanes>(x: L) -> (L, L) {
        unsafe {
            let xc = x.clamp(EXP_CUT, EXP_TOP);
            let round = L::splat(ROUND);
            let n = L::sub(L::add(L::mul(xc, L::splat(LOG2E)), round), round);
            let r = L::fma(n, L::splat(-LN2_LO), L::fma(n, L::splat(-LN2_HI), xc));
            let mut p = L::splat(EXP_POLY[0]);
            for &c in &EXP_POLY[1..] {
                p = L::fma(p, r, L::splat(c));
            }
            (L::add(L::fma(p, L::mul(r, r), r), L::splat(1.0)), n)
        }
    }

    /// The operations both vector types have, each under its type's name.
    macro_rules! common_lanes {
        ($n:literal, $zero:ident, $load:ident, $store:ident, $splat:ident, $fma:ident,
         $min:ident, $($op:ident = $f:ident),*) => {
            const N: usize = $n;
            #[inline(always)]
            unsafe fn zero() -> Self {
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                unsafe { $load(p) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                unsafe { $store(p, self) }
            }
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                unsafe { $splat(x) }
            }
            #[inline(always)]
            unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                unsafe { $fma(a, b, c) }
            }
            #[inline(always)]
            unsafe fn clamp(self, lo: f32, hi: f32) -> Self {
                unsafe { $min(Self::max(self, $splat(lo)), $splat(hi)) }
            }
            $(
                #[inline(always)]
                unsafe fn $op(a: Self, b: Self) -> Self {
                    unsafe { $f(a, b) }
                }
            )*
        };
    }

    impl Lanes for __m256 {
        common_lanes!(
            8,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_min_ps,
            mul = _mm256_mul_ps,
            add = _mm256_add_ps,
            sub = _mm256_sub_ps,
            max = _mm256_max_ps
        );
        #[inline(always)]
        unsafe fn max_lane(self) -> f32 {
            unsafe {
                let h = _mm_max_ps(
                    _mm256_castps256_ps128(self),
                    _mm256_extractf128_ps::<1>(self),
                );
                let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
            }
        }
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            unsafe {
                let (y, n) = exp_parts(self);
                let e = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
                let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
                let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(self, _mm256_set1_ps(EXP_CUT));
                _mm256_and_ps(keep, _mm256_mul_ps(y, two_n))
            }
        }
    }

    impl Lanes for __m512 {
        common_lanes!(
            16,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_min_ps,
            mul = _mm512_mul_ps,
            add = _mm512_add_ps,
            sub = _mm512_sub_ps,
            max = _mm512_max_ps
        );
        #[inline(always)]
        unsafe fn max_lane(self) -> f32 {
            unsafe { _mm512_reduce_max_ps(self) }
        }
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            unsafe {
                let (y, n) = exp_parts(self);
                let e = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
                let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e));
                let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self, _mm512_set1_ps(EXP_CUT));
                _mm512_maskz_mul_ps(keep, y, two_n)
            }
        }
    }

    /// Scores of `R` rows against `C` vectors of keys from `k` (key row
    /// stride `stride`), into `out[r][..C · N]`.
    ///
    /// # Safety
    /// The vector type's features are enabled; `q` holds `R` rows of `dim`,
    /// and `k + d · stride` has `C · N` readable floats for every `d < dim`.
    #[inline(always)]
    unsafe fn scores_tile<L: Lanes, const R: usize, const C: usize>(
        q: &[f32],
        k: *const f32,
        stride: usize,
        dim: usize,
        scale: f32,
        out: [*mut f32; R],
    ) {
        unsafe {
            let mut acc = [[L::zero(); C]; R];
            for d in 0..dim {
                let kd = k.add(d * stride);
                let mut kv = [L::zero(); C];
                for (c, kv) in kv.iter_mut().enumerate() {
                    *kv = L::load(kd.add(c * L::N));
                }
                for r in 0..R {
                    let qd = L::splat(*q.get_unchecked(r * dim + d));
                    for c in 0..C {
                        acc[r][c] = L::fma(qd, kv[c], acc[r][c]);
                    }
                }
            }
            let s = L::splat(scale);
            for r in 0..R {
                for c in 0..C {
                    L::mul(acc[r][c], s).store(out[r].add(c * L::N));
                }
            }
        }
    }

    /// `out[r][e0..e0 + C · N] = out · rescale[r] + Σ_j w[r][j] · v[j]` over
    /// the [`KEY_BLOCK`] values at `v` (row stride `dim`).
    ///
    /// # Safety
    /// The vector type's features are enabled; `v + j · dim` has `C · N`
    /// readable floats for every `j < KEY_BLOCK`, `out[r]` as many.
    #[inline(always)]
    unsafe fn weighted_tile<L: Lanes, const R: usize, const C: usize>(
        w: &[[f32; KEY_BLOCK]; R],
        rescale: &[f32; R],
        v: *const f32,
        dim: usize,
        out: [*mut f32; R],
    ) {
        unsafe {
            let mut acc = [[L::zero(); C]; R];
            for r in 0..R {
                let s = L::splat(rescale[r]);
                for c in 0..C {
                    acc[r][c] = L::mul(L::load(out[r].add(c * L::N)), s);
                }
            }
            for j in 0..KEY_BLOCK {
                let vj = v.add(j * dim);
                let mut vv = [L::zero(); C];
                for (c, vv) in vv.iter_mut().enumerate() {
                    *vv = L::load(vj.add(c * L::N));
                }
                for r in 0..R {
                    let wr = L::splat(w[r][j]);
                    for c in 0..C {
                        acc[r][c] = L::fma(wr, vv[c], acc[r][c]);
                    }
                }
            }
            for r in 0..R {
                for c in 0..C {
                    acc[r][c].store(out[r].add(c * L::N));
                }
            }
        }
    }

    /// Micro-kernels over vectors `L`, `C` of them per tile.
    struct Tiled<L, const C: usize>(std::marker::PhantomData<L>);

    impl<L: Lanes, const C: usize> Micro for Tiled<L, C> {
        /// The default's operations on vectors: the lanes' maximum taken in
        /// any order (it is exact), each lane's sum in the same order.
        #[inline(always)]
        fn softmax_block(
            s: &mut [f32; KEY_BLOCK],
            visible: usize,
            max: &mut f32,
            sum: &mut f32,
        ) -> f32 {
            const LANES: usize = 16;
            for v in &mut s[visible..] {
                *v = f32::NEG_INFINITY;
            }
            let p = s.as_mut_ptr();
            // SAFETY: the features are enabled; every offset read or written
            // is below KEY_BLOCK, a multiple of LANES, itself one or two
            // vectors (N is 8 or 16).
            unsafe {
                let mut m = L::load(p);
                for i in (L::N..KEY_BLOCK).step_by(L::N) {
                    m = L::max(m, L::load(p.add(i)));
                }
                let new_max = max.max(m.max_lane());
                let rescale = exp::<true>(*max - new_max);
                let shift = L::splat(new_max);
                let mut acc = [L::zero(); 2];
                for c in (0..KEY_BLOCK).step_by(LANES) {
                    for (k, acc) in acc.iter_mut().take(LANES / L::N).enumerate() {
                        let at = p.add(c + k * L::N);
                        let e = L::sub(L::load(at), shift).exp();
                        e.store(at);
                        *acc = L::add(*acc, e);
                    }
                }
                let mut lanes = [0.0f32; LANES];
                for (k, acc) in acc.iter().take(LANES / L::N).enumerate() {
                    acc.store(lanes.as_mut_ptr().add(k * L::N));
                }
                *sum = *sum * rescale + sum_lanes(&lanes);
                *max = new_max;
                rescale
            }
        }

        #[inline(always)]
        fn scores<const R: usize>(
            q: &[f32],
            keys: Keys<'_>,
            b0: usize,
            dim: usize,
            scale: f32,
            out: &mut [[f32; KEY_BLOCK]; R],
        ) {
            debug_assert_eq!(KEY_BLOCK % (C * L::N), 0);
            assert!(q.len() >= R * dim && keys.kt.len() >= dim * keys.stride);
            assert!(b0 + KEY_BLOCK <= keys.stride);
            for j0 in (0..KEY_BLOCK).step_by(C * L::N) {
                let mut dst = [std::ptr::null_mut(); R];
                for (d, o) in dst.iter_mut().zip(out.iter_mut()) {
                    *d = o[j0..].as_mut_ptr();
                }
                // SAFETY: the features are enabled (this is only built into
                // the entry points below); row `d < dim` of the keys has
                // `stride ≥ b0 + KEY_BLOCK` floats (checked above), so
                // `C · N` from `b0 + j0` are in bounds, and each `out[r]`
                // has `KEY_BLOCK - j0 ≥ C · N` from `j0`.
                unsafe {
                    scores_tile::<L, R, C>(
                        q,
                        keys.kt.as_ptr().add(b0 + j0),
                        keys.stride,
                        dim,
                        scale,
                        dst,
                    )
                };
            }
        }

        #[inline(always)]
        fn weighted<const R: usize>(
            w: &[[f32; KEY_BLOCK]; R],
            rescale: &[f32; R],
            keys: Keys<'_>,
            b0: usize,
            dim: usize,
            out: &mut [f32],
        ) {
            if !dim.is_multiple_of(C * L::N) {
                return Fused::weighted::<R>(w, rescale, keys, b0, dim, out);
            }
            assert!(out.len() >= R * dim && keys.v.len() >= (b0 + KEY_BLOCK) * dim);
            for e0 in (0..dim).step_by(C * L::N) {
                let mut dst = [std::ptr::null_mut(); R];
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = out[r * dim + e0..].as_mut_ptr();
                }
                // SAFETY: the features are enabled; value rows `b0..b0 +
                // KEY_BLOCK` are in bounds (checked above) and `e0 + C · N ≤
                // dim`, as is each output row's stretch.
                unsafe {
                    weighted_tile::<L, R, C>(
                        w,
                        rescale,
                        keys.v.as_ptr().add(b0 * dim + e0),
                        dim,
                        dst,
                    )
                };
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attention_avx2(
        q: &[f32],
        limits: &[usize],
        keys: Keys<'_>,
        dim: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        rows_loop::<Tiled<__m256, 2>>(q, limits, keys, dim, scale, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub(super) unsafe fn attention_avx512(
        q: &[f32],
        limits: &[usize],
        keys: Keys<'_>,
        dim: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        rows_loop::<Tiled<__m512, 4>>(q, limits, keys, dim, scale, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn sum_exp_avx2(x: &[f32], shift: f32) -> f32 {
        sum_exp_loop::<true>(x, shift)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub(super) unsafe fn sum_exp_avx512(x: &[f32], shift: f32) -> f32 {
        sum_exp_loop::<true>(x, shift)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn silu_avx2(gate: &mut [f32], up: &[f32]) {
        silu_loop::<true>(gate, up)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub(super) unsafe fn silu_avx512(gate: &mut [f32], up: &[f32]) {
        silu_loop::<true>(gate, up)
    }

    /// A block's softmax step on `L` vectors, for the tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn softmax_avx2(
        s: &mut [f32; KEY_BLOCK],
        visible: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        Tiled::<__m256, 2>::softmax_block(s, visible, max, sum)
    }

    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    unsafe fn softmax_avx512(
        s: &mut [f32; KEY_BLOCK],
        visible: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        Tiled::<__m512, 4>::softmax_block(s, visible, max, sum)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The vector softmax step is the plain fused one, bit for bit: the
        /// same weights, running maximum and sum, and rescale factor, for
        /// scores over the whole range of `exp` (cut to 0, overflow-clamped),
        /// any number of visible keys, and a row's first block or a later one.
        #[test]
        fn vector_softmax_is_the_plain_one_bit_for_bit() {
            let levels = Level::available();
            for case in 0..400 {
                let amp = [0.5f32, 8.0, 60.0, 200.0][case % 4];
                let mut s = [0.0f32; KEY_BLOCK];
                s.copy_from_slice(&super::super::tests::data(KEY_BLOCK, case as u64, amp));
                let visible = [KEY_BLOCK, 1, 17, 40][(case / 4) % 4];
                let start = if case % 3 == 0 {
                    (f32::NEG_INFINITY, 0.0)
                } else {
                    (s[0] * 0.5, 3.25)
                };
                let (mut want, mut wmax, mut wsum) = (s, start.0, start.1);
                let wscale = Fused::softmax_block(&mut want, visible, &mut wmax, &mut wsum);
                for &level in &levels {
                    let (mut got, mut max, mut sum) = (s, start.0, start.1);
                    // SAFETY: the level is available, so are its features.
                    let scale = unsafe {
                        match level {
                            Level::Avx2 => softmax_avx2(&mut got, visible, &mut max, &mut sum),
                            Level::Avx512Vnni => {
                                softmax_avx512(&mut got, visible, &mut max, &mut sum)
                            }
                            Level::Scalar => continue,
                        }
                    };
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{level:?} case {case}: weights");
                    assert_eq!(
                        [max.to_bits(), sum.to_bits(), scale.to_bits()],
                        [wmax.to_bits(), wsum.to_bits(), wscale.to_bits()],
                        "{level:?} case {case}: maximum, sum, rescale"
                    );
                }
            }
        }
    }
}

/// The two multiply-add loops of a block, and whether `exp` may fuse.
trait Micro {
    /// Whether multiply-adds are fused.
    const FMA: bool = true;

    /// `out[r][j] = scale · Σ_d q[r][d] · K[d][b0 + j]` for the block's keys,
    /// each a chain of multiply-adds in order of `d`.
    fn scores<const R: usize>(
        q: &[f32],
        keys: Keys<'_>,
        b0: usize,
        dim: usize,
        scale: f32,
        out: &mut [[f32; KEY_BLOCK]; R],
    );

    /// One row's block of scores (its first `visible` seen) made softmax
    /// weights: `e^(s - max')` where `max'` is the running maximum with the
    /// block's, the running `sum` rescaled and increased by them; returns the
    /// factor `e^(max - max')` for what the row has summed so far. Sixteen
    /// lanes, each the block's elements `l, l + 16, …` in turn, added
    /// pairwise at the end ([`sum_lanes`]) on every level.
    #[inline(always)]
    fn softmax_block(
        s: &mut [f32; KEY_BLOCK],
        visible: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        for v in &mut s[visible..] {
            *v = f32::NEG_INFINITY;
        }
        // Lane by lane, then across the lanes (a chain of 64 would cost as
        // much as the block's multiply-adds).
        let mut lane_max = [f32::NEG_INFINITY; 16];
        for chunk in s.chunks_exact(16) {
            for (m, &v) in lane_max.iter_mut().zip(chunk) {
                *m = m.max(v);
            }
        }
        let block_max = lane_max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let new_max = max.max(block_max);
        // 0 for a row's first block (its maximum was -inf); 1 for a block it
        // sees nothing of (all its weights come out 0).
        let rescale = exp_m::<Self>(*max - new_max);
        let mut lanes = [0.0f32; 16];
        for chunk in s.chunks_exact_mut(16) {
            for (l, v) in lanes.iter_mut().zip(chunk) {
                *v = exp_m::<Self>(*v - new_max);
                *l += *v;
            }
        }
        *sum = *sum * rescale + sum_lanes(&lanes);
        *max = new_max;
        rescale
    }

    /// `out[r] = out[r] · rescale[r] + Σ_j w[r][j] · V[b0 + j]`, each value a
    /// chain of multiply-adds in order of `j`.
    fn weighted<const R: usize>(
        w: &[[f32; KEY_BLOCK]; R],
        rescale: &[f32; R],
        keys: Keys<'_>,
        b0: usize,
        dim: usize,
        out: &mut [f32],
    );
}

/// Plain loops with fused multiply-adds (`FUSED`) or without.
struct Loops<const FUSED: bool>;
/// The scalar level.
type Plain = Loops<false>;
/// The plain loops of the SIMD levels.
#[cfg(target_arch = "x86_64")]
type Fused = Loops<true>;

impl<const FUSED: bool> Micro for Loops<FUSED> {
    const FMA: bool = FUSED;

    #[inline(always)]
    fn scores<const R: usize>(
        q: &[f32],
        keys: Keys<'_>,
        b0: usize,
        dim: usize,
        scale: f32,
        out: &mut [[f32; KEY_BLOCK]; R],
    ) {
        // Each key row of the block is loaded once for all `R` queries
        // (whose sums stay in registers).
        let mut acc = [[0.0f32; KEY_BLOCK]; R];
        for d in 0..dim {
            let k = &keys.kt[d * keys.stride + b0..][..KEY_BLOCK];
            for (r, acc) in acc.iter_mut().enumerate() {
                let qd = q[r * dim + d];
                for (a, &kk) in acc.iter_mut().zip(k) {
                    *a = madd::<FUSED>(qd, kk, *a);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a * scale;
            }
        }
    }

    #[inline(always)]
    fn weighted<const R: usize>(
        w: &[[f32; KEY_BLOCK]; R],
        rescale: &[f32; R],
        keys: Keys<'_>,
        b0: usize,
        dim: usize,
        out: &mut [f32],
    ) {
        if dim == HEAD {
            // The common head size: each value row of the block is loaded
            // once for all `R` queries (whose outputs stay in registers).
            let mut acc = [[0.0f32; HEAD]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (a, &o) in acc.iter_mut().zip(&out[r * HEAD..(r + 1) * HEAD]) {
                    *a = o * rescale[r];
                }
            }
            let values = keys.v[b0 * HEAD..][..KEY_BLOCK * HEAD].chunks_exact(HEAD);
            for (j, v) in values.enumerate() {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wj = w[r][j];
                    for (a, &vv) in acc.iter_mut().zip(v) {
                        *a = madd::<FUSED>(wj, vv, *a);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                out[r * HEAD..(r + 1) * HEAD].copy_from_slice(acc);
            }
            return;
        }
        for r in 0..R {
            let o = &mut out[r * dim..(r + 1) * dim];
            for x in o.iter_mut() {
                *x *= rescale[r];
            }
            for (j, &wj) in w[r].iter().enumerate() {
                let v = &keys.v[(b0 + j) * dim..][..dim];
                for (x, &vv) in o.iter_mut().zip(v) {
                    *x = madd::<FUSED>(wj, vv, *x);
                }
            }
        }
    }
}

/// `a · b + c`: one fused multiply-add where the target has it (`FMA`), a
/// multiply and an add otherwise (the library `fmaf` would be a slow call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Below this, `e^x` is taken as exactly 0 (it is under 2⁻¹²⁶).
const EXP_CUT: f32 = -87.3;

/// `e^x` for `x ≤ 88`, within 2 ulp for normal results; exactly 0 below
/// [`EXP_CUT`] and for NaN (`-inf - -inf` when a row has no score yet).
///
/// Cephes' `expf`: `x = n ln2 + r` with `|r| ≤ ln2 / 2` (ln2 in two parts),
/// a degree-6 polynomial for `e^r`, and `2^n` put into the exponent bits.
/// The SIMD levels' vector `exp` (in `x86`) does the same operations in the
/// same order, lane by lane.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    let keep = x > EXP_CUT;
    let xc = x.clamp(EXP_CUT, EXP_TOP);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, xc));
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = madd::<FMA>(p, r, c);
    }
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let two_n = f32::from_bits((((n as i32) + 127) << 23) as u32);
    if keep {
        y * two_n
    } else {
        0.0
    }
}

/// [`exp`]'s constants: the largest argument, `log2 e`, `ln 2` in two
/// parts, the rounding constant (adding and subtracting `1.5 · 2²³` rounds
/// to the nearest integer), and the polynomial's coefficients from the
/// highest degree.
const EXP_TOP: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const ROUND: f32 = 12_582_912.0;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[inline(always)]
fn silu_loop<const FMA: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        // e^-x overflows to +inf only past 88, clamped there: x / 1e38 ≈ 0.
        *g = *g / (1.0 + exp::<FMA>(-*g)) * u;
    }
}

/// The rows in groups of [`ROWS`], then the last one to three.
#[inline(always)]
fn rows_loop<M: Micro>(
    q: &[f32],
    limits: &[usize],
    keys: Keys<'_>,
    dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let mut r = 0;
    while r < limits.len() {
        let n = (limits.len() - r).min(ROWS);
        let (qs, os, ls) = (
            &q[r * dim..(r + n) * dim],
            &mut out[r * dim..(r + n) * dim],
            &limits[r..r + n],
        );
        match n {
            4 => group::<4, M>(qs, ls, keys, dim, scale, os),
            3 => group::<3, M>(qs, ls, keys, dim, scale, os),
            2 => group::<2, M>(qs, ls, keys, dim, scale, os),
            _ => group::<1, M>(qs, ls, keys, dim, scale, os),
        }
        r += n;
    }
}

/// `R` query rows against the keys, block by block.
#[inline(always)]
fn group<const R: usize, M: Micro>(
    q: &[f32],
    limits: &[usize],
    keys: Keys<'_>,
    dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let seen = limits.iter().copied().max().unwrap_or(0);
    let mut max = [f32::NEG_INFINITY; R];
    let mut sum = [0.0f32; R];
    let mut scores = [[0.0f32; KEY_BLOCK]; R];
    let mut rescale = [0.0f32; R];
    out.fill(0.0);
    for b0 in (0..seen).step_by(KEY_BLOCK) {
        M::scores::<R>(q, keys, b0, dim, scale, &mut scores);
        // Softmax weights of the block, and the running maximum and sum.
        for r in 0..R {
            let visible = limits[r].saturating_sub(b0).min(KEY_BLOCK);
            rescale[r] = M::softmax_block(&mut scores[r], visible, &mut max[r], &mut sum[r]);
        }
        M::weighted::<R>(&scores, &rescale, keys, b0, dim, out);
    }
    for r in 0..R {
        let inv = 1.0 / sum[r];
        for o in &mut out[r * dim..(r + 1) * dim] {
            *o *= inv;
        }
    }
}

/// [`exp`] fused as `M` fuses.
#[inline(always)]
fn exp_m<M: Micro + ?Sized>(x: f32) -> f32 {
    if M::FMA {
        exp::<true>(x)
    } else {
        exp::<false>(x)
    }
}

/// The 16 lanes added pairwise (a fixed order).
#[inline(always)]
fn sum_lanes(l: &[f32; 16]) -> f32 {
    let mut h = [0.0f32; 8];
    for i in 0..8 {
        h[i] = l[i] + l[i + 8];
    }
    let mut q = [0.0f32; 4];
    for i in 0..4 {
        q[i] = h[i] + h[i + 4];
    }
    (q[0] + q[2]) + (q[1] + q[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Attention the textbook way, in f64.
    fn reference(q: &[f32], limits: &[usize], keys: Keys<'_>, dim: usize, scale: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; q.len()];
        for (r, &limit) in limits.iter().enumerate() {
            let qr = &q[r * dim..(r + 1) * dim];
            let s: Vec<f64> = (0..limit)
                .map(|j| {
                    (0..dim)
                        .map(|d| qr[d] as f64 * keys.kt[d * keys.stride + j] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for d in 0..dim {
                let o: f64 = (0..limit).map(|j| w[j] * keys.v[j * dim + d] as f64).sum();
                out[r * dim + d] = (o / total) as f32;
            }
        }
        out
    }

    /// `n` pseudo-random values in `[-amp, amp)` (xorshift from `seed`).
    pub(super) fn data(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn exp_is_close_to_the_library_and_exactly_zero_below_the_cut() {
        for level in [false, true] {
            let e = |x: f32| {
                if level {
                    exp::<true>(x)
                } else {
                    exp::<false>(x)
                }
            };
            let mut x = -87.0f32;
            while x < 88.0 {
                let (got, want) = (e(x), x.exp());
                assert!(((got - want) / want).abs() < 4e-7, "e^{x}: {got} vs {want}");
                x += 0.0137;
            }
            assert_eq!(e(-88.0), 0.0);
            assert_eq!(e(f32::NEG_INFINITY), 0.0);
            assert_eq!(e(f32::NAN), 0.0);
            assert_eq!(e(0.0), 1.0);
        }
    }

    #[test]
    fn sum_exp_matches_the_plain_sum() {
        let x = data(1003, 5, 20.0);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let got = sum_exp(&x, max) as f64;
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        assert_eq!(sum_exp(&[], 0.0), 0.0);
    }

    #[test]
    fn silu_matches_its_definition_on_every_level() {
        let g = data(1000, 3, 30.0);
        let u = data(1000, 4, 2.0);
        for level in Level::available() {
            let mut got = g.clone();
            silu_mul_at(level, &mut got, &u);
            for i in 0..g.len() {
                let want = g[i] as f64 / (1.0 + (-g[i] as f64).exp()) * u[i] as f64;
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{level:?} {i}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every level agrees with the f64 definition, for any number of rows
        /// and limits, and a row's result does not depend on the other rows
        /// of the call (bit for bit, per level).
        #[test]
        fn attention_matches_the_definition_and_rows_are_independent(
            dim in prop_oneof![Just(64usize), Just(128), Just(8), Just(24)],
            limits in proptest::collection::vec(1usize..200, 1..11),
            seed in 0u64..1000,
            amp in prop_oneof![Just(0.1f32), Just(1.0), Just(4.0)],
        ) {
            let stride = limits.iter().max().unwrap().div_ceil(KEY_BLOCK) * KEY_BLOCK;
            let kt = data(dim * stride, seed, amp);
            let v = data(dim * stride, seed + 1, 1.0);
            let q = data(limits.len() * dim, seed + 2, amp);
            let keys = Keys { kt: &kt, v: &v, stride };
            let scale = 1.0 / (dim as f32).sqrt();
            let want = reference(&q, &limits, keys, dim, scale);
            for level in Level::available() {
                let mut got = vec![f32::NAN; q.len()];
                attention_at(level, &q, &limits, keys, dim, scale, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert!((g - w).abs() <= 2e-5 * (1.0 + w.abs()), "{level:?} [{i}] {g} vs {w}");
                }
                for r in 0..limits.len() {
                    let mut alone = vec![0.0f32; dim];
                    attention_at(level, &q[r * dim..(r + 1) * dim], &limits[r..r + 1], keys, dim, scale, &mut alone);
                    prop_assert_eq!(&alone[..], &got[r * dim..(r + 1) * dim], "{:?} row {} alone", level, r);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "multiple of")]
    fn a_stride_off_the_block_size_is_refused() {
        let x = vec![0.0f32; 8 * 70];
        attention(
            &x[..8],
            &[1],
            Keys {
                kt: &x,
                v: &x,
                stride: 70,
            },
            8,
            1.0,
            &mut [0.0; 8],
        );
    }
}
