//! Clean-up of an article before a model sees it.
//!
//! Articles arrive copied out of web pages. Besides the story they carry a
//! photo credit where a picture stood ("Pool photo by …"), the contributor
//! line that belongs with the byline ("… contributed reporting."), the
//! comment form under the page ("Leave a Reply … Required fields are marked
//! *") and stray tabs, non-breaking and zero-width spaces. A model given
//! these spends tokens on them and, worse, summarises or translates them as
//! if they were news. So this module:
//!
//! - always normalises whitespace (see [`prepare`] for the exact rules);
//! - separates the headline from the body, so prompts can present it as a
//!   title;
//! - drops *clear* non-story paragraphs, and only those: a paragraph is
//!   dropped when it is short and matches a strong pattern as a whole. A
//!   story paragraph that merely mentions a photographer or says someone
//!   "contributed" is kept. Every dropped paragraph is reported with its
//!   position and reason, so nothing disappears silently.
//!
//! It also holds the sentence splitter ([`split_sentences`]) the translation
//! task uses to cut a paragraph that is too long for one model call.

use serde::{Deserialize, Serialize};

/// How [`prepare`] treats the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanOptions {
    /// Drop non-story paragraphs (photo credits, contributor lines, comment
    /// forms, share/subscribe boilerplate, advertisement markers).
    ///
    /// `false` (`--no-clean`, `"clean": false`) drops nothing. Whitespace is
    /// normalised and the headline is separated either way: both change only
    /// the layout, never which words the model sees.
    pub enabled: bool,
}

impl Default for CleanOptions {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// An article after clean-up: what the tasks work on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreparedArticle {
    /// The headline: the given title, or the one found at the top of the text
    /// (see [`prepare`]). Whitespace-normalised.
    pub headline: Option<String>,
    /// Body paragraphs kept, in order. None is empty or contains a line break.
    pub paragraphs: Vec<String>,
    /// Body paragraphs dropped as non-story text, in input order.
    pub dropped: Vec<DroppedParagraph>,
    /// Body paragraphs in the input (the headline not counted):
    /// `paragraphs.len() + dropped.len()`.
    pub paragraphs_in: usize,
}

impl PreparedArticle {
    /// The kept paragraphs joined by blank lines.
    pub fn body(&self) -> String {
        self.paragraphs.join("\n\n")
    }

    /// The headline (when there is one) and the kept paragraphs, in the input
    /// format: blocks separated by blank lines.
    ///
    /// When the article was prepared without a given title, preparing this
    /// text again gives the same headline and paragraphs and drops nothing.
    pub fn to_text(&self) -> String {
        let mut blocks: Vec<&str> = Vec::with_capacity(self.paragraphs.len() + 1);
        if let Some(h) = &self.headline {
            blocks.push(h);
        }
        blocks.extend(self.paragraphs.iter().map(String::as_str));
        blocks.join("\n\n")
    }
}

/// A paragraph that clean-up removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DroppedParagraph {
    /// 0-based position among the input's body paragraphs, the headline not
    /// counted (so `index < paragraphs_in`). With the headline on the first
    /// line, the first paragraph after it is index 0.
    pub index: usize,
    /// Why it was dropped.
    pub reason: DropReason,
    /// The paragraph, whitespace-normalised.
    pub text: String,
}

/// Why a paragraph is not story text.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// A picture's credit left where the picture stood: "Pool photo by …",
    /// "Photo: …", "(Photo by … / Getty Images)", "Credit: …".
    PhotoCredit,
    /// "… contributed reporting.", "Reporting by …": byline material.
    ContributorLine,
    /// The comment form under the page: "Leave a Reply", "Your email address
    /// will not be published. Required fields are marked *", "Post Comment".
    CommentForm,
    /// "Share this article", "Sign up for our newsletter" and the like.
    ShareBoilerplate,
    /// A bare "Advertisement" marker where an advert stood.
    AdvertisementMarker,
}

impl DropReason {
    /// A short human description, for logs and reports.
    pub fn description(self) -> &'static str {
        match self {
            DropReason::PhotoCredit => "photo credit",
            DropReason::ContributorLine => "contributor line",
            DropReason::CommentForm => "comment form",
            DropReason::ShareBoilerplate => "share or subscribe boilerplate",
            DropReason::AdvertisementMarker => "advertisement marker",
        }
    }
}

