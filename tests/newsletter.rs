//! The newsletter path without a real model: the example feeds (RSS 2.0,
//! Atom, JSON Feed 1.1) read into articles, a digest of each article by the
//! deterministic fake model, and the Markdown, HTML and JSON Feed outputs
//! pinned by snapshots. Feed parsing failures are checked item by item.

use std::sync::Arc;

use precis::cli::input::read_inputs;
use precis_core::engine::{FakeLoader, Routing};
use precis_core::task::{CancelToken, Task, TaskOptions, TaskRequest};
use precis_service::app::Services;
use precis_service::render::{json_feeds, render, ErrorBody, Format, Outcome};
use precis_service::sources::parse_feed;

fn feed(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/feeds")
        .join(name)
}

/// The digests (into ru and hi) of every item of `input`, as the CLI writes them.
fn digests(input: &std::path::Path) -> Vec<Outcome> {
    let services = Services::assemble(
        Arc::new(FakeLoader::new(&["fake"])),
        Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake".into()],
        },
        None,
        None,
    );
    let options = TaskOptions {
        to: Some(vec!["ru".into(), "hi".into()]),
        ..TaskOptions::default()
    };
    read_inputs(&[input.to_path_buf()], false)
        .unwrap()
        .into_iter()
        .map(|item| {
            let run = item.article.map_err(|message| ErrorBody {
                code: "unreadable_input".into(),
                message,
            });
            match run.and_then(|article| {
                let request = TaskRequest {
                    task: Task::Digest,
                    article,
                    options: options.clone(),
                    model: None,
                };
                services
                    .engine
                    .run(&request, &CancelToken::new(), &|_| {})
                    .map_err(|e| ErrorBody {
                        code: "failed".into(),
                        message: e.to_string(),
                    })
            }) {
                Ok(r) => Outcome::Ok(Box::new(r)),
                Err(error) => Outcome::Failed {
                    origin: item.origin,
                    id: None,
                    error,
                },
            }
        })
        .collect()
}

fn titles(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok(r) => r.title.clone().unwrap_or_default(),
            Outcome::Failed { error, .. } => format!("failed: {}", error.message),
        })
        .collect()
}

#[test]
fn the_three_feed_formats_give_the_same_three_articles() {
    let rss = digests(&feed("basin-weekly.rss"));
    assert_eq!(
        titles(&rss),
        [
            "Four river nations strike a stopgap deal on sharing the shrinking Vessa",
            "Dry years on the Vessa cut rice planting and barge traffic",
            "Critics say the Vessa accord ignores groundwater as treaty talks loom",
        ]
    );
    for other in ["basin-weekly.atom", "basin-weekly.json"] {
        assert_eq!(titles(&digests(&feed(other))), titles(&rss), "{other}");
    }
    // Links and ids come through; every paragraph of an item's HTML is kept.
    let Outcome::Ok(first) = &rss[0] else {
        panic!("the first item failed")
    };
    assert_eq!(first.id.as_deref(), Some("vessa-deal"));
    assert_eq!(
        first.url.as_deref(),
        Some("https://news.example/2024/05/vessa-deal")
    );
    assert_eq!(first.input.paragraphs_kept, 4);
}

#[test]
fn results_read_back_from_json_are_the_same_results() {
    for outcome in digests(&feed("basin-weekly.rss")) {
        let Outcome::Ok(result) = outcome else {
            panic!("an item failed")
        };
        let json = serde_json::to_value(&result).unwrap();
        let back: precis_core::task::TaskResult = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(&back, result.as_ref());
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }
}

#[test]
fn markdown_newsletter_snapshot() {
    let outcomes = digests(&feed("basin-weekly.rss"));
    insta::assert_snapshot!(render(&outcomes, Format::Markdown));
}

#[test]
fn html_newsletter_snapshot() {
    let outcomes = digests(&feed("basin-weekly.rss"));
    let html = render(&outcomes, Format::Html);
    assert_eq!(html.matches("<article>").count(), 3);
    // Self-contained: nothing fetched from elsewhere, no script.
    assert!(!html.contains("<script"));
    assert!(!html.contains("src="));
    assert!(!html.contains("<link"));
    insta::assert_snapshot!(html);
}

