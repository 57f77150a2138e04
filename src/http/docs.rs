//! The API's description: an OpenAPI 3 document generated from the
//! handlers and types (utoipa) at `GET /openapi.json`, and a page for people
//! at `GET /docs`, rendered here from that document (self-contained: no
//! scripts or styles fetched from anywhere, so it works offline).

// The request bodies here only describe the API (they are never built), so
// the size of their variants does not matter.
#![allow(clippy::large_enum_variant)]

use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorCode, ErrorDetail};
use super::stream::{ParagraphEvent, ProgressEvent, StreamError, SummaryTextEvent};
use super::{
    AppState, BatchItem, BatchResponse, DigestRequest, Health, LanguagesResponse, ModelsResponse,
    SummarizeRequest, TranslateRequest,
};
use precis_core::task::TaskResult;
use precis_service::markup::escape_html;

/// `POST /v1/summarize`'s body: one request, or an array of them.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SummarizeBody {
    /// One article.
    One(SummarizeRequest),
    /// A batch: answered with `results`, one per article, in order.
    Many(Vec<SummarizeRequest>),
}

/// `POST /v1/translate`'s body: one request, or an array of them.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TranslateBody {
    /// One article.
    One(TranslateRequest),
    /// A batch: answered with `results`, one per article, in order.
    Many(Vec<TranslateRequest>),
}

/// `POST /v1/digest`'s body: one request, or an array of them.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum DigestBody {
    /// One article.
    One(DigestRequest),
    /// A batch: answered with `results`, one per article, in order.
    Many(Vec<DigestRequest>),
}

/// A job route's answer: the result of one article, or a batch's results.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobAnswer {
    /// The answer to one article.
    One(Box<TaskResult>),
    /// The answer to an array.
    Many(BatchResponse),
}

/// What a job route answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document, never built
pub enum JobResponses {
    /// The result: an object for one article; `results` for an array; a
    /// stream of events (`text/event-stream`) when asked for one.
    #[response(status = 200)]
    Done(JobAnswer),
    /// Not UTF-8, or not JSON.
    #[response(status = 400)]
    BadBody(ErrorBody),
    /// API keys are on and no valid one was sent.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The body is over --max-body-bytes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A field, a language, a limit or the text is not acceptable (see the code).
    #[response(status = 422)]
    Unacceptable(ErrorBody),
    /// The queue is full; see Retry-After.
    #[response(status = 429)]
    Busy(ErrorBody),
    /// Not ready, or the model cannot be loaded.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// Past --timeout-secs; the work was cancelled.
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "precis",
        description = "Summaries of news articles, and their Russian and Hindi translations, from open models run on CPU or GPU. Errors are `{\"error\": {\"code\", \"message\"}}`; with API keys on, every route but /health, /ready, the page at / and LibreTranslate's /languages and /frontend/settings needs `Authorization: Bearer KEY` (LibreTranslate's /translate and /detect also take `api_key` in the body)."
    ),
    paths(
        super::summarize,
        super::translate,
        super::digest,
        super::jobs::create,
        super::jobs::show,
        super::jobs::cancel,
        super::models,
        super::languages,
        super::health,
        super::ready,
        super::ops::metrics_text,
        openapi_json,
        docs_page,
        super::page::page,
        super::compat::translate,
        super::compat::detect,
        super::compat::languages,
        super::compat::frontend_settings,
    ),
    components(schemas(
        SummarizeBody,
        TranslateBody,
        DigestBody,
        JobAnswer,
        BatchItem,
        BatchResponse,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        Health,
        ModelsResponse,
        LanguagesResponse,
        precis_core::engine::LanguageOffer,
        SummaryTextEvent,
        ParagraphEvent,
        ProgressEvent,
        StreamError,
        precis_service::jobs::JobRequest,
        precis_service::jobs::JobArticle,
        precis_service::jobs::JobView,
        precis_service::jobs::JobItem,
        precis_service::jobs::JobState,
        precis_service::jobs::JobProgress,
        precis_service::jobs::WebhookState,
        super::compat::CompatTranslateBody,
        super::compat::TranslateAnswer,
        super::compat::CompatDetectBody,
        super::compat::DetectedLanguage,
        super::compat::CompatLanguage,
        super::compat::CompatErrorBody,
        super::compat::FrontendSettings,
        super::compat::FrontendLanguages,
        super::compat::FrontendLanguage,
    )),
    tags(
        (name = "jobs", description = "summarize, translate, digest: one article, an array, a stream, or a batch job"),
        (name = "models", description = "what the server runs"),
        (name = "operations", description = "probes, metrics and this description"),
        (name = "libretranslate", description = "LibreTranslate's API, for the tools that speak it: its bodies (JSON, form or multipart form; `api_key` in the body or `Authorization: Bearer KEY`) and its errors, `{\"error\": \"…\"}` with 400, 403, 429 or 500; `--no-compat` turns it off"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once for each answer to whether the
/// server serves LibreTranslate's routes (`--no-compat`: they are left out).
pub fn document(compat: bool) -> &'static Value {
    static DOCS: [OnceLock<Value>; 2] = [OnceLock::new(), OnceLock::new()];
    DOCS[usize::from(compat)].get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        add_event_streams(&mut doc);
        if !compat {
            leave_out_tag(&mut doc, "libretranslate");
        }
        doc
    })
}

