//! Tasks: summarize, translate, digest. Clean-up, prompts, chunking, merging
//! and quality checks live here; no candle and no axum.
//!
//! A task sees models only through [`TextModel`] (generate text, count tokens)
//! and picks them through [`ModelRouter`], so the engine decides where the work
//! runs and the transports decide how it is asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use precis_backend::{
    BackendError, Cached, Generation, GenerationParams, GenerationRequest, ModelInfo, Placement,
    Quantize,
};

pub mod budget;
pub mod clean;
pub mod digest;
mod entities;
pub mod prompt;
pub mod quality;
pub mod summarize;
pub mod translate;

pub use clean::{DropReason, DroppedParagraph, PreparedArticle};
pub use quality::QualityFlag;

/// Version of the result schema; bumped on any incompatible change.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// An article as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Article {
    /// The caller's identifier, echoed in the result.
    pub id: Option<String>,
    /// Headline, when known separately from the text.
    pub title: Option<String>,
    /// The article text: paragraphs separated by blank lines.
    pub text: String,
    /// Where it was published (a feed item's link), echoed in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The language its source declares (a feed's, a page's, the
    /// caller's); an article not in English needs a translator that reads
    /// its language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// The jobs precis does. Closed: adding one makes every `match` on it fail to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A short English summary (or one in another language).
    Summarize,
    /// The whole article in other languages, paragraph by paragraph.
    Translate,
    /// A summary and its translations (and, when asked, full translations).
    Digest,
}

impl Task {
    /// The task's name as used on the command line and in routes.
    pub fn name(self) -> &'static str {
        match self {
            Task::Summarize => "summarize",
            Task::Translate => "translate",
            Task::Digest => "digest",
        }
    }
}

/// Requested summary length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Length {
    /// About this many sentences.
    Sentences(u32),
    /// About this many words.
    Words(u32),
}

impl Default for Length {
    fn default() -> Self {
        Length::Sentences(3)
    }
}

/// Optional overrides of generation settings, applied on top of each task's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationOverrides {
    /// Cap on new tokens for every generation call.
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy, the default).
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold.
    pub top_p: Option<f64>,
    /// Sampler seed.
    pub seed: Option<u64>,
    /// Repetition penalty (1.0 = none).
    pub repetition_penalty: Option<f32>,
}

impl GenerationOverrides {
    /// Applies the overrides to `params`.
    pub fn apply(&self, mut params: GenerationParams) -> GenerationParams {
        if let Some(m) = self.max_new_tokens {
            params.max_new_tokens = params.max_new_tokens.min(m.max(1));
        }
        if let Some(t) = self.temperature {
            params.temperature = t;
        }
        if let Some(p) = self.top_p {
            params.top_p = Some(p);
        }
        if let Some(s) = self.seed {
            params.seed = s;
        }
        if let Some(r) = self.repetition_penalty {
            params.repetition_penalty = r;
        }
        params
    }
}

/// Everything a task needs besides the article.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Target languages (translate, digest), in the order given; `None`:
    /// the engine's default targets for a digest, none for a translation.
    pub to: Option<Vec<String>>,
    /// Summary length (summarize, digest).
    pub length: Option<Length>,
    /// Language the summary is written in (summarize); English by default.
    pub summary_language: Option<String>,
    /// Digest: also translate the whole article.
    pub full: bool,
    /// Drop non-story paragraphs before the model sees the text.
    pub clean: bool,
    /// A flagged output fails the item instead of being returned with flags.
    pub strict: bool,
    /// Generation overrides.
    pub generation: GenerationOverrides,
}

impl TaskOptions {
    /// The target languages (none when [`to`](Self::to) is unset).
    pub fn targets(&self) -> &[String] {
        self.to.as_deref().unwrap_or_default()
    }
}

/// One task on one article, as every transport asks for it: an HTTP
/// request (single, array item or stream), a batch job's item, an input of
/// the CLI. The engine checks it and fills in its defaults.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// What to do.
    pub task: Task,
    /// The article.
    pub article: Article,
    /// How.
    pub options: TaskOptions,
    /// The model to run it on; `None`: the engine's routing picks.
    pub model: Option<String>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            to: None,
            length: None,
            summary_language: None,
            full: false,
            clean: true,
            strict: false,
            generation: GenerationOverrides::default(),
        }
    }
}

