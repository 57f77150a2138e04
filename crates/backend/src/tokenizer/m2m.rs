//! The tokenizers of many-to-many translators, which put the source
//! language's token beside every input, built as transformers 5.24 builds
//! them (the fixtures under `tests/fixtures/m2m100/` were recorded with it):
//!
//! - **NLLB-200** (`NllbTokenizer`, `tokenizer.json`): BPE, see
//!   [`Family::Nllb`]; FLORES-200 codes (`rus_Cyrl`) are special tokens;
//!   an input is `code … </s>`, or `… </s> code` with `legacy_behaviour`.
//! - **M2M100** (`M2M100Tokenizer`, `vocab.json` + `sentencepiece.bpe.model`):
//!   SentencePiece (BPE) pieces numbered by `vocab.json` (a piece it lacks
//!   is `<unk>`), text split first at `<s>` `</s>` `<unk>` `<pad>`; the
//!   `__ru__` codes take the ids after the vocabulary, in fairseq's order;
//!   an input is `__xx__ … </s>`. Whether these codes are special tokens
//!   (dropped by `decode(…, skip_special_tokens=True)`) follows the
//!   checkpoint's special-token lists as transformers 5.24 reads them (see
//!   `codes_are_special`): the hub's checkpoints make them special, a
//!   tokenizer saved by transformers 5 with an empty list does not, and its
//!   text keeps `__ru__`, in transformers and in precis alike.
//!
//! Languages are named by ISO 639-1 codes and mapped to each family's token
//! through [`crate::languages`].

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::checkpoint::{
    invalid, read_json, CheckpointTokenizer, CheckpointTokenizerError, Family,
};
use super::marian::{clean_up_tokenization, next_special};
use super::sentencepiece::SentencePiece;
use crate::languages::{self, LANGUAGES};

/// `M2M100Tokenizer`'s language codes (`language_codes="m2m100"`), in the
/// order that gives their ids.
#[rustfmt::skip]
const M2M100_CODES: &[&str] = &[
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha", "he",
    "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk", "km", "kn",
    "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl",
    "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl", "so", "sq",
    "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi", "wo", "xh",
    "yi", "yo", "zh", "zu",
];

/// The same for `language_codes="wmt21"`.
const WMT21_CODES: &[&str] = &["en", "ha", "is", "ja", "cs", "ru", "zh", "de"];

/// Which tokenizer a many-to-many checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManyToManyKind {
    /// `NllbTokenizer`: FLORES-200 codes.
    Nllb,
    /// `M2M100Tokenizer`: `__xx__` codes.
    M2M100,
}

/// The M2M100 pipeline: SentencePiece pieces through `vocab.json`.
#[derive(Debug, Clone)]
struct M2M100Vocab {
    spm: SentencePiece,
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    /// `<s>` `</s>` `<unk>` `<pad>`: texts and ids, longest first.
    special: Vec<(String, u32)>,
    unk_id: u32,
    clean_up: bool,
    /// Whether the language codes are special tokens (dropped when
    /// decoding skips special tokens), as [`codes_are_special`] decides.
    codes_special: bool,
}

#[derive(Debug, Clone)]
enum Pipeline {
    Nllb {
        inner: Box<CheckpointTokenizer>,
        /// `legacy_behaviour`: the code after `</s>`, not before the text.
        legacy: bool,
    },
    M2M100(Box<M2M100Vocab>),
}

/// A many-to-many translator's tokenizer.
#[derive(Debug, Clone)]
pub struct ManyToManyTokenizer {
    pipeline: Pipeline,
    /// Every language token: its text and id.
    codes: HashMap<String, u32>,
    /// The same by id (decoding reads it).
    code_tokens: HashMap<u32, String>,
    eos_id: u32,
    max_length: Option<usize>,
}

/// `tokenizer_config.json`, or null when there is none.
fn tokenizer_config(dir: &Path) -> Result<Value, CheckpointTokenizerError> {
    let path = dir.join("tokenizer_config.json");
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(Value::Null)
    }
}

impl ManyToManyKind {
    /// The tokenizer of the checkpoint in `dir`: the class its
    /// `tokenizer_config.json` (or `config.json`) names, else by its files
    /// (`tokenizer.json`: NLLB; `vocab.json`: M2M100).
    pub fn of_dir(dir: &Path) -> Option<Self> {
        let class = |file: &str| -> Option<String> {
            let text = std::fs::read_to_string(dir.join(file)).ok()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            value["tokenizer_class"].as_str().map(str::to_string)
        };
        let named = class("tokenizer_config.json").or_else(|| class("config.json"));
        match named.as_deref() {
            Some(c) if c.starts_with("Nllb") => Some(Self::Nllb),
            Some(c) if c.starts_with("M2M100") => Some(Self::M2M100),
            _ if dir.join("tokenizer.json").is_file() => Some(Self::Nllb),
            _ if dir.join("vocab.json").is_file() => Some(Self::M2M100),
            _ => None,
        }
    }

