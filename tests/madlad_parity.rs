//! MADLAD-400 (a T5 translator whose vocabulary holds `<2xx>` tokens)
//! against transformers: tokenization of `<2xx> text` inputs, decoding,
//! encoder states, decoder logits and `generate()` outputs of a small trained
//! checkpoint in the layout of `google/madlad400-*-mt` (`spiece.model` with
//! the `<2xx>` tokens as user-defined pieces, `tokenizer.json`,
//! `T5Tokenizer`), recorded by `scripts/make_fixtures.py` (transformers
//! 5.24.0) under `tests/fixtures/madlad/`.

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::path::PathBuf;

use candle_core::Device;
use parity::{
    check_alone_equals_batched, check_forward, check_generation, ids, reference, StdinText,
};
use precis_backend::seq2seq::t5::T5;
use precis_backend::seq2seq::GenerationConfig;
use precis_backend::tokenizer::checkpoint::{CheckpointTokenizer, Family};

fn dir() -> PathBuf {
    parity::fixture("madlad", "tiny-madlad")
}

fn tokenizer() -> CheckpointTokenizer {
    CheckpointTokenizer::from_dir(&dir(), Family::T5).expect("tokenizer loads")
}

fn base() -> GenerationConfig {
    let text = std::fs::read_to_string(dir().join("generation_config.json")).unwrap();
    GenerationConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn tagged_inputs_tokenize_as_transformers() {
    let r = reference(&dir());
    let tok = tokenizer();
    let cases = r["tokenization"]["source"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let input = case["input"].as_str().unwrap();
        assert_eq!(
            tok.encode(input).unwrap(),
            ids(&case["input_ids"]),
            "ids of {input:?} ({})",
            case["note"]
        );
    }
    for (code, id) in r["checkpoint"]["language_ids"].as_object().unwrap() {
        assert_eq!(
            tok.token_to_id(&format!("<2{code}>")),
            id.as_u64().map(|i| i as u32)
        );
    }
}

#[test]
fn decoding_matches_transformers() {
    let r = reference(&dir());
    let tok = tokenizer();
    for case in r["decoding"]["cases"].as_array().unwrap() {
        let id_list = ids(&case["ids"]);
        assert_eq!(
            tok.decode(&id_list, true).unwrap(),
            case["text"].as_str().unwrap(),
            "{}",
            case["note"]
        );
        assert_eq!(
            tok.decode(&id_list, false).unwrap(),
            case["text_keep_special"].as_str().unwrap(),
            "{} keeping special tokens",
            case["note"]
        );
    }
}

#[test]
fn encoder_states_and_decoder_logits_match_transformers() {
    let r = reference(&dir());
    let model = T5::load(&dir(), &Device::Cpu).expect("model loads");
    check_forward("tiny-madlad", &model, |inputs| model.encode(inputs), &r);
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    let r = reference(&dir());
    let model = T5::load(&dir(), &Device::Cpu).expect("model loads");
    let tok = tokenizer();
    let decode = |i: &[u32]| tok.decode(i, true).unwrap();
    let n = check_generation("tiny-madlad", &model, &base(), &r, decode, |_| false);
    assert!(n >= 19, "only {n} settings");
    assert_eq!(
        check_generation("into Hindi", &model, &base(), &r["to_hi"], decode, |_| {
            false
        }),
        2
    );
    assert_eq!(
        check_generation(
            "from Russian",
            &model,
            &base(),
            &r["from_ru"],
            decode,
            |_| false
        ),
        1
    );
    check_alone_equals_batched("tiny-madlad", &model, &base(), &r);
}

/// `precis translate --model DIR --to LANG` gives transformers' text for
/// `<2xx> sentence`, into Russian and into Hindi, and from Russian (declared
/// with `--from`) into English.
#[test]
fn the_cli_translates_with_the_target_tag() {
    let r = reference(&dir());
    let home = tempfile::tempdir().unwrap();
    let cases = [
        ("ru", &r["generation"][0], &r["forward"], None),
        (
            "hi",
            &r["to_hi"]["generation"][0],
            &r["to_hi"]["forward"],
            None,
        ),
        (
            "en",
            &r["from_ru"]["generation"][0],
            &r["from_ru"]["forward"],
            Some("ru"),
        ),
    ];
    for (lang, want, forward, from) in cases {
        assert_eq!(want["name"], "checkpoint_defaults");
        for (i, source) in forward["sources"].as_array().unwrap().iter().enumerate() {
            let mut cmd = common::precis_offline(home.path());
            cmd.args(["translate", "--model"])
                .arg(dir())
                .args(["--to", lang, "--format", "json"]);
            if let Some(from) = from {
                cmd.args(["--from", from]);
            }
            let v = cmd
                .arg("-")
                .stdin_json(source.as_str().unwrap(), "precis translate");
            let t = &v["translations"][0];
            assert_eq!(t["model"]["family"], "t5");
            // precis trims a paragraph's edges (an output cut at the length
            // limit can end in a space).
            assert_eq!(
                t["text"].as_str().unwrap(),
                want["text"][i].as_str().unwrap().trim(),
                "into {lang}: sentence {i} ({source})"
            );
        }
    }
}

/// The languages it writes are its `<2xx>` tokens' (of precis's table);
/// another is refused by name.
#[test]
fn a_language_without_a_tag_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(dir())
        .args(["--to", "ja", "-"])
        .stdin_text("The minister arrived.");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ja") && err.contains("uk (Ukrainian)") && err.contains("bn (Bengali)"),
        "{err}"
    );
}

/// The same checkpoint with its weights in two shards and an index (as
/// MADLAD-400 3B ships them) translates the same.
#[test]
fn sharded_weights_load_the_same() {
    let home = tempfile::tempdir().unwrap();
    let sharded = home.path().join("sharded");
    parity::copy_fixture(&dir(), &sharded, &["model.safetensors"]);
    let tensors =
        candle_core::safetensors::load(dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let r = reference(&dir());
    let source = r["forward"]["sources"][1].as_str().unwrap();
    let v = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(&sharded)
        .args(["--to", "ru", "--format", "json", "-"])
        .stdin_json(source, "precis translate");
    assert_eq!(
        v["translations"][0]["text"].as_str().unwrap(),
        r["generation"][0]["text"][1].as_str().unwrap().trim()
    );
    // A shard outside the directory is refused.
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"weight_map": {"shared.weight": "../model.safetensors"}}"#,
    )
    .unwrap();
    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(&sharded)
        .args(["--to", "ru", "-"])
        .stdin_text(source);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.safetensors.index.json"));
}
