//! precis-backend: the only crate that knows candle.
//!
//! It turns model files into something that writes text: the model store
//! ([`store`]: manifests, fetching from the hub or the offline mirror,
//! verification), tokenizers ([`tokenizer`]), and one backend per model
//! family (the GGUF decoder in [`gguf`], Marian / BART / T5 in [`seq2seq`]),
//! with the generation code they share and the SIMD kernels under them.
//!
//! Every model family sits behind one small trait, [`Backend`]: it says what the
//! loaded model is ([`ModelInfo`]), counts tokens, and generates text for a batch
//! of chat requests, streaming tokens through a callback that can say stop. The
//! layers above (precis-core's tasks and engine) see nothing else, so a new
//! family plugs in without touching them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

// The CPU decoder's and the kernels' internals are an API only for the
// benchmarks and parity tests (feature `internals`).
#[cfg(feature = "internals")]
pub mod decoder;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)] // what only the benchmarks and tests use
pub(crate) mod decoder;
#[cfg(feature = "test-backend")]
pub mod fake;
pub mod generation;
pub mod gguf;
#[cfg(feature = "internals")]
pub mod kernels;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)] // what only the benchmarks and tests use
pub(crate) mod kernels;
pub mod languages;
pub mod script;
pub mod seq2seq;
pub mod store;
pub mod tokenizer;
pub mod weights;

/// Who says a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The request.
    User,
    /// The model's answer.
    Assistant,
}

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// A message of the model's (an earlier answer, e.g. a worked example).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// How to generate. Serialised into every result so a reader knows what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationParams {
    /// Hard limit on generated tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy decoding; above 0, sampling at this temperature.
    pub temperature: f64,
    /// Nucleus sampling threshold (only when sampling).
    pub top_p: Option<f64>,
    /// Seed of the sampler (only when sampling).
    pub seed: u64,
    /// Penalty on tokens already generated (1.0 = none).
    pub repetition_penalty: f32,
    /// How many of the last generated tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Stop when the output starts repeating itself, and flag it.
    pub loop_guard: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: 299_792_458,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            loop_guard: true,
        }
    }
}

/// One generation request: a chat prompt and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The chat prompt; rendered with the model's own chat template. For a
    /// [`ModelKind::Translator`], one user message holding the source text.
    pub messages: Vec<ChatMessage>,
    /// How to generate (an encoder-decoder model uses its checkpoint's own
    /// settings instead, with [`GenerationRequest::seq2seq`] over them).
    pub params: GenerationParams,
    /// For an encoder-decoder model (translator, summarizer): settings over
    /// the checkpoint's own (`generation_config.json` keys); `None` keeps
    /// the checkpoint's.
    pub seq2seq: Option<seq2seq::GenerationConfig>,
    /// The languages to translate from and into: for a many-to-many
    /// translator (NLLB, M2M100, MADLAD) which codes to use; for an LLM, the
    /// script its output keeps to ([`script::ScriptGuard`]). `None` for a
    /// Marian pair (it writes its one language) and for every other request.
    pub direction: Option<Direction>,
}

/// The languages of a translation, as ISO 639-1 codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Direction {
    /// The source text's language.
    pub source: String,
    /// The language to write.
    pub target: String,
}

impl GenerationRequest {
    /// A request for a [`ModelKind::Translator`]: the source text alone.
    pub fn source(text: impl Into<String>) -> Self {
        Self {
            messages: vec![ChatMessage::user(text)],
            params: GenerationParams::default(),
            seq2seq: None,
            direction: None,
        }
    }

    /// The request translating from `source` into `target` (ISO 639-1).
    pub fn translating(mut self, source: &str, target: &str) -> Self {
        self.direction = Some(Direction {
            source: source.to_string(),
            target: target.to_string(),
        });
        self
    }

    /// The source text of a translator request (the last user message).
    pub(crate) fn source_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end token.
    Stop,
    /// `max_new_tokens` was reached without an end token.
    Length,
    /// The loop guard stopped a repeating output (the repetition is cut off).
    Loop,
    /// The caller asked to stop.
    Cancelled,
}

/// What a model produced for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated text, without the prompt and without end tokens.
    pub text: String,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (when it was generated, for a cached one).
    pub generated_tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Whether it came from the result cache.
    #[serde(skip)]
    pub cache: Cached,
}

