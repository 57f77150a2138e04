//! The tokenizer of Marian (opus-mt) checkpoints: `source.spm` and
//! `target.spm` segment text, `vocab.json` numbers the pieces, exactly as
//! transformers' `MarianTokenizer` does it (the fixtures under
//! `tests/fixtures/marian/` were recorded with transformers 5.24.0):
//!
//! - text is first split at the special tokens' texts (`</s>`, `<unk>`,
//!   `<pad>`), which stand for themselves;
//! - a piece of text that starts with a language code (`>>rus<<`) gives that
//!   code as one token, then the rest is segmented;
//! - pieces missing from the vocabulary become `<unk>`; `</s>` ends every
//!   input;
//! - decoding maps ids back to pieces and joins them with the *source*
//!   SentencePiece model when the vocabulary is shared (transformers' default,
//!   kept for identical text), the target one when it is separate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::sentencepiece::{SentencePiece, SpmError};

/// What can go wrong loading a Marian tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarianTokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: crate::Cause,
    },
    /// A SentencePiece model could not be loaded.
    #[error("{path}: {source}")]
    Spm {
        /// The file.
        path: PathBuf,
        /// The error.
        source: SpmError,
    },
    /// A special token is missing from the vocabulary.
    #[error("the vocabulary {path} has no `{token}` token")]
    MissingToken {
        /// The vocabulary file.
        path: PathBuf,
        /// The token.
        token: String,
    },
}

/// A Marian checkpoint's tokenizer.
#[derive(Debug, Clone)]
pub struct MarianTokenizer {
    source: SentencePiece,
    target: SentencePiece,
    encoder: HashMap<String, u32>,
    target_encoder: Option<HashMap<String, u32>>,
    decoder: HashMap<u32, String>,
    /// Special tokens' texts and ids, longest text first.
    special: Vec<(String, u32)>,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    clean_up: bool,
    max_length: usize,
}

