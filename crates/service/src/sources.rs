//! Where articles come from besides plain text: feeds (RSS 2.0, Atom, JSON
//! Feed 1.1, through feed-rs), HTML pages (reduced to their main text by
//! dom_smoothie, a port of Mozilla's Readability), HTML fragments (a feed
//! item's content) and Markdown. Each feed entry becomes one item; an entry
//! that cannot be used becomes an item carrying an error that names it, so
//! the other entries go on.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use precis_core::task::Article;

/// One article to process, or why it could not be read.
#[derive(Debug)]
pub struct SourceItem {
    /// Where it came from (`file.txt`, `stdin`, `file.jsonl:3`, `feed.xml#2`).
    pub origin: String,
    /// The article, or the reason it could not be read.
    pub article: Result<Article, String>,
}

/// Whether `bytes` look like a feed: an XML document whose root is `rss`,
/// `feed` (Atom) or `rdf:RDF` (RSS 1), or a JSON Feed.
pub fn looks_like_feed(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let head = head.trim_start_matches('\u{feff}').trim_start();
    if head.starts_with('{') {
        return head.contains("jsonfeed.org/version/");
    }
    if !head.starts_with('<') {
        return false;
    }
    // The first element that is not a declaration, comment or doctype.
    let mut rest = head;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        return rest.starts_with("rss") || rest.starts_with("feed") || rest.starts_with("rdf:RDF");
    }
    false
}

/// The entries of a feed, in feed order, each an article or the reason it
/// cannot be one. A document that is not a feed at all, or a feed without
/// entries, is an error.
pub fn parse_feed(bytes: &[u8], origin: &str) -> Result<Vec<SourceItem>, String> {
    let feed = feed_rs::parser::parse(bytes)
        .map_err(|e| format!("{origin} is not a valid RSS, Atom or JSON Feed document: {e}"))?;
    if feed.entries.is_empty() {
        return Err(format!("{origin}: the feed has no items"));
    }
    let feed_language = feed.language.clone();
    Ok(feed
        .entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let title = entry.title.as_ref().map(text_of).filter(|t| !t.is_empty());
            let item_origin = match &title {
                Some(t) => format!("{origin}#{} (\"{t}\")", i + 1),
                None => format!("{origin}#{}", i + 1),
            };
            let url = entry
                .links
                .iter()
                .find(|l| l.rel.as_deref().is_none_or(|r| r == "alternate"))
                .or_else(|| entry.links.first())
                .map(|l| l.href.clone());
            let body = entry
                .content
                .as_ref()
                .and_then(|c| {
                    let html = c.content_type.to_string().contains("html");
                    c.body.as_deref().map(|b| {
                        if html {
                            fragment_text(b)
                        } else {
                            b.to_string()
                        }
                    })
                })
                .filter(|t| !t.trim().is_empty())
                .or_else(|| entry.summary.as_ref().map(text_of))
                .filter(|t| !t.trim().is_empty());
            let article =
                match body {
                    Some(text) => Ok(Article {
                        id: Some(entry.id.clone()).filter(|id| !id.is_empty()),
                        title,
                        text,
                        url,
                        language: entry.language.clone().or_else(|| feed_language.clone()),
                    }),
                    None => Err(format!(
                    "{item_origin}: the item has no text (no content, description or summary){}",
                    if url.is_some() { "; its link may have the article" } else { "" }
                )),
                };
            SourceItem {
                origin: item_origin,
                article,
            }
        })
        .collect())
}

/// A feed text field as plain text (HTML ones reduced to their text).
fn text_of(t: &feed_rs::model::Text) -> String {
    if t.content_type.to_string().contains("html") {
        fragment_text(&t.content)
    } else {
        t.content.trim().to_string()
    }
}

/// The text of an HTML fragment, a paragraph per block element (paragraphs
/// separated by blank lines), scripts and styles left out.
pub fn fragment_text(html: &str) -> String {
    let doc = dom_query::Document::from(html);
    doc.select("script, style, noscript, template").remove();
    tidy_paragraphs(&doc.formatted_text())
}

