//! The command line (clap only here). Flags are parsed in two stages: clap
//! fills raw structs, then they become ready objects (engine, options, inputs)
//! with the configuration file's values filled in where a flag was not given.
//!
//! Exit codes: 0 all articles done; 1 at least one article failed (each one is
//! named on stderr and carries its error in the output); 2 bad usage or input
//! that could not be read at all; 3 a model could not be fetched or loaded.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

pub mod config;
pub mod input;

use crate::cli::config::{CacheConfig, Config, DEFAULT_MODEL};
use precis_backend::store::{ModelSpec, ModelStore, StoreConfig};
use precis_core::cache::ResultCache;
use precis_core::database::Database;
use precis_core::engine::{Engine, EngineError, ModelChoice, Quantization};
use precis_core::task::{
    CancelToken, GenerationOverrides, Length, Task, TaskEvent, TaskOptions, TaskRequest,
};
use precis_service::app::{ModelAccess, Services, Settings};
use precis_service::render::{self, ErrorBody, Format, Outcome};

/// Summaries of news articles, and their Russian and Hindi versions, with open models.
#[derive(Debug, Parser)]
#[command(name = "precis", version, about, long_about = None, after_help = "Examples:\n  precis digest --to ru,hi examples/sample-article.txt\n  precis summarize --sentences 2 --format markdown articles/\n  precis digest --to ru,hi --format html --out digest.html examples/feeds/basin-weekly.rss\n  cat feed.jsonl | precis translate --to ru --format jsonl --jsonl -\n  precis serve --addr 127.0.0.1:8080")]
pub struct Cli {
    /// Configuration file (TOML); see the README.
    #[arg(
        long,
        global = true,
        env = "PRECIS_CONFIG",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Directory for fetched models and their verification record [default: $PRECIS_HOME or the user cache dir].
    #[arg(
        long,
        global = true,
        env = "PRECIS_HOME",
        hide_env_values = true,
        value_name = "DIR"
    )]
    pub models_dir: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Let translators under a non-commercial licence (NLLB-200, CC-BY-NC-4.0) serve requests when their files are present or obtainable; results name the licence [default: the config file's `allow_noncommercial`, else no].
    #[arg(
        long,
        global = true,
        env = "PRECIS_ALLOW_NONCOMMERCIAL",
        hide_env_values = true
    )]
    pub allow_noncommercial: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarize articles (English by default).
    Summarize(SummarizeArgs),
    /// Translate whole articles, paragraph by paragraph.
    Translate(TranslateArgs),
    /// Summary plus its translations (and, with --full, full translations).
    Digest(DigestArgs),
    /// List, fetch and verify models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run the REST API.
    Serve(ServeArgs),
    /// Inspect and tidy the result cache.
    Cache(CacheArgs),
    /// Tidy the batch jobs a server keeps.
    Jobs(JobsArgs),
    /// The languages the models would write, and which model writes each.
    Languages(LanguagesArgs),
}

/// `precis languages`.
#[derive(Debug, Args)]
pub struct LanguagesArgs {
    /// The model to ask about (default: the configured models, dedicated
    /// models whose files are present or obtainable, and the default model).
    #[arg(long, env = "PRECIS_MODEL", hide_env_values = true)]
    model: Option<String>,
    /// As JSON.
    #[arg(long)]
    json: bool,
}

/// `precis jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// What to do.
    #[command(subcommand)]
    command: JobsCommand,
    /// The database the jobs are kept in (the server's cache file).
    #[command(flatten)]
    cache: crate::cli::config::CacheConfig,
}

/// `precis jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Delete the jobs that ended and were created more than the retention
    /// ago, with their items and webhook calls (a server does this hourly).
    Prune {
        /// Days a job is kept [default: the config's, else 30].
        #[arg(long, value_name = "DAYS")]
        job_retention_days: Option<u64>,
    },
}

/// `precis cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    command: CacheCommand,
    /// Which cache, and its limits.
    #[command(flatten)]
    cache: crate::cli::config::CacheConfig,
}

/// `precis cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Where the cache is, what it holds, and its limits.
    Stats {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop what is past the age limit, then the least recently used past the size limit.
    Prune,
    /// Remove every cached result.
    Clear,
}

/// `--format`'s values and their help, from the formats themselves.
fn format_parser() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(Format::ALL.map(|f| PossibleValue::new(f.name()).help(f.about())))
        .try_map(|name| name.parse::<Format>())
}

