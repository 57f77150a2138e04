//! A checkpoint's safetensors files, read one tensor at a time.
//!
//! Why not candle's loaders: its buffered loader holds the whole file in
//! memory while the model packs its own copies (for a 1.2 GB BART, 2.8 GB
//! at the peak of the load), and its mapped one leaves every page it read
//! resident. Here only the header of each file is kept; a tensor's bytes
//! are read when a layer asks for it and dropped once the layer has packed
//! (or quantized) them, so the load's peak is the model plus one tensor.
//!
//! A file's header is checked before anything is read from it: its length
//! within the file, every tensor's data inside the data section and of the
//! size its type and shape make. A damaged or hostile file is refused with
//! the tensor named, never read out of bounds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use serde::Deserialize;

use crate::BackendError;

/// Largest header accepted (the files precis reads have headers of a few
/// hundred KB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// Where one tensor lies.
#[derive(Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    start: u64,
    len: usize,
}

/// The tensors of one or more safetensors files, by name.
#[derive(Clone)]
pub(super) struct SafetensorsFiles {
    files: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFiles {
    /// Opens `paths` and reads their headers; a tensor named in two files
    /// is refused.
    pub(super) fn open(paths: &[PathBuf]) -> Result<Self, BackendError> {
        let mut out = Self {
            files: Vec::with_capacity(paths.len()),
            entries: HashMap::new(),
        };
        for path in paths {
            out.add(path)?;
        }
        Ok(out)
    }

    fn add(&mut self, path: &Path) -> Result<(), BackendError> {
        let bad = |what: String| BackendError::load(path, what);
        let mut file = File::open(path).map_err(|e| BackendError::load(path, e))?;
        let size = file
            .metadata()
            .map_err(|e| BackendError::load(path, e))?
            .len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("it is shorter than a safetensors header".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > size {
            return Err(bad(format!(
                "its header claims {header_len} bytes, past the file's {size}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| BackendError::load(path, e))?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("its header is not safetensors JSON: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = size - data_start;
        let index = self.files.len();
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let e: HeaderEntry = serde_json::from_value(value)
                .map_err(|err| bad(format!("tensor `{name}` in the header: {err}")))?;
            let dt = dtype(&e.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has type {}, which precis does not read",
                    e.dtype
                ))
            })?;
            let [begin, end] = e.data_offsets;
            let want = e
                .shape
                .iter()
                .try_fold(dt.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
            if begin > end || end > data_len || want != Some(end - begin) {
                return Err(bad(format!(
                    "tensor `{name}` ({} {:?}) lies at bytes {begin}..{end} of a data section of {data_len}, which does not fit its type and shape",
                    e.dtype, e.shape
                )));
            }
            let entry = Entry {
                file: index,
                dtype: dt,
                shape: e.shape,
                start: data_start + begin,
                len: (end - begin) as usize,
            };
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(bad(format!("tensor `{name}` is also in another shard")));
            }
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// The `rows × cols` float table `name`, left in its file ([`FileRows`]);
    /// `None` when there is no such tensor of that shape in F32, F16 or
    /// BF16.
    pub(super) fn rows(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<FileRows>, BackendError> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        if e.shape != [rows, cols] || !matches!(e.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Ok(None);
        }
        let path = &self.files[e.file];
        let file = File::open(path).map_err(|err| BackendError::load(path, err))?;
        Ok(Some(FileRows {
            file: Mutex::new(file),
            path: path.clone(),
            start: e.start,
            dtype: e.dtype,
            rows,
            cols,
        }))
    }

    fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
        let path = &self.files[e.file];
        let failed = |err: std::io::Error| {
            candle_core::Error::Msg(format!("reading `{name}` from {}: {err}", path.display()))
        };
        let mut file = File::open(path).map_err(failed)?;
        file.seek(SeekFrom::Start(e.start)).map_err(failed)?;
        // Floats straight into the f32 values the tensor keeps: one buffer
        // the size of the tensor, not the bytes and then their copy.
        let count = e.shape.iter().product::<usize>();
        let values = match e.dtype {
            DType::F32 if cfg!(target_endian = "little") => {
                let mut v = vec![0f32; count];
                file.read_exact(bytemuck::cast_slice_mut(&mut v))
                    .map_err(failed)?;
                v
            }
            DType::F16 | DType::BF16 => {
                let mut v = vec![0u16; count];
                file.read_exact(bytemuck::cast_slice_mut(&mut v))
                    .map_err(failed)?;
                let f16 = e.dtype == DType::F16;
                v.into_iter()
                    .map(|b| {
                        let b = u16::from_le(b);
                        if f16 {
                            half::f16::from_bits(b).to_f32()
                        } else {
                            half::bf16::from_bits(b).to_f32()
                        }
                    })
                    .collect()
            }
            _ => {
                let mut bytes = vec![0u8; e.len];
                file.read_exact(&mut bytes).map_err(failed)?;
                return Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device);
            }
        };
        Tensor::from_vec(values, e.shape.as_slice(), device)
    }
}

/// A table left in its safetensors file, whose rows are read when asked
/// for: the token embeddings of an int8 model (tied to its output layer),
/// read as stored instead of from the output layer's int8 rows, without
/// the table in memory. The file stays open, so a checkpoint fetched again
/// (written to a new name and renamed over this one) does not change what
/// is read.
pub(super) struct FileRows {
    file: Mutex<File>,
    path: PathBuf,
    /// Absolute byte offset of row 0.
    start: u64,
    dtype: DType,
    rows: usize,
    cols: usize,
}

impl FileRows {
    /// Row `r` of each of `ids` into `out` (`ids.len() × cols` values).
    pub(super) fn gather(&self, ids: &[u32], out: &mut [f32]) -> Result<(), BackendError> {
        let cols = self.cols;
        assert_eq!(out.len(), ids.len() * cols, "{} rows of {cols}", ids.len());
        let size = self.dtype.size_in_bytes();
        let mut bits = vec![0u16; if size == 2 { cols } else { 0 }];
        let failed = |err: std::io::Error| {
            BackendError::Runtime(format!(
                "reading the token embeddings from {}: {err} (was the file changed while precis ran?)",
                self.path.display()
            ))
        };
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
            let r = id as usize;
            if r >= self.rows {
                return Err(BackendError::Runtime(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.rows
                )));
            }
            file.seek(SeekFrom::Start(self.start + (r * cols * size) as u64))
                .map_err(failed)?;
            match self.dtype {
                DType::F32 if cfg!(target_endian = "little") => file
                    .read_exact(bytemuck::cast_slice_mut(row))
                    .map_err(failed)?,
                DType::F32 => {
                    file.read_exact(bytemuck::cast_slice_mut(row))
                        .map_err(failed)?;
                    row.iter_mut()
                        .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
                }
                _ => {
                    file.read_exact(bytemuck::cast_slice_mut(&mut bits))
                        .map_err(failed)?;
                    let f16 = self.dtype == DType::F16;
                    for (v, &b) in row.iter_mut().zip(&bits) {
                        let b = u16::from_le(b);
                        *v = if f16 {
                            half::f16::from_bits(b).to_f32()
                        } else {
                            half::bf16::from_bits(b).to_f32()
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        super::layers::of_shape(self.get_unchecked(name, dtype, device)?, name, &shape)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::var_builder::SimpleBackend;

    fn write(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn tensors_read_back_as_candle_saves_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b)]),
            &path,
        )
        .unwrap();
        let files = SafetensorsFiles::open(&[path]).unwrap();
        let got = files
            .get(
                (2, 3).into(),
                "a",
                Default::default(),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        let b = files.get_unchecked("b", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        assert!(files.contains_tensor("a") && !files.contains_tensor("c"));
        let wrong = files.get(
            (3, 2).into(),
            "a",
            Default::default(),
            DType::F32,
            &Device::Cpu,
        );
        assert!(wrong.unwrap_err().to_string().contains("shape"));
    }

    #[test]
    fn rows_left_in_the_file_read_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let values: Vec<f32> = (0..5 * 4).map(|i| i as f32 * 0.37 - 3.0).collect();
        let t = Tensor::from_vec(values, (5, 4), &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .map(|dt| (format!("{dt:?}"), t.to_dtype(dt).unwrap()))
            .chain([(
                "ids".to_string(),
                Tensor::new(&[1u32, 2], &Device::Cpu).unwrap(),
            )])
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let name = format!("{dt:?}");
            let rows = files.rows(&name, 5, 4).unwrap().expect("a float table");
            let mut out = vec![f32::NAN; 3 * 4];
            rows.gather(&[4, 0, 4], &mut out).unwrap();
            // What reading the whole tensor gives, row for row.
            let whole = files
                .get_unchecked(&name, DType::F32, &Device::Cpu)
                .unwrap();
            let whole = whole.to_vec2::<f32>().unwrap();
            assert_eq!(
                out,
                [&whole[4][..], &whole[0], &whole[4]].concat(),
                "{name}"
            );
            let err = rows.gather(&[5], &mut out[..4]).unwrap_err().to_string();
            assert!(
                err.contains("token id 5 is outside the vocabulary of 5"),
                "{err}"
            );
        }
        // Not a float table, not that shape, not there: none.
        assert!(files.rows("ids", 2, 1).unwrap().is_none());
        assert!(files.rows("F32", 4, 5).unwrap().is_none());
        assert!(files.rows("missing", 5, 4).unwrap().is_none());
        // A file cut short after it was opened: an error, not a panic.
        let rows = files.rows("F32", 5, 4).unwrap().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8)
            .unwrap();
        let err = rows.gather(&[3], &mut [0.0; 4]).unwrap_err().to_string();
        assert!(err.contains("was the file changed"), "{err}");
    }

    #[test]
    fn damaged_headers_are_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let refused = |header: &str, data: &[u8], says: &str| {
            write(&path, header, data);
            let err = SafetensorsFiles::open(std::slice::from_ref(&path))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(says), "{header}: {err}");
        };
        // Data past the end, sizes that do not fit the shape, reversed
        // offsets, an unknown type, not JSON.
        let t = |offsets: &str, shape: &str, dtype: &str| {
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
        };
        refused(&t("[0,16]", "[2,2]", "F32"), &[0; 8], "`w`");
        refused(&t("[0,8]", "[2,2]", "F32"), &[0; 8], "`w`");
        refused(&t("[8,0]", "[2]", "F32"), &[0; 8], "`w`");
        refused(&t("[0,8]", "[2]", "X9"), &[0; 8], "X9");
        refused("not json", &[], "not safetensors JSON");
        // A header length past the file.
        std::fs::write(&path, 1_000_000u64.to_le_bytes()).unwrap();
        let err = SafetensorsFiles::open(std::slice::from_ref(&path))
            .err()
            .unwrap();
        assert!(err.to_string().contains("header claims"), "{err}");
        // And a good one of the same shape reads.
        write(
            &path,
            &t("[0,8]", "[2]", "F32"),
            &[0, 0, 128, 63, 0, 0, 0, 64],
        );
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let v = files.get_unchecked("w", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(v.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }
}