/// Lets a caller stop work that is no longer wanted.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every holder to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a model hands text as it is produced: `(request index, new text)`.
pub(crate) type TextSink<'a> = &'a mut dyn FnMut(usize, &str);

/// A model as tasks see it: generate text, count tokens. The engine implements it.
pub trait TextModel: Send + Sync {
    /// What the model is.
    fn info(&self) -> &ModelInfo;
    /// Tokens the text takes in this model's tokenizer.
    fn count_tokens(&self, text: &str) -> Result<usize, BackendError>;
    /// Generates for each request, in order. Stops early when `cancel` is set.
    /// When given, `on_text(i, piece)` receives request `i`'s text as it is
    /// produced (a token at a time where the model decodes that way, the
    /// whole text at once where it searches beams).
    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
        cancel: &CancelToken,
        on_text: Option<TextSink<'_>>,
    ) -> Vec<Result<Generation, BackendError>>;
}

/// Which model serves which job.
pub trait ModelRouter: Send + Sync {
    /// The model that writes summaries (in `language`).
    fn summarizer(&self, language: &str) -> Result<Arc<dyn TextModel>, TaskError>;
    /// The model that translates from `from` into `to` (ISO 639-1 codes).
    fn translator(&self, from: &str, to: &str) -> Result<Arc<dyn TextModel>, TaskError>;
}

/// Progress of a long task: `done` of `total` generation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Steps finished.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// What a running task reports as it goes: the CLI draws a progress bar
/// from it, the server streams it (Server-Sent Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent<'a> {
    /// A step (the summary, a translated paragraph) finished.
    Progress(Progress),
    /// Summary text as the model writes it, a token (or, from a beam-search
    /// summarizer, the whole text) at a time. It is the model's raw output:
    /// the finished [`Summary`] is tidied (labels and quotes removed).
    SummaryText {
        /// Language of the summary.
        language: &'a str,
        /// The new text.
        text: &'a str,
    },
    /// A translated headline or paragraph, in its final form.
    Paragraph {
        /// Target language.
        language: &'a str,
        /// Whether the summary or the article is being translated.
        source: TranslationSource,
        /// Position among the paragraphs; `None` for the headline.
        index: Option<usize>,
        /// The translation.
        text: &'a str,
    },
}

/// Where a task reports [`TaskEvent`]s.
pub(crate) type EventFn<'a> = &'a (dyn Fn(TaskEvent<'_>) + Sync);

/// The model that produced an output, and why it was picked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelUsed {
    /// Manifest id (or the path / repo it was named by).
    pub id: String,
    /// Revision of the weights.
    pub revision: String,
    /// Model family.
    pub family: String,
    /// The weights' licence, when a manifest names it (a non-commercial
    /// one, such as NLLB-200's CC-BY-NC-4.0, binds what the output may be
    /// used for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// What precis quantized the weights to at load (`--quantize`;
    /// absent: nothing, the checkpoint's own weights).
    #[serde(default, skip_serializing_if = "Quantize::is_none")]
    pub quantize: Quantize,
    /// Where it ran (`cuda:0`; absent: the CPU).
    #[serde(default, skip_serializing_if = "Placement::is_cpu")]
    #[schema(value_type = String, example = "cuda:0")]
    pub device: Placement,
}

impl From<&ModelInfo> for ModelUsed {
    fn from(i: &ModelInfo) -> Self {
        Self {
            id: i.id.clone(),
            revision: i.revision.clone(),
            family: i.family.clone(),
            license: i.license.clone(),
            quantize: i.quantize,
            device: i.device,
        }
    }
}

/// Token counts of one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct TokenStats {
    /// Prompt tokens over all generation calls.
    pub prompt: usize,
    /// Generated tokens over all generation calls (when they were
    /// generated, for results taken from the cache).
    pub generated: usize,
    /// Generation calls answered from the result cache.
    #[serde(skip)]
    pub cache_hits: usize,
    /// Generation calls the cache did not have.
    #[serde(skip)]
    pub cache_misses: usize,
}

impl TokenStats {
    fn add(&mut self, g: &Generation) {
        self.prompt += g.prompt_tokens;
        self.generated += g.generated_tokens;
        match g.cache {
            Cached::Hit => self.cache_hits += 1,
            Cached::Miss => self.cache_misses += 1,
            Cached::Off => {}
        }
    }
}