#[test]
fn json_feed_snapshot_one_feed_per_language() {
    let outcomes = digests(&feed("basin-weekly.json"));
    let feeds = json_feeds(&outcomes, "precis digest");
    let languages: Vec<&str> = feeds.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(languages, ["en", "ru", "hi"]);
    for (lang, text) in &feeds {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["version"], "https://jsonfeed.org/version/1.1");
        assert_eq!(v["language"], lang.as_str());
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        for item in v["items"].as_array().unwrap() {
            assert!(item["summary"].is_string());
            assert_eq!(item["language"], lang.as_str());
        }
    }
    insta::assert_snapshot!(feeds[1].1);
}

#[test]
fn text_from_a_feed_is_escaped_in_html_and_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.rss");
    std::fs::write(
        &path,
        r#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>&lt;script&gt;alert(1)&lt;/script&gt; Talks resume</title>
<link>javascript:alert(2)</link><guid>x</guid>
<description>Ministers met on Tuesday &amp; agreed to &lt;b&gt;talk&lt;/b&gt; again. The talks will resume in June.</description></item>
</channel></rss>"#,
    )
    .unwrap();
    let outcomes = digests(&path);
    let html = render(&outcomes, Format::Html);
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; Talks resume"));
    assert!(!html.contains("javascript:"), "{html}");
    let md = render(&outcomes, Format::Markdown);
    assert!(!md.contains("<script>"), "{md}");
    assert!(!md.contains("javascript:"), "{md}");
}

#[test]
fn malformed_feeds_and_items_are_errors_that_name_them() {
    // Not a feed at all.
    let e = parse_feed(b"<rss version=\"2.0\"><channel><item>", "broken.rss").unwrap_err();
    assert!(e.starts_with("broken.rss is not a valid RSS"), "{e}");
    let e = parse_feed(
        b"{\"version\": \"https://jsonfeed.org/version/1.1\", \"items\": 5}",
        "f.json",
    )
    .unwrap_err();
    assert!(e.contains("f.json"), "{e}");
    let e = parse_feed(
        br#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>"#,
        "empty.rss",
    )
    .unwrap_err();
    assert_eq!(e, "empty.rss: the feed has no items");
    // An item without text fails alone, named by position and title; a
    // Russian item is refused when run, not translated.
    let feed = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>Empty one</title><link>https://news.example/a</link></item>
<item><title>Fine</title><description>Ministers from four countries met on Tuesday and agreed to share the river's water through the dry season.</description></item>
<item><title>Русская новость</title><description>Министры четырёх стран договорились во вторник о временном плане раздела воды реки на время засушливого сезона.</description></item>
</channel></rss>"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.rss");
    std::fs::write(&path, feed).unwrap();
    let outcomes = digests(&path);
    assert_eq!(outcomes.len(), 3);
    let Outcome::Failed { origin, error, .. } = &outcomes[0] else {
        panic!("the empty item did not fail")
    };
    assert!(origin.ends_with("mixed.rss#1 (\"Empty one\")"), "{origin}");
    assert!(error.message.contains("has no text"), "{}", error.message);
    assert!(matches!(outcomes[1], Outcome::Ok(_)));
    let Outcome::Failed { error, .. } = &outcomes[2] else {
        panic!("the Russian item was not refused")
    };
    assert!(error.message.contains("Russian"), "{}", error.message);
}

