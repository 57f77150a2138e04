//! Summaries: one prompt over the cleaned article, a token limit derived from
//! the requested length (see [`super::budget`]), light clean-up of the output,
//! quality flags.
//!
//! An article that does not fit the model's context is refused with
//! [`TaskError::InputTooLong`], never truncated.

use super::quality::{self, OutputKind, QualityInput, QualityThresholds};
use super::{
    budget, generate_all, prompt, CancelToken, ModelRouter, ModelUsed, PreparedArticle, Summary,
    TaskError, TaskOptions, TokenStats,
};
use crate::backend::{FinishReason, GenerationParams, GenerationRequest};

/// Summarizes a prepared article in `language`.
pub fn summarize(
    article: &PreparedArticle,
    language: &str,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
) -> Result<Summary, TaskError> {
    let model = models.summarizer(language)?;
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
    };
    let generation = generate_all(model.as_ref(), vec![request], cancel)?
        .pop()
        .ok_or_else(|| TaskError::ModelUnavailable("the model returned no result".into()))?;
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
        length,
        model: ModelUsed::from(model.info()),
        params,
        tokens,
        flags,
    })
}

/// Removes what chat models put around a summary: a leading "Summary:" label, a
/// Markdown heading line, surrounding quotes; joins lines into one paragraph.
pub fn tidy_summary(raw: &str) -> String {
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

    #[test]
    fn tidy_keeps_a_single_heading_like_line() {
        assert_eq!(tidy_summary("#1 story"), "#1 story");
    }
}
