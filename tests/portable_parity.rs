//! The portable path (`seq2seq::portable`: candle tensor ops only, the path
//! a GPU runs) against transformers on the CPU, with the same fixtures and
//! the same rules as the CPU path's parity suites: encoder states and
//! decoder logits within 1e-4, every recorded `generate()` setting's ids and
//! texts exactly, each input alone as in its batch. Every family: Marian,
//! BART, T5 / Flan-T5, M2M100 / NLLB. And in f16 / bf16, teacher-forced
//! top-1 agreement with f32 of at least 0.98.
//!
//! `PRECIS_TEST_DEVICE=cuda:0` runs the same on a GPU (a binary built with
//! `--features cuda`; `scripts/gpu-check.sh` does it, with
//! `PRECIS_TEST_FIXTURES` naming the fixtures' folder there).

#[path = "common/parity.rs"]
mod parity;

use std::path::Path;

use candle_core::{DType, Device};
use parity::{
    check_alone_equals_batched, check_forward, check_generation, recorded_pairs, reference,
    same_positions,
};
use precis_backend::seq2seq::backend::checkpoint_generation;
use precis_backend::seq2seq::portable::Portable;
use precis_backend::seq2seq::{teacher_forced_top1, EncoderDecoder};
use precis_backend::tokenizer::checkpoint::{CheckpointTokenizer, Family};
use precis_backend::tokenizer::m2m::ManyToManyTokenizer;
use precis_backend::tokenizer::marian::MarianTokenizer;
use precis_backend::Placement;

/// Every trained fixture: family directory and name.
const CHECKPOINTS: [(&str, &str); 8] = [
    ("marian", "tiny-en-ru"),
    ("marian", "tiny-en-hi"),
    ("bart", "tiny-cnn"),
    ("bart", "tiny-distil"),
    ("t5", "tiny-flan"),
    ("t5", "tiny-t5"),
    ("m2m100", "tiny-m2m100"),
    ("m2m100", "tiny-nllb"),
];

/// The device the tests run on: `PRECIS_TEST_DEVICE`, else the CPU.
fn device() -> Device {
    let placement: Placement = std::env::var("PRECIS_TEST_DEVICE")
        .map(|d| d.parse().expect("PRECIS_TEST_DEVICE names a device"))
        .unwrap_or_default();
    placement.device().expect("the device opens")
}

/// Ids to text, special tokens skipped.
type Decode = Box<dyn Fn(&[u32]) -> String>;

/// The checkpoint's own text decoding.
fn decoder(family: &str, dir: &Path) -> Decode {
    match family {
        "marian" => {
            let tok = MarianTokenizer::from_dir(dir).expect("tokenizer loads");
            Box::new(move |ids| tok.decode(ids, true))
        }
        "m2m100" => {
            let tok = ManyToManyTokenizer::from_dir(dir).expect("tokenizer loads");
            Box::new(move |ids| tok.decode(ids, true).unwrap())
        }
        _ => {
            let kind = if family == "bart" {
                Family::Bart
            } else {
                Family::T5
            };
            let tok = CheckpointTokenizer::from_dir(dir, kind).expect("tokenizer loads");
            Box::new(move |ids| tok.decode(ids, true).unwrap())
        }
    }
}

#[test]
fn encoder_states_and_decoder_logits_match_transformers() {
    for (family, name) in CHECKPOINTS {
        let dir = parity::fixture(family, name);
        let model = Portable::load(&dir, &device(), DType::F32).expect("model loads");
        check_forward(
            name,
            &model,
            |inputs| model.encode(inputs),
            &reference(&dir),
        );
    }
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    for (family, name) in CHECKPOINTS {
        let dir = parity::fixture(family, name);
        let r = reference(&dir);
        let model = Portable::load(&dir, &device(), DType::F32).expect("model loads");
        let base = checkpoint_generation(&dir).unwrap();
        let decode = decoder(family, &dir);
        check_alone_equals_batched(name, &model, &base, &r);
        let checked = check_generation(name, &model, &base, &r, &decode, |_| false);
        assert!(checked >= 10, "{name}: only {checked} generation settings");
        if family == "m2m100" {
            // Russian in (its code first), English and Hindi out.
            let n = check_generation(name, &model, &base, &r["from_ru"], &decode, |_| false);
            assert_eq!(n, 2, "{name}: the Russian settings");
        }
    }
}

/// What the portable path refuses, it refuses with the CPU path's words:
/// an input past the model's positions, an id outside the vocabulary.
#[test]
fn bad_inputs_are_refused_not_run() {
    let dir = parity::fixture("marian", "tiny-en-ru");
    let model = Portable::load(&dir, &device(), DType::F32).unwrap();
    let too_long = vec![vec![5u32; 10_000]];
    let e = model.encode(&too_long).unwrap_err().to_string();
    assert!(e.contains("longer than the model's"), "{e}");
    let e = model.encode(&[vec![9_999_999]]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = model.encode(&[vec![]]).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
}

/// Least share of teacher-forced positions where f16 / bf16 pick f32's
/// token. `scripts/gpu-check.sh` holds a GPU's figures to 0.98 for both;
/// here bf16 (8 significant bits against f16's 11) gets a point more room,
/// its lowest on the CPU being 0.980 (tiny-nllb), so that another CPU's
/// rounding does not fail CI.
const HALF_FLOOR: [(DType, f64); 2] = [(DType::F16, 0.98), (DType::BF16, 0.97)];

/// f16 and bf16 weights and activations: the most likely next token, read
/// along transformers' recorded outputs, is f32's at the share of positions
/// above on every family (printed per checkpoint and dtype: the lines
/// `scripts/gpu-check.sh` reads).
#[test]
fn half_precision_agrees_with_f32() {
    let device = device();
    for (family, name) in CHECKPOINTS {
        let dir = parity::fixture(family, name);
        let f32_model = Portable::load(&dir, &device, DType::F32).unwrap();
        let (inputs, targets) = recorded_pairs(&dir, f32_model.seq2seq_config().eos_token_id);
        let want = teacher_forced_top1(&f32_model, &inputs, &targets).unwrap();
        for (dtype, floor) in HALF_FLOOR {
            let half = Portable::load(&dir, &device, dtype).unwrap();
            let got = teacher_forced_top1(&half, &inputs, &targets).unwrap();
            let (same, total) = same_positions(&want, &got);
            let share = same as f64 / total as f64;
            println!("agreement {name} {dtype:?}/f32 = {share:.4} ({same} of {total})");
            assert!(
                share >= floor,
                "{name}: {dtype:?} agrees with f32 at {share:.4}, under {floor}"
            );
        }
    }
}
