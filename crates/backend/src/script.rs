//! Writing systems: which script a language is written in, which letters
//! belong to a script, and the guard that keeps an LLM's translation in its
//! target's script. The quality flags measure outputs with the same
//! [`Script`], so a letter the guard lets through and a letter a flag counts
//! are judged by one rule.

use crate::languages::{language, primary_subtag};

/// A script precis knows the letters of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Script {
    /// Latin letters (English, German, …).
    Latin,
    /// Cyrillic letters (Russian, Ukrainian, …).
    Cyrillic,
    /// Devanagari letters and signs (Hindi, Marathi, Nepali).
    Devanagari,
}

impl Script {
    /// Every script precis knows.
    pub const ALL: [Script; 3] = [Script::Latin, Script::Cyrillic, Script::Devanagari];

    /// Its English name.
    pub fn name(self) -> &'static str {
        match self {
            Script::Latin => "Latin",
            Script::Cyrillic => "Cyrillic",
            Script::Devanagari => "Devanagari",
        }
    }

    /// Whether `c` is in the script's Unicode blocks.
    pub fn contains(self, c: char) -> bool {
        let ranges: &[(u32, u32)] = match self {
            Script::Latin => &[
                (0x0041, 0x005A),
                (0x0061, 0x007A),
                (0x00AA, 0x00AA),
                (0x00BA, 0x00BA),
                (0x00C0, 0x00D6),
                (0x00D8, 0x00F6),
                (0x00F8, 0x024F),
                (0x0250, 0x02AF),
                (0x1E00, 0x1EFF),
                (0x2C60, 0x2C7F),
                (0xA720, 0xA7FF),
                (0xAB30, 0xAB6F),
                (0xFF21, 0xFF3A),
                (0xFF41, 0xFF5A),
            ],
            Script::Cyrillic => &[
                (0x0400, 0x052F),
                (0x1C80, 0x1C8F),
                (0x2DE0, 0x2DFF),
                (0xA640, 0xA69F),
            ],
            Script::Devanagari => &[(0x0900, 0x097F), (0xA8E0, 0xA8FF), (0x11B00, 0x11B5F)],
        };
        let c = u32::from(c);
        ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
    }

    /// The script `code` (ISO 639-1, a region subtag allowed: `ru-RU`) is
    /// written in, from its FLORES-200 code (`rus_Cyrl`); `None` for a
    /// language precis does not know or a script it does not.
    pub fn of_language(code: &str) -> Option<Script> {
        let flores = language(&primary_subtag(code))?.flores;
        match flores.rsplit('_').next()? {
            "Latn" => Some(Script::Latin),
            "Cyrl" => Some(Script::Cyrillic),
            "Deva" => Some(Script::Devanagari),
            _ => None,
        }
    }
}

/// Characters that join the parts of a protected span (`COVID-19`,
/// `example.org/a_b`, `name@example.org`) besides letters and digits.
const SPAN_JOINERS: &str = "._-/:@?=&%#+~";

/// Keeps an LLM's translation in the target language's script: a letter of
/// another script (Latin in a Russian translation, Chinese in a Hindi one)
/// may be written only as part of a span protected in the source (see
/// [`protected_spans`]); digits, punctuation and marks are always allowed.
/// Used for targets written in a script other than Latin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptGuard {
    script: Script,
    protected: Vec<String>,
}

impl ScriptGuard {
    /// The guard for translating `source` into `target`; `None` when the
    /// target is written in Latin or in a script precis does not know.
    pub fn new(target: &str, source: &str) -> Option<Self> {
        let script = Script::of_language(target).filter(|s| *s != Script::Latin)?;
        Some(Self {
            script,
            protected: protected_spans(source),
        })
    }

    /// The script it keeps to.
    pub fn script(&self) -> Script {
        self.script
    }

