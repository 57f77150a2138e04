//! Summaries: one prompt over the cleaned article, a token limit derived from
//! the requested length (see [`super::budget`]), light clean-up of the output,
//! quality flags.
//!
//! With an LLM, an article that does not fit the model's context is refused
//! with [`TaskError::InputTooLong`], never truncated.
//!
//! With a dedicated summarizer (BART, T5: [`ModelKind::Summarizer`]), the
//! article is the model's whole input, and one beyond the model's input
//! limit is summarized in pieces (map-reduce): split at paragraph
//! boundaries (a paragraph longer than the limit at sentences, a sentence
//! longer than that at clauses and words) into chunks that fit, each chunk
//! summarized with the checkpoint's settings, then the chunk summaries
//! joined and summarized again, recursively while they still exceed the
//! limit, the last round to the requested length. The result reports each
//! chunk's paragraph range and tokens ([`super::ChunkReport`]); no text is
//! dropped.

use super::clean::split_sentences;
use super::quality::{self, OutputKind, QualityInput, QualityThresholds};
use super::translate::{split_to_fit, translate_texts, StepCounter, TranslationInput};
use super::{
    budget, generate_all, generate_streamed, prompt, CancelToken, ChunkReport, EventFn, Length,
    ModelRouter, ModelUsed, PreparedArticle, Summary, TaskError, TaskEvent, TaskOptions, TextModel,
    TextSink, TokenStats, TranslationSource,
};
use crate::languages::language_name;
use precis_backend::seq2seq::GenerationConfig;
use precis_backend::{ChatMessage, FinishReason, GenerationParams, GenerationRequest, ModelKind};

/// Summarizes a prepared article in `language`, reporting the text as it
/// is written ([`TaskEvent::SummaryText`]).
/// Summarizes an article written in `from`: an English one directly; one
/// in another language directly when the summarizer is an LLM (it reads
/// it), else through an English translation of the article by the
/// translator that reads it. A summary of an article not in English says
/// which in `route`.
pub fn summarize_from(
    article: &PreparedArticle,
    from: &str,
    language: &str,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    events: EventFn<'_>,
) -> Result<Summary, TaskError> {
    if from == "en" {
        return summarize(article, language, options, models, cancel, events);
    }
    let name = language_name(from).unwrap_or(from);
    if models.summarizer(language)?.info().kind == ModelKind::Chat {
        let mut summary = summarize(article, language, options, models, cancel, events)?;
        summary.route = Some(format!(
            "summarized from {name} directly by {}",
            summary.model.id
        ));
        return Ok(summary);
    }
    // The translation's paragraphs are a step on the way, not a result:
    // they are not streamed.
    let quiet = |_: TaskEvent<'_>| {};
    let english = translate_texts(
        &TranslationInput {
            title: article.headline.as_deref(),
            paragraphs: &article.paragraphs,
            language: "en",
            from,
            source: TranslationSource::Article,
        },
        options,
        models,
        cancel,
        &StepCounter {
            offset: 0,
            total: 0,
            events: &quiet,
        },
    )?;
    let translated = PreparedArticle {
        headline: english.title.clone(),
        paragraphs: english.paragraphs.clone(),
        dropped: article.dropped.clone(),
        paragraphs_in: article.paragraphs_in,
    };
    let mut summary = summarize(&translated, language, options, models, cancel, events)?;
    summary.route = Some(format!(
        "translated from {name} into English by {}, then summarized",
        english.model.id
    ));
    Ok(summary)
}

