//! The quality guard of `--quantize int8`: on every trained parity
//! checkpoint (Marian, BART, T5, M2M100 / NLLB; `tests/fixtures/`), the int8
//! model's most likely next token, read teacher-forced along transformers'
//! recorded outputs, is the f32 model's at the share of positions pinned
//! below. `benches/compare-marian.sh` measures the same on the full-size
//! benchmark checkpoints beside CTranslate2 int8's agreement with its fp32.

#[path = "common/parity.rs"]
mod parity;

use std::path::{Path, PathBuf};

use candle_core::Device;
use parity::recorded_pairs;
use precis_backend::seq2seq::bart::Bart;
use precis_backend::seq2seq::m2m100::M2M100;
use precis_backend::seq2seq::t5::T5;
use precis_backend::seq2seq::{agreement, teacher_forced_top1, EncoderDecoder};
use precis_backend::Quantize;

/// Least share of positions where int8 and f32 agree, each distinct
/// (input, prefix) counted once. Measured on an Intel Xeon: 0.9882
/// (tiny-nllb) to 1.000 (tiny-t5, tiny-flan); every level computes the same
/// integer sums, so other CPUs give the same figures.
const FLOOR: f64 = 0.97;

/// Positions where the two models' teacher-forced top-1 tokens agree, and
/// positions read. With `PRECIS_AGREEMENT_OUT` set, the inputs, targets and
/// figures also go to `NAME.json` in that folder, where
/// `benches/int8-agreement.sh` gives the same to CTranslate2.
fn measure<M: EncoderDecoder>(f32_model: &M, int8_model: &M, dir: &Path) -> (usize, usize) {
    let (inputs, targets) = recorded_pairs(dir, f32_model.seq2seq_config().eos_token_id);
    let out = std::env::var_os("PRECIS_AGREEMENT_OUT");
    let a = teacher_forced_top1(f32_model, &inputs, &targets).expect("f32 runs");
    let b = teacher_forced_top1(int8_model, &inputs, &targets).expect("int8 runs");
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.len(), b.len());
    }
    let (same, total) = agreement(&inputs, &targets, &a, &b);
    if let Some(out) = out {
        let name = dir.file_name().unwrap().to_string_lossy();
        let report = serde_json::json!({
            "checkpoint": dir,
            "input_ids": inputs,
            "targets": targets,
            "same": same,
            "total": total,
            "agreement": same as f64 / total as f64,
        });
        std::fs::create_dir_all(&out).unwrap();
        let path = PathBuf::from(out).join(format!("{name}.json"));
        std::fs::write(path, report.to_string()).unwrap();
    }
    (same, total)
}

fn check(name: &str, (same, total): (usize, usize)) {
    let share = same as f64 / total as f64;
    println!("{name}: int8 agrees with f32 at {same} of {total} positions ({share:.4})");
    assert!(total >= 100, "{name}: only {total} positions");
    assert!(
        share >= FLOOR,
        "{name}: int8 agrees with f32 at {share:.4} of the positions, under {FLOOR}"
    );
}

#[test]
fn int8_agrees_with_f32_on_every_family() {
    let cpu = Device::Cpu;
    for (family, name) in [
        ("marian", "tiny-en-ru"),
        ("marian", "tiny-en-hi"),
        ("bart", "tiny-cnn"),
        ("bart", "tiny-distil"),
    ] {
        let dir = parity::fixture(family, name);
        let f = Bart::load_quantized(&dir, &cpu, Quantize::None).expect("f32 loads");
        let q = Bart::load_quantized(&dir, &cpu, Quantize::Int8).expect("int8 loads");
        check(name, measure(&f, &q, &dir));
    }
    for name in ["tiny-t5", "tiny-flan"] {
        let dir = parity::fixture("t5", name);
        let f = T5::load_weights(&dir, None, &cpu, Quantize::None).expect("f32 loads");
        let q = T5::load_weights(&dir, None, &cpu, Quantize::Int8).expect("int8 loads");
        check(name, measure(&f, &q, &dir));
    }
    for name in ["tiny-m2m100", "tiny-nllb"] {
        let dir = parity::fixture("m2m100", name);
        let f = M2M100::load_quantized(&dir, &cpu, Quantize::None).expect("f32 loads");
        let q = M2M100::load_quantized(&dir, &cpu, Quantize::Int8).expect("int8 loads");
        check(name, measure(&f, &q, &dir));
    }
}

/// The same model loaded twice as int8 gives the same bits: quantization is
/// deterministic, and an input's result does not depend on its batch.
#[test]
fn int8_is_deterministic_and_batch_independent() {
    let dir = parity::fixture("marian", "tiny-en-ru");
    let cpu = Device::Cpu;
    let q = Bart::load_quantized(&dir, &cpu, Quantize::Int8).unwrap();
    let (inputs, targets) = recorded_pairs(&dir, q.seq2seq_config().eos_token_id);
    let all = teacher_forced_top1(&q, &inputs, &targets).unwrap();
    let again = Bart::load_quantized(&dir, &cpu, Quantize::Int8).unwrap();
    assert_eq!(teacher_forced_top1(&again, &inputs, &targets).unwrap(), all);
    for i in [0, inputs.len() - 1] {
        let alone = teacher_forced_top1(&q, &inputs[i..=i], &targets[i..=i]).unwrap();
        assert_eq!(alone[0], all[i], "input {i} alone");
    }
}

/// int8 reads the tied token embeddings from the safetensors file, row by
/// row, not from the output layer's int8 rows: a file cut short under a
/// loaded model makes the next encoding fail, with an error that says so
/// (never a panic, never rows read past the end).
#[test]
fn int8_embeddings_are_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tiny-en-ru");
    parity::copy_fixture(&parity::fixture("marian", "tiny-en-ru"), &copy, &[]);
    let cpu = Device::Cpu;
    let q = Bart::load_quantized(&copy, &cpu, Quantize::Int8).unwrap();
    let (inputs, _) = recorded_pairs(&copy, q.seq2seq_config().eos_token_id);
    assert!(q.encode(&inputs[..1]).is_ok());
    let weights = copy.join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(1024)
        .unwrap();
    let err = q.encode(&inputs[..1]).unwrap_err().to_string();
    assert!(err.contains("was the file changed"), "{err}");
}