/// Removes the operations under `tag`, the paths left empty, and the tag.
fn leave_out_tag(doc: &mut Value, tag: &str) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operations in paths.values_mut() {
            if let Some(operations) = operations.as_object_mut() {
                operations.retain(|_, op| {
                    !op["tags"]
                        .as_array()
                        .is_some_and(|tags| tags.iter().any(|t| t == tag))
                });
            }
        }
        paths.retain(|_, operations| operations.as_object().is_some_and(|o| !o.is_empty()));
    }
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        tags.retain(|t| t["name"] != tag);
    }
}

/// The job routes' streamed answer, which utoipa cannot derive: a second
/// content type of their 200 response.
fn add_event_streams(doc: &mut Value) {
    let stream = serde_json::json!({
        "schema": {
            "type": "string",
            "description": "Server-Sent Events, each a JSON object in `data`: `summary` (SummaryTextEvent) as the summary is written, `paragraph` (ParagraphEvent) as each headline or paragraph is translated, `progress` (ProgressEvent) after each step, then one `result` (the object a plain request gets) or `error` (StreamError), and the stream ends. Asked for with `\"stream\": true` or `Accept: text/event-stream`; one article only.",
        },
        "example": "event: summary\ndata: {\"language\":\"en\",\"text\":\"G20\"}\n\nevent: summary\ndata: {\"language\":\"en\",\"text\":\" ministers met\"}\n\nevent: progress\ndata: {\"done\":1,\"total\":1}\n\nevent: result\ndata: {\"schema_version\":1,\"task\":\"summarize\"}\n\n",
    });
    for path in ["/v1/summarize", "/v1/translate", "/v1/digest"] {
        if let Some(content) = doc
            .pointer_mut(&format!(
                "/paths/{}/post/responses/200/content",
                path.replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            content.insert("text/event-stream".into(), stream.clone());
        }
    }
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document(state.compat).to_string(),
    )
        .into_response()
}

/// A page describing every route and type, made from the OpenAPI document.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
pub async fn docs_page(State(state): State<AppState>) -> Html<String> {
    static PAGES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let compat = state.compat;
    Html(
        PAGES[usize::from(compat)]
            .get_or_init(|| render(document(compat)))
            .clone(),
    )
}

/// The last part of a `$ref`, e.g. `TaskResult`.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.rsplit('/').next()
}

