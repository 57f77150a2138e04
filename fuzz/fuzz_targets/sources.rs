//! The readers of what a feed or a page sends: feeds (RSS, Atom, JSON
//! Feed), HTML pages and fragments, Markdown. Any bytes end in articles or
//! an error, never a panic, and every article's text is text: no markup
//! survives from HTML.

#![no_main]

use libfuzzer_sys::fuzz_target;
use precis_service::sources::{
    fragment_text, is_page, looks_like_feed, markdown_article, page_text, parse_feed,
};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_feed(data);
    if let Ok(items) = parse_feed(data, "https://feed.example/rss") {
        for item in items {
            if let Ok(article) = item.article {
                assert!(!article.text.contains('\0'));
            }
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = is_page(text);
    let _ = fragment_text(text);
    let _ = page_text(text, Some("https://news.example/a"));
    let (title, body) = markdown_article(text);
    if let Some(title) = title {
        assert!(!title.contains('\n'), "{title:?}");
    }
    let _ = body;
});
