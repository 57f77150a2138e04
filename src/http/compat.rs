//! LibreTranslate's API, so that the tools that already call a self-hosted
//! translator (CMS and newsletter plugins, browser extensions, chat bots,
//! its client libraries) can call precis unchanged: `POST /translate`,
//! `POST /detect`, `GET /languages` and `GET /frontend/settings`, with its
//! bodies (JSON, a form, or a multipart form), its `api_key` in the body and
//! its error shape, `{"error": "…"}` with 400, 403, 429 or 500.
//!
//! They run through the same engine, limits, admission, cache, metrics and
//! keys as `/v1/*`: a text's lines (or an HTML text's text nodes) are the
//! paragraphs of one article translated by `Task::Translate` without
//! clean-up, and its translation is put back where they were.
//!
//! A form body is accepted here, unlike on `/v1/*` (JSON only): that is
//! what LibreTranslate's clients send. A web page can make a visitor's
//! browser post such a form to a keyless server on their machine, but can
//! never read the answer; what it costs is bounded by the server's limits
//! and queue, as for any client. `--no-compat` turns these routes off.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::FailureCauses;
use super::ops::ApiKeys;
use super::{admit, check_call, read_bytes, run_calls, ApiError, AppState, ErrorCode, TaskCall};
use precis_core::task::{detect_language, Article, Task, TaskOptions, TaskRequest, TaskResult};
use precis_service::markup::{decode_entities, escape_text, html_pieces, HtmlPiece};

/// LibreTranslate's routes, as it documents them.
pub(super) fn routes(app: axum::Router<AppState>) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    app.route("/translate", post(translate))
        .route("/detect", post(detect))
        .route("/languages", get(languages).post(languages))
        .route("/frontend/settings", get(frontend_settings))
}

/// Routes whose key may come in the body: the key check is theirs (see
/// [`BodyKey`]).
pub(super) fn takes_body_key(path: &str) -> bool {
    matches!(path, "/translate" | "/detect")
}

/// Routes LibreTranslate serves without a key: what a client reads before
/// it has one.
pub(super) fn open_route(path: &str) -> bool {
    matches!(path, "/languages" | "/frontend/settings")
}

/// The key check left to a compatible route by the key middleware, on a
/// server with keys: the request's `Authorization` header did not carry a
/// known key, so its body must.
#[derive(Clone)]
pub(super) struct BodyKey {
    /// The server's keys.
    pub keys: ApiKeys,
    /// Whether the header carried a key (an unknown one).
    pub header_given: bool,
}

/// An error in LibreTranslate's shape: `{"error": "…"}`.
#[derive(Debug)]
pub struct CompatError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    cause: Option<String>,
}

/// LibreTranslate's error body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "xx is not supported"}))]
pub struct CompatErrorBody {
    /// What went wrong, and what to do.
    pub error: String,
}

impl CompatError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    fn missing(name: &str) -> Self {
        Self::bad(format!("Invalid request: missing {name} parameter"))
    }
}

/// precis's errors in LibreTranslate's statuses: a refused key is 403, a
/// full queue 429, a failure of the server 500, anything the caller can
/// change 400; the message is precis's own.
impl From<ApiError> for CompatError {
    fn from(e: ApiError) -> Self {
        let status = match e.code.status() {
            429 => StatusCode::TOO_MANY_REQUESTS,
            401 | 403 => StatusCode::FORBIDDEN,
            s if s >= 500 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            message: e.message,
            retry_after: e.retry_after,
            cause: e.cause,
        }
    }
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(CompatErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, after.into());
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(FailureCauses(vec![cause]));
        }
        response
    }
}

/// A request's parameters: its query string's, then its body's (a JSON
/// object, a form or a multipart form), a body's winning.
struct Params(Map<String, Value>);