/// The settings read from `tokenizer_config.json`.
struct TokenizerConfig {
    unk: String,
    eos: String,
    pad: String,
    extra_special: Vec<String>,
    separate_vocabs: bool,
    target_vocab: Option<String>,
    clean_up: bool,
    max_length: usize,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self, MarianTokenizerError> {
        let path = dir.join("tokenizer_config.json");
        let value = if path.exists() {
            read_json(&path)?
        } else {
            serde_json::Value::Null
        };
        // A token is a string, or an object with `content`.
        let token = |key: &str, default: &str| -> String {
            match &value[key] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or(default)
                    .to_string(),
                _ => default.to_string(),
            }
        };
        let mut extra_special = Vec::new();
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(list) = value[key].as_array() {
                for t in list {
                    match t {
                        serde_json::Value::String(s) => extra_special.push(s.clone()),
                        serde_json::Value::Object(o) => {
                            if let Some(c) = o.get("content").and_then(|c| c.as_str()) {
                                extra_special.push(c.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Self {
            unk: token("unk_token", "<unk>"),
            eos: token("eos_token", "</s>"),
            pad: token("pad_token", "<pad>"),
            extra_special,
            separate_vocabs: value["separate_vocabs"].as_bool().unwrap_or(false),
            target_vocab: value["target_vocab_file"].as_str().map(str::to_string),
            clean_up: value["clean_up_tokenization_spaces"]
                .as_bool()
                .unwrap_or(false),
            max_length: value["model_max_length"]
                .as_u64()
                .filter(|&n| n > 0 && n < 1 << 30)
                .unwrap_or(512) as usize,
        })
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, MarianTokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| MarianTokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| MarianTokenizerError::Json {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn read_vocab(path: &Path) -> Result<HashMap<String, u32>, MarianTokenizerError> {
    let value = read_json(path)?;
    let object = value
        .as_object()
        .ok_or_else(|| MarianTokenizerError::Json {
            path: path.to_path_buf(),
            source: "expected an object of piece → id".into(),
        })?;
    object
        .iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .filter(|&id| id <= u32::MAX as u64)
                .ok_or_else(|| MarianTokenizerError::Json {
                    path: path.to_path_buf(),
                    source: format!("the id of `{k}` is not a token id").into(),
                })?;
            Ok((k.clone(), id as u32))
        })
        .collect()
}

fn read_spm(path: &Path) -> Result<SentencePiece, MarianTokenizerError> {
    SentencePiece::from_file(path).map_err(|source| MarianTokenizerError::Spm {
        path: path.to_path_buf(),
        source,
    })
}

impl MarianTokenizer {
    /// Loads `source.spm`, `target.spm`, `vocab.json` (and
    /// `tokenizer_config.json` when present) from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, MarianTokenizerError> {
        let config = TokenizerConfig::read(dir)?;
        let vocab_path = dir.join("vocab.json");
        let encoder = read_vocab(&vocab_path)?;
        let target_encoder = if config.separate_vocabs {
            let name = config
                .target_vocab
                .as_deref()
                .unwrap_or("target_vocab.json");
            Some(read_vocab(&dir.join(name))?)
        } else {
            None
        };
        let decoder = target_encoder
            .as_ref()
            .unwrap_or(&encoder)
            .iter()
            .map(|(k, &v)| (v, k.clone()))
            .collect();
        let id = |token: &str| {
            encoder
                .get(token)
                .copied()
                .ok_or_else(|| MarianTokenizerError::MissingToken {
                    path: vocab_path.clone(),
                    token: token.to_string(),
                })
        };
        let (unk_id, eos_id, pad_id) = (id(&config.unk)?, id(&config.eos)?, id(&config.pad)?);
        let mut special = vec![
            (config.unk.clone(), unk_id),
            (config.eos.clone(), eos_id),
            (config.pad.clone(), pad_id),
        ];
        for token in &config.extra_special {
            if let Some(&i) = encoder.get(token) {
                special.push((token.clone(), i));
            }
        }
        special.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        special.dedup();
        Ok(Self {
            source: read_spm(&dir.join("source.spm"))?,
            target: read_spm(&dir.join("target.spm"))?,
            encoder,
            target_encoder,
            decoder,
            special,
            unk_id,
            eos_id,
            pad_id,
            clean_up: config.clean_up,
            max_length: config.max_length,
        })
    }

    /// The end-of-sequence id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The unknown-token id.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// `model_max_length` from `tokenizer_config.json` (512 by default).
    pub(crate) fn max_length(&self) -> usize {
        self.max_length
    }

    /// The ids of a source text, ending with `</s>`.
    pub fn encode_source(&self, text: &str) -> Vec<u32> {
        let mut ids = self.pieces_to_ids(text, &self.source, &self.encoder);
        ids.push(self.eos_id);
        ids
    }

    /// The ids of a target-language text (as `text_target=`), ending with `</s>`.
    pub fn encode_target(&self, text: &str) -> Vec<u32> {
        let encoder = self.target_encoder.as_ref().unwrap_or(&self.encoder);
        let mut ids = self.pieces_to_ids(text, &self.target, encoder);
        ids.push(self.eos_id);
        ids
    }

    /// The tokens (pieces) of a source text, without `</s>`.
    pub fn tokenize_source(&self, text: &str) -> Vec<String> {
        self.tokens(text, &self.source)
            .into_iter()
            .map(|t| match t {
                Token::Special(s, _) => s,
                Token::Text(s) => s,
            })
            .collect()
    }

    fn pieces_to_ids(
        &self,
        text: &str,
        spm: &SentencePiece,
        encoder: &HashMap<String, u32>,
    ) -> Vec<u32> {
        self.tokens(text, spm)
            .into_iter()
            .map(|t| match t {
                Token::Special(_, id) => id,
                Token::Text(s) => encoder.get(&s).copied().unwrap_or(self.unk_id),
            })
            .collect()
    }

    /// Text split at special tokens; each other stretch less its language
    /// code, segmented.
    fn tokens(&self, text: &str, spm: &SentencePiece) -> Vec<Token> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = next_special(&self.special, rest);
            let (chunk, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((&rest[at..at + len], id, at + len))),
                None => (rest, None),
            };
            if !chunk.is_empty() {
                let mut body = chunk;
                if body.starts_with(">>") {
                    if let Some(end) = body.find("<<") {
                        out.push(Token::Text(body[..end + 2].to_string()));
                        body = &body[end + 2..];
                    }
                }
                out.extend(spm.encode(body).into_iter().map(|p| Token::Text(p.text)));
            }
            match special {
                Some((s, id, end)) => {
                    out.push(Token::Special(s.to_string(), id));
                    rest = &rest[end..];
                }
                None => break,
            }
        }
        out
    }

    /// Text of generated ids (`decode(ids, skip_special_tokens=…)`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let spm = if self.target_encoder.is_some() {
            &self.target
        } else {
            &self.source
        };
        let is_special = |id: u32| self.special.iter().any(|(_, s)| *s == id);
        let mut out = String::new();
        let mut run: Vec<String> = Vec::new();
        for &id in ids {
            if skip_special_tokens && is_special(id) {
                continue;
            }
            let token = match self.decoder.get(&id) {
                Some(t) => t.clone(),
                None => spm
                    .id_to_piece(id)
                    .filter(|p| !p.is_empty())
                    .unwrap_or("<unk>")
                    .to_string(),
            };
            if let Some((s, _)) = self.special.iter().find(|(s, _)| *s == token) {
                out.push_str(&spm.decode_pieces(&run));
                out.push_str(s);
                out.push(' ');
                run.clear();
            } else {
                run.push(token);
            }
        }
        out.push_str(&spm.decode_pieces(&run));
        let text = out.replace('\u{2581}', " ");
        let text = text.trim();
        if self.clean_up {
            clean_up_tokenization(text)
        } else {
            text.to_string()
        }
    }
}

/// The first special token in `text` (the longest one where several start
/// at the same place): its byte offset, length and id. `special` holds the
/// special tokens' texts and ids.
pub(super) fn next_special(special: &[(String, u32)], text: &str) -> Option<(usize, usize, u32)> {
    let mut best: Option<(usize, usize, u32)> = None;
    for (s, id) in special {
        if s.is_empty() {
            continue;
        }
        if let Some(at) = text.find(s.as_str()) {
            let better = match best {
                None => true,
                Some((b_at, b_len, _)) => at < b_at || (at == b_at && s.len() > b_len),
            };
            if better {
                best = Some((at, s.len(), *id));
            }
        }
    }
    best
}

enum Token {
    Special(String, u32),
    Text(String),
}

/// transformers' `clean_up_tokenization`: no space before punctuation and
/// English contractions.
pub(crate) fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