/// How the result cache served a task: generation calls answered from it,
/// and calls that ran a model (and were then stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct CacheUse {
    /// Calls answered from the cache.
    pub hits: usize,
    /// Calls that ran the model.
    pub misses: usize,
}

/// A summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// Language it is written in.
    pub language: String,
    /// The summary.
    pub text: String,
    /// The length asked for (an LLM's default when none was; absent for a
    /// dedicated summarizer asked for none, which then writes the length
    /// its checkpoint's settings give).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<Length>,
    /// Words in `text`.
    pub words: usize,
    /// The model that wrote it.
    pub model: ModelUsed,
    /// Generation settings used (an LLM's; a dedicated summarizer uses its
    /// checkpoint's own, with `length` applied when it was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<GenerationParams>,
    /// A dedicated summarizer's pieces of the article when it did not fit
    /// the model's input limit at once: each chunk was summarized, then the
    /// chunk summaries together (in `reduce_rounds` rounds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkReport>,
    /// Rounds of summarizing summaries (0: the article fitted at once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reduce_rounds: usize,
    /// How an article not in English was summarized: through an English
    /// translation, or directly by an LLM (absent for an English article).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Token counts.
    pub tokens: TokenStats,
    /// Quality flags (see the README's table of thresholds).
    #[schema(value_type = Vec<quality::FlagRepr>)]
    pub flags: Vec<QualityFlag>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One chunk of an article that a dedicated summarizer took in pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkReport {
    /// First paragraph in the chunk (0-based, among the kept paragraphs).
    pub first_paragraph: usize,
    /// Last paragraph in the chunk (inclusive).
    pub last_paragraph: usize,
    /// When a paragraph longer than the limit was split at sentences: this
    /// chunk's part and the number of parts, `[k, n]` (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<usize>>, min_items = 2, max_items = 2)]
    pub part: Option<[usize; 2]>,
    /// Tokens the chunk takes as the model's input.
    pub tokens: usize,
}

/// What was translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TranslationSource {
    /// The summary.
    Summary,
    /// The whole article.
    Article,
}

/// A translation of the summary or of the whole article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Translation {
    /// Target language code.
    pub language: String,
    /// The source text's language when it is not English (an article in
    /// another language, translated directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What was translated.
    pub source: TranslationSource,
    /// The translated headline, when the source had one.
    pub title: Option<String>,
    /// One output paragraph per input paragraph, in order.
    pub paragraphs: Vec<String>,
    /// The paragraphs joined by blank lines.
    pub text: String,
    /// The model that wrote it.
    pub model: ModelUsed,
    /// Generation settings used (per paragraph; `max_new_tokens` is the largest used).
    pub params: GenerationParams,
    /// Token counts.
    pub tokens: TokenStats,
    /// Quality flags (see the README's table of thresholds).
    #[schema(value_type = Vec<quality::FlagRepr>)]
    pub flags: Vec<QualityFlag>,
}

/// What clean-up did to the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputReport {
    /// Headline separated from the text (or the given title).
    pub headline: Option<String>,
    /// Body paragraphs in the input.
    pub paragraphs_in: usize,
    /// Paragraphs kept after clean-up (the count every full translation has).
    pub paragraphs_kept: usize,
    /// Characters of kept text.
    pub characters: usize,
    /// Paragraphs dropped as non-story text, with index and reason.
    pub dropped: Vec<DroppedParagraph>,
    /// The article's language when it is not English: declared by its
    /// source or detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<ArticleLanguage>,
}

/// The language an article is written in, and how precis knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArticleLanguage {
    /// Its ISO 639-1 code (a declared code precis does not know, as given).
    pub code: String,
    /// Its English name, when precis knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `declared` (by its source: a feed's, item's or page's language, a
    /// request's `language`), `detected` (from the text), or `assumed`
    /// (English: text too short to tell).
    pub how: String,
}

impl ArticleLanguage {
    fn new(code: &str, how: &str) -> Self {
        Self {
            code: code.to_string(),
            name: language_name(code).map(str::to_string),
            how: how.to_string(),
        }
    }

    /// Its name for messages: the English name, else the code.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("`{}`", self.code))
    }
}