impl Params {
    async fn read(req: Request, state: &AppState) -> Result<Self, CompatError> {
        let mut params = Map::new();
        if let Some(query) = req.uri().query() {
            form_into(query.as_bytes(), &mut params)?;
        }
        let kind = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match kind.as_str() {
            "application/json" => {
                let bytes = read_bytes(req, state).await?;
                let value = super::parse_value(&bytes)?;
                let Value::Object(body) = value else {
                    return Err(CompatError::bad("Invalid JSON format"));
                };
                params.extend(body);
            }
            "multipart/form-data" => {
                let timeout = state.limits.body_timeout;
                tokio::time::timeout(timeout, multipart_into(req, state, &mut params))
                    .await
                    .map_err(|_| {
                        CompatError::bad("the body did not arrive in time: send it at once")
                    })??;
            }
            // A form, or a body without a type (urllib's and curl's `-d`
            // send one as a form).
            "application/x-www-form-urlencoded" | "" => {
                let bytes = read_bytes(req, state).await?;
                super::check_utf8(&bytes)?;
                form_into(&bytes, &mut params)?;
            }
            other => {
                return Err(CompatError::bad(format!(
                "a body of type `{other}` is not read here: send JSON, a form or a multipart form"
            )))
            }
        }
        Ok(Self(params))
    }

    /// A text parameter (a number counts as its digits); empty counts as absent.
    fn text(&self, name: &str) -> Result<Option<String>, CompatError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(CompatError::bad(format!(
                "Invalid request: {name} parameter must be a string"
            ))),
        }
    }

    fn required(&self, name: &str) -> Result<String, CompatError> {
        self.text(name)?.ok_or_else(|| CompatError::missing(name))
    }

    /// `q`: one text, or an array of texts (a batch).
    fn texts(&self) -> Result<Texts, CompatError> {
        match self.0.get("q") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(CompatError::bad(
                        "Invalid request: q must be a string or an array of strings",
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Texts::Many),
            Some(Value::Array(_)) => Err(CompatError::missing("q")),
            _ => self.required("q").map(Texts::One),
        }
    }

    /// The API key: LibreTranslate's `api_key`, or `apiKey` as some of its
    /// clients send it.
    fn api_key(&self) -> Result<Option<String>, CompatError> {
        Ok(self.text("api_key")?.or(self.text("apiKey")?))
    }

    /// `alternatives`: how many other translations the caller would like.
    fn alternatives(&self) -> Result<usize, CompatError> {
        let not_number =
            || CompatError::bad("Invalid request: alternatives parameter is not a number");
        match self.0.get("alternatives") {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n.as_i64().map(|n| n.max(0) as usize).ok_or_else(not_number),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(0),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(|n| n.max(0) as usize)
                .map_err(|_| not_number()),
            Some(_) => Err(not_number()),
        }
    }
}

/// Adds a form's fields to `params` (the first of a repeated name wins, as
/// LibreTranslate reads them).
fn form_into(bytes: &[u8], params: &mut Map<String, Value>) -> Result<(), CompatError> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
        .map_err(|e| CompatError::bad(format!("the form cannot be read: {e}")))?;
    for (name, value) in fields {
        params.entry(name).or_insert(Value::String(value));
    }
    Ok(())
}

/// Adds a multipart form's text fields to `params`; a file is refused.
async fn multipart_into(
    req: Request,
    state: &AppState,
    params: &mut Map<String, Value>,
) -> Result<(), CompatError> {
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CompatError::from(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is larger than this server accepts (see --max-body-bytes)",
            ))
        } else {
            CompatError::bad(format!("the multipart form cannot be read: {e}"))
        }
    };
    let mut form = Multipart::from_request(req, state)
        .await
        .map_err(|e| CompatError::bad(format!("the multipart form cannot be read: {e}")))?;
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        if field.file_name().is_some() {
            return Err(CompatError::bad(
                "files are not translated here: send the text as `q`",
            ));
        }
        let name = field.name().unwrap_or_default().to_string();
        let value = field.text().await.map_err(unreadable)?;
        params.entry(name).or_insert(Value::String(value));
    }
    Ok(())
}

/// `q` as sent.
enum Texts {
    One(String),
    Many(Vec<String>),
}

/// Checks the request's key, when the key middleware left that to the
/// route: a known `api_key` passes; an unknown one (or an unknown header
/// key) is 403; none is 400, as LibreTranslate answers both.
fn check_key(check: Option<&BodyKey>, params: &Params) -> Result<(), CompatError> {
    let Some(check) = check else {
        return Ok(());
    };
    match params.api_key()? {
        Some(key) if check.keys.accepts(&key) => Ok(()),
        Some(_) => Err(invalid_key()),
        None if check.header_given => Err(invalid_key()),
        None => Err(CompatError::bad(
            "this server needs an API key: send `api_key` in the body or `Authorization: Bearer KEY`; its operator gives them out",
        )),
    }
}

