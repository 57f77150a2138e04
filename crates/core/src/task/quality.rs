//! Quality flags on a model's output.
//!
//! Small open models fail in a few recognisable ways: they answer in the
//! wrong language or script, repeat themselves until the token limit, stop
//! mid-sentence, invent figures, or return far too little or too much. None
//! of this can be fixed here, but all of it can be *seen*: `assess` runs
//! cheap checks on an output and returns [`QualityFlag`]s that travel with the
//! result, so a reader (or `--strict`) knows which output not to trust.
//!
//! The checks, their thresholds and defaults are listed on
//! `QualityThresholds`.

use precis_backend::languages::primary_subtag;
use precis_backend::script::Script;
use serde::ser::{Serialize, Serializer};
use serde::Deserialize;

/// Something that looks wrong with an output.
///
/// Serialised as an object with a snake_case `code`, the variant's fields and
/// a human `message`, e.g.
/// `{"code":"loop_detected","message":"generation stopped because the output began repeating itself"}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum QualityFlag {
    /// Too few of the output's letters are in the target language's script.
    ScriptShareLow {
        /// Target language code.
        language: String,
        /// Share of letters in the expected script (0–1, rounded to 3 places).
        share: f32,
        /// The threshold it fell below.
        threshold: f32,
    },
    /// Words of the output mix letters of two scripts ("Lavров"): a word
    /// left half untranslated, or a look-alike letter of another alphabet.
    MixedScriptWords {
        /// The words, in output order, without repeats (at most
        /// [`MAX_LISTED_WORDS`]).
        words: Vec<String>,
    },
    /// A translation has far more or far fewer sentences than its source:
    /// a sentence dropped, or commentary added.
    SentenceCountMismatch {
        /// Sentences of the source (see [`sentence_count`]).
        source: usize,
        /// Sentences of the output.
        output: usize,
    },
    /// Generation was stopped because the output started repeating itself.
    LoopDetected,
    /// Generation hit its token limit: the output may be cut off.
    TokenLimitReached,
    /// The output has numbers that the source does not.
    NumbersNotInSource {
        /// The numbers, normalised (see [`numbers_in`]), in output order.
        numbers: Vec<String>,
    },
    /// A Russian or Hindi translation lacks names, month names or weekdays
    /// of its source (see `entities`): dropped, or changed past recognition.
    EntitiesMissing {
        /// The entities, as the source writes them, in source order.
        entities: Vec<String>,
    },
    /// A translation lacks numbers that its source has: dropped or changed.
    NumbersMissing {
        /// The source's numbers, normalised (see [`numbers_in`]), in source
        /// order.
        numbers: Vec<String>,
    },
    /// Output length / source length (in characters) is out of the expected
    /// range.
    LengthRatioOutOfRange {
        /// The ratio (rounded to 3 places).
        ratio: f32,
        /// Lowest expected ratio.
        min: f32,
        /// Highest expected ratio.
        max: f32,
    },
}

impl QualityFlag {
    /// The flag's snake_case code, as serialised in `code`.
    pub fn code(&self) -> &'static str {
        match self {
            QualityFlag::ScriptShareLow { .. } => "script_share_low",
            QualityFlag::MixedScriptWords { .. } => "mixed_script_words",
            QualityFlag::SentenceCountMismatch { .. } => "sentence_count_mismatch",
            QualityFlag::LoopDetected => "loop_detected",
            QualityFlag::TokenLimitReached => "token_limit_reached",
            QualityFlag::NumbersNotInSource { .. } => "numbers_not_in_source",
            QualityFlag::NumbersMissing { .. } => "numbers_missing",
            QualityFlag::EntitiesMissing { .. } => "entities_missing",
            QualityFlag::LengthRatioOutOfRange { .. } => "length_ratio_out_of_range",
        }
    }

    /// A one-line explanation for people.
    pub fn message(&self) -> String {
        match self {
            QualityFlag::ScriptShareLow {
                language,
                share,
                threshold,
            } => {
                let script = Script::of_language(language).map_or("expected", Script::name);
                format!(
                    "only {:.0}% of the letters are in the {script} script expected for `{language}` (at least {:.0}% wanted); the output may be in the wrong language",
                    share * 100.0,
                    threshold * 100.0
                )
            }
            QualityFlag::MixedScriptWords { words } => format!(
                "words mixing letters of two scripts: {}; part of a word may be left untranslated",
                words.join(", ")
            ),
            QualityFlag::SentenceCountMismatch { source, output } => format!(
                "the translation has {output} sentences where the source has {source}; a sentence may be missing or added"
            ),
            QualityFlag::LoopDetected => {
                "generation stopped because the output began repeating itself".to_string()
            }
            QualityFlag::TokenLimitReached => {
                "generation hit the token limit; the output may be cut off".to_string()
            }
            QualityFlag::NumbersNotInSource { numbers } => format!(
                "numbers not found in the source: {}; check them",
                numbers.join(", ")
            ),
            QualityFlag::NumbersMissing { numbers } => format!(
                "numbers of the source missing from the translation: {}; check that none was dropped or changed",
                numbers.join(", ")
            ),
            QualityFlag::EntitiesMissing { entities } => format!(
                "names or dates of the source not found in the translation: {}; check that none was dropped or changed",
                entities.join(", ")
            ),
            QualityFlag::LengthRatioOutOfRange { ratio, min, max } => format!(
                "the output is {ratio:.3}× the length of the source; expected {min}× to {max}×"
            ),
        }
    }
}

