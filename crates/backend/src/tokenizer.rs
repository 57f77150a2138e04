//! Tokenizers rebuilt from the vocabulary that a GGUF file carries.
//!
//! The GGUF weights this project runs (Qwen2.5, SmolLM2) come without a
//! Hugging Face `tokenizer.json`: their vocabulary, merges, token kinds,
//! pre-tokenizer name and chat template live in the file's `tokenizer.ggml.*`
//! metadata. [`tokenizer_from_gguf`] turns that metadata into a
//! [`tokenizers::Tokenizer`] configured exactly as the model's reference
//! `tokenizer.json` is, so that prompts get the ids the model was trained on;
//! `tests/tokenizer_gguf.rs` proves that id for id against the reference.
//!
//! Supported: `tokenizer.ggml.model = gpt2` (byte-level BPE) with
//! `tokenizer.ggml.pre` one of
//!
//! - `qwen2`: NFC, then Qwen2's split regex, then byte-level mapping without
//!   a regex of its own (Qwen2.5's `tokenizer.json`);
//! - `smollm`, `starcoder`: every digit alone, then byte-level with the GPT-2
//!   regex (SmolLM2's and StarCoder's `tokenizer.json`; llama.cpp gives these
//!   names the same two expressions, `\p{N}` and the GPT-2 one);
//! - `gpt2`: byte-level with the GPT-2 regex.
//!
//! Anything else is refused with an error naming the value, rather than
//! tokenized subtly wrong.

pub mod checkpoint;
pub mod m2m;
pub mod marian;
pub(crate) mod sentencepiece;

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

/// GGUF metadata keys read by this module.
mod key {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub(crate) const PRE: &str = "tokenizer.ggml.pre";
    pub(crate) const TOKENS: &str = "tokenizer.ggml.tokens";
    pub(crate) const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub(crate) const MERGES: &str = "tokenizer.ggml.merges";
    pub(crate) const BOS: &str = "tokenizer.ggml.bos_token_id";
    pub(crate) const EOS: &str = "tokenizer.ggml.eos_token_id";
    pub(crate) const EOT: &str = "tokenizer.ggml.eot_token_id";
    pub(crate) const EOM: &str = "tokenizer.ggml.eom_token_id";
    pub(crate) const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub(crate) const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// Qwen2's pre-tokenizer split pattern, verbatim from Qwen2.5's `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Control-token texts that end a turn or a document in the chat formats we
/// know; each one present in the vocabulary as a control token is a stop id.
const STOP_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// `tokenizer.ggml.token_type` values, as llama.cpp writes them.
mod token_type {
    /// A token that is matched in text as a whole and dropped when decoding.
    pub(crate) const CONTROL: i64 = 3;
    /// A token that is matched in text as a whole and kept when decoding.
    pub(crate) const USER_DEFINED: i64 = 4;
}

/// What can go wrong building or using a [`GgufTokenizer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A metadata key the tokenizer needs is absent.
    #[error("GGUF metadata has no `{0}`")]
    MissingMetadata(&'static str),
    /// A metadata key holds a value of the wrong type or an inconsistent one.
    #[error("GGUF metadata `{key}` is malformed: {reason}")]
    BadMetadata {
        /// The metadata key.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer kind this module cannot build.
    #[error("unsupported tokenizer model `{0}` in tokenizer.ggml.model (supported: gpt2)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not know.
    #[error(
        "unsupported pre-tokenizer `{0}` in tokenizer.ggml.pre \
         (supported: qwen2, smollm, starcoder, gpt2)"
    )]
    UnsupportedPreTokenizer(String),
    /// The `tokenizers` library refused the vocabulary built from the metadata.
    #[error("building the tokenizer from GGUF metadata failed: {0}")]
    Build(String),
    /// The `tokenizers` library failed to encode a text.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The `tokenizers` library failed to decode ids.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// An id given to decode is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// How many tokens the vocabulary has.
        vocab_size: usize,
    },
}