/// Options shared by the three tasks.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Articles: files, folders (their .txt, .md, .html, .jsonl and feed files), http(s) URLs, or `-` for stdin. A feed (RSS 2.0, Atom, JSON Feed 1.1) gives one article per item; an HTML page its main text.
    #[arg(value_name = "INPUT", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Read inputs as JSON Lines ({"id", "title", "text" or "html", "url", "language"} per line); implied for *.jsonl files.
    #[arg(long)]
    pub jsonl: bool,
    /// Output format.
    #[arg(long, short, value_parser = format_parser(), default_value = "json")]
    pub format: Format,
    /// Model for every job: a manifest id, a hub repo id, a local .gguf file, or a checkpoint directory (Marian, BART, T5) [default: from the config file, else qwen2.5-coder-1.5b-instruct-q4_k_m].
    #[arg(long, short, env = "PRECIS_MODEL", hide_env_values = true)]
    pub model: Option<String>,
    /// Summarizer for summarize and digest: a manifest id (distilbart-cnn-12-6, flan-t5-base, ...), a hub repo id, or a checkpoint directory [default: the config file's `summarizer`, else a dedicated summarizer whose files are present or obtainable from the hub, else --model].
    #[arg(long, value_name = "MODEL")]
    pub summarizer: Option<String>,
    /// Translator for translate and digest: a manifest id (opus-mt-en-ru, m2m100-418m, ...), a hub repo id, or a checkpoint directory [default: the config file's `translator`, else the dedicated translators whose files are present or obtainable from the hub (NLLB-200 with --allow-noncommercial, opus-mt, MADLAD-400, M2M100), else --model].
    #[arg(long, value_name = "MODEL")]
    pub translator: Option<String>,
    /// Keep non-story paragraphs (photo credits, comment forms, ...).
    #[arg(long)]
    pub no_clean: bool,
    /// Fail an article whose output is flagged instead of returning it with flags.
    #[arg(long)]
    pub strict: bool,
    /// Cap on new tokens per generation call.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy, the default).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sampler seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Repetition penalty (1.0 = none; default 1.1).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Write the output to this file instead of stdout (atomically: a temporary file, then renamed).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the output into this folder: `<job>.<ext>`, or for --format jsonfeed one `<job>.<language>.json` per language; each file atomically.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub out_dir: Option<PathBuf>,
    /// Where models run: cpu, or cuda / cuda:N for a CUDA GPU (needs a build with --features cuda; unverified on a GPU) [default: the config file's, else cpu].
    #[arg(
        long,
        value_name = "DEVICE",
        env = "PRECIS_DEVICE",
        hide_env_values = true
    )]
    pub device: Option<precis_backend::Placement>,
    /// Same as --device cuda (the first CUDA GPU).
    #[arg(long, conflicts_with = "device")]
    pub cuda: bool,
    /// Quantize encoder-decoder models' weights at load: int8 (like CTranslate2's int8: a quarter of the memory, faster on CPU, near-equal output) or none (f32: transformers' results) [default: the config file's, else none].
    #[arg(
        long,
        value_name = "TYPE",
        env = "PRECIS_QUANTIZE",
        hide_env_values = true
    )]
    pub quantize: Option<precis_backend::Quantize>,
    /// Articles worked on at once; the model batches their generations together.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// For feed items whose text is a teaser (under 150 words) with a link: fetch the linked page and work on its main text.
    #[arg(long)]
    pub fetch_articles: bool,
    /// The articles' language (ISO 639-1, e.g. ru) [default: what each article's source declares, else detected, else en]; one not in English needs a translator that reads it.
    #[arg(long, value_name = "CODE")]
    pub from: Option<String>,
    /// Hosts or networks that may be fetched although not public (feeds and pages are otherwise fetched from public addresses only), comma separated: 127.0.0.1, 10.0.0.0/8, intranet.example.
    #[arg(
        long,
        value_delimiter = ',',
        env = "PRECIS_ALLOW_ADDRESSES",
        hide_env_values = true,
        value_name = "HOSTS"
    )]
    pub allow_address: Vec<precis_service::fetch::AllowEntry>,
    /// Result cache settings.
    #[command(flatten)]
    pub cache: crate::cli::config::CacheConfig,
}

/// Summary length flags.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct LengthArgs {
    /// Summary length in sentences [default: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub sentences: Option<u32>,
    /// Summary length in words.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(5..=1000))]
    pub words: Option<u32>,
}

impl LengthArgs {
    fn length(&self) -> Option<Length> {
        match (self.sentences, self.words) {
            (Some(s), _) => Some(Length::Sentences(s)),
            (None, Some(w)) => Some(Length::Words(w)),
            _ => None,
        }
    }
}

