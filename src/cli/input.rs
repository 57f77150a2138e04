//! Reading articles from what the user names: files, folders, `-` for stdin.
//! A file is read by what it holds: a feed (RSS 2.0, Atom, JSON Feed) gives
//! one item per entry; `.html` a page reduced to its main text; `.md`
//! Markdown reduced to plain paragraphs; `.jsonl` (or `--jsonl`) one
//! article per line (`{"id", "title", "text" | "html", "url", "language"}`);
//! anything else is plain text. An input that cannot be read becomes an item
//! that carries its error, so the other articles still go through and the
//! error is reported in order.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use precis_core::task::Article;
use precis_service::fetch::{fetch_blocking, FetchPolicy};
use precis_service::sources;
pub use precis_service::sources::SourceItem as InputItem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    id: Option<serde_json::Value>,
    title: Option<String>,
    text: Option<String>,
    html: Option<String>,
    url: Option<String>,
    language: Option<String>,
}

impl JsonLine {
    fn article(self) -> Result<Article, String> {
        let id = self.id.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        let (title, text, language) = match (self.text, self.html) {
            (Some(text), None) => (self.title, text, self.language),
            (None, Some(html)) if sources::is_page(&html) => {
                let page = sources::page_text(&html, self.url.as_deref())?;
                (
                    self.title.or(page.title),
                    page.text,
                    self.language.or(page.language),
                )
            }
            (None, Some(html)) => (self.title, sources::fragment_text(&html), self.language),
            (Some(_), Some(_)) => return Err("give `text` or `html`, not both".into()),
            (None, None) => return Err("the record has neither `text` nor `html`".into()),
        };
        Ok(Article {
            id,
            title,
            text,
            url: self.url,
            language,
        })
    }
}

/// File extensions read from a folder.
pub const FOLDER_EXTENSIONS: &[&str] = &[
    "txt", "md", "markdown", "jsonl", "html", "htm", "xml", "rss", "atom", "json",
];

/// Expands the user's inputs into items, in order. `jsonl` forces JSON Lines
/// for stdin and for files without the `.jsonl` extension.
pub fn read_inputs(inputs: &[PathBuf], jsonl: bool) -> Result<Vec<InputItem>, String> {
    read_sources(inputs, jsonl, &FetchPolicy::default())
}

/// [`read_inputs`], where an input may also be an `http(s)://` URL of a
/// feed, a page or a text, fetched under `policy`.
pub fn read_sources(
    inputs: &[PathBuf],
    jsonl: bool,
    policy: &FetchPolicy,
) -> Result<Vec<InputItem>, String> {
    let mut items = Vec::new();
    if inputs.is_empty() {
        return Err("no input given: name files or folders, or `-` to read stdin".into());
    }
    for input in inputs {
        let name = input.to_string_lossy();
        if name.starts_with("http://") || name.starts_with("https://") {
            match fetch_blocking(&name, policy) {
                Ok(fetched) => {
                    let html = fetched
                        .content_type
                        .as_deref()
                        .is_some_and(|t| t.contains("html"));
                    push_fetched(&mut items, &name, fetched.body, html, jsonl);
                }
                Err(e) => items.push(InputItem {
                    origin: name.to_string(),
                    article: Err(e.to_string()),
                }),
            }
        } else if input.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            push_bytes(&mut items, "stdin", buf, jsonl);
        } else if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| format!("cannot read folder {}: {e}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| FOLDER_EXTENSIONS.contains(&x))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format!(
                    "folder {} has no files precis reads (.{})",
                    input.display(),
                    FOLDER_EXTENSIONS.join(", .")
                ));
            }
            for f in files {
                push_file(&mut items, &f, jsonl);
            }
        } else {
            push_file(&mut items, input, jsonl);
        }
    }
    Ok(items)
}

fn push_file(items: &mut Vec<InputItem>, path: &Path, jsonl: bool) {
    let origin = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => {
            let is_jsonl = jsonl || path.extension().is_some_and(|x| x == "jsonl");
            push_bytes(items, &origin, bytes, is_jsonl);
        }
        Err(e) => items.push(InputItem {
            article: Err(format!("cannot read {origin}: {e}")),
            origin,
        }),
    }
}

/// A fetched document: read like a file, a page when its type says HTML.
fn push_fetched(items: &mut Vec<InputItem>, url: &str, bytes: Vec<u8>, html: bool, jsonl: bool) {
    if html && !sources::looks_like_feed(&bytes) {
        let text = String::from_utf8_lossy(&bytes);
        let article = sources::page_text(&text, Some(url))
            .map(|page| Article {
                id: Some(url.to_string()),
                title: page.title,
                text: page.text,
                url: Some(url.to_string()),
                language: page.language,
            })
            .map_err(|e| format!("{url}: {e}"));
        items.push(InputItem {
            origin: url.to_string(),
            article,
        });
        return;
    }
    push_bytes(items, url, bytes, jsonl);
}

/// Words below which a feed item's text is taken for a teaser.
pub const TEASER_WORDS: usize = 150;