/// The serialised shape of a flag: `code` tag, fields, message.
///
/// A quality flag as results show it: its `code`, the figures behind it and
/// a `message` for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "code", rename_all = "snake_case")]
#[schema(as = QualityFlag)]
pub(crate) enum FlagRepr<'a> {
    ScriptShareLow {
        language: &'a str,
        share: f32,
        threshold: f32,
        message: String,
    },
    MixedScriptWords {
        words: &'a [String],
        message: String,
    },
    SentenceCountMismatch {
        source: usize,
        output: usize,
        message: String,
    },
    LoopDetected {
        message: String,
    },
    TokenLimitReached {
        message: String,
    },
    NumbersNotInSource {
        numbers: &'a [String],
        message: String,
    },
    NumbersMissing {
        numbers: &'a [String],
        message: String,
    },
    EntitiesMissing {
        entities: &'a [String],
        message: String,
    },
    LengthRatioOutOfRange {
        ratio: f32,
        min: f32,
        max: f32,
        message: String,
    },
}

impl Serialize for QualityFlag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.message();
        let repr = match self {
            QualityFlag::ScriptShareLow {
                language,
                share,
                threshold,
            } => FlagRepr::ScriptShareLow {
                language,
                share: *share,
                threshold: *threshold,
                message,
            },
            QualityFlag::MixedScriptWords { words } => {
                FlagRepr::MixedScriptWords { words, message }
            }
            QualityFlag::SentenceCountMismatch { source, output } => {
                FlagRepr::SentenceCountMismatch {
                    source: *source,
                    output: *output,
                    message,
                }
            }
            QualityFlag::LoopDetected => FlagRepr::LoopDetected { message },
            QualityFlag::TokenLimitReached => FlagRepr::TokenLimitReached { message },
            QualityFlag::NumbersNotInSource { numbers } => {
                FlagRepr::NumbersNotInSource { numbers, message }
            }
            QualityFlag::NumbersMissing { numbers } => {
                FlagRepr::NumbersMissing { numbers, message }
            }
            QualityFlag::EntitiesMissing { entities } => {
                FlagRepr::EntitiesMissing { entities, message }
            }
            QualityFlag::LengthRatioOutOfRange { ratio, min, max } => {
                FlagRepr::LengthRatioOutOfRange {
                    ratio: *ratio,
                    min: *min,
                    max: *max,
                    message,
                }
            }
        };
        repr.serialize(serializer)
    }
}

/// Thresholds of the checks [`assess`] runs.
///
/// | code | fires when | default |
/// |---|---|---|
/// | `script_share_low` | fewer than `min_script_share` of the output's letters are in the target language's script (Latin for en, de, …; Cyrillic for ru, uk, …; Devanagari for hi, mr, ne); not checked for languages in other scripts or an output without letters | 0.6 |
/// | `numbers_missing` (translation) | a number of the source (normalised as above) is not among the output's | any |
/// | `length_ratio_out_of_range` (summary) | output characters / source characters outside `summary_ratio` | 0.02 – 0.6 |
/// | `length_ratio_out_of_range` (translation) | output characters / source characters outside `translation_ratio` (Russian and Hindi run longer than English) | 0.5 – 3.0 |
/// | `mixed_script_words` | a word of the output (a run of letters, digits and marks) has letters of two of the Latin, Cyrillic and Devanagari scripts, and is not a word of the source | any |
/// | `sentence_count_mismatch` (translation) | the output's and the source's sentence counts ([`sentence_count`]) differ by at least 2 and the larger is more than 1.5× the smaller | — |
/// | `numbers_not_in_source` | a number in the output (digits, normalised: `1,000` = `1 000` = `1000`, `3,5` = `3.5`, `२०२३` = `2023`) is not among the source's numbers; list numbering ("1." at a line start) is ignored | any |
/// | `loop_detected` | generation stopped on a repetition loop | — |
/// | `token_limit_reached` | generation stopped at its token limit | — |
///
/// Ranges are inclusive. Lengths are counted in Unicode characters of the
/// trimmed texts; the ratio is not checked when the source is empty.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QualityThresholds {
    /// Lowest share of letters in the expected script. Default 0.6.
    pub min_script_share: f32,
    /// Expected (min, max) of summary length / source length. Default (0.02, 0.6).
    pub summary_ratio: (f32, f32),
    /// Expected (min, max) of translation length / source length. Default (0.5, 3.0).
    pub translation_ratio: (f32, f32),
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            min_script_share: 0.6,
            summary_ratio: (0.02, 0.6),
            translation_ratio: (0.5, 3.0),
        }
    }
}

/// What kind of output is assessed; it decides the expected length ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutputKind {
    /// A summary of the source.
    Summary,
    /// A translation of the source.
    Translation,
}

