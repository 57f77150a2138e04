//! BART and T5 against transformers: tokenization, decoding, encoder
//! states, decoder logits and `generate()` outputs of small trained
//! checkpoints recorded by `scripts/make_fixtures.py` (transformers 5.24.0)
//! under `tests/fixtures/bart/` and `tests/fixtures/t5/`; and the
//! summarizer end to end through the CLI, long inputs included.
//!
//! Ids are compared exactly and tensors within 1e-4 (no recorded greedy
//! step is a near-tie; the test asserts that).

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::path::{Path, PathBuf};

use candle_core::Device;
use parity::{
    check_alone_equals_batched, check_forward, check_generation, ids, reference, strings, StdinText,
};
use precis_backend::seq2seq::backend::checkpoint_generation;
use precis_backend::seq2seq::bart::Bart;
use precis_backend::seq2seq::t5::T5;
use precis_backend::tokenizer::checkpoint::{CheckpointTokenizer, Family};
use serde_json::Value;

/// Every fixture checkpoint: (family directory, name, tokenizer family).
const CHECKPOINTS: [(&str, &str, Family); 4] = [
    ("bart", "tiny-cnn", Family::Bart),
    ("bart", "tiny-distil", Family::Bart),
    ("t5", "tiny-flan", Family::T5),
    ("t5", "tiny-t5", Family::T5),
];

fn dir(family: &str, name: &str) -> PathBuf {
    parity::fixture(family, name)
}

fn tokenizer(dir: &Path, family: Family) -> CheckpointTokenizer {
    CheckpointTokenizer::from_dir(dir, family).expect("tokenizer loads")
}

fn check_tokenization(name: &str, tok: &CheckpointTokenizer, r: &Value) -> usize {
    let mut checked = 0;
    for case in r["tokenization"]["source"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&case["input_ids"]),
            "{name}: ids of {text:?} ({})",
            case["note"]
        );
        checked += 1;
    }
    checked
}

#[test]
fn tokenization_matches_transformers() {
    for (family, name, kind) in CHECKPOINTS {
        let d = dir(family, name);
        let r = reference(&d);
        let checked = check_tokenization(name, &tokenizer(&d, kind), &r);
        assert!(checked >= 20, "{name}: only {checked} tokenization cases");
        // The same from the other files a checkpoint may come with (BART:
        // vocab.json and merges.txt without tokenizer.json).
        for alt in r["tokenization"]["alternative_loads"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let tmp = tempfile::tempdir().unwrap();
            for file in strings(&alt["files"]) {
                std::fs::copy(d.join(&file), tmp.path().join(&file)).unwrap();
            }
            assert_eq!(alt["same_as_directory"], true, "{name}: {alt}");
            check_tokenization(name, &tokenizer(tmp.path(), kind), &r);
        }
    }
}

#[test]
fn decoding_matches_transformers() {
    for (family, name, kind) in CHECKPOINTS {
        let d = dir(family, name);
        let r = reference(&d);
        let tok = tokenizer(&d, kind);
        for case in r["decoding"]["cases"].as_array().unwrap() {
            let id_list = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&id_list, true).unwrap(),
                case["text"].as_str().unwrap(),
                "{name}: decode of {} ({id_list:?})",
                case["note"]
            );
            assert_eq!(
                tok.decode(&id_list, false).unwrap(),
                case["text_keep_special"].as_str().unwrap(),
                "{name}: decode keeping special tokens of {}",
                case["note"]
            );
        }
    }
}

#[test]
fn encoder_states_and_decoder_logits_match_transformers() {
    for (family, name, _) in CHECKPOINTS {
        let d = dir(family, name);
        let r = reference(&d);
        match family {
            "bart" => {
                let model = Bart::load(&d, &Device::Cpu).expect("model loads");
                check_forward(name, &model, |inputs| model.encode(inputs), &r);
            }
            _ => {
                let model = T5::load(&d, &Device::Cpu).expect("model loads");
                check_forward(name, &model, |inputs| model.encode(inputs), &r);
            }
        }
    }
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    for (family, name, kind) in CHECKPOINTS {
        let d = dir(family, name);
        let r = reference(&d);
        let tok = tokenizer(&d, kind);
        let base = checkpoint_generation(&d).unwrap();
        let decode = |ids: &[u32]| tok.decode(ids, true).unwrap();
        let checked = match family {
            "bart" => {
                let model = Bart::load(&d, &Device::Cpu).expect("model loads");
                check_alone_equals_batched(name, &model, &base, &r);
                check_generation(name, &model, &base, &r, decode, |_| false)
            }
            _ => {
                let model = T5::load(&d, &Device::Cpu).expect("model loads");
                check_alone_equals_batched(name, &model, &base, &r);
                check_generation(name, &model, &base, &r, decode, |_| false)
            }
        };
        assert!(checked >= 15, "{name}: only {checked} generation settings");
    }
}

