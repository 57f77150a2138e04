//! The page at `/` in a real browser: headless Chromium, driven through its
//! WebDriver (Debian's `chromium` and `chromium-driver`), against `precis
//! serve` with the fake model. It pastes an article, runs a digest, waits
//! for the streamed paragraphs, checks what the page shows against what the
//! API answers (summary, translations, a quality flag, the model), that no
//! request left the server's origin, runs a summary of an article given by
//! its address, and checks that the page fits a phone's width;
//! then, on a server with keys, that it asks for one, keeps it in the tab's
//! session storage (never in the address) and sends it. Screenshots are
//! kept under `target/browser/`.
//!
//! `.ci/run` installs Chromium and its driver. Elsewhere, without
//! `chromedriver` on the PATH (or in PRECIS_CHROMEDRIVER), the test says so
//! and passes, unless `CI` is set, where it fails.

#[path = "common/load.rs"]
mod load;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

const SAMPLE: &str = include_str!("../examples/sample-article.txt");

/// A program on the PATH, or named by `env`.
fn program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The directory the screenshots go to: `target/browser`.
fn artefacts() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/debug/deps/browser-… → target
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).expect("target/browser can be made");
    dir
}

/// A chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(binary: &PathBuf) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The article pasted: the sample, with a last paragraph that makes the
/// fake model report a loop (so the page has a quality flag to show).
fn article() -> String {
    format!(
        "{}\n\nThe committee will FAKE_LOOP meet again in March.",
        SAMPLE.trim_end()
    )
}

#[test]
fn the_page_runs_a_digest_in_chromium() {
    let Some(chromedriver) = program("PRECIS_CHROMEDRIVER", &["chromedriver"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromedriver (Debian's chromium-driver)"
        );
        eprintln!("skipped: no chromedriver on the PATH (apt install chromium chromium-driver)");
        return;
    };
    let chromium = program(
        "PRECIS_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let server = load::Server::start_with(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &[
            "--model",
            "fake",
            "--no-cache",
            "--allow-address",
            "127.0.0.1",
        ],
        &[("PRECIS_TEST_FAKE_MODEL", "1")],
        Duration::from_secs(60),
    )
    .expect("the server starts");
    // What the API answers for the same request, to hold the page to.
    let expected: Value = load::client(Duration::from_secs(30))
        .post(format!("{}/v1/digest", server.base))
        .json(&json!({"text": article(), "to": ["ru", "hi"]}))
        .send()
        .and_then(|r| r.json())
        .expect("the API answers");
    let keyed = load::Server::start_with(
        env!("CARGO_BIN_EXE_precis").as_ref(),
        &["--model", "fake", "--no-cache"],
        &[("PRECIS_TEST_FAKE_MODEL", "1"), ("PRECIS_API_KEYS", KEY)],
        Duration::from_secs(60),
    )
    .expect("the server with keys starts");
    let driver = Driver::start(&chromedriver);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(drive(
        &driver.url,
        chromium,
        [&server.base, &keyed.base],
        &expected,
    ));
}

/// A web server on loopback that answers every request with `html`.
fn page_server(html: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                html.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(html.as_bytes());
        }
    });
    base
}

/// The key of the server that has one.
const KEY: &str = "browser-key";

async fn drive(webdriver: &str, chromium: Option<PathBuf>, bases: [&str; 2], expected: &Value) {
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"],
    });
    if let Some(path) = chromium {
        options["binary"] = json!(path);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a Chromium session");
    let result = match steps(&client, bases[0], expected).await {
        Ok(()) => with_key(&client, bases[1]).await,
        Err(e) => Err(e),
    };
    let _ = client.close().await;
    result.unwrap();
}