/// One output and what it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QualityInput<'a> {
    /// The text the model was given (the article, or the summary it translated).
    pub source: &'a str,
    /// The model's output.
    pub output: &'a str,
    /// The language the output should be in: "en", "ru", "hi" (a region
    /// suffix such as "ru-RU" is ignored).
    pub target_language: &'a str,
    /// Summary or translation.
    pub kind: OutputKind,
    /// Generation stopped on a repetition loop.
    pub loop_detected: bool,
    /// Generation stopped at its token limit.
    pub hit_token_limit: bool,
}

/// Runs every check on one output; an empty list means nothing looked wrong.
///
/// Flags come in a fixed order: loop, token limit, script share, mixed
/// words, sentence count, numbers not in the source, numbers missing,
/// entities missing, length ratio. Never panics, whatever the input (NaN thresholds simply
/// never fire).
pub(crate) fn assess(input: &QualityInput<'_>, t: &QualityThresholds) -> Vec<QualityFlag> {
    let mut flags = Vec::new();
    if input.loop_detected {
        flags.push(QualityFlag::LoopDetected);
    }
    if input.hit_token_limit {
        flags.push(QualityFlag::TokenLimitReached);
    }
    let mut wrong_script = false;
    if let Some(share) = script_share(input.output, input.target_language) {
        if share < t.min_script_share {
            wrong_script = true;
            flags.push(QualityFlag::ScriptShareLow {
                language: primary_subtag(input.target_language),
                share: round3(share),
                threshold: t.min_script_share,
            });
        }
    }
    let words = mixed_script_words(input.source, input.output);
    if !words.is_empty() {
        flags.push(QualityFlag::MixedScriptWords { words });
    }
    if input.kind == OutputKind::Translation {
        let (source, output) = (sentence_count(input.source), sentence_count(input.output));
        let (few, many) = (source.min(output), source.max(output));
        if many - few >= 2 && many as f32 > 1.5 * few as f32 {
            flags.push(QualityFlag::SentenceCountMismatch { source, output });
        }
    }
    let missing = numbers_not_in_source(input.source, input.output);
    if !missing.is_empty() {
        flags.push(QualityFlag::NumbersNotInSource { numbers: missing });
    }
    if input.kind == OutputKind::Translation {
        // The same comparison the other way round.
        let missing = numbers_not_in_source(input.output, input.source);
        if !missing.is_empty() {
            flags.push(QualityFlag::NumbersMissing { numbers: missing });
        }
        // Only in a text in the right script: in another, everything is missing.
        let entities = match wrong_script {
            true => Vec::new(),
            false => {
                super::entities::entities_missing(input.source, input.output, input.target_language)
            }
        };
        if !entities.is_empty() {
            flags.push(QualityFlag::EntitiesMissing { entities });
        }
    }
    let source_len = input.source.trim().chars().count();
    if source_len > 0 {
        let ratio = input.output.trim().chars().count() as f32 / source_len as f32;
        let (min, max) = match input.kind {
            OutputKind::Summary => t.summary_ratio,
            OutputKind::Translation => t.translation_ratio,
        };
        if ratio < min || ratio > max {
            flags.push(QualityFlag::LengthRatioOutOfRange {
                ratio: round3(ratio),
                min,
                max,
            });
        }
    }
    flags
}

/// Share (0–1) of the letters of `text` that are in the script of `language`:
/// `en` Latin, `ru` Cyrillic, `hi` Devanagari. A letter is an alphabetic
/// character (Devanagari vowel signs count; the virama and digits do not).
///
/// `None` for another language, or when `text` has no letters.
pub(crate) fn script_share(text: &str, language: &str) -> Option<f32> {
    let script = Script::of_language(language)?;
    let (mut letters, mut in_script) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if script.contains(c) {
            in_script += 1;
        }
    }
    (letters > 0).then(|| in_script as f32 / letters as f32)
}

