//! Throughput of the quantized matmul kernels (`precis_backend::kernels`).
//!
//! For each weight type in our model files: a decode-shaped product (one
//! token; memory bound, reported as weight bytes per second, the weights
//! cycling through 256 MiB so they come from memory) and a
//! prefill-shaped one (64 tokens; compute bound, reported as elements per
//! second where one element is one flop, so `Gelem/s` reads GFLOP/s), on an
//! 8960 × 1536 matrix (Qwen2.5-1.5B's FFN gate / up; Q4_K and Q6_K also on
//! its 1536 × 8960 FFN down, whose long rows do not let a few tokens'
//! activations stay in the L1 cache). The scalar reference runs once for
//! comparison. `attention_*` times the attention kernel on one thread.
//!
//! Runs on a rayon pool that the main thread belongs to, so a product's
//! parallel region starts from a worker thread; `overhead/*` measures a tiny
//! product from inside and from outside a pool.
//!
//! ```text
//! cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 3
//! ```

use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;
use precis_backend::kernels::{self, Activations, QMatrix, QType};

const ROWS: usize = 8960;
const COLS: usize = 1536;
const PREFILL: usize = 64;
/// Weight bytes the decode benches cycle through (well over the L3 cache).
const DECODE_BYTES: usize = 256 << 20;
const TYPES: [QType; 5] = [
    QType::Q4_K,
    QType::Q6_K,
    QType::Q5_0,
    QType::Q8_0,
    QType::Q4_1,
];

/// Deterministic pseudo-random bytes (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A matrix of random blocks with realistic f16 scales.
fn weights(qt: QType, rows: usize, cols: usize) -> Vec<u8> {
    let mut rng = Rng(qt as u64 + 1);
    let mut data: Vec<u8> = (0..rows * qt.row_bytes(cols))
        .map(|_| rng.next() as u8)
        .collect();
    let put = |b: &mut [u8], at: usize, v: f32| {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    };
    for b in data.chunks_exact_mut(qt.block_bytes()) {
        match qt {
            QType::F32 => b.copy_from_slice(&0.5f32.to_le_bytes()),
            QType::F16 => put(b, 0, 0.5),
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => put(b, 0, 0.01),
            QType::Q4_1 => {
                put(b, 0, 0.01);
                put(b, 2, -0.05);
            }
            QType::Q4_K | QType::Q5_K => {
                put(b, 0, 0.001);
                put(b, 2, 0.001);
            }
            QType::Q6_K => put(b, 208, 0.001),
        }
    }
    data
}

fn input(n: usize, cols: usize) -> Vec<f32> {
    let mut rng = Rng(42);
    (0..n * cols).map(|_| rng.unit()).collect()
}

fn products(c: &mut Criterion) {
    eprintln!(
        "kernels: {} on {} rayon threads",
        kernels::simd_level(),
        rayon::current_num_threads()
    );
    let x1 = input(1, COLS);
    let xn = input(PREFILL, COLS);
    let mut decode = c.benchmark_group("decode_n1");
    for qt in TYPES {
        // Copies of the matrix, taken in turn, so that the weights come from
        // memory as in a real decode step rather than from the L3 cache.
        let data = weights(qt, ROWS, COLS);
        let copies: Vec<Vec<u8>> = vec![data; DECODE_BYTES.div_ceil(qt.row_bytes(COLS) * ROWS)];
        let mats: Vec<QMatrix<'_>> = copies
            .iter()
            .map(|d| QMatrix::new(qt, ROWS, COLS, d).unwrap())
            .collect();
        let mut acts = Activations::new();
        acts.quantize(&x1, 1, COLS, qt);
        let mut out = vec![0.0; ROWS];
        let mut next = 0;
        decode.throughput(Throughput::Bytes(copies[0].len() as u64));
        decode.bench_function(BenchmarkId::new(qt.name(), "8960x1536"), |b| {
            b.iter(|| {
                next = (next + 1) % mats.len();
                kernels::matmul(&mats[next], &acts, &mut out)
            })
        });
    }
    decode.finish();

    let mut prefill = c.benchmark_group("prefill_n64");
    prefill.sample_size(10);
    prefill.throughput(Throughput::Elements((2 * ROWS * COLS * PREFILL) as u64));
    for qt in TYPES {
        let data = weights(qt, ROWS, COLS);
        let w = QMatrix::new(qt, ROWS, COLS, &data).unwrap();
        let mut acts = Activations::new();
        acts.quantize(&xn, PREFILL, COLS, qt);
        let mut out = vec![0.0; ROWS * PREFILL];
        prefill.bench_function(BenchmarkId::new(qt.name(), "8960x1536"), |b| {
            b.iter(|| kernels::matmul(&w, &acts, &mut out))
        });
    }
    // The FFN down projection.
    let xd = input(PREFILL, ROWS);
    for qt in [QType::Q4_K, QType::Q6_K] {
        let data = weights(qt, COLS, ROWS);
        let w = QMatrix::new(qt, COLS, ROWS, &data).unwrap();
        let mut acts = Activations::new();
        acts.quantize(&xd, PREFILL, ROWS, qt);
        let mut out = vec![0.0; COLS * PREFILL];
        prefill.bench_function(BenchmarkId::new(qt.name(), "1536x8960"), |b| {
            b.iter(|| kernels::matmul(&w, &acts, &mut out))
        });
    }
    prefill.finish();

    let mut reference = c.benchmark_group("scalar_reference");
    reference.sample_size(10);
    let qt = QType::Q4_K;
    let data = weights(qt, ROWS, COLS);
    let w = QMatrix::new(qt, ROWS, COLS, &data).unwrap();
    let mut acts = Activations::new();
    acts.quantize(&x1, 1, COLS, qt);
    let mut out = vec![0.0; ROWS];
    reference.throughput(Throughput::Bytes(data.len() as u64));
    reference.bench_function(
        BenchmarkId::new("Q4_K_n1_single_thread", "8960x1536"),
        |b| b.iter(|| kernels::matmul_reference(&w, &acts, &mut out)),
    );
    reference.finish();

    let mut quantize = c.benchmark_group("quantize");
    let xq = input(PREFILL, COLS);
    quantize.throughput(Throughput::Elements((PREFILL * COLS) as u64));
    for qt in [QType::Q8_0, QType::Q4_K] {
        let mut acts = Activations::new();
        quantize.bench_function(BenchmarkId::new(qt.name(), "64x1536"), |b| {
            b.iter(|| acts.quantize(&xq, PREFILL, COLS, qt))
        });
    }
    quantize.finish();
}