/// On a server with keys, the page asks for one, keeps it in the tab's
/// session storage (never in the address) and sends it.
async fn with_key(
    client: &fantoccini::Client,
    base: &str,
) -> Result<(), fantoccini::error::CmdError> {
    client.set_window_size(1280, 1800).await?;
    client.goto(&format!("{base}/")).await?;
    wait_for(
        client,
        Locator::XPath("//div[@id='status' and contains(., 'needs an API key')]"),
        20,
    )
    .await?;
    let typed = format!("{KEY}{}", char::from(fantoccini::key::Key::Tab));
    client
        .find(Locator::Id("key"))
        .await?
        .send_keys(&typed)
        .await?;
    wait_for(client, Locator::Css("input[name=lang][value=ru]"), 20).await?;
    client
        .find(Locator::Css("input[name=task][value=summarize]"))
        .await?
        .click()
        .await?;
    // Run from the keyboard: Ctrl+Enter in the text.
    let run = format!(
        "The ministers met on Thursday. They agreed on three points.{}{}",
        char::from(fantoccini::key::Key::Control),
        char::from(fantoccini::key::Key::Enter)
    );
    client
        .find(Locator::Id("article"))
        .await?
        .send_keys(&run)
        .await?;
    wait_done(client).await?;
    let kept = js(
        client,
        "return [sessionStorage.getItem('precis-api-key'), location.href, localStorage.length]",
    )
    .await;
    assert_eq!(kept, json!([KEY, format!("{base}/"), 0]));
    // A reload in the same tab keeps the key: no question asked.
    client.refresh().await?;
    wait_for(client, Locator::Css("input[name=lang][value=ru]"), 20).await?;
    Ok(())
}

/// Waits up to `secs` for an element `locator` finds.
async fn wait_for(
    client: &fantoccini::Client,
    locator: Locator<'_>,
    secs: u64,
) -> Result<(), fantoccini::error::CmdError> {
    client
        .wait()
        .at_most(Duration::from_secs(secs))
        .for_element(locator)
        .await
        .map(|_| ())
}

/// Waits until the page says its run is done.
async fn wait_done(client: &fantoccini::Client) -> Result<(), fantoccini::error::CmdError> {
    let done = "//p[@id='totals' and starts-with(normalize-space(.), 'Done in')]";
    wait_for(client, Locator::XPath(done), 60).await
}

/// Runs `script` in the page and gives its value.
async fn js(client: &fantoccini::Client, script: &str) -> Value {
    client.execute(script, Vec::new()).await.expect(script)
}