/// `precis summarize`.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    args: TaskArgs,
    #[command(flatten)]
    length: LengthArgs,
    /// Write the summary in this language (en, ru, hi).
    #[arg(long, value_name = "CODE")]
    language: Option<String>,
}

/// `precis translate`.
#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    args: TaskArgs,
    /// Target languages, comma separated (e.g. ru,hi).
    #[arg(long, value_delimiter = ',', required = true, value_name = "CODES")]
    to: Vec<String>,
}

/// `precis digest`.
#[derive(Debug, Args)]
pub struct DigestArgs {
    #[command(flatten)]
    args: TaskArgs,
    #[command(flatten)]
    length: LengthArgs,
    /// Target languages, comma separated [default: ru,hi, those of them the models write; else every language they write].
    #[arg(long, value_delimiter = ',', value_name = "CODES")]
    to: Vec<String>,
    /// Also translate the whole article.
    #[arg(long)]
    full: bool,
}

/// `precis models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Known models, whether they are present, and where.
    List,
    /// Download a model (hub, then the offline mirror) and verify it.
    Fetch {
        /// Manifest id or hub repo id.
        ids: Vec<String>,
    },
    /// Re-hash model files and compare with their manifests.
    Verify {
        /// Manifest id [default: every present model].
        id: Option<String>,
    },
}

/// `precis serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Default model [default: from the config file, else qwen2.5-coder-1.5b-instruct-q4_k_m].
    #[arg(long, short, env = "PRECIS_MODEL", hide_env_values = true)]
    model: Option<String>,
    /// Do not fetch or load models at start-up; load present ones on first use (never downloads).
    #[arg(long)]
    lazy: bool,
    /// Where models run: cpu, or cuda / cuda:N for a CUDA GPU (needs a build with --features cuda; unverified on a GPU) [default: the config file's, else cpu].
    #[arg(
        long,
        value_name = "DEVICE",
        env = "PRECIS_DEVICE",
        hide_env_values = true
    )]
    device: Option<precis_backend::Placement>,
    /// Same as --device cuda (the first CUDA GPU).
    #[arg(long, conflicts_with = "device")]
    cuda: bool,
    /// Quantize encoder-decoder models' weights at load: int8 (like CTranslate2's int8: a quarter of the memory, faster on CPU, near-equal output) or none (f32: transformers' results) [default: the config file's, else none].
    #[arg(
        long,
        value_name = "TYPE",
        env = "PRECIS_QUANTIZE",
        hide_env_values = true
    )]
    quantize: Option<precis_backend::Quantize>,
    /// Server settings (each also a `[server]` key of the config file).
    #[command(flatten)]
    server: crate::cli::config::ServerConfig,
    /// Result cache settings (each also a `[cache]` key of the config file).
    #[command(flatten)]
    cache: crate::cli::config::CacheConfig,
}

/// Exit code: everything done.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one article failed.
pub const EXIT_ITEM_FAILED: i32 = 1;
/// Exit code: bad usage or unreadable input.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: a model could not be fetched or loaded.
pub const EXIT_MODEL: i32 = 3;

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.allow_noncommercial |= cli.allow_noncommercial;
    let store = store_config(&cli, &config);
    match cli.command {
        Command::Summarize(a) => {
            let mut opts = task_options(&a.args);
            opts.length = a.length.length();
            opts.summary_language = a.language.map(|l| l.trim().to_ascii_lowercase());
            run_task(Task::Summarize, &a.args, opts, &config, store, cli.quiet)
        }
        Command::Translate(a) => {
            let mut opts = task_options(&a.args);
            opts.to = Some(precis_core::task::normalise_languages(&a.to));
            run_task(Task::Translate, &a.args, opts, &config, store, cli.quiet)
        }
        Command::Digest(a) => {
            let mut opts = task_options(&a.args);
            // Without `--to`, the engine's default targets.
            opts.to = (!a.to.is_empty()).then(|| precis_core::task::normalise_languages(&a.to));
            opts.length = a.length.length();
            opts.full = a.full;
            run_task(Task::Digest, &a.args, opts, &config, store, cli.quiet)
        }
        Command::Models(m) => models_command(m, &ModelStore::open(store)?),
        Command::Serve(a) => serve(a, &config, store),
        Command::Cache(c) => cache_command(c.command, &c.cache.or(&config)),
        Command::Jobs(j) => jobs_command(j.command, &j.cache.or(&config), &config.server),
        Command::Languages(l) => languages_command(&l, &config, store),
    }
}

