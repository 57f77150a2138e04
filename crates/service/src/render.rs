//! Output formats: JSON (one object, or an array for several articles), JSON
//! Lines (one object per line, for pipelines), and, for newsletters,
//! Markdown, a self-contained HTML page, and JSON Feed 1.1 (one feed per
//! output language). A failed article is an object `{"origin", "id",
//! "error": {...}}` in JSON and JSON Lines, a short note in Markdown and
//! HTML, and left out of a JSON Feed (it is named on stderr).

use serde::Serialize;
use serde_json::json;

use crate::markup::escape_html;
use precis_core::task::{language_name, Summary, TaskResult, Translation, TranslationSource};

/// How results are written.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Pretty JSON (see [`Format::about`] for each format).
    #[default]
    Json,
    /// JSON Lines.
    Jsonl,
    /// A Markdown newsletter.
    Markdown,
    /// An HTML newsletter.
    Html,
    /// JSON Feed 1.1.
    Jsonfeed,
}

impl Format {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [Format; 5] = [
        Format::Json,
        Format::Jsonl,
        Format::Markdown,
        Format::Html,
        Format::Jsonfeed,
    ];

    /// The format's name, as the command line and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Jsonfeed => "jsonfeed",
        }
    }

    /// What the format is, for a user choosing one.
    pub fn about(self) -> &'static str {
        match self {
            Format::Json => "Pretty JSON: one object, or an array when there are several articles",
            Format::Jsonl => "One compact JSON object per line (the result schema; see the README)",
            Format::Markdown => {
                "A newsletter in Markdown: per article its title and link, summary, and translations"
            }
            Format::Html => "The same newsletter as a self-contained HTML page",
            Format::Jsonfeed => "JSON Feed 1.1, one feed per output language (needs --out-dir)",
        }
    }

    /// The file extension of a file in this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json | Format::Jsonfeed => "json",
            Format::Jsonl => "jsonl",
            Format::Markdown => "md",
            Format::Html => "html",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format `{s}`; one of: {}", names.join(", "))
            })
    }
}

/// One article's outcome, as written.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// It worked.
    Ok(Box<TaskResult>),
    /// It failed.
    Failed {
        /// Where the article came from.
        origin: String,
        /// The article's id, when known.
        id: Option<String>,
        /// Why it failed.
        error: ErrorBody,
    },
}

/// The error object in output, same shape as the REST API's.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Renders all outcomes in a single-document format (every format but
/// [`Format::Jsonfeed`], which [`json_feeds`] writes).
pub fn render(outcomes: &[Outcome], format: Format) -> String {
    match format {
        Format::Json => {
            let text = if outcomes.len() == 1 {
                serde_json::to_string_pretty(&outcomes[0])
            } else {
                serde_json::to_string_pretty(outcomes)
            };
            text.unwrap_or_default() + "\n"
        }
        Format::Jsonl => outcomes
            .iter()
            .filter_map(|o| serde_json::to_string(o).ok())
            .map(|l| l + "\n")
            .collect(),
        Format::Markdown => outcomes
            .iter()
            .map(markdown)
            .collect::<Vec<_>>()
            .join("\n---\n\n"),
        Format::Html => html_page(outcomes),
        Format::Jsonfeed => json_feeds(outcomes, "precis")
            .into_iter()
            .map(|(_, text)| text)
            .collect(),
    }
}

/// A link target only when it is a web address (never `javascript:` and
/// the like, which a feed could carry).
fn web_url(url: Option<&str>) -> Option<&str> {
    url.filter(|u| {
        let lower = u.trim_start().to_ascii_lowercase();
        lower.starts_with("https://") || lower.starts_with("http://")
    })
}

/// Text for Markdown: its own words and nothing more. A character that
/// could start markup anywhere (emphasis, code, a link or image, HTML, an
/// entity, a table cell, strike-through) is backslash-escaped, and so is
/// one that would start a block at the beginning of a line (a heading, a
/// list item, a setext underline), so a feed's text can add no link, image
/// or structure to a newsletter.
fn md_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len() + 16);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let body = line.trim_start();
        out.push_str(&line[..line.len() - body.len()]);
        let digits = body.chars().take_while(char::is_ascii_digit).count();
        for (j, c) in body.chars().enumerate() {
            let anywhere = matches!(
                c,
                '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '|' | '~'
            );
            let line_start = j == 0 && matches!(c, '#' | '-' | '+' | '=');
            let list_number = digits > 0 && j == digits && matches!(c, '.' | ')');
            if anywhere || line_start || list_number {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// [`md_text`] for what must stay on one line (a title, a heading, a
/// failure note): line breaks become spaces.
fn md_line(text: &str) -> String {
    md_text(&text.replace(['\r', '\n'], " "))
}

/// A link target for Markdown's `<...>` form: an http(s) URL with nothing
/// that could end the target early.
fn md_url(url: &str) -> String {
    url.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '<' | '>'))
        .collect()
}