/// Summarizes an English article.
pub fn summarize(
    article: &PreparedArticle,
    language: &str,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    events: EventFn<'_>,
) -> Result<Summary, TaskError> {
    let model = models.summarizer(language)?;
    let mut on_text = |_: usize, text: &str| {
        if !text.is_empty() {
            events(TaskEvent::SummaryText { language, text });
        }
    };
    if model.info().kind == ModelKind::Summarizer {
        return summarize_dedicated(
            article,
            language,
            options,
            model.as_ref(),
            cancel,
            &mut on_text,
        );
    }
    let length = options.length.unwrap_or_default();
    let messages = prompt::summary(article, language, length);
    let max_new_tokens = budget::summary_max_tokens(model.as_ref(), length, language)?;
    let params = options.generation.apply(GenerationParams {
        max_new_tokens,
        ..GenerationParams::default()
    });
    let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let prompt_tokens = budget::prompt_tokens(model.as_ref(), &texts)?;
    let context = model.info().context_length;
    if prompt_tokens + params.max_new_tokens > context {
        return Err(TaskError::InputTooLong {
            what: "the article".into(),
            tokens: prompt_tokens,
            limit: context.saturating_sub(params.max_new_tokens),
            model: model.info().id.clone(),
        });
    }
    let request = GenerationRequest {
        messages,
        params: params.clone(),
        seq2seq: None,
        direction: None,
    };
    let generation = generate_streamed(model.as_ref(), vec![request], cancel, &mut on_text)?
        .pop()
        .ok_or_else(|| TaskError::Internal("the model returned no result for a request".into()))?;
    let text = tidy_summary(&generation.text);
    let source = article.paragraphs.join("\n\n");
    let flags = quality::assess(
        &QualityInput {
            source: &source,
            output: &text,
            target_language: language,
            kind: OutputKind::Summary,
            loop_detected: generation.finish == FinishReason::Loop,
            hit_token_limit: generation.finish == FinishReason::Length,
        },
        &QualityThresholds::default(),
    );
    let mut tokens = TokenStats::default();
    tokens.add(&generation);
    Ok(Summary {
        language: language.to_string(),
        words: text.split_whitespace().count(),
        text,
        length: Some(length),
        model: ModelUsed::from(model.info()),
        params: Some(params),
        chunks: Vec::new(),
        reduce_rounds: 0,
        route: None,
        tokens,
        flags,
    })
}

/// Most rounds of summarizing summaries before giving up.
const MAX_REDUCE_ROUNDS: usize = 8;

/// Summarizes with a dedicated summarizer, in pieces when the article is
/// longer than the model's input limit (see the module's documentation).
/// Only the last round's text goes to `on_text`.
fn summarize_dedicated(
    article: &PreparedArticle,
    language: &str,
    options: &TaskOptions,
    model: &dyn TextModel,
    cancel: &CancelToken,
    on_text: TextSink<'_>,
) -> Result<Summary, TaskError> {
    let limit = model.info().context_length;
    let count = |text: &str| model.count_tokens(text).map_err(TaskError::from);
    let last_round = options
        .length
        .map(|length| length_overrides(model, length))
        .transpose()?;
    let mut pieces = chunk_paragraphs(&article.paragraphs, limit, &count)?;
    let chunks = if pieces.len() > 1 {
        pieces.iter().map(|p| p.report.clone()).collect()
    } else {
        Vec::new()
    };
    let mut tokens = TokenStats::default();
    let mut rounds = 0;
    while pieces.len() > 1 {
        if rounds == MAX_REDUCE_ROUNDS {
            return Err(TaskError::Unreducible(format!(
                "the chunk summaries still exceed the model's {limit}-token input after {MAX_REDUCE_ROUNDS} rounds"
            )));
        }
        let before: usize = pieces.iter().map(|p| p.report.tokens).sum();
        let requests = pieces.iter().map(|p| request(&p.text, None)).collect();
        let summaries: Vec<String> = generate_all(model, requests, cancel)?
            .iter()
            .map(|g| {
                tokens.add(g);
                g.text.trim().to_string()
            })
            .collect();
        rounds += 1;
        pieces = chunk_paragraphs(&summaries, limit, &count)?;
        let after: usize = pieces.iter().map(|p| p.report.tokens).sum();
        if pieces.len() > 1 && after >= before {
            return Err(TaskError::Unreducible(format!(
                "the chunk summaries ({after} tokens) are no shorter than their chunks ({before} tokens), so they cannot be brought under the model's {limit}-token input"
            )));
        }
    }
    let text = &pieces[0].text;
    let generation = generate_streamed(model, vec![request(text, last_round)], cancel, on_text)?
        .pop()
        .ok_or_else(|| TaskError::Internal("the model returned no result for a request".into()))?;
    tokens.add(&generation);
    let summary = generation.text.clone();
    let source = article.paragraphs.join("\n\n");
    let flags = quality::assess(
        &QualityInput {
            source: &source,
            output: &summary,
            target_language: language,
            kind: OutputKind::Summary,
            loop_detected: false,
            hit_token_limit: generation.finish == FinishReason::Length,
        },
        &QualityThresholds::default(),
    );
    Ok(Summary {
        language: language.to_string(),
        words: summary.split_whitespace().count(),
        text: summary,
        length: options.length,
        model: ModelUsed::from(model.info()),
        params: None,
        chunks,
        reduce_rounds: rounds,
        route: None,
        tokens,
        flags,
    })
}

