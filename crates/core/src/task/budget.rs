//! Token budgets: how many new tokens a summary or translation may take, and
//! whether an input fits the model's context.
//!
//! Output limits are derived, never fixed per language: the model's own
//! tokenizer is measured on a short sample text in the target language, which
//! gives its tokens per character there (a byte-level tokenizer with few
//! Devanagari merges spends many tokens per Hindi character). Then
//!
//! - translation: `max_new_tokens = ceil(source_chars × expansion(lang) × tokens_per_char(lang) × 1.5) + 32`;
//! - summary: words asked for (sentences × 25 when a sentence count is given),
//!   × 6.5 characters per English word, × expansion, × tokens per character,
//!   × 1.5, + 32.
//!
//! `expansion` is the usual length of a translation relative to English
//! (ru 1.2, hi 1.15, en 1.0, other languages 1.3). The factor 1.5 leaves room
//! for wordy output; the token limit still stops a model that rambles, and the
//! result is flagged `token_limit_reached` when it does.

use super::{Length, TaskError, TextModel};

/// Words per sentence assumed when a length is given in sentences.
pub(crate) const WORDS_PER_SENTENCE: u32 = 25;
/// Characters per English word (with its space).
pub(crate) const CHARS_PER_WORD: f64 = 6.5;
/// Head-room over the expected output size.
pub(crate) const HEADROOM: f64 = 1.5;
/// Tokens always allowed on top (end token, punctuation, short outputs).
pub(crate) const FLOOR: usize = 32;
/// Tokens reserved for the chat template around the prompt's messages.
pub(crate) const TEMPLATE_OVERHEAD: usize = 48;

/// Typical length of a translation into `lang` relative to the English source, in characters.
pub(crate) fn expansion(lang: &str) -> f64 {
    match lang {
        "en" => 1.0,
        "ru" => 1.2,
        "hi" => 1.15,
        _ => 1.3,
    }
}

fn sample(lang: &str) -> &'static str {
    match lang {
        "ru" => "Министры иностранных дел встретились в среду, чтобы обсудить торговлю, продовольственную безопасность и помощь странам, пострадавшим от наводнений.",
        "hi" => "विदेश मंत्रियों ने बुधवार को व्यापार, खाद्य सुरक्षा और बाढ़ से प्रभावित देशों को सहायता पर चर्चा करने के लिए मुलाकात की।",
        _ => "The foreign ministers met on Wednesday to discuss trade, food security and aid for the countries hit by the floods.",
    }
}

/// The model's tokens per character of text in `lang`, measured on a sample sentence.
pub(crate) fn tokens_per_char(model: &dyn TextModel, lang: &str) -> Result<f64, TaskError> {
    let s = sample(lang);
    let tokens = model.count_tokens(s)?;
    Ok(tokens.max(1) as f64 / s.chars().count() as f64)
}

/// New-token limit for translating `source_chars` characters of English into `lang`.
pub(crate) fn translation_max_tokens(
    model: &dyn TextModel,
    source_chars: usize,
    lang: &str,
) -> Result<usize, TaskError> {
    let tpc = tokens_per_char(model, lang)?;
    Ok((source_chars as f64 * expansion(lang) * tpc * HEADROOM).ceil() as usize + FLOOR)
}

/// Words a requested length stands for.
pub(crate) fn length_words(length: Length) -> u32 {
    match length {
        Length::Sentences(n) => n.saturating_mul(WORDS_PER_SENTENCE),
        Length::Words(w) => w,
    }
}

/// New-token limit for a summary of `length` in `lang`.
pub(crate) fn summary_max_tokens(
    model: &dyn TextModel,
    length: Length,
    lang: &str,
) -> Result<usize, TaskError> {
    let tpc = tokens_per_char(model, lang)?;
    let chars = f64::from(length_words(length)) * CHARS_PER_WORD * expansion(lang);
    Ok((chars * tpc * HEADROOM).ceil() as usize + FLOOR)
}

/// Prompt tokens of a set of message texts, with the template's overhead.
pub fn prompt_tokens(model: &dyn TextModel, texts: &[&str]) -> Result<usize, TaskError> {
    let mut n = TEMPLATE_OVERHEAD;
    for t in texts {
        n += model.count_tokens(t)?;
    }
    Ok(n)
}