    /// Whether `bytes` (a token, say) hold a whole letter of another
    /// script, or end with the start of a character that can only be one.
    pub fn has_foreign_letter(&self, bytes: &[u8]) -> bool {
        let tail = incomplete_tail(bytes);
        String::from_utf8_lossy(&bytes[..bytes.len() - tail])
            .chars()
            .any(|c| self.foreign(c))
            || !self.may_complete(&bytes[bytes.len() - tail..])
    }

    /// Whether the start of a character `prefix` (one to three bytes of a
    /// longer UTF-8 sequence) can still become a character of the script or
    /// common punctuation, digits or symbols (not merely a mark or an
    /// unassigned code point of another script's block). A four-byte
    /// sequence's start always may (too many characters to look at; none of
    /// precis's scripts is there).
    fn may_complete(&self, prefix: &[u8]) -> bool {
        let Some(&lead) = prefix.first() else {
            return true;
        };
        let needed = match lead {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => return true,
        };
        let bound = |fill: u8| {
            let mut b = prefix.to_vec();
            b.resize(needed, fill);
            std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.chars().next())
                .map(u32::from)
        };
        match (bound(0x80), bound(0xBF)) {
            (Some(lo), Some(hi)) => (lo..=hi)
                .any(|c| char::from_u32(c).is_some_and(|c| self.script.contains(c) || common(c))),
            // No character starts so (an overlong or surrogate start).
            _ => false,
        }
    }

    /// The spans of the source that may be copied in their own script.
    pub fn protected(&self) -> &[String] {
        &self.protected
    }

    /// Whether the output may grow from the bytes `before` by the bytes
    /// `added` (one more token): every letter this adds is in the target's
    /// script, or continues a protected span. A character still incomplete
    /// at the end is judged once it is whole; bytes that cannot make one
    /// are refused.
    pub fn allows(&self, before: &[u8], added: &[u8]) -> bool {
        let start = before.len() - incomplete_tail(before);
        let mut bytes = before[start..].to_vec();
        bytes.extend_from_slice(added);
        let whole = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(e) if e.error_len().is_none() => {
                if !self.may_complete(&bytes[e.valid_up_to()..]) {
                    return false;
                }
                std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => return false,
        };
        if !whole.chars().any(|c| self.foreign(c)) {
            return true;
        }
        let context = String::from_utf8_lossy(&before[..start]);
        let text = format!("{context}{whole}");
        whole
            .char_indices()
            .all(|(i, c)| !self.foreign(c) || self.in_protected_span(&text, context.len() + i))
    }

    /// A letter of another script.
    fn foreign(&self, c: char) -> bool {
        c.is_alphabetic() && !self.script.contains(c)
    }

    /// Whether the foreign letter at byte `at` of `text` ends a run of
    /// foreign letters, digits and joiners that begins a protected span.
    fn in_protected_span(&self, text: &str, at: usize) -> bool {
        let end = at + text[at..].chars().next().map_or(0, char::len_utf8);
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| self.foreign(c) || c.is_ascii_digit() || SPAN_JOINERS.contains(c))
            .last()
            .map_or(at, |(i, _)| i);
        let run = text[start..end].trim_start_matches(|c: char| !c.is_alphanumeric());
        self.protected.iter().any(|p| p.starts_with(run))
    }
}

/// Punctuation, digits, spaces and symbols every script's text uses: the
/// non-letters of Latin-1, the general punctuation, symbol and arrow
/// blocks, CJK punctuation and the full-width forms.
fn common(c: char) -> bool {
    let n = u32::from(c);
    !c.is_alphabetic()
        && (n < 0x100
            || (0x2000..=0x2BFF).contains(&n)
            || (0x3000..=0x303F).contains(&n)
            || (0xFF00..=0xFFEF).contains(&n))
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not
/// complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for k in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - k];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let needed = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > k { k } else { 0 };
    }
    0
}

