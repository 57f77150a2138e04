//! Helpers shared by the bench binaries (`llm`, `seq2seq`): environment knobs
//! and this process's CPU time and peak memory, read from `/proc`.

#![allow(dead_code)] // each bench uses its own subset

/// A whole-number environment knob, or `default` when unset or empty.
pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} wants a whole number, not '{v}'")),
        _ => Ok(default),
    }
}

/// The `PRECIS_BENCH_THREADS` knob (default 2), applied before any thread
/// exists: rayon's global pool is built with it, and candle's pools, which
/// read `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` when first used, get it
/// too.
pub fn bench_threads() -> anyhow::Result<usize> {
    let threads = env_usize("PRECIS_BENCH_THREADS", 2)?.max(1);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot build the rayon global pool: {e}"))?;
    Ok(threads)
}

/// The article a bench reads: `PRECIS_BENCH_ARTICLE`, else the sample.
pub fn bench_article() -> std::path::PathBuf {
    std::env::var("PRECIS_BENCH_ARTICLE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from("examples/sample-article.txt"))
}

/// Pure arg-max generation of up to `max_new_tokens` (no repetition
/// penalty, no loop guard): llama.cpp's greedy run, and the same tokens on
/// every run.
pub fn argmax_params(max_new_tokens: usize) -> precis_backend::GenerationParams {
    precis_backend::GenerationParams {
        max_new_tokens,
        temperature: 0.0,
        repetition_penalty: 1.0,
        loop_guard: false,
        ..precis_backend::GenerationParams::default()
    }
}

/// A GGUF model named by manifest id or path, fetched through the model
/// store on first use: its id and file.
pub fn gguf_file(name: &str) -> anyhow::Result<(String, std::path::PathBuf)> {
    use precis_backend::store::{ModelStore, StoreConfig};
    let store = ModelStore::open(StoreConfig::from_env())?;
    let spec = store.resolve(name)?;
    let located = tokio::runtime::Runtime::new()?.block_on(store.fetch(&spec))?;
    Ok((spec.id.clone(), located.first_path().to_path_buf()))
}

/// A GGUF model named by manifest id or path ([`gguf_file`]), loaded with
/// the default options on `threads` threads: its id and the model.
pub fn load_gguf(
    name: &str,
    threads: usize,
) -> anyhow::Result<(String, precis_backend::gguf::GgufModel)> {
    use precis_backend::gguf::{GgufModel, GgufOptions};
    let (id, path) = gguf_file(name)?;
    let model = GgufModel::load(
        &path,
        GgufOptions {
            id: Some(id.clone()),
            threads,
            ..GgufOptions::default()
        },
    )?;
    Ok((id, model))
}

/// A numeric field of `/proc/self/status` (`VmHWM:`, `Threads:`, …).
pub fn proc_status_field(name: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory of this process so far, in MB.
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_field("VmHWM:").map(|kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far (all threads).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here, 0-based),
    // in clock ticks: USER_HZ, 100 on Linux.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