    /// The family's token for an ISO 639-1 code (`rus_Cyrl`, `__ru__`), when
    /// the language table knows the code.
    pub fn token(self, code: &str) -> Option<String> {
        match self {
            Self::Nllb => languages::language(code).map(|l| l.flores.to_string()),
            Self::M2M100 => languages::language(code).map(|l| format!("__{}__", l.code)),
        }
    }
}

impl ManyToManyTokenizer {
    /// Loads the tokenizer of the checkpoint in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, CheckpointTokenizerError> {
        let kind =
            ManyToManyKind::of_dir(dir).ok_or_else(|| CheckpointTokenizerError::Missing {
                dir: dir.to_path_buf(),
                expected:
                    "tokenizer.json (NLLB), or vocab.json and sentencepiece.bpe.model (M2M100)",
            })?;
        let config = tokenizer_config(dir)?;
        let max_length = config["model_max_length"]
            .as_u64()
            .filter(|&n| n < 1 << 40)
            .map(|n| n as usize);
        let (pipeline, codes, eos_id) = match kind {
            ManyToManyKind::Nllb => {
                let inner = Box::new(CheckpointTokenizer::from_dir(dir, Family::Nllb)?);
                let eos_id = inner
                    .eos_id()
                    .ok_or_else(|| invalid(&dir.join("tokenizer.json"), "it has no </s>"))?;
                // Every FLORES-200-shaped token the vocabulary has.
                let codes = LANGUAGES
                    .iter()
                    .filter_map(|l| Some((l.flores.to_string(), inner.token_to_id(l.flores)?)))
                    .collect();
                let legacy = config["legacy_behaviour"].as_bool().unwrap_or(false);
                (Pipeline::Nllb { inner, legacy }, codes, eos_id)
            }
            ManyToManyKind::M2M100 => {
                let (vocab, codes, eos_id) = m2m100(dir, &config)?;
                (Pipeline::M2M100(Box::new(vocab)), codes, eos_id)
            }
        };
        let code_tokens = codes.iter().map(|(t, &i)| (i, t.clone())).collect();
        Ok(Self {
            pipeline,
            codes,
            code_tokens,
            eos_id,
            max_length,
        })
    }

    /// Which tokenizer this is.
    pub fn kind(&self) -> ManyToManyKind {
        match self.pipeline {
            Pipeline::Nllb { .. } => ManyToManyKind::Nllb,
            Pipeline::M2M100(_) => ManyToManyKind::M2M100,
        }
    }

    /// The id of a language's token, by ISO 639-1 code, when the vocabulary
    /// has it.
    pub fn language_id(&self, code: &str) -> Option<u32> {
        self.codes.get(&self.kind().token(code)?).copied()
    }

    /// The ISO 639-1 codes of the languages whose tokens the vocabulary has,
    /// sorted.
    pub fn languages(&self) -> Vec<String> {
        LANGUAGES
            .iter()
            .filter(|l| self.language_id(l.code).is_some())
            .map(|l| l.code.to_string())
            .collect()
    }

    /// `model_max_length` of `tokenizer_config.json`, when it names one.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// The end id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The ids of `text` in the language `source` (ISO 639-1), the
    /// language's token and `</s>` around them (what `tokenizer(text)`
    /// gives with `src_lang` set).
    pub fn encode(&self, text: &str, source: &str) -> Result<Vec<u32>, String> {
        let code = self.language_id(source).ok_or_else(|| {
            format!("the tokenizer has no token for the source language `{source}`")
        })?;
        Ok(match &self.pipeline {
            Pipeline::Nllb { inner, legacy } => {
                let ids = inner.encode(text)?;
                if *legacy {
                    [ids, vec![self.eos_id, code]].concat()
                } else {
                    [vec![code], ids, vec![self.eos_id]].concat()
                }
            }
            Pipeline::M2M100(v) => [vec![code], v.ids(text), vec![self.eos_id]].concat(),
        })
    }

    /// The text of `ids`, as `tokenizer.decode(ids, skip_special_tokens)`
    /// gives it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        match &self.pipeline {
            Pipeline::Nllb { inner, .. } => inner.decode(ids, skip_special_tokens),
            Pipeline::M2M100(v) => Ok(v.decode(ids, skip_special_tokens, &self.code_tokens)),
        }
    }
}

