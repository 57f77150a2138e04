//! precis: summaries of news articles and their Russian and Hindi versions,
//! produced by open models run through candle.
//!
//! The crate is layered; each layer imports only from the layers below it:
//!
//! - transport: [`http`] (axum) and [`cli`] (clap);
//! - [`engine`]: model workers, queues and routing of work to models;
//! - [`task`]: summarize, translate, digest: clean-up, prompts, chunking, quality flags;
//! - [`backend`]: candle models behind one small trait, [`tokenizer`], [`store`] (model files).

pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod fetch;
pub mod http;
pub mod jobs;
pub mod markup;
pub mod sources;
pub mod store;
pub mod task;
pub mod tokenizer;
