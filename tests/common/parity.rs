//! What the encoder-decoder parity tests share: reading the references that
//! `scripts/make_fixtures.py` records with transformers 5.24.0, comparing a
//! model's encoder states, decoder logits and `generate()` outputs with
//! them, and running the `precis` binary. Included with
//! `#[path = "common/parity.rs"] mod parity;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use precis_backend::seq2seq::{
    generate, pad_outputs, EncoderDecoder, GenerationConfig, GenerationSettings,
};
use precis_backend::BackendError;
use serde_json::Value;

/// Tolerance of tensor comparisons.
pub const TOLERANCE: f32 = 1e-4;

/// A fixture checkpoint directory: `tests/fixtures/{family}/{name}`, or
/// under `PRECIS_TEST_FIXTURES` when set (a test binary run on another
/// machine, as `scripts/gpu-check.sh` runs one, from another checkout).
pub fn fixture(family: &str, name: &str) -> PathBuf {
    let root = match std::env::var_os("PRECIS_TEST_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    };
    root.join(family).join(name)
}

/// A copy of the fixture directory `from` in `to` (created), every file
/// but those named in `except`: a checkpoint a test then edits.
pub fn copy_fixture(from: &Path, to: &Path, except: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap().path();
        let name = file.file_name().unwrap();
        if !except.iter().any(|e| name == *e) {
            std::fs::copy(&file, to.join(name)).unwrap();
        }
    }
}

/// `reference.json` of a fixture directory.
pub fn reference(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a float list")
        .iter()
        .map(|x| x.as_f64().expect("a float") as f32)
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a string list")
        .iter()
        .map(|t| t.as_str().expect("a string").to_string())
        .collect()
}

/// The forward batch's inputs without their padding.
pub fn batch_inputs(r: &Value) -> Vec<Vec<u32>> {
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

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "tensor sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Encoder states (from `encode`) and the recorded decoder steps' logits
/// within [`TOLERANCE`] of the reference's `forward`.
pub fn check_forward<M: EncoderDecoder>(
    name: &str,
    model: &M,
    encode: impl Fn(&[Vec<u32>]) -> Result<(Tensor, Tensor), BackendError>,
    r: &Value,
) {
    let inputs = batch_inputs(r);
    let f = &r["forward"];
    let (hidden, _) = encode(&inputs).expect("encodes");
    let (n, s, width) = hidden.dims3().unwrap();
    let got: Vec<f32> = hidden.flatten_all().unwrap().to_vec1().unwrap();
    let want = floats(&f["encoder_last_hidden_state"]["data"]);
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: encoder states of another shape"
    );
    // The tokens' rows: what padding rows hold is read by nothing (the
    // cross-attention masks them), and precis does not compute them.
    let tokens = |x: &[f32]| -> Vec<f32> {
        (0..n)
            .flat_map(|i| x[i * s * width..(i * s + inputs[i].len()) * width].to_vec())
            .collect()
    };
    let d = max_diff(&tokens(&got), &tokens(&want));
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
    let mut out = Vec::new();
    for t in 0..steps {
        let tokens: Vec<u32> = dec.iter().map(|d| d[t]).collect();
        model.step(&mut state, &tokens, &mut out).expect("steps");
        for (i, l) in logits.iter_mut().enumerate() {
            l.extend_from_slice(&out[i * vocab..(i + 1) * vocab]);
        }
    }
    let got: Vec<f32> = logits.concat();
    let want = floats(&f["decoder_logits"]["data"]);
    let d = max_diff(&got, &want);
    assert!(d <= TOLERANCE, "{name}: decoder logits differ by {d}");
}

/// Every recorded `generate()` setting gives the reference's padded
/// sequences and texts (`decode` skips special tokens). `base` is what the
/// recorded `kwargs` go over; cases whose name `skip` accepts are left out.
pub fn check_generation<M: EncoderDecoder>(
    name: &str,
    model: &M,
    base: &GenerationConfig,
    r: &Value,
    decode: impl Fn(&[u32]) -> String,
    skip: impl Fn(&str) -> bool,
) -> usize {
    let inputs = batch_inputs(r);
    let mut checked = 0;
    for case in r["generation"].as_array().unwrap() {
        let setting = case["name"].as_str().unwrap();
        if skip(setting) {
            continue;
        }
        let kwargs = GenerationConfig::from_json(&case["kwargs"]).unwrap();
        let settings =
            GenerationSettings::resolve(&base.clone().then(&kwargs), &model.seq2seq_config())
                .unwrap_or_else(|e| panic!("{name} {setting}: {e}"));
        if let Some(m) = case["min_greedy_margin"].as_f64() {
            assert!(
                m >= TOLERANCE as f64,
                "{name} {setting}: a greedy step is a near-tie ({m}); the fixture cannot decide it"
            );
        }
        let out = generate(model, &inputs, &settings, &mut |_| true)
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
        let texts: Vec<String> = out.iter().map(|o| decode(o)).collect();
        assert_eq!(texts, strings(&case["text"]), "{name} {setting}: text");
        checked += 1;
    }
    checked
}

/// Each of the forward batch's inputs generated alone gives what it gives
/// in the batch, greedy and with 4 beams.
pub fn check_alone_equals_batched<M: EncoderDecoder>(
    name: &str,
    model: &M,
    base: &GenerationConfig,
    r: &Value,
) {
    let inputs = batch_inputs(r);
    for beams in [1usize, 4] {
        let kwargs = GenerationConfig {
            num_beams: Some(beams),
            ..GenerationConfig::default()
        };
        let settings =
            GenerationSettings::resolve(&base.clone().then(&kwargs), &model.seq2seq_config())
                .unwrap();
        let batched = generate(model, &inputs, &settings, &mut |_| true).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            let alone =
                generate(model, std::slice::from_ref(input), &settings, &mut |_| true).unwrap();
            assert_eq!(alone[0], batched[i], "{name}: input {i} with {beams} beams");
        }
    }
}

/// Runs a command with `text` on its standard input.
pub trait StdinText {
    fn stdin_text(&mut self, text: &str) -> std::process::Output;

    /// [`StdinText::stdin_text`], asserting success (`what` names the case
    /// in the failure, with the command's stderr); the JSON it printed.
    fn stdin_json(&mut self, text: &str, what: &str) -> Value {
        let out = self.stdin_text(text);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the output is JSON")
    }
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

/// Each recorded output of the fixture, with its input: what transformers
/// generated under every recorded setting, the decoder start token dropped
/// and cut after the first end token; each (input, output) pair once.
pub fn recorded_pairs(dir: &Path, eos: u32) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let r = reference(dir);
    let inputs = batch_inputs(&r);
    let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
    for case in r["generation"].as_array().expect("generation cases") {
        for (input, seq) in inputs.iter().zip(case["sequences"].as_array().unwrap()) {
            let seq = ids(seq);
            let mut out: Vec<u32> = seq.into_iter().skip(1).collect();
            if let Some(end) = out.iter().position(|&t| t == eos) {
                out.truncate(end + 1);
            }
            let pair = (input.clone(), out);
            if !pair.1.is_empty() && !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
    }
    pairs.into_iter().unzip()
}

/// Positions where two runs' teacher-forced top-1 tokens agree, and the
/// positions read (rows paired in order, each row's tokens in order).
pub fn same_positions(a: &[Vec<u32>], b: &[Vec<u32>]) -> (usize, usize) {
    let total = a.iter().map(Vec::len).sum();
    let same = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p == q).count())
        .sum();
    (same, total)
}