/// The result of one task on one article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResult {
    /// Version of this schema.
    pub schema_version: u32,
    /// The task run.
    pub task: Task,
    /// The caller's id for the article.
    pub id: Option<String>,
    /// The article's title (given or found).
    pub title: Option<String>,
    /// Where the article was published, when known (a feed item's link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What clean-up did.
    pub input: InputReport,
    /// The summary (summarize, digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Translations (translate, digest), in the order of `to`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<Translation>,
    /// How the result cache served it (absent when there is no cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheUse>,
}

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The article has more characters than the engine accepts.
    #[error(
        "the text has {chars} characters; at most {limit} are accepted per article (--max-chars)"
    )]
    TextTooLong {
        /// Its characters.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing to work on.
    #[error("the article is empty: give it some text")]
    EmptyText,
    /// The article is not in English and no present translator reads it.
    #[error(
        "the article is in {language} ({how}) and no present model reads it: fetch a many-to-many translator (`precis models fetch m2m100-418m`, or NLLB-200 with --allow-noncommercial) or name one with --translator"
    )]
    NotEnglish {
        /// The language, in words (or the declared code).
        language: String,
        /// `declared` or `detected`.
        how: String,
    },
    /// Clean-up left no story paragraph.
    #[error("the article has no story text left after clean-up ({dropped} non-story paragraphs dropped); pass --no-clean / \"clean\": false to keep them")]
    NothingLeft {
        /// Paragraphs dropped.
        dropped: usize,
    },
    /// No present model writes this language.
    #[error("unsupported language `{code}`; supported: {supported}")]
    UnsupportedLanguage {
        /// The code asked for.
        code: String,
        /// Codes that are supported, comma separated.
        supported: String,
    },
    /// The same language twice.
    #[error("language `{0}` is listed twice")]
    DuplicateLanguage(String),
    /// A translation task with no target.
    #[error("no target language given: pass --to ru,hi or \"to\": [\"ru\", \"hi\"]")]
    NoTargetLanguage,
    /// Translation into the source language.
    #[error("`{from}` is the article's language; translation targets are {targets}")]
    SameLanguage {
        /// The source language.
        from: String,
        /// The languages that could be asked for, comma separated.
        targets: String,
    },
    /// The input does not fit the model and cannot be split further.
    #[error("{what} needs {tokens} tokens but model `{model}` accepts at most {limit} here; shorten it or use a model with a longer context")]
    InputTooLong {
        /// What is too long (the article, paragraph N, …).
        what: String,
        /// Its size in tokens.
        tokens: usize,
        /// The limit.
        limit: usize,
        /// The model.
        model: String,
    },
    /// `strict` was set and an output was flagged.
    #[error("output flagged in strict mode: {0}")]
    Flagged(String),
    /// The model failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A model the task needs could not be loaded.
    #[error("model `{id}` cannot be loaded: {source}")]
    ModelUnavailable {
        /// The model.
        id: String,
        /// Why.
        #[source]
        source: crate::error::LoadError,
    },
    /// Summaries of an article's chunks stay over the model's input limit:
    /// the article is too long for this model to summarize.
    #[error("{0}")]
    Unreducible(String),
    /// The caller went away.
    #[error("cancelled")]
    Cancelled,
    /// precis broke one of its own rules (a bug): reported as `internal`,
    /// never as the model's or the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Runs one task on one article.