fn invalid_key() -> CompatError {
    CompatError {
        status: StatusCode::FORBIDDEN,
        message: "Invalid API key".into(),
        retry_after: None,
        cause: None,
    }
}

/// A language LibreTranslate's way: its code, its name, and the languages
/// it is translated into here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"code": "en", "name": "English", "targets": ["hi", "ru"]}))]
pub struct CompatLanguage {
    /// ISO 639-1 code.
    pub code: String,
    /// English name.
    pub name: String,
    /// Codes it is translated into (none: only translated into).
    pub targets: Vec<String>,
}

fn language_list(state: &AppState) -> Vec<CompatLanguage> {
    state
        .engine
        .translation_pairs()
        .into_iter()
        .map(|(code, targets)| CompatLanguage {
            name: name_of(&code),
            code,
            targets,
        })
        .collect()
}

fn name_of(code: &str) -> String {
    precis_core::task::language_name(code).map_or_else(|| code.to_string(), str::to_string)
}

/// The languages the present translators read and write, each with the
/// languages it is translated into (LibreTranslate's `/languages`; open
/// without a key, as there).
#[utoipa::path(get, path = "/languages", tag = "libretranslate",
    responses((status = 200, description = "languages and their targets", body = Vec<CompatLanguage>)))]
pub(super) async fn languages(State(state): State<AppState>) -> Json<Vec<CompatLanguage>> {
    Json(language_list(&state))
}

/// What LibreTranslate's web page reads about a server.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontendSettings {
    /// Most characters in one text (`--max-chars`).
    pub char_limit: i64,
    /// Milliseconds a page waits after typing before it translates.
    pub frontend_timeout: u64,
    /// Whether the server has API keys.
    pub api_keys: bool,
    /// Whether a key is needed (always, when the server has keys).
    pub key_required: bool,
    /// Suggestions are not taken.
    pub suggestions: bool,
    /// Files are not translated.
    pub files_translation: bool,
    /// No file formats.
    pub supported_files_format: Vec<String>,
    /// The languages a page starts with.
    pub language: FrontendLanguages,
}

/// A page's starting languages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FrontendLanguages {
    /// `auto`.
    pub source: FrontendLanguage,
    /// The first language a digest translates into by default.
    pub target: FrontendLanguage,
}

/// A language's code and name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FrontendLanguage {
    /// Code.
    pub code: String,
    /// English name.
    pub name: String,
}

/// The server's settings as LibreTranslate's web page and clients read them.
#[utoipa::path(get, path = "/frontend/settings", tag = "libretranslate",
    responses((status = 200, description = "settings", body = FrontendSettings)))]
pub(super) async fn frontend_settings(State(state): State<AppState>) -> Json<FrontendSettings> {
    let target = state
        .engine
        .default_targets()
        .into_iter()
        .next()
        .unwrap_or_else(|| "en".into());
    let keys = state.api_keys.is_some();
    Json(FrontendSettings {
        char_limit: i64::try_from(state.limits.max_chars).unwrap_or(i64::MAX),
        frontend_timeout: 500,
        api_keys: keys,
        key_required: keys,
        suggestions: false,
        files_translation: false,
        supported_files_format: Vec::new(),
        language: FrontendLanguages {
            source: FrontendLanguage {
                code: "auto".into(),
                name: "Auto Detect".into(),
            },
            target: FrontendLanguage {
                name: name_of(&target),
                code: target,
            },
        },
    })
}

/// A detected language, LibreTranslate's way.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"confidence": 90.0, "language": "ru"}))]
pub struct DetectedLanguage {
    /// 0 to 100.
    pub confidence: f64,
    /// ISO 639-1 code.
    pub language: String,
}

/// Characters of a text detection reads: enough to tell a language, few
/// enough to read on the request's own thread.
const DETECT_CHARS: usize = 2_000;

/// The language of `text` (its first [`DETECT_CHARS`]) among `among`;
/// English with no confidence when detection cannot tell, as LibreTranslate
/// answers.
fn detected(text: &str, among: &[String]) -> DetectedLanguage {
    let end = text
        .char_indices()
        .nth(DETECT_CHARS)
        .map_or(text.len(), |(i, _)| i);
    match detect_language(&text[..end], among) {
        Some(d) => DetectedLanguage {
            confidence: (d.confidence * 1000.0).round() / 10.0,
            language: d.code,
        },
        None => DetectedLanguage {
            confidence: 0.0,
            language: "en".into(),
        },
    }
}

