//! NLLB-200 and M2M100 against transformers: tokenization, decoding,
//! encoder states, decoder logits and `generate()` outputs (the target
//! language forced first) of small trained checkpoints, recorded by
//! `scripts/make_fixtures.py` (transformers 5.24.0) under
//! `tests/fixtures/m2m100/`: `tiny-nllb` in the layout of
//! `facebook/nllb-200-*` (`tokenizer.json`, `NllbTokenizer`), `tiny-m2m100`
//! in that of `facebook/m2m100_*` (`vocab.json` + `sentencepiece.bpe.model`,
//! `M2M100Tokenizer`).

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::path::PathBuf;

use candle_core::Device;
use parity::{
    check_alone_equals_batched, check_forward, check_generation, ids, reference, strings, StdinText,
};
use precis_backend::seq2seq::m2m100::M2M100;
use precis_backend::seq2seq::{EncoderDecoder, GenerationConfig};
use precis_backend::tokenizer::m2m::{ManyToManyKind, ManyToManyTokenizer};

const CHECKPOINTS: [&str; 2] = ["tiny-nllb", "tiny-m2m100"];

fn dir(name: &str) -> PathBuf {
    parity::fixture("m2m100", name)
}

fn checkpoint_generation_config(name: &str) -> GenerationConfig {
    let text = std::fs::read_to_string(dir(name).join("generation_config.json")).unwrap();
    GenerationConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn tokenizer(name: &str) -> ManyToManyTokenizer {
    ManyToManyTokenizer::from_dir(&dir(name)).expect("tokenizer loads")
}

#[test]
fn each_checkpoint_gets_its_own_tokenizer() {
    assert_eq!(tokenizer("tiny-nllb").kind(), ManyToManyKind::Nllb);
    assert_eq!(tokenizer("tiny-m2m100").kind(), ManyToManyKind::M2M100);
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let tok = tokenizer(name);
        for (code, id) in r["checkpoint"]["language_ids"].as_object().unwrap() {
            assert_eq!(
                tok.language_id(code),
                id.as_u64().map(|i| i as u32),
                "{name}: {code}"
            );
        }
        // Every language of the table that the vocabulary has: NLLB's 202
        // codes cover all of them, M2M100's 100 all but a few.
        assert!(tok.languages().len() >= 70, "{name}: {:?}", tok.languages());
        assert!(tok.language_id("xx").is_none());
    }
}

#[test]
fn tokenization_matches_transformers() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let tok = tokenizer(name);
        let t = &r["tokenization"];
        let mut checked = 0;
        for case in t["source"].as_array().unwrap() {
            let (text, src) = (
                case["text"].as_str().unwrap(),
                case["src_lang"].as_str().unwrap(),
            );
            assert_eq!(
                tok.encode(text, src).unwrap(),
                ids(&case["input_ids"]),
                "{name}: ids of {text:?} from {src} ({})",
                case["note"]
            );
            checked += 1;
        }
        assert!(checked >= 40, "{name}: only {checked} cases");
        // Labels are the same ids with the target's code: `tokenizer(text_target=…)`.
        for case in t["target"].as_array().unwrap() {
            let (text, tgt) = (
                case["text"].as_str().unwrap(),
                case["tgt_lang"].as_str().unwrap(),
            );
            assert_eq!(
                tok.encode(text, tgt).unwrap(),
                ids(&case["labels"]),
                "{name}: labels of {text:?}"
            );
        }
        if let Some(cases) = t["legacy_behaviour"].as_array() {
            let dir = tempfile::tempdir().unwrap();
            parity::copy_fixture(&parity::fixture("m2m100", name), dir.path(), &[]);
            let config = dir.path().join("tokenizer_config.json");
            let mut value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
            value["legacy_behaviour"] = true.into();
            std::fs::write(&config, value.to_string()).unwrap();
            let legacy = ManyToManyTokenizer::from_dir(dir.path()).unwrap();
            for case in cases {
                let text = case["text"].as_str().unwrap();
                assert_eq!(
                    legacy
                        .encode(text, case["src_lang"].as_str().unwrap())
                        .unwrap(),
                    ids(&case["input_ids"]),
                    "{name}: legacy_behaviour ids of {text:?}"
                );
            }
        }
    }
}