async fn steps(
    client: &fantoccini::Client,
    base: &str,
    expected: &Value,
) -> Result<(), fantoccini::error::CmdError> {
    let dir = artefacts();
    client.goto(&format!("{base}/")).await?;
    // The languages arrive from /v1/languages: Russian and Hindi, ticked.
    wait_for(client, Locator::Css("input[name=lang][value=hi]"), 20).await?;
    let ticked = js(
        client,
        "return Array.from(document.querySelectorAll('input[name=lang]:checked')).map(c => c.value)",
    )
    .await;
    assert_eq!(ticked, json!(["hi", "ru"]));

    // Paste the article, choose a digest, run.
    let text = article();
    client
        .find(Locator::Id("article"))
        .await?
        .send_keys(&text)
        .await?;
    let pasted = js(client, "return document.getElementById('article').value").await;
    assert_eq!(pasted.as_str().map(str::len), Some(text.len()));
    client
        .find(Locator::Css("input[name=task][value=digest]"))
        .await?
        .click()
        .await?;
    client.find(Locator::Id("run")).await?.click().await?;
    wait_done(client).await?;

    // The translated paragraphs came as a stream, each as its event, before
    // the result.
    let streamed = js(client, "return Number(document.body.dataset.paragraphs)").await;
    let paragraphs: usize = expected["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["paragraphs"].as_array().unwrap().len() + usize::from(t["title"].is_string()))
        .sum();
    assert_eq!(
        streamed.as_u64(),
        Some(paragraphs as u64),
        "paragraph events"
    );
    // The summary, each translation and the flags, as the API answers them.
    let shown = js(
        client,
        r#"const part = (key) => {
             const s = document.querySelector('section[data-key="' + key + '"]');
             if (!s) return null;
             const body = s.querySelector('.body');
             return {
               lang: body.getAttribute('lang'),
               dir: body.getAttribute('dir'),
               paragraphs: Array.from(body.querySelectorAll('p')).map(p => p.textContent),
               flags: Array.from(s.querySelectorAll('.flags li code')).map(c => c.textContent),
               meta: s.querySelector('.meta').textContent,
             };
           };
           return {summary: part('summary'), ru: part('ru:summary'), hi: part('hi:summary'),
                   status: document.getElementById('status').textContent};"#,
    )
    .await;
    let summary = &shown["summary"];
    assert_eq!(
        summary["paragraphs"],
        json!([expected["summary"]["text"]]),
        "{shown}"
    );
    assert_eq!(summary["lang"], "en");
    assert!(
        summary["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|c| c == "loop detected")),
        "{shown}"
    );
    assert!(
        summary["meta"].as_str().unwrap().contains("Model: fake"),
        "{shown}"
    );
    for (i, language) in ["ru", "hi"].into_iter().enumerate() {
        let translation = &expected["translations"][i];
        assert_eq!(translation["language"], language);
        let part = &shown[language];
        assert_eq!(part["lang"], language, "{shown}");
        assert_eq!(part["dir"], "auto", "{shown}");
        assert_eq!(part["paragraphs"], translation["paragraphs"], "{shown}");
        let codes: Vec<Value> = translation["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| json!(f["code"].as_str().unwrap().replace('_', " ")))
            .collect();
        assert_eq!(part["flags"], json!(codes), "{shown}");
    }
    assert!(
        shown["status"].as_str().unwrap().contains("quality flag"),
        "{shown}"
    );

    // Copy as Markdown works without leaving the page.
    client.find(Locator::Id("copy")).await?.click().await?;
    wait_for(
        client,
        Locator::XPath("//div[@id='status' and contains(., 'Markdown is copied')]"),
        10,
    )
    .await?;

    // Every request the page made went to its own origin.
    let requests = js(
        client,
        "return performance.getEntries().map(e => e.name).filter(n => /^[a-z]+:/.test(n))",
    )
    .await;
    let requests = requests.as_array().unwrap();
    assert!(
        requests
            .iter()
            .any(|r| r.as_str().unwrap().ends_with("/v1/digest")),
        "{requests:?}"
    );
    for r in requests {
        let r = r.as_str().unwrap();
        assert!(
            r.starts_with(&format!("{base}/")),
            "a request left the origin: {r}"
        );
    }
    std::fs::write(dir.join("page.png"), client.screenshot().await?).expect("screenshot kept");

    // An article given by its address: the server fetches the page.
    let story = format!(
        "<html lang=\"en\"><head><title>Dam talks resume</title></head><body><nav>Home | World</nav><article><h1>Dam talks resume</h1>{}</article></body></html>",
        SAMPLE
            .split("\n\n")
            .skip(1)
            .map(|p| format!("<p>{p}</p>"))
            .collect::<String>()
    );
    let url = format!("{}/story", page_server(story));
    js(
        client,
        "document.getElementById('article').value = ''; return null",
    )
    .await;
    client
        .find(Locator::Id("url"))
        .await?
        .send_keys(&url)
        .await?;
    client
        .find(Locator::Css("input[name=task][value=summarize]"))
        .await?
        .click()
        .await?;
    client.find(Locator::Id("run")).await?.click().await?;
    wait_done(client).await?;
    let fetched = js(
        client,
        "return [document.getElementById('doc-title').textContent, document.querySelectorAll('section.part').length, document.querySelector('section[data-key=summary] .body').textContent]",
    )
    .await;
    assert_eq!(fetched[0], "Dam talks resume", "{fetched}");
    assert_eq!(fetched[1], 1, "{fetched}");
    assert!(!fetched[2].as_str().unwrap().trim().is_empty(), "{fetched}");

    // At a phone's width nothing runs off the side.
    client.set_window_size(390, 1600).await?;
    let overflow = js(
        client,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
    )
    .await;
    assert_eq!(overflow, json!(0), "the page is wider than a phone");
    std::fs::write(dir.join("page-phone.png"), client.screenshot().await?)
        .expect("screenshot kept");
    Ok(())
}
