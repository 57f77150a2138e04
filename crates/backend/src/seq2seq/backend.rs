//! An encoder-decoder checkpoint behind the [`Backend`] trait: Marian,
//! NLLB and M2M100 translators (requests are source texts, answers their
//! translations; a many-to-many one reads the request's [`Direction`]) and
//! BART / T5 summarizers (requests are texts, answers their summaries),
//! generated with the checkpoint's own settings (as transformers'
//! `generate()` does with no arguments), with a request's own settings over
//! them, in batches of similar length.
//!
//! A summarizer's settings are the checkpoint's own, exactly what
//! transformers 5.24's `generate()` uses: `generation_config.json`, or
//! without one the generation keys of `config.json`
//! (`GenerationConfig.from_model_config`). `task_specific_params` are not
//! settings: transformers 5 never reads them (its summarization pipeline,
//! which applied them, is gone); only their summarization `prefix` is used,
//! before every input, and a T5 checkpoint without one gets `summarize: `.
//! A requested summary length is applied over the checkpoint's settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;

use super::bart::{Bart, BartConfig};
use super::layers::read_config;
use super::m2m100::{M2M100Config, M2M100};
use super::portable::Portable;
use super::t5::T5;
use super::{generate, EncoderDecoder, GenerationConfig, GenerationSettings, Seq2SeqConfig};
use crate::tokenizer::checkpoint::{CheckpointTokenizer, Family};
use crate::tokenizer::m2m::ManyToManyTokenizer;
use crate::tokenizer::marian::MarianTokenizer;
use crate::{
    Backend, BackendError, Cached, ChatMessage, Direction, FinishReason, Flow, Generation,
    GenerationRequest, ModelInfo, ModelKind, Placement, Quantize, TokenCounter,
};

/// What a T5 summarizer's inputs start with when its config names no
/// summarization prefix.
pub(crate) const T5_PREFIX: &str = "summarize: ";

/// The input limit of a T5 checkpoint that names none.
const UNLIMITED: usize = usize::MAX / 4;

/// Inputs generated together (the batch size of the speed protocol).
pub(crate) const BATCH: usize = 8;

/// The files a Marian checkpoint directory needs (besides its weights,
/// `model.safetensors` or `pytorch_model.bin`).
pub(crate) const REQUIRED_FILES: &[&str] =
    &["config.json", "source.spm", "target.spm", "vocab.json"];

/// The encoder-decoder architectures precis runs, by `config.json`'s
/// `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `marian`: opus-mt translators.
    Marian,
    /// `bart`: BART summarizers (bart-large-cnn, distilbart-cnn).
    Bart,
    /// `t5`: T5 and Flan-T5.
    T5,
    /// `m2m_100`: NLLB-200 and M2M100 many-to-many translators.
    M2M100,
}

impl Architecture {
    /// The architecture of the checkpoint in `dir`, from its `config.json`.
    pub fn of_dir(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        Self::from_model_type(value["model_type"].as_str()?)
    }

    /// The architecture a `model_type` names.
    pub(crate) fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "marian" => Some(Architecture::Marian),
            "bart" => Some(Architecture::Bart),
            "t5" => Some(Architecture::T5),
            "m2m_100" => Some(Architecture::M2M100),
            _ => None,
        }
    }

    /// The family name in results and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Marian => "marian",
            Architecture::Bart => "bart",
            Architecture::T5 => "t5",
            Architecture::M2M100 => "m2m100",
        }
    }
}