/// The numbers written with digits in `text`, normalised, without repeats,
/// in order of first appearance.
///
/// Normalisation: ASCII and Devanagari digits (`०`–`९`) alike; group
/// separators removed (`1,000`, `1 000` with a space or no-break space,
/// `1,00,000` in Indian grouping); the decimal separator written `.` (`3,5` →
/// `3.5`, `1.234,5` → `1234.5`); leading zeros and trailing decimal zeros
/// dropped (`05` → `5`, `2.50` → `2.5`). A lone `.` before three digits is a
/// decimal point (`1.000` → `1`), a lone `,` a group separator. Digits glued
/// to letters still count ("G20" → `20`). Signs are ignored. A run that is no
/// well-formed number (a date `10.03.2023`) gives each digit group on its own.
///
/// List numbering — a number at the start of a line followed by `.` or `)`
/// and a space, as in "1. First point" — is ignored: summaries may be
/// numbered lists.
pub fn numbers_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in number_tokens(text) {
        if !out.contains(&token.canonical) {
            out.push(token.canonical);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Scripts

/// The sentences of `text`: pieces that hold a letter, ended by `.`, `!`,
/// `?`, `…`, the Devanagari danda `।` or `॥` before a space or the end, or
/// by a line break. A `.` after a lone capital ("J. K. Rowling", "U.S.")
/// or inside a number ("3.5") ends nothing.
pub fn sentence_count(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let (mut count, mut letters) = (0, false);
    for (i, &c) in chars.iter().enumerate() {
        letters |= c.is_alphabetic();
        let next_is_break = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        let initial = c == '.'
            && i >= 1
            && chars[i - 1].is_uppercase()
            && (i < 2 || !chars[i - 2].is_alphanumeric());
        let ends = match c {
            '\n' => true,
            '.' => next_is_break && !initial,
            '!' | '?' | '…' | '।' | '॥' => next_is_break,
            _ => false,
        };
        if ends && letters {
            count += 1;
            letters = false;
        }
    }
    count + usize::from(letters)
}

/// Most words a [`QualityFlag::MixedScriptWords`] lists, so that a long
/// garbled output gives a short flag.
pub const MAX_LISTED_WORDS: usize = 20;

/// The words of `text`: maximal runs of letters, digits and the marks of
/// the scripts precis knows (a Devanagari virama joins its word), so that
/// hyphens, apostrophes and dots separate words ("IT-компания" is two).
fn words(text: &str) -> impl Iterator<Item = &str> {
    let inside = |c: char| c.is_alphanumeric() || Script::Devanagari.contains(c);
    text.split(move |c: char| !inside(c))
        .filter(|w| !w.is_empty())
}

/// The words of `output` whose letters belong to more than one of the
/// Latin, Cyrillic and Devanagari scripts, in order and without repeats,
/// leaving out words the source writes itself (a name it spells so is
/// copied, not garbled); at most [`MAX_LISTED_WORDS`].
fn mixed_script_words(source: &str, output: &str) -> Vec<String> {
    let mixed = |word: &str| {
        let used = Script::ALL
            .iter()
            .filter(|s| word.chars().any(|c| c.is_alphabetic() && s.contains(c)))
            .count();
        used > 1
    };
    let mut found: Vec<String> = Vec::new();
    let mut in_source: Option<std::collections::HashSet<&str>> = None;
    for word in words(output).filter(|w| mixed(w)) {
        if found.len() == MAX_LISTED_WORDS {
            break;
        }
        let source_words = in_source.get_or_insert_with(|| words(source).collect());
        if !source_words.contains(word) && !found.iter().any(|f| f == word) {
            found.push(word.to_string());
        }
    }
    found
}

fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------
// Numbers

/// A number found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NumberToken {
    /// The normalised number.
    canonical: String,
    /// When it was grouped with spaces ("3 200"), each group on its own: a
    /// space may as well stand between two numbers ("on March 3 200 people").
    space_parts: Vec<String>,
}

fn digit_value(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '\u{0966}'..='\u{096F}' => Some((u32::from(c) - 0x0966) as u8),
        _ => None,
    }
}

fn is_space_separator(c: char) -> bool {
    matches!(c, ' ' | '\u{00A0}' | '\u{202F}' | '\u{2009}' | '\u{2007}')
}

