//! Loading a Hugging Face model folder: `config.json` and one or many `*.safetensors` shards
//! (with `model.safetensors.index.json`), read one tensor at a time (safetensors format:
//! an 8-byte little-endian header length, a JSON header, then the raw data).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use logo_formats::hf_config::LlamaConfig;

use super::Llama;
use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, Deserialize)]
struct SafetensorsEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// Where a tensor lies: its file, the file's data start, and its header entry.
#[derive(Debug, Clone)]
struct TensorLocation {
    file: PathBuf,
    data_start: u64,
    entry: SafetensorsEntry,
}

/// Reads the header of a safetensors file (8-byte little-endian length, then JSON).
fn read_safetensors_header(path: &Path) -> Result<Vec<(String, TensorLocation)>> {
    let mut f = File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| TrainerError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(TrainerError::model(
            path,
            format!("safetensors header of {len} bytes; expected < 100 MB"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| TrainerError::io(path, e))?;
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| TrainerError::model(path, format!("safetensors header: {e}")))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let entry: SafetensorsEntry = serde_json::from_value(value)
            .map_err(|e| TrainerError::model(path, format!("safetensors entry {name}: {e}")))?;
        out.push((
            name,
            TensorLocation {
                file: path.to_path_buf(),
                data_start: 8 + len,
                entry,
            },
        ));
    }
    Ok(out)
}

/// Reads one tensor from its safetensors file (one tensor in memory at a time).
fn read_safetensors_tensor(name: &str, loc: &TensorLocation) -> Result<Tensor> {
    let path = &loc.file;
    let kind = match loc.entry.dtype.as_str() {
        "F32" => Kind::Float,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F64" => Kind::Double,
        other => {
            return Err(TrainerError::model(
                path,
                format!("tensor {name}: expected dtype F32, BF16, F16 or F64, got {other}"),
            ))
        }
    };
    let [start, end] = loc.entry.data_offsets;
    let numel: i64 = loc.entry.shape.iter().product();
    let expected = numel as u64 * kind.elt_size_in_bytes() as u64;
    if end < start || end - start != expected {
        return Err(TrainerError::model(
            path,
            format!(
                "tensor {name}: expected {expected} bytes for shape {:?}, got offsets {start}..{end}",
                loc.entry.shape
            ),
        ));
    }
    let mut f = File::open(path).map_err(|e| TrainerError::io(path, e))?;
    f.seek(SeekFrom::Start(loc.data_start + start))
        .map_err(|e| TrainerError::io(path, e))?;
    let mut bytes = vec![0u8; expected as usize];
    f.read_exact(&mut bytes)
        .map_err(|e| TrainerError::io(path, e))?;
    Ok(Tensor::f_from_data_size(&bytes, &loc.entry.shape, kind)?)
}

/// The validated `dir/config.json` ([`LlamaConfig::from_json_file`], shared with the engine).
/// Errors: [`TrainerError::Model`] naming the file and key.
pub(super) fn read_config(dir: &Path) -> Result<LlamaConfig> {
    LlamaConfig::from_json_file(&dir.join("config.json")).map_err(TrainerError::from)
}

/// Loads a HF folder: `config.json`, then the shards named by
/// `model.safetensors.index.json` (or every `*.safetensors` in the folder).
pub(super) fn load_hf_folder(
    dir: &Path,
    lora: Option<&LoraConfig>,
    device: Device,
    kind: Kind,
) -> Result<Llama> {
    let cfg = read_config(dir)?;
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(|e| TrainerError::io(&index, e))?;
        let idx: Index =
            serde_json::from_str(&text).map_err(|e| TrainerError::model(&index, e.to_string()))?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    } else {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| TrainerError::io(dir, e))? {
            let p = entry.map_err(|e| TrainerError::io(dir, e))?.path();
            if p.extension().is_some_and(|e| e == "safetensors") {
                files.push(p);
            }
        }
        files.sort();
        files
    };
    if files.is_empty() {
        return Err(TrainerError::model(
            dir,
            "no *.safetensors weights in the folder",
        ));
    }
    let mut locations = HashMap::new();
    for f in &files {
        locations.extend(read_safetensors_header(f)?);
    }
    let mut fetch = |name: &str, _shape: &[i64]| -> Result<Option<Tensor>> {
        locations
            .get(name)
            .map(|loc| read_safetensors_tensor(name, loc))
            .transpose()
    };
    Llama::from_weights(cfg, lora, device, kind, dir, None, &mut fetch)
}
