//! A GGUF file mapped into memory, and typed views of its tensors.
//!
//! The decoder reads its weights straight from the page cache: nothing is
//! copied except the small f32 vectors (norms, biases), so resident memory stays
//! close to the file size plus the KV cache, several processes share one copy,
//! and loading takes as long as parsing the header. This module holds one of the
//! two places where precis uses `unsafe` (the other is the `kernels` module).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, TensorInfo};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use super::kernels::{QMatrix, QType};
use super::BackendError;

/// Where a tensor lies in the mapped file, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorRef {
    /// Storage type.
    pub qtype: QType,
    /// Rows (1 for a vector).
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Byte offset in the file.
    offset: usize,
    /// Byte length.
    len: usize,
}

/// A mapped GGUF file: its parsed header and its bytes.
pub struct GgufFile {
    path: PathBuf,
    /// The parsed header (metadata and tensor table).
    pub content: gguf_file::Content,
    map: Arc<Mmap>,
}

/// The precis kernel type of a GGML storage type, when precis runs it.
pub(crate) fn qtype_of(dtype: GgmlDType) -> Option<QType> {
    Some(match dtype {
        GgmlDType::F32 => QType::F32,
        GgmlDType::F16 => QType::F16,
        GgmlDType::Q4_0 => QType::Q4_0,
        GgmlDType::Q4_1 => QType::Q4_1,
        GgmlDType::Q5_0 => QType::Q5_0,
        GgmlDType::Q8_0 => QType::Q8_0,
        GgmlDType::Q4K => QType::Q4_K,
        GgmlDType::Q5K => QType::Q5_K,
        GgmlDType::Q6K => QType::Q6_K,
        _ => return None,
    })
}

impl GgufFile {
    /// Parses the header and maps the file.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let mut file = File::open(path).map_err(|e| BackendError::load(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| BackendError::load(path, format!("not a valid GGUF file ({e})")))?;
        // SAFETY: the map is read-only and lives as long as the views into it
        // (they borrow `self`). Mapping is unsound only if another process
        // truncates or rewrites the file while it is mapped; precis never writes
        // a model file in place (fetches go to a temporary name and are renamed
        // over it, which leaves this mapping on the old inode), and the README
        // asks users not to edit weight files under a running server.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| BackendError::load(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            map: Arc::new(map),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks up a tensor and checks it lies inside the file with the size its type implies.
    pub fn tensor(&self, name: &str) -> Result<TensorRef, BackendError> {
        let info =
            self.content.tensor_infos.get(name).ok_or_else(|| {
                BackendError::load(&self.path, format!("tensor `{name}` is missing"))
            })?;
        self.check(name, info)
    }

    /// Whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn check(&self, name: &str, info: &TensorInfo) -> Result<TensorRef, BackendError> {
        let qtype = qtype_of(info.ggml_dtype).ok_or_else(|| {
            BackendError::load(
                &self.path,
                format!(
                    "tensor `{name}` is stored as {:?}, which precis does not run (it runs F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K)",
                    info.ggml_dtype
                ),
            )
        })?;
        let dims = info.shape.dims();
        let (rows, cols) = match dims {
            [cols] => (1, *cols),
            [rows, cols] => (*rows, *cols),
            _ => {
                return Err(BackendError::load(
                    &self.path,
                    format!("tensor `{name}` has shape {dims:?}; expected a vector or a matrix"),
                ))
            }
        };
        if cols % qtype.block_len() != 0 {
            return Err(BackendError::load(
                &self.path,
                format!(
                    "tensor `{name}` has rows of {cols} values, not a whole number of {} blocks",
                    qtype.name()
                ),
            ));
        }
        let len = rows * qtype.row_bytes(cols);
        let offset = self.content.tensor_data_offset as usize + info.offset as usize;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.map.len())
        {
            return Err(BackendError::load(
                &self.path,
                format!("tensor `{name}` runs past the end of the file; the file is truncated or corrupt"),
            ));
        }
        Ok(TensorRef {
            qtype,
            rows,
            cols,
            offset,
            len,
        })
    }

    /// The bytes of a tensor.
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.map[t.offset..t.offset + t.len]
    }

    /// A matrix view of a tensor.
    pub fn matrix(&self, t: &TensorRef) -> QMatrix<'_> {
        QMatrix::new(t.qtype, t.rows, t.cols, self.bytes(t))
            .expect("tensor size was checked when it was looked up")
    }

    /// A vector tensor (norm weight, bias) as f32 values, copied.
    pub(crate) fn vector(&self, name: &str) -> Result<Vec<f32>, BackendError> {
        let t = self.tensor(name)?;
        let m = self.matrix(&t);
        let mut out = vec![0.0; t.rows * t.cols];
        for (r, chunk) in out.chunks_mut(t.cols).enumerate() {
            m.dequantize_row(r, chunk);
        }
        Ok(out)
    }

    /// Metadata values by key, for readers that need more than one.
    pub fn metadata(&self) -> &HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }
}
