//! Records an LLM reference fixture: for each prompt of
//! `tests/fixtures/llm-reference/prompts.json`, the rendered prompt's token ids
//! and up to `max_new_tokens` pure greedy ids from [`GgufModel::greedy_ids`].
//! The parity tests of the LLM backend compare against these files.
//!
//! ```sh
//! cargo run --release --example llm_reference -- MODEL_ID_OR_GGUF OUT.json [LABEL]
//! ```

use std::path::PathBuf;

use precis_backend::gguf::{GgufModel, GgufOptions};
use precis_backend::store::{ModelStore, StoreConfig};
use precis_backend::ChatMessage;
use serde::Deserialize;

#[derive(Deserialize)]
struct Prompts {
    max_new_tokens: usize,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    messages: Vec<ChatMessage>,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model_name), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: llm_reference MODEL_ID_OR_GGUF OUT.json [LABEL]");
    };
    let label = args.next().unwrap_or_else(|| "precis".to_string());
    let prompts: Prompts = serde_json::from_str(&std::fs::read_to_string(
        "tests/fixtures/llm-reference/prompts.json",
    )?)?;
    let store = ModelStore::open(StoreConfig::from_env())?;
    let spec = store.resolve(&model_name)?;
    let located = tokio::runtime::Runtime::new()?.block_on(store.fetch(&spec))?;
    let path: PathBuf = located.first_path().to_path_buf();
    let mut model = GgufModel::load(&path, GgufOptions::default())?;
    let mut records = Vec::new();
    for p in &prompts.prompts {
        let prompt_ids = model.chat_ids(&p.messages)?;
        let greedy = model.greedy_ids(&prompt_ids, prompts.max_new_tokens)?;
        eprintln!(
            "{}: {} prompt ids, {} greedy ids",
            p.name,
            prompt_ids.len(),
            greedy.len()
        );
        records.push(serde_json::json!({
            "name": p.name,
            "prompt_ids": prompt_ids,
            "greedy_ids": greedy,
        }));
    }
    let doc = serde_json::json!({
        "reference": label,
        "model": spec.id,
        "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "prompts": records,
    });
    std::fs::write(&out, serde_json::to_string(&doc)? + "\n")?;
    Ok(())
}