/// Whitespace tidied per paragraph, empty paragraphs dropped.
fn tidy_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| {
            p.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The main text of a web page and its title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageText {
    /// The article's title, when the page has one.
    pub title: Option<String>,
    /// Its text, paragraphs separated by blank lines.
    pub text: String,
    /// The page's declared language (`<html lang>`).
    pub language: Option<String>,
}

impl PageText {
    /// `article` read from this page: the page's text, and its title and
    /// language where the article has none.
    pub fn fill(self, article: Article) -> Article {
        Article {
            title: article.title.or(self.title),
            text: self.text,
            language: article.language.or(self.language),
            ..article
        }
    }
}

/// The main text of an HTML page (navigation, ads, comments and other
/// chrome left out), or why there is none.
pub fn page_text(html: &str, url: Option<&str>) -> Result<PageText, String> {
    let config = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Formatted,
        ..dom_smoothie::Config::default()
    };
    let url = url.filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    let mut readability = dom_smoothie::Readability::new(html, url, Some(config))
        .map_err(|e| format!("cannot read the page: {e}"))?;
    let article = readability
        .parse()
        .map_err(|e| format!("no article text found in the page: {e}"))?;
    let text = tidy_paragraphs(&article.text_content);
    if text.is_empty() {
        return Err("no article text found in the page".into());
    }
    Ok(PageText {
        title: Some(article.title.trim().to_string()).filter(|t| !t.is_empty()),
        text,
        language: article.lang,
    })
}

/// Whether an HTML text is a whole page rather than a fragment.
pub fn is_page(html: &str) -> bool {
    let head = html[..html.len().min(2048)].to_ascii_lowercase();
    head.contains("<html") || head.contains("<!doctype html") || head.contains("<body")
}

/// A Markdown document as an article: its first top-level heading the
/// title, each block a paragraph, inline markup reduced to its text (a
/// link to its words).
pub fn markdown_article(markdown: &str) -> (Option<String>, String) {
    let mut title = None;
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_title = false;
    let mut skip = 0usize; // inside code blocks and images
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { level, .. })
                if level == HeadingLevel::H1 && title.is_none() =>
            {
                in_title = true;
            }
            Event::End(TagEnd::Heading(_)) if in_title => {
                in_title = false;
                title = Some(std::mem::take(&mut current).trim().to_string());
            }
            Event::Start(Tag::CodeBlock(_) | Tag::Image { .. } | Tag::HtmlBlock) => skip += 1,
            Event::End(TagEnd::CodeBlock | TagEnd::Image | TagEnd::HtmlBlock) => {
                skip = skip.saturating_sub(1)
            }
            Event::Text(t) | Event::Code(t) if skip == 0 => current.push_str(&t),
            Event::SoftBreak | Event::HardBreak if skip == 0 => current.push(' '),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::BlockQuote(_)
                | TagEnd::TableRow,
            ) => {
                let p = current.split_whitespace().collect::<Vec<_>>().join(" ");
                if !p.is_empty() {
                    paragraphs.push(p);
                }
                current.clear();
            }
            _ => {}
        }
    }
    let tail = current.split_whitespace().collect::<Vec<_>>().join(" ");
    if !tail.is_empty() {
        paragraphs.push(tail);
    }
    (title.filter(|t| !t.is_empty()), paragraphs.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_are_told_from_other_documents() {
        assert!(looks_like_feed(
            b"<?xml version=\"1.0\"?>\n<!-- x -->\n<rss version=\"2.0\">"
        ));
        assert!(looks_like_feed(
            b"<feed xmlns=\"http://www.w3.org/2005/Atom\">"
        ));
        assert!(looks_like_feed(
            br#"{"version": "https://jsonfeed.org/version/1.1", "items": []}"#
        ));
        assert!(!looks_like_feed(b"<!DOCTYPE html><html><body>"));
        assert!(!looks_like_feed(br#"{"text": "hi"}"#));
        assert!(!looks_like_feed(b"Plain text."));
    }

    #[test]
    fn fragments_keep_paragraphs_and_drop_scripts() {
        let text = fragment_text(
            "<p>First <b>bold</b>\n  line.</p><script>var x = 1;</script><p>Second &amp; last.</p>",
        );
        assert_eq!(text, "First bold line.\n\nSecond & last.");
    }

    #[test]
    fn markdown_becomes_title_and_plain_paragraphs() {
        let (title, text) = markdown_article(
            "# The headline\n\nA [linked](http://x) *word* here.\n\n```\ncode\n```\n\n- item one\n- item two\n\n## Sub\n\nEnd.",
        );
        assert_eq!(title.as_deref(), Some("The headline"));
        assert_eq!(
            text,
            "A linked word here.\n\nitem one\n\nitem two\n\nSub\n\nEnd."
        );
    }
}