/// `POST /detect` body (also as a form).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a description for the document, never built
pub struct CompatDetectBody {
    /// The text.
    q: String,
    /// The API key, when the server has keys (or `Authorization: Bearer KEY`).
    api_key: Option<String>,
}

/// The language of a text, among those the present translators read or
/// write.
#[utoipa::path(post, path = "/detect", tag = "libretranslate",
    request_body(content = CompatDetectBody, content_type = "application/json"),
    responses(
        (status = 200, description = "the language found", body = Vec<DetectedLanguage>),
        (status = 400, description = "a parameter is missing or wrong", body = CompatErrorBody),
        (status = 403, description = "the API key is not valid", body = CompatErrorBody),
    ))]
pub(super) async fn detect(
    State(state): State<AppState>,
    key: Option<Extension<BodyKey>>,
    req: Request,
) -> Result<Json<Vec<DetectedLanguage>>, CompatError> {
    let params = Params::read(req, &state).await?;
    check_key(key.as_deref(), &params)?;
    let text = match params.texts()? {
        Texts::One(text) => text,
        Texts::Many(texts) => texts.join("\n"),
    };
    let chars = text.chars().count();
    if chars > state.limits.max_chars {
        return Err(CompatError::bad(format!(
            "Invalid request: request ({chars}) exceeds text limit ({})",
            state.limits.max_chars
        )));
    }
    let among: Vec<String> = language_list(&state).into_iter().map(|l| l.code).collect();
    Ok(Json(vec![detected(&text, &among)]))
}

/// `POST /translate` body (also as a form, or a multipart form).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a description for the document, never built
pub struct CompatTranslateBody {
    /// The text, or an array of texts (then `translatedText` is an array).
    #[schema(value_type = Object, example = json!("Hello!"))]
    q: Value,
    /// Its language, or `auto` to detect it.
    source: String,
    /// The language to translate into.
    target: String,
    /// `text` (default; each line is translated) or `html` (the markup is
    /// kept and its text translated).
    format: Option<String>,
    /// Other translations wanted: accepted; none are made (the array is empty).
    alternatives: Option<u32>,
    /// The API key, when the server has keys (or `Authorization: Bearer KEY`).
    api_key: Option<String>,
}

/// `POST /translate` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"translatedText": "Привет!", "detectedLanguage": {"confidence": 90.0, "language": "en"}}))]
pub struct TranslateAnswer {
    /// The translation (an array when `q` was one).
    #[schema(value_type = Object)]
    pub translated_text: Value,
    /// With `source: auto`: the language found (an array when `q` was one).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detected_language: Option<Value>,
    /// With `alternatives`: other translations (none are made).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub alternatives: Option<Value>,
}

/// Translates a text, or each text of an array, keeping its lines (or its
/// HTML markup), with precis's translators.
#[utoipa::path(post, path = "/translate", tag = "libretranslate",
    request_body(content = CompatTranslateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "the translation", body = TranslateAnswer),
        (status = 400, description = "a parameter is missing or wrong, or the language pair is not served", body = CompatErrorBody),
        (status = 403, description = "the API key is not valid", body = CompatErrorBody),
        (status = 429, description = "the server's queue is full: retry after `Retry-After` seconds", body = CompatErrorBody),
        (status = 500, description = "the translation failed inside the server", body = CompatErrorBody),
    ))]