/// A local web server for the fetch tests: a feed of teasers whose links
/// point at article pages, redirect chains, a large body and a slow one.
/// Gives its base URL; it runs until the test process ends.
fn web_server() -> String {
    use axum::response::{Html, IntoResponse, Redirect};
    use axum::routing::get;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sample = include_str!("../examples/sample-article.txt");
    let paragraphs: Vec<String> = sample
        .split("\n\n")
        .skip(1)
        .map(|p| format!("<p>{}</p>", p.trim()))
        .collect();
    let page = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><title>Vessa deal</title></head><body>\
         <nav><a href=\"/\">Home</a> <a href=\"/world\">World</a></nav>\
         <article><h1>Four river nations strike a stopgap deal</h1>{}</article>\
         <footer>Subscribe to our newsletter.</footer></body></html>",
        paragraphs.join("")
    );
    let feed = format!(
        r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Local</title>
<item><title>Deal struck</title><link>{base}/a/1</link><guid>a1</guid><description>Ministers agreed on a stopgap plan.</description></item>
<item><title>Gone</title><link>{base}/missing</link><guid>a2</guid><description>A teaser whose page is gone.</description></item>
</channel></rss>"#
    );
    let app = axum::Router::new()
        .route(
            "/feed.rss",
            get(move || async move { ([("content-type", "application/rss+xml")], feed) }),
        )
        .route("/a/1", get(move || async move { Html(page) }))
        .route(
            "/r/{n}",
            get(
                |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                    if n == 0 {
                        "arrived".into_response()
                    } else {
                        Redirect::temporary(&format!("/r/{}", n - 1)).into_response()
                    }
                },
            ),
        )
        .route("/big", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                "late"
            }),
        );
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    base
}

fn loopback_allowed() -> precis_service::fetch::FetchPolicy {
    precis_service::fetch::FetchPolicy {
        allow: vec!["127.0.0.1".parse().unwrap()],
        ..precis_service::fetch::FetchPolicy::default()
    }
}