/// The spans of an English source a translation may copy as they are:
///
/// - text between backticks (code), each whitespace-separated part;
/// - URLs (`scheme://…`, `www.…`) and e-mail addresses;
/// - acronyms and product names written with Latin capitals: a word with
///   two capitals or more (`NASA`, `U.S.`, `WhatsApp`), a capital after a
///   small letter (`iPhone`), or letters and digits together (`COVID-19`, `A320`).
///
/// A plain capitalised word (`Blinken`, `Monday`) is not protected: names
/// are transliterated. Surrounding brackets, quotes and sentence punctuation
/// are not part of a span.
pub fn protected_spans(source: &str) -> Vec<String> {
    let mut spans: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if !s.is_empty() && !spans.iter().any(|x| x == s) {
            spans.push(s.to_string());
        }
    };
    let quoted: Vec<&str> = source.split('`').collect();
    // Odd pieces lie between two backticks (the last one only if closed).
    for piece in quoted
        .iter()
        .skip(1)
        .step_by(2)
        .take((quoted.len() - 1) / 2)
    {
        piece.split_whitespace().for_each(&mut push);
    }
    for word in source.split_whitespace() {
        let word = word
            .trim_matches(|c: char| "()[]{}\"'«»“”‘’`,;!?".contains(c))
            .trim_end_matches(['.', ':', ',', ';']);
        if is_url(word) || is_email(word) || is_acronym_or_product(word) {
            push(word);
        }
    }
    spans
}

fn is_url(word: &str) -> bool {
    word.contains("://") || word.starts_with("www.")
}

fn is_email(word: &str) -> bool {
    match word.split_once('@') {
        Some((user, host)) => {
            !user.is_empty() && host.contains('.') && !host.starts_with('.') && !host.contains('@')
        }
        None => false,
    }
}