/// Cleans `text` for the model. Never panics, whatever the input.
///
/// **Whitespace** (always): CRLF and CR become LF; U+2028 is a line break and
/// U+2029 a paragraph break; tabs, NBSP and every other Unicode space become a
/// space, and runs of spaces one space; each line is trimmed. Zero-width
/// spaces, word joiners, byte-order marks, soft hyphens and LRM/RLM marks are
/// removed, as are control characters. ZWJ and ZWNJ are *kept*: in
/// Devanagari they choose between a conjunct and a half form, so removing
/// them would change Hindi text. A paragraph is the text between blank lines;
/// its lines are joined with a space, and any number of blank lines is one
/// break.
///
/// **Non-story paragraphs** (only with `opts.enabled`): dropped wherever they
/// stand, each listed in [`PreparedArticle::dropped`] with its reason; see
/// [`DropReason`]. Only short paragraphs that match a pattern as a whole are
/// dropped.
///
/// **Headline**, when no `title` is given: the first paragraph that clean-up
/// keeps is the headline when it looks like one — at most 200 characters,
/// with at least one letter, not ending like a sentence or a dateline (`.`,
/// `,`, `;`, `:`, `।`, a dash), and followed by at least one more kept
/// paragraph. Text without a blank line is one paragraph and so is never
/// split; a headline wrapped over two lines is joined like any paragraph.
/// Deciding on the cleaned paragraphs makes `prepare` idempotent on
/// [`PreparedArticle::to_text`].
///
/// **Given `title`**: it is the headline (whitespace-normalised; a blank title
/// counts as none). When the first kept paragraph equals it (ignoring case)
/// and another kept paragraph follows, that paragraph is removed as the
/// repeated headline; otherwise the text is kept whole.
pub fn prepare(text: &str, title: Option<&str>, opts: &CleanOptions) -> PreparedArticle {
    let blocks = paragraphs(text);
    let reasons: Vec<Option<DropReason>> = blocks
        .iter()
        .map(|p| if opts.enabled { classify(p) } else { None })
        .collect();
    let kept: Vec<usize> = (0..blocks.len())
        .filter(|&i| reasons[i].is_none())
        .collect();
    let first_kept = kept.first().copied();
    let more_kept = kept.len() >= 2;

    let given = title.map(normalise_inline).filter(|t| !t.is_empty());
    let (headline, headline_at) = match given {
        Some(t) => {
            let at =
                first_kept.filter(|&i| more_kept && blocks[i].to_lowercase() == t.to_lowercase());
            (Some(t), at)
        }
        None => match first_kept {
            Some(i) if more_kept && looks_like_headline(&blocks[i]) => {
                (Some(blocks[i].clone()), Some(i))
            }
            _ => (None, None),
        },
    };

    let mut out = PreparedArticle {
        headline,
        paragraphs: Vec::new(),
        dropped: Vec::new(),
        paragraphs_in: 0,
    };
    for (i, (block, reason)) in blocks.into_iter().zip(reasons).enumerate() {
        if Some(i) == headline_at {
            continue;
        }
        let index = out.paragraphs_in;
        out.paragraphs_in += 1;
        match reason {
            Some(reason) => out.dropped.push(DroppedParagraph {
                index,
                reason,
                text: block,
            }),
            None => out.paragraphs.push(block),
        }
    }
    out
}

/// Splits text into sentences, conservatively: when in doubt, it does not
/// split. Works for English, Russian and Hindi.
///
/// A sentence ends at a token ending in `.`, `?`, `!`, `।` or `॥` (closing
/// quotes and brackets after it allowed) that is followed by whitespace or the
/// end of the text, unless the next word starts with a lowercase letter, or
/// the token is an abbreviation ("Mr.", "Dr.", "St.", "г.", "млн."), an
/// initial ("J.", "В."), a dotted abbreviation ("U.S.", "e.g.", "т.е."), or a
/// list number at the start of a sentence ("1."). Since splits happen only at
/// whitespace, decimals ("3.5") and domain names are never split. "…" does
/// not end a sentence.
///
/// Whitespace is normalised: the sentences joined by single spaces equal the
/// input's words joined by single spaces. No sentence is empty.
pub fn split_sentences(text: &str) -> Vec<String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for (i, &token) in tokens.iter().enumerate() {
        current.push(token);
        if ends_sentence(token, current.len(), tokens.get(i + 1).copied()) {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

// ---------------------------------------------------------------------------
// Whitespace

/// Invisible characters removed outright (ZWJ U+200D and ZWNJ U+200C are not
/// here on purpose: Devanagari needs them).
fn is_removed_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' | '\u{200E}' | '\u{200F}' | '\u{180E}'
    )
}

/// Normalises characters: line breaks to `\n`, other spaces to ` `,
/// invisible and control characters removed.
fn normalise_chars(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    s.push('\n');
                }
            }
            '\n' | '\u{2028}' => s.push('\n'),
            '\u{2029}' => s.push_str("\n\n"),
            c if c.is_whitespace() => s.push(' '),
            c if is_removed_invisible(c) || c.is_control() => {}
            c => s.push(c),
        }
    }
    s
}