/// A tokenizer built from GGUF metadata, with the ids a generation loop needs.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The Hugging Face tokenizer: BPE model, normalizer, pre-tokenizer,
    /// byte-level decoder, and the control and user-defined tokens as added
    /// tokens (control ones marked special). No post-processor: nothing is
    /// added around an encoded text.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id`, if the file names one.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, if the file names one.
    pub eos_id: Option<u32>,
    /// Ids at which generation stops: the EOS id first, then the file's EOT
    /// and EOM ids, then each of `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`
    /// and similar end-of-turn texts present as control tokens; no duplicates.
    pub stop_ids: Vec<u32>,
    /// Whether the file asks for a BOS id before a prompt
    /// (`tokenizer.ggml.add_bos_token`, false when absent). [`Self::encode`]
    /// never adds one; a caller that honours this prepends [`Self::bos_id`].
    pub add_bos: bool,
    /// `tokenizer.chat_template`: the Jinja chat template, if present.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name, such as `qwen2`.
    pub pre: String,
    /// `tokenizer.ggml.tokens`, indexed by id.
    tokens: Vec<String>,
}

impl GgufTokenizer {
    /// The ids of `text`, with no BOS or anything else added.
    ///
    /// Control and user-defined tokens written in the text, such as
    /// `<|im_start|>`, become their single ids. Text from outside (an
    /// article) that contains such markers therefore reaches the model as
    /// markers: callers that build prompts from untrusted text should strip
    /// or escape them first.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, leaving out control tokens (`<|im_end|>` and the
    /// like) but keeping user-defined ones (`<tool_call>`).
    ///
    /// Bytes that do not form valid UTF-8 (a character cut between ids)
    /// become U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.tokens.len(),
            });
        }
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The vocabulary entry of `id` as the GGUF stores it, in byte-level
    /// form (a leading space shows as `Ġ`), or `None` past the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary entry given in its stored (byte-level) form,
    /// such as `<|im_end|>` or `Ġthe`.
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The bytes token `id` stands for (its vocabulary entry with the
    /// byte-level characters mapped back; a control token's own text), or
    /// nothing past the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        static BYTES: std::sync::LazyLock<std::collections::HashMap<char, u8>> =
            std::sync::LazyLock::new(|| {
                byte_chars()
                    .into_iter()
                    .enumerate()
                    .map(|(byte, c)| (c, byte as u8))
                    .collect()
            });
        let Some(entry) = self.token_str(id) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(entry.len());
        for c in entry.chars() {
            match BYTES.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }

    /// How many ids the vocabulary has (`tokenizer.ggml.tokens`' length).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// GPT-2's map from bytes to the printable characters that stand for
/// them in a byte-level vocabulary.
pub(crate) fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for byte in 0..256 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut by_byte = vec!['\0'; 256];
    for (byte, c) in printable.into_iter().zip(chars) {
        by_byte[byte as usize] = char::from_u32(c).expect("a valid char");
    }
    by_byte
}

/// Builds the tokenizer described by a GGUF file's metadata.
///
/// ```no_run
/// use candle_core::quantized::gguf_file::Content;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut file = std::fs::File::open("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")?;
/// let content = Content::read(&mut file)?;
/// let tokenizer = precis_backend::tokenizer::tokenizer_from_gguf(&content)?;
/// let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>")?;
/// assert_eq!(ids.first(), tokenizer.id_of("<|im_start|>").as_ref());
/// # Ok(())
/// # }
/// ```
pub fn tokenizer_from_gguf(content: &Content) -> Result<GgufTokenizer, TokenizerError> {
    from_metadata(&content.metadata)
}

/// The pre-tokenization families this module can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenization {
    /// NFC, Qwen2's split regex, byte-level without regex.
    Qwen2,
    /// Single digits, then byte-level with the GPT-2 regex.
    DigitsThenGpt2,
    /// Byte-level with the GPT-2 regex.
    Gpt2,
}

impl PreTokenization {
    fn from_name(pre: &str) -> Result<Self, TokenizerError> {
        match pre {
            "qwen2" => Ok(Self::Qwen2),
            "smollm" | "starcoder" => Ok(Self::DigitsThenGpt2),
            "gpt2" => Ok(Self::Gpt2),
            other => Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        }
    }