/// Where a generation came from, as far as the result cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cached {
    /// No cache was consulted.
    #[default]
    Off,
    /// Taken from the cache; no model ran.
    Hit,
    /// Not in the cache: generated (and kept).
    Miss,
}

/// What the streaming callback tells the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// Stop this request now (its result is returned with [`FinishReason::Cancelled`]).
    Stop,
}

/// How a model is asked for text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A chat model: requests are prompts, rendered with its chat template.
    #[default]
    Chat,
    /// A dedicated translation model (Marian): each request holds the source
    /// text alone, as its one user message; it translates into its target
    /// language, with its own generation settings.
    Translator,
    /// A dedicated summarization model (BART, T5): each request holds the
    /// text to summarize alone; it writes an English summary with its own
    /// generation settings (lengths may be set per request).
    Summarizer,
}

/// Where models run (`--device`, and a `device` setting): the CPU, on this
/// crate's own kernels, or a CUDA GPU (`cuda`, `cuda:N`), on the portable
/// path written with candle's ops (every encoder-decoder family) and on
/// candle's quantized models (GGUF), which needs a build with the `cuda`
/// feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The CUDA GPU of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl Placement {
    /// Whether this is the CPU (a result leaves the device out then).
    pub fn is_cpu(&self) -> bool {
        *self == Placement::Cpu
    }

    /// The candle device: a CUDA device is opened here, so a build without
    /// CUDA, a machine without its driver, or an ordinal with no GPU is
    /// refused with one line that says which.
    pub fn device(self) -> Result<candle_core::Device, BackendError> {
        match self {
            Placement::Cpu => Ok(candle_core::Device::Cpu),
            Placement::Cuda(ordinal) => cuda_device(ordinal),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<candle_core::Device, BackendError> {
    // The libraries candle's CUDA bindings load when a device is opened (a
    // build by scripts/cuda-build.sh loads them at run time): each by the
    // names those bindings try. Without one, the bindings would panic.
    const LIBRARIES: [(&str, &str); 5] = [
        ("cuda", "the NVIDIA driver's library"),
        ("cublas", "cuBLAS"),
        ("cublasLt", "cuBLASLt"),
        ("curand", "cuRAND"),
        ("nvrtc", "NVRTC"),
    ];
    for (name, what) in LIBRARIES {
        let found = ["", ".1", ".13", ".12"].iter().any(|suffix| {
            // SAFETY: loading a CUDA library runs only its initialisers,
            // which set nothing this process relies on.
            #[allow(unsafe_code)]
            let loaded = unsafe { libloading::Library::new(format!("lib{name}.so{suffix}")) };
            loaded.is_ok()
        });
        if !found {
            return Err(BackendError::Device(format!(
                "no CUDA GPU here: {what} (lib{name}.so) cannot be loaded; on a GPU machine put CUDA 12 or 13's library folder on LD_LIBRARY_PATH, or run with --device cpu"
            )));
        }
    }
    let opened = std::panic::catch_unwind(|| candle_core::Device::new_cuda(ordinal));
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(BackendError::Device(format!(
            "no CUDA GPU {ordinal} here ({e}); run with --device cpu"
        ))),
        Err(_) => Err(BackendError::Device(format!(
            "CUDA GPU {ordinal} could not be opened (see the message above); run with --device cpu"
        ))),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<candle_core::Device, BackendError> {
    Err(BackendError::Device(
        "this build of precis has no CUDA support: build it with `cargo build --release --features cuda` (scripts/cuda-build.sh), or run with --device cpu".into(),
    ))
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let wrong =
            || format!("device wants `cpu`, `cuda` or `cuda:N` (N a GPU number), not `{s}`");
        match s.as_str() {
            "cpu" => Ok(Placement::Cpu),
            "cuda" => Ok(Placement::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n)
                    if !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Ok(Placement::Cuda(n.parse().map_err(|_| wrong())?))
                }
                _ => Err(wrong()),
            },
        }
    }
}

impl Serialize for Placement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Placement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What an encoder-decoder model's weights are quantized to at load
/// (`--quantize`, and a `quantize` setting per model). A GGUF checkpoint's
/// weights are run in their stored type whatever this says.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// None: f32, as the checkpoint stores them (transformers' results).
    #[default]
    None,
    /// int8 per weight row (as CTranslate2's int8), activations per token
    /// over their range with a zero point, the output layer included; token embeddings are not quantized (a
    /// table tied to the output layer is read as stored from the
    /// safetensors file, else from the layer's int8 rows; a table of their
    /// own stays f32).
    Int8,
}

