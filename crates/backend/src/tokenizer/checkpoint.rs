//! The tokenizers of BART and T5 checkpoints, built the way transformers
//! 5.24 builds them, so that ids and texts equal what its `AutoTokenizer`
//! gives (the fixtures under `tests/fixtures/bart/` and `tests/fixtures/t5/`
//! were recorded with it).
//!
//! transformers 5 keeps one tokenizer class per family and rebuilds the
//! pipeline in the class's constructor, taking only the vocabulary (and
//! BPE merges, and SentencePiece's character map) from the files:
//!
//! - **BART** (`RobertaTokenizer`): byte-level BPE over `vocab.json` and
//!   `merges.txt`, or the vocabulary and merges inside `tokenizer.json`;
//!   byte-level pre-tokenizer and decoder (`add_prefix_space` from
//!   `tokenizer_config.json`, default false); `<s> … </s>` around every
//!   input.
//! - **T5** (`T5Tokenizer`): unigram over the `[piece, score]` vocabulary of
//!   `tokenizer.json` (unknown id 2, no byte fallback), its precompiled
//!   character map as the normalizer, whitespace split then `▁` metaspace
//!   (prepended always) as pre-tokenizer and decoder; `</s>` after every
//!   input.
//! - **NLLB** (`NllbTokenizer`): BPE over `tokenizer.json`'s vocabulary and
//!   merges (unknown `<unk>`, fused), its precompiled character map then
//!   runs of spaces made one as the normalizer, `▁` metaspace (prepended
//!   always) as pre-tokenizer and decoder. The language codes around an
//!   input depend on the request: [`super::m2m`] adds them.
//!
//! Special tokens (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>`,
//! `<extra_id_N>`) come from `tokenizer.json`'s `added_tokens` or
//! `tokenizer_config.json`'s `added_tokens_decoder`, with their strip
//! flags. Decoding is the tokenizer's decode, then transformers'
//! `clean_up_tokenization` when `tokenizer_config.json` asks for it and the
//! model is not BPE (transformers 5.24 skips it for BPE).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::{Precompiled, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::marian::clean_up_tokenization;
use super::sentencepiece::{PieceKind, SentencePiece};

/// Which transformers tokenizer class a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `RobertaTokenizer` (BART's): byte-level BPE.
    Bart,
    /// `T5Tokenizer`: SentencePiece unigram.
    T5,
    /// `NllbTokenizer`: SentencePiece-derived BPE, no special tokens added
    /// by [`CheckpointTokenizer::encode`].
    Nllb,
}

/// What can go wrong loading a checkpoint's tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointTokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path} is not a valid tokenizer file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// None of the files a tokenizer is built from is there.
    #[error("{dir} has no tokenizer: expected {expected}")]
    Missing {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The files looked for.
        expected: &'static str,
    },
}

/// A BART or T5 checkpoint's tokenizer.
#[derive(Debug, Clone)]
pub struct CheckpointTokenizer {
    inner: Tokenizer,
    family: Family,
    clean_up_spaces: bool,
    max_length: Option<usize>,
    pad_id: Option<u32>,
    eos_id: Option<u32>,
}

pub(super) fn read_json(path: &Path) -> Result<Value, CheckpointTokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointTokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e))
}

pub(super) fn invalid(path: &Path, reason: impl std::fmt::Display) -> CheckpointTokenizerError {
    CheckpointTokenizerError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A special token as the files describe it.
#[derive(Debug, Clone)]
struct Special {
    content: String,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
    normalized: bool,
}

impl Special {
    fn from_json(v: &Value) -> Option<Self> {
        let flag = |k: &str| v[k].as_bool().unwrap_or(false);
        Some(Self {
            content: v["content"].as_str()?.to_string(),
            lstrip: flag("lstrip"),
            rstrip: flag("rstrip"),
            single_word: flag("single_word"),
            normalized: flag("normalized"),
        })
    }

    fn plain(content: &str) -> Self {
        Self {
            content: content.into(),
            lstrip: false,
            rstrip: false,
            single_word: false,
            normalized: false,
        }
    }

    fn token(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), true)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .single_word(self.single_word)
            .normalized(self.normalized)
    }
}

