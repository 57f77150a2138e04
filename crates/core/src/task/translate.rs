//! Translation, paragraph by paragraph: N paragraphs in, N paragraphs out.
//!
//! Each paragraph is split into sentences, and a sentence too long for the
//! model into clauses (then words) that fit; the pieces' translations are
//! joined with a space, so the paragraph still comes out as one paragraph and
//! nothing is dropped. A dedicated translator takes a paragraph's pieces as
//! one batch. The LLM takes them one by one, each told how it wrote the
//! piece's names earlier in the article, so that it writes them the same
//! way throughout.

use super::clean::split_sentences;
use super::entities;
use super::quality::{self, OutputKind, QualityInput, QualityThresholds};
use super::{
    budget, generate_all, prompt, CancelToken, EventFn, ModelRouter, ModelUsed, PreparedArticle,
    Progress, TaskError, TaskEvent, TaskOptions, TextModel, TokenStats, Translation,
    TranslationSource,
};
use precis_backend::{FinishReason, GenerationParams, GenerationRequest, ModelKind};

/// Steps `translate_texts` will report for these inputs (title and paragraphs).
pub fn steps(title: Option<&str>, paragraphs: &[String]) -> usize {
    usize::from(title.is_some()) + paragraphs.len()
}

/// Translates the whole prepared article into every target language.
pub(crate) fn translate_article(
    article: &PreparedArticle,
    from: &str,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    events: EventFn<'_>,
) -> Result<Vec<Translation>, TaskError> {
    let per_language = steps(article.headline.as_deref(), &article.paragraphs);
    let total = per_language * options.targets().len();
    let mut out = Vec::new();
    for (i, lang) in options.targets().iter().enumerate() {
        let counter = StepCounter {
            offset: i * per_language,
            total,
            events,
        };
        out.push(translate_texts(
            &TranslationInput {
                title: article.headline.as_deref(),
                paragraphs: &article.paragraphs,
                language: lang,
                from,
                source: TranslationSource::Article,
            },
            options,
            models,
            cancel,
            &counter,
        )?);
    }
    Ok(out)
}

/// What to translate.
pub(crate) struct TranslationInput<'a> {
    /// Headline to translate too.
    pub title: Option<&'a str>,
    /// Paragraphs, in order.
    pub paragraphs: &'a [String],
    /// Target language code.
    pub language: &'a str,
    /// The source text's language code.
    pub from: &'a str,
    /// Whether this is the summary or the article.
    pub source: TranslationSource,
}

/// Reports steps of one translation within a larger task.
pub(crate) struct StepCounter<'a> {
    /// Steps done before this translation starts.
    pub offset: usize,
    /// Steps in the whole task.
    pub total: usize,
    /// Where to report.
    pub events: EventFn<'a>,
}

impl StepCounter<'_> {
    /// Reports a translated headline (`index` `None`) or paragraph, which
    /// is step `done` of the task.
    fn paragraph(
        &self,
        input: &TranslationInput<'_>,
        index: Option<usize>,
        text: &str,
        done: usize,
    ) {
        (self.events)(TaskEvent::Paragraph {
            language: input.language,
            source: input.source,
            index,
            text,
        });
        (self.events)(TaskEvent::Progress(Progress {
            done,
            total: self.total,
        }));
    }
}