pub fn run(
    task: Task,
    article: &Article,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    events: EventFn<'_>,
) -> Result<TaskResult, TaskError> {
    let prepared = prepare(article, options)?;
    let language = article_language(article.language.as_deref(), &prepared);
    validate_languages(task, options, models, &language)?;
    let from = language.code.as_str();
    let input = InputReport {
        headline: prepared.headline.clone(),
        paragraphs_in: prepared.paragraphs_in,
        paragraphs_kept: prepared.paragraphs.len(),
        characters: prepared.paragraphs.iter().map(|p| p.chars().count()).sum(),
        dropped: prepared.dropped.clone(),
        language: (from != "en").then(|| language.clone()),
    };
    let (summary, translations) = match task {
        Task::Summarize => {
            let language = options.summary_language.as_deref().unwrap_or("en");
            let s = summarize::summarize_from(
                &prepared, from, language, options, models, cancel, events,
            )?;
            events(TaskEvent::Progress(Progress { done: 1, total: 1 }));
            (Some(s), Vec::new())
        }
        Task::Translate => {
            let t = translate::translate_article(&prepared, from, options, models, cancel, events)?;
            (None, t)
        }
        Task::Digest => {
            let (s, t) = digest::digest(&prepared, from, options, models, cancel, events)?;
            (Some(s), t)
        }
    };
    if options.strict {
        let mut flagged: Vec<String> = Vec::new();
        if let Some(s) = &summary {
            flagged.extend(s.flags.iter().map(|f| format!("summary: {}", f.message())));
        }
        for t in &translations {
            flagged.extend(
                t.flags
                    .iter()
                    .map(|f| format!("{}: {}", t.language, f.message())),
            );
        }
        if !flagged.is_empty() {
            return Err(TaskError::Flagged(flagged.join("; ")));
        }
    }
    let stats = summary
        .iter()
        .map(|s| &s.tokens)
        .chain(translations.iter().map(|t| &t.tokens));
    let cache = stats.fold(CacheUse::default(), |acc, t| CacheUse {
        hits: acc.hits + t.cache_hits,
        misses: acc.misses + t.cache_misses,
    });
    let cache = (cache.hits + cache.misses > 0).then_some(cache);
    Ok(TaskResult {
        schema_version: SCHEMA_VERSION,
        task,
        id: article.id.clone(),
        title: prepared.headline.clone(),
        url: article.url.clone(),
        input,
        summary,
        translations,
        cache,
    })
}

/// Cleans the article and checks there is something left to work on.
pub fn prepare(article: &Article, options: &TaskOptions) -> Result<PreparedArticle, TaskError> {
    if article.text.trim().is_empty() {
        return Err(TaskError::EmptyText);
    }
    let prepared = clean::prepare(
        &article.text,
        article.title.as_deref(),
        &clean::CleanOptions {
            enabled: options.clean,
        },
    );
    if prepared.paragraphs.is_empty() {
        if prepared.dropped.is_empty() {
            return Err(TaskError::EmptyText);
        }
        return Err(TaskError::NothingLeft {
            dropped: prepared.dropped.len(),
        });
    }
    Ok(prepared)
}

/// The language of an article: what its source declares (the primary
/// subtag of `declared`), else what detection finds reliably in its kept
/// text, else English (text too short to tell).
pub fn article_language(declared: Option<&str>, prepared: &PreparedArticle) -> ArticleLanguage {
    if let Some(code) = declared {
        let primary = precis_backend::languages::primary_subtag(code);
        // A language subtag is two or three letters; anything else (a
        // caller's or a feed's junk, however long) is no declaration.
        if (2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_lowercase()) {
            let code = precis_backend::languages::iso_639_1(&primary).unwrap_or(&primary);
            return ArticleLanguage::new(code, "declared");
        }
    }
    match whatlang::detect(&prepared.body()) {
        Some(info) if info.is_reliable() && info.lang() != whatlang::Lang::Eng => {
            match precis_backend::languages::iso_639_1(info.lang().code()) {
                Some(code) => ArticleLanguage::new(code, "detected"),
                None => ArticleLanguage {
                    code: info.lang().code().to_string(),
                    name: Some(info.lang().eng_name().to_string()),
                    how: "detected".into(),
                },
            }
        }
        _ => ArticleLanguage::new("en", "assumed"),
    }
}

/// A language detection found in a text: its ISO 639-1 code and how sure
/// detection is of it (0 to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// The language's code.
    pub code: String,
    /// Detection's confidence, 0 to 1.
    pub confidence: f64,
}

/// The language of `text` among `among` (ISO 639-1 codes; the languages
/// detection knows of them), or `None` when detection cannot tell (no
/// letters, or none of `among` is known to it). When detection among all
/// the languages it knows finds another one likelier, the confidence is
/// lowered by that one's: French text among English and Russian is
/// English, barely.
pub fn detect_language(text: &str, among: &[String]) -> Option<Detected> {
    let allowed: Vec<whatlang::Lang> = whatlang::Lang::all()
        .iter()
        .copied()
        .filter(|l| {
            precis_backend::languages::iso_639_1(l.code())
                .is_some_and(|code| among.iter().any(|a| a == code))
        })
        .collect();
    if allowed.is_empty() {
        return None;
    }
    let info = whatlang::Detector::with_allowlist(allowed).detect(text)?;
    let confidence = match whatlang::detect(text) {
        Some(other) if other.lang() != info.lang() => {
            info.confidence() * (1.0 - other.confidence())
        }
        _ => info.confidence(),
    };
    Some(Detected {
        code: precis_backend::languages::iso_639_1(info.lang().code())?.to_string(),
        confidence,
    })
}