/// What a translation's heading adds after the language: nothing for the
/// summary's, a note for the whole article's.
fn source_note(source: TranslationSource) -> &'static str {
    match source {
        TranslationSource::Summary => "",
        TranslationSource::Article => " — full article",
    }
}

/// The title a newsletter shows for a result.
fn display_title(r: &TaskResult) -> String {
    r.title.clone().or_else(|| r.id.clone()).unwrap_or_default()
}

/// The models that wrote a result, each once, in order.
fn models(r: &TaskResult) -> Vec<String> {
    let mut models: Vec<String> = Vec::new();
    if let Some(s) = &r.summary {
        models.push(s.model.id.clone());
    }
    for t in &r.translations {
        if !models.contains(&t.model.id) {
            models.push(t.model.id.clone());
        }
    }
    models
}

fn language_label(code: &str) -> String {
    let native = match code {
        "ru" => Some("Русский"),
        "hi" => Some("हिन्दी"),
        "en" => Some("English"),
        _ => None,
    };
    match (native, language_name(code)) {
        (Some(n), Some(e)) if n != e => format!("{n} ({e})"),
        (Some(n), _) => n.to_string(),
        (None, Some(e)) => e.to_string(),
        (None, None) => code.to_string(),
    }
}

fn markdown(outcome: &Outcome) -> String {
    let r = match outcome {
        Outcome::Ok(r) => r,
        Outcome::Failed { origin, error, .. } => {
            return format!(
                "> **{}**: not processed: {}\n",
                md_line(origin),
                md_line(&error.message)
            );
        }
    };
    let mut out = String::new();
    let title = display_title(r);
    match (title.is_empty(), web_url(r.url.as_deref())) {
        (false, Some(url)) => {
            out.push_str(&format!("## [{}](<{}>)\n\n", md_line(&title), md_url(url)))
        }
        (false, None) => out.push_str(&format!("## {}\n\n", md_line(&title))),
        (true, Some(url)) => out.push_str(&format!("<{}>\n\n", md_url(url))),
        (true, None) => {}
    }
    if let Some(s) = &r.summary {
        out.push_str(&md_text(&s.text));
        out.push_str("\n\n");
    }
    for t in &r.translations {
        let what = source_note(t.source);
        out.push_str(&format!("### {}{what}\n\n", language_label(&t.language)));
        if let Some(title) = &t.title {
            out.push_str(&format!("**{}**\n\n", md_line(title)));
        }
        for p in &t.paragraphs {
            out.push_str(&md_text(p));
            out.push_str("\n\n");
        }
    }
    out.push_str(&format!(
        "<sub>Generated by {} with precis.</sub>\n",
        md_line(&models(r).join(", "))
    ));
    out
}

const HTML_STYLE: &str = "body{font-family:Georgia,serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#222}\
article{border-bottom:1px solid #ddd;padding-bottom:1.5rem;margin-bottom:1.5rem}\
h2 a{color:inherit}section{margin-top:1rem}h3{font-size:1rem;color:#555}\
.failed{color:#a00}footer,.models{font-size:.8rem;color:#777}";

/// The outcomes as one self-contained HTML page: no script, no style or
/// font fetched from elsewhere, every text escaped.
fn html_page(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Digest</title>\n<style>",
    );
    out.push_str(HTML_STYLE);
    out.push_str("</style>\n</head>\n<body>\n");
    for o in outcomes {
        out.push_str(&html_article(o));
    }
    out.push_str("<footer>Generated with precis.</footer>\n</body>\n</html>\n");
    out
}