/// Replaces the text of each item that is a teaser (fewer than
/// [`TEASER_WORDS`] words) and has a link with the main text of the linked
/// page. An item whose page cannot be had fails alone, naming the page.
pub fn fetch_articles(items: &mut [InputItem], policy: &FetchPolicy) {
    for item in items.iter_mut() {
        let Ok(article) = &item.article else { continue };
        let Some(url) = article.url.clone() else {
            continue;
        };
        if article.text.split_whitespace().count() >= TEASER_WORDS {
            continue;
        }
        let page = fetch_blocking(&url, policy)
            .map_err(|e| e.to_string())
            .and_then(|f| sources::page_text(&String::from_utf8_lossy(&f.body), Some(&f.url)));
        item.article = match page {
            Ok(page) => item.article.clone().map(|a| page.fill(a)),
            Err(e) => Err(format!(
                "{}: its text is a teaser and its article ({url}) cannot be read: {e}",
                item.origin
            )),
        };
    }
}

fn push_bytes(items: &mut Vec<InputItem>, origin: &str, bytes: Vec<u8>, jsonl: bool) {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            items.push(InputItem {
                origin: origin.to_string(),
                article: Err(format!(
                    "{origin} is not valid UTF-8 (invalid byte at offset {}); convert it to UTF-8 first",
                    e.utf8_error().valid_up_to()
                )),
            });
            return;
        }
    };
    if jsonl {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let origin = format!("{origin}:{}", n + 1);
            let article = serde_json::from_str::<JsonLine>(line)
                .map_err(|e| format!("not a valid JSON Lines record {{\"id\", \"title\", \"text\" | \"html\", \"url\", \"language\"}}: {e}"))
                .and_then(JsonLine::article)
                .map_err(|e| format!("{origin}: {e}"));
            items.push(InputItem { origin, article });
        }
        return;
    }
    if sources::looks_like_feed(text.as_bytes()) {
        match sources::parse_feed(text.as_bytes(), origin) {
            Ok(entries) => items.extend(entries),
            Err(e) => items.push(InputItem {
                origin: origin.to_string(),
                article: Err(e),
            }),
        }
        return;
    }
    let path = Path::new(origin);
    let extension = path
        .extension()
        .and_then(|x| x.to_str())
        .map(str::to_ascii_lowercase);
    let id = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let article = match extension.as_deref() {
        Some("html" | "htm") => sources::page_text(&text, None)
            .map(|page| Article {
                id,
                title: page.title,
                text: page.text,
                url: None,
                language: page.language,
            })
            .map_err(|e| format!("{origin}: {e}")),
        Some("md" | "markdown") => {
            let (title, text) = sources::markdown_article(&text);
            Ok(Article {
                id,
                title,
                text,
                ..Article::default()
            })
        }
        Some("json") => Err(format!(
            "{origin}: a .json file is read as a JSON Feed, and this is not one (for articles use JSON Lines: .jsonl)"
        )),
        Some("xml" | "rss" | "atom") => Err(format!(
            "{origin} is not an RSS or Atom feed (its root element is not <rss>, <feed> or <rdf:RDF>)"
        )),
        _ => Ok(Article {
            id,
            title: None,
            text,
            ..Article::default()
        }),
    };
    items.push(InputItem {
        origin: origin.to_string(),
        article,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_files_are_read_in_name_order_and_bad_lines_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "Second.").unwrap();
        std::fs::write(dir.path().join("a.txt"), "First.").unwrap();
        std::fs::write(dir.path().join("skip.bin"), "x").unwrap();
        std::fs::write(
            dir.path().join("c.jsonl"),
            "{\"id\": 7, \"title\": \"T\", \"text\": \"Third.\"}\nnot json\n\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("d.txt"), [0xff, 0xfe, b'a']).unwrap();
        let items = read_inputs(&[dir.path().to_path_buf()], false).unwrap();
        let texts: Vec<_> = items
            .iter()
            .map(|i| i.article.as_ref().map(|a| a.text.clone()))
            .collect();
        assert_eq!(texts[0].as_deref(), Ok("First."));
        assert_eq!(texts[1].as_deref(), Ok("Second."));
        assert_eq!(texts[2].as_deref(), Ok("Third."));
        assert_eq!(items[2].article.as_ref().unwrap().id.as_deref(), Some("7"));
        assert!(texts[3].as_ref().unwrap_err().contains("c.jsonl:2"));
        assert!(texts[4].as_ref().unwrap_err().contains("not valid UTF-8"));
        assert_eq!(items.len(), 5);
    }

    #[test]
    fn json_lines_take_html_urls_and_languages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"id": "h", "html": "<p>First <i>one</i>.</p><p>Second.</p>", "url": "https://news.example/h", "language": "en"}"#,
                "\n",
                r#"{"id": "both", "text": "x", "html": "<p>y</p>"}"#,
                "\n",
                r#"{"id": "none", "title": "t"}"#,
                "\n",
            ),
        )
        .unwrap();
        let items = read_inputs(&[path], false).unwrap();
        let first = items[0].article.as_ref().unwrap();
        assert_eq!(first.text, "First one.\n\nSecond.");
        assert_eq!(first.url.as_deref(), Some("https://news.example/h"));
        assert_eq!(first.language.as_deref(), Some("en"));
        let both = items[1].article.as_ref().unwrap_err();
        assert!(
            both.contains("items.jsonl:2") && both.contains("not both"),
            "{both}"
        );
        let none = items[2].article.as_ref().unwrap_err();
        assert!(none.contains("neither"), "{none}");
    }

    #[test]
    fn no_input_is_an_error() {
        assert!(read_inputs(&[], false).is_err());
    }
}