/// Checks the languages of a request: no target twice, each served by a
/// present model, and an article not in English read by a translator.
pub(crate) fn validate_languages(
    task: Task,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    language: &ArticleLanguage,
) -> Result<(), TaskError> {
    let from = language.code.as_str();
    let unread = |e: TaskError| match e {
        TaskError::UnsupportedLanguage { .. } if from != "en" => TaskError::NotEnglish {
            language: language.label(),
            how: language.how.clone(),
        },
        other => other,
    };
    let mut seen: Vec<&str> = Vec::new();
    for code in options.targets() {
        if seen.contains(&code.as_str()) {
            return Err(TaskError::DuplicateLanguage(code.clone()));
        }
        seen.push(code);
    }
    // An article not in English needs a translator that reads its
    // language (a many-to-many one), whatever the task: it translates the
    // article, or the article into English for a summarizer that reads only
    // English (an LLM summarizer reads it directly).
    if from != "en" {
        models.translator(from, "en").map_err(unread)?;
    }
    if matches!(task, Task::Summarize | Task::Digest) {
        models.summarizer(options.summary_language.as_deref().unwrap_or("en"))?;
    }
    if task == Task::Translate && options.targets().is_empty() {
        return Err(TaskError::NoTargetLanguage);
    }
    if matches!(task, Task::Translate | Task::Digest) {
        for code in options.targets() {
            // A digest translates its English summary; the article itself
            // only with `full`, and a translation reads the article.
            if task == Task::Digest {
                models.translator("en", code)?;
            }
            if task == Task::Translate || options.full {
                models.translator(from, code).map_err(unread)?;
            }
        }
    }
    Ok(())
}

/// Runs requests on a model, turning cancellation into an error.
fn generate_all(
    model: &dyn TextModel,
    requests: Vec<GenerationRequest>,
    cancel: &CancelToken,
) -> Result<Vec<Generation>, TaskError> {
    finish_generation(model.generate(requests, cancel, None), cancel)
}

/// [`generate_all`], handing the text to `on_text` as it is produced.
fn generate_streamed(
    model: &dyn TextModel,
    requests: Vec<GenerationRequest>,
    cancel: &CancelToken,
    on_text: TextSink<'_>,
) -> Result<Vec<Generation>, TaskError> {
    finish_generation(model.generate(requests, cancel, Some(on_text)), cancel)
}

/// A model's results, or [`TaskError::Cancelled`] when `cancel` was set.
fn finish_generation(
    out: Vec<Result<Generation, BackendError>>,
    cancel: &CancelToken,
) -> Result<Vec<Generation>, TaskError> {
    if cancel.is_cancelled() {
        return Err(TaskError::Cancelled);
    }
    out.into_iter()
        .map(|r| r.map_err(TaskError::from))
        .collect()
}

/// Normalises language codes as given by users: trimmed, lower case.
pub fn normalise_languages(codes: &[String]) -> Vec<String> {
    codes
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect()
}

pub use crate::languages::language_name;

#[cfg(test)]
mod tests {
    use super::detect_language;

    fn among(codes: &[&str]) -> Vec<String> {
        codes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn detection_names_a_language_among_those_given_and_says_how_sure() {
        let all = among(&["en", "hi", "ru"]);
        let ru = detect_language("Министры иностранных дел встретились в четверг.", &all).unwrap();
        assert_eq!(ru.code, "ru");
        assert!(ru.confidence > 0.5, "{ru:?}");
        let en = detect_language("Foreign ministers met in New Delhi on Thursday.", &all).unwrap();
        assert_eq!(en.code, "en");
        assert!(en.confidence > 0.5, "{en:?}");
        // French among English and Russian: English, barely.
        let fr = detect_language(
            "Les ministres des affaires étrangères se sont réunis jeudi à New Delhi.",
            &among(&["en", "ru"]),
        )
        .unwrap();
        assert_eq!(fr.code, "en");
        assert!(fr.confidence < 0.5, "{fr:?}");
        assert_eq!(detect_language("Hello there.", &[]), None);
        assert_eq!(detect_language("12345 !!!", &all), None);
    }
}
