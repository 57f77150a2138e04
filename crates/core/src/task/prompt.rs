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

/// The chat prompt asking for a translation of one piece of text into
/// `language`; `names` are names of the piece already rendered earlier in
/// the article (name, rendering), to be written the same way.
///
/// Two ways of teaching the task were measured on FLORES and dropped
/// (README, "LLM translation"): worked examples shown as earlier turns (with
/// three English→Hindi pairs, Qwen2.5-Coder-1.5B copied their phrases into
/// 28 of 100 translations), and the article's previous sentence with its
/// translation shown as the earlier turn (chrF −0.3 for Russian and Hindi,
/// and 1.3× slower).
pub fn translation(text: &str, language: &str, names: &[(String, String)]) -> Vec<ChatMessage> {
    let lang = language_name(language).unwrap_or(language);
    let mut system = TRANSLATION_SYSTEM.replace("{language}", lang);
    if !names.is_empty() {
        let names: Vec<String> = (names.iter())
            .map(|(name, rendering)| format!("{name} = {rendering}"))
            .collect();
        system.push_str(&format!(
            " Write these names as earlier in the article: {}.",
            names.join(", ")
        ));
    }
    vec![ChatMessage::system(system), ChatMessage::user(text)]
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
        let m = translation("Hello.", "hi", &[]);
        assert_eq!(m.len(), 2);
        assert!(m[0].content.contains("into Hindi."));
        assert!(!m[0].content.contains("{language}"));
        assert_eq!(m[1].content, "Hello.");
    }

    #[test]
    fn translation_prompt_lists_the_names_rendered_before() {
        let names = [
            ("Lavrov".to_string(), "Лавров".to_string()),
            ("Blinken".to_string(), "Блинкен".to_string()),
        ];
        let m = translation("Lavrov met Blinken.", "ru", &names);
        assert_eq!(m.len(), 2);
        // The fixed instructions come first, so prompts share their start.
        let fixed = TRANSLATION_SYSTEM.replace("{language}", "Russian");
        assert_eq!(
            m[0].content,
            format!(
                "{fixed} Write these names as earlier in the article: Lavrov = Лавров, Blinken = Блинкен."
            )
        );
        assert_eq!(m[1].content, "Lavrov met Blinken.");
    }
}
