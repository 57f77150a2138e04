//! Marian against transformers: tokenization, decoding, encoder states,
//! decoder logits and `generate()` outputs of small trained checkpoints, all
//! recorded by `scripts/make_fixtures.py` (transformers 5.24.0) under
//! `tests/fixtures/marian/`.
//!
//! Ids are compared exactly and tensors within 1e-4. A greedy step whose
//! reference top-2 logit margin is under 1e-4 could legitimately go the
//! other way under float rounding; no recorded greedy output has one, and
//! the test asserts that rather than assuming it.

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::path::PathBuf;

use candle_core::Device;
use parity::{
    check_alone_equals_batched, check_forward, check_generation, ids, reference, StdinText,
};
use precis_backend::seq2seq::bart::Bart;
use precis_backend::seq2seq::GenerationConfig;
use precis_backend::tokenizer::marian::MarianTokenizer;

const CHECKPOINTS: [&str; 2] = ["tiny-en-ru", "tiny-en-hi"];

fn dir(name: &str) -> PathBuf {
    parity::fixture("marian", name)
}

#[test]
fn tokenization_matches_marian_tokenizer() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let tok = MarianTokenizer::from_dir(&dir(name)).expect("tokenizer loads");
        let mut checked = 0;
        for case in r["tokenization"]["source"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode_source(text),
                ids(&case["input_ids"]),
                "{name}: source ids of {text:?} ({})",
                case["note"]
            );
            let pieces: Vec<String> = case["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                tok.tokenize_source(text),
                pieces,
                "{name}: pieces of {text:?}"
            );
            checked += 1;
        }
        for case in r["tokenization"]["target"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode_target(text),
                ids(&case["labels"]),
                "{name}: target ids of {text:?} ({})",
                case["note"]
            );
            checked += 1;
        }
        assert!(checked >= 20, "{name}: only {checked} tokenization cases");
    }
}

#[test]
fn decoding_matches_marian_tokenizer() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let tok = MarianTokenizer::from_dir(&dir(name)).expect("tokenizer loads");
        for case in r["decoding"]["cases"].as_array().unwrap() {
            let id_list = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&id_list, true),
                case["text"].as_str().unwrap(),
                "{name}: decode of {} ({id_list:?})",
                case["note"]
            );
            assert_eq!(
                tok.decode(&id_list, false),
                case["text_keep_special"].as_str().unwrap(),
                "{name}: decode keeping special tokens of {}",
                case["note"]
            );
        }
    }
}

#[test]
fn encoder_states_and_decoder_logits_match_transformers() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = Bart::load(&dir(name), &Device::Cpu).expect("model loads");
        check_forward(name, &model, |inputs| model.encode(inputs), &r);
    }
}

fn checkpoint_generation_config(name: &str) -> GenerationConfig {
    let text = std::fs::read_to_string(dir(name).join("generation_config.json")).unwrap();
    GenerationConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = Bart::load(&dir(name), &Device::Cpu).expect("model loads");
        let tok = MarianTokenizer::from_dir(&dir(name)).expect("tokenizer loads");
        let base = checkpoint_generation_config(name);
        let checked = check_generation(
            name,
            &model,
            &base,
            &r,
            |ids| tok.decode(ids, true),
            |_| false,
        );
        assert!(checked >= 10, "{name}: only {checked} generation settings");
    }
}

#[test]
fn each_input_alone_gives_what_it_gives_in_the_batch() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = Bart::load(&dir(name), &Device::Cpu).expect("model loads");
        check_alone_equals_batched(name, &model, &checkpoint_generation_config(name), &r);
    }
}

/// `precis translate --model DIR` on one sentence gives exactly the text of
/// transformers' `generate()` with the checkpoint's own settings.
#[test]
fn the_cli_translates_with_the_checkpoint_settings() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let defaults = r["generation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "checkpoint_defaults")
            .expect("checkpoint_defaults recorded");
        let sources = r["forward"]["sources"].as_array().unwrap();
        let home = tempfile::tempdir().unwrap();
        for (i, source) in sources.iter().enumerate() {
            let lang = if name.ends_with("ru") { "ru" } else { "hi" };
            let v = common::precis_offline(home.path())
                .args(["translate", "--model"])
                .arg(dir(name))
                .args(["--to", lang, "--format", "json", "-"])
                .stdin_json(source.as_str().unwrap(), name);
            let t = &v["translations"][0];
            assert_eq!(
                t["model"]["family"], "marian",
                "{name}: the dedicated model translated"
            );
            assert_eq!(
                t["text"], defaults["text"][i],
                "{name}: sentence {i} ({source})"
            );
        }
    }
}

