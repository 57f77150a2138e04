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

/// A worked example of a translation: an English news sentence and how
/// precis wants it written in each language it has examples for. Written
/// for precis (not taken from any evaluation set): numbers and dates kept,
/// names transliterated, an acronym rendered as the target's press does.
pub(crate) struct Example {
    /// The English sentence.
    pub en: &'static str,
    /// Its translations, by ISO 639-1 code.
    pub translations: &'static [(&'static str, &'static str)],
}

/// The examples shown, as earlier turns of the chat, before every
/// translation into a language they cover.
pub(crate) const EXAMPLES: &[Example] = &[
    Example {
        en: "The central bank raised its key interest rate to 6.5% on Wednesday, the third increase this year.",
        translations: &[
            ("ru", "В среду центральный банк повысил ключевую ставку до 6,5% — это третье повышение в этом году."),
            ("hi", "केंद्रीय बैंक ने बुधवार को अपनी प्रमुख ब्याज दर बढ़ाकर 6.5% कर दी, जो इस साल की तीसरी बढ़ोतरी है।"),
        ],
    },
    Example {
        en: "Foreign Minister Sergei Lavrov met his Indian counterpart Subrahmanyam Jaishankar in New Delhi to discuss trade.",
        translations: &[
            ("ru", "Министр иностранных дел Сергей Лавров встретился со своим индийским коллегой Субраманьямом Джайшанкаром в Нью-Дели, чтобы обсудить торговлю."),
            ("hi", "विदेश मंत्री सर्गेई लावरोव ने व्यापार पर चर्चा के लिए नई दिल्ली में अपने भारतीय समकक्ष सुब्रह्मण्यम जयशंकर से मुलाकात की।"),
        ],
    },
    Example {
        en: "According to the WHO, more than 1,200 people in the region were vaccinated between March 3 and April 10.",
        translations: &[
            ("ru", "По данным ВОЗ, с 3 марта по 10 апреля в регионе вакцинировали более 1200 человек."),
            ("hi", "डब्ल्यूएचओ के अनुसार, 3 मार्च से 10 अप्रैल के बीच क्षेत्र में 1,200 से अधिक लोगों को टीका लगाया गया।"),
        ],
    },
];

/// The chat prompt asking for a translation of one piece of text into
/// `language`: the instructions, the [`EXAMPLES`] written in that language
/// as earlier turns, then the text.
pub fn translation(text: &str, language: &str) -> Vec<ChatMessage> {
    let lang = language_name(language).unwrap_or(language);
    let mut messages = vec![ChatMessage::system(
        TRANSLATION_SYSTEM.replace("{language}", lang),
    )];
    for example in EXAMPLES {
        if let Some((_, written)) = example.translations.iter().find(|(l, _)| *l == language) {
            messages.push(ChatMessage::user(example.en));
            messages.push(ChatMessage::assistant(*written));
        }
    }
    messages.push(ChatMessage::user(text));
    messages
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
    fn translation_prompt_names_the_language_and_shows_its_examples() {
        let m = translation("Hello.", "hi");
        assert!(m[0].content.contains("into Hindi."));
        assert!(!m[0].content.contains("{language}"));
        assert_eq!(m.len(), 2 + 2 * EXAMPLES.len());
        assert_eq!(m[1].content, EXAMPLES[0].en);
        assert!(m[2].content.starts_with("केंद्रीय बैंक"));
        assert_eq!(m.last().unwrap().content, "Hello.");
        // No examples for a language they do not cover.
        let de = translation("Hello.", "de");
        assert_eq!(de.len(), 2);
        assert!(de[0].content.contains("into German."));
    }

    #[test]
    fn every_example_keeps_its_numbers_and_covers_the_default_languages() {
        for e in EXAMPLES {
            for language in ["ru", "hi"] {
                let (_, written) = e
                    .translations
                    .iter()
                    .find(|(l, _)| *l == language)
                    .unwrap_or_else(|| panic!("{language} missing for {:?}", e.en));
                assert!(
                    crate::task::quality::numbers_not_in_source(written, e.en).is_empty(),
                    "{written}"
                );
            }
        }
    }
}
