//! Languages as the API and the CLI name them: ISO 639-1 codes (`ru`,
//! `hi`, `de`, …), with their English names and their FLORES-200 codes, in
//! one table. A model says which of these codes it writes; each translator
//! family's own name for a language comes from this table: the FLORES-200
//! code for NLLB (`rus_Cyrl`), `__ru__` for M2M100, `<2ru>` for MADLAD, the
//! target of an opus-mt pair.

/// A language precis can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code.
    pub code: &'static str,
    /// English name.
    pub name: &'static str,
    /// FLORES-200 code (language and script), as NLLB names it.
    pub flores: &'static str,
}

/// The languages precis knows by name: the FLORES-200 languages that have
/// an ISO 639-1 code and are written by the open translators precis runs.
#[rustfmt::skip]
pub const LANGUAGES: &[Language] = &[
    Language { code: "af", name: "Afrikaans", flores: "afr_Latn" },
    Language { code: "am", name: "Amharic", flores: "amh_Ethi" },
    Language { code: "ar", name: "Arabic", flores: "arb_Arab" },
    Language { code: "az", name: "Azerbaijani", flores: "azj_Latn" },
    Language { code: "be", name: "Belarusian", flores: "bel_Cyrl" },
    Language { code: "bg", name: "Bulgarian", flores: "bul_Cyrl" },
    Language { code: "bn", name: "Bengali", flores: "ben_Beng" },
    Language { code: "ca", name: "Catalan", flores: "cat_Latn" },
    Language { code: "cs", name: "Czech", flores: "ces_Latn" },
    Language { code: "cy", name: "Welsh", flores: "cym_Latn" },
    Language { code: "da", name: "Danish", flores: "dan_Latn" },
    Language { code: "de", name: "German", flores: "deu_Latn" },
    Language { code: "el", name: "Greek", flores: "ell_Grek" },
    Language { code: "en", name: "English", flores: "eng_Latn" },
    Language { code: "es", name: "Spanish", flores: "spa_Latn" },
    Language { code: "et", name: "Estonian", flores: "est_Latn" },
    Language { code: "fa", name: "Persian", flores: "pes_Arab" },
    Language { code: "fi", name: "Finnish", flores: "fin_Latn" },
    Language { code: "fr", name: "French", flores: "fra_Latn" },
    Language { code: "ga", name: "Irish", flores: "gle_Latn" },
    Language { code: "gu", name: "Gujarati", flores: "guj_Gujr" },
    Language { code: "ha", name: "Hausa", flores: "hau_Latn" },
    Language { code: "he", name: "Hebrew", flores: "heb_Hebr" },
    Language { code: "hi", name: "Hindi", flores: "hin_Deva" },
    Language { code: "hr", name: "Croatian", flores: "hrv_Latn" },
    Language { code: "hu", name: "Hungarian", flores: "hun_Latn" },
    Language { code: "hy", name: "Armenian", flores: "hye_Armn" },
    Language { code: "id", name: "Indonesian", flores: "ind_Latn" },
    Language { code: "ig", name: "Igbo", flores: "ibo_Latn" },
    Language { code: "is", name: "Icelandic", flores: "isl_Latn" },
    Language { code: "it", name: "Italian", flores: "ita_Latn" },
    Language { code: "ja", name: "Japanese", flores: "jpn_Jpan" },
    Language { code: "ka", name: "Georgian", flores: "kat_Geor" },
    Language { code: "kk", name: "Kazakh", flores: "kaz_Cyrl" },
    Language { code: "km", name: "Khmer", flores: "khm_Khmr" },
    Language { code: "kn", name: "Kannada", flores: "kan_Knda" },
    Language { code: "ko", name: "Korean", flores: "kor_Hang" },
    Language { code: "lo", name: "Lao", flores: "lao_Laoo" },
    Language { code: "lt", name: "Lithuanian", flores: "lit_Latn" },
    Language { code: "lv", name: "Latvian", flores: "lvs_Latn" },
    Language { code: "mk", name: "Macedonian", flores: "mkd_Cyrl" },
    Language { code: "ml", name: "Malayalam", flores: "mal_Mlym" },
    Language { code: "mn", name: "Mongolian", flores: "khk_Cyrl" },
    Language { code: "mr", name: "Marathi", flores: "mar_Deva" },
    Language { code: "ms", name: "Malay", flores: "zsm_Latn" },
    Language { code: "my", name: "Burmese", flores: "mya_Mymr" },
    Language { code: "ne", name: "Nepali", flores: "npi_Deva" },
    Language { code: "nl", name: "Dutch", flores: "nld_Latn" },
    Language { code: "no", name: "Norwegian", flores: "nob_Latn" },
    Language { code: "pa", name: "Punjabi", flores: "pan_Guru" },
    Language { code: "pl", name: "Polish", flores: "pol_Latn" },
    Language { code: "ps", name: "Pashto", flores: "pbt_Arab" },
    Language { code: "pt", name: "Portuguese", flores: "por_Latn" },
    Language { code: "ro", name: "Romanian", flores: "ron_Latn" },
    Language { code: "ru", name: "Russian", flores: "rus_Cyrl" },
    Language { code: "si", name: "Sinhala", flores: "sin_Sinh" },
    Language { code: "sk", name: "Slovak", flores: "slk_Latn" },
    Language { code: "sl", name: "Slovenian", flores: "slv_Latn" },
    Language { code: "so", name: "Somali", flores: "som_Latn" },
    Language { code: "sq", name: "Albanian", flores: "als_Latn" },
    Language { code: "sr", name: "Serbian", flores: "srp_Cyrl" },
    Language { code: "sv", name: "Swedish", flores: "swe_Latn" },
    Language { code: "sw", name: "Swahili", flores: "swh_Latn" },
    Language { code: "ta", name: "Tamil", flores: "tam_Taml" },
    Language { code: "te", name: "Telugu", flores: "tel_Telu" },
    Language { code: "th", name: "Thai", flores: "tha_Thai" },
    Language { code: "tl", name: "Tagalog", flores: "tgl_Latn" },
    Language { code: "tr", name: "Turkish", flores: "tur_Latn" },
    Language { code: "uk", name: "Ukrainian", flores: "ukr_Cyrl" },
    Language { code: "ur", name: "Urdu", flores: "urd_Arab" },
    Language { code: "uz", name: "Uzbek", flores: "uzn_Latn" },
    Language { code: "vi", name: "Vietnamese", flores: "vie_Latn" },
    Language { code: "xh", name: "Xhosa", flores: "xho_Latn" },
    Language { code: "yo", name: "Yoruba", flores: "yor_Latn" },
    Language { code: "zh", name: "Chinese", flores: "zho_Hans" },
    Language { code: "zu", name: "Zulu", flores: "zul_Latn" },
];