/// `digits` without leading zeros ("0" when all are zeros), ASCII.
fn strip_leading_zeros(digits: &str) -> String {
    let s = digits.trim_start_matches('0');
    if s.is_empty() {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn canonical(integer: &str, fraction: &str) -> String {
    let int = strip_leading_zeros(integer);
    let frac = fraction.trim_end_matches('0');
    if frac.is_empty() {
        int
    } else {
        format!("{int}.{frac}")
    }
}

/// Whether digit groups after the first, split by one separator, are proper
/// thousands groups (all of three digits), or Indian grouping (two-digit
/// groups, then a last one of three; `indian` allows it).
fn valid_grouping(groups: &[String], indian: bool) -> bool {
    let Some((first, rest)) = groups.split_first() else {
        return false;
    };
    if rest.is_empty() || first.is_empty() || first.len() > 3 {
        return false;
    }
    if rest.iter().all(|g| g.len() == 3) {
        return true;
    }
    indian
        && rest.last().is_some_and(|g| g.len() == 3)
        && rest[..rest.len() - 1].iter().all(|g| g.len() == 2)
}

/// Turns a run of digit groups and separators into numbers.
fn interpret(groups: &[String], seps: &[char]) -> Vec<NumberToken> {
    let plain = |g: &String| NumberToken {
        canonical: strip_leading_zeros(g),
        space_parts: Vec::new(),
    };
    let kind = |c: char| if is_space_separator(c) { ' ' } else { c };
    let Some((&last_sep, _)) = seps.split_last() else {
        return groups.iter().map(plain).collect();
    };
    let last_group = groups.last().map_or("", String::as_str);
    let last_kind = kind(last_sep);
    let same: bool = seps.iter().all(|&c| kind(c) == last_kind);
    let space_parts = |used_space: bool| {
        if used_space {
            groups.iter().map(|g| strip_leading_zeros(g)).collect()
        } else {
            Vec::new()
        }
    };

    // One kind of separator throughout.
    if same {
        let decimal =
            seps.len() == 1 && (last_kind == '.' || (last_kind == ',' && last_group.len() != 3));
        if decimal {
            return vec![NumberToken {
                canonical: canonical(&groups[0], last_group),
                space_parts: Vec::new(),
            }];
        }
        if valid_grouping(groups, last_kind == ',') {
            return vec![NumberToken {
                canonical: canonical(&groups.concat(), ""),
                space_parts: space_parts(last_kind == ' '),
            }];
        }
        return groups.iter().map(plain).collect();
    }

    // Two kinds: the last separator is the decimal one and occurs once.
    let decimal_once =
        seps.iter().filter(|&&c| kind(c) == last_kind).count() == 1 && last_kind != ' ';
    let head_groups = &groups[..groups.len() - 1];
    let head_seps = &seps[..seps.len() - 1];
    let head_kind = head_seps.first().map(|&c| kind(c));
    let head_same = head_seps.iter().all(|&c| Some(kind(c)) == head_kind);
    if decimal_once && head_same && valid_grouping(head_groups, head_kind == Some(',')) {
        return vec![NumberToken {
            canonical: canonical(&head_groups.concat(), last_group),
            space_parts: space_parts(head_kind == Some(' ')),
        }];
    }
    groups.iter().map(plain).collect()
}

/// Every number in `text`, in order, list numbering left out.
fn number_tokens(text: &str) -> Vec<NumberToken> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if digit_value(c).is_none() {
            if c == '\n' {
                line_start = true;
            } else if !c.is_whitespace() {
                line_start = false;
            }
            i += 1;
            continue;
        }
        let read_digits = |i: &mut usize| {
            let mut g = String::new();
            while let Some(d) = chars.get(*i).copied().and_then(digit_value) {
                g.push(char::from(b'0' + d));
                *i += 1;
            }
            g
        };
        let mut groups = vec![read_digits(&mut i)];
        let mut seps: Vec<char> = Vec::new();
        while let Some(&sep) = chars.get(i) {
            let digit_follows = chars.get(i + 1).copied().and_then(digit_value).is_some();
            if !digit_follows || !(matches!(sep, ',' | '.') || is_space_separator(sep)) {
                break;
            }
            let mut j = i + 1;
            let group = read_digits(&mut j);
            // A space joins only thousands groups after a short first group.
            if is_space_separator(sep)
                && (group.len() != 3
                    || groups.first().is_some_and(|g| g.len() > 3)
                    || seps.iter().any(|&s| !is_space_separator(s)))
            {
                break;
            }
            seps.push(sep);
            groups.push(group);
            i = j;
        }
        let list_marker = line_start
            && seps.is_empty()
            && matches!(chars.get(i), Some('.' | ')'))
            && chars.get(i + 1).is_none_or(|c| c.is_whitespace());
        if !list_marker {
            out.extend(interpret(&groups, &seps));
        }
        line_start = false;
    }
    out
}

