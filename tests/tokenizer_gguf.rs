//! The tokenizers rebuilt from real GGUF files, checked against references.
//!
//! Qwen2.5: every case of `tests/fixtures/tokenizer/qwen2.5.json` (written by
//! `scripts/make-tokenizer-fixture.py` with the Hugging Face reference
//! tokenizer) must encode to the reference ids and decode to the reference
//! text. SmolLM2: no reference `tokenizer.json` can be had here, so the checks
//! are round trips, single ids for control tokens, ids that follow from the
//! pre-tokenizer's rules, and chat prompts whose reference ids were published
//! (see `smollm2_chat_prompts_match_published_reference_ids`).
//!
//! The GGUF files are large and not in the repository. Each is named by an
//! environment variable (`PRECIS_TEST_QWEN_GGUF`, `PRECIS_TEST_SMOL_GGUF`) or
//! else fetched through the model store on first use (into `$PRECIS_HOME`); a
//! file that cannot be had fails the test.

mod common;

use std::fs::File;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use precis_backend::tokenizer::{tokenizer_from_gguf, GgufTokenizer};
use serde::Deserialize;

/// A GGUF file that these tests read, and where to look for it.
struct ModelFile {
    /// Environment variable naming the file directly.
    env: &'static str,
    /// Manifest id.
    id: &'static str,
}

const QWEN: ModelFile = ModelFile {
    env: "PRECIS_TEST_QWEN_GGUF",
    id: "qwen2.5-coder-0.5b-instruct-q4_k_m",
};

const SMOL: ModelFile = ModelFile {
    env: "PRECIS_TEST_SMOL_GGUF",
    id: "smollm2-135m-instruct-q4_1",
};