/// Lists the languages the routed models write, as their manifests (or,
/// for a file named by path, their defaults) declare; nothing is fetched.
fn languages_command(
    args: &LanguagesArgs,
    config: &Config,
    store: StoreConfig,
) -> anyhow::Result<i32> {
    let models = model_choice(config, args.model.as_deref(), None, None);
    let no_cache = CacheConfig {
        no_cache: true,
        ..CacheConfig::default()
    };
    let services = build(&settings(
        store,
        models,
        ModelAccess::Any,
        &no_cache,
        None,
        true,
    )?)?;
    let languages = services.engine.languages();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&languages)?);
        return Ok(EXIT_OK);
    }
    println!("{:<6} {:<14} MODELS", "CODE", "LANGUAGE");
    for l in &languages {
        println!(
            "{:<6} {:<14} {}",
            l.code,
            l.name.as_deref().unwrap_or("-"),
            l.models.join(", ")
        );
    }
    Ok(EXIT_OK)
}

fn jobs_command(
    cmd: JobsCommand,
    cache: &CacheConfig,
    server: &crate::cli::config::ServerConfig,
) -> anyhow::Result<i32> {
    match cmd {
        JobsCommand::Prune { job_retention_days } => {
            let settings = crate::cli::config::ServerConfig {
                job_retention_days: job_retention_days.or(server.job_retention_days),
                ..crate::cli::config::ServerConfig::default()
            };
            let Some(retention) = settings.job_retention() else {
                println!("jobs are kept for ever (job retention 0 days): nothing to prune");
                return Ok(EXIT_OK);
            };
            let database = match cache.database() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let store = match precis_service::jobs::JobStore::open(&database) {
                Ok(store) => store,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let n = store.prune(retention)?;
            println!(
                "deleted {n} jobs that ended and were created more than {} days ago",
                retention.as_secs() / 86_400
            );
            Ok(EXIT_OK)
        }
    }
}

/// The models the flags and the config file ask for: `--model` (which
/// then serves every job not named by its own flag), else the config's
/// choices, else the default model.
fn model_choice(
    config: &Config,
    model: Option<&str>,
    summarizer: Option<&str>,
    translator: Option<&str>,
) -> ModelChoice {
    let forced = model.is_some();
    let first = |flag: Option<&str>, configured: &Option<String>| {
        flag.map(str::to_string)
            .or_else(|| (!forced).then(|| configured.clone()).flatten())
    };
    ModelChoice {
        model: model
            .map(str::to_string)
            .or_else(|| config.model.clone())
            .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
        forced,
        summarizer: first(summarizer, &config.summarizer),
        translator: first(translator, &config.translator),
        allow_noncommercial: config.allow_noncommercial,
    }
}

/// The parts' settings, resolved once: the store's from the environment
/// and the flags, the models', the cache's.
fn settings(
    store: StoreConfig,
    models: ModelChoice,
    access: ModelAccess,
    cache: &CacheConfig,
    max_chars: Option<usize>,
    allow_unverified: bool,
) -> anyhow::Result<Settings> {
    Ok(Settings {
        store,
        models,
        access,
        placement: precis_backend::Placement::Cpu,
        quantize: Quantization::default(),
        database: cache.database().map_err(anyhow::Error::msg)?,
        cache: (!cache.no_cache).then(|| cache.limits()),
        max_chars,
        allow_unverified,
    })
}

/// The parts `settings` make, each warning said on stderr.
fn build(settings: &Settings) -> anyhow::Result<Services> {
    let services = Services::build(settings)?;
    for warning in &services.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(services)
}

fn megabytes(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    }
}

fn cache_command(
    cmd: CacheCommand,
    settings: &crate::cli::config::CacheConfig,
) -> anyhow::Result<i32> {
    let database = match settings.database() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let cache = match ResultCache::open_unpruned(&database, settings.limits()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    match cmd {
        CacheCommand::Stats { json } => {
            let stats = cache.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(EXIT_OK);
            }
            println!("cache:   {}", stats.database);
            println!(
                "entries: {} ({} of results; {} stored)",
                stats.entries,
                megabytes(stats.bytes),
                megabytes(stats.stored_bytes)
            );
            println!(
                "limits:  {}, entries unused for {} days dropped",
                megabytes(stats.max_bytes),
                stats.max_age_days
            );
            if let Some(secs) = stats.oldest_use_secs {
                println!("oldest:  last used {} days ago", secs / 86_400);
            }
            for m in &stats.models {
                println!("  {:>8}  {}", m.entries, m.model);
            }
        }
        CacheCommand::Prune => {
            let report = cache.prune()?;
            let stats = cache.stats()?;
            println!(
                "removed {} unused past the age limit and {} past the size limit; {} entries ({} of results) left",
                report.expired,
                report.evicted,
                stats.entries,
                megabytes(stats.bytes)
            );
        }
        CacheCommand::Clear => {
            let removed = cache.clear()?;
            println!("removed {removed} cached results from {}", cache.database());
        }
    }
    Ok(EXIT_OK)
}