/// Translates a title and paragraphs into one language.
pub(crate) fn translate_texts(
    input: &TranslationInput<'_>,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    steps: &StepCounter<'_>,
) -> Result<Translation, TaskError> {
    let model = models.translator(input.from, input.language)?;
    if model.info().kind == ModelKind::Translator {
        return translate_sentences(model.as_ref(), input, cancel, steps);
    }
    let language = input.language;
    let mut tokens = TokenStats::default();
    let mut loop_detected = false;
    let mut hit_limit = false;
    let mut largest = GenerationParams {
        max_new_tokens: 0,
        ..GenerationParams::default()
    };
    let mut done = steps.offset;
    let mut rendered = Names::default();
    let mut translate_one = |text: &str, index: Option<usize>| -> Result<String, TaskError> {
        let mut pieces = Vec::new();
        for sentence in split_sentences(text) {
            let mut fits_alone = |t: &str| fits(model.as_ref(), t, language, options, &[]);
            for piece in split_to_fit(&sentence, &mut fits_alone)? {
                let params = params_for(model.as_ref(), &piece, language, options)?;
                if params.max_new_tokens > largest.max_new_tokens {
                    largest = params.clone();
                }
                let mut names = rendered.used_in(&piece);
                if !fits(model.as_ref(), &piece, language, options, &names)? {
                    names.clear();
                }
                let g = generate_all(
                    model.as_ref(),
                    vec![GenerationRequest {
                        messages: prompt::translation(&piece, language, &names),
                        params,
                        seq2seq: None,
                        // The LLM keeps to the target's script.
                        direction: Some(precis_backend::Direction {
                            source: input.from.to_string(),
                            target: language.to_string(),
                        }),
                    }],
                    cancel,
                )?
                .pop()
                .ok_or_else(|| {
                    TaskError::Internal("the model returned no result for a request".into())
                })?;
                tokens.add(&g);
                loop_detected |= g.finish == FinishReason::Loop;
                hit_limit |= g.finish == FinishReason::Length;
                let out = one_paragraph(&g.text);
                // A translation cut short is not learnt from.
                if !matches!(g.finish, FinishReason::Loop | FinishReason::Length) {
                    rendered.learn(&piece, &out, language);
                }
                if !out.is_empty() {
                    pieces.push(out);
                }
            }
        }
        let out = pieces.join(" ");
        done += 1;
        steps.paragraph(input, index, &out, done);
        Ok(out)
    };
    let title = match input.title {
        Some(t) => Some(translate_one(t, None)?),
        None => None,
    };
    let mut paragraphs = Vec::with_capacity(input.paragraphs.len());
    for (i, p) in input.paragraphs.iter().enumerate() {
        paragraphs.push(translate_one(p, Some(i))?);
    }
    Ok(finish(
        input,
        model.as_ref(),
        largest,
        Translated {
            title,
            paragraphs,
            tokens,
            loop_detected,
            hit_limit,
        },
    ))
}

/// What translating one text produced, before it is checked and assembled.
struct Translated {
    title: Option<String>,
    paragraphs: Vec<String>,
    tokens: TokenStats,
    loop_detected: bool,
    hit_limit: bool,
}

/// The translation of `input`: its paragraphs joined, with quality flags.
fn finish(
    input: &TranslationInput<'_>,
    model: &dyn TextModel,
    params: GenerationParams,
    t: Translated,
) -> Translation {
    let text = t.paragraphs.join("\n\n");
    let source = input.paragraphs.join("\n\n");
    let flags = quality::assess(
        &QualityInput {
            source: &source,
            output: &text,
            target_language: input.language,
            kind: OutputKind::Translation,
            loop_detected: t.loop_detected,
            hit_token_limit: t.hit_limit,
        },
        &QualityThresholds::default(),
    );
    Translation {
        language: input.language.to_string(),
        from: (input.from != "en").then(|| input.from.to_string()),
        source: input.source,
        title: t.title,
        paragraphs: t.paragraphs,
        text,
        model: ModelUsed::from(model.info()),
        params,
        tokens: t.tokens,
        flags,
    }
}