#[test]
fn fetching_refuses_private_addresses_unless_allowed_and_keeps_its_limits() {
    use precis_service::fetch::{fetch_blocking, FetchError, FetchPolicy};
    let base = web_server();
    // Loopback is refused by default, and the message says how to allow it.
    let e = fetch_blocking(&format!("{base}/feed.rss"), &FetchPolicy::default()).unwrap_err();
    assert!(matches!(e, FetchError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("--allow-address 127.0.0.1"), "{e}");
    let e = fetch_blocking("file:///etc/passwd", &loopback_allowed()).unwrap_err();
    assert!(matches!(e, FetchError::BadUrl(_)), "{e}");
    // Allowed, it is fetched.
    let feed = fetch_blocking(&format!("{base}/feed.rss"), &loopback_allowed()).unwrap();
    assert!(String::from_utf8_lossy(&feed.body).contains("Deal struck"));
    // Five redirects are followed, a sixth is not.
    let ok = fetch_blocking(&format!("{base}/r/5"), &loopback_allowed()).unwrap();
    assert_eq!(ok.body, b"arrived");
    assert!(ok.url.ends_with("/r/0"));
    let e = fetch_blocking(&format!("{base}/r/6"), &loopback_allowed()).unwrap_err();
    assert!(matches!(e, FetchError::TooManyRedirects(_)), "{e}");
    // Size and time limits.
    let small = FetchPolicy {
        max_bytes: 1000,
        ..loopback_allowed()
    };
    let e = fetch_blocking(&format!("{base}/big"), &small).unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
    let quick = FetchPolicy {
        timeout: std::time::Duration::from_millis(300),
        ..loopback_allowed()
    };
    let e = fetch_blocking(&format!("{base}/slow"), &quick).unwrap_err();
    assert!(matches!(e, FetchError::Timeout(_)), "{e}");
    let e = fetch_blocking(&format!("{base}/missing"), &loopback_allowed()).unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
}

#[test]
fn a_feed_url_with_teasers_is_summarized_from_the_linked_articles() {
    use precis::cli::input::{fetch_articles, read_sources};
    let base = web_server();
    let policy = loopback_allowed();
    let mut items = read_sources(&[format!("{base}/feed.rss").into()], false, &policy).unwrap();
    assert_eq!(items.len(), 2);
    let teaser = items[0].article.as_ref().unwrap().text.clone();
    assert_eq!(teaser, "Ministers agreed on a stopgap plan.");
    fetch_articles(&mut items, &policy);
    // The linked page's main text, without its navigation and footer.
    let article = items[0].article.as_ref().unwrap();
    assert_eq!(article.title.as_deref(), Some("Deal struck"));
    assert!(article.text.contains("Under the interim accord, Belmora"));
    assert!(!article.text.contains("Subscribe to our newsletter"));
    assert!(!article.text.contains("World"));
    assert!(article.text.split_whitespace().count() > 500);
    // The item whose page is gone fails alone, naming itself and the page.
    let e = items[1].article.as_ref().unwrap_err();
    assert!(
        e.contains("#2 (\"Gone\")") && e.contains("/missing") && e.contains("404"),
        "{e}"
    );
    // A page URL as an input is read as an article.
    let items = read_sources(&[format!("{base}/a/1").into()], false, &policy).unwrap();
    let article = items[0].article.as_ref().unwrap();
    assert_eq!(article.url.as_deref(), Some(format!("{base}/a/1").as_str()));
    assert!(article.text.contains("Belmora"));
}

/// Pieces of hostile feed text: links, images, HTML, entities, reference
/// definitions, autolinks and block markers, in every combination.
const HOSTILE: &[&str] = &[
    "[x](javascript:alert(1))",
    "![i](http://evil.example/p.png)",
    "<a href=\"javascript:x\">a</a>",
    "<img src=x onerror=y>",
    "&#106;avascript:",
    "&lt;b&gt;",
    "[r]: javascript:z",
    "\n[r]: http://ref.example/\n",
    "[r]",
    "<https://auto.example/>",
    "<javascript:q>",
    "\n# ",
    "\n- ",
    "\n1. ",
    "\n2) ",
    "\n> ",
    "\n    code",
    "\n===\n",
    "\n---\n",
    "|a|b|\n|-|-|\n",
    "`",
    "*",
    "_",
    "~~",
    "\\",
    "\r",
    "\r\n",
    "(",
    ")",
    "[",
    "]",
    "!",
    " ",
    "Ministers met on Tuesday.",
    "The talks ended. ",
];

fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop::collection::vec(prop::sample::select(HOSTILE), 1..10).prop_map(|v| v.concat())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Whatever a feed's titles, texts and links hold, the Markdown digest
    /// carries no HTML but its own and no link or image but the item's own
    /// http(s) URL.
    #[test]
    fn markdown_carries_no_link_or_html_the_input_did_not_have(
        title in hostile(),
        text in hostile(),
        origin in hostile(),
        message in hostile(),
    ) {
        use pulldown_cmark::{Event, Options, Parser, Tag};
        let services = Services::assemble(
            Arc::new(FakeLoader::new(&["fake"])),
            Routing {
                summarizers: vec!["fake".into()],
                translators: vec!["fake".into()],
            },
            None,
            None,
        );
        let request = TaskRequest {
            task: Task::Digest,
            article: precis_core::task::Article {
                title: Some(title),
                text: format!("{text}\n\nMinisters met on Tuesday. {text}"),
                url: Some("https://ok.example/a".into()),
                ..Default::default()
            },
            options: TaskOptions {
                to: Some(vec!["ru".into()]),
                clean: false,
                ..TaskOptions::default()
            },
            model: None,
        };
        let ran = services.engine.run(&request, &CancelToken::new(), &|_| {});
        let mut outcomes = vec![Outcome::Failed {
            origin,
            id: None,
            error: ErrorBody { code: "failed".into(), message },
        }];
        if let Ok(result) = ran {
            outcomes.push(Outcome::Ok(Box::new(result)));
        }
        let markdown = render(&outcomes, Format::Markdown);
        for event in Parser::new_ext(&markdown, Options::all()) {
            match event {
                // precis's own footnote markup, and nothing else.
                Event::InlineHtml(h) if matches!(h.as_ref(), "<sub>" | "</sub>") => {}
                Event::Html(h) | Event::InlineHtml(h) => {
                    proptest::prop_assert!(false, "HTML {h:?} in\n{markdown}")
                }
                Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                    proptest::prop_assert_eq!(dest_url.as_ref(), "https://ok.example/a", "in\n{}", markdown)
                }
                _ => {}
            }
        }
    }
}