/// `precis summarize --model DIR` on one input gives exactly the text of
/// transformers' `generate()` with the checkpoint's own settings (for T5,
/// with the `summarize: ` prefix).
#[test]
fn the_cli_summarizes_with_the_checkpoint_settings() {
    let home = tempfile::tempdir().unwrap();
    for (family, name, _) in CHECKPOINTS {
        let d = dir(family, name);
        let r = reference(&d);
        let sources = r["forward"]["sources"].as_array().unwrap();
        let case = r["generation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "checkpoint_defaults")
            .expect("checkpoint_defaults recorded");
        for (i, source) in sources.iter().enumerate() {
            let v = common::precis_offline(home.path())
                .args(["summarize", "--model"])
                .arg(&d)
                .args(["--format", "json", "-"])
                .stdin_json(source.as_str().unwrap(), name);
            let s = &v["summary"];
            assert_eq!(s["model"]["family"], family, "{name}: the dedicated model");
            assert_eq!(
                s["text"], case["text"][i],
                "{name}: input {i} ({source}) with `{}`",
                case["name"]
            );
        }
    }
}

/// An article far past the model's input limit is summarized in chunks
/// that cover every paragraph exactly once, each within the limit, then
/// the chunk summaries are summarized (map-reduce).
#[test]
fn long_articles_are_summarized_in_chunks_that_cover_them() {
    let home = tempfile::tempdir().unwrap();
    let d = dir("bart", "tiny-cnn");
    let limit = 128; // max_position_embeddings of the fixture
    let article = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample-article.txt"),
    )
    .unwrap();
    let v = common::precis_offline(home.path())
        .args(["summarize", "--model"])
        .arg(&d)
        .args(["--format", "json", "-"])
        .stdin_json(&article, "precis");
    let s = &v["summary"];
    let kept = v["input"]["paragraphs_kept"].as_u64().unwrap() as usize;
    let chunks = s["chunks"].as_array().expect("chunks are reported");
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    assert!(s["reduce_rounds"].as_u64().unwrap() >= 1);
    assert!(!s["text"].as_str().unwrap().trim().is_empty());
    // Paragraphs in order, each in one chunk or in consecutive parts 1..=n.
    let mut next = 0;
    let mut part = 0;
    for c in chunks {
        let tokens = c["tokens"].as_u64().unwrap() as usize;
        assert!(tokens <= limit, "a chunk of {tokens} tokens: {c}");
        let (first, last) = (
            c["first_paragraph"].as_u64().unwrap() as usize,
            c["last_paragraph"].as_u64().unwrap() as usize,
        );
        match c["part"].as_array() {
            None => {
                assert_eq!((first, part), (next, 0), "{c}");
                next = last + 1;
            }
            Some(p) => {
                let (k, n) = (p[0].as_u64().unwrap(), p[1].as_u64().unwrap());
                assert_eq!((first, last, k), (next, next, part + 1), "{c}");
                part = if k == n {
                    next += 1;
                    0
                } else {
                    k
                };
            }
        }
    }
    assert_eq!((next, part), (kept, 0), "every kept paragraph is covered");
}

/// `digest` pairs a dedicated summarizer with a dedicated translator.
#[test]
fn digest_pairs_a_dedicated_summarizer_with_a_dedicated_translator() {
    let home = tempfile::tempdir().unwrap();
    let v = common::precis_offline(home.path())
        .args(["digest", "--model"])
        .arg(dir("bart", "tiny-cnn"))
        .arg("--translator")
        .arg(parity::fixture("marian", "tiny-en-ru"))
        .args(["--to", "ru", "--format", "json", "-"])
        .stdin_json(
            "The minister will visit Moscow in May. Talks went on for hours.",
            "precis",
        );
    assert_eq!(v["summary"]["model"]["family"], "bart");
    let t = &v["translations"][0];
    assert_eq!(t["model"]["family"], "marian");
    assert_eq!(t["language"], "ru");
    assert!(!t["text"].as_str().unwrap().trim().is_empty());
}
