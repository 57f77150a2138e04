//! Languages as the API and the CLI name them: ISO 639-1 codes (`ru`,
//! `hi`, `de`, …), with their English names, in one table. A model says
//! which of these codes it writes; what each translator family calls a
//! language is its own business, mapped from these codes where it loads.

/// A language precis can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code.
    pub code: &'static str,
    /// English name.
    pub name: &'static str,
}

/// The languages precis knows by name: the FLORES-200 languages that have
/// an ISO 639-1 code and are written by the open translators precis runs.
#[rustfmt::skip]
pub const LANGUAGES: &[Language] = &[
    Language { code: "af", name: "Afrikaans" },
    Language { code: "am", name: "Amharic" },
    Language { code: "ar", name: "Arabic" },
    Language { code: "az", name: "Azerbaijani" },
    Language { code: "be", name: "Belarusian" },
    Language { code: "bg", name: "Bulgarian" },
    Language { code: "bn", name: "Bengali" },
    Language { code: "ca", name: "Catalan" },
    Language { code: "cs", name: "Czech" },
    Language { code: "cy", name: "Welsh" },
    Language { code: "da", name: "Danish" },
    Language { code: "de", name: "German" },
    Language { code: "el", name: "Greek" },
    Language { code: "en", name: "English" },
    Language { code: "es", name: "Spanish" },
    Language { code: "et", name: "Estonian" },
    Language { code: "fa", name: "Persian" },
    Language { code: "fi", name: "Finnish" },
    Language { code: "fr", name: "French" },
    Language { code: "ga", name: "Irish" },
    Language { code: "gu", name: "Gujarati" },
    Language { code: "ha", name: "Hausa" },
    Language { code: "he", name: "Hebrew" },
    Language { code: "hi", name: "Hindi" },
    Language { code: "hr", name: "Croatian" },
    Language { code: "hu", name: "Hungarian" },
    Language { code: "hy", name: "Armenian" },
    Language { code: "id", name: "Indonesian" },
    Language { code: "ig", name: "Igbo" },
    Language { code: "is", name: "Icelandic" },
    Language { code: "it", name: "Italian" },
    Language { code: "ja", name: "Japanese" },
    Language { code: "ka", name: "Georgian" },
    Language { code: "kk", name: "Kazakh" },
    Language { code: "km", name: "Khmer" },
    Language { code: "kn", name: "Kannada" },
    Language { code: "ko", name: "Korean" },
    Language { code: "lo", name: "Lao" },
    Language { code: "lt", name: "Lithuanian" },
    Language { code: "lv", name: "Latvian" },
    Language { code: "mk", name: "Macedonian" },
    Language { code: "ml", name: "Malayalam" },
    Language { code: "mn", name: "Mongolian" },
    Language { code: "mr", name: "Marathi" },
    Language { code: "ms", name: "Malay" },
    Language { code: "my", name: "Burmese" },
    Language { code: "ne", name: "Nepali" },
    Language { code: "nl", name: "Dutch" },
    Language { code: "no", name: "Norwegian" },
    Language { code: "pa", name: "Punjabi" },
    Language { code: "pl", name: "Polish" },
    Language { code: "ps", name: "Pashto" },
    Language { code: "pt", name: "Portuguese" },
    Language { code: "ro", name: "Romanian" },
    Language { code: "ru", name: "Russian" },
    Language { code: "si", name: "Sinhala" },
    Language { code: "sk", name: "Slovak" },
    Language { code: "sl", name: "Slovenian" },
    Language { code: "so", name: "Somali" },
    Language { code: "sq", name: "Albanian" },
    Language { code: "sr", name: "Serbian" },
    Language { code: "sv", name: "Swedish" },
    Language { code: "sw", name: "Swahili" },
    Language { code: "ta", name: "Tamil" },
    Language { code: "te", name: "Telugu" },
    Language { code: "th", name: "Thai" },
    Language { code: "tl", name: "Tagalog" },
    Language { code: "tr", name: "Turkish" },
    Language { code: "uk", name: "Ukrainian" },
    Language { code: "ur", name: "Urdu" },
    Language { code: "uz", name: "Uzbek" },
    Language { code: "vi", name: "Vietnamese" },
    Language { code: "xh", name: "Xhosa" },
    Language { code: "yo", name: "Yoruba" },
    Language { code: "zh", name: "Chinese" },
    Language { code: "zu", name: "Zulu" },
];

/// The English name of a language code, for prompts and messages.
pub fn language_name(code: &str) -> Option<&'static str> {
    LANGUAGES
        .binary_search_by(|l| l.code.cmp(code))
        .ok()
        .map(|i| LANGUAGES[i].name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_with_two_letter_codes_once_each() {
        assert!(LANGUAGES.windows(2).all(|w| w[0].code < w[1].code));
        assert!(LANGUAGES
            .iter()
            .all(|l| l.code.len() == 2 && l.code.bytes().all(|b| b.is_ascii_lowercase())));
        assert_eq!(language_name("hi"), Some("Hindi"));
        assert_eq!(language_name("ru"), Some("Russian"));
        assert_eq!(language_name("de"), Some("German"));
        assert_eq!(language_name("xx"), None);
    }
}