impl ModelFile {
    /// The tokenizer of this file, fetched through the model store on first use.
    fn tokenizer(&self) -> GgufTokenizer {
        let path = common::real_model_file(self.id, Some(self.env));
        let mut file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let content =
            Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        tokenizer_from_gguf(&content).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// Each file's tokenizer, built once for all the tests of this binary.
fn qwen() -> &'static GgufTokenizer {
    static CELL: OnceLock<GgufTokenizer> = OnceLock::new();
    CELL.get_or_init(|| QWEN.tokenizer())
}

fn smol() -> &'static GgufTokenizer {
    static CELL: OnceLock<GgufTokenizer> = OnceLock::new();
    CELL.get_or_init(|| SMOL.tokenizer())
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/qwen2.5.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn qwen2_5_ids_equal_the_reference() {
    let tok = qwen();
    let mut mismatches = Vec::new();
    for case in fixture().cases {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            mismatches.push(format!(
                "{:?}\n  ours:      {ids:?}\n  reference: {:?}",
                case.text, case.ids
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn qwen2_5_decodes_to_the_reference_text() {
    let tok = qwen();
    let mut round_trips = 0;
    for case in fixture().cases {
        let decoded = tok.decode(&case.ids).unwrap();
        assert_eq!(decoded, case.decoded, "ids of {:?}", case.text);
        round_trips += usize::from(decoded == case.text);
    }
    // Only the chat markers (dropped) and the text not in NFC (normalized)
    // fail to come back as they went in.
    assert_eq!(round_trips, fixture().cases.len() - 2);
}

#[test]
fn qwen2_5_metadata() {
    let tok = qwen();
    assert_eq!(tok.pre, "qwen2");
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.bos_id, Some(151_643));
    assert_eq!(tok.eos_id, Some(151_645));
    assert!(!tok.add_bos);
    assert_eq!(tok.stop_ids, vec![151_645, 151_643]);
    assert_eq!(tok.id_of("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_str(151_645), Some("<|im_end|>"));
    assert_eq!(tok.token_str(151_936), None);
    assert!(tok
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("<|im_start|>")));
    // User-defined tokens are single ids too, and stay in decoded text.
    let tool_call = tok.encode("<tool_call>").unwrap();
    assert_eq!(tool_call, vec![151_657]);
    assert_eq!(tok.decode(&tool_call).unwrap(), "<tool_call>");
    assert!(tok.decode(&[151_936]).is_err());
}

/// What `decode` gives back for `text`: all of it but the control tokens.
fn without_control_tokens(text: &str) -> String {
    text.replace("<|im_start|>", "").replace("<|im_end|>", "")
}

#[test]
fn smollm2_round_trips_the_fixture_texts() {
    let tok = smol();
    for case in fixture().cases {
        let ids = tok.encode(&case.text).unwrap();
        assert_eq!(
            tok.decode(&ids).unwrap(),
            without_control_tokens(&case.text),
            "{ids:?}"
        );
    }
}

#[test]
fn smollm2_control_tokens_are_single_ids() {
    let tok = smol();
    assert_eq!(tok.pre, "smollm");
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!((tok.bos_id, tok.eos_id), (Some(1), Some(2)));
    assert_eq!(tok.stop_ids, vec![2, 0]);
    // Ids 0..=16 are SmolLM2's control tokens, <|endoftext|> to <empty_output>.
    for id in 0..=16 {
        let text = tok.token_str(id).unwrap();
        assert_eq!(tok.encode(text).unwrap(), vec![id], "{text}");
        assert_eq!(tok.decode(&[id]).unwrap(), "", "{text}");
    }
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ids.len(), 5, "{ids:?}");
}

/// Ids that follow from the pre-tokenizer's rules and the vocabulary alone:
/// `Digits(individual_digits)` then GPT-2 byte-level.
#[test]
fn smollm2_ids_follow_the_pre_tokenizer_rules() {
    let tok = smol();
    let id = |token: &str| tok.id_of(token).unwrap();
    // Every digit stands alone, and so does the space before a number.
    assert_eq!(
        tok.encode("G20 2023").unwrap(),
        vec![
            id("G"),
            id("2"),
            id("0"),
            id("Ġ"),
            id("2"),
            id("0"),
            id("2"),
            id("3")
        ]
    );
    // Where digits-first differs from the GPT-2 regex alone (under which the
    // last space would go with the number): the spaces stay one piece.
    assert_eq!(
        tok.encode("to  2").unwrap(),
        vec![id("to"), id("ĠĠ"), id("2")]
    );
}

/// SmolLM2 chat prompts as the Hugging Face reference tokenizer
/// (`transformers`) encodes them. No reference `tokenizer.json` for SmolLM2
/// can be had here, so these ids come from public text that printed or pinned
/// the reference's output for SmolLM2-Instruct (135M and 360M share one
/// tokenizer): a vendor's SmolLM2-360M-Instruct guide (default system prompt,
/// "hello world") and two projects' integration tests, one of them asserting
/// equality with `transformers` (the French prompt). Three sources that agree
/// on the shared system-prompt prefix.
#[test]
fn smollm2_chat_prompts_match_published_reference_ids() {
    let tok = smol();
    let chat = |user: &str| {
        format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
    };
    let system = [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        407, 19712, 8182, 2, 198, 1, 4093, 198,
    ];
    let end = [2, 198, 1, 520, 9531, 198];
    let cases: [(&str, &[u32]); 3] = [
        ("hello world", &[28120, 905]),
        (
            "What is the capital of France?",
            &[1780, 314, 260, 3575, 282, 4649, 47],
        ),
        (
            "Quelle est la capitale de la France ? Réponds en une phrase.",
            &[
                65, 2726, 290, 1264, 2618, 47765, 1121, 367, 2618, 4649, 9148, 428, 2756, 96,
                19870, 430, 16520, 8715, 30,
            ],
        ),
    ];
    for (user, ids) in cases {
        let expected: Vec<u32> = system.iter().chain(ids).chain(&end).copied().collect();
        assert_eq!(tok.encode(&chat(user)).unwrap(), expected, "{user}");
    }
    // Replies published with those prompts decode to their texts, the final
    // <|im_end|> (2) dropped.
    let replies: [(&[u32], &str); 2] = [
        (
            &[504, 3575, 282, 4649, 314, 7042, 30, 2],
            "The capital of France is Paris.",
        ),
        (
            &[15319, 47765, 1121, 367, 2618, 4649, 1264, 7042, 30, 2],
            "La capitale de la France est Paris.",
        ),
    ];
    for (ids, text) in replies {
        assert_eq!(tok.decode(ids).unwrap(), text);
    }
}
