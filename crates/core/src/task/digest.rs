//! Digest: the summary, then its translation into each target language, and,
//! when asked, translations of the whole article, in one result.

use super::summarize::summarize_from;
use super::translate::{steps, translate_texts, StepCounter, TranslationInput};
use super::{
    CancelToken, EventFn, ModelRouter, PreparedArticle, Progress, Summary, TaskError, TaskEvent,
    TaskOptions, Translation, TranslationSource,
};

/// Runs a digest: English summary, its translations, and full translations when `options.full`.
pub fn digest(
    article: &PreparedArticle,
    from: &str,
    options: &TaskOptions,
    models: &dyn ModelRouter,
    cancel: &CancelToken,
    events: EventFn<'_>,
) -> Result<(Summary, Vec<Translation>), TaskError> {
    let summary_steps = 1;
    let title = article.headline.as_deref();
    // The summary is one paragraph.
    let per_language_summary = usize::from(title.is_some()) + 1;
    let per_language_full = if options.full {
        steps(title, &article.paragraphs)
    } else {
        0
    };
    let total =
        summary_steps + options.targets().len() * (per_language_summary + per_language_full);
    let summary = summarize_from(article, from, "en", options, models, cancel, events)?;
    events(TaskEvent::Progress(Progress { done: 1, total }));
    let summary_paragraphs = vec![summary.text.clone()];
    let mut translations = Vec::new();
    let mut offset = summary_steps;
    for lang in options.targets() {
        let counter = StepCounter {
            offset,
            total,
            events,
        };
        translations.push(translate_texts(
            &TranslationInput {
                title,
                paragraphs: &summary_paragraphs,
                language: lang,
                from: "en",
                source: TranslationSource::Summary,
            },
            options,
            models,
            cancel,
            &counter,
        )?);
        offset += per_language_summary;
    }
    if options.full {
        for lang in options.targets() {
            let counter = StepCounter {
                offset,
                total,
                events,
            };
            translations.push(translate_texts(
                &TranslationInput {
                    title,
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
            offset += per_language_full;
        }
    }
    Ok((summary, translations))
}
