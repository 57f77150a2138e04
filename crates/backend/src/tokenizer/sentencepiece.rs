//! SentencePiece models (the `.spm` / `.model` files that Marian, T5 and many
//! other checkpoints ship), read and run in Rust.
//!
//! Why this exists: transformers' `MarianTokenizer` runs Google's
//! `sentencepiece` library on `source.spm` / `target.spm`; the Hugging Face
//! `tokenizer.json` that would let the `tokenizers` crate stand in is not part
//! of opus-mt checkpoints (third parties convert it by hand). So this parses
//! the model's protobuf and does what `SentencePieceProcessor` does for the
//! unigram models these checkpoints use:
//!
//! - normalisation with the model's precompiled character map (the longest
//!   rule matching at each point), then SentencePiece's whitespace rules
//!   (drop leading, trailing and repeated spaces; a dummy `▁` prefix; spaces
//!   written as `▁`);
//! - the best segmentation under the pieces' scores (Viterbi), where a
//!   character no piece covers becomes the unknown piece (a run of them one
//!   unknown piece), or its UTF-8 bytes with `byte_fallback`;
//! - decoding of pieces back to text (`DecodePieces`).
//!
//! and, for BPE models (NLLB's and M2M100's `sentencepiece.bpe.model`),
//! what `bpe::Model::Encode` does: characters (user-defined pieces whole),
//! then repeatedly the adjacent pair whose concatenation is the
//! highest-scoring piece (the leftmost among equals) is merged.
//!
//! Word and char models are refused with an error naming the type.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

/// What can go wrong reading a SentencePiece model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpmError {
    /// The file could not be read.
    #[error("cannot read SentencePiece model {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes are not a SentencePiece model.
    #[error("not a SentencePiece model ({0}); is the file complete?")]
    Parse(String),
    /// A model type other than unigram or BPE.
    #[error("SentencePiece model type {0} is not supported (only unigram and BPE models are)")]
    UnsupportedType(&'static str),
}

/// The protobuf messages, with only the fields used here (proto2; other
/// fields are skipped when decoding).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<Piece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Piece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// NORMAL = 1 (the default), UNKNOWN = 2, CONTROL = 3,
        /// USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TrainerSpec {
        /// UNIGRAM = 1 (the default), BPE = 2, WORD = 3, CHAR = 4.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "24")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(string, optional, tag = "44")]
        pub unk_surface: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

/// The kind of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceKind {
    /// An ordinary piece, matched in text.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<s>`, `</s>`): never matched in text, decoded to nothing.
    Control,
    /// A user-defined symbol, always matched as a whole.
    UserDefined,
    /// Not used in segmentation.
    Unused,
    /// A byte (`<0x41>`), for `byte_fallback`.
    Byte,
}

impl PieceKind {
    fn from_proto(v: Option<i32>) -> PieceKind {
        match v.unwrap_or(1) {
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => PieceKind::Normal,
        }
    }
}

/// Text, score and kind of a model's pieces, by id.
fn pieces_of(model: &proto::ModelProto) -> Vec<(String, f32, PieceKind)> {
    model
        .pieces
        .iter()
        .map(|p| {
            (
                p.piece.clone().unwrap_or_default(),
                p.score.unwrap_or(0.0),
                PieceKind::from_proto(p.r#type),
            )
        })
        .collect()
}

/// A SentencePiece model's pieces and character map ([`SentencePiece::parts`]).
#[derive(Debug, Clone)]
pub(crate) struct SpmParts {
    /// Text, score and kind of every piece, by id.
    pub pieces: Vec<(String, f32, PieceKind)>,
    /// The normalizer's precompiled character map, when it has one.
    pub precompiled_charsmap: Option<Vec<u8>>,
}

/// One piece of a segmentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The piece's id in the SentencePiece model.
    pub id: u32,
    /// The piece's text; for the unknown piece, the text it covers (as
    /// `encode(…, out_type=str)` gives it).
    pub text: String,
}

/// Score penalty of the unknown piece below the lowest-scoring piece
/// (SentencePiece's `kUnkPenalty`).
const UNK_PENALTY: f32 = 10.0;

