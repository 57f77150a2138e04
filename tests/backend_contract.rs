//! The backend contract, one suite run against every backend (the ripgrep
//! habit: the same tests over interchangeable engines): the fake model, the
//! GGUF decoder on SmolLM2-135M, and Marian, BART and T5 on the committed
//! test checkpoints. What the engine and the tasks rely on, whatever the
//! family:
//!
//! - every request of a batch gets exactly one result, an empty input too;
//! - an input longer than the model's limit is refused with
//!   `ContextOverflow`, never cut, and fails alone in its batch;
//! - a callback that says stop ends generation, reported as `Cancelled`;
//! - a request's result does not depend on the batch it ran in;
//! - the pieces streamed through the callback make up the final text.

mod common;

use std::path::Path;

use precis_backend::gguf::{GgufModel, GgufOptions};
use precis_backend::seq2seq::backend::{Seq2SeqBackend, Seq2SeqOptions};
use precis_backend::{
    Backend, BackendError, ChatMessage, FinishReason, Flow, Generation, GenerationParams,
    GenerationRequest, Placement, Quantize,
};

/// A chat model's request: `text` as the user's message, a short answer.
fn chat(text: &str) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage::user(format!(
            "Summarize in one sentence:\n\n{text}"
        ))],
        params: GenerationParams {
            max_new_tokens: 16,
            ..GenerationParams::default()
        },
        seq2seq: None,
        direction: None,
    }
}

/// An encoder-decoder model's request: the source text alone.
fn source(text: &str) -> GenerationRequest {
    GenerationRequest::source(text)
}

/// A many-to-many translator's request: the source text, English to Hindi.
fn into_hindi(text: &str) -> GenerationRequest {
    GenerationRequest::source(text).translating("en", "hi")
}

#[cfg(feature = "test-backend")]
fn fake() -> Box<dyn Backend> {
    Box::new(precis_backend::fake::FakeBackend::new("fake"))
}

fn smollm2() -> Box<dyn Backend> {
    let path = common::real_model_file(common::SMALLEST, None);
    Box::new(GgufModel::load(&path, GgufOptions::default()).expect("SmolLM2 loads"))
}

fn checkpoint(name: &str) -> Box<dyn Backend> {
    checkpoint_as(name, Quantize::None)
}

fn checkpoint_as(name: &str, quantize: Quantize) -> Box<dyn Backend> {
    load(name, quantize, false)
}

/// The checkpoint on the portable path (candle ops only: what a GPU runs).
fn portable(name: &str) -> Box<dyn Backend> {
    load(name, Quantize::None, true)
}

fn load(name: &str, quantize: Quantize, portable: bool) -> Box<dyn Backend> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let options = Seq2SeqOptions {
        id: name.to_string(),
        revision: "local".into(),
        target_languages: Vec::new(),
        license: None,
        gguf: None,
        quantize,
        placement: Placement::Cpu,
        portable,
    };
    Box::new(Seq2SeqBackend::load(&dir, options).expect("the test checkpoint loads"))
}

const ARTICLE: &str = "The city council approved the new budget on Tuesday. \
    It raises spending on schools and parks, and cuts the cost of bus fares.";
const OTHER: &str = "Heavy rain closed two bridges over the river on Monday.";

fn generate(
    model: &mut dyn Backend,
    requests: &[GenerationRequest],
) -> Vec<Result<Generation, BackendError>> {
    let out = model.generate(requests, &mut |_, _| Flow::Continue);
    assert_eq!(out.len(), requests.len(), "one result per request");
    out
}

fn text(result: &Result<Generation, BackendError>) -> String {
    match result {
        Ok(g) => g.text.clone(),
        Err(e) => panic!("generation failed: {e}"),
    }
}

fn empty_input_gets_its_result(model: &mut dyn Backend, request: fn(&str) -> GenerationRequest) {
    let out = generate(model, &[request(""), request(ARTICLE)]);
    // Empty input may be answered or refused, but never panics nor takes
    // its neighbour down.
    if let Err(e) = &out[0] {
        assert!(!e.to_string().is_empty());
    }
    text(&out[1]);
}

