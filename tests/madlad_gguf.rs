//! MADLAD-400 as it is published for candle: a T5 checkpoint quantized to a
//! GGUF file (Q4_K, Q6_K, Q8_0) beside its `config.json` and tokenizer, run
//! on the kernels' quantized products.
//!
//! The checkpoint is `tests/fixtures/madlad/tiny-madlad-wide` (trained by
//! `scripts/make_fixtures.py` on tiny-madlad's tokenizer and data, every
//! matrix row a whole number of 256-value blocks), quantized here as
//! candle's `tensor-tools quantize` quantizes a safetensors checkpoint.
//! Checked: its f32 weights give transformers' greedy outputs; each
//! quantized file's teacher-forced top-1 agrees with the f32 path (see
//! [`quantized_top1_agrees_with_the_f32_path`] for what Q4_K itself loses);
//! greedy ids equal candle 0.11's `quantized_t5` on the same file (see
//! [`candle_quantized_t5_gives_the_same_ids`] for where the two differ and
//! why); and the CLI translates with a GGUF checkpoint named by directory
//! or by file.

mod common;
#[path = "common/parity.rs"]
mod parity;

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use parity::{ids, reference, StdinText};
use precis_backend::seq2seq::portable::Portable;
use precis_backend::seq2seq::t5::T5;
use precis_backend::seq2seq::{generate, EncoderDecoder, GenerationConfig, GenerationSettings};
use precis_backend::tokenizer::checkpoint::{CheckpointTokenizer, Family};

const TYPES: [GgmlDType; 3] = [GgmlDType::Q8_0, GgmlDType::Q6K, GgmlDType::Q4K];

fn wide() -> PathBuf {
    parity::fixture("madlad", "tiny-madlad-wide")
}

/// Where the wide checkpoint's tokenizer lives (it is not copied).
fn tokenizer_dir() -> PathBuf {
    parity::fixture("madlad", "tiny-madlad")
}

/// `dir/model-<type>.gguf`: the wide checkpoint quantized as candle's
/// `tensor-tools quantize` does it (every matrix whose rows are whole
/// blocks of `dtype` in `dtype`, everything else in F32, no metadata), in a
/// checkpoint directory with `config.json`, `generation_config.json` and
/// the tokenizer.
fn quantize(dtype: GgmlDType, dir: &Path) -> PathBuf {
    write_checkpoint(dtype, dir, false)
}

/// [`quantize`], then every tensor expanded back to F32: the quantized
/// weights' values, multiplied in f32.
fn quantized_values_in_f32(dtype: GgmlDType, dir: &Path) -> PathBuf {
    write_checkpoint(dtype, dir, true)
}

fn write_checkpoint(dtype: GgmlDType, dir: &Path, expand: bool) -> PathBuf {
    let tensors =
        candle_core::safetensors::load(wide().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut quantized = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = tensors[name].to_dtype(DType::F32).unwrap();
        let whole_blocks = t.rank() == 2 && t.dim(1).unwrap().is_multiple_of(dtype.block_size());
        let mut q =
            QTensor::quantize(&t, if whole_blocks { dtype } else { GgmlDType::F32 }).unwrap();
        if expand {
            q = QTensor::quantize(&q.dequantize(&Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
        }
        quantized.push((name.as_str(), q));
    }
    let path = dir.join(format!("model-{dtype:?}.gguf").to_lowercase());
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (*n, q)).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[], &refs).unwrap();
    for (from, name) in [
        (wide(), "config.json"),
        (wide(), "generation_config.json"),
        (tokenizer_dir(), "tokenizer.json"),
        (tokenizer_dir(), "tokenizer_config.json"),
        (tokenizer_dir(), "spiece.model"),
    ] {
        std::fs::copy(from.join(name), dir.join(name)).unwrap();
    }
    path
}

/// The storage type of a tensor of a GGUF file.
fn stored_type(path: &Path, name: &str) -> GgmlDType {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    content.tensor_infos[name].ggml_dtype
}

