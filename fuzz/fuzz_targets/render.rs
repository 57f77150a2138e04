//! The renderers: whatever titles, texts, links and failure messages a
//! result carries, Markdown gains no link or HTML of its own making beyond
//! the item's http(s) URL and precis's footnote, and HTML gains no element
//! from the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precis_core::task::{Article, CancelToken, Task, TaskOptions, TaskRequest};
use precis_service::render::{render, ErrorBody, Format, Outcome};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Four fields from one input: title | text | origin | message.
    let mut parts = text.splitn(4, '\u{1}');
    let title = parts.next().unwrap_or_default().to_string();
    let body = parts.next().unwrap_or_default().to_string();
    let origin = parts.next().unwrap_or_default().to_string();
    let message = parts.next().unwrap_or_default().to_string();
    let engine = precis_core::engine::Engine::new(
        std::sync::Arc::new(precis_core::engine::FakeLoader::new(&["fake"])),
        precis_core::engine::Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake".into()],
        },
    );
    let request = TaskRequest {
        task: Task::Digest,
        article: Article {
            title: Some(title),
            text: format!("{body}\n\nMinisters met on Tuesday."),
            url: Some("https://ok.example/a".into()),
            ..Article::default()
        },
        options: TaskOptions {
            to: Some(vec!["ru".into()]),
            clean: false,
            ..TaskOptions::default()
        },
        model: None,
    };
    let mut outcomes = vec![Outcome::Failed {
        origin,
        id: None,
        error: ErrorBody {
            code: "failed".into(),
            message,
        },
    }];
    if let Ok(result) = engine.run(&request, &CancelToken::new(), &|_| {}) {
        outcomes.push(Outcome::Ok(Box::new(result)));
    }
    let markdown = render(&outcomes, Format::Markdown);
    use pulldown_cmark::{Event, Options, Parser, Tag};
    for event in Parser::new_ext(&markdown, Options::all()) {
        match event {
            Event::InlineHtml(h) if matches!(h.as_ref(), "<sub>" | "</sub>") => {}
            Event::Html(h) | Event::InlineHtml(h) => panic!("HTML {h:?} in\n{markdown}"),
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                assert_eq!(dest_url.as_ref(), "https://ok.example/a", "in\n{markdown}");
            }
            _ => {}
        }
    }
    // HTML: the text's `<` always escaped, so no element or attribute of
    // its making; every link is the item's own.
    let html = render(&outcomes, Format::Html);
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script") && !lower.contains("<img"), "{html}");
    for (at, _) in lower.match_indices("href=\"") {
        let target = &html[at + 6..];
        assert!(target.starts_with("https://ok.example/a\""), "{html}");
    }
});