/// The model store's settings: the environment's, then the config file's
/// and the flags'.
fn store_config(cli: &Cli, config: &Config) -> StoreConfig {
    let mut sc = StoreConfig::from_env();
    if let Some(dir) = cli.models_dir.clone().or_else(|| config.models_dir.clone()) {
        sc.root = dir;
    }
    sc.extra_manifest_dirs
        .extend(config.manifest_dirs.iter().cloned());
    sc.progress = !cli.quiet;
    sc
}

fn task_options(a: &TaskArgs) -> TaskOptions {
    TaskOptions {
        clean: !a.no_clean,
        strict: a.strict,
        generation: GenerationOverrides {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            repetition_penalty: a.repetition_penalty,
        },
        ..TaskOptions::default()
    }
}

/// An article's outcome and where it came from.
type InputItemOutcome = (Outcome, String);

/// Runs one input item (with its own progress bar when `step_bar`).
fn run_item(
    engine: &Engine,
    task: Task,
    options: &TaskOptions,
    item: input::InputItem,
    step_bar: bool,
) -> InputItemOutcome {
    let origin = item.origin;
    let id = item.article.as_ref().ok().and_then(|a| a.id.clone());
    let result = match item.article {
        Err(message) => Err(ErrorBody {
            code: "unreadable_input".into(),
            message,
        }),
        Ok(article) => {
            let bar = step_bar.then(|| progress_bar(1, &origin));
            let report = |event: TaskEvent<'_>| {
                if let (Some(b), TaskEvent::Progress(p)) = (&bar, event) {
                    b.set_length(p.total as u64);
                    b.set_position(p.done as u64);
                }
            };
            let request = TaskRequest {
                task,
                article,
                options: options.clone(),
                model: None,
            };
            let r = engine.run(&request, &CancelToken::new(), &report);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            r.map(Box::new).map_err(|e| error_body(&e))
        }
    };
    let outcome = match result {
        Ok(r) => Outcome::Ok(r),
        Err(error) => Outcome::Failed {
            origin: origin.clone(),
            id,
            error,
        },
    };
    (outcome, origin)
}

