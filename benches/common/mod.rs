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

/// The `PRECIS_BENCH_DEVICE` knob: where the model runs (`cpu`, the
/// default, or `cuda` / `cuda:N`).
pub fn bench_device() -> anyhow::Result<precis_backend::Placement> {
    match std::env::var("PRECIS_BENCH_DEVICE") {
        Ok(v) if !v.trim().is_empty() => v
            .parse()
            .map_err(|e| anyhow::anyhow!("PRECIS_BENCH_DEVICE: {e}")),
        _ => Ok(precis_backend::Placement::Cpu),
    }
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

/// The metadata key under which a skeleton lists its tensors.
const SKELETON_KEY: &str = "precis.skeleton.tensors";

/// Writes to `out` the *skeleton* of the GGUF model `model`: its metadata
/// (architecture, sizes, tokenizer, chat template) and each tensor's name,
/// type and shape, without the weights: a few MB that stand for a model of
/// hundreds (`scripts/gpu-check.sh` carries SmolLM2's and Qwen2.5-Coder-
/// 0.5B's to a GPU machine, where [`synthesize`] makes the model again with
/// random weights: the same shapes and block types, so the same speed).
pub fn write_skeleton(model: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    use candle_core::quantized::gguf_file::{Content, Value};
    let content = Content::read(&mut std::fs::File::open(model)?)?;
    let mut tensors: Vec<(&String, _)> = content.tensor_infos.iter().collect();
    tensors.sort_by_key(|(_, info)| info.offset);
    let listed = Value::Array(
        tensors
            .iter()
            .map(|(name, info)| {
                let dims: Vec<String> = info.shape.dims().iter().map(usize::to_string).collect();
                Value::String(format!("{name}|{:?}|{}", info.ggml_dtype, dims.join(",")))
            })
            .collect(),
    );
    let mut metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.sort_by_key(|(k, _)| *k);
    metadata.push((SKELETON_KEY, &listed));
    let mut file = std::fs::File::create(out)?;
    candle_core::quantized::gguf_file::write(&mut file, &metadata, &[])?;
    Ok(())
}

/// Whether `path` is a skeleton ([`write_skeleton`]).
pub fn is_skeleton(path: &std::path::Path) -> anyhow::Result<bool> {
    use candle_core::quantized::gguf_file::Content;
    let content = Content::read(&mut std::fs::File::open(path)?)?;
    Ok(content.metadata.contains_key(SKELETON_KEY))
}

/// The model a skeleton stands for, written to `out`: its metadata, and
/// each tensor in its type and shape, quantized from random values (normal,
/// σ 0.02; vectors, the norms' gains and biases, ones), tensors in parallel.
pub fn synthesize(skeleton: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    use candle_core::quantized::gguf_file::{Content, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use rayon::prelude::*;
    let content = Content::read(&mut std::fs::File::open(skeleton)?)?;
    let Some(Value::Array(listed)) = content.metadata.get(SKELETON_KEY) else {
        anyhow::bail!("{} is not a skeleton", skeleton.display());
    };
    let dtype = |name: &str| -> anyhow::Result<GgmlDType> {
        use GgmlDType::*;
        let all = [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
        ];
        all.into_iter()
            .find(|d| format!("{d:?}") == name)
            .ok_or_else(|| anyhow::anyhow!("unknown block type {name}"))
    };
    let specs: Vec<(String, GgmlDType, Vec<usize>)> = listed
        .iter()
        .map(|v| {
            let s = v.to_string()?;
            let mut parts = s.split('|');
            let (Some(name), Some(kind), Some(dims)) = (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("a skeleton entry `{s}` is not name|type|dims");
            };
            let dims = dims
                .split(',')
                .map(|d| d.parse::<usize>().map_err(anyhow::Error::from))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((name.to_string(), dtype(kind)?, dims))
        })
        .collect::<anyhow::Result<_>>()?;
    let tensors: Vec<(String, QTensor)> = specs
        .into_par_iter()
        .map(|(name, kind, dims)| -> anyhow::Result<(String, QTensor)> {
            let values = if dims.len() == 1 {
                Tensor::ones(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
            } else {
                Tensor::randn(0f32, 0.02, dims.as_slice(), &Device::Cpu)?
            };
            Ok((name, QTensor::quantize(&values, kind)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != SKELETON_KEY)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    candle_core::quantized::gguf_file::write(&mut file, &metadata, &refs)?;
    Ok(())
}
