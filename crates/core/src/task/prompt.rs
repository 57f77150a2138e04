//! Prompt templates for the LLM backend. Kept in one place so that the
//! pipeline version (and later the result cache key) can hash them, and so the
//! tests pin exactly what a model is asked.

use super::budget::length_words;
use super::{language_name, Length, PreparedArticle};
use precis_backend::ChatMessage;

/// System prompt for summaries.
pub(crate) const SUMMARY_SYSTEM: &str =
    "You are a news editor. You write short, faithful summaries of news articles. \
Use only facts stated in the article; add no opinions, background or facts that are not in it. \
Keep names, numbers and dates exactly as written.";

/// System prompt for translations; `{language}` is replaced by the target language's name.
pub(crate) const TRANSLATION_SYSTEM: &str = "You are a professional translator. Translate the user's English text into {language}. \
Output only the {language} translation: no notes, no explanations, no quotation marks around it, no English. \
Keep names, numbers and dates exact.";

fn length_phrase(length: Length) -> String {
    match length {
        Length::Sentences(1) => "one sentence".to_string(),
        Length::Sentences(n) => format!("{n} sentences"),
        Length::Words(w) => format!("about {w} words"),
    }
}

/// The chat prompt asking for a summary of the article in `language`.
pub fn summary(article: &PreparedArticle, language: &str, length: Length) -> Vec<ChatMessage> {
    let lang = language_name(language).unwrap_or(language);
    let mut user = format!(
        "Summarize the following news article in {} ({} words at most), in {lang}. \
Write plain prose: no title, no bullet points, no preamble.\n\n",
        length_phrase(length),
        length_words(length) + length_words(length) / 2,
    );
    if let Some(h) = &article.headline {
        user.push_str("Headline: ");
        user.push_str(h);
        user.push_str("\n\n");
    }
    user.push_str(&article.paragraphs.join("\n\n"));
    vec![ChatMessage::system(SUMMARY_SYSTEM), ChatMessage::user(user)]
}

/// The chat prompt asking for a translation of one piece of text into `language`.
///
/// Worked examples shown as earlier turns were measured and dropped: with
/// three English→Hindi pairs, Qwen2.5-Coder-1.5B copied their phrases into
/// 28 of 100 FLORES translations (README, "LLM translation").
pub fn translation(text: &str, language: &str) -> Vec<ChatMessage> {
    let lang = language_name(language).unwrap_or(language);
    vec![
        ChatMessage::system(TRANSLATION_SYSTEM.replace("{language}", lang)),
        ChatMessage::user(text),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn article() -> PreparedArticle {
        PreparedArticle {
            headline: Some("Ministers meet".into()),
            paragraphs: vec!["First paragraph.".into(), "Second paragraph.".into()],
            dropped: vec![],
            paragraphs_in: 2,
        }
    }

    #[test]
    fn summary_prompt_states_length_language_and_text() {
        let m = summary(&article(), "en", Length::Sentences(3));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].content, SUMMARY_SYSTEM);
        assert_eq!(
            m[1].content,
            "Summarize the following news article in 3 sentences (112 words at most), in English. \
Write plain prose: no title, no bullet points, no preamble.\n\n\
Headline: Ministers meet\n\nFirst paragraph.\n\nSecond paragraph."
        );
    }

    #[test]
    fn summary_prompt_in_words_and_russian() {
        let m = summary(&article(), "ru", Length::Words(40));
        assert!(m[1].content.starts_with(
            "Summarize the following news article in about 40 words (60 words at most), in Russian."
        ));
    }

    #[test]
    fn translation_prompt_names_the_language() {
        let m = translation("Hello.", "hi");
        assert!(m[0].content.contains("into Hindi."));
        assert!(!m[0].content.contains("{language}"));
        assert_eq!(m[1].content, "Hello.");
    }
}
