//! A Marian checkpoint behind the [`Backend`] trait: requests are source
//! sentences, answers their translations, generated with the checkpoint's
//! own `generation_config.json` (as transformers' `generate()` does with no
//! arguments), in batches of similar length.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::marian::Marian;
use super::{generate, EncoderDecoder, GenerationOverrides, GenerationSettings};
use crate::backend::{
    Backend, BackendError, ChatMessage, FinishReason, Flow, Generation, GenerationRequest,
    ModelInfo, ModelKind, TokenCounter,
};
use crate::tokenizer::marian::MarianTokenizer;

/// Sentences generated together (the batch size of the speed protocol).
pub const BATCH: usize = 8;

/// The files a Marian checkpoint directory needs (besides its weights,
/// `model.safetensors` or `pytorch_model.bin`).
pub const REQUIRED_FILES: &[&str] = &["config.json", "source.spm", "target.spm", "vocab.json"];

/// A loaded Marian translation model.
pub struct MarianBackend {
    model: Marian,
    tokenizer: Arc<MarianTokenizer>,
    settings: GenerationSettings,
    info: ModelInfo,
}

/// Where a load names things: the model's id and revision, and the
/// languages it writes (empty: unknown, used for whatever is asked).
pub struct MarianOptions {
    /// Manifest id, or the directory's name.
    pub id: String,
    /// Hub revision, or `local`.
    pub revision: String,
    /// Target languages, from the manifest or the checkpoint.
    pub target_languages: Vec<String>,
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The checkpoint's generation settings: `generation_config.json` when there
/// is one, else the generation keys of `config.json` (what transformers'
/// `GenerationConfig.from_model_config` does).
pub fn checkpoint_generation(dir: &Path) -> Result<GenerationOverrides, BackendError> {
    let path = dir.join("generation_config.json");
    let path = if path.exists() {
        path
    } else {
        dir.join("config.json")
    };
    let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| load_err(&path, e))?;
    GenerationOverrides::from_json(&value).map_err(|e| load_err(&path, e))
}

/// The target language a checkpoint names: `target_lang` in
/// `tokenizer_config.json`, or the `xx` of a directory named `opus-mt-en-xx`.
pub fn target_language(dir: &Path) -> Option<String> {
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
    let from_config = config
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["target_lang"].as_str().map(str::to_string))
        .filter(|l| !l.is_empty());
    let from_config = from_config.and_then(|l| iso_639_1(&l));
    from_config.or_else(|| {
        let name = dir.file_name()?.to_string_lossy().to_lowercase();
        let rest = name.rsplit("opus-mt-").next()?;
        let mut parts = rest.split('-');
        let (_src, tgt) = (parts.next()?, parts.next()?);
        (tgt.len() == 2 && tgt.chars().all(|c| c.is_ascii_lowercase())).then(|| tgt.to_string())
    })
}

/// A two-letter language code for a code as checkpoints write it (`ru`,
/// `rus`, `hin`); `None` for one this does not know.
fn iso_639_1(code: &str) -> Option<String> {
    let code = code.trim().to_ascii_lowercase();
    if code.len() == 2 && code.chars().all(|c| c.is_ascii_lowercase()) {
        return Some(code);
    }
    let two = match code.as_str() {
        "eng" => "en",
        "rus" => "ru",
        "hin" => "hi",
        "deu" | "ger" => "de",
        "fra" | "fre" => "fr",
        "spa" => "es",
        "ita" => "it",
        "ukr" => "uk",
        "zho" | "chi" => "zh",
        "jpn" => "ja",
        "ara" => "ar",
        "por" => "pt",
        _ => return None,
    };
    Some(two.to_string())
}