/// Translation by a dedicated translator (Marian): every paragraph split into
/// sentences, a sentence longer than the model's input limit split at clause
/// boundaries (then words), the pieces of a paragraph translated as one
/// batch, and their translations joined back into the paragraph.
fn translate_sentences(
    model: &dyn TextModel,
    input: &TranslationInput<'_>,
    cancel: &CancelToken,
    steps: &StepCounter<'_>,
) -> Result<Translation, TaskError> {
    let limit = model.info().context_length;
    let mut tokens = TokenStats::default();
    let mut hit_limit = false;
    let mut done = steps.offset;
    let mut translate_one = |text: &str, index: Option<usize>| -> Result<String, TaskError> {
        let mut pieces = Vec::new();
        for sentence in split_sentences(text) {
            pieces.extend(split_to_fit(&sentence, &mut |t| {
                Ok(model.count_tokens(t)? <= limit)
            })?);
        }
        let requests = pieces
            .iter()
            .map(|p| GenerationRequest::source(p).translating(input.from, input.language))
            .collect();
        let out = generate_all(model, requests, cancel)?;
        let mut parts = Vec::with_capacity(out.len());
        for g in &out {
            tokens.add(g);
            hit_limit |= g.finish == FinishReason::Length;
            let t = one_paragraph(&g.text);
            if !t.is_empty() {
                parts.push(t);
            }
        }
        let out = parts.join(" ");
        done += 1;
        steps.paragraph(input, index, &out, done);
        Ok(out)
    };
    let title = match input.title {
        Some(t) => Some(translate_one(t, None)?),
        None => None,
    };
    let mut paragraphs = Vec::with_capacity(input.paragraphs.len());
    for (i, p) in input.paragraphs.iter().enumerate() {
        paragraphs.push(translate_one(p, Some(i))?);
    }
    // The translator runs its checkpoint's own generation settings; these
    // record that no sampling was involved.
    let params = GenerationParams {
        temperature: 0.0,
        repetition_penalty: 1.0,
        loop_guard: false,
        ..GenerationParams::default()
    };
    Ok(finish(
        input,
        model,
        params,
        Translated {
            title,
            paragraphs,
            tokens,
            loop_detected: false,
            hit_limit,
        },
    ))
}

/// Characters per piece when a single word is longer than the model's input
/// limit (a few tokens per character at most).
const WORD_PIECE_CHARS: usize = 64;

/// `sentence` as it is when it fits, else split into consecutive pieces that
/// fit: at clause boundaries (after `,` `;` `:`, before a dash), then at
/// words, then (a word alone too long) every `WORD_PIECE_CHARS` (64)
/// characters. Nothing is dropped: the pieces joined with spaces are the
/// sentence's words joined with spaces.
pub(crate) fn split_to_fit(
    sentence: &str,
    fits: &mut dyn FnMut(&str) -> Result<bool, TaskError>,
) -> Result<Vec<String>, TaskError> {
    if fits(sentence)? {
        return Ok(vec![sentence.to_string()]);
    }
    let mut clauses: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for word in sentence.split_whitespace() {
        if matches!(word, "—" | "–" | "-") && !current.is_empty() {
            clauses.push(current.join(" "));
            current.clear();
        }
        current.push(word);
        if word.ends_with([',', ';', ':']) {
            clauses.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        clauses.push(current.join(" "));
    }
    let mut out = Vec::new();
    let mut piece = String::new();
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a} {b}")
        }
    };
    let mut add =
        |unit: &str, piece: &mut String, out: &mut Vec<String>| -> Result<bool, TaskError> {
            let candidate = join(piece, unit);
            if fits(&candidate)? {
                *piece = candidate;
                return Ok(true);
            }
            if !piece.is_empty() {
                out.push(std::mem::take(piece));
            }
            if fits(unit)? {
                *piece = unit.to_string();
                return Ok(true);
            }
            Ok(false)
        };
    for clause in &clauses {
        if add(clause, &mut piece, &mut out)? {
            continue;
        }
        for word in clause.split_whitespace() {
            if add(word, &mut piece, &mut out)? {
                continue;
            }
            let chars: Vec<char> = word.chars().collect();
            for chunk in chars.chunks(WORD_PIECE_CHARS) {
                out.push(chunk.iter().collect());
            }
        }
    }
    if !piece.is_empty() {
        out.push(piece);
    }
    Ok(out)
}

fn params_for(
    model: &dyn TextModel,
    text: &str,
    language: &str,
    options: &TaskOptions,
) -> Result<GenerationParams, TaskError> {
    let max_new_tokens = budget::translation_max_tokens(model, text.chars().count(), language)?;
    Ok(options.generation.apply(GenerationParams {
        max_new_tokens,
        ..GenerationParams::default()
    }))
}