fn html_article(outcome: &Outcome) -> String {
    let r = match outcome {
        Outcome::Ok(r) => r,
        Outcome::Failed { origin, error, .. } => {
            return format!(
                "<article class=\"failed\"><p><strong>{}</strong>: not processed: {}</p></article>\n",
                escape_html(origin),
                escape_html(&error.message)
            );
        }
    };
    let mut out = String::from("<article>\n");
    let title = escape_html(&display_title(r));
    match web_url(r.url.as_deref()) {
        Some(url) => out.push_str(&format!(
            "<h2><a href=\"{}\">{}</a></h2>\n",
            escape_html(url),
            if title.is_empty() {
                escape_html(url)
            } else {
                title
            }
        )),
        None if !title.is_empty() => out.push_str(&format!("<h2>{title}</h2>\n")),
        None => {}
    }
    if let Some(s) = &r.summary {
        out.push_str(&format!(
            "<p lang=\"{}\">{}</p>\n",
            escape_html(&s.language),
            escape_html(&s.text)
        ));
    }
    for t in &r.translations {
        let what = source_note(t.source);
        out.push_str(&format!(
            "<section lang=\"{}\">\n<h3>{}{what}</h3>\n",
            escape_html(&t.language),
            escape_html(&language_label(&t.language))
        ));
        if let Some(title) = &t.title {
            out.push_str(&format!("<h4>{}</h4>\n", escape_html(title)));
        }
        for p in &t.paragraphs {
            out.push_str(&format!("<p>{}</p>\n", escape_html(p)));
        }
        out.push_str("</section>\n");
    }
    out.push_str(&format!(
        "<p class=\"models\">Generated by {}.</p>\n</article>\n",
        escape_html(&models(r).join(", "))
    ));
    out
}

/// One JSON Feed 1.1 per output language, as `(language, document)`: the
/// source language's feed has the summaries, each target language's the
/// translated titles and summaries (or, for a translate job, the
/// translated articles). Failed articles are left out.
pub fn json_feeds(outcomes: &[Outcome], title: &str) -> Vec<(String, String)> {
    let results: Vec<&TaskResult> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ok(r) => Some(r.as_ref()),
            Outcome::Failed { .. } => None,
        })
        .collect();
    let mut languages: Vec<String> = Vec::new();
    for r in &results {
        let langs = r
            .summary
            .iter()
            .map(|s| s.language.clone())
            .chain(r.translations.iter().map(|t| t.language.clone()));
        for l in langs {
            if !languages.contains(&l) {
                languages.push(l);
            }
        }
    }
    languages
        .into_iter()
        .map(|lang| {
            let items: Vec<serde_json::Value> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| feed_item(r, i, &lang))
                .collect();
            let feed = json!({
                "version": "https://jsonfeed.org/version/1.1",
                "title": format!("{title} ({})", language_name(&lang).unwrap_or(&lang)),
                "language": lang,
                "items": items,
            });
            let text = serde_json::to_string_pretty(&feed).unwrap_or_default() + "\n";
            (lang, text)
        })
        .collect()
}

/// A result as an item of the `lang` feed, when it has text in `lang`.
fn feed_item(r: &TaskResult, index: usize, lang: &str) -> Option<serde_json::Value> {
    let summary: Option<&Summary> = r.summary.as_ref().filter(|s| s.language == lang);
    let summary_translation: Option<&Translation> = r
        .translations
        .iter()
        .find(|t| t.language == lang && t.source == TranslationSource::Summary);
    let article_translation: Option<&Translation> = r
        .translations
        .iter()
        .find(|t| t.language == lang && t.source == TranslationSource::Article);
    let (title, summary_text, content) = match (summary, summary_translation, article_translation) {
        (Some(s), _, _) => (r.title.clone(), Some(s.text.clone()), s.text.clone()),
        (None, Some(t), full) => (
            t.title.clone().or_else(|| r.title.clone()),
            Some(t.text.clone()),
            full.map_or_else(|| t.text.clone(), |f| f.text.clone()),
        ),
        (None, None, Some(f)) => (
            f.title.clone().or_else(|| r.title.clone()),
            None,
            f.text.clone(),
        ),
        (None, None, None) => return None,
    };
    let id =
        r.id.clone()
            .or_else(|| r.url.clone())
            .unwrap_or_else(|| format!("item-{}", index + 1));
    let mut item = json!({
        "id": id,
        "content_text": content,
        "language": lang,
    });
    let obj = item.as_object_mut()?;
    if let Some(url) = web_url(r.url.as_deref()) {
        obj.insert("url".into(), url.into());
    }
    if let Some(t) = title {
        obj.insert("title".into(), t.into());
    }
    if let Some(s) = summary_text {
        obj.insert("summary".into(), s.into());
    }
    Some(item)
}