/// The reference's inputs and transformers' greedy outputs, into Russian
/// and into Hindi.
fn cases() -> Vec<(Vec<u32>, Vec<u32>)> {
    let r = reference(&wide());
    let mut out = Vec::new();
    for lang in ["ru", "hi"] {
        let g = &r["greedy"][lang];
        for (input, greedy) in g["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(g["greedy"].as_array().unwrap())
        {
            out.push((ids(input), ids(greedy)));
        }
    }
    out
}

fn greedy_settings(model: &T5, max_length: Option<usize>) -> GenerationSettings {
    let text = std::fs::read_to_string(wide().join("generation_config.json")).unwrap();
    let mut config = GenerationConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    config.num_beams = Some(1);
    if max_length.is_some() {
        config.max_length = max_length;
    }
    GenerationSettings::resolve(&config, &model.seq2seq_config()).unwrap()
}

#[test]
fn f32_weights_give_transformers_greedy_outputs() {
    let model = T5::load(&wide(), &Device::Cpu).expect("f16 safetensors load in f32");
    let settings = greedy_settings(&model, None);
    let cases = cases();
    let inputs: Vec<Vec<u32>> = cases.iter().map(|(i, _)| i.clone()).collect();
    let out = generate(&model, &inputs, &settings, &mut |_| true).unwrap();
    for (i, ((_, want), got)) in cases.iter().zip(&out).enumerate() {
        assert_eq!(got, want, "input {i}");
    }
}

/// The argmax of each step's logits when every row is fed `sequences`
/// (teacher forcing), row after row.
fn teacher_forced_top1<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    sequences: &[Vec<u32>],
) -> Vec<Vec<u32>> {
    let vocab = model.seq2seq_config().vocab_size;
    let mut top1 = Vec::new();
    for (input, sequence) in inputs.iter().zip(sequences) {
        let mut state = model.start(std::slice::from_ref(input), 1).unwrap();
        let mut row = Vec::new();
        for &token in &sequence[..sequence.len() - 1] {
            let mut logits = Vec::new();
            model.step(&mut state, &[token], &mut logits).unwrap();
            assert_eq!(logits.len(), vocab);
            let best = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            row.push(best as u32);
        }
        top1.push(row);
    }
    top1
}

/// Sentences of the fixture's training corpus (`CORPUS` in
/// `scripts/make_fixtures.py`), where the small model is as sure of its
/// words as a real translator is on real text; the reference's inputs are
/// not, and its greedy outputs loop.
const SEEN: [&str; 6] = [
    "The minister arrived in Delhi on Monday.",
    "Antony J. Blinken met the foreign minister of India.",
    "The U.S. economy grew by 2.4 percent last year.",
    "Prices rose for the third month in a row.",
    "\"We will not stop,\" the president said.",
    "The talks will continue on Friday.",
];

/// The reference's inputs and [`SEEN`], into Russian and Hindi, each with
/// the f32 weights' greedy output (transformers' for the reference's).
fn teacher_cases(f32_model: &T5) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let tok = CheckpointTokenizer::from_dir(&tokenizer_dir(), Family::T5).unwrap();
    let (mut inputs, mut sequences): (Vec<_>, Vec<_>) = cases().into_iter().unzip();
    let mut seen = Vec::new();
    for lang in ["ru", "hi"] {
        for text in SEEN {
            seen.push(tok.encode(&format!("<2{lang}> {text}")).unwrap());
        }
    }
    let settings = greedy_settings(f32_model, None);
    sequences.extend(generate(f32_model, &seen, &settings, &mut |_| true).unwrap());
    inputs.extend(seen);
    (inputs, sequences)
}

/// Top-1 agreement of `model` with `want`, and the number of steps.
fn agreement<M: EncoderDecoder>(
    model: &M,
    inputs: &[Vec<u32>],
    sequences: &[Vec<u32>],
    want: &[Vec<u32>],
) -> (usize, usize) {
    let got = teacher_forced_top1(model, inputs, sequences);
    parity::same_positions(want, &got)
}