/// Whether the prompt for translating `text` (with `names`), with the
/// tokens its translation may take, fits the model's context.
fn fits(
    model: &dyn TextModel,
    text: &str,
    language: &str,
    options: &TaskOptions,
    names: &[(String, String)],
) -> Result<bool, TaskError> {
    let params = params_for(model, text, language, options)?;
    let messages = prompt::translation(text, language, names);
    let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let tokens = budget::prompt_tokens(model, &texts)?;
    Ok(tokens + params.max_new_tokens <= model.info().context_length)
}

/// How the LLM wrote each name the first time in an article, so that later
/// sentences are asked to write it the same way (a name's first rendering is
/// reused).
#[derive(Default)]
struct Names(Vec<(String, String)>);

impl Names {
    /// The names of `text` rendered earlier, with their renderings.
    fn used_in(&self, text: &str) -> Vec<(String, String)> {
        let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
        (self.0.iter())
            .filter(|(name, _)| words.contains(&name.as_str()))
            .cloned()
            .collect()
    }

    /// Learns the names that `source`, translated as `translation`, renders
    /// for the first time.
    fn learn(&mut self, source: &str, translation: &str, language: &str) {
        for (name, rendering) in entities::renderings(source, translation, language) {
            if !self.0.iter().any(|(n, _)| *n == name) {
                self.0.push((name, rendering));
            }
        }
    }
}