fn too_long_input_is_refused_alone(
    model: &mut dyn Backend,
    request: fn(&str) -> GenerationRequest,
) {
    let limit = model.info().context_length;
    let long = "budget ".repeat(limit + 16);
    let out = generate(model, &[request(&long), request(ARTICLE)]);
    match &out[0] {
        Err(BackendError::ContextOverflow { context_length, .. }) => {
            assert_eq!(*context_length, limit)
        }
        other => panic!("an input over the limit gave {other:?}"),
    }
    text(&out[1]);
}

fn stop_ends_generation(model: &mut dyn Backend, request: fn(&str) -> GenerationRequest) {
    let mut calls = 0;
    let out = model.generate(&[request(ARTICLE)], &mut |_, _| {
        calls += 1;
        Flow::Stop
    });
    assert_eq!(out.len(), 1);
    let g = out[0].as_ref().expect("a stopped generation is a result");
    assert_eq!(g.finish, FinishReason::Cancelled, "{g:?}");
    assert!(calls >= 1);
    let unstopped = text(&generate(model, &[request(ARTICLE)])[0]);
    assert!(
        g.generated_tokens <= 2 || g.text.len() < unstopped.len(),
        "stopping at once still produced {g:?}"
    );
}

fn batch_equals_alone(model: &mut dyn Backend, request: fn(&str) -> GenerationRequest) {
    let together = generate(model, &[request(ARTICLE), request(OTHER)]);
    let first = generate(model, &[request(ARTICLE)]);
    let second = generate(model, &[request(OTHER)]);
    assert_eq!(text(&together[0]), text(&first[0]));
    assert_eq!(text(&together[1]), text(&second[0]));
}

fn streamed_pieces_make_the_text(model: &mut dyn Backend, request: fn(&str) -> GenerationRequest) {
    let mut pieces = [String::new(), String::new()];
    let out = model.generate(&[request(ARTICLE), request(OTHER)], &mut |i, piece| {
        pieces[i].push_str(piece);
        Flow::Continue
    });
    for (streamed, result) in pieces.iter().zip(&out) {
        assert_eq!(streamed.trim(), text(result).trim());
    }
}

/// The contract's tests for one backend: `$make` loads it, `$request`
/// makes its kind of request.
macro_rules! contract {
    ($backend:ident, $make:expr, $request:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn empty_input_gets_its_result() {
                super::empty_input_gets_its_result(&mut *$make(), $request);
            }

            #[test]
            fn too_long_input_is_refused_alone() {
                super::too_long_input_is_refused_alone(&mut *$make(), $request);
            }

            #[test]
            fn stop_ends_generation() {
                super::stop_ends_generation(&mut *$make(), $request);
            }

            #[test]
            fn batch_equals_alone() {
                super::batch_equals_alone(&mut *$make(), $request);
            }

            #[test]
            fn streamed_pieces_make_the_text() {
                super::streamed_pieces_make_the_text(&mut *$make(), $request);
            }
        }
    };
}

#[cfg(feature = "test-backend")]
contract!(fake, fake, chat);
contract!(gguf_smollm2, smollm2, chat);
contract!(marian, || checkpoint("marian/tiny-en-ru"), source);
contract!(bart, || checkpoint("bart/tiny-cnn"), source);
contract!(t5, || checkpoint("t5/tiny-flan"), source);
contract!(nllb, || checkpoint("m2m100/tiny-nllb"), into_hindi);
contract!(m2m100, || checkpoint("m2m100/tiny-m2m100"), into_hindi);
contract!(marian_portable, || portable("marian/tiny-en-ru"), source);
contract!(bart_portable, || portable("bart/tiny-cnn"), source);
contract!(t5_portable, || portable("t5/tiny-flan"), source);
contract!(nllb_portable, || portable("m2m100/tiny-nllb"), into_hindi);
contract!(
    marian_int8,
    || checkpoint_as("marian/tiny-en-ru", Quantize::Int8),
    source
);
contract!(
    bart_int8,
    || checkpoint_as("bart/tiny-cnn", Quantize::Int8),
    source
);
contract!(
    t5_int8,
    || checkpoint_as("t5/tiny-flan", Quantize::Int8),
    source
);
contract!(
    nllb_int8,
    || checkpoint_as("m2m100/tiny-nllb", Quantize::Int8),
    into_hindi
);