    fn normalizer(self) -> Option<NormalizerWrapper> {
        match self {
            Self::Qwen2 => Some(NFC.into()),
            Self::DigitsThenGpt2 | Self::Gpt2 => None,
        }
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(match self {
            Self::Qwen2 => {
                let split = Split::new(
                    SplitPattern::Regex(QWEN2_PATTERN.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| TokenizerError::Build(e.to_string()))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, false, false).into(),
                ])
                .into()
            }
            Self::DigitsThenGpt2 => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
        })
    }
}

/// Builds the tokenizer from a metadata map, as [`tokenizer_from_gguf`] does.
fn from_metadata(metadata: &HashMap<String, Value>) -> Result<GgufTokenizer, TokenizerError> {
    let model = string(metadata, key::MODEL)?.ok_or(TokenizerError::MissingMetadata(key::MODEL))?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.to_string()));
    }
    let pre = string(metadata, key::PRE)?.ok_or(TokenizerError::MissingMetadata(key::PRE))?;
    let pre_tokenization = PreTokenization::from_name(pre)?;

    let tokens = strings(metadata, key::TOKENS)?;
    if tokens.is_empty() {
        return Err(bad(key::TOKENS, "the vocabulary is empty"));
    }
    let vocab_size = tokens.len();
    let token_types = match metadata.get(key::TOKEN_TYPE) {
        None => vec![1; vocab_size],
        Some(value) => integers(value, key::TOKEN_TYPE)?,
    };
    if token_types.len() != vocab_size {
        return Err(bad(
            key::TOKEN_TYPE,
            format!("{} entries for {vocab_size} tokens", token_types.len()),
        ));
    }
    let merges = strings(metadata, key::MERGES)?
        .iter()
        .map(|merge| split_merge(merge))
        .collect::<Result<Merges, _>>()?;

    let bos_id = token_id(metadata, key::BOS, vocab_size)?;
    let eos_id = token_id(metadata, key::EOS, vocab_size)?;
    let add_bos = match metadata.get(key::ADD_BOS) {
        None => false,
        Some(value) => value
            .to_bool()
            .map_err(|e| bad(key::ADD_BOS, e.to_string()))?,
    };
    let chat_template = string(metadata, key::CHAT_TEMPLATE)?.map(str::to_string);

    // A text that occurs twice in the vocabulary encodes to its first id.
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| bad(key::TOKENS, "more than 2^32 tokens"))?;
        vocab.entry(token.clone()).or_insert(id);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    // The normalizer goes in before the added tokens, so that they are not
    // normalized once for nothing.
    tokenizer
        .with_normalizer(pre_tokenization.normalizer())
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenization.pre_tokenizer()?));
    tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));

    let mut control = Vec::new();
    let mut user_defined = Vec::new();
    for (token, &kind) in tokens.iter().zip(&token_types) {
        match kind {
            // Matched on the raw text, as the reference marks them
            // `normalized: false`.
            token_type::CONTROL => control.push(AddedToken::from(token.clone(), true)),
            token_type::USER_DEFINED => {
                user_defined.push(AddedToken::from(token.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;

    let stop_ids = stop_ids(metadata, &tokens, &token_types, eos_id)?;
    Ok(GgufTokenizer {
        tokenizer,
        bos_id,
        eos_id,
        stop_ids,
        add_bos,
        chat_template,
        pre: pre.to_string(),
        tokens,
    })
}

/// The EOS id, the file's EOT and EOM ids, then known end-of-turn control
/// tokens, without duplicates.
fn stop_ids(
    metadata: &HashMap<String, Value>,
    tokens: &[String],
    token_types: &[i64],
    eos_id: Option<u32>,
) -> Result<Vec<u32>, TokenizerError> {
    let mut ids = Vec::new();
    ids.extend(eos_id);
    ids.extend(token_id(metadata, key::EOT, tokens.len())?);
    ids.extend(token_id(metadata, key::EOM, tokens.len())?);
    let wanted: HashSet<&str> = STOP_TOKENS.iter().copied().collect();
    for (id, (token, &kind)) in tokens.iter().zip(token_types).enumerate() {
        if kind == token_type::CONTROL && wanted.contains(token.as_str()) {
            // The vocabulary's size was checked to fit in u32.
            ids.extend(u32::try_from(id).ok());
        }
    }
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}

/// Splits a GGUF merge rule `"left right"` at its first space after the first
/// character, as llama.cpp does.
fn split_merge(merge: &str) -> Result<(String, String), TokenizerError> {
    let first_len = merge.chars().next().map_or(0, char::len_utf8);
    match merge[first_len..].find(' ') {
        Some(at) => {
            let (left, right) = merge.split_at(first_len + at);
            Ok((left.to_string(), right[1..].to_string()))
        }
        None => Err(bad(
            key::MERGES,
            format!("merge {merge:?} is not two tokens separated by a space"),
        )),
    }
}

fn bad(key: &'static str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata {
        key,
        reason: reason.into(),
    }
}

/// A string-valued key, `None` when absent.
fn string<'a>(
    metadata: &'a HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, TokenizerError> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(
            key,
            format!("expected a string, found {:?}", other.value_type()),
        )),
    }
}