/// A schema in a few words: a link to a named one, `array of …`, or its type.
fn type_words(v: &Value) -> String {
    if let Some(name) = ref_name(v) {
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape_html(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = v.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = list
                .iter()
                .map(type_words)
                .filter(|w| w != "null")
                .collect();
            return parts.join(" or ");
        }
    }
    let ty = match v.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    };
    if ty == "array" {
        return format!(
            "array of {}",
            v.get("items").map_or_else(String::new, type_words)
        );
    }
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|s| format!("<code>{}</code>", escape_html(s)))
            .collect();
        return format!("one of {}", names.join(", "));
    }
    if ty.is_empty() {
        "any".into()
    } else {
        escape_html(&ty)
    }
}

fn example_block(out: &mut String, example: Option<&Value>) {
    if let Some(e) = example {
        let pretty = serde_json::to_string_pretty(e).unwrap_or_default();
        let _ = write!(out, "<pre>{}</pre>", escape_html(&pretty));
    }
}

/// The page.
fn render(doc: &Value) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>precis API</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         code,pre{font-family:ui-monospace,monospace}pre{background:#f4f4f4;padding:.6rem;overflow:auto}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}\
         .m{font-weight:bold;text-transform:uppercase}</style></head><body>",
    );
    let info = &doc["info"];
    let _ = write!(
        out,
        "<h1>{} {}</h1><p>{}</p><p>The machine-readable description: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p><h2>Routes</h2>",
        escape_html(info["title"].as_str().unwrap_or("precis")),
        escape_html(info["version"].as_str().unwrap_or("")),
        escape_html(info["description"].as_str().unwrap_or("")),
        escape_html(doc["openapi"].as_str().unwrap_or("3")),
    );
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                let _ = write!(
                    out,
                    "<h3><span class=\"m\">{}</span> <code>{}</code></h3>",
                    escape_html(method),
                    escape_html(path)
                );
                for key in ["summary", "description"] {
                    if let Some(t) = op[key].as_str() {
                        let _ = write!(out, "<p>{}</p>", escape_html(t));
                    }
                }
                if let Some(body) = op["requestBody"]["content"].as_object() {
                    for (mime, media) in body {
                        let _ = write!(
                            out,
                            "<p>Body (<code>{}</code>): {}</p>",
                            escape_html(mime),
                            type_words(&media["schema"])
                        );
                    }
                }
                if let Some(responses) = op["responses"].as_object() {
                    out.push_str("<table><tr><th>status</th><th>when</th><th>body</th></tr>");
                    for (status, r) in responses {
                        let body = r["content"].as_object().map_or_else(String::new, |c| {
                            let words: Vec<String> = c
                                .iter()
                                .map(|(mime, m)| {
                                    let words = type_words(&m["schema"]);
                                    if c.len() == 1 {
                                        words
                                    } else {
                                        format!("<code>{}</code>: {words}", escape_html(mime))
                                    }
                                })
                                .collect();
                            words.join("<br>")
                        });
                        let _ = write!(
                            out,
                            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                            escape_html(status),
                            escape_html(r["description"].as_str().unwrap_or("")),
                            body
                        );
                    }
                    out.push_str("</table>");
                }
            }
        }
    }
    out.push_str("<h2>Types</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(
                out,
                "<h3 id=\"schema-{0}\"><code>{0}</code></h3>",
                escape_html(name)
            );
            if let Some(t) = schema["description"].as_str() {
                let _ = write!(out, "<p>{}</p>", escape_html(t));
            }
            if let Some(props) = schema["properties"].as_object() {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                out.push_str("<table><tr><th>field</th><th>type</th><th>what</th></tr>");
                for (field, p) in props {
                    let _ = write!(
                        out,
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                        escape_html(field),
                        if required.contains(&field.as_str()) {
                            " (required)"
                        } else {
                            ""
                        },
                        type_words(p),
                        escape_html(p["description"].as_str().unwrap_or(""))
                    );
                }
                out.push_str("</table>");
            } else {
                let _ = write!(out, "<p>{}</p>", type_words(schema));
            }
            example_block(&mut out, schema.get("example"));
        }
    }
    out.push_str("</body></html>");
    out
}