#[test]
fn decoding_matches_transformers() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let tok = tokenizer(name);
        let d = &r["decoding"];
        for case in d["cases"].as_array().unwrap() {
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
        let all: Vec<String> = d["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| tok.decode(&ids(&c["ids"]), true).unwrap())
            .collect();
        assert_eq!(all, strings(&d["batch_decode"]), "{name}: batch_decode");
    }
}

#[test]
fn encoder_states_and_decoder_logits_match_transformers() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = M2M100::load(&dir(name), &Device::Cpu).expect("model loads");
        check_forward(name, &model, |inputs| model.encode(inputs), &r);
    }
}

#[test]
fn each_input_alone_gives_what_it_gives_in_the_batch() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = M2M100::load(&dir(name), &Device::Cpu).expect("model loads");
        check_alone_equals_batched(name, &model, &checkpoint_generation_config(name), &r);
    }
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let model = M2M100::load(&dir(name), &Device::Cpu).expect("model loads");
        let tok = tokenizer(name);
        let base = checkpoint_generation_config(name);
        let n = check_generation(
            name,
            &model,
            &base,
            &r,
            |i| tok.decode(i, true).unwrap(),
            |_| false,
        );
        assert!(n >= 20, "{name}: only {n} settings");
        // Russian in (its code first), English and Hindi out.
        let from_ru = &r["from_ru"];
        assert_eq!(
            parity::batch_inputs(from_ru)[0],
            tok.encode(from_ru["forward"]["sources"][0].as_str().unwrap(), "ru")
                .unwrap()
        );
        let n = check_generation(
            name,
            &model,
            &base,
            from_ru,
            |i| tok.decode(i, true).unwrap(),
            |_| false,
        );
        assert_eq!(n, 2, "{name}: the Russian settings");
    }
}

/// `precis translate --model DIR --to LANG` on one sentence gives exactly
/// the text of transformers' `generate()` with the checkpoint's own settings
/// and the language forced first, for each target.
#[test]
fn the_cli_translates_with_the_checkpoint_settings() {
    for name in CHECKPOINTS {
        let r = reference(&dir(name));
        let case = |setting: &str| {
            r["generation"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == setting)
                .unwrap_or_else(|| panic!("{setting} recorded"))
                .clone()
        };
        let sources = r["forward"]["sources"].as_array().unwrap();
        let home = tempfile::tempdir().unwrap();
        for (lang, setting) in [
            ("ru", "checkpoint_defaults"),
            ("hi", "checkpoint_defaults_to_hi"),
        ] {
            let want = case(setting);
            for (i, source) in sources.iter().enumerate() {
                let v = common::precis_offline(home.path())
                    .args(["translate", "--model"])
                    .arg(dir(name))
                    .args(["--to", lang, "--format", "json", "-"])
                    .stdin_json(source.as_str().unwrap(), name);
                let t = &v["translations"][0];
                assert_eq!(t["model"]["family"], "m2m100", "{name}");
                assert_eq!(
                    t["text"].as_str().unwrap(),
                    want["text"][i].as_str().unwrap().trim(),
                    "{name} into {lang}: sentence {i} ({source})"
                );
            }
        }
    }
}

/// A language the checkpoint has no token for is refused before anything
/// runs, naming what it writes.
#[test]
fn a_language_the_model_does_not_write_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(dir("tiny-m2m100"))
        .args(["--to", "xx", "-"])
        .stdin_text("The minister arrived.");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xx") && err.contains("hi (Hindi)"), "{err}");
}

/// Puts the files a manifest names, from a fixture checkpoint, where the
/// store keeps that model: it is then present, as if fetched.
fn install(home: &std::path::Path, fixture: &str, manifest_id: &str) {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(format!("{manifest_id}.toml")),
    )
    .unwrap();
    let to = home.join("models").join(manifest_id);
    std::fs::create_dir_all(&to).unwrap();
    for line in manifest.lines() {
        if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|l| l.strip_suffix('"'))
        {
            if !name.contains(' ') {
                std::fs::copy(dir(fixture).join(name), to.join(name))
                    .unwrap_or_else(|e| panic!("{fixture} has no {name}: {e}"));
            }
        }
    }
}

/// What the fixture model writes for English `text` into `target` with the
/// checkpoint's settings, through the library.
fn library_translation(name: &str, text: &str, target: &str) -> String {
    library_translation_from(name, text, "en", target)
}

