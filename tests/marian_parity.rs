//! Marian against transformers: tokenization, decoding, encoder states,
//! decoder logits and `generate()` outputs of small trained checkpoints, all
//! recorded by `scripts/make_fixtures.py` (transformers 5.24.0) under
//! `tests/fixtures/marian/`.
//!
//! Ids are compared exactly and tensors within 1e-4. A greedy step whose
//! reference top-2 logit margin is under 1e-4 could legitimately go the
//! other way under float rounding; no recorded greedy output has one, and
//! the test asserts that rather than assuming it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use precis::backend::seq2seq::marian::Marian;
use precis::backend::seq2seq::EncoderDecoder;
use precis::backend::seq2seq::{generate, pad_outputs, GenerationOverrides, GenerationSettings};
use precis::tokenizer::marian::MarianTokenizer;
use serde_json::Value;

const CHECKPOINTS: [&str; 2] = ["tiny-en-ru", "tiny-en-hi"];
const TOLERANCE: f32 = 1e-4;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/marian")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(dir(name).join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a float list")
        .iter()
        .map(|x| x.as_f64().expect("a float") as f32)
        .collect()
}

/// The batch's inputs without their padding.
fn batch_inputs(r: &Value) -> Vec<Vec<u32>> {
    let f = &r["forward"];
    f["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(f["attention_mask"].as_array().unwrap())
        .map(|(i, m)| {
            ids(i)
                .into_iter()
                .zip(ids(m))
                .filter(|(_, m)| *m == 1)
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "tensor sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tokenization_matches_marian_tokenizer() {
    for name in CHECKPOINTS {
        let r = reference(name);
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
        let r = reference(name);
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
        let r = reference(name);
        let model = Marian::load(&dir(name), &Device::Cpu).expect("model loads");
        let inputs = batch_inputs(&r);
        let f = &r["forward"];
        let (hidden, _) = model.encode(&inputs).expect("encodes");
        let got: Vec<f32> = hidden.flatten_all().unwrap().to_vec1().unwrap();
        let want = floats(&f["encoder_last_hidden_state"]["data"]);
        let d = max_diff(&got, &want);
        assert!(d <= TOLERANCE, "{name}: encoder states differ by {d}");

        let dec: Vec<Vec<u32>> = f["decoder_input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let steps = dec[0].len();
        let vocab = model.seq2seq_config().vocab_size;
        let mut state = model.start(&inputs, 1).expect("starts");
        let mut logits = vec![vec![]; inputs.len()];
        for t in 0..steps {
            let tokens: Vec<u32> = dec.iter().map(|d| d[t]).collect();
            let out = model.step(&mut state, &tokens).expect("steps");
            for (i, l) in logits.iter_mut().enumerate() {
                l.extend_from_slice(&out[i * vocab..(i + 1) * vocab]);
            }
        }
        let got: Vec<f32> = logits.concat();
        let want = floats(&f["decoder_logits"]["data"]);
        let d = max_diff(&got, &want);
        assert!(d <= TOLERANCE, "{name}: decoder logits differ by {d}");
    }
}

fn checkpoint_generation_config(name: &str) -> GenerationOverrides {
    let text = std::fs::read_to_string(dir(name).join("generation_config.json")).unwrap();
    GenerationOverrides::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn generate_matches_transformers_for_every_recorded_setting() {
    for name in CHECKPOINTS {
        let r = reference(name);
        let model = Marian::load(&dir(name), &Device::Cpu).expect("model loads");
        let tok = MarianTokenizer::from_dir(&dir(name)).expect("tokenizer loads");
        let inputs = batch_inputs(&r);
        let base = checkpoint_generation_config(name);
        let cases = r["generation"].as_array().unwrap();
        assert!(
            cases.len() >= 10,
            "{name}: only {} generation settings",
            cases.len()
        );
        for case in cases {
            let setting = case["name"].as_str().unwrap();
            let kwargs = GenerationOverrides::from_json(&case["kwargs"]).unwrap();
            let settings =
                GenerationSettings::resolve(&base.clone().then(&kwargs), &model.seq2seq_config())
                    .unwrap_or_else(|e| panic!("{name} {setting}: {e}"));
            if let Some(m) = case["min_greedy_margin"].as_f64() {
                assert!(
                    m >= TOLERANCE as f64,
                    "{name} {setting}: a greedy step is a near-tie ({m}); the fixture cannot decide it"
                );
            }
            let out = generate(&model, &inputs, &settings, &mut |_| true)
                .unwrap_or_else(|e| panic!("{name} {setting}: {e}"));
            let want: Vec<Vec<u32>> = case["sequences"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            assert_eq!(
                pad_outputs(&out, &settings),
                want,
                "{name} {setting}: sequences"
            );
            let texts: Vec<String> = out.iter().map(|o| tok.decode(o, true)).collect();
            let want_text: Vec<String> = case["text"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(texts, want_text, "{name} {setting}: text");
        }
    }
}

#[test]
fn each_input_alone_gives_what_it_gives_in_the_batch() {
    for name in CHECKPOINTS {
        let r = reference(name);
        let model = Marian::load(&dir(name), &Device::Cpu).expect("model loads");
        let inputs = batch_inputs(&r);
        let base = checkpoint_generation_config(name);
        for beams in [1usize, 4] {
            let kwargs = GenerationOverrides {
                num_beams: Some(beams),
                ..GenerationOverrides::default()
            };
            let settings =
                GenerationSettings::resolve(&base.clone().then(&kwargs), &model.seq2seq_config())
                    .unwrap();
            let batched = generate(&model, &inputs, &settings, &mut |_| true).unwrap();
            for (i, input) in inputs.iter().enumerate() {
                let alone = generate(&model, std::slice::from_ref(input), &settings, &mut |_| {
                    true
                })
                .unwrap();
                assert_eq!(alone[0], batched[i], "{name}: input {i} with {beams} beams");
            }
        }
    }
}

/// `precis translate --model DIR` on one sentence gives exactly the text of
/// transformers' `generate()` with the checkpoint's own settings.
#[test]
fn the_cli_translates_with_the_checkpoint_settings() {
    for name in CHECKPOINTS {
        let r = reference(name);
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
            let out = cli(home.path())
                .args(["translate", "--model"])
                .arg(dir(name))
                .args(["--to", lang, "--format", "json", "-"])
                .stdin_text(source.as_str().unwrap());
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let out = cli(home.path())
        .args(["translate", "--model"])
        .arg(dir("tiny-en-ru"))
        .args(["--to", "ru", "--format", "json", "-"])
        .stdin_text(article);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paragraphs = v["translations"][0]["paragraphs"].as_array().unwrap();
    assert_eq!(paragraphs.len(), 3);
    assert!(paragraphs
        .iter()
        .all(|p| !p.as_str().unwrap().trim().is_empty()));
}

fn cli(home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_precis"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRECIS_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("PRECIS_PIP", "false")
        .env_remove("PRECIS_MODEL")
        .env_remove("PRECIS_CONFIG");
    cmd
}

trait StdinText {
    fn stdin_text(&mut self, text: &str) -> std::process::Output;
}

impl StdinText for std::process::Command {
    fn stdin_text(&mut self, text: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("precis starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}