/// A request for a dedicated model: the text alone, with settings over the
/// checkpoint's.
fn request(text: &str, settings: Option<GenerationConfig>) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage::user(text)],
        params: GenerationParams::default(),
        seq2seq: settings,
        direction: None,
    }
}

/// A requested length as a dedicated summarizer's settings: new tokens
/// around the length's expected size in the model's tokens (between half
/// and one and a half times), the checkpoint's `min_length` lifted.
pub(crate) fn length_overrides(
    model: &dyn TextModel,
    length: Length,
) -> Result<GenerationConfig, TaskError> {
    let tokens_per_char = budget::tokens_per_char(model, "en")?;
    let expected =
        f64::from(budget::length_words(length)) * budget::CHARS_PER_WORD * tokens_per_char;
    Ok(GenerationConfig {
        min_length: Some(0),
        min_new_tokens: Some((expected * 0.5).floor() as usize),
        max_new_tokens: Some((expected * budget::HEADROOM).ceil() as usize + 8),
        ..GenerationConfig::default()
    })
}

/// A chunk of text for the model and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The text (paragraphs joined by blank lines).
    pub text: String,
    /// Its paragraph range and tokens.
    pub report: ChunkReport,
}

/// Splits `paragraphs` into consecutive chunks of at most `limit` tokens (as
/// `count` counts them): whole paragraphs joined by blank lines while they
/// fit; a paragraph longer than the limit alone, in parts split at
/// sentences (a sentence longer than the limit at clauses, then words).
/// Every paragraph is in exactly one chunk, or in consecutive parts.
pub(crate) fn chunk_paragraphs(
    paragraphs: &[String],
    limit: usize,
    count: &dyn Fn(&str) -> Result<usize, TaskError>,
) -> Result<Vec<Piece>, TaskError> {
    let mut out: Vec<Piece> = Vec::new();
    let mut current: Option<Piece> = None;
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if let Some(cur) = current.as_mut() {
            let joined = format!("{}\n\n{paragraph}", cur.text);
            let tokens = count(&joined)?;
            if tokens <= limit {
                cur.text = joined;
                cur.report.last_paragraph = i;
                cur.report.tokens = tokens;
                continue;
            }
            out.extend(current.take());
        }
        let tokens = count(paragraph)?;
        if tokens <= limit {
            current = Some(Piece {
                text: paragraph.clone(),
                report: ChunkReport {
                    first_paragraph: i,
                    last_paragraph: i,
                    part: None,
                    tokens,
                },
            });
            continue;
        }
        let parts = paragraph_parts(paragraph, limit, count)?;
        let n = parts.len();
        for (k, (text, tokens)) in parts.into_iter().enumerate() {
            out.push(Piece {
                text,
                report: ChunkReport {
                    first_paragraph: i,
                    last_paragraph: i,
                    part: Some([k + 1, n]),
                    tokens,
                },
            });
        }
    }
    out.extend(current);
    Ok(out)
}

/// A paragraph longer than `limit` as consecutive parts that fit, each with
/// its token count: sentences joined while they fit.
fn paragraph_parts(
    paragraph: &str,
    limit: usize,
    count: &dyn Fn(&str) -> Result<usize, TaskError>,
) -> Result<Vec<(String, usize)>, TaskError> {
    let mut units = Vec::new();
    for sentence in split_sentences(paragraph) {
        units.extend(split_to_fit(&sentence, &mut |t| Ok(count(t)? <= limit))?);
    }
    let mut parts: Vec<(String, usize)> = Vec::new();
    for unit in units {
        if let Some((text, tokens)) = parts.last_mut() {
            let joined = format!("{text} {unit}");
            let n = count(&joined)?;
            if n <= limit {
                *text = joined;
                *tokens = n;
                continue;
            }
        }
        let n = count(&unit)?;
        if n > limit {
            return Err(TaskError::InputTooLong {
                what: "a piece of a paragraph that cannot be split further".into(),
                tokens: n,
                limit,
                model: String::new(),
            });
        }
        parts.push((unit, n));
    }
    Ok(parts)
}