/// The same from the language `from`.
fn library_translation_from(name: &str, text: &str, from: &str, target: &str) -> String {
    use precis_backend::seq2seq::{generate, GenerationSettings};
    let model = M2M100::load(&dir(name), &Device::Cpu).unwrap();
    let tok = tokenizer(name);
    let config = GenerationConfig {
        forced_bos_token_id: tok.language_id(target),
        ..checkpoint_generation_config(name)
    };
    let settings = GenerationSettings::resolve(&config, &model.seq2seq_config()).unwrap();
    let out = generate(
        &model,
        &[tok.encode(text, from).unwrap()],
        &settings,
        &mut |_| true,
    )
    .unwrap();
    let ids = &out[0];
    assert_eq!(
        ids[1],
        tok.language_id(target).unwrap(),
        "the target's token comes first"
    );
    tok.decode(ids, true).unwrap().trim().to_string()
}

/// With M2M100's files present in the store, `precis translate --to de`
/// needs no `--model`: the translator is routed to it, it writes German, and
/// the result names its licence.
#[test]
fn a_present_m2m100_is_routed_to_for_german() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let sentence = "The minister will visit Moscow in May.";
    let v = common::precis_offline(home.path())
        .args(["translate", "--to", "de", "--format", "json", "-"])
        .stdin_json(sentence, "precis translate --to de");
    let t = &v["translations"][0];
    assert_eq!(t["language"], "de");
    assert_eq!(t["model"]["id"], "m2m100-418m");
    assert_eq!(t["model"]["license"], "MIT");
    assert_eq!(
        t["text"].as_str().unwrap(),
        library_translation("tiny-m2m100", sentence, "de")
    );
}

/// NLLB-200's licence is non-commercial: present, it is passed over unless
/// the user allows it, and then the result says under which licence.
#[test]
fn nllb_serves_only_when_noncommercial_use_is_allowed() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-nllb", "nllb-200-distilled-600m");
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let sentence = "The minister will visit Moscow in May.";
    let run = |extra: &[&str]| {
        common::precis_offline(home.path())
            .args(["translate", "--to", "hi", "--format", "json"])
            .args(extra)
            .arg("-")
            .stdin_json(sentence, "precis translate --to hi")
    };
    let v = run(&[]);
    assert_eq!(v["translations"][0]["model"]["id"], "m2m100-418m");
    let v = run(&["--allow-noncommercial"]);
    let t = &v["translations"][0];
    assert_eq!(t["model"]["id"], "nllb-200-distilled-600m");
    assert_eq!(t["model"]["license"], "CC-BY-NC-4.0");
    assert_eq!(
        t["text"].as_str().unwrap(),
        library_translation("tiny-nllb", sentence, "hi")
    );
}

/// Two paragraphs of Russian news (whatlang detects the language reliably).
const RUSSIAN: [[&str; 2]; 2] = [
    [
        "Министр прибыл в Дели в понедельник.",
        "Цены выросли на 3,5% в июне, сообщил центральный банк.",
    ],
    [
        "Переговоры между двумя странами завершились без соглашения.",
        "Официальные лица встретятся снова в пятницу.",
    ],
];

fn russian_article() -> String {
    RUSSIAN.map(|p| p.join(" ")).join("\n\n")
}