fn is_acronym_or_product(word: &str) -> bool {
    let latin = |c: char| Script::Latin.contains(c);
    let capitals = word
        .chars()
        .filter(|&c| latin(c) && c.is_uppercase())
        .count();
    let small_then_capital = word
        .chars()
        .zip(word.chars().skip(1))
        .any(|(a, b)| latin(a) && a.is_lowercase() && latin(b) && b.is_uppercase());
    let letters_and_digits = word.chars().any(latin) && word.chars().any(|c| c.is_ascii_digit());
    capitals >= 2 || small_then_capital || letters_and_digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_map_to_their_scripts() {
        assert_eq!(Script::of_language("ru"), Some(Script::Cyrillic));
        assert_eq!(Script::of_language("uk"), Some(Script::Cyrillic));
        assert_eq!(Script::of_language("hi-IN"), Some(Script::Devanagari));
        assert_eq!(Script::of_language("mr"), Some(Script::Devanagari));
        assert_eq!(Script::of_language("de"), Some(Script::Latin));
        assert_eq!(
            Script::of_language("ar"),
            None,
            "Arabic: not a script precis knows"
        );
        assert_eq!(Script::of_language("xx"), None);
        assert!(ScriptGuard::new("de", "x").is_none(), "no guard for Latin");
        assert!(ScriptGuard::new("ar", "x").is_none());
    }

    #[test]
    fn the_protected_spans_are_urls_mails_code_acronyms_and_products() {
        let source = "NASA and the U.S. Army (see https://nasa.gov/a_b?x=1, or mail \
press@nasa.gov) said on Monday that Blinken's iPhone and WhatsApp ran `cargo build --release` \
during COVID-19, on an A320.";
        assert_eq!(
            protected_spans(source),
            [
                "cargo",
                "build",
                "--release",
                "NASA",
                "U.S",
                "https://nasa.gov/a_b?x=1",
                "press@nasa.gov",
                "iPhone",
                "WhatsApp",
                "COVID-19",
                "A320",
            ]
        );
        // Plain capitalised words, names and sentence starts are not spans.
        assert!(protected_spans("Prime Minister Modi met Blinken in Delhi.").is_empty());
        // An unclosed backtick quotes nothing.
        assert!(protected_spans("a `b c").is_empty());
    }

    /// Whether `guard` lets the output grow, a piece at a time, into `text`.
    fn writes(guard: &ScriptGuard, pieces: &[&str]) -> bool {
        let mut text: Vec<u8> = Vec::new();
        pieces.iter().all(|p| {
            let ok = guard.allows(&text, p.as_bytes());
            text.extend_from_slice(p.as_bytes());
            ok
        })
    }

    #[test]
    fn the_guard_lets_through_the_target_script_and_protected_spans_only() {
        let source = "NASA's chief Bill Nelson met Blinken; see https://nasa.gov and COVID-19.";
        let ru = ScriptGuard::new("ru", source).unwrap();
        assert!(writes(
            &ru,
            &["Глава ", "NASA ", "Билл ", "Нельсон", " встретился"]
        ));
        assert!(writes(
            &ru,
            &["см. ", "https://", "nasa", ".gov", " и ", "COVID", "-19", "."]
        ));
        assert!(
            writes(&ru, &["В 2024 году, 3,5% — «да»!"]),
            "digits and punctuation"
        );
        // A name in Latin, or half in Latin ("Lavров"), is refused at its
        // first Latin letter; so is an English word between Russian ones.
        assert!(!writes(&ru, &["Глава ", "Bill"]));
        assert!(!writes(&ru, &["Lav", "ров"]));
        assert!(!writes(&ru, &["downstream ", "страны"]));
        // A protected span is a prefix, not any piece of Latin: "NASAX",
        // or "NA" glued to a Cyrillic word, is not one.
        assert!(!writes(&ru, &["NASAX"]));
        assert!(writes(&ru, &["NA", "SA"]));
        // Other scripts are foreign too.
        assert!(!writes(&ru, &["Глава ", "中国"]));
        let hi = ScriptGuard::new("hi", source).unwrap();
        assert!(writes(&hi, &["नासा के प्रमुख ", "NASA", " ने कहा।"]));
        assert!(!writes(&hi, &["नासा ", "chief"]));
        assert!(!writes(&hi, &["नासा ", "глава"]));
    }

    #[test]
    fn an_incomplete_character_is_judged_when_whole() {
        let ru = ScriptGuard::new("ru", "x").unwrap();
        let (v, x) = ("в".as_bytes(), "x".as_bytes());
        let hi = ScriptGuard::new("hi", "x").unwrap();
        let ka = "क".as_bytes(); // three bytes
                                 // Half a character waits; the other half makes "в", allowed.
        assert!(ru.allows("Гла".as_bytes(), &v[..1]));
        let mut half = "Гла".as_bytes().to_vec();
        half.push(v[0]);
        assert!(ru.allows(&half, &v[1..]));
        assert!(hi.allows(&ka[..1], &ka[1..2]));
        assert!(hi.allows(&ka[..2], &ka[2..]));
        // Bytes that can no longer make a character are refused.
        assert!(!ru.allows(&half, x));
        assert!(!ru.allows(&half, " ".as_bytes()));
        assert!(!ru.allows("Гла".as_bytes(), &[0xFF]));
        // The start of a character that can only be a foreign letter is
        // refused at once: Cyrillic's lead byte in Hindi, Devanagari's in
        // Russian; a lead byte whose range holds punctuation too waits.
        assert!(!hi.allows(b"", &v[..1]));
        assert!(!ru.allows(b"", &ka[..2]));
        assert!(
            !ru.allows(b"", &ka[..1]),
            "E0 starts only Indic and other scripts"
        );
        assert!(ru.allows(b"", &"—".as_bytes()[..1]));
        assert!(ru.allows(b"", &"«".as_bytes()[..1]));
        assert!(hi.has_foreign_letter(&v[..1]));
        assert!(!hi.has_foreign_letter(&ka[..2]));
        assert!(hi.has_foreign_letter("x".as_bytes()));
        assert!(!hi.has_foreign_letter(" 12,".as_bytes()));
        assert_eq!(incomplete_tail(&half), 1);
        assert_eq!(incomplete_tail(&ka[..2]), 2);
        assert_eq!(incomplete_tail(ka), 0);
        assert_eq!(incomplete_tail(b"abc"), 0);
    }
}
