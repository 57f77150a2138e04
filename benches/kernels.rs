//! Criterion bench of the quantized matmul kernels (`src/backend/kernels/`):
//! for each weight type in the supported GGUF files, a 1536 → 8960 matrix
//! (Qwen2.5-1.5B's feed-forward shape) times one activation row (decode) and
//! 64 rows (prefill), on rayon's pool, plus the scalar reference on one row.
//!
//! ```sh
//! cargo bench --bench kernels
//! PRECIS_KERNELS_SCALAR=1 cargo bench --bench kernels   # the scalar path throughout
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use precis::backend::kernels::{self, Activations, QMatrix, QType};

const ROWS: usize = 8960;
const COLS: usize = 1536;

/// Random-looking bytes with small, valid f16 scales where each type keeps them.
fn weights(qt: QType) -> Vec<u8> {
    let len = ROWS * qt.row_bytes(COLS);
    let mut w: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let bb = qt.block_bytes();
    let at: &[usize] = match qt {
        QType::Q4_1 | QType::Q4_K => &[0, 2],
        QType::Q6_K => &[208],
        _ => &[0],
    };
    for b in 0..len / bb {
        for &o in at {
            w[b * bb + o..b * bb + o + 2].copy_from_slice(&scale);
        }
    }
    w
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("matmul-{}", kernels::simd_level()));
    group.sample_size(10);
    for qt in [
        QType::Q4_K,
        QType::Q6_K,
        QType::Q5_0,
        QType::Q8_0,
        QType::Q4_1,
    ] {
        let w = weights(qt);
        let m = QMatrix::new(qt, ROWS, COLS, &w).expect("valid matrix");
        for n in [1usize, 64] {
            let x: Vec<f32> = (0..n * COLS)
                .map(|i| ((i % 97) as f32 - 48.0) / 31.0)
                .collect();
            let mut acts = Activations::new();
            acts.quantize(&x, n, COLS, qt);
            let mut out = vec![0.0; n * ROWS];
            if n == 1 {
                group.throughput(Throughput::Bytes(w.len() as u64));
            } else {
                group.throughput(Throughput::Elements((2 * n * ROWS * COLS) as u64));
            }
            group.bench_with_input(BenchmarkId::new(qt.name(), format!("n{n}")), &n, |b, _| {
                b.iter(|| kernels::matmul(&m, &acts, &mut out))
            });
        }
        let x: Vec<f32> = (0..COLS).map(|i| ((i % 97) as f32 - 48.0) / 31.0).collect();
        let mut acts = Activations::new();
        acts.quantize(&x, 1, COLS, qt);
        let row = &w[..qt.row_bytes(COLS)];
        group.throughput(Throughput::Bytes(row.len() as u64));
        group.bench_with_input(BenchmarkId::new(qt.name(), "scalar-row"), &qt, |b, &qt| {
            b.iter(|| kernels::scalar::dot(qt, row, &acts.row(0)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