/// The M2M100 pipeline, its language tokens and its end id.
#[allow(clippy::type_complexity)]
fn m2m100(
    dir: &Path,
    config: &Value,
) -> Result<(M2M100Vocab, HashMap<String, u32>, u32), CheckpointTokenizerError> {
    let (vocab_path, spm_path) = (dir.join("vocab.json"), dir.join("sentencepiece.bpe.model"));
    if !vocab_path.is_file() || !spm_path.is_file() {
        return Err(CheckpointTokenizerError::Missing {
            dir: dir.to_path_buf(),
            expected: "vocab.json and sentencepiece.bpe.model (an M2M100 tokenizer)",
        });
    }
    let encoder: HashMap<String, u32> =
        serde_json::from_value(read_json(&vocab_path)?).map_err(|e| invalid(&vocab_path, e))?;
    let spm = SentencePiece::from_file(&spm_path).map_err(|e| invalid(&spm_path, e))?;
    // A token is a string, or an object with `content`.
    let token = |key: &str, default: &str| -> String {
        match &config[key] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        }
    };
    let mut special = Vec::new();
    for (key, default) in [
        ("bos_token", "<s>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("pad_token", "<pad>"),
    ] {
        let text = token(key, default);
        let id = *encoder
            .get(&text)
            .ok_or_else(|| invalid(&vocab_path, format!("it has no `{text}`")))?;
        special.push((text, id));
    }
    let (eos_id, unk_id) = (special[1].1, special[2].1);
    special.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    let list = match config["language_codes"].as_str().unwrap_or("m2m100") {
        "m2m100" => M2M100_CODES,
        "wmt21" => WMT21_CODES,
        other => {
            return Err(invalid(
                &dir.join("tokenizer_config.json"),
                format!("language_codes `{other}` is neither `m2m100` nor `wmt21`"),
            ))
        }
    };
    let base = encoder.len() as u32;
    let codes: HashMap<String, u32> = (0u32..)
        .zip(list)
        .map(|(i, c)| (format!("__{c}__"), base + i))
        .collect();
    let codes_special = codes_are_special(dir, config, &codes)?;
    let decoder = encoder.iter().map(|(k, &v)| (v, k.clone())).collect();
    let vocab = M2M100Vocab {
        spm,
        encoder,
        decoder,
        special,
        unk_id,
        clean_up: config["clean_up_tokenization_spaces"]
            .as_bool()
            .unwrap_or(false),
        codes_special,
    };
    Ok((vocab, codes, eos_id))
}

/// Whether an M2M100 checkpoint's language codes are special tokens, as
/// transformers 5.24 reads its files: the special-token list of
/// `special_tokens_map.json`, else of `tokenizer_config.json`
/// (`additional_special_tokens` or `extra_special_tokens`), says so. A
/// checkpoint that writes no list (a transformers 4 save, such as
/// facebook/m2m100_418M, read without its `special_tokens_map.json`) has
/// them special, as `M2M100Tokenizer` 4.x registered them; one saved by
/// transformers 5 with an empty list has not, and its decoded text starts
/// with the `__xx__` code, as transformers' does.
fn codes_are_special(
    dir: &Path,
    config: &Value,
    codes: &HashMap<String, u32>,
) -> Result<bool, CheckpointTokenizerError> {
    let map_path = dir.join("special_tokens_map.json");
    let map = if map_path.is_file() {
        read_json(&map_path)?
    } else {
        Value::Null
    };
    let listed = |value: &Value| -> Option<bool> {
        let lists: Vec<&Value> = ["additional_special_tokens", "extra_special_tokens"]
            .iter()
            .filter_map(|k| value.get(k))
            .collect();
        if lists.is_empty() {
            return None;
        }
        let token_text = |t: &Value| -> Option<String> {
            match t {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let entries = lists.iter().flat_map(|l| match l {
            Value::Array(a) => a.iter().collect::<Vec<_>>(),
            Value::Object(o) => o.values().collect(),
            _ => Vec::new(),
        });
        Some(
            entries
                .filter_map(token_text)
                .any(|t| codes.contains_key(&t)),
        )
    };
    Ok(listed(&map).or_else(|| listed(config)).unwrap_or(true))
}

impl M2M100Vocab {
    /// Ids of `text`: split at the special tokens' texts, each other stretch
    /// segmented, pieces numbered by `vocab.json`.
    fn ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = next_special(&self.special, rest);
            let chunk = next.map_or(rest, |(at, _, _)| &rest[..at]);
            if !chunk.is_empty() {
                out.extend(
                    self.spm
                        .encode(chunk)
                        .into_iter()
                        .map(|p| self.encoder.get(&p.text).copied().unwrap_or(self.unk_id)),
                );
            }
            match next {
                Some((at, len, id)) => {
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => break,
            }
        }
        out
    }

    /// `M2M100Tokenizer.decode`: tokens of the ids (`<unk>` past the
    /// vocabulary), special ones dropped when `skip`; runs of pieces
    /// decoded by SentencePiece, special tokens written as they are, the
    /// whole trimmed.
    fn decode(&self, ids: &[u32], skip: bool, codes: &HashMap<u32, String>) -> String {
        let unk = self
            .special
            .iter()
            .find(|(_, i)| *i == self.unk_id)
            .map_or("<unk>", |(t, _)| t.as_str());
        let mut out = String::new();
        let mut run: Vec<&str> = Vec::new();
        for &id in ids {
            let code = self.codes_special && codes.contains_key(&id);
            if skip && (code || self.special.iter().any(|(_, s)| *s == id)) {
                continue;
            }
            let token = codes
                .get(&id)
                .or_else(|| self.decoder.get(&id))
                .map(String::as_str)
                .unwrap_or(unk);
            if code || self.special.iter().any(|(s, _)| s == token) {
                out.push_str(&self.spm.decode_pieces(&run));
                out.push_str(token);
                run.clear();
            } else {
                run.push(token);
            }
        }
        out.push_str(&self.spm.decode_pieces(&run));
        let text = out.trim();
        if self.clean_up {
            clean_up_tokenization(text)
        } else {
            text.to_string()
        }
    }
}
