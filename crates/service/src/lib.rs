//! precis-service: the work around a task that a newsletter pipeline needs,
//! shared by the command line and the server.
//!
//! - [`sources`]: articles out of feeds (RSS, Atom, JSON Feed), HTML pages
//!   and Markdown;
//! - [`fetch`]: reading them from http(s) URLs under address rules a hostile
//!   feed cannot get around;
//! - [`render`]: results written as JSON, JSON Lines, Markdown, HTML and JSON
//!   Feed;
//! - [`jobs`]: batch jobs kept in SQLite, resumed after a restart, with a
//!   signed webhook;
//! - [`markup`]: escaping for what is rendered;
//! - [`app`]: the composition root that makes the store, the engine, the
//!   cache and the job runner from ready settings.
//!
//! It sits on precis-core and knows no transport: no axum, no clap.

pub mod app;
pub mod fetch;
pub mod jobs;
pub mod markup;
pub mod render;
pub mod sources;