/// One line's worth of text: normalised, all breaks become spaces.
fn normalise_inline(text: &str) -> String {
    normalise_chars(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Normalised paragraphs: blocks of non-blank lines, each joined by spaces.
fn paragraphs(text: &str) -> Vec<String> {
    let normalised = normalise_chars(text);
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in normalised.split('\n') {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            if !current.is_empty() {
                out.push(current.join(" "));
                current.clear();
            }
        } else {
            current.extend(words);
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

// ---------------------------------------------------------------------------
// Headline

/// Longest headline taken from the text, in characters.
const MAX_HEADLINE_CHARS: usize = 200;

fn looks_like_headline(p: &str) -> bool {
    if p.chars().count() > MAX_HEADLINE_CHARS || !p.chars().any(char::is_alphabetic) {
        return false;
    }
    let core = p.trim_end_matches(is_closing);
    !matches!(
        core.chars().next_back(),
        None | Some('.' | ',' | ';' | ':' | '।' | '-' | '–' | '—')
    )
}

// ---------------------------------------------------------------------------
// Non-story paragraphs

/// Longest photo credit, in characters.
const MAX_CREDIT_CHARS: usize = 150;
/// Longest contributor line, in characters.
const MAX_CONTRIBUTOR_CHARS: usize = 250;
/// Longest comment-form or share paragraph, in characters.
const MAX_FORM_CHARS: usize = 400;
/// Most words in the name part of a credit or contributor line.
const MAX_NAME_WORDS: usize = 16;

fn classify(p: &str) -> Option<DropReason> {
    let len = p.chars().count();
    if len <= MAX_FORM_CHARS && is_comment_form(p) {
        return Some(DropReason::CommentForm);
    }
    if len <= MAX_FORM_CHARS && is_share_boilerplate(p) {
        return Some(DropReason::ShareBoilerplate);
    }
    if is_advertisement_marker(p) {
        return Some(DropReason::AdvertisementMarker);
    }
    if len <= MAX_CONTRIBUTOR_CHARS && is_contributor_line(p) {
        return Some(DropReason::ContributorLine);
    }
    if len <= MAX_CREDIT_CHARS && is_photo_credit(p) {
        return Some(DropReason::PhotoCredit);
    }
    None
}

/// Lowercase words allowed inside a name part ("Jane Doe for The New York
/// Times", "Ana de la Cruz in Kyiv; Editing by John Roe").
const NAME_CONNECTORS: &[&str] = &[
    "and", "&", "for", "of", "the", "via", "by", "in", "from", "at", "with", "de", "del", "della",
    "der", "den", "van", "von", "da", "das", "dos", "du", "la", "le", "el", "al", "bin", "ibn",
    "y", "e", "staff", "pool",
];

/// Whether `s` reads as a list of names, places or agencies: every word is
/// capitalised (or in a script without case) or a connector.
fn is_name_like(s: &str) -> bool {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.is_empty() || words.len() > MAX_NAME_WORDS || !s.chars().any(char::is_alphabetic) {
        return false;
    }
    words.iter().all(|w| {
        let w = w.trim_matches(|c: char| !c.is_alphanumeric());
        match w.chars().find(|c| c.is_alphabetic()) {
            None => true,
            Some(c) if !c.is_lowercase() => true,
            Some(_) => NAME_CONNECTORS.contains(&w.to_lowercase().as_str()),
        }
    })
}

/// `p` without a `prefix` compared ignoring ASCII case; `None` when it does not
/// start with it. Prefixes are ASCII, so the cut is at a char boundary.
fn strip_prefix_ci<'a>(p: &'a str, prefix: &str) -> Option<&'a str> {
    let head = p.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        p.get(prefix.len()..)
    } else {
        None
    }
}

fn ends_with_ci(p: &str, suffix: &str) -> bool {
    p.len() >= suffix.len()
        && p.get(p.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

const CREDIT_PREFIXES: &[&str] = &[
    "pool photo by ",
    "pool photograph by ",
    "pool photo: ",
    "photo illustration by ",
    "photo courtesy of ",
    "photos courtesy of ",
    "image courtesy of ",
    "courtesy of ",
    "photo credit: ",
    "image credit: ",
    "photographs by ",
    "photograph by ",
    "photograph: ",
    "photography by ",
    "photos by ",
    "photo by ",
    "photos: ",
    "photo: ",
    "images by ",
    "image by ",
    "images: ",
    "image: ",
    "pictures by ",
    "picture by ",
    "picture: ",
    "illustration by ",
    "illustration: ",
    "video by ",
    "credits: ",
    "credit: ",
    "credit...",
    "credit…",
];

/// Agencies that end a bare "Name/Agency" credit.
const AGENCIES: &[&str] = &[
    "getty images",
    "reuters",
    "associated press",
    "ap",
    "afp",
    "epa",
    "epa-efe",
    "shutterstock",
    "bloomberg",
    "alamy",
    "anadolu",
    "tass",
    "xinhua",
    "pti",
    "ani",
    "pool",
    "the new york times",
    "the washington post",
];

fn is_photo_credit(p: &str) -> bool {
    let mut s = p.trim();
    if let Some(inner) = s
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .or_else(|| s.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
    {
        s = inner.trim();
    }
    let s = s.strip_suffix('.').unwrap_or(s).trim();
    for prefix in CREDIT_PREFIXES {
        if let Some(rest) = strip_prefix_ci(s, prefix) {
            return is_name_like(rest);
        }
    }
    // "Jane Doe/Getty Images", "Jane Doe/AFP via Getty Images".
    if let Some((_, agency)) = s.rsplit_once('/') {
        let agency = agency.trim();
        let known = AGENCIES.iter().any(|a| {
            agency.eq_ignore_ascii_case(a)
                || (ends_with_ci(agency, a)
                    && agency
                        .get(..agency.len() - a.len())
                        .is_some_and(|head| head.ends_with(' ')))
        });
        return known && s.chars().count() <= 100 && is_name_like(s);
    }
    false
}

/// What may follow "contributed" in a contributor line.
const CONTRIBUTED_WHAT: &[&str] = &[
    "additional reporting and research",
    "reporting and research",
    "research and reporting",
    "additional reporting",
    "additional research",
    "to this report",
    "to this article",
    "to this story",
    "reporting",
    "research",
];

const REPORTING_BY: &[&str] = &[
    "additional reporting by ",
    "reporting was contributed by ",
    "with reporting by ",
    "reporting by ",
    "research by ",
];

fn is_contributor_line(p: &str) -> bool {
    let s = p.trim();
    let s = s.strip_suffix('.').unwrap_or(s).trim_end();
    for prefix in REPORTING_BY {
        if let Some(rest) = strip_prefix_ci(s, prefix) {
            return is_name_like(rest);
        }
    }
    let lower = s.to_ascii_lowercase(); // same byte offsets as `s`
    let Some(at) = lower.find(" contributed ") else {
        return false;
    };
    let (names, after) = (&s[..at], &lower[at + " contributed ".len()..]);
    if !is_name_like(names) {
        return false;
    }
    CONTRIBUTED_WHAT
        .iter()
        .any(|what| match after.strip_prefix(what) {
            Some("") => true,
            Some(rest) => {
                let place = rest
                    .strip_prefix(" from ")
                    .or_else(|| rest.strip_prefix(" in "));
                // `rest` is a lowercased tail: check capitals on the original.
                place.is_some_and(|place| s.get(s.len() - place.len()..).is_some_and(is_name_like))
            }
            None => false,
        })
}

/// Whether `p`, lowercased, consists only of `strong` phrases (at least one)
/// and `weak` words.
fn consists_of(p: &str, strong: &[&str], weak: &[&str]) -> bool {
    let mut rest = p.to_lowercase();
    let mut found = false;
    for phrase in strong {
        if rest.contains(phrase) {
            found = true;
            rest = rest.replace(phrase, " ");
        }
    }
    found
        && rest
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .all(|w| weak.contains(&w))
}

/// Phrases of a comment form, longest first so that none eats part of another.
const COMMENT_PHRASES: &[&str] = &[
    "save my name, email, and website in this browser for the next time i comment",
    "save my name and email in this browser for the next time i comment",
    "learn how your comment data is processed",
    "this site uses akismet to reduce spam",
    "you must be logged in to post a comment",
    "your email address will not be published",
    "notify me of follow-up comments by email",
    "notify me of new posts by email",
    "required fields are marked",
    "comments are closed",
    "leave a comment",
    "leave a reply",
    "cancel reply",
    "post comment",
    "add a comment",
];

const COMMENT_WORDS: &[&str] = &[
    "comment", "comments", "name", "email", "e", "mail", "website", "url", "required", "reply",
    "cancel", "post", "submit", "optional",
];

fn is_comment_form(p: &str) -> bool {
    consists_of(p, COMMENT_PHRASES, COMMENT_WORDS)
}

const SHARE_PHRASES: &[&str] = &[
    "sign up for our newsletters",
    "subscribe to our newsletters",
    "sign up for our newsletter",
    "subscribe to our newsletter",
    "share full article",
    "share this article",
    "share this story",
    "share this page",
    "share this post",
    "share on facebook",
    "share on twitter",
    "share on whatsapp",
    "share on linkedin",
    "share on telegram",
    "share via email",
];

const SHARE_WORDS: &[&str] = &[
    "share",
    "facebook",
    "twitter",
    "x",
    "whatsapp",
    "linkedin",
    "telegram",
    "reddit",
    "email",
    "print",
    "copy",
    "link",
    "on",
    "via",
    "subscribe",
    "sign",
    "up",
    "here",
    "now",
    "free",
];

fn is_share_boilerplate(p: &str) -> bool {
    consists_of(p, SHARE_PHRASES, SHARE_WORDS)
}

const ADVERTISEMENT_MARKERS: &[&str] = &[
    "advertisement",
    "skip advertisement",
    "continue reading the main story",
    "story continues below advertisement",
    "article continues below advertisement",
];

fn is_advertisement_marker(p: &str) -> bool {
    let core = p.trim_matches(|c: char| !c.is_alphanumeric());
    ADVERTISEMENT_MARKERS
        .iter()
        .any(|m| core.eq_ignore_ascii_case(m))
}

// ---------------------------------------------------------------------------
// Sentences

/// Closing quotes and brackets that may follow a sentence's final mark.
fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | '»' | ')' | ']' | '}' | '›')
}

/// Opening quotes and brackets that may precede a word.
fn is_opening(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '“' | '‘' | '„' | '«' | '(' | '[' | '{' | '‹'
    )
}

/// English words that take a dot and rarely end a sentence (compared
/// lowercase, without the dot): titles, ranks, months, "etc", "vs".
const ABBREVIATIONS_EN: &[&str] = &[
    "mr", "mrs", "ms", "messrs", "mme", "dr", "prof", "sr", "jr", "st", "mt", "ft", "gen", "lt",
    "col", "maj", "capt", "cmdr", "sgt", "cpl", "adm", "gov", "sen", "rep", "rev", "hon", "pres",
    "supt", "amb", "atty", "vs", "etc", "al", "cf", "no", "nos", "vol", "fig", "figs", "approx",
    "est", "dept", "univ", "assn", "bros", "inc", "ltd", "co", "corp", "plc", "ave", "blvd", "rd",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon",
    "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun",
];

/// Russian abbreviations (single letters such as "г." are initials already).
const ABBREVIATIONS_RU: &[&str] = &[
    "гг", "гор", "ул", "им", "тыс", "млн", "млрд", "руб", "коп", "др", "пр", "см", "стр", "рис",
    "ок", "проф", "акад", "доц", "канд", "тов", "напр", "г-н", "г-жа", "св",
];

/// Hindi abbreviations written with a dot.
const ABBREVIATIONS_HI: &[&str] = &["डॉ", "प्रो", "सं"];

fn is_abbreviation(word: &str) -> bool {
    let lower = word.to_lowercase();
    if [ABBREVIATIONS_EN, ABBREVIATIONS_RU, ABBREVIATIONS_HI]
        .iter()
        .any(|list| list.contains(&lower.as_str()))
    {
        return true;
    }
    let mut chars = word.chars();
    // An initial: "J", "В".
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if c.is_alphabetic() {
            return true;
        }
    }
    // Dotted: "U.S", "e.g", "a.m", "т.е", "Ph.D".
    word.contains('.')
        && word.split('.').all(|seg| {
            let n = seg.chars().count();
            (1..=3).contains(&n) && seg.chars().all(char::is_alphabetic)
        })
}

