//! precis-core: what precis does with an article, independent of how the
//! article arrived and of how models compute.
//!
//! - [`task`]: summarize, translate, digest: clean-up, prompts, chunking,
//!   quality flags;
//! - [`engine`]: loaded models, each owned by one worker thread, and the
//!   routing of work to them;
//! - [`cache`]: the result cache every generation goes through;
//! - [`database`]: the SQLite file or the PostgreSQL server the cache and
//!   batch jobs are kept in;
//! - [`languages`]: the language codes the API and the CLI speak;
//! - [`error`]: the transport-neutral error kinds with their stable codes,
//!   which the HTTP API and the CLI report alike.
//!
//! It sits on precis-backend (models behind one small trait) and knows no
//! transport: no axum, no clap.

pub mod admission;
pub mod cache;
pub mod database;
pub mod engine;
pub mod error;
pub mod languages;
pub mod task;