/// The primary subtag of a language tag, lower case: `ru-RU` → `ru`.
pub fn primary_subtag(tag: &str) -> String {
    tag.trim()
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The language of an ISO 639-1 code, when the table has it.
pub fn language(code: &str) -> Option<&'static Language> {
    LANGUAGES
        .binary_search_by(|l| l.code.cmp(code))
        .ok()
        .map(|i| &LANGUAGES[i])
}

/// The English name of a language code, for prompts and messages.
pub fn language_name(code: &str) -> Option<&'static str> {
    language(code).map(|l| l.name)
}

/// The ISO 639-1 code of a two- or three-letter code (`ru`, `rus`; the
/// bibliographic `ger`, `fre`, `chi`; `cmn` for Chinese as whatlang names
/// it), when the table has the language.
pub fn iso_639_1(code: &str) -> Option<&'static str> {
    let code = match code {
        "cmn" | "chi" => "zho",
        "ara" => "arb",
        "lav" => "lvs",
        "uzb" => "uzn",
        "aze" => "azj",
        "mon" => "khk",
        "msa" => "zsm",
        "swa" => "swh",
        "fas" | "per" => "pes",
        "ger" => "deu",
        "fre" => "fra",
        other => other,
    };
    LANGUAGES
        .iter()
        .find(|l| l.code == code || l.flores.split('_').next() == Some(code))
        .map(|l| l.code)
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
        assert_eq!(language("hi").map(|l| l.flores), Some("hin_Deva"));
        for (code, two) in [
            ("rus", "ru"),
            ("ru", "ru"),
            ("ger", "de"),
            ("chi", "zh"),
            ("cmn", "zh"),
            ("ara", "ar"),
        ] {
            assert_eq!(iso_639_1(code), Some(two), "{code}");
        }
        assert_eq!(iso_639_1("xx"), None);
        assert_eq!(iso_639_1("zzz"), None);
    }

    #[test]
    fn flores_codes_are_language_underscore_script_once_each() {
        let mut seen = std::collections::HashSet::new();
        for l in LANGUAGES {
            let (lang, script) = l.flores.split_once('_').expect("lang_Script");
            assert!(
                lang.len() == 3 && lang.bytes().all(|b| b.is_ascii_lowercase()),
                "{}",
                l.flores
            );
            assert!(
                script.len() == 4 && script.as_bytes()[0].is_ascii_uppercase(),
                "{}",
                l.flores
            );
            assert!(seen.insert(l.flores), "{} twice", l.flores);
        }
    }
}