/// Teacher-forced top-1 of each GGUF file against the f32 path.
///
/// Two comparisons per type. Against the quantized values multiplied in
/// f32: what precis's quantized products (activations quantized to Q8_0 or
/// Q8_K blocks, as GGML does) cost, ≥ 98% for every type. Against the
/// original f32 weights: that plus what the format loses, ≥ 98% for Q8_0
/// and Q6_K. Q4_K's 4-bit weights move this small model's top token on
/// about one step in eight (measured here: 0.87 in all, ≈ 0.79 on the
/// reference's looping outputs, ≈ 0.93 on seen sentences), whoever
/// multiplies them: candle's
/// `quantized_t5` gives the same ids on the same file (the test below).
/// That part is the file's, not precis's; it is held to 0.75 here so that a
/// regression in it still fails.
#[test]
fn quantized_top1_agrees_with_the_f32_path() {
    let f32_model = T5::load(&wide(), &Device::Cpu).unwrap();
    let (inputs, sequences) = teacher_cases(&f32_model);
    let original = teacher_forced_top1(&f32_model, &inputs, &sequences);
    for dtype in TYPES {
        let dir = tempfile::tempdir().unwrap();
        let path = quantize(dtype, dir.path());
        // Every matrix is quantized: nothing here runs in f32 by accident.
        for name in [
            "shared.weight",
            "lm_head.weight",
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            "decoder.block.0.layer.1.EncDecAttention.o.weight",
            "decoder.block.0.layer.2.DenseReluDense.wo.weight",
        ] {
            assert_eq!(stored_type(&path, name), dtype, "{name}");
        }
        let model = T5::load(dir.path(), &Device::Cpu).expect("the GGUF checkpoint loads");

        let expanded_dir = tempfile::tempdir().unwrap();
        quantized_values_in_f32(dtype, expanded_dir.path());
        let expanded = T5::load(expanded_dir.path(), &Device::Cpu).unwrap();
        let same_values = teacher_forced_top1(&expanded, &inputs, &sequences);
        let (agree, steps) = agreement(&model, &inputs, &sequences, &same_values);
        assert!(steps >= 600, "only {steps} steps");
        let rate = agree as f64 / steps as f64;
        eprintln!("{dtype:?}: top-1 agreement with its values in f32 {agree}/{steps} = {rate:.4}");
        assert!(
            rate >= 0.98,
            "{dtype:?}: {rate:.4} against its own values in f32"
        );

        let (agree, steps) = agreement(&model, &inputs, &sequences, &original);
        let rate = agree as f64 / steps as f64;
        eprintln!("{dtype:?}: top-1 agreement with the f32 weights {agree}/{steps} = {rate:.4}");
        let floor = if dtype == GgmlDType::Q4K { 0.75 } else { 0.98 };
        assert!(
            rate >= floor,
            "{dtype:?}: {rate:.4} against the f32 weights"
        );
    }
}

/// The portable path (what a GPU runs) on a GGUF checkpoint: its matrices
/// are dequantized at load, so it computes what the CPU path computes on
/// the same values expanded to f32 (the two differ only in summation
/// order): teacher-forced top-1 equal at every step but a near-tie's.
#[test]
fn the_portable_path_runs_a_gguf_checkpoint_dequantized() {
    let f32_model = T5::load(&wide(), &Device::Cpu).unwrap();
    let (inputs, sequences) = teacher_cases(&f32_model);
    let dir = tempfile::tempdir().unwrap();
    quantize(GgmlDType::Q4K, dir.path());
    let portable = Portable::load(dir.path(), &Device::Cpu, DType::F32).expect("it loads");
    let expanded_dir = tempfile::tempdir().unwrap();
    quantized_values_in_f32(GgmlDType::Q4K, expanded_dir.path());
    let expanded = T5::load(expanded_dir.path(), &Device::Cpu).unwrap();
    let want = teacher_forced_top1(&expanded, &inputs, &sequences);
    let (agree, steps) = agreement(&portable, &inputs, &sequences, &want);
    eprintln!("portable on Q4_K: {agree}/{steps} equal to its values in f32 on the CPU path");
    assert!(steps >= 600, "only {steps} steps");
    assert!(agree as f64 >= 0.995 * steps as f64, "{agree}/{steps}");
}

/// Ids over which candle's `quantized_t5` computes what transformers'
/// T5 does: candle buckets the decoder's relative positions as the
/// encoder's (bidirectionally: 16 buckets, 8 exact), transformers causally
/// (32 buckets, 16 exact), and the two first differ at a distance of 9
/// (candle's bucket 8 where transformers' is 9). Up to 9 decoder positions
/// every distance is below 9; past them candle's ids are candle's own.
const SAME_POSITIONS: usize = 9;