/// Text to ids and back, as the checkpoint's transformers tokenizer does.
trait Codec: Send + Sync {
    /// Ids of a source text, special tokens included, for a request that
    /// translates as `direction` says (`None`: English in, and for a model
    /// that needs a target, only to count tokens).
    fn encode(&self, text: &str, direction: Option<&Direction>) -> Result<Vec<u32>, BackendError>;
    /// Text of output ids, special tokens skipped.
    fn decode(&self, ids: &[u32]) -> Result<String, BackendError>;
    /// The token forced first to write `target` (ISO 639-1): `Some` for a
    /// many-to-many translator, which needs one; `None` for a model that
    /// writes one language.
    fn target_token(&self, _target: Option<&str>) -> Result<Option<u32>, BackendError> {
        Ok(None)
    }
    /// The languages a many-to-many translator writes (ISO 639-1); empty
    /// for a model that writes one language.
    fn languages(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Codec for MarianTokenizer {
    fn encode(&self, text: &str, _: Option<&Direction>) -> Result<Vec<u32>, BackendError> {
        Ok(self.encode_source(text))
    }
    fn decode(&self, ids: &[u32]) -> Result<String, BackendError> {
        Ok(MarianTokenizer::decode(self, ids, true))
    }
}

impl Codec for ManyToManyTokenizer {
    fn encode(&self, text: &str, direction: Option<&Direction>) -> Result<Vec<u32>, BackendError> {
        let source = direction.map_or(ENGLISH, |d| d.source.as_str());
        ManyToManyTokenizer::encode(self, text, source).map_err(BackendError::Prompt)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, BackendError> {
        // As transformers decodes: the forced language token is dropped
        // when the checkpoint makes the codes special tokens (NLLB's, and
        // M2M100's as the hub ships them), and kept as `__xx__` text when
        // it does not.
        ManyToManyTokenizer::decode(self, ids, true).map_err(BackendError::Runtime)
    }
    fn target_token(&self, target: Option<&str>) -> Result<Option<u32>, BackendError> {
        let target = target.ok_or_else(no_target)?;
        let id = self.language_id(target).ok_or_else(|| {
            BackendError::Prompt(format!(
                "this translator does not write `{target}`; it writes {}",
                ManyToManyTokenizer::languages(self).join(", ")
            ))
        })?;
        Ok(Some(id))
    }
    fn languages(&self) -> Vec<String> {
        ManyToManyTokenizer::languages(self)
    }
}

impl Codec for CheckpointTokenizer {
    fn encode(&self, text: &str, _: Option<&Direction>) -> Result<Vec<u32>, BackendError> {
        CheckpointTokenizer::encode(self, text).map_err(BackendError::Prompt)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, BackendError> {
        CheckpointTokenizer::decode(self, ids, true).map_err(BackendError::Runtime)
    }
}

/// The refusal of a request to a many-to-many translator that names no
/// target language.
fn no_target() -> BackendError {
    BackendError::Prompt(
        "a many-to-many translator needs the language to write (the request names none)".into(),
    )
}

/// A T5 translator's tokenizer (MADLAD-400): the target language's `<2xx>`
/// token, a space, then the text, as its model card writes the input.
struct TargetTagged {
    inner: CheckpointTokenizer,
    /// ISO 639-1 codes of the languages the vocabulary has a token for.
    languages: Vec<String>,
}

impl TargetTagged {
    /// The languages of the table whose `<2xx>` token the vocabulary has:
    /// a tagged translator when there are at least two.
    fn languages_of(inner: &CheckpointTokenizer) -> Vec<String> {
        let languages: Vec<String> = crate::languages::LANGUAGES
            .iter()
            .filter(|l| inner.token_to_id(&format!("<2{}>", l.code)).is_some())
            .map(|l| l.code.to_string())
            .collect();
        if languages.len() >= 2 {
            languages
        } else {
            Vec::new()
        }
    }

    fn tag(&self, target: &str) -> Result<String, BackendError> {
        if self.languages.iter().any(|l| l == target) {
            Ok(format!("<2{target}> "))
        } else {
            Err(BackendError::Prompt(format!(
                "this translator does not write `{target}`; it writes {}",
                self.languages.join(", ")
            )))
        }
    }
}

impl Codec for TargetTagged {
    fn encode(&self, text: &str, direction: Option<&Direction>) -> Result<Vec<u32>, BackendError> {
        // Without a direction (counting tokens), any tag counts the same.
        let target = direction.map_or(self.languages[0].as_str(), |d| d.target.as_str());
        let tagged = format!("{}{text}", self.tag(target)?);
        CheckpointTokenizer::encode(&self.inner, &tagged).map_err(BackendError::Prompt)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, BackendError> {
        CheckpointTokenizer::decode(&self.inner, ids, true).map_err(BackendError::Runtime)
    }
    fn target_token(&self, target: Option<&str>) -> Result<Option<u32>, BackendError> {
        match target {
            // The tag is in the input; nothing is forced.
            Some(t) => self.tag(t).map(|_| None),
            None => Err(no_target()),
        }
    }
    fn languages(&self) -> Vec<String> {
        self.languages.clone()
    }
}

/// The loaded network.
enum Network {
    Bart(Bart),
    T5(T5),
    M2M100(M2M100),
    Portable(Portable),
}

impl Network {
    fn config(&self) -> Seq2SeqConfig {
        match self {
            Network::Bart(m) => m.seq2seq_config(),
            Network::T5(m) => m.seq2seq_config(),
            Network::M2M100(m) => m.seq2seq_config(),
            Network::Portable(m) => m.seq2seq_config(),
        }
    }

    fn generate(
        &self,
        inputs: &[Vec<u32>],
        settings: &GenerationSettings,
        on_step: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Vec<u32>>, BackendError> {
        match self {
            Network::Bart(m) => generate(m, inputs, settings, on_step),
            Network::T5(m) => generate(m, inputs, settings, on_step),
            Network::M2M100(m) => generate(m, inputs, settings, on_step),
            Network::Portable(m) => generate(m, inputs, settings, on_step),
        }
    }
}

/// A request's index and its input ids.
type Input = (usize, Vec<u32>);

/// The source language of a request that names none.
const ENGLISH: &str = "en";

/// A loaded encoder-decoder model.
pub struct Seq2SeqBackend {
    network: Network,
    tokenizer: Arc<dyn Codec>,
    /// The checkpoint's settings (before resolution).
    base: GenerationConfig,
    settings: GenerationSettings,
    /// Text put before every input (`summarize: ` for T5).
    prefix: String,
    info: ModelInfo,
}

/// Where a load names things: the model's id and revision, and the
/// languages it writes (empty: unknown, used for whatever is asked).
pub struct Seq2SeqOptions {
    /// Manifest id, or the directory's name.
    pub id: String,
    /// Hub revision, or `local`.
    pub revision: String,
    /// Target languages, from the manifest or the checkpoint.
    pub target_languages: Vec<String>,
    /// The weights' licence, from the manifest.
    pub license: Option<String>,
    /// A GGUF file of quantized weights to run instead of the directory's
    /// (a manifest names one of the several a hub repo may hold); T5 only.
    pub gguf: Option<PathBuf>,
    /// What the weights are quantized to at load (not those of `gguf`,
    /// which run in their stored type).
    pub quantize: Quantize,
    /// Where it runs: the CPU on this crate's kernels, or a GPU on the
    /// portable path (`seq2seq::portable`).
    pub placement: Placement,
    /// Run the portable path even on the CPU (the tests prove it there;
    /// on the CPU it is slower than the CPU's own kernels).
    pub portable: bool,
}

fn read_json(path: &Path) -> Result<serde_json::Value, BackendError> {
    let text = std::fs::read_to_string(path).map_err(|e| BackendError::load(path, e))?;
    serde_json::from_str(&text).map_err(|e| BackendError::load(path, e))
}

/// The checkpoint's generation settings: `generation_config.json` when there
/// is one, else the generation keys of `config.json` (what transformers'
/// `GenerationConfig.from_model_config` does).
pub fn checkpoint_generation(dir: &Path) -> Result<GenerationConfig, BackendError> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        return GenerationConfig::from_json(&read_json(&path)?)
            .map_err(|e| BackendError::load(&path, e));
    }
    let path = dir.join("config.json");
    let config = read_json(&path)?;
    let mut out = GenerationConfig::from_json(&config).map_err(|e| BackendError::load(&path, e))?;
    // `GenerationConfig.__init__` from a model config: the legacy
    // `force_bos_token_to_be_generated` forces `bos_token_id`.
    if config["force_bos_token_to_be_generated"] == true {
        out.forced_bos_token_id = config["bos_token_id"].as_u64().map(|b| b as u32);
    }
    Ok(out)
}

/// The text a summarizer's inputs start with: `prefix` of `config.json`'s
/// `task_specific_params.summarization` (T5's `summarize: `), else none.
pub(crate) fn summarization_prefix(dir: &Path) -> Result<String, BackendError> {
    let config = read_json(&dir.join("config.json"))?;
    Ok(config["task_specific_params"]["summarization"]["prefix"]
        .as_str()
        .unwrap_or_default()
        .to_string())
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
    crate::languages::iso_639_1(&code).map(str::to_string)
}

impl Seq2SeqBackend {
    /// Loads the checkpoint in `dir` on the CPU: a Marian translator, or a
    /// BART or T5 summarizer, by `config.json`'s `model_type`.
    pub fn load(dir: &Path, options: Seq2SeqOptions) -> Result<Self, BackendError> {
        let config_path = dir.join("config.json");
        let arch = match read_json(&config_path)?["model_type"].as_str() {
            Some(t) => Architecture::from_model_type(t).ok_or_else(|| {
                BackendError::load(
                    &config_path,
                    format!("model_type `{t}` is not one precis runs (marian, bart, t5, m2m_100)"),
                )
            })?,
            None => return Err(BackendError::load(&config_path, "it names no model_type")),
        };
        if let (Some(gguf), false) = (&options.gguf, arch == Architecture::T5) {
            return Err(BackendError::load(
                gguf,
                format!("precis runs GGUF weights of T5 checkpoints only, and this one's model_type is `{}`", arch.name()),
            ));
        }
        let device = options.placement.device()?;
        let portable = options.portable || !device.is_cpu();
        if portable && !options.quantize.is_none() {
            return Err(BackendError::Config(
                "--quantize int8 runs on the CPU's own kernels only; on a GPU the weights run in f32 (drop --quantize, or use --device cpu)".into(),
            ));
        }
        let bart = || {
            Ok(Network::Bart(Bart::load_quantized(
                dir,
                &device,
                options.quantize,
            )?))
        };
        // The network on this device: the CPU's own kernels, or the
        // portable path anywhere else.
        let network = |cpu: &dyn Fn() -> Result<Network, BackendError>| {
            if device.is_cpu() && !options.portable {
                cpu()
            } else {
                Ok(Network::Portable(Portable::load_weights(
                    dir,
                    options.gguf.as_deref(),
                    &device,
                    DType::F32,
                )?))
            }
        };
        let (network, tokenizer, kind, context_length, base, prefix): (
            Network,
            Arc<dyn Codec>,
            ModelKind,
            usize,
            GenerationConfig,
            String,
        ) = match arch {
            Architecture::Marian => {
                for name in REQUIRED_FILES {
                    if !dir.join(name).is_file() {
                        return Err(BackendError::load(
                            dir,
                            format!("a Marian checkpoint needs {name}, which is missing"),
                        ));
                    }
                }
                let tokenizer =
                    MarianTokenizer::from_dir(dir).map_err(|e| BackendError::load(dir, e))?;
                let cfg: BartConfig = read_config(dir)?;
                let model = network(&bart)?;
                let context = cfg.max_position_embeddings.min(tokenizer.max_length());
                (
                    model,
                    Arc::new(tokenizer),
                    ModelKind::Translator,
                    context,
                    checkpoint_generation(dir)?,
                    String::new(),
                )
            }
            Architecture::Bart => {
                let tokenizer = CheckpointTokenizer::from_dir(dir, Family::Bart)
                    .map_err(|e| BackendError::load(dir, e))?;
                let cfg: BartConfig = read_config(dir)?;
                let model = network(&bart)?;
                let context = cfg.max_position_embeddings;
                let (base, prefix) = (checkpoint_generation(dir)?, summarization_prefix(dir)?);
                (
                    model,
                    Arc::new(tokenizer),
                    ModelKind::Summarizer,
                    context,
                    base,
                    prefix,
                )
            }
            Architecture::T5 => {
                let tokenizer = CheckpointTokenizer::from_dir(dir, Family::T5)
                    .map_err(|e| BackendError::load(dir, e))?;
                // T5's positions are relative: the limit is the tokenizer's
                // `model_max_length`, else the config's `n_positions`; a
                // checkpoint naming neither has none (as in transformers).
                let context = match tokenizer.max_length() {
                    Some(n) => n,
                    None => read_json(&config_path)?["n_positions"]
                        .as_u64()
                        .map_or(UNLIMITED, |n| n as usize),
                };
                let model = network(&|| {
                    Ok(Network::T5(T5::load_weights(
                        dir,
                        options.gguf.as_deref(),
                        &device,
                        options.quantize,
                    )?))
                })?;
                let languages = TargetTagged::languages_of(&tokenizer);
                if !languages.is_empty() {
                    // `<2xx>` tokens: a translator (MADLAD-400).
                    (
                        model,
                        Arc::new(TargetTagged {
                            inner: tokenizer,
                            languages,
                        }),
                        ModelKind::Translator,
                        context,
                        checkpoint_generation(dir)?,
                        String::new(),
                    )
                } else {
                    let (base, prefix) = (checkpoint_generation(dir)?, summarization_prefix(dir)?);
                    // T5 is asked for a summary by the `summarize: ` prefix
                    // (the one its task_specific_params name, when they are
                    // there).
                    let prefix = if prefix.is_empty() {
                        T5_PREFIX.to_string()
                    } else {
                        prefix
                    };
                    (
                        model,
                        Arc::new(tokenizer),
                        ModelKind::Summarizer,
                        context,
                        base,
                        prefix,
                    )
                }
            }
            Architecture::M2M100 => {
                let tokenizer =
                    ManyToManyTokenizer::from_dir(dir).map_err(|e| BackendError::load(dir, e))?;
                let cfg: M2M100Config = read_config(dir)?;
                let model = network(&|| {
                    Ok(Network::M2M100(M2M100::load_quantized(
                        dir,
                        &device,
                        options.quantize,
                    )?))
                })?;
                let positions = cfg.max_position_embeddings;
                let context = tokenizer
                    .max_length()
                    .map_or(positions, |m| m.min(positions));
                (
                    model,
                    Arc::new(tokenizer),
                    ModelKind::Translator,
                    context,
                    checkpoint_generation(dir)?,
                    String::new(),
                )
            }
        };
        let settings = GenerationSettings::resolve(&base, &network.config())
            .map_err(|e| BackendError::load(&dir.join("generation_config.json"), e))?;
        let target_languages = match kind {
            _ if !options.target_languages.is_empty() => options.target_languages,
            ModelKind::Summarizer => vec![ENGLISH.into()],
            // A many-to-many translator: every language of the table its
            // vocabulary has a token for (a Marian pair: unknown here).
            _ => tokenizer.languages(),
        };
        let info = ModelInfo {
            kind,
            id: options.id,
            revision: options.revision,
            family: arch.name().into(),
            context_length,
            target_languages,
            license: options.license,
            // A GGUF checkpoint's weights run as they are stored.
            quantize: if options.gguf.is_some() {
                Quantize::None
            } else {
                options.quantize
            },
            device: options.placement,
        };
        Ok(Self {
            network,
            tokenizer,
            base,
            settings,
            prefix,
            info,
        })
    }

    /// The settings a request without its own is generated with.
    pub fn settings(&self) -> &GenerationSettings {
        &self.settings
    }

    /// The text put before every input.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Ids of a request's text as the model sees it (prefix included).
    fn encode(&self, text: &str, direction: Option<&Direction>) -> Result<Vec<u32>, BackendError> {
        if self.prefix.is_empty() {
            self.tokenizer.encode(text, direction)
        } else {
            self.tokenizer
                .encode(&format!("{}{text}", self.prefix), direction)
        }
    }
}

impl Backend for Seq2SeqBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn token_counter(&self) -> TokenCounter {
        let tokenizer = Arc::clone(&self.tokenizer);
        let prefix = self.prefix.clone();
        Arc::new(move |text: &str| {
            let ids = if prefix.is_empty() {
                tokenizer.encode(text, None)?
            } else {
                tokenizer.encode(&format!("{prefix}{text}"), None)?
            };
            Ok(ids.len())
        })
    }

    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError> {
        let text = messages.last().map_or("", |m| m.content.as_str());
        Ok(self.encode(text, None)?.len())
    }

    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>> {
        let mut results: Vec<Option<Result<Generation, BackendError>>> =
            (0..requests.len()).map(|_| None).collect();
        let limit = self.info.context_length;
        // Requests with the same settings (and, for a many-to-many
        // translator, the same target), each group in request order.
        type Key<'a> = (Option<&'a GenerationConfig>, Option<u32>);
        let mut groups: Vec<(Key, Vec<Input>)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let direction = r.direction.as_ref();
            let prepared = self.encode(r.source_text(), direction).and_then(|ids| {
                let target = self
                    .tokenizer
                    .target_token(direction.map(|d| d.target.as_str()))?;
                Ok((ids, target))
            });
            let (ids, target) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if ids.len() > limit {
                results[i] = Some(Err(BackendError::ContextOverflow {
                    prompt_tokens: ids.len(),
                    max_new_tokens: 0,
                    context_length: limit,
                }));
                continue;
            }
            let key = (r.seq2seq.as_ref(), target);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push((i, ids)),
                None => groups.push((key, vec![(i, ids)])),
            }
        }
        for ((overrides, target), mut ready) in groups {
            let settings = match (overrides, target) {
                (None, None) => self.settings.clone(),
                _ => match GenerationSettings::resolve(
                    &self.with_target(overrides, target),
                    &self.network.config(),
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        for (i, _) in &ready {
                            results[*i] = Some(Err(BackendError::Prompt(format!(
                                "invalid generation settings: {e}"
                            ))));
                        }
                        continue;
                    }
                },
            };
            // Similar lengths together: less padding, and a result does not
            // depend on its batch (tests/marian_parity.rs).
            ready.sort_by_key(|(_, ids)| ids.len());
            for batch in ready.chunks(BATCH) {
                self.run_batch(batch, &settings, on_token, &mut results);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request gets a result"))
            .collect()
    }
}

impl Seq2SeqBackend {
    /// The checkpoint's settings, a request's over them, and the target
    /// language's token forced first (which no request setting overrides).
    fn with_target(
        &self,
        overrides: Option<&GenerationConfig>,
        target: Option<u32>,
    ) -> GenerationConfig {
        let mut config = match overrides {
            Some(o) => self.base.clone().then(o),
            None => self.base.clone(),
        };
        if target.is_some() {
            config.forced_bos_token_id = target;
        }
        config
    }

    fn run_batch(
        &self,
        batch: &[Input],
        settings: &GenerationSettings,
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
        results: &mut [Option<Result<Generation, BackendError>>],
    ) {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|(_, ids)| ids.clone()).collect();
        let mut cancelled = false;
        let out = self.network.generate(&inputs, settings, &mut |_| {
            cancelled = batch.iter().all(|(i, _)| on_token(*i, "") == Flow::Stop);
            !cancelled
        });
        let outputs = match out {
            Ok(outputs) => outputs,
            Err(e) => {
                let msg = e.to_string();
                for (i, _) in batch {
                    results[*i] = Some(Err(BackendError::Runtime(msg.clone())));
                }
                return;
            }
        };
        for ((i, ids), out) in batch.iter().zip(outputs) {
            let ended = out
                .last()
                .is_some_and(|t| out.len() > 1 && settings.eos_token_ids.contains(t));
            let text = match self.tokenizer.decode(&out) {
                Ok(text) => text,
                Err(e) => {
                    results[*i] = Some(Err(e));
                    continue;
                }
            };
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
                cache: Cached::Off,
            }));
        }
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