/// The character a space becomes.
const SPACE: &str = "\u{2581}";

/// A loaded SentencePiece unigram or BPE model.
#[derive(Debug, Clone)]
pub(crate) struct SentencePiece {
    /// BPE (merges) rather than unigram (Viterbi).
    bpe: bool,
    pieces: Vec<(String, f32, PieceKind)>,
    /// Pieces matched in text: normal, user-defined and unused ones, by text.
    index: HashMap<String, u32>,
    /// Every piece by text (decoding looks control pieces up too).
    all: HashMap<String, u32>,
    /// The longest matchable piece, in bytes.
    longest: usize,
    unk_id: u32,
    min_score: f32,
    max_score: f32,
    byte_fallback: bool,
    unk_surface: String,
    normalizer: Normalizer,
}

impl SentencePiece {
    /// Reads a model file.
    pub(crate) fn from_file(path: &Path) -> Result<Self, SpmError> {
        let bytes = std::fs::read(path).map_err(|source| SpmError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Parses a serialized `ModelProto`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, SpmError> {
        let model = proto::ModelProto::decode(bytes).map_err(|e| SpmError::Parse(e.to_string()))?;
        if model.pieces.is_empty() {
            return Err(SpmError::Parse("it has no pieces".into()));
        }
        let trainer = model.trainer_spec.clone().unwrap_or_default();
        let bpe = match trainer.model_type.unwrap_or(1) {
            1 => false,
            2 => true,
            3 => return Err(SpmError::UnsupportedType("word")),
            4 => return Err(SpmError::UnsupportedType("char")),
            _ => return Err(SpmError::UnsupportedType("unknown")),
        };
        if trainer.treat_whitespace_as_suffix.unwrap_or(false) {
            return Err(SpmError::Parse(
                "treat_whitespace_as_suffix is set, which is not supported".into(),
            ));
        }
        let pieces = pieces_of(&model);
        let unk_id = pieces
            .iter()
            .position(|p| p.2 == PieceKind::Unknown)
            .ok_or_else(|| SpmError::Parse("it has no unknown piece".into()))?
            as u32;
        let mut index = HashMap::new();
        let mut all = HashMap::new();
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN);
        let mut longest = 0;
        for (id, (text, score, kind)) in pieces.iter().enumerate() {
            all.entry(text.clone()).or_insert(id as u32);
            if matches!(
                kind,
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused
            ) {
                if index.insert(text.clone(), id as u32).is_some() {
                    return Err(SpmError::Parse(format!("piece `{text}` appears twice")));
                }
                longest = longest.max(text.len());
            }
            if *kind == PieceKind::Normal {
                min_score = min_score.min(*score);
                max_score = max_score.max(*score);
            }
        }
        let spec = model.normalizer_spec.unwrap_or_default();
        let normalizer = Normalizer::new(&spec)?;
        Ok(Self {
            bpe,
            pieces,
            index,
            all,
            longest,
            unk_id,
            min_score,
            max_score,
            byte_fallback: trainer.byte_fallback.unwrap_or(false),
            unk_surface: trainer.unk_surface.unwrap_or_else(|| " \u{2047} ".into()),
            normalizer,
        })
    }

    /// The pieces of a serialized `ModelProto` as stored (text, score,
    /// kind) and its normalizer's precompiled character map, for building
    /// other tokenizers from the same model (transformers'
    /// `SentencePieceExtractor`).
    pub fn parts(bytes: &[u8]) -> Result<SpmParts, SpmError> {
        let model = proto::ModelProto::decode(bytes).map_err(|e| SpmError::Parse(e.to_string()))?;
        Ok(SpmParts {
            pieces: pieces_of(&model),
            precompiled_charsmap: model
                .normalizer_spec
                .and_then(|n| n.precompiled_charsmap)
                .filter(|m| !m.is_empty()),
        })
    }

    /// The text of piece `id`.
    pub(crate) fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.0.as_str())
    }

    /// The id of a piece, or the unknown piece's id.
    pub(crate) fn piece_to_id(&self, piece: &str) -> u32 {
        self.all.get(piece).copied().unwrap_or(self.unk_id)
    }

    /// The text as the model's normalizer leaves it (spaces as `▁`, with the
    /// dummy prefix).
    pub(crate) fn normalize(&self, text: &str) -> String {
        self.normalizer.normalize(text)
    }

    /// Segments a text into pieces.
    pub fn encode(&self, text: &str) -> Vec<Piece> {
        let normalized = self.normalize(text);
        self.segment(&normalized)
    }

    /// The segmentation of normalized text, by the model's kind.
    fn segment(&self, s: &str) -> Vec<Piece> {
        if s.is_empty() {
            return Vec::new();
        }
        let path = if self.bpe {
            self.merge_path(s)
        } else {
            self.viterbi_path(s)
        };
        self.pieces_of_path(s, path)
    }

    /// BPE: characters (a user-defined piece whole, never merged further),
    /// then the adjacent pair whose concatenation is the highest-scoring
    /// piece merged, the leftmost first among equal scores, until no pair
    /// is a piece. Gives (start, end, id) spans; a span that is no piece
    /// has the unknown id.
    fn merge_path(&self, s: &str) -> Vec<(usize, usize, u32)> {
        use std::cmp::Ordering;
        use std::collections::BinaryHeap;

        // A candidate merge: higher score first, then the leftmost.
        #[derive(PartialEq)]
        struct Pair {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl Eq for Pair {}
        impl Ord for Pair {
            fn cmp(&self, other: &Self) -> Ordering {
                self.score
                    .total_cmp(&other.score)
                    .then(other.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Pair {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        // Symbols: byte span, neighbours, whether frozen (user-defined).
        struct Symbol {
            start: usize,
            end: usize,
            prev: Option<usize>,
            next: Option<usize>,
            frozen: bool,
        }
        let user_defined: Vec<&str> = self
            .index
            .iter()
            .filter(|(_, &id)| self.pieces[id as usize].2 == PieceKind::UserDefined)
            .map(|(text, _)| text.as_str())
            .collect();
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut at = 0;
        while at < s.len() {
            let rest = &s[at..];
            let whole = user_defined
                .iter()
                .filter(|u| rest.starts_with(**u))
                .map(|u| u.len())
                .max();
            let len = whole.unwrap_or_else(|| rest.chars().next().map_or(1, char::len_utf8));
            let i = symbols.len();
            symbols.push(Symbol {
                start: at,
                end: at + len,
                prev: i.checked_sub(1),
                next: None,
                frozen: whole.is_some(),
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
            at += len;
        }
        let mut agenda = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: usize, right: usize| -> Option<Pair> {
            let (l, r) = (&symbols[left], &symbols[right]);
            if l.frozen || r.frozen {
                return None;
            }
            let &id = self.index.get(&s[l.start..r.end])?;
            Some(Pair {
                score: self.pieces[id as usize].1,
                left,
                right,
                len: r.end - l.start,
            })
        };
        for i in 1..symbols.len() {
            agenda.extend(candidate(&symbols, i - 1, i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (&symbols[top.left], &symbols[top.right]);
            // Stale: one side was merged away or grew since.
            if l.end == l.start
                || r.end == r.start
                || r.end - l.start != top.len
                || l.next != Some(top.right)
            {
                continue;
            }
            let (end, next) = (r.end, r.next);
            symbols[top.left].end = end;
            symbols[top.left].next = next;
            symbols[top.right].start = end;
            symbols[top.right].end = end;
            if let Some(n) = next {
                symbols[n].prev = Some(top.left);
            }
            if let Some(p) = symbols[top.left].prev {
                agenda.extend(candidate(&symbols, p, top.left));
            }
            if let Some(n) = next {
                agenda.extend(candidate(&symbols, top.left, n));
            }
        }
        let mut path = Vec::new();
        let mut cursor = (!symbols.is_empty()).then_some(0);
        while let Some(i) = cursor {
            let sym = &symbols[i];
            let id = self
                .index
                .get(&s[sym.start..sym.end])
                .copied()
                .unwrap_or(self.unk_id);
            path.push((sym.start, sym.end, id));
            cursor = sym.next;
        }
        path
    }

    /// Unigram: the best segmentation under the pieces' scores (Viterbi;
    /// the earliest-found best path wins ties, as in SentencePiece).
    fn viterbi_path(&self, s: &str) -> Vec<(usize, usize, u32)> {
        let unk_score = self.min_score - UNK_PENALTY;
        // best[i]: (score, start, id) of the best path ending at byte i.
        let mut best: Vec<Option<(f32, usize, u32)>> = vec![None; s.len() + 1];
        best[0] = Some((0.0, 0, 0));
        let mut start = 0;
        while start < s.len() {
            let Some((base, _, _)) = best[start] else {
                start += 1;
                continue;
            };
            let char_len = s[start..].chars().next().map_or(1, char::len_utf8);
            let mut single = false;
            let mut end = start;
            for c in s[start..].chars() {
                end += c.len_utf8();
                if end - start > self.longest {
                    break;
                }
                let Some(&id) = self.index.get(&s[start..end]) else {
                    continue;
                };
                let (_, score, kind) = &self.pieces[id as usize];
                if *kind == PieceKind::Unused {
                    continue;
                }
                let score = if *kind == PieceKind::UserDefined {
                    (end - start) as f32 * self.max_score - 0.1
                } else {
                    *score
                };
                let candidate = base + score;
                if best[end].is_none_or(|(b, _, _)| candidate > b) {
                    best[end] = Some((candidate, start, id));
                }
                if end - start == char_len {
                    single = true;
                }
            }
            if !single {
                let end = start + char_len;
                let candidate = base + unk_score;
                if best[end].is_none_or(|(b, _, _)| candidate > b) {
                    best[end] = Some((candidate, start, self.unk_id));
                }
            }
            start += char_len;
        }
        let mut path = Vec::new();
        let mut end = s.len();
        while end > 0 {
            let (_, start, id) = best[end].expect("every character ends a path");
            path.push((start, end, id));
            end = start;
        }
        path.reverse();
        path
    }

    /// The pieces of a segmentation: a run of unknown spans is one unknown
    /// piece holding their text (or, with `byte_fallback`, their bytes).
    fn pieces_of_path(&self, s: &str, path: Vec<(usize, usize, u32)>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::with_capacity(path.len());
        let mut prev_unk = false;
        for (start, end, id) in path {
            let text = &s[start..end];
            if id == self.unk_id {
                if self.byte_fallback {
                    for b in text.bytes() {
                        let name = format!("<0x{b:02X}>");
                        let id = self.all.get(&name).copied().unwrap_or(self.unk_id);
                        out.push(Piece { id, text: name });
                    }
                    continue;
                }
                if prev_unk {
                    // A run of unknown characters is one unknown piece.
                    if let Some(last) = out.last_mut() {
                        last.text.push_str(text);
                    }
                    continue;
                }
                prev_unk = true;
                out.push(Piece {
                    id,
                    text: text.to_string(),
                });
            } else {
                prev_unk = false;
                out.push(Piece {
                    id,
                    text: self.pieces[id as usize].0.clone(),
                });
            }
        }
        out
    }

    /// Text of a sequence of pieces (SentencePiece's `DecodePieces`): control
    /// pieces vanish, the unknown piece reads as the model's unknown surface
    /// (` ⁇ `), text that is not a piece is kept as it is, runs of byte pieces
    /// become their UTF-8 text, `▁` becomes a space, and the first piece's
    /// leading `▁` is dropped.
    pub(crate) fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut at_start = true;
        let flush = |bytes: &mut Vec<u8>, out: &mut String, at_start: &mut bool| {
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(bytes).into_owned();
                out.push_str(&self.surface(&text, at_start));
                bytes.clear();
            }
        };
        for piece in pieces {
            let piece = piece.as_ref();
            let id = self.piece_to_id(piece);
            let kind = self.pieces[id as usize].2;
            if kind == PieceKind::Byte {
                if let Some(b) = parse_byte_piece(piece) {
                    bytes.push(b);
                    continue;
                }
            }
            flush(&mut bytes, &mut out, &mut at_start);
            match kind {
                PieceKind::Control => {}
                PieceKind::Unknown if self.pieces[id as usize].0 == piece => {
                    out.push_str(&self.unk_surface);
                    at_start = false;
                }
                PieceKind::Unknown => {
                    out.push_str(piece);
                    at_start = false;
                }
                _ => out.push_str(&self.surface(piece, &mut at_start)),
            }
        }
        flush(&mut bytes, &mut out, &mut at_start);
        out
    }

    /// A piece's text with `▁` as spaces, less the leading one at the start.
    fn surface(&self, piece: &str, at_start: &mut bool) -> String {
        let mut p = piece;
        if *at_start {
            p = p.strip_prefix(SPACE).unwrap_or(p);
        }
        if !p.is_empty() {
            *at_start = false;
        }
        p.replace(SPACE, " ")
    }
}

fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// SentencePiece's `Normalizer`: the precompiled character map, then the
/// whitespace rules.
#[derive(Debug, Clone)]
struct Normalizer {
    /// The map's double-array trie (empty for the identity).
    trie: Vec<u32>,
    /// The replacement strings, each ended by a NUL.
    replacements: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Normalizer {
    fn new(spec: &proto::NormalizerSpec) -> Result<Self, SpmError> {
        let blob = spec.precompiled_charsmap.as_deref().unwrap_or(&[]);
        let (trie, replacements) = if blob.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let bad = || SpmError::Parse("its precompiled character map is malformed".into());
            let size = u32::from_le_bytes(
                blob.get(..4)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ) as usize;
            let trie_bytes = blob.get(4..4 + size).ok_or_else(bad)?;
            if !size.is_multiple_of(4) || size == 0 {
                return Err(bad());
            }
            let trie = trie_bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (trie, blob[4 + size..].to_vec())
        };
        Ok(Self {
            trie,
            replacements,
            add_dummy_prefix: spec.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: spec.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: spec.escape_whitespaces.unwrap_or(true),
        })
    }

    /// The longest rule matching a prefix of `input`: (bytes consumed,
    /// replacement).
    fn longest_rule(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        if self.trie.is_empty() {
            return None;
        }
        // Darts-clone's double array: each unit holds a label, an offset to
        // its children and whether it has a leaf (the value's unit).
        let unit = |i: usize| self.trie.get(i).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let has_leaf = |u: u32| (u >> 8) & 1 == 1;
        let label = |u: u32| u & ((1 << 31) | 0xff);
        let value = |u: u32| (u & ((1 << 31) - 1)) as usize;
        let mut pos = offset(unit(0)?);
        let mut found = None;
        for (i, &c) in input.iter().enumerate() {
            if c == 0 {
                break;
            }
            pos ^= c as usize;
            let u = unit(pos)?;
            if label(u) != c as u32 {
                break;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let v = value(unit(pos)?);
                found = Some((i + 1, v));
            }
        }
        let (len, v) = found?;
        let rest = self.replacements.get(v..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }

    /// The normalized form of the next character (or rule) of `input`, and
    /// how many bytes it consumed.
    fn prefix<'a>(&'a self, input: &'a str) -> (&'a str, usize) {
        if let Some((len, rep)) = self.longest_rule(input.as_bytes()) {
            if let Ok(rep) = std::str::from_utf8(rep) {
                if input.is_char_boundary(len) {
                    return (rep, len);
                }
            }
        }
        let n = input.chars().next().map_or(input.len(), char::len_utf8);
        (&input[..n], n)
    }

    fn normalize(&self, text: &str) -> String {
        let mut input = text;
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (rep, n) = self.prefix(input);
                if rep != " " {
                    break;
                }
                input = &input[n..];
            }
        }
        let mut out = String::with_capacity(text.len() + 3);
        if input.is_empty() {
            return out;
        }
        let space = if self.escape_whitespaces { SPACE } else { " " };
        if self.add_dummy_prefix {
            out.push_str(space);
        }
        let mut prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (rep, n) = self.prefix(input);
            let mut sp = rep;
            if prev_space {
                sp = sp.trim_start_matches(' ');
            }
            if !sp.is_empty() {
                for c in sp.chars() {
                    if c == ' ' {
                        out.push_str(space);
                    } else {
                        out.push(c);
                    }
                }
                prev_space = sp.ends_with(' ');
            }
            input = &input[n..];
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }
}