impl Quantize {
    /// Whether the weights stay as they are.
    pub fn is_none(&self) -> bool {
        *self == Quantize::None
    }

    /// The setting's name (`none`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Quantize::None => "none",
            Quantize::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Quantize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Quantize::None),
            "int8" => Ok(Quantize::Int8),
            other => Err(format!(
                "quantize wants `none` (f32 weights) or `int8`, not `{other}`"
            )),
        }
    }
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// How it is asked for text.
    pub kind: ModelKind,
    /// Manifest id (or the path / repo it was named by).
    pub id: String,
    /// Revision of the weights (hub revision, or `local`).
    pub revision: String,
    /// Model family, as named in manifests (`gguf-qwen2`, `gguf-llama`, …).
    pub family: String,
    /// Longest sequence (prompt + output) the model accepts, in tokens.
    pub context_length: usize,
    /// Languages it can write, from its manifest.
    pub target_languages: Vec<String>,
    /// The weights' licence (SPDX), from its manifest; `None` when unknown
    /// (a checkpoint named by path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// What precis quantized the weights to at load (absent: nothing).
    #[serde(skip_serializing_if = "Quantize::is_none")]
    pub quantize: Quantize,
    /// Where it runs (absent: the CPU).
    #[serde(skip_serializing_if = "Placement::is_cpu")]
    #[schema(value_type = String, example = "cuda:0")]
    pub device: Placement,
}

/// Counts the tokens of a text as the model would see it.
pub type TokenCounter = Arc<dyn Fn(&str) -> Result<usize, BackendError> + Send + Sync>;

/// A lower layer's error, kept as the cause of one of ours.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The weights file could not be read or parsed.
    #[error("cannot load model file {path}: {source}. Check the file with `precis models verify`, or fetch it again with `precis models fetch`")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: Cause,
    },
    /// The file is a GGUF of an architecture this backend does not run.
    #[error("model file {path} has architecture `{architecture}`, which precis does not run (supported: qwen2, llama)")]
    UnsupportedArchitecture {
        /// The file.
        path: String,
        /// `general.architecture` from its metadata.
        architecture: String,
    },
    /// Prompt plus output do not fit the model's context.
    #[error("the input needs {prompt_tokens} prompt tokens plus up to {max_new_tokens} new tokens, more than the model's context of {context_length} tokens")]
    ContextOverflow {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// Requested output tokens.
        max_new_tokens: usize,
        /// The model's limit.
        context_length: usize,
    },
    /// The prompt could not be rendered or tokenized.
    #[error("cannot prepare the prompt: {0}")]
    Prompt(String),
    /// The model failed while running.
    #[error("model failed while generating: {0}")]
    Runtime(String),
    /// A checkpoint's configuration or tensors are not what the backend
    /// runs (it says what is wrong).
    #[error("{0}")]
    Config(String),
    /// The device asked for cannot be used here (it says why and what to
    /// do).
    #[error("{0}")]
    Device(String),
    /// A tensor operation failed.
    #[error("model failed while generating: {0}")]
    Candle(#[from] candle_core::Error),
    /// Generated tokens could not be made into text.
    #[error("model failed while generating: {0}")]
    Tokenizer(#[from] tokenizer::TokenizerError),
}

impl BackendError {
    /// A model file that could not be read or made sense of.
    pub(crate) fn load(path: &std::path::Path, source: impl Into<Cause>) -> Self {
        BackendError::Load {
            path: path.display().to_string(),
            source: source.into(),
        }
    }
}

/// A loaded model. Owned by one engine worker thread; never shared.
pub trait Backend: Send {
    /// What the model is.
    fn info(&self) -> &ModelInfo;

    /// A cheap, thread-safe token counter, for chunking decisions made outside the worker.
    fn token_counter(&self) -> TokenCounter;

    /// Tokens the rendered chat prompt takes (template included).
    fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, BackendError>;

    /// Generates for each request. `on_token(i, piece)` receives text as it is
    /// produced for request `i` (an empty piece only asks whether to go on);
    /// returning [`Flow::Stop`] ends that request.
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        on_token: &mut dyn FnMut(usize, &str) -> Flow,
    ) -> Vec<Result<Generation, BackendError>>;

    /// Generates for requests that may arrive while others are generating:
    /// asks [`Arrivals::join`] before each step, runs what joins alongside
    /// what is already running, hands each result to [`Arrivals::done`] as
    /// soon as it is finished, and returns once nothing runs and nothing
    /// joins. A backend that decodes step by step (the CPU GGUF decoder, the
    /// fake model) lets a request join a running batch; by default, the
    /// requests that join together run as one [`generate`](Self::generate)
    /// batch, after the batch before.
    fn generate_joining(&mut self, arrivals: &mut dyn Arrivals) {
        batch_after_batch(self, arrivals);
    }
}