/// A required array of strings.
fn strings(
    metadata: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Vec<String>, TokenizerError> {
    let values = metadata
        .get(key)
        .ok_or(TokenizerError::MissingMetadata(key))?
        .to_vec()
        .map_err(|e| bad(key, e.to_string()))?;
    values
        .iter()
        .map(|value| match value {
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(
                key,
                format!("expected strings, found {:?}", other.value_type()),
            )),
        })
        .collect()
}

/// An array of integers of any width.
fn integers(value: &Value, key: &'static str) -> Result<Vec<i64>, TokenizerError> {
    value
        .to_vec()
        .map_err(|e| bad(key, e.to_string()))?
        .iter()
        .map(|v| integer(v).ok_or_else(|| bad(key, format!("{v:?} is not an integer"))))
        .collect()
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// An optional token id, which must fall inside the vocabulary.
fn token_id(
    metadata: &HashMap<String, Value>,
    key: &'static str,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    let id = integer(value).ok_or_else(|| bad(key, format!("{value:?} is not an integer")))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
        _ => Err(bad(
            key,
            format!("id {id} is outside the vocabulary of {vocab_size} tokens"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use candle_core::quantized::gguf_file;

    use super::*;

    /// A tiny byte-level vocabulary: `<|endoftext|>`, the 256 bytes, a few
    /// merges, `<|im_start|>`/`<|im_end|>` as control tokens and `<tool>` as a
    /// user-defined one.
    fn synthetic(pre: &str) -> HashMap<String, Value> {
        let mut tokens = vec!["<|endoftext|>".to_string()];
        tokens.extend(byte_chars().iter().map(char::to_string));
        let merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at"];
        for merge in merges {
            tokens.push(merge.replace(' ', ""));
        }
        tokens.extend(["<|im_start|>", "<|im_end|>", "<tool>"].map(String::from));
        let mut types = vec![1i32; tokens.len()];
        types[0] = 3;
        let n = types.len();
        types[n - 3] = 3;
        types[n - 2] = 3;
        types[n - 1] = 4;
        let strings =
            |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
        HashMap::from([
            (key::MODEL.to_string(), Value::String("gpt2".into())),
            (key::PRE.to_string(), Value::String(pre.into())),
            (key::TOKENS.to_string(), strings(tokens)),
            (
                key::TOKEN_TYPE.to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                key::MERGES.to_string(),
                strings(merges.map(String::from).to_vec()),
            ),
            (key::BOS.to_string(), Value::U32(0)),
            (key::EOS.to_string(), Value::U32((n - 2) as u32)),
            (key::ADD_BOS.to_string(), Value::Bool(false)),
            (
                key::CHAT_TEMPLATE.to_string(),
                Value::String("{{ messages }}".into()),
            ),
        ])
    }

    fn byte_id(byte: u8) -> u32 {
        1 + u32::from(byte)
    }

    #[test]
    fn merges_apply_and_ids_follow_the_vocabulary() {
        let tok = from_metadata(&synthetic("gpt2")).unwrap();
        let the = tok.id_of("Ġthe").unwrap();
        let cat = tok.id_of("Ġcat").unwrap();
        assert_eq!(tok.encode(" the cat").unwrap(), vec![the, cat]);
        assert_eq!(tok.token_str(the), Some("Ġthe"));
        assert_eq!(
            tok.encode("ab").unwrap(),
            vec![byte_id(b'a'), byte_id(b'b')]
        );
        assert_eq!(tok.vocab_size(), 1 + 256 + 6 + 3);
        assert_eq!(tok.token_str(10_000), None);
    }

    #[test]
    fn metadata_fields_are_carried_over() {
        let tok = from_metadata(&synthetic("smollm")).unwrap();
        let im_end = tok.id_of("<|im_end|>").unwrap();
        assert_eq!(tok.bos_id, Some(0));
        assert_eq!(tok.eos_id, Some(im_end));
        assert_eq!(tok.stop_ids, vec![im_end, 0]);
        assert!(!tok.add_bos);
        assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(tok.pre, "smollm");
    }

    #[test]
    fn special_tokens_in_text_are_single_ids_and_control_ones_vanish_on_decode() {
        let tok = from_metadata(&synthetic("qwen2")).unwrap();
        let start = tok.id_of("<|im_start|>").unwrap();
        let end = tok.id_of("<|im_end|>").unwrap();
        let tool = tok.id_of("<tool>").unwrap();
        let ids = tok.encode("<|im_start|>the<tool><|im_end|>").unwrap();
        assert_eq!(
            ids,
            vec![start, byte_id(b't'), tok.id_of("he").unwrap(), tool, end]
        );
        assert_eq!(tok.decode(&ids).unwrap(), "the<tool>");
    }

    #[test]
    fn round_trips_any_text_through_bytes() {
        for pre in ["qwen2", "smollm", "gpt2"] {
            let tok = from_metadata(&synthetic(pre)).unwrap();
            for text in [
                "",
                " the cat  sat\n\n",
                "Привет, мир! 123",
                "नमस्ते 😀",
                "\u{0}\t\r\n",
            ] {
                let ids = tok.encode(text).unwrap();
                assert_eq!(tok.decode(&ids).unwrap(), text, "pre {pre}");
            }
        }
    }

    #[test]
    fn digits_are_split_per_pre_tokenizer() {
        // With single digits and no "12" token, any pre-tokenizer gives bytes;
        // the difference shows through the leading space: GPT-2 keeps " 1" as
        // one piece, while digits-first leaves the space alone.
        let mut metadata = synthetic("gpt2");
        if let Some(Value::Array(tokens)) = metadata.get_mut(key::TOKENS) {
            tokens.push(Value::String("Ġ1".into()));
        }
        if let Some(Value::Array(merges)) = metadata.get_mut(key::MERGES) {
            merges.push(Value::String("Ġ 1".into()));
        }
        if let Some(Value::Array(types)) = metadata.get_mut(key::TOKEN_TYPE) {
            types.push(Value::I32(1));
        }
        let gpt2 = from_metadata(&metadata).unwrap();
        let space_one = gpt2.id_of("Ġ1").unwrap();
        assert_eq!(gpt2.encode(" 1").unwrap(), vec![space_one]);

        metadata.insert(key::PRE.into(), Value::String("smollm".into()));
        let smollm = from_metadata(&metadata).unwrap();
        assert_eq!(
            smollm.encode(" 1").unwrap(),
            vec![byte_id(b' '), byte_id(b'1')]
        );

        // Qwen2 splits digits alone and puts the space with nothing.
        metadata.insert(key::PRE.into(), Value::String("qwen2".into()));
        let qwen2 = from_metadata(&metadata).unwrap();
        assert_eq!(
            qwen2.encode(" 1").unwrap(),
            vec![byte_id(b' '), byte_id(b'1')]
        );
    }

    #[test]
    fn qwen2_normalizes_to_nfc() {
        let tok = from_metadata(&synthetic("qwen2")).unwrap();
        // "e" + combining acute becomes U+00E9, two bytes C3 A9.
        assert_eq!(
            tok.encode("e\u{301}").unwrap(),
            vec![byte_id(0xC3), byte_id(0xA9)]
        );
        let smollm = from_metadata(&synthetic("smollm")).unwrap();
        assert_eq!(smollm.encode("e\u{301}").unwrap().len(), 3);
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        let tok = from_metadata(&synthetic("gpt2")).unwrap();
        let err = tok.decode(&[1, 99_999]).unwrap_err();
        assert!(matches!(
            err,
            TokenizerError::UnknownTokenId { id: 99_999, .. }
        ));
    }

    #[test]
    fn unsupported_model_and_pre_are_named() {
        let mut metadata = synthetic("gpt2");
        metadata.insert(key::PRE.into(), Value::String("llama-bpe".into()));
        let err = from_metadata(&metadata).unwrap_err();
        assert!(err.to_string().contains("`llama-bpe`"), "{err}");

        metadata.insert(key::MODEL.into(), Value::String("llama".into()));
        let err = from_metadata(&metadata).unwrap_err();
        assert!(matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"));
        assert!(err.to_string().contains("`llama`"), "{err}");
    }

    #[test]
    fn malformed_metadata_is_an_error_not_a_panic() {
        let cases: Vec<(&str, Value)> = vec![
            (key::TOKENS, Value::U32(3)),
            (key::TOKENS, Value::Array(vec![])),
            (key::TOKENS, Value::Array(vec![Value::U8(1)])),
            (key::MERGES, Value::Array(vec![Value::String("abc".into())])),
            (key::MERGES, Value::Array(vec![Value::String("".into())])),
            (key::MERGES, Value::Array(vec![Value::String("x y".into())])),
            (key::TOKEN_TYPE, Value::Array(vec![Value::I32(1)])),
            (key::TOKEN_TYPE, Value::String("1".into())),
            (key::EOS, Value::U32(u32::MAX)),
            (key::BOS, Value::I32(-1)),
            (key::BOS, Value::String("0".into())),
            (key::ADD_BOS, Value::U8(1)),
            (key::PRE, Value::U8(1)),
            (key::CHAT_TEMPLATE, Value::Bool(true)),
        ];
        for (key, value) in cases {
            let mut metadata = synthetic("qwen2");
            metadata.insert(key.to_string(), value.clone());
            assert!(from_metadata(&metadata).is_err(), "{key} = {value:?}");
        }
        for key in [key::MODEL, key::PRE, key::TOKENS, key::MERGES] {
            let mut metadata = synthetic("qwen2");
            metadata.remove(key);
            let err = from_metadata(&metadata).unwrap_err();
            assert!(matches!(err, TokenizerError::MissingMetadata(k) if k == key));
        }
    }

    #[test]
    fn optional_metadata_may_be_absent() {
        let mut metadata = synthetic("gpt2");
        for key in [
            key::TOKEN_TYPE,
            key::BOS,
            key::EOS,
            key::ADD_BOS,
            key::CHAT_TEMPLATE,
        ] {
            metadata.remove(key);
        }
        let tok = from_metadata(&metadata).unwrap();
        assert_eq!((tok.bos_id, tok.eos_id), (None, None));
        assert!(tok.stop_ids.is_empty());
        assert_eq!(tok.chat_template, None);
        // Without token types nothing is a control token: markers are text.
        assert!(tok.encode("<|im_end|>").unwrap().len() > 1);
    }

    #[test]
    fn merge_splits_at_the_first_space_after_the_first_char() {
        assert_eq!(split_merge("Ġ t").unwrap(), ("Ġ".into(), "t".into()));
        assert_eq!(split_merge("  x").unwrap(), (" ".into(), "x".into()));
        assert_eq!(split_merge("é é").unwrap(), ("é".into(), "é".into()));
        assert!(split_merge("ab").is_err());
    }

    #[test]
    fn reads_through_a_gguf_file() {
        let metadata = synthetic("qwen2");
        let pairs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = Cursor::new(Vec::new());
        gguf_file::write(&mut file, &pairs, &[]).unwrap();
        file.set_position(0);
        let content = Content::read(&mut file).unwrap();
        let tok = tokenizer_from_gguf(&content).unwrap();
        assert_eq!(
            tok.encode(" the").unwrap(),
            vec![tok.id_of("Ġthe").unwrap()]
        );
    }
}