/// A Russian article with `--to hi`, an M2M100 present: detected as
/// Russian, translated directly from Russian into Hindi sentence by
/// sentence, and the result says so.
#[test]
fn a_russian_article_is_translated_directly_into_hindi() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let v = common::precis_offline(home.path())
        .args(["translate", "--to", "hi", "--format", "json", "-"])
        .stdin_json(&russian_article(), "precis translate --to hi");
    assert_eq!(v["input"]["language"]["code"], "ru", "{v}");
    assert_eq!(v["input"]["language"]["how"], "detected");
    let t = &v["translations"][0];
    assert_eq!(t["language"], "hi");
    assert_eq!(t["from"], "ru");
    assert_eq!(t["model"]["id"], "m2m100-418m");
    let want: Vec<String> = RUSSIAN
        .iter()
        .map(|p| {
            p.iter()
                .map(|s| library_translation_from("tiny-m2m100", s, "ru", "hi"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(t["paragraphs"], serde_json::json!(want));
}

/// A summary of a Russian article by a summarizer that reads only English
/// (BART) goes through an English translation by the present M2M100; the
/// result names the route.
#[test]
fn a_russian_article_is_summarized_through_english() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let v = common::precis_offline(home.path())
        .args(["summarize", "--summarizer"])
        .arg(parity::fixture("bart", "tiny-cnn"))
        .args(["--format", "json", "-"])
        .stdin_json(&russian_article(), "precis summarize");
    assert_eq!(v["input"]["language"]["code"], "ru", "{v}");
    let s = &v["summary"];
    assert_eq!(s["model"]["family"], "bart");
    assert_eq!(
        s["route"],
        "translated from Russian into English by m2m100-418m, then summarized"
    );
    assert!(!s["text"].as_str().unwrap().trim().is_empty());
}

/// Without a translator that reads Russian the article is refused, with
/// the model that would accept it named; an English-only translator does
/// not read it, and a declared language counts as much as a detected one.
#[test]
fn a_russian_article_without_a_reader_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(parity::fixture("marian", "tiny-en-ru"))
        .args(["--to", "ru", "-"])
        .stdin_text(&russian_article());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Russian (detected)") && err.contains("m2m100-418m"),
        "{err}"
    );
}

/// Translating an article into its own language is refused by name.
#[test]
fn a_russian_article_into_russian_is_refused() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let out = common::precis_offline(home.path())
        .args(["translate", "--to", "ru", "-"])
        .stdin_text(&russian_article());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`ru` is the article's language"), "{err}");
}

/// A digest that names no languages, with a many-to-many translator
/// present, goes into Russian and Hindi, not into every language it writes.
#[test]
fn a_digest_without_languages_goes_into_russian_and_hindi() {
    let home = tempfile::tempdir().unwrap();
    install(home.path(), "tiny-m2m100", "m2m100-418m");
    let v = common::precis_offline(home.path())
        .args(["digest", "--summarizer"])
        .arg(parity::fixture("bart", "tiny-cnn"))
        .args(["--format", "json", "-"])
        .stdin_json(
            "The minister will visit Moscow in May. Talks went on for hours.",
            "precis digest",
        );
    let languages: Vec<&str> = v["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["language"].as_str().unwrap())
        .collect();
    assert_eq!(languages, ["ru", "hi"]);
    assert!(v["translations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["model"]["id"] == "m2m100-418m"));
}

/// Whether the forced `__xx__` code is text follows the checkpoint's
/// special-token lists, as in transformers: the fixture (saved by
/// transformers 5 with an empty list) keeps it; listed as special in
/// `special_tokens_map.json`, or with no list written at all (a
/// transformers 4 save, as facebook/m2m100_418M's `tokenizer_config.json`
/// is), it is dropped.
#[test]
fn language_codes_are_text_only_when_the_checkpoint_says_so() {
    let r = reference(&dir("tiny-m2m100"));
    let case = &r["generation"][0];
    let ids_of = |i: usize| ids(&case["sequences"][i]);
    let want = case["text"][0].as_str().unwrap();
    assert!(want.starts_with("__ru__ "), "{want}");
    let decode = |d: &std::path::Path| {
        let tok = ManyToManyTokenizer::from_dir(d).unwrap();
        tok.decode(&ids_of(0), true).unwrap()
    };
    assert_eq!(decode(&dir("tiny-m2m100")), want);

    let home = tempfile::tempdir().unwrap();
    for (name, map, config_edit) in [
        ("listed", true, None),
        ("no list", false, Some("extra_special_tokens")),
    ] {
        let copy = home.path().join(name);
        parity::copy_fixture(&dir("tiny-m2m100"), &copy, &[]);
        if map {
            let codes: Vec<String> = ["en", "ru", "hi", "de"]
                .iter()
                .map(|c| format!("__{c}__"))
                .collect();
            let value = serde_json::json!({ "additional_special_tokens": codes });
            std::fs::write(copy.join("special_tokens_map.json"), value.to_string()).unwrap();
        }
        if let Some(key) = config_edit {
            let path = copy.join("tokenizer_config.json");
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            config.as_object_mut().unwrap().remove(key);
            std::fs::write(&path, config.to_string()).unwrap();
        }
        assert_eq!(decode(&copy), want["__ru__ ".len()..], "{name}");
    }
}