/// Where [`Backend::generate_joining`] takes its requests from and hands its
/// text and results to, by each request's number.
pub trait Arrivals {
    /// The requests that join now, each with its number (from 0, in the
    /// order they join); none when none is waiting (never waits).
    fn join(&mut self) -> Vec<(usize, GenerationRequest)>;
    /// New text of request `i`; [`Flow::Stop`] ends that request. An empty
    /// piece only asks whether to go on (between the chunks of a long
    /// prompt, where no text comes for a while).
    fn text(&mut self, i: usize, piece: &str) -> Flow;
    /// Request `i`'s result; nothing more comes for it.
    fn done(&mut self, i: usize, result: Result<Generation, BackendError>);
}

/// [`Backend::generate_joining`] for a backend that runs a batch to its end:
/// each group of requests that joins together is one batch.
pub fn batch_after_batch<B: Backend + ?Sized>(backend: &mut B, arrivals: &mut dyn Arrivals) {
    loop {
        let (numbers, requests): (Vec<usize>, Vec<GenerationRequest>) =
            arrivals.join().into_iter().unzip();
        if requests.is_empty() {
            return;
        }
        let results = backend.generate(&requests, &mut |i, piece| arrivals.text(numbers[i], piece));
        for (i, result) in numbers.into_iter().zip(results) {
            arrivals.done(i, result);
        }
    }
}

/// One batch known in full, as [`Arrivals`]: all its requests join at once,
/// and the results are kept in order. How a backend that lets requests join
/// runs [`Backend::generate`].
pub(crate) struct WholeBatch<'a> {
    requests: Option<Vec<GenerationRequest>>,
    on_token: &'a mut dyn FnMut(usize, &str) -> Flow,
    results: Vec<Option<Result<Generation, BackendError>>>,
}

impl<'a> WholeBatch<'a> {
    pub(crate) fn new(
        requests: &[GenerationRequest],
        on_token: &'a mut dyn FnMut(usize, &str) -> Flow,
    ) -> Self {
        Self {
            requests: Some(requests.to_vec()),
            on_token,
            results: (0..requests.len()).map(|_| None).collect(),
        }
    }

    /// The results, in the requests' order.
    pub(crate) fn results(self) -> Vec<Result<Generation, BackendError>> {
        self.results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(BackendError::Runtime("the model returned no result".into()))
                })
            })
            .collect()
    }
}

impl Arrivals for WholeBatch<'_> {
    fn join(&mut self) -> Vec<(usize, GenerationRequest)> {
        self.requests
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .collect()
    }

    fn text(&mut self, i: usize, piece: &str) -> Flow {
        (self.on_token)(i, piece)
    }

    fn done(&mut self, i: usize, result: Result<Generation, BackendError>) {
        if let Some(slot) = self.results.get_mut(i) {
            *slot = Some(result);
        }
    }
}

#[cfg(test)]
mod placement_tests {
    use super::Placement;

    #[test]
    fn devices_are_named_and_refused_as_the_help_says() {
        for (text, want) in [
            ("cpu", Placement::Cpu),
            ("CUDA", Placement::Cuda(0)),
            ("cuda:0", Placement::Cuda(0)),
            (" cuda:3 ", Placement::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Placement>(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999",
            "cuda:1:2",
        ] {
            let e = bad.parse::<Placement>().unwrap_err();
            assert!(e.contains("`cuda:N`"), "{bad}: {e}");
        }
        assert_eq!(Placement::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            serde_json::to_string(&Placement::Cuda(1)).unwrap(),
            "\"cuda:1\""
        );
        let back: Placement = serde_json::from_str("\"cpu\"").unwrap();
        assert!(back.is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_refuses_a_gpu_in_one_line() {
        let e = Placement::Cuda(0).device().unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("--device cpu"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert!(Placement::Cpu.device().unwrap().is_cpu());
    }
}