fn ends_sentence(token: &str, position: usize, next: Option<&str>) -> bool {
    let core = token.trim_end_matches(is_closing);
    let Some(last) = core.chars().next_back() else {
        return false;
    };
    match last {
        '?' | '!' | '।' | '॥' => {}
        '.' => {
            let word = core.trim_start_matches(is_opening).trim_end_matches('.');
            if word.is_empty() || core.ends_with("..") {
                // An ellipsis: treated like a full stop.
            } else if is_abbreviation(word)
                || (position == 1 && word.chars().all(|c| c.is_ascii_digit()))
            {
                return false;
            }
        }
        _ => return false,
    }
    match next {
        None => true,
        Some(next) => !next
            .chars()
            .find(|c| c.is_alphanumeric())
            .is_some_and(char::is_lowercase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = include_str!("../../../../examples/sample-article.txt");

    fn on() -> CleanOptions {
        CleanOptions { enabled: true }
    }

    fn off() -> CleanOptions {
        CleanOptions { enabled: false }
    }

    /// The reason a lone paragraph (after a headline and a story paragraph)
    /// gets.
    fn reason(p: &str) -> Option<DropReason> {
        let text = format!("A headline\n\nThe story begins here.\n\n{p}");
        let a = prepare(&text, None, &on());
        assert_eq!(a.headline.as_deref(), Some("A headline"), "{p:?}");
        a.dropped.first().map(|d| d.reason)
    }

    #[test]
    fn sample_article_drops_exactly_its_three_non_story_paragraphs() {
        let a = prepare(SAMPLE, None, &on());
        assert_eq!(
            a.headline.as_deref(),
            Some("Four river nations strike a stopgap deal on sharing the shrinking Vessa")
        );
        assert_eq!(a.paragraphs_in, 16);
        let dropped: Vec<(usize, DropReason)> =
            a.dropped.iter().map(|d| (d.index, d.reason)).collect();
        assert_eq!(
            dropped,
            vec![
                (5, DropReason::PhotoCredit),
                (14, DropReason::ContributorLine),
                (15, DropReason::CommentForm),
            ]
        );
        assert_eq!(a.paragraphs.len(), 13);
        assert!(a.paragraphs[0].starts_with("PORT CALDER — "));
        assert_eq!(a.dropped[0].text, "Pool photo by Marta Keselj");
        // The two-line footer is one paragraph, its lines joined.
        assert_eq!(
            a.dropped[2].text,
            "Leave a Reply Your email address will not be published. Required fields are marked *"
        );
        // Story paragraphs that mention a photograph and "contributed" stay.
        assert!(a
            .paragraphs
            .iter()
            .any(|p| p.contains("photograph taken by") && p.contains("contributed the smallest")));
    }

    #[test]
    fn sample_article_without_clean_keeps_everything() {
        let a = prepare(SAMPLE, None, &off());
        assert!(a.headline.is_some());
        assert!(a.dropped.is_empty());
        assert_eq!(a.paragraphs.len(), 16);
        assert_eq!(a.paragraphs_in, 16);
    }

    /// The project's reference article lives outside the repository (it is a
    /// third-party text); check it when it is there.
    #[test]
    fn reference_article_when_present() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/seeds/g20-blinken-lavrov.txt"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let a = prepare(&text, None, &on());
        assert!(a.headline.is_some());
        let reasons: Vec<DropReason> = a.dropped.iter().map(|d| d.reason).collect();
        assert_eq!(
            reasons,
            vec![
                DropReason::PhotoCredit,
                DropReason::ContributorLine,
                DropReason::CommentForm,
                DropReason::CommentForm,
            ]
        );
        // The credit stands in the middle, the rest at the very end.
        assert!(a.dropped[0].index > 2 && a.dropped[0].index + 6 < a.paragraphs_in);
        assert_eq!(a.dropped[3].index, a.paragraphs_in - 1);
        assert_eq!(a.paragraphs.len() + 4, a.paragraphs_in);
    }

    #[test]
    fn photo_credits() {
        for p in [
            "Pool photo by Jane Doe",
            "pool photo by Jane Doe",
            "Photo: Jane Doe/Reuters",
            "Photo: REUTERS/Amit Dave",
            "Photograph by Kenny Holston for The New York Times",
            "(Photo by Jane Doe / Getty Images)",
            "(Photo by Jane Doe/AFP via Getty Images)",
            "Credit: Jane Doe/Getty Images",
            "Credit...Jane Doe/The New York Times",
            "Image: Reuters",
            "Photo by Ana de la Cruz.",
            "Jane Doe/Getty Images",
            "Jane Doe/AFP via Getty Images",
        ] {
            assert_eq!(reason(p), Some(DropReason::PhotoCredit), "{p:?}");
        }
    }

    #[test]
    fn contributor_lines() {
        for p in [
            "Jane Doe contributed reporting.",
            "Jane Doe and John Roe contributed reporting.",
            "Jane Doe, John Roe and Ana de la Cruz contributed reporting from Kyiv, Ukraine.",
            "Jane Doe contributed to this report.",
            "Jane Doe contributed additional reporting",
            "Reporting by Jane Doe in Moscow; Editing by John Roe",
            "Additional reporting by Jane Doe.",
        ] {
            assert_eq!(reason(p), Some(DropReason::ContributorLine), "{p:?}");
        }
    }

    #[test]
    fn comment_forms() {
        for p in [
            "Leave a Reply",
            "Leave a Reply Cancel reply",
            "Your email address will not be published. Required fields are marked *",
            "Post Comment",
            "Save my name, email, and website in this browser for the next time I comment.",
            "Leave a Reply Your email address will not be published. Comment * Name * Email *",
        ] {
            assert_eq!(reason(p), Some(DropReason::CommentForm), "{p:?}");
        }
        // Field labels alone are not a strong enough sign.
        assert_eq!(reason("Comment * Name * Email * Website"), None);
    }

    #[test]
    fn share_boilerplate_and_adverts() {
        for p in [
            "Share this article",
            "Share this article: Facebook Twitter Email",
            "Sign up for our newsletter",
            "Share full article",
        ] {
            assert_eq!(reason(p), Some(DropReason::ShareBoilerplate), "{p:?}");
        }
        for p in [
            "Advertisement",
            "SKIP ADVERTISEMENT",
            "Continue reading the main story",
        ] {
            assert_eq!(reason(p), Some(DropReason::AdvertisementMarker), "{p:?}");
        }
    }

    #[test]
    fn story_paragraphs_that_look_similar_are_kept() {
        for p in [
            "Photos by the agency showed the damage to the dam.",
            "Photo: the minister arrives for the talks",
            "A photograph by Jane Doe, taken on Monday, showed the riverbed dry for the first time in 60 years, officials said.",
            "Many nations contributed to this report, the minister said.",
            "The farmers contributed reporting to the council for years.",
            "Jane Doe contributed reporting and her colleagues wrote the rest of the story over three long days.",
            "Readers were invited to leave a reply to the minister's open letter.",
            "Leave a Reply to Jane Cancel reply",
            "Share this article with your local representative, the campaign urged.",
            "The advertisement ran in every newspaper.",
            "Jane Doe/Reuters reported that the talks failed",
        ] {
            assert_eq!(reason(p), None, "{p:?}");
        }
        let long = format!("Pool photo by Jane Doe {}", "And More Names ".repeat(12));
        assert_eq!(reason(long.trim()), None);
    }

    #[test]
    fn non_story_paragraphs_dropped_wherever_they_stand() {
        let a = prepare(
            "Advertisement\n\nHeadline here\n\nPhoto: Jane Doe/AP\n\nStory.\n\nMore story.",
            None,
            &on(),
        );
        assert_eq!(a.headline.as_deref(), Some("Headline here"));
        assert_eq!(a.paragraphs, vec!["Story.", "More story."]);
        assert_eq!(a.paragraphs_in, 4);
        let got: Vec<_> = a.dropped.iter().map(|d| (d.index, d.reason)).collect();
        assert_eq!(
            got,
            vec![
                (0, DropReason::AdvertisementMarker),
                (1, DropReason::PhotoCredit)
            ]
        );
    }

    #[test]
    fn enabled_false_keeps_every_paragraph() {
        let text = "Headline\n\nStory.\n\nPool photo by Jane Doe\n\nJane Doe contributed reporting.\n\nLeave a Reply";
        let a = prepare(text, None, &off());
        assert_eq!(a.headline.as_deref(), Some("Headline"));
        assert!(a.dropped.is_empty());
        assert_eq!(a.paragraphs.len(), 4);
        assert_eq!(a.paragraphs_in, 4);
    }

    #[test]
    fn text_without_blank_line_is_never_split() {
        for text in [
            "Headline\nStory sentence one.\nStory two.",
            "Just one line",
            "Short title\nPool photo by Jane Doe",
        ] {
            let a = prepare(text, None, &on());
            assert_eq!(a.headline, None, "{text:?}");
            assert_eq!(a.paragraphs.len() + a.dropped.len(), 1);
        }
        assert_eq!(
            prepare("Headline\nStory.", None, &on()).paragraphs,
            vec!["Headline Story."]
        );
    }

    #[test]
    fn headline_rules() {
        let h = |t: &str| prepare(t, None, &on()).headline;
        assert_eq!(h("Talks collapse\n\nStory."), Some("Talks collapse".into()));
        assert_eq!(
            h("Will the river run dry?\n\nStory."),
            Some("Will the river run dry?".into())
        );
        assert_eq!(h("\n\n  Title  \n\n\n\nStory."), Some("Title".into()));
        // A one-line lede, a dateline, an over-long line: no headline.
        assert_eq!(h("The talks collapsed on Monday.\n\nStory."), None);
        assert_eq!(h("PORT CALDER —\n\nStory."), None);
        assert_eq!(h(&format!("{}\n\nStory.", "word ".repeat(50))), None);
        assert_eq!(h("2023\n\nStory."), None);
        // Nothing after it: the only paragraph is the body.
        assert_eq!(h("Title\n\n"), None);
        assert_eq!(h("Title\n\nLeave a Reply"), None);
    }

    #[test]
    fn given_title() {
        let a = prepare("talks COLLAPSE\n\nStory.", Some("Talks collapse"), &on());
        assert_eq!(a.headline.as_deref(), Some("Talks collapse"));
        assert_eq!(a.paragraphs, vec!["Story."]);
        // First line differs from the title: the text stays whole.
        let a = prepare("Other words\n\nStory.", Some("Talks  collapse "), &on());
        assert_eq!(a.headline.as_deref(), Some("Talks collapse"));
        assert_eq!(a.paragraphs, vec!["Other words", "Story."]);
        // A blank title is no title.
        let a = prepare("Title\n\nStory.", Some(" \t"), &on());
        assert_eq!(a.headline.as_deref(), Some("Title"));
        // Never leaves the body empty.
        let a = prepare("Title", Some("Title"), &on());
        assert_eq!(a.paragraphs, vec!["Title"]);
    }

    #[test]
    fn whitespace_is_normalised() {
        let text = "\u{FEFF}Head\u{a0}line\r\n\r\n\tOne\u{200B} two\t three \r\nfour\u{0007}\r\rFive\u{2029}Six\u{2028}seven  \u{3000}\u{200D}x";
        let a = prepare(text, None, &on());
        assert_eq!(a.headline.as_deref(), Some("Head line"));
        assert_eq!(
            a.paragraphs,
            vec!["One two three four", "Five", "Six seven \u{200D}x"]
        );
    }

    #[test]
    fn zwj_and_zwnj_are_kept_in_hindi() {
        let text = "शीर्षक\n\nक्\u{200D}ष और र\u{200C}्य";
        let a = prepare(text, None, &on());
        assert_eq!(a.paragraphs, vec!["क्\u{200D}ष और र\u{200C}्य"]);
    }

    #[test]
    fn serialises_reasons_in_snake_case() {
        let d = DroppedParagraph {
            index: 3,
            reason: DropReason::ContributorLine,
            text: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap_or_default(),
            r#"{"index":3,"reason":"contributor_line","text":"x"}"#
        );
        assert_eq!(DropReason::PhotoCredit.description(), "photo credit");
    }

    #[test]
    fn sentences() {
        let s = |t: &str| split_sentences(t);
        assert_eq!(
            s("Mr. Ardel met Dr. Rellick in the U.S. capital. Growth was 3.5 percent! Why? J. K. Rowling agreed."),
            vec![
                "Mr. Ardel met Dr. Rellick in the U.S. capital.",
                "Growth was 3.5 percent!",
                "Why?",
                "J. K. Rowling agreed."
            ]
        );
        assert_eq!(
            s("“We will,” he said. “Not now.” (It rained.) Then"),
            vec!["“We will,” he said.", "“Not now.”", "(It rained.)", "Then"]
        );
        assert_eq!(
            s("Встреча прошла в 2023 г. в Москве. В. В. Путин не приехал, т.е. его не было. Итог"),
            vec![
                "Встреча прошла в 2023 г. в Москве.",
                "В. В. Путин не приехал, т.е. его не было.",
                "Итог"
            ]
        );
        assert_eq!(
            s("बैठक मंगलवार को हुई। डॉ. शर्मा ने कहा कि पानी कम है। क्या यह सही है? हाँ"),
            vec![
                "बैठक मंगलवार को हुई।",
                "डॉ. शर्मा ने कहा कि पानी कम है।",
                "क्या यह सही है?",
                "हाँ"
            ]
        );
        assert_eq!(
            s("1. First point. Second"),
            vec!["1. First point.", "Second"]
        );
        assert_eq!(
            s("It rose in 2023. Then it fell."),
            vec!["It rose in 2023.", "Then it fell."]
        );
        assert_eq!(s("\"Really?\" she asked."), vec!["\"Really?\" she asked."]);
        assert_eq!(s("Wait… what. No"), vec!["Wait… what.", "No"]);
        assert!(s("   \n\t ").is_empty());
    }

    /// Characters that survive clean-up: everything but whitespace, control
    /// and removed invisible characters.
    fn visible(text: &str) -> String {
        text.chars()
            .filter(|&c| !c.is_whitespace() && !c.is_control() && !is_removed_invisible(c))
            .collect()
    }

    /// Pieces of article-like text, to reach the patterns more often than
    /// random strings do.
    fn article_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\n".to_string()),
            Just("\n\n".to_string()),
            Just("\r\n".to_string()),
            Just("\r".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("\u{a0}".to_string()),
            Just("\u{200B}".to_string()),
            Just("\u{2029}".to_string()),
            Just("Pool photo by Jane Doe".to_string()),
            Just("Jane Doe contributed reporting.".to_string()),
            Just("Leave a Reply".to_string()),
            Just("Required fields are marked *".to_string()),
            Just("Share this article".to_string()),
            Just("Advertisement".to_string()),
            Just("Talks collapse".to_string()),
            Just("Mr. Ardel said 3.5 percent.".to_string()),
            Just("बैठक हुई।".to_string()),
            "\\PC{0,30}",
            any::<String>(),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn prepare_invariants(text in article_text(), enabled in any::<bool>()) {
            let a = prepare(&text, None, &CleanOptions { enabled });
            prop_assert_eq!(a.paragraphs.len() + a.dropped.len(), a.paragraphs_in);
            for p in a.paragraphs.iter().chain(a.dropped.iter().map(|d| &d.text)) {
                prop_assert!(!p.trim().is_empty());
                prop_assert!(!p.contains('\n'));
                prop_assert_eq!(p.trim(), p.as_str());
            }
            if !enabled {
                prop_assert!(a.dropped.is_empty());
            }
            let mut last = None;
            for d in &a.dropped {
                prop_assert!(d.index < a.paragraphs_in);
                prop_assert!(last.is_none_or(|l| l < d.index));
                last = Some(d.index);
            }

            // Every visible character, in order: the body rebuilt from kept
            // and dropped paragraphs, with the headline at one of the block
            // boundaries (dropped paragraphs may stand on either side of it).
            let mut kept = a.paragraphs.iter();
            let mut dropped = a.dropped.iter().peekable();
            let mut blocks: Vec<&str> = Vec::new();
            for i in 0..a.paragraphs_in {
                match dropped.peek() {
                    Some(d) if d.index == i => {
                        blocks.push(&d.text);
                        dropped.next();
                    }
                    _ => blocks.push(kept.next().map(String::as_str).unwrap_or_default()),
                }
            }
            let want = visible(&text);
            let found = match &a.headline {
                None => visible(&blocks.concat()) == want,
                Some(h) => (0..=blocks.len()).any(|at| {
                    let mut with = blocks.clone();
                    with.insert(at, h);
                    visible(&with.concat()) == want
                }),
            };
            prop_assert!(found, "characters lost or reordered: {:?} -> {:?}", text, a);

            // Idempotent on its own output.
            let again = prepare(&a.to_text(), None, &CleanOptions { enabled });
            prop_assert_eq!(&again.headline, &a.headline);
            prop_assert_eq!(&again.paragraphs, &a.paragraphs);
            prop_assert!(again.dropped.is_empty());
        }

        #[test]
        fn prepare_never_panics_with_a_title(text in any::<String>(), title in any::<String>()) {
            let a = prepare(&text, Some(&title), &CleanOptions::default());
            prop_assert_eq!(a.paragraphs.len() + a.dropped.len(), a.paragraphs_in);
        }

        #[test]
        fn sentences_rejoin_to_normalised_input(text in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop_oneof![
                Just("Mr."), Just("U.S."), Just("3.5"), Just("end."), Just("Why?"), Just("।"),
                Just("”"), Just("Then"), Just("then"), Just("1."), Just(" "), Just("\n"),
                Just("\u{a0}"), Just("…"), Just("J."), Just("г."),
            ], 0..40).prop_map(|v| v.join(" ")),
        ]) {
            let sentences = split_sentences(&text);
            let words: Vec<&str> = text.split_whitespace().collect();
            prop_assert_eq!(sentences.join(" "), words.join(" "));
            for s in &sentences {
                prop_assert!(!s.is_empty());
                prop_assert_eq!(s.trim(), s.as_str());
            }
        }
    }
}