/// Removes what chat models put around a summary: a leading "Summary:" label, a
/// Markdown heading line, surrounding quotes; joins lines into one paragraph.
pub(crate) fn tidy_summary(raw: &str) -> String {
    let mut lines: Vec<&str> = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() > 1 && lines[0].starts_with('#') {
        lines.remove(0);
    }
    let mut text = lines.join(" ");
    for label in ["Summary:", "**Summary:**", "Summary -", "Резюме:", "सारांश:"] {
        if let Some(rest) = text.strip_prefix(label) {
            text = rest.trim_start().to_string();
        }
    }
    let t = text.trim();
    let t = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t);
    t.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_removes_labels_headings_and_quotes() {
        assert_eq!(tidy_summary("Summary: A met B."), "A met B.");
        assert_eq!(
            tidy_summary("# Title\nA met B.\nThey talked."),
            "A met B. They talked."
        );
        assert_eq!(tidy_summary("\"A met B.\""), "A met B.");
        assert_eq!(tidy_summary("  A met B.  "), "A met B.");
    }

    /// Words plus 2 (as a tokenizer adding `<s>` and `</s>` would).
    fn words(text: &str) -> Result<usize, TaskError> {
        Ok(text.split_whitespace().count() + 2)
    }

    /// Checks that the chunks cover `paragraphs` exactly once, in order,
    /// each within `limit`, and that their words are the paragraphs' words.
    fn check_cover(paragraphs: &[String], chunks: &[Piece], limit: usize) {
        let mut next = 0;
        let mut i = 0;
        while i < chunks.len() {
            let r = &chunks[i].report;
            assert_eq!(r.first_paragraph, next, "chunks skip or repeat a paragraph");
            assert!(r.tokens <= limit, "chunk {i} has {} tokens", r.tokens);
            assert_eq!(r.tokens, words(&chunks[i].text).unwrap());
            match r.part {
                None => {
                    let joined = paragraphs[r.first_paragraph..=r.last_paragraph].join("\n\n");
                    assert_eq!(chunks[i].text, joined);
                    next = r.last_paragraph + 1;
                    i += 1;
                }
                Some([1, n]) => {
                    let parts: Vec<&str> =
                        chunks[i..i + n].iter().map(|c| c.text.as_str()).collect();
                    for (k, c) in chunks[i..i + n].iter().enumerate() {
                        assert_eq!(c.report.part, Some([k + 1, n]));
                        assert_eq!(c.report.first_paragraph, next);
                        assert!(c.report.tokens <= limit);
                    }
                    let words_in: Vec<&str> = paragraphs[next].split_whitespace().collect();
                    let words_out: Vec<&str> =
                        parts.iter().flat_map(|p| p.split_whitespace()).collect();
                    assert_eq!(
                        words_in, words_out,
                        "a split paragraph lost or gained words"
                    );
                    next += 1;
                    i += n;
                }
                Some(other) => panic!("parts start at 1, not {other:?}"),
            }
        }
        assert_eq!(next, paragraphs.len(), "not every paragraph is covered");
    }

    #[test]
    fn chunks_cover_every_paragraph_once_and_fit() {
        let sentence = |i: usize| format!("Sentence {i} has exactly six words.");
        let paragraph = |n: usize, base: usize| {
            (0..n)
                .map(|k| sentence(base + k))
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Short paragraphs, one far over the limit, one with a sentence
        // longer than the limit, and short ones again.
        let long_sentence = (0..40)
            .map(|k| format!("w{k},"))
            .collect::<Vec<_>>()
            .join(" ");
        let paragraphs = vec![
            paragraph(1, 0),
            paragraph(2, 10),
            paragraph(12, 20),
            format!("{} {long_sentence} {}", sentence(50), sentence(51)),
            paragraph(1, 60),
            paragraph(3, 70),
        ];
        for limit in [20, 32, 50, 200] {
            let chunks = chunk_paragraphs(&paragraphs, limit, &words).unwrap();
            check_cover(&paragraphs, &chunks, limit);
        }
        let all = chunk_paragraphs(&paragraphs, 1000, &words).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].report.last_paragraph, paragraphs.len() - 1);
    }

    #[test]
    fn tidy_keeps_a_single_heading_like_line() {
        assert_eq!(tidy_summary("#1 story"), "#1 story");
    }
}