/// Numbers of `output` that are not among those of `source`, without repeats.
fn numbers_not_in_source(source: &str, output: &str) -> Vec<String> {
    let mut known: Vec<String> = Vec::new();
    for token in number_tokens(source) {
        known.push(token.canonical);
        known.extend(token.space_parts);
    }
    let mut missing: Vec<String> = Vec::new();
    for token in number_tokens(output) {
        let found = known.contains(&token.canonical)
            || (!token.space_parts.is_empty()
                && token.space_parts.iter().all(|p| known.contains(p)));
        if !found && !missing.contains(&token.canonical) {
            missing.push(token.canonical);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reads_back_as_written() {
        let flags = [
            QualityFlag::ScriptShareLow {
                language: "ru".into(),
                share: 0.25,
                threshold: 0.6,
            },
            QualityFlag::MixedScriptWords {
                words: vec!["Lavров".into()],
            },
            QualityFlag::SentenceCountMismatch {
                source: 4,
                output: 2,
            },
            QualityFlag::LoopDetected,
            QualityFlag::TokenLimitReached,
            QualityFlag::NumbersNotInSource {
                numbers: vec!["410".into()],
            },
            QualityFlag::NumbersMissing {
                numbers: vec!["2023".into()],
            },
            QualityFlag::LengthRatioOutOfRange {
                ratio: 3.5,
                min: 0.5,
                max: 3.0,
            },
        ];
        for flag in flags {
            let json = serde_json::to_value(&flag).unwrap();
            assert!(json["message"].is_string());
            let back: QualityFlag = serde_json::from_value(json).unwrap();
            assert_eq!(back, flag);
        }
    }
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../../../../examples/sample-article.txt");

    fn input<'a>(
        source: &'a str,
        output: &'a str,
        language: &'a str,
        kind: OutputKind,
    ) -> QualityInput<'a> {
        QualityInput {
            source,
            output,
            target_language: language,
            kind,
            loop_detected: false,
            hit_token_limit: false,
        }
    }

    fn codes(flags: &[QualityFlag]) -> Vec<&'static str> {
        flags.iter().map(QualityFlag::code).collect()
    }

    const SOURCE: &str = "Ministers agreed on Tuesday to release 410 cubic metres per second \
        from June 1, up from 260 last year. The fund starts at $120 million and 1,870 km of river \
        serve 23 million people; growth was 3.5 percent in 2023, the G20 said.";

    #[test]
    fn clean_outputs_raise_no_flags() {
        let t = QualityThresholds::default();
        let summary = "Ministers agreed to release 410 cubic metres per second from June 1.";
        assert!(assess(&input(SOURCE, summary, "en", OutputKind::Summary), &t).is_empty());
        let ru = "Министры договорились во вторник выпускать 410 кубометров в секунду с 1 июня \
            вместо 260 в прошлом году. Фонд начнётся со 120 млн долларов, а 1 870 км реки \
            обслуживают 23 млн человек; рост составил 3,5 процента в 2023 году, сообщила G20.";
        assert_eq!(
            codes(&assess(
                &input(SOURCE, ru, "ru", OutputKind::Translation),
                &t
            )),
            Vec::<&str>::new()
        );
        let hi = "मंत्रियों ने मंगलवार को 1 जून से प्रति सेकंड ४१० घन मीटर पानी छोड़ने पर सहमति जताई, \
            जो पिछले साल के 260 से अधिक है। कोष 120 मिलियन डॉलर से शुरू होगा और 1,870 किमी लंबी नदी \
            23 मिलियन लोगों की सेवा करती है; G20 ने कहा कि 2023 में वृद्धि 3.5 प्रतिशत थी।";
        assert!(assess(&input(SOURCE, hi, "hi", OutputKind::Translation), &t).is_empty());
    }

    #[test]
    fn words_mixing_scripts_are_listed_once_unless_the_source_has_them() {
        let t = QualityThresholds::default();
        let source = "Lavrov met Modi in Delhi; the iPhone maker and IT firms, says Pаul.";
        let ru = "Lavров встретился с Modi в Дели; downstreamстраны и IT-компании, \
            Lavров, iPhone'ом и Pаul.";
        let flags = assess(&input(source, ru, "ru", OutputKind::Translation), &t);
        assert!(
            flags.contains(&QualityFlag::MixedScriptWords {
                words: vec!["Lavров".into(), "downstreamстраны".into()],
            }),
            "{flags:?}"
        );
        // Devanagari glued to Latin, virama and vowel signs inside the word.
        let hi = "प्रधानमंत्री Modi ने Delhiमें कहा";
        assert_eq!(
            mixed_script_words("Prime Minister Modi said in Delhi", hi),
            ["Delhiमें"]
        );
        // Clean text in any script, digits glued to letters, other scripts.
        for clean in [
            "Министры G20 договорились; COVID-19 и 5G.",
            "प्रधानमंत्री मोदी ने २०२३ में कहा",
            "Ελλάδα и Athens",
        ] {
            assert!(mixed_script_words("", clean).is_empty(), "{clean}");
        }
        // A long garbled output lists at most MAX_LISTED_WORDS words.
        let garbled: String = (0..100).map(|i| format!("wоrd{i} ")).collect();
        assert_eq!(mixed_script_words("", &garbled).len(), MAX_LISTED_WORDS);
    }

    #[test]
    fn sentences_are_counted_past_initials_numbers_and_dandas() {
        assert_eq!(sentence_count(""), 0);
        assert_eq!(sentence_count("No end mark"), 1);
        assert_eq!(
            sentence_count("J. K. Rowling met U.S. officials. Growth was 3.5 percent!"),
            2
        );
        assert_eq!(sentence_count("Why? Because. \"Quoted.\" 42."), 3);
        assert_eq!(sentence_count("मोदी ने कहा। वृद्धि ३.५ प्रतिशत थी॥ अंत"), 3);
        assert_eq!(sentence_count("Heading\n\nFirst. Second."), 3);
        assert_eq!(sentence_count("... !!! ?"), 0);
    }

    #[test]
    fn translations_far_from_the_source_s_sentence_count_are_flagged() {
        let t = QualityThresholds::default();
        let source = "One. Two. Three. Four.";
        let flagged = |output: &str, kind| {
            assess(&input(source, output, "en", kind), &t)
                .into_iter()
                .find(|f| f.code() == "sentence_count_mismatch")
        };
        let two = "One and two, all of it. Three and four, the rest of it.";
        assert_eq!(
            flagged(two, OutputKind::Translation),
            Some(QualityFlag::SentenceCountMismatch {
                source: 4,
                output: 2
            })
        );
        // One sentence more or less, or a summary, is not flagged.
        assert_eq!(
            flagged("One. Two. Three and four.", OutputKind::Translation),
            None
        );
        assert_eq!(
            flagged("One. Two. Three. Four. Five.", OutputKind::Translation),
            None
        );
        assert_eq!(flagged(two, OutputKind::Summary), None);
        // A single sentence that comes back as three.
        let one = assess(
            &input(
                "A sentence.",
                "Here it is. A sentence. Hope it helps!",
                "en",
                OutputKind::Translation,
            ),
            &t,
        );
        assert!(codes(&one).contains(&"sentence_count_mismatch"), "{one:?}");
    }

    #[test]
    fn numbers_a_translation_drops_are_flagged_and_a_summary_s_are_not() {
        let t = QualityThresholds::default();
        let ru = "Министры договорились выпускать 410 кубометров в секунду с 1 июня; \
            фонд начнётся со 120 млн долларов, а 1 870 км реки обслуживают 23 млн человек; \
            рост составил 3,5 процента в 2023 году, сообщила G20.";
        let flags = assess(&input(SOURCE, ru, "ru", OutputKind::Translation), &t);
        // "260 last year" was dropped; every other number is there, in
        // another notation.
        assert!(
            flags.contains(&QualityFlag::NumbersMissing {
                numbers: vec!["260".into()]
            }),
            "{flags:?}"
        );
        let summary = "Ministers agreed to release more water.";
        let flags = assess(&input(SOURCE, summary, "en", OutputKind::Summary), &t);
        assert!(!codes(&flags).contains(&"numbers_missing"), "{flags:?}");
    }

    #[test]
    fn script_share_low() {
        let t = QualityThresholds::default();
        let english = "Ministers agreed on Tuesday to share the river water.";
        let flags = assess(&input(english, english, "hi", OutputKind::Translation), &t);
        assert_eq!(
            flags,
            vec![QualityFlag::ScriptShareLow {
                language: "hi".into(),
                share: 0.0,
                threshold: 0.6
            }]
        );
        // Russian with a few Latin names passes; mostly Latin fails.
        let mostly_ru = "Министр Tomasz Ardel заявил во вторник, что соглашение выполнено.";
        assert!(assess(
            &input(english, mostly_ru, "ru-RU", OutputKind::Translation),
            &t
        )
        .is_empty());
        let mostly_en = "Minister Tomasz Ardel said that the deal is done, заявил он.";
        assert_eq!(
            codes(&assess(
                &input(english, mostly_en, "ru", OutputKind::Translation),
                &t
            )),
            vec!["script_share_low"]
        );
        // Unknown languages and letterless outputs are not judged.
        assert!(assess(&input("12", "12", "de", OutputKind::Translation), &t).is_empty());
        assert!(assess(&input("12", "12", "hi", OutputKind::Translation), &t).is_empty());
    }

    #[test]
    fn script_share_values() {
        assert_eq!(script_share("abc", "en"), Some(1.0));
        assert_eq!(script_share("абв abc", "ru"), Some(0.5));
        assert_eq!(script_share("नमस्ते", "hi"), Some(1.0));
        assert_eq!(script_share("Ünïcödé", "EN"), Some(1.0));
        assert_eq!(script_share("123 !!", "en"), None);
        assert_eq!(script_share("abc", "fr"), Some(1.0));
        assert_eq!(script_share("абв", "uk"), Some(1.0));
        assert_eq!(
            script_share("abc", "ar"),
            None,
            "a script precis does not know"
        );
        assert_eq!(script_share("", "ru"), None);
    }

    #[test]
    fn loop_and_token_limit() {
        let t = QualityThresholds::default();
        let mut i = input(
            "A source text here.",
            "A source text here.",
            "en",
            OutputKind::Translation,
        );
        assert!(assess(&i, &t).is_empty());
        i.loop_detected = true;
        i.hit_token_limit = true;
        assert_eq!(
            codes(&assess(&i, &t)),
            vec!["loop_detected", "token_limit_reached"]
        );
    }

    #[test]
    fn numbers_not_in_source() {
        let t = QualityThresholds::default();
        let summary =
            "Ministers agreed to release 450 cubic metres per second from June 1 in 2024.";
        let flags = assess(&input(SOURCE, summary, "en", OutputKind::Summary), &t);
        assert_eq!(
            flags,
            vec![QualityFlag::NumbersNotInSource {
                numbers: vec!["450".into(), "2024".into()]
            }]
        );
        // G20 in the source covers "20" and "G20" in the output.
        let ok = "The G20 met; 20 ministers came.";
        assert!(assess(
            &input("The G20 met.", ok, "en", OutputKind::Translation),
            &t
        )
        .is_empty());
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(
            numbers_in("1,000 and 1 000 and 1\u{a0}000 and 1000"),
            vec!["1000"]
        );
        assert_eq!(numbers_in("3.5 or 3,5 or 3.50"), vec!["3.5"]);
        assert_eq!(numbers_in("१,२३४.५ and २०२३"), vec!["1234.5", "2023"]);
        assert_eq!(numbers_in("1,00,000 rupees"), vec!["100000"]);
        assert_eq!(
            numbers_in("1,234,567.89 and 1.234.567,89 and 1 234 567,89"),
            vec!["1234567.89"]
        );
        assert_eq!(
            numbers_in("G20, COVID-19, 05, -7"),
            vec!["20", "19", "5", "7"]
        );
        assert_eq!(numbers_in("on 10.03.2023"), vec!["10", "3", "2023"]);
        assert_eq!(numbers_in("in 2023 100 people"), vec!["2023", "100"]);
        assert_eq!(numbers_in("It ended in 2023."), vec!["2023"]);
        assert_eq!(numbers_in("1.000 tonnes"), vec!["1"]);
        assert_eq!(numbers_in("12,50 руб"), vec!["12.5"]);
        assert_eq!(numbers_in("no digits"), Vec::<String>::new());
    }

    #[test]
    fn list_numbering_is_ignored() {
        assert_eq!(numbers_in("1. Talks\n2) Deal 410\n  3. Fund"), vec!["410"]);
        assert_eq!(numbers_in("2023. That year"), Vec::<String>::new());
        assert_eq!(numbers_in("It rose 3. Then"), vec!["3"]);
        assert_eq!(numbers_in("1.5 percent"), vec!["1.5"]);
    }

    #[test]
    fn space_grouping_does_not_invent_numbers() {
        let t = QualityThresholds::default();
        // "3 200" may be read as 3200, but 3 and 200 are both in the source.
        let i = input(
            "On March 3, 200 people came.",
            "3 200 people came on March 3.",
            "en",
            OutputKind::Translation,
        );
        assert!(assess(&i, &t).is_empty());
        // And the other way round.
        let i = input(
            "Some 20 000 troops.",
            "Some 20,000 troops.",
            "en",
            OutputKind::Translation,
        );
        assert!(assess(&i, &t).is_empty());
    }

    #[test]
    fn length_ratio() {
        let t = QualityThresholds::default();
        let body = SAMPLE;
        // A one-word summary of a long article is too short; a copy too long.
        let flags = assess(&input(body, "Water.", "en", OutputKind::Summary), &t);
        assert_eq!(codes(&flags), vec!["length_ratio_out_of_range"]);
        let flags = assess(&input(body, body, "en", OutputKind::Summary), &t);
        assert_eq!(
            flags,
            vec![QualityFlag::LengthRatioOutOfRange {
                ratio: 1.0,
                min: 0.02,
                max: 0.6
            }]
        );
        // The same copy is a fine length for a translation.
        assert!(assess(&input(body, body, "en", OutputKind::Translation), &t).is_empty());
        let long = "word ".repeat(40);
        let flags = assess(&input("A word.", &long, "en", OutputKind::Translation), &t);
        assert_eq!(codes(&flags), vec!["length_ratio_out_of_range"]);
        let flags = assess(&input(&long, "A", "en", OutputKind::Translation), &t);
        assert_eq!(codes(&flags), vec!["length_ratio_out_of_range"]);
        // An empty source is not judged.
        assert!(assess(&input("  ", "Anything", "en", OutputKind::Summary), &t).is_empty());
    }

    #[test]
    fn serialises_with_code_fields_and_message() {
        let flag = QualityFlag::ScriptShareLow {
            language: "hi".into(),
            share: 0.25,
            threshold: 0.6,
        };
        let v = serde_json::to_value(&flag).unwrap_or_default();
        assert_eq!(v["code"], "script_share_low");
        assert_eq!(v["language"], "hi");
        assert_eq!(v["share"], 0.25);
        assert_eq!(v["message"], flag.message());
        assert!(flag.message().contains("25%") && flag.message().contains("Devanagari"));
        let v = serde_json::to_value(QualityFlag::LoopDetected).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"code": "loop_detected", "message": QualityFlag::LoopDetected.message()})
        );
        let flag = QualityFlag::NumbersNotInSource {
            numbers: vec!["450".into()],
        };
        let v = serde_json::to_value(&flag).unwrap_or_default();
        assert_eq!(v["numbers"], serde_json::json!(["450"]));
        let flag = QualityFlag::LengthRatioOutOfRange {
            ratio: 0.011,
            min: 0.02,
            max: 0.6,
        };
        let v = serde_json::to_value(&flag).unwrap_or_default();
        assert_eq!(v["code"], "length_ratio_out_of_range");
        assert_eq!(v["min"], serde_json::json!(0.02_f32));
        assert_eq!(
            serde_json::to_value(QualityFlag::TokenLimitReached).unwrap_or_default()["code"],
            "token_limit_reached"
        );
    }

    #[test]
    fn thresholds_default_and_deserialise() {
        let t = QualityThresholds::default();
        assert_eq!(t.min_script_share, 0.6);
        assert_eq!(t.summary_ratio, (0.02, 0.6));
        assert_eq!(t.translation_ratio, (0.5, 3.0));
        let parsed: QualityThresholds =
            serde_json::from_str(r#"{"min_script_share": 0.8}"#).unwrap_or_default();
        assert_eq!(parsed.min_script_share, 0.8);
        assert_eq!(parsed.summary_ratio, (0.02, 0.6));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn assess_never_panics(
            source in any::<String>(),
            output in prop_oneof![any::<String>(), "[0-9०-९ .,\u{a0}\n)a-zа-я]{0,40}"],
            language in prop_oneof![Just("en".to_string()), Just("ru".to_string()), Just("hi".to_string()), any::<String>()],
            translation in any::<bool>(),
            loop_detected in any::<bool>(),
            hit_token_limit in any::<bool>(),
            min_script_share in any::<f32>(),
        ) {
            let kind = if translation { OutputKind::Translation } else { OutputKind::Summary };
            let i = QualityInput { source: &source, output: &output, target_language: &language, kind, loop_detected, hit_token_limit };
            let t = QualityThresholds { min_script_share, ..QualityThresholds::default() };
            let flags = assess(&i, &t);
            for f in &flags {
                prop_assert!(!f.message().is_empty());
                prop_assert!(serde_json::to_string(f).is_ok());
            }
            // Every output's numbers are in the output itself.
            let own = assess(&QualityInput { source: &output, ..i }, &t);
            let invented = own
                .iter()
                .any(|f| matches!(f, QualityFlag::NumbersNotInSource { .. }));
            prop_assert!(!invented);
            if let Some(s) = script_share(&output, &language) {
                prop_assert!((0.0..=1.0).contains(&s));
            }
        }
    }
}