/// int8 products of a BART-large encoder layer over a 400-token input
/// (`PackedI8`, on the pool's threads). One element is one multiply-add.
fn int8(c: &mut Criterion) {
    let n = 400;
    let mut group = c.benchmark_group("int8_400_tokens");
    group.sample_size(20);
    for (rows, cols) in [(1024, 1024), (4096, 1024), (1024, 4096)] {
        let w = input(rows, cols);
        let m = kernels::PackedI8::new(&w, None, rows, cols);
        let x = input(n, cols);
        let mut out = vec![0.0; n * rows];
        group.throughput(Throughput::Elements((n * rows * cols) as u64));
        group.bench_function(format!("{rows}x{cols}"), |b| {
            b.iter(|| m.forward_then(&x, n, &mut out, kernels::Epilogue::None))
        });
    }
    group.finish();
}

/// One (sequence, head) of attention, one thread, head size 64 over 400
/// positions (a BART article): the encoder's self-attention (all 400
/// positions query) and a beam-4 decoder step's cross-attention (4 rows).
/// One element is one multiply-add of `q·k` or `w·v`.
fn attention(c: &mut Criterion) {
    let (dim, len) = (64usize, 400usize);
    let stride = len.div_ceil(kernels::KEY_BLOCK) * kernels::KEY_BLOCK;
    let kt = input(dim * stride, 1);
    let v: Vec<f32> = kt.iter().rev().copied().collect();
    let keys = kernels::Keys {
        kt: &kt,
        v: &v,
        stride,
    };
    let mut group = c.benchmark_group("attention_hd64_400");
    for (label, rows) in [("encoder_400_rows", len), ("cross_4_rows", 4)] {
        let q = input(rows, dim);
        let limits = vec![len; rows];
        let mut out = vec![0.0; rows * dim];
        group.throughput(Throughput::Elements((2 * rows * len * dim) as u64));
        group.bench_function(label, |b| {
            b.iter(|| kernels::attention(&q, &limits, keys, dim, 0.125, &mut out))
        });
    }
    // The cross-attention of a decoder step reads every (sequence, head)'s
    // keys and values once: 768 of them (8 inputs, 16 heads, 6 layers).
    let copies: Vec<(Vec<f32>, Vec<f32>)> = (0..768).map(|_| (kt.clone(), v.clone())).collect();
    let q = input(4, dim);
    let limits = vec![len; 4];
    let mut out = vec![0.0; 4 * dim];
    let mut next = 0;
    group.throughput(Throughput::Elements((2 * 4 * len * dim) as u64));
    group.bench_function("cross_4_rows_from_memory", |b| {
        b.iter(|| {
            next = (next + 1) % copies.len();
            let (kt, v) = &copies[next];
            let keys = kernels::Keys { kt, v, stride };
            kernels::attention(&q, &limits, keys, dim, 0.125, &mut out)
        })
    });
    group.finish();
}

/// A product small enough that the parallel region's start-up dominates
/// (256 × 896 Q8_0, a 0.5B model's K projection).
fn overhead(c: &mut Criterion, label: &str) {
    let (rows, cols) = (256, 896);
    let data = weights(QType::Q8_0, rows, cols);
    let w = QMatrix::new(QType::Q8_0, rows, cols, &data).unwrap();
    let mut acts = Activations::new();
    acts.quantize(&input(1, cols), 1, cols, QType::Q8_0);
    let mut out = vec![0.0; rows];
    c.bench_function(&format!("overhead/q8_0_256x896_{label}"), |b| {
        b.iter(|| kernels::matmul(&w, &acts, &mut out))
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // From the main thread, outside any pool: each product is injected into
    // rayon's global pool and waited for.
    overhead(&mut c, "outside_pool");
    // The main thread joins a pool as one of its workers (as the decoder's
    // thread should), so products start their parallel regions in place.
    let _pool = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build()
        .expect("a rayon pool");
    overhead(&mut c, "in_pool");
    products(&mut c);
    attention(&mut c);
    int8(&mut c);
    c.final_summary();
}