impl MarianBackend {
    /// Loads the checkpoint in `dir` on the CPU.
    pub fn load(dir: &Path, options: MarianOptions) -> Result<Self, BackendError> {
        for name in REQUIRED_FILES {
            if !dir.join(name).is_file() {
                return Err(load_err(
                    dir,
                    format!("a Marian checkpoint needs {name}, which is missing"),
                ));
            }
        }
        let tokenizer = MarianTokenizer::from_dir(dir).map_err(|e| load_err(dir, e))?;
        let model = Marian::load(dir, &Device::Cpu)?;
        let settings =
            GenerationSettings::resolve(&checkpoint_generation(dir)?, &model.seq2seq_config())
                .map_err(|e| load_err(&dir.join("generation_config.json"), e))?;
        let info = ModelInfo {
            kind: ModelKind::Translator,
            id: options.id,
            revision: options.revision,
            family: "marian".into(),
            context_length: model
                .config()
                .max_position_embeddings
                .min(tokenizer.max_length()),
            target_languages: options.target_languages,
        };
        Ok(Self {
            model,
            tokenizer: Arc::new(tokenizer),
            settings,
            info,
        })
    }

    /// The settings every request is generated with.
    pub fn settings(&self) -> &GenerationSettings {
        &self.settings
    }
}

impl Backend for MarianBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn token_counter(&self) -> TokenCounter {
        let tokenizer = Arc::clone(&self.tokenizer);
        Arc::new(move |text: &str| Ok(tokenizer.encode_source(text).len()))
    }

    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError> {
        let text = messages.last().map_or("", |m| m.content.as_str());
        Ok(self.tokenizer.encode_source(text).len())
    }

    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>> {
        let mut results: Vec<Option<Result<Generation, BackendError>>> =
            (0..requests.len()).map(|_| None).collect();
        let limit = self.info.context_length;
        let mut ready: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let ids = self.tokenizer.encode_source(r.source_text());
            if ids.len() > limit {
                results[i] = Some(Err(BackendError::ContextOverflow {
                    prompt_tokens: ids.len(),
                    max_new_tokens: 0,
                    context_length: limit,
                }));
            } else {
                ready.push((i, ids));
            }
        }
        // Similar lengths together: less padding, and a result does not
        // depend on its batch (tests/marian_parity.rs).
        ready.sort_by_key(|(_, ids)| ids.len());
        for batch in ready.chunks(BATCH) {
            let inputs: Vec<Vec<u32>> = batch.iter().map(|(_, ids)| ids.clone()).collect();
            let mut cancelled = false;
            let out = generate(&self.model, &inputs, &self.settings, &mut |_| {
                cancelled = batch.iter().all(|(i, _)| on_token(*i, "") == Flow::Stop);
                !cancelled
            });
            match out {
                Err(e) => {
                    let msg = e.to_string();
                    for (i, _) in batch {
                        results[*i] = Some(Err(BackendError::Runtime(msg.clone())));
                    }
                }
                Ok(outputs) => {
                    for ((i, ids), out) in batch.iter().zip(outputs) {
                        let ended = out.last().is_some_and(|t| {
                            out.len() > 1 && self.settings.eos_token_ids.contains(t)
                        });
                        let text = self.tokenizer.decode(&out, true);
                        let finish = if cancelled {
                            FinishReason::Cancelled
                        } else if ended {
                            FinishReason::Stop
                        } else {
                            FinishReason::Length
                        };
                        on_token(*i, &text);
                        results[*i] = Some(Ok(Generation {
                            text,
                            prompt_tokens: ids.len(),
                            generated_tokens: out.len().saturating_sub(1),
                            finish,
                        }));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request gets a result"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_language_comes_from_the_directory_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("Helsinki-NLP--opus-mt-en-ru");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(target_language(&dir).as_deref(), Some("ru"));
        let other = d.path().join("my-model");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(target_language(&other), None);
        std::fs::write(
            other.join("tokenizer_config.json"),
            r#"{"target_lang": "hin"}"#,
        )
        .unwrap();
        assert_eq!(target_language(&other).as_deref(), Some("hi"));
    }
}
