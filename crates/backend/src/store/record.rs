//! The verification record: which files have been hashed, with the size and
//! modification time they had then. Hashing a 1 GB file takes seconds, so a
//! later run trusts the recorded hash as long as size and mtime are unchanged,
//! and re-hashes otherwise. `verify` ignores the record.
//!
//! The record is a cache, never the authority: losing it only costs a re-hash,
//! so a record that cannot be read or written is logged and otherwise ignored.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// Size and modification time of a file, the cheap part of its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime_secs: u64,
    pub mtime_nanos: u32,
}

impl Stamp {
    /// None when the platform gives no usable mtime: such files are always hashed.
    pub fn of(meta: &Metadata) -> Option<Stamp> {
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Stamp {
            size: meta.len(),
            mtime_secs: mtime.as_secs(),
            mtime_nanos: mtime.subsec_nanos(),
        })
    }
}

/// One hashed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(flatten)]
    pub stamp: Stamp,
    /// The sha256 the file had when it was stamped.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordFile {
    version: u32,
    /// Keyed by canonical path.
    files: BTreeMap<String, Entry>,
}

const VERSION: u32 = 1;

/// The record file and an in-memory copy of it.
#[derive(Debug)]
pub(crate) struct Record {
    path: PathBuf,
    files: BTreeMap<String, Entry>,
}

impl Record {
    /// Reads the record at `path`; a missing or unreadable one starts empty.
    pub fn load(path: PathBuf) -> Record {
        let files = read(&path);
        Record { path, files }
    }

    /// The recorded sha256 of `file` if its stamp is unchanged.
    pub fn lookup(&self, file: &Path, stamp: &Stamp) -> Option<&str> {
        self.files
            .get(&key(file))
            .filter(|e| e.stamp == *stamp)
            .map(|e| e.sha256.as_str())
    }

    /// Records (`Some`) or forgets (`None`) a file, and saves.
    pub fn set(&mut self, file: &Path, entry: Option<Entry>) {
        let key = key(file);
        if self.files.get(&key) == entry.as_ref() {
            return;
        }
        // Merge into what is on disk now, so that concurrent runs lose at most
        // each other's latest entry (which then costs a re-hash, nothing more).
        let mut files = read(&self.path);
        match entry {
            Some(e) => {
                files.insert(key, e);
            }
            None => {
                files.remove(&key);
            }
        }
        if let Err(e) = write(&self.path, &files) {
            tracing::warn!(
                "could not save the verification record {}: {e}; files will be re-hashed next time",
                self.path.display()
            );
        }
        self.files = files;
    }
}

fn key(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    path.to_string_lossy().into_owned()
}

fn read(path: &Path) -> BTreeMap<String, Entry> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(
                "ignoring the unreadable verification record {}: {e}",
                path.display()
            );
            return BTreeMap::new();
        }
    };
    match serde_json::from_str::<RecordFile>(&text) {
        Ok(r) if r.version == VERSION => r.files,
        Ok(r) => {
            tracing::warn!(
                "ignoring verification record {} of version {}",
                path.display(),
                r.version
            );
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(
                "ignoring the corrupt verification record {}: {e}",
                path.display()
            );
            BTreeMap::new()
        }
    }
}

/// Writes to a temporary file next to the record and renames it into place, so
/// a reader never sees half a record.
fn write(path: &Path, files: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".verified.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    let body = RecordFile {
        version: VERSION,
        files: files.clone(),
    };
    serde_json::to_writer_pretty(&mut tmp, &body)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_needs_an_unchanged_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&file).unwrap()).unwrap();
        let mut rec = Record::load(dir.path().join("verified.json"));
        assert_eq!(rec.lookup(&file, &stamp), None);
        rec.set(
            &file,
            Some(Entry {
                stamp,
                sha256: "x".into(),
            }),
        );
        assert_eq!(rec.lookup(&file, &stamp), Some("x"));
        let other = Stamp {
            size: stamp.size + 1,
            ..stamp
        };
        assert_eq!(rec.lookup(&file, &other), None);
        // It survives a reload, and forgetting works.
        let mut rec = Record::load(dir.path().join("verified.json"));
        assert_eq!(rec.lookup(&file, &stamp), Some("x"));
        rec.set(&file, None);
        assert_eq!(
            Record::load(dir.path().join("verified.json")).lookup(&file, &stamp),
            None
        );
    }

    #[test]
    fn corrupt_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("verified.json"), b"{ not json").unwrap();
        let rec = Record::load(dir.path().join("verified.json"));
        assert!(rec.files.is_empty());
    }
}