/// Writes the outcomes where the arguments say: stdout, `--out`, or files in `--out-dir`.
fn write_output(task: Task, args: &TaskArgs, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let name = task.name();
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        if args.format == Format::Jsonfeed {
            for (lang, text) in render::json_feeds(outcomes, &format!("precis {name}")) {
                write_atomically(&dir.join(format!("{name}.{lang}.json")), &text)?;
            }
            return Ok(());
        }
        let path = dir.join(format!("{name}.{}", args.format.extension()));
        return write_atomically(&path, &render::render(outcomes, args.format));
    }
    let text = render::render(outcomes, args.format);
    match &args.out {
        Some(path) => write_atomically(path, &text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn run_task(
    task: Task,
    args: &TaskArgs,
    options: TaskOptions,
    config: &Config,
    store: StoreConfig,
    quiet: bool,
) -> anyhow::Result<i32> {
    if args.format == Format::Jsonfeed && args.out_dir.is_none() {
        eprintln!("error: --format jsonfeed writes one feed per language: give --out-dir DIR");
        return Ok(EXIT_USAGE);
    }
    let policy = precis_service::fetch::FetchPolicy {
        allow: args.allow_address.clone(),
        ..precis_service::fetch::FetchPolicy::default()
    };
    let items = match input::read_sources(&args.inputs, args.jsonl, &policy) {
        Ok(mut items) => {
            if args.fetch_articles {
                input::fetch_articles(&mut items, &policy);
            }
            if let Some(from) = &args.from {
                for article in items.iter_mut().filter_map(|i| i.article.as_mut().ok()) {
                    article.language = Some(from.trim().to_ascii_lowercase());
                }
            }
            items
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let models = model_choice(
        config,
        args.model.as_deref(),
        args.summarizer.as_deref(),
        args.translator.as_deref(),
    );
    let cache = args.cache.clone().or(config);
    let services = build(&Settings {
        placement: config.placement(args.device, args.cuda),
        quantize: config.quantization(args.quantize),
        ..settings(store, models, ModelAccess::Any, &cache, None, true)?
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Only what these options need: a translation into German by a present
    // M2M100 does not fetch the LLM that other languages would fall back to.
    let needed = services.engine.needed(task, &options);
    let ready = runtime
        .block_on(services.fetch_models(needed.clone()))
        .and_then(|()| services.engine.load(needed));
    if let Err(e) = ready {
        eprintln!("error: {e}");
        return Ok(EXIT_MODEL);
    }
    let engine: &Engine = &services.engine;
    let total = items.len();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if quiet || total < 2 || !terminal {
        None
    } else {
        Some(progress_bar(total as u64, "articles"))
    };
    let lines = !quiet && total >= 2 && !terminal;
    // Articles are worked on `--parallel` at a time: the model's worker
    // batches the generations of those in flight together.
    let parallel = usize::from(args.parallel).clamp(1, total.max(1));
    let step_bars = !quiet && terminal && parallel == 1;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<InputItemOutcome>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let items: Vec<std::sync::Mutex<Option<input::InputItem>>> = items
        .into_iter()
        .map(|i| std::sync::Mutex::new(Some(i)))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(item) = items.get(i).and_then(|m| m.lock().ok()?.take()) else {
                    break;
                };
                let outcome = run_item(engine, task, &options, item, step_bars);
                let k = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                if let Outcome::Failed { origin, error, .. } = &outcome.0 {
                    eprintln!("error: {origin}: {}", error.message);
                }
                if lines {
                    // No terminal to draw a bar on (a log, a CI job): a line per article.
                    let state = match &outcome.0 {
                        Outcome::Failed { .. } => "failed",
                        Outcome::Ok(_) => "done",
                    };
                    eprintln!("[{k}/{total}] {state}: {}", outcome.1);
                }
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(outcome);
                }
            });
        }
    });
    let mut outcomes = Vec::with_capacity(total);
    let mut failed = Vec::new();
    for slot in slots {
        if let Some((outcome, origin)) = slot.into_inner().ok().flatten() {
            if matches!(outcome, Outcome::Failed { .. }) {
                failed.push(origin);
            }
            outcomes.push(outcome);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    write_output(task, args, &outcomes)?;
    if !quiet && engine.cache().is_some() {
        let uses: Vec<precis_core::task::CacheUse> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ok(r) => r.cache,
                Outcome::Failed { .. } => None,
            })
            .collect();
        let whole = uses.iter().filter(|c| c.misses == 0).count();
        let (hits, misses) = uses
            .iter()
            .fold((0, 0), |(h, m), c| (h + c.hits, m + c.misses));
        eprintln!(
            "cache: {whole} of {} articles entirely from the cache ({hits} generations reused, {misses} run)",
            outcomes.len()
        );
    }
    if failed.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "{} of {} articles failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join(", ")
        );
        Ok(EXIT_ITEM_FAILED)
    }
}

fn error_body(e: &EngineError) -> ErrorBody {
    // The CLI user is the operator: the message carries the whole reason.
    ErrorBody {
        code: e.code().name(),
        message: e.to_string(),
    }
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)?;
    Ok(())
}

fn models_command(cmd: ModelsCommand, store: &ModelStore) -> anyhow::Result<i32> {
    match cmd {
        ModelsCommand::List => {
            println!(
                "{:<38} {:<11} {:<12} {:<12} {:<22} WHERE",
                "ID", "FAMILY", "LANGUAGES", "LICENCE", "STATUS"
            );
            for m in store.manifests() {
                let spec = ModelSpec::from_manifest(m);
                let status = store.status(&spec);
                // A many-to-many translator writes dozens of languages.
                let languages = match m.languages.targets.len() {
                    n if n > 6 => format!("{n} languages"),
                    _ => m.languages.targets.join(","),
                };
                // A row per file; one row when none is present.
                let none_present = status.files.iter().all(|f| f.path.is_none());
                let files = if none_present {
                    &status.files[..status.files.len().min(1)]
                } else {
                    &status.files[..]
                };
                for f in files {
                    let place = match (&f.path, f.source) {
                        (Some(p), Some(src)) => format!("{src}: {}", p.display()),
                        (Some(p), None) => p.display().to_string(),
                        _ => format!("not fetched (precis models fetch {})", m.id),
                    };
                    let state = match &f.verification {
                        precis_backend::store::Verification::Missing => "missing".to_string(),
                        v => v.to_string(),
                    };
                    println!(
                        "{:<38} {:<11} {:<12} {:<12} {:<22} {place}",
                        m.id,
                        m.family.to_string().trim_start_matches("gguf-"),
                        languages,
                        m.license,
                        state,
                    );
                }
                if let Some(notes) = &m.notes {
                    println!("    {notes}");
                }
            }
            Ok(EXIT_OK)
        }
        ModelsCommand::Fetch { ids } => {
            if ids.is_empty() {
                eprintln!("error: name a model to fetch; `precis models list` shows them");
                return Ok(EXIT_USAGE);
            }
            let rt = tokio::runtime::Runtime::new()?;
            let mut code = EXIT_OK;
            for id in ids {
                let spec = match store.resolve(&id) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = EXIT_MODEL;
                        continue;
                    }
                };
                match rt.block_on(store.fetch(&spec)) {
                    Ok(located) => {
                        for (name, path) in &located.files {
                            println!("{} {name}: {}", spec.id, path.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = EXIT_MODEL;
                    }
                }
            }
            Ok(code)
        }
        ModelsCommand::Verify { id } => {
            let specs: Vec<ModelSpec> = match id {
                Some(id) => vec![store.resolve(&id)?],
                None => store
                    .manifests()
                    .iter()
                    .map(ModelSpec::from_manifest)
                    .filter(|s| store.status(s).files.iter().any(|f| f.is_present()))
                    .collect(),
            };
            if specs.is_empty() {
                println!("no model is present; fetch one with `precis models fetch ID`");
            }
            let mut code = EXIT_OK;
            for spec in specs {
                for r in store.verify(&spec)? {
                    let path = r
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    println!("{} {}: {} {path}", spec.id, r.name, r.verification);
                    if !r.verification.is_usable() {
                        code = EXIT_MODEL;
                    }
                }
            }
            if code != EXIT_OK {
                eprintln!("error: some model files are missing or corrupt; delete a corrupt file and run `precis models fetch ID` again");
            }
            Ok(code)
        }
    }
}