/// Greedy ids (start token first) of candle 0.11's `quantized_t5` on the
/// GGUF file, one input at a time, up to `max_length` ids.
fn candle_greedy(dir: &Path, gguf: &Path, input: &[u32], max_length: usize) -> Vec<u32> {
    use candle_transformers::models::quantized_t5 as qt5;
    let config: qt5::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(gguf, &Device::Cpu)
        .unwrap();
    let mut model = qt5::T5ForConditionalGeneration::load(vb, &config).unwrap();
    let ids = Tensor::new(input, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let encoded = model.encode(&ids).unwrap();
    let mut out = vec![config.decoder_start_token_id.unwrap_or(0) as u32];
    while out.len() < max_length {
        let last = Tensor::new(&out[out.len() - 1..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.decode(&last, &encoded).unwrap().squeeze(0).unwrap();
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if next == config.eos_token_id as u32 {
            break;
        }
    }
    out
}

/// Greedy ids equal candle 0.11's `quantized_t5` on the same file, over
/// the first [`SAME_POSITIONS`] ids, for Q4_K and Q6_K. Q8_0 is compared
/// and reported, not asserted: on x86 CPUs with AVX-512 or AVX-VNNI, candle
/// 0.11 multiplies Q8_0 matrices by repacked kernels that quantize the
/// activations in 256-value Q8_K blocks (`repack_x86::quantize_lhs`) where
/// GGML and precis use 32-value Q8_0 blocks, so the two products differ
/// by design and a near-tie can go either way. (Q4_K and Q6_K read Q8_K
/// activations in both; their sums differ only in order.)
#[test]
fn candle_quantized_t5_gives_the_same_ids() {
    let cases = cases();
    for dtype in TYPES {
        let dir = tempfile::tempdir().unwrap();
        let path = quantize(dtype, dir.path());
        let model = T5::load(dir.path(), &Device::Cpu).unwrap();
        let settings = greedy_settings(&model, Some(SAME_POSITIONS));
        let (mut same, mut same_to_48) = (0, 0);
        for (i, (input, _)) in cases.iter().enumerate() {
            let alone = std::slice::from_ref(input);
            let ours = generate(&model, alone, &settings, &mut |_| true).unwrap();
            let theirs = candle_greedy(dir.path(), &path, input, SAME_POSITIONS);
            if dtype != GgmlDType::Q8_0 {
                assert_eq!(ours[0], theirs, "{dtype:?}: input {i}");
            }
            same += usize::from(ours[0] == theirs);
            let long = greedy_settings(&model, None);
            let ours = generate(&model, alone, &long, &mut |_| true).unwrap();
            same_to_48 += usize::from(ours[0] == candle_greedy(dir.path(), &path, input, 48));
        }
        eprintln!(
            "{dtype:?}: {same}/{n} inputs give candle's ids to {SAME_POSITIONS}, {same_to_48}/{n} to 48",
            n = cases.len()
        );
    }
}

/// `precis translate --model DIR --to ru` with the GGUF checkpoint gives
/// the text of its greedy ids; so does naming the `.gguf` file itself; a
/// directory holding two GGUF files is refused with both names.
#[test]
fn the_cli_translates_with_a_gguf_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("madlad-q4k");
    std::fs::create_dir(&dir).unwrap();
    let path = quantize(GgmlDType::Q4K, &dir);
    let model = T5::load(&dir, &Device::Cpu).unwrap();
    let tok = CheckpointTokenizer::from_dir(&dir, Family::T5).unwrap();
    let source = "The minister will visit Moscow in May.";
    let input = tok.encode(&format!("<2ru> {source}")).unwrap();
    let ids = generate(
        &model,
        &[input],
        &greedy_settings(&model, None),
        &mut |_| true,
    )
    .unwrap()
    .remove(0);
    let want = tok.decode(&ids, true).unwrap();
    for target in [dir.as_path(), path.as_path()] {
        let v = common::precis_offline(home.path())
            .args(["translate", "--model"])
            .arg(target)
            .args(["--to", "ru", "--format", "json", "-"])
            .stdin_json(source, "precis translate");
        let t = &v["translations"][0];
        assert_eq!(t["model"]["family"], "t5", "{v}");
        assert_eq!(
            t["text"].as_str().unwrap(),
            want.trim(),
            "{}",
            target.display()
        );
    }
    quantize(GgmlDType::Q8_0, &dir);
    let out = common::precis_offline(home.path())
        .args(["translate", "--model"])
        .arg(&dir)
        .args(["--to", "ru", "-"])
        .stdin_text(source);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model-q4k.gguf") && err.contains("model-q8_0.gguf"),
        "{err}"
    );
}

/// A damaged or mismatched GGUF checkpoint is refused with a message that
/// names what is wrong, never a panic: a truncated file, a `config.json`
/// whose sizes are not the file's, and a type precis does not run.
#[test]
fn a_bad_gguf_checkpoint_is_refused() {
    let load_error = |dir: &Path| match T5::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };

    let dir = tempfile::tempdir().unwrap();
    let path = quantize(GgmlDType::Q8_0, dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("truncated"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    quantize(GgmlDType::Q4K, dir.path());
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"d_ff\": 512", "\"d_ff\": 768")).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("DenseReluDense") && err.contains("config.json") && err.contains("768"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    quantize(GgmlDType::Q2K, dir.path());
    let err = load_error(dir.path());
    assert!(err.contains("Q2K") && err.contains("does not run"), "{err}");
}
