//! precis: summaries of news articles and their Russian and Hindi versions,
//! produced by open models run through candle.
//!
//! This package is the transports only: [`http`] (axum) and [`cli`] (clap),
//! over the workspace's crates, each of which imports only from those below
//! it (the compiler enforces it, and `scripts/check-layers.py` checks it):
//!
//! - `precis-service`: batch jobs, sources and fetching, rendering;
//! - `precis-core`: tasks, the engine, the result cache, error codes;
//! - `precis-backend`: candle models behind one small trait, tokenizers,
//!   the model store.

pub mod allocator;
pub mod cli;
pub mod http;