fn serve(a: ServeArgs, config: &Config, store: StoreConfig) -> anyhow::Result<i32> {
    if a.server.webhook_secret.is_some() && std::env::var_os("PRECIS_WEBHOOK_SECRET").is_none() {
        eprintln!(
            "warning: --webhook-secret on the command line is visible to every user of this machine (ps); use PRECIS_WEBHOOK_SECRET or --webhook-secret-file"
        );
    }
    let server = a.server.or(&config.server);
    let addr_text = server.addr.as_deref().unwrap_or("127.0.0.1:8080");
    let addr: std::net::SocketAddr = addr_text.parse().map_err(|e| {
        anyhow::anyhow!("--addr {addr_text}: {e} (give an address and port, e.g. 127.0.0.1:8080)")
    })?;
    let limits = server.limits();
    let api_keys = api_keys(&server)?;
    let secret = webhook_secret(&server)?;
    if api_keys.is_none() && !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr} with no API key: anyone who can reach it can run the models; set --api-keys-file or PRECIS_API_KEYS"
        );
    }
    let grace = std::time::Duration::from_secs(server.shutdown_grace_secs.unwrap_or(30));
    let models = model_choice(config, a.model.as_deref(), None, None);
    let cache = a.cache.clone().or(config);
    let services = build(&Settings {
        placement: config.placement(a.device, a.cuda),
        quantize: config.quantization(a.quantize),
        ..settings(
            store,
            models,
            ModelAccess::Configured,
            &cache,
            Some(limits.max_chars),
            server.allow_unverified,
        )?
    })?;
    let role = server.role.unwrap_or_default();
    let mut state = crate::http::AppState::new(Arc::clone(&services.engine), limits);
    state.api_routes = role != crate::cli::config::Role::Worker;
    state.api_keys = api_keys;
    state.cors_origins = server.cors_origins.clone().unwrap_or_default();
    if let Some(keys) = &state.api_keys {
        tracing::info!(keys = keys.len(), "API keys required");
    }
    state.compat = !server.no_compat;
    state.fetch = precis_service::fetch::FetchPolicy {
        allow: server.allow_addresses.clone().unwrap_or_default(),
        ..precis_service::fetch::FetchPolicy::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let job_settings = precis_service::jobs::JobSettings {
        parallel: state.limits.max_concurrency,
        admission: Arc::clone(&state.admission),
        item_timeout: state.limits.timeout,
        fetch: state.fetch.clone(),
        webhook_secret: secret,
        retry_delay: std::time::Duration::from_secs(5),
        max_active_per_caller: server.max_jobs_per_key.unwrap_or(8),
        retention: server.job_retention(),
        lease: std::time::Duration::from_secs(server.job_lease_secs.unwrap_or(30).clamp(1, 3600)),
        run_items: role != crate::cli::config::Role::Api,
    };
    {
        let _runtime = rt.enter();
        match services.start_jobs(job_settings) {
            Ok(jobs) => state.jobs = Some(jobs),
            // A replica of a cluster without its shared jobs would accept
            // none and run none: better to stop, and be restarted.
            Err(e) if matches!(services.database, Some(Database::Postgres(_))) => {
                anyhow::bail!("{e}: the shared database must be reachable at start")
            }
            Err(e) => eprintln!("warning: {e}; batch jobs (/v1/jobs) are off"),
        }
    }
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    // Serve at once (/health answers, /ready says 503) while the models are
    // fetched and loaded; a model that cannot be stops the server with
    // EXIT_MODEL. With --lazy nothing is fetched: models load on first use
    // from the files present.
    let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(false);
    let failed = failed_rx.clone();
    if !a.lazy {
        state.ready.set(false);
        let ready = state.ready.clone();
        rt.spawn(async move {
            let loaded = match services.fetch_models(services.engine.routing().ids()).await {
                Ok(()) => {
                    let engine = Arc::clone(&services.engine);
                    tokio::task::spawn_blocking(move || engine.load_routed())
                        .await
                        .unwrap_or_else(|e| {
                            Err(precis_core::task::TaskError::Internal(format!(
                                "loading the models failed: {e}"
                            ))
                            .into())
                        })
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(()) => {
                    ready.set(true);
                    tracing::info!("models loaded; ready");
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    let _ = failed_tx.send(true);
                }
            }
        });
    }
    let stop = async move {
        // Resolves only when loading failed (a dropped sender means it
        // succeeded or never ran).
        if failed_rx.wait_for(|failed| *failed).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    rt.block_on(crate::http::serve(state, listener, grace, stop))?;
    // Work still running past the grace period is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if *failed.borrow() {
        return Ok(EXIT_MODEL);
    }
    Ok(EXIT_OK)
}

/// The API keys `settings` name: the lines of `api_keys_file` and the
/// comma-separated `PRECIS_API_KEYS`; `None` when neither is set. An empty
/// key is refused (a stray comma must not turn the keys off), and so is a
/// keys file others may read, unless `allow_shared_key_file`.
fn api_keys(
    settings: &crate::cli::config::ServerConfig,
) -> anyhow::Result<Option<crate::http::ApiKeys>> {
    let mut keys: Vec<String> = Vec::new();
    if let Some(path) = &settings.api_keys_file {
        if !settings.allow_shared_key_file {
            private_file(path, "the API keys file", "--allow-shared-key-file")?;
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the API keys file {}: {e}", path.display())
        })?;
        keys.extend(crate::http::ops::key_lines(&text).map(str::to_string));
        if keys.is_empty() {
            anyhow::bail!(
                "the API keys file {} holds no key (one a line; `#` starts a comment)",
                path.display()
            );
        }
    }
    if let Ok(list) = std::env::var("PRECIS_API_KEYS") {
        let listed: Vec<&str> = list.split(',').map(str::trim).collect();
        if listed.iter().any(|k| k.is_empty()) {
            anyhow::bail!(
                "PRECIS_API_KEYS holds an empty key (`{list}`): give keys separated by commas, with no empty one, or unset it"
            );
        }
        keys.extend(listed.into_iter().map(str::to_string));
    }
    Ok(crate::http::ApiKeys::new(keys.iter().map(String::as_str)))
}