pub(super) async fn translate(
    State(state): State<AppState>,
    key: Option<Extension<BodyKey>>,
    req: Request,
) -> Result<Json<TranslateAnswer>, CompatError> {
    let params = Params::read(req, &state).await?;
    check_key(key.as_deref(), &params)?;
    let texts = params.texts()?;
    let source = language_code(&params.required("source")?);
    let target = language_code(&params.required("target")?);
    let html = match params.text("format")?.as_deref() {
        None | Some("text") => false,
        Some("html") => true,
        Some(other) => {
            return Err(CompatError::bad(format!(
                "{other} format is not supported: use text or html"
            )))
        }
    };
    let alternatives = params.alternatives()?;
    let (batch, items) = match texts {
        Texts::One(text) => (false, vec![text]),
        Texts::Many(items) => (true, items),
    };
    if items.len() > state.limits.max_batch {
        return Err(CompatError::bad(format!(
            "Invalid request: request ({}) exceeds text limit ({}) (--max-batch)",
            items.len(),
            state.limits.max_batch
        )));
    }
    let pairs = state.engine.translation_pairs();
    let known = |code: &str| pairs.iter().any(|(c, _)| c == code);
    if !known(&target) {
        return Err(CompatError::bad(format!("{target} is not supported")));
    }
    let documents: Vec<Document> = items.iter().map(|t| Document::new(t, html)).collect();
    let auto = source == "auto";
    let detection = auto.then(|| {
        // On the text alone (not its markup), among every language the
        // translators know, so that text in one they do not translate into
        // the target is refused, not passed off.
        let text: Vec<&str> = documents.iter().flat_map(Document::segments).collect();
        let among: Vec<String> = pairs.iter().map(|(c, _)| c.clone()).collect();
        detected(&text.join("\n"), &among)
    });
    let from = match &detection {
        Some(d) => d.language.clone(),
        None => source,
    };
    if !known(&from) {
        return Err(CompatError::bad(format!("{from} is not supported")));
    }
    let served = from == target || pairs.iter().any(|(c, t)| *c == from && t.contains(&target));
    if !served {
        return Err(CompatError::bad(format!(
            "{} ({target}) is not available as a target language from {} ({from})",
            name_of(&target),
            name_of(&from)
        )));
    }
    let translated = translate_documents(&state, &documents, &from, &target).await?;
    let answer = |one: Vec<Value>| -> Value {
        if batch {
            Value::Array(one)
        } else {
            one.into_iter().next().unwrap_or(Value::Null)
        }
    };
    let count = translated.len();
    let detected_language = detection.map(|d| {
        let d = serde_json::to_value(d).unwrap_or(Value::Null);
        answer(vec![d; count])
    });
    Ok(Json(TranslateAnswer {
        translated_text: answer(translated.into_iter().map(Value::String).collect()),
        detected_language,
        alternatives: (alternatives > 0).then(|| answer(vec![Value::Array(Vec::new()); count])),
    }))
}

/// A language code as precis names it: `pt-BR` → `pt`, `EN` → `en`.
fn language_code(code: &str) -> String {
    precis_backend::languages::primary_subtag(code)
}

/// A text to translate, cut into what is kept as it is and the segments
/// (each a paragraph for the translator) put back translated.
struct Document {
    /// Kept pieces and segments, in order.
    parts: Vec<Part>,
}

enum Part {
    /// Written back as it is.
    Kept(String),
    /// A segment: its text for the translator, and how to write its
    /// translation back.
    Segment {
        text: String,
        lead: String,
        trail: String,
        html: bool,
    },
}

impl Document {
    /// Plain text: each line that has words is a segment (its surrounding
    /// white space and the line breaks kept). HTML: each text node that has
    /// words, character references decoded, its white space collapsed.
    fn new(text: &str, html: bool) -> Self {
        let mut parts = Vec::new();
        if html {
            for piece in html_pieces(text) {
                match piece {
                    HtmlPiece::Markup(m) => parts.push(Part::Kept(m.to_string())),
                    HtmlPiece::Text(t) => parts.push(segment(&decode_entities(t), t, true)),
                }
            }
        } else {
            for (i, line) in text.split('\n').enumerate() {
                if i > 0 {
                    parts.push(Part::Kept("\n".into()));
                }
                parts.push(segment(line, line, false));
            }
        }
        Self { parts }
    }

    /// The segments' texts.
    fn segments(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Segment { text, .. } => Some(text.as_str()),
                Part::Kept(_) => None,
            })
            .collect()
    }

    /// The text with each segment replaced by its translation.
    fn write(&self, translations: &[String]) -> String {
        let mut translations = translations.iter();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Kept(k) => out.push_str(k),
                Part::Segment {
                    lead, trail, html, ..
                } => {
                    let t = translations.next().map_or("", String::as_str);
                    out.push_str(lead);
                    out.push_str(&if *html { escape_text(t) } else { t.to_string() });
                    out.push_str(trail);
                }
            }
        }
        out
    }
}

/// `text` as a segment with its surrounding white space kept apart, or,
/// when it has no words, `written` (the text as the input has it) kept. A
/// segment's inner white space becomes single spaces, so that it stays one
/// paragraph.
fn segment(text: &str, written: &str, html: bool) -> Part {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Part::Kept(written.to_string());
    }
    let start = text.len() - text.trim_start().len();
    let end = text.trim_end().len();
    Part::Segment {
        text: words.join(" "),
        lead: text[..start].to_string(),
        trail: text[end..].to_string(),
        html,
    }
}