/// N paragraphs in, N out, through the CLI.
#[test]
fn paragraphs_come_out_as_many_as_went_in() {
    let home = tempfile::tempdir().unwrap();
    let article = "The minister will visit Moscow in May. Antony J. Blinken met the foreign minister of India.\n\n\
                   Talks went on for hours.\n\n\"We agreed,\" he said. Prices rose 3.5 percent in the U.S. last year.";
    let v = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(dir("tiny-en-ru"))
        .args(["--to", "ru", "--format", "json", "-"])
        .stdin_json(article, "precis");
    let paragraphs = v["translations"][0]["paragraphs"].as_array().unwrap();
    assert_eq!(paragraphs.len(), 3);
    assert!(paragraphs
        .iter()
        .all(|p| !p.as_str().unwrap().trim().is_empty()));
}

/// `--quantize int8` runs the checkpoint's int8 version, says so in the
/// result, and keeps its results apart from f32's in the cache; a model's
/// own `quantize` in the config file does the same; a bad value is refused
/// before anything runs.
#[test]
fn the_cli_runs_int8_weights_when_asked() {
    let home = tempfile::tempdir().unwrap();
    let sentence = "The minister will visit Moscow in May.";
    let cache = home.path().join("results.sqlite3");
    let run = |extra: &[&str]| {
        common::precis_offline(home.path())
            .env_remove("PRECIS_NO_CACHE")
            .env("PRECIS_CACHE", &cache)
            .args(["translate", "--model"])
            .arg(dir("tiny-en-ru"))
            .args(["--to", "ru", "--format", "json"])
            .args(extra)
            .arg("-")
            .stdin_json(sentence, "tiny-en-ru")
    };
    let plain = run(&[]);
    assert!(plain["translations"][0]["model"].get("quantize").is_none());
    let int8 = run(&["--quantize", "int8"]);
    let t = &int8["translations"][0];
    assert_eq!(t["model"]["quantize"], "int8", "{int8}");
    assert!(!t["text"].as_str().unwrap().trim().is_empty());
    assert_eq!(
        int8["cache"]["hits"], 0,
        "f32's result is not int8's: {int8}"
    );
    let again = run(&["--quantize", "int8"]);
    assert_eq!(again["cache"]["misses"], 0, "{again}");
    assert_eq!(again["translations"][0]["text"], t["text"]);

    // The model's own setting, by the name it is given by.
    let config = home.path().join("precis.toml");
    let key = dir("tiny-en-ru").display().to_string();
    std::fs::write(
        &config,
        format!("[models.{}]\nquantize = \"int8\"\n", toml_key(&key)),
    )
    .unwrap();
    let from_file = run(&["--config", config.to_str().unwrap()]);
    assert_eq!(from_file["translations"][0]["model"]["quantize"], "int8");
    let flag_wins = run(&["--config", config.to_str().unwrap(), "--quantize", "none"]);
    assert!(flag_wins["translations"][0]["model"]
        .get("quantize")
        .is_none());

    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(dir("tiny-en-ru"))
        .args(["--to", "ru", "--quantize", "int4", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`none`") && err.contains("`int8`"), "{err}");
}

/// `--device` (also `--cuda`, `PRECIS_DEVICE` and the config file's
/// `device`): the CPU runs; a GPU in a build without CUDA (CI's) is refused
/// in one line that says what to do, with a non-zero exit; a device name
/// that is not one is a usage error.
#[test]
fn the_device_is_chosen_and_a_missing_gpu_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        common::precis_offline(home.path())
            .args(["translate", "--model"])
            .arg(dir("tiny-en-ru"))
            .args(["--to", "ru"])
            .args(extra)
            .arg("-")
            .stdin_text("The minister will visit Moscow in May.")
    };
    let cpu = run(&["--device", "cpu"]);
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let config = home.path().join("precis.toml");
    std::fs::write(&config, "device = \"cuda:1\"\n").unwrap();
    for extra in [
        &["--device", "cuda"][..],
        &["--cuda"][..],
        &["--config", config.to_str().unwrap()][..],
    ] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        if cfg!(feature = "cuda") {
            // A CUDA build on a machine with a GPU runs; without one it
            // refuses the same way.
            assert!(
                out.status.success() || err.contains("--device cpu"),
                "{err}"
            );
            continue;
        }
        assert!(!out.status.success(), "{extra:?}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{extra:?}: {err}");
        assert!(
            errors[0].contains("no CUDA support") && errors[0].contains("--device cpu"),
            "{extra:?}: {err}"
        );
    }
    // A flag wins over the file.
    let flag_wins = run(&["--config", config.to_str().unwrap(), "--device", "cpu"]);
    assert!(flag_wins.status.success());
    let out = run(&["--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`cuda:N`"), "{err}");
}

/// A TOML basic string holding `s`.
fn toml_key(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