/// Refuses a secret's file that users other than its owner may read (or
/// write), as ssh does; `flag` lets it be.
fn private_file(path: &std::path::Path, what: &str, flag: &str) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{what} {} may be read by other users (mode {:o}): `chmod 600 {}`, or pass {flag}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what, flag);
    Ok(())
}

/// The webhook signing key: `webhook_secret_file`'s first line, or
/// `webhook_secret`; not both.
fn webhook_secret(settings: &crate::cli::config::ServerConfig) -> anyhow::Result<Option<String>> {
    match (&settings.webhook_secret, &settings.webhook_secret_file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "give the webhook secret once: --webhook-secret (PRECIS_WEBHOOK_SECRET) or --webhook-secret-file"
        ),
        (Some(secret), None) if secret.trim().is_empty() => {
            anyhow::bail!("the webhook secret is empty: give a key, or none to send unsigned webhooks")
        }
        (Some(secret), None) => Ok(Some(secret.clone())),
        (None, Some(path)) => {
            if !settings.allow_shared_key_file {
                private_file(path, "the webhook secret file", "--allow-shared-key-file")?;
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the webhook secret file {}: {e}", path.display())
            })?;
            let secret = text.lines().next().unwrap_or_default().trim().to_string();
            if secret.is_empty() {
                anyhow::bail!("the webhook secret file {} is empty", path.display());
            }
            Ok(Some(secret))
        }
        (None, None) => Ok(None),
    }
}