/// Translates each document's segments from `from` into `to`: one article
/// per document (its segments the paragraphs, no clean-up), all under one
/// slot, as a `/v1` batch runs. A document with no segment, or a language
/// into itself, is answered as it is.
async fn translate_documents(
    state: &AppState,
    documents: &[Document],
    from: &str,
    to: &str,
) -> Result<Vec<String>, CompatError> {
    // Each document's segments, or none for one answered as it is.
    let work: Vec<Vec<&str>> = documents
        .iter()
        .map(|d| if from == to { Vec::new() } else { d.segments() })
        .collect();
    let mut calls = Vec::new();
    let mut chars = 0;
    for segments in work.iter().filter(|s| !s.is_empty()) {
        let call = TaskCall {
            request: TaskRequest {
                task: Task::Translate,
                article: Article {
                    text: segments.join("\n\n"),
                    language: Some(from.to_string()),
                    ..Article::default()
                },
                options: TaskOptions {
                    clean: false,
                    to: Some(vec![to.to_string()]),
                    ..TaskOptions::default()
                },
                model: None,
            },
            stream: None,
        };
        chars += check_call(state, &call)?;
        calls.push(Ok(call));
    }
    if chars > state.limits.max_request_chars {
        return Err(CompatError::bad(format!(
            "Invalid request: request ({chars}) exceeds text limit ({}) (--max-request-chars)",
            state.limits.max_request_chars
        )));
    }
    let mut results = if calls.is_empty() {
        Vec::new()
    } else {
        let (slot, deadline) = admit(state).await?;
        run_calls(state, calls, deadline, slot).await?
    }
    .into_iter();
    let mut out = Vec::new();
    for (document, segments) in documents.iter().zip(&work) {
        if segments.is_empty() {
            out.push(
                document.write(
                    &document
                        .segments()
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                ),
            );
            continue;
        }
        let result = results
            .next()
            .ok_or_else(|| ApiError::internal("a translation is missing from the batch"))??;
        out.push(document.write(&translated_segments(&result, segments.len())?));
    }
    Ok(out)
}

/// The translations of an article's paragraphs in order: its headline's
/// (when the task took the first as one) then its paragraphs'.
fn translated_segments(result: &TaskResult, count: usize) -> Result<Vec<String>, ApiError> {
    let translation = result
        .translations
        .first()
        .ok_or_else(|| ApiError::internal("the translate task returned no translation"))?;
    let texts: Vec<String> = translation
        .title
        .iter()
        .filter(|_| result.input.headline.is_some())
        .chain(&translation.paragraphs)
        .cloned()
        .collect();
    if texts.len() != count {
        return Err(ApiError::internal(format!(
            "the translation has {} paragraphs for {count} segments",
            texts.len()
        )));
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments_of(text: &str, html: bool) -> Vec<String> {
        Document::new(text, html)
            .segments()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn text_keeps_its_lines_and_html_its_markup() {
        let text = "  Hello there.\n\nSecond   line.  \n\n";
        assert_eq!(segments_of(text, false), ["Hello there.", "Second line."]);
        let doc = Document::new(text, false);
        assert_eq!(doc.write(&["A".into(), "B".into()]), "  A\n\nB  \n\n");

        let html =
            "<p class=\"green\">Hello!</p>\n<p>Tom &amp; <b>Jerry</b>&nbsp;</p><script>x = 'y';</script>";
        assert_eq!(segments_of(html, true), ["Hello!", "Tom &", "Jerry"]);
        let doc = Document::new(html, true);
        assert_eq!(
            doc.write(&["¡Hola!".into(), "<T> &".into(), "J".into()]),
            "<p class=\"green\">¡Hola!</p>\n<p>&lt;T&gt; &amp; <b>J</b>&nbsp;</p><script>x = 'y';</script>"
        );
    }

    #[test]
    fn statuses_follow_libretranslate() {
        let status = |code| CompatError::from(ApiError::new(code, "x")).status;
        assert_eq!(status(ErrorCode::QueueFull), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(ErrorCode::Unauthorized), StatusCode::FORBIDDEN);
        assert_eq!(
            status(ErrorCode::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(status(ErrorCode::TextTooLong), StatusCode::BAD_REQUEST);
        assert_eq!(status(ErrorCode::PayloadTooLarge), StatusCode::BAD_REQUEST);
    }
}