/// Makes a model's output one paragraph: trims it and joins its lines with spaces.
pub(crate) fn one_paragraph(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use precis_backend::{BackendError, ChatMessage, Generation, ModelInfo};
    use proptest::prelude::*;

    use crate::task::TextSink;

    /// An LLM that answers from a table of translations and keeps every
    /// prompt it is given.
    struct Recording {
        info: ModelInfo,
        answers: Vec<(&'static str, &'static str)>,
        prompts: Mutex<Vec<Vec<ChatMessage>>>,
    }

    impl TextModel for Recording {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn count_tokens(&self, text: &str) -> Result<usize, BackendError> {
            Ok(text.split_whitespace().count())
        }
        fn generate(
            &self,
            requests: Vec<GenerationRequest>,
            _: &CancelToken,
            _: Option<TextSink<'_>>,
        ) -> Vec<Result<Generation, BackendError>> {
            (requests.into_iter())
                .map(|r| {
                    let last = r.messages.last().unwrap().content.clone();
                    self.prompts.lock().unwrap().push(r.messages);
                    let (_, text) = self.answers.iter().find(|(s, _)| *s == last).unwrap();
                    Ok(Generation {
                        text: text.to_string(),
                        prompt_tokens: 1,
                        generated_tokens: 1,
                        finish: FinishReason::Stop,
                        cache: Default::default(),
                    })
                })
                .collect()
        }
    }

    impl ModelRouter for Arc<Recording> {
        fn summarizer(&self, _: &str) -> Result<Arc<dyn TextModel>, TaskError> {
            Ok(self.clone())
        }
        fn translator(&self, _: &str, _: &str) -> Result<Arc<dyn TextModel>, TaskError> {
            Ok(self.clone())
        }
    }

    #[test]
    fn the_llm_is_told_the_names_it_rendered_before() {
        let model = Arc::new(Recording {
            info: ModelInfo {
                kind: ModelKind::Chat,
                id: "recording".into(),
                revision: "test".into(),
                family: "test".into(),
                context_length: 4096,
                target_languages: vec!["ru".into()],
                license: None,
                quantize: precis_backend::Quantize::None,
                device: precis_backend::Placement::Cpu,
            },
            answers: vec![
                ("Talks in Delhi", "Переговоры в Дели"),
                (
                    "Then Sergei Lavrov met Antony Blinken.",
                    "Затем Сергей Лавров встретился с Энтони Блинкеном.",
                ),
                ("Lavrov left.", "Лавров уехал."),
                ("Blinken stayed.", "Блинкен остался."),
            ],
            prompts: Mutex::new(Vec::new()),
        });
        let paragraphs = vec![
            "Then Sergei Lavrov met Antony Blinken. Lavrov left.".to_string(),
            "Blinken stayed.".to_string(),
        ];
        let events = |_: TaskEvent<'_>| {};
        let t = translate_texts(
            &TranslationInput {
                title: Some("Talks in Delhi"),
                paragraphs: &paragraphs,
                language: "ru",
                from: "en",
                source: TranslationSource::Article,
            },
            &TaskOptions::default(),
            &model,
            &CancelToken::new(),
            &StepCounter {
                offset: 0,
                total: 3,
                events: &events,
            },
        )
        .unwrap();
        assert_eq!(t.title.as_deref(), Some("Переговоры в Дели"));
        assert_eq!(
            t.paragraphs,
            [
                "Затем Сергей Лавров встретился с Энтони Блинкеном. Лавров уехал.",
                "Блинкен остался."
            ]
        );
        let prompts = model.prompts.lock().unwrap();
        assert!(prompts.iter().all(|p| p.len() == 2), "system and user");
        let users: Vec<&str> = prompts.iter().map(|p| p[1].content.as_str()).collect();
        assert_eq!(
            users,
            [
                "Talks in Delhi",
                "Then Sergei Lavrov met Antony Blinken.",
                "Lavrov left.",
                "Blinken stayed."
            ]
        );
        let told = |i: usize| {
            prompts[i][0]
                .content
                .split_once(" Write these names")
                .map(|(_, n)| n.to_string())
        };
        assert_eq!(told(0), None);
        // Delhi was rendered in the headline, but the sentence has no Delhi.
        assert_eq!(told(1), None);
        // Later sentences: the names they hold, as first rendered (in the
        // nominative), across paragraphs.
        assert_eq!(
            told(2).as_deref(),
            Some(" as earlier in the article: Lavrov = Лавров.")
        );
        assert_eq!(
            told(3).as_deref(),
            Some(" as earlier in the article: Blinken = Блинкен.")
        );
    }

    fn words_fit(max: usize) -> impl FnMut(&str) -> Result<bool, TaskError> {
        move |t: &str| Ok(t.split_whitespace().count() <= max && t.chars().count() <= 200)
    }

    #[test]
    fn long_sentences_split_at_clauses_first() {
        let s = "The ministers met in Delhi, talked for hours; they agreed on trade — and on little else.";
        assert_eq!(split_to_fit(s, &mut words_fit(100)).unwrap(), vec![s]);
        assert_eq!(
            split_to_fit(s, &mut words_fit(8)).unwrap(),
            vec![
                "The ministers met in Delhi, talked for hours;",
                "they agreed on trade",
                "— and on little else."
            ]
        );
        assert_eq!(
            split_to_fit("one two three four five", &mut words_fit(2)).unwrap(),
            vec!["one two", "three four", "five"]
        );
    }

    proptest! {
        /// Pieces fit, and together they are the sentence: nothing dropped.
        #[test]
        fn pieces_fit_and_join_back(
            words in proptest::collection::vec("[a-zа-я,;:—]{1,12}|[a-z]{150,300}", 1..60),
            max in 1usize..12,
        ) {
            let sentence = words.join(" ");
            let mut fits = words_fit(max);
            let pieces = split_to_fit(&sentence, &mut fits).unwrap();
            for p in &pieces {
                prop_assert!(fits(p).unwrap(), "{p:?} does not fit");
            }
            let joined: String = pieces.concat();
            let original: String = sentence.split_whitespace().collect();
            let joined_nows: String = joined.split_whitespace().collect();
            prop_assert_eq!(joined_nows, original);
        }
    }

    #[test]
    fn one_paragraph_joins_lines() {
        assert_eq!(one_paragraph(" a\n\n b \nc\n"), "a b c");
        assert_eq!(one_paragraph(""), "");
    }
}