impl CheckpointTokenizer {
    /// Loads the tokenizer of the checkpoint in `dir`, of `family`.
    pub fn from_dir(dir: &Path, family: Family) -> Result<Self, CheckpointTokenizerError> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Value::Null
        };
        let json_path = dir.join("tokenizer.json");
        let json = if json_path.is_file() {
            Some(read_json(&json_path)?)
        } else {
            None
        };
        // Added tokens, in id order of the files: special ones (skipped when
        // decoding) and plain ones (MADLAD's `<2xx>`), both matched whole in
        // text before the model segments the rest.
        let mut specials: Vec<Special> = Vec::new();
        let mut plain: Vec<Special> = Vec::new();
        let is_special = |t: &Value| t["special"].as_bool().unwrap_or(false);
        if let Some(list) = json.as_ref().and_then(|j| j["added_tokens"].as_array()) {
            for t in list {
                let target = if is_special(t) {
                    &mut specials
                } else {
                    &mut plain
                };
                target.extend(Special::from_json(t));
            }
        } else if let Some(map) = config["added_tokens_decoder"].as_object() {
            let mut entries: Vec<(u64, bool, Special)> = map
                .iter()
                .filter_map(|(id, t)| {
                    Some((id.parse().ok()?, is_special(t), Special::from_json(t)?))
                })
                .collect();
            entries.sort_by_key(|(id, _, _)| *id);
            for (_, special, token) in entries {
                if special {
                    specials.push(token);
                } else {
                    plain.push(token);
                }
            }
        }
        let mut inner = match family {
            Family::Bart => bart(dir, json.as_ref(), &json_path, &config)?,
            Family::T5 => {
                let (tokenizer, implied) = t5(dir, json.as_ref(), &json_path, &config)?;
                if specials.is_empty() {
                    specials = implied;
                }
                tokenizer
            }
            Family::Nllb => nllb(dir, json.as_ref(), &json_path)?,
        };
        // `RobertaTokenizer` / `T5Tokenizer` special tokens, where the files
        // do not list them (transformers 5 strips no space around `<mask>`).
        let defaults: &[&str] = match family {
            Family::Bart => &["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            Family::T5 => &["<pad>", "</s>", "<unk>"],
            Family::Nllb => &["<s>", "<pad>", "</s>", "<unk>"],
        };
        for name in defaults {
            if !specials.iter().any(|s| s.content == *name) {
                specials.push(Special::plain(name));
            }
        }
        let tokens: Vec<AddedToken> = specials.iter().map(Special::token).collect();
        inner
            .add_special_tokens(tokens)
            .map_err(|e| invalid(dir, format!("special tokens: {e}")))?;
        let tokens: Vec<AddedToken> = plain.iter().map(|t| t.token().special(false)).collect();
        inner
            .add_tokens(tokens)
            .map_err(|e| invalid(dir, format!("added tokens: {e}")))?;
        let id = |t: &str| inner.token_to_id(t);
        let (pad_id, eos_id) = (id("<pad>"), id("</s>"));
        let processor: Option<tokenizers::PostProcessorWrapper> = match family {
            Family::Bart => {
                let (cls, sep) = (id("<s>"), id("</s>"));
                let (Some(cls), Some(sep)) = (cls, sep) else {
                    return Err(invalid(dir, "the vocabulary has no <s> or no </s>"));
                };
                Some(
                    RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls))
                        .trim_offsets(config["trim_offsets"].as_bool().unwrap_or(true))
                        .add_prefix_space(add_prefix_space(&config))
                        .into(),
                )
            }
            Family::T5 => {
                let Some(eos) = eos_id else {
                    return Err(invalid(dir, "the vocabulary has no </s>"));
                };
                Some(
                    TemplateProcessing::builder()
                        .try_single("$A </s>")
                        .and_then(|b| b.try_pair("$A </s> $B </s>"))
                        .map_err(|e| invalid(dir, e))?
                        .special_tokens(vec![("</s>", eos)])
                        .build()
                        .map_err(|e| invalid(dir, e))?
                        .into(),
                )
            }
            Family::Nllb => None,
        };
        inner.with_post_processor(processor);
        let max_length = config["model_max_length"]
            .as_u64()
            .filter(|&n| n < 1 << 40)
            .map(|n| n as usize);
        Ok(Self {
            inner,
            family,
            clean_up_spaces: config["clean_up_tokenization_spaces"]
                .as_bool()
                .unwrap_or(false),
            max_length,
            pad_id,
            eos_id,
        })
    }

    /// The ids of `text` with the family's special tokens around it (what
    /// `tokenizer(text)["input_ids"]` gives).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Tokens `text` takes, special tokens included.
    pub fn count(&self, text: &str) -> Result<usize, String> {
        self.encode(text).map(|ids| ids.len())
    }

    /// The text of `ids`, as `tokenizer.decode(ids, skip_special_tokens)`
    /// gives it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| e.to_string())?;
        Ok(if self.clean_up_spaces && self.family != Family::Bart {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// `model_max_length` of `tokenizer_config.json`, when it names one.
    pub(crate) fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// The padding id, when the vocabulary has `<pad>`.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The end id, when the vocabulary has `</s>`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn add_prefix_space(config: &Value) -> bool {
    config["add_prefix_space"].as_bool().unwrap_or(false)
}

/// `RobertaTokenizer`'s pipeline over the checkpoint's vocabulary and merges.
fn bart(
    dir: &Path,
    json: Option<&Value>,
    json_path: &Path,
    config: &Value,
) -> Result<Tokenizer, CheckpointTokenizerError> {
    let (vocab, merges): (HashMap<String, u32>, Vec<(String, String)>) = match json {
        Some(json) => {
            let model = &json["model"];
            let vocab = serde_json::from_value(model["vocab"].clone())
                .map_err(|e| invalid(json_path, format!("model.vocab: {e}")))?;
            let merges = model["merges"]
                .as_array()
                .ok_or_else(|| invalid(json_path, "model.merges is missing"))?
                .iter()
                .map(|m| merge_pair(m).ok_or_else(|| invalid(json_path, "a merge is malformed")))
                .collect::<Result<_, _>>()?;
            (vocab, merges)
        }
        None => {
            let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
            if !vocab_path.is_file() || !merges_path.is_file() {
                return Err(CheckpointTokenizerError::Missing {
                    dir: dir.to_path_buf(),
                    expected: "tokenizer.json, or vocab.json and merges.txt",
                });
            }
            let vocab = serde_json::from_value(read_json(&vocab_path)?)
                .map_err(|e| invalid(&vocab_path, e))?;
            let text = std::fs::read_to_string(&merges_path).map_err(|source| {
                CheckpointTokenizerError::Io {
                    path: merges_path.clone(),
                    source,
                }
            })?;
            // `#version` header lines and blank lines are not merges.
            let merges = text
                .lines()
                .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
                .map(|l| {
                    let mut parts = l.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                        _ => Err(invalid(
                            &merges_path,
                            format!("the line `{l}` is not a merge"),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?;
            (vocab, merges)
        }
    };
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(|e| invalid(dir, e))?;
    let mut tokenizer = Tokenizer::new(model);
    let prefix = add_prefix_space(config);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(prefix)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// `NllbTokenizer`'s pipeline over `tokenizer.json`'s vocabulary, merges
/// and precompiled character map (transformers 5.24 keeps nothing else of
/// the file but its special tokens).
fn nllb(
    dir: &Path,
    json: Option<&Value>,
    json_path: &Path,
) -> Result<Tokenizer, CheckpointTokenizerError> {
    let Some(json) = json else {
        return Err(CheckpointTokenizerError::Missing {
            dir: dir.to_path_buf(),
            expected: "tokenizer.json (NLLB checkpoints ship one)",
        });
    };
    let model = &json["model"];
    let vocab: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())
        .map_err(|e| invalid(json_path, format!("model.vocab (a BPE vocabulary): {e}")))?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| invalid(json_path, "model.merges is missing"))?
        .iter()
        .map(|m| merge_pair(m).ok_or_else(|| invalid(json_path, "a merge is malformed")))
        .collect::<Result<Vec<_>, _>>()?;
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .unk_token("<unk>".into())
        .fuse_unk(true)
        .byte_fallback(false)
        .build()
        .map_err(|e| invalid(json_path, e))?;
    let mut tokenizer = Tokenizer::new(model);
    if let Some(precompiled) = precompiled_map(json, json_path)? {
        let spaces = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")
            .map_err(|e| invalid(json_path, e))?;
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(vec![
                precompiled.into(),
                spaces.into(),
            ])))
            .map_err(|e| invalid(json_path, e))?;
    }
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    Ok(tokenizer)
}

/// The precompiled character map of `tokenizer.json`'s normalizer (alone
/// or in a sequence), when it has one.
fn precompiled_map(
    json: &Value,
    json_path: &Path,
) -> Result<Option<Precompiled>, CheckpointTokenizerError> {
    let normalizer = &json["normalizer"];
    let nodes: Vec<&Value> = match normalizer["type"].as_str() {
        Some("Sequence") => normalizer["normalizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![normalizer],
    };
    match nodes.into_iter().find(|n| n["type"] == "Precompiled") {
        // From text: the map is read as a borrowed string.
        Some(node) => Ok(Some(
            serde_json::from_str(&node.to_string())
                .map_err(|e| invalid(json_path, format!("normalizer: {e}")))?,
        )),
        None => Ok(None),
    }
}

/// A merge as `tokenizer.json` writes it: `"a b"` or `["a", "b"]`.
fn merge_pair(m: &Value) -> Option<(String, String)> {
    match m {
        Value::String(s) => {
            let (a, b) = s.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        }
        Value::Array(parts) if parts.len() == 2 => Some((
            parts[0].as_str()?.to_string(),
            parts[1].as_str()?.to_string(),
        )),
        _ => None,
    }
}

/// `T5Tokenizer`'s pipeline over `tokenizer.json`'s unigram vocabulary, or
/// over `spiece.model`'s pieces followed by `extra_ids` sentinels
/// (`T5Converter.convert_from_spm`: `<extra_id_{n-1}>` first, score 0).
/// Also returns the special tokens `spiece.model` implies: its control
/// pieces and the sentinels.
fn t5(
    dir: &Path,
    json: Option<&Value>,
    json_path: &Path,
    config: &Value,
) -> Result<(Tokenizer, Vec<Special>), CheckpointTokenizerError> {
    let mut specials = Vec::new();
    let (vocab, precompiled): (Vec<(String, f64)>, Option<Precompiled>) = match json {
        Some(json) => {
            let vocab = serde_json::from_value(json["model"]["vocab"].clone())
                .map_err(|e| invalid(json_path, format!("model.vocab: {e}")))?;
            // Only the precompiled character map is kept, as transformers does.
            (vocab, precompiled_map(json, json_path)?)
        }
        None => {
            let spm_path = dir.join("spiece.model");
            if !spm_path.is_file() {
                return Err(CheckpointTokenizerError::Missing {
                    dir: dir.to_path_buf(),
                    expected: "tokenizer.json or spiece.model",
                });
            }
            let bytes =
                std::fs::read(&spm_path).map_err(|source| CheckpointTokenizerError::Io {
                    path: spm_path.clone(),
                    source,
                })?;
            let parts = SentencePiece::parts(&bytes).map_err(|e| invalid(&spm_path, e))?;
            let extra_ids = config["extra_ids"].as_u64().unwrap_or(100) as usize;
            let mut vocab: Vec<(String, f64)> = parts
                .pieces
                .iter()
                .map(|(p, score, _)| (p.clone(), f64::from(*score)))
                .collect();
            vocab.extend(
                (0..extra_ids)
                    .rev()
                    .map(|i| (format!("<extra_id_{i}>"), 0.0)),
            );
            specials.extend(
                parts
                    .pieces
                    .iter()
                    .filter(|(_, _, kind)| *kind == PieceKind::Control)
                    .map(|(p, _, _)| Special::plain(p)),
            );
            specials.extend((0..extra_ids).map(|i| Special::plain(&format!("<extra_id_{i}>"))));
            let precompiled = match parts.precompiled_charsmap {
                Some(map) => Some(Precompiled::from(&map).map_err(|e| invalid(&spm_path, e))?),
                None => None,
            };
            (vocab, precompiled)
        }
    };
    let model = Unigram::from(vocab, Some(2), false).map_err(|e| invalid(json_path, e))?;
    let mut tokenizer = Tokenizer::new(model);
    if let Some(precompiled) = precompiled {
        tokenizer
            .with_normalizer(Some(precompiled))
            .map_err(|e| invalid(json_path, e))?;
    }
    let pre: Vec<PreTokenizerWrapper> = vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ];
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pre)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    Ok((tokenizer, specials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_tokenizer_files_names_what_it_needs() {
        let d = tempfile::tempdir().unwrap();
        let err = CheckpointTokenizer::from_dir(d.path(), Family::Bart).unwrap_err();
        assert!(
            err.to_string().contains("vocab.json and merges.txt"),
            "{err}"
        );
        let err = CheckpointTokenizer::from_dir(d.path(), Family::T5).unwrap_err();
        assert!(err.to_string().contains("or spiece.model"), "{err}");
    }

    #[test]
    fn clean_up_removes_spaces_before_punctuation() {
        assert_eq!(
            clean_up_tokenization("It is n't here , is it ?"),
            "It isn't here, is it?"
        );
    }
}
