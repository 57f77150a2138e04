//! Makes `PRECIS_PIPELINE_HASH`: a SHA-256 over the sources that shape what
//! a model generates (prompt templates, tokenizers, decoders). The result
//! cache keys include it, so a fixed prompt or decoder never serves a result
//! made before the fix.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files and folders whose content changes what a model writes.
/// Paths are relative to this crate; the backend crate's model store is left
/// out (where files come from does not change what a model writes).
const SOURCES: &[&str] = &[
    "src/task/prompt.rs",
    "src/task/translate.rs",
    "../backend/src/lib.rs",
    "../backend/src/decoder.rs",
    "../backend/src/generation.rs",
    "../backend/src/gguf.rs",
    "../backend/src/kernels",
    "../backend/src/languages.rs",
    "../backend/src/script.rs",
    "../backend/src/seq2seq",
    "../backend/src/weights.rs",
    "../backend/src/tokenizer",
    "../backend/src/tokenizer.rs",
];

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

fn main() {
    let mut all = Vec::new();
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        files(Path::new(source), &mut all);
    }
    let mut hash = Sha256::new();
    for file in all {
        hash.update(file.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&file).unwrap_or_default());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=PRECIS_PIPELINE_HASH={hex}");
}
