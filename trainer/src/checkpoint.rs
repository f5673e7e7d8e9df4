//! What a run writes and reads back: `checkpoint-{step}/` (adapter, `optimizer.safetensors`,
//! `trainer_state.json`), the final PEFT adapter, `metrics.jsonl` and the JSON files.
//!
//! Crash safety: a checkpoint is written into a temporary folder, `fsync`ed and renamed into
//! place, so a kill -9 at any moment leaves the earlier checkpoints loadable and never a
//! partial `checkpoint-N` ([`latest_checkpoint`] finds the newest); the final adapter and the
//! JSON files are renamed into place too, and a torn last line of `metrics.jsonl` is dropped
//! on resume ([`MetricsLog::open`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{deserialize_state_config, RawTrainConfig, TrainConfig};
use crate::error::{Result, TrainerError};
use crate::loss::StepMetrics;
use crate::model::Llama;
use crate::optim::AdamW;
use crate::peft::save_adapter;

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// The run's configuration (validated when it was written); that of a run before the
    /// `gradient` key reads with its booleans mapped onto it ([`deserialize_state_config`]).
    #[serde(deserialize_with = "deserialize_state_config")]
    pub config: RawTrainConfig,
    /// Ranks of the run (data order depends on it); 1 when absent.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// `metrics.jsonl` of the output folder, one [`StepMetrics`] per line, plus the history the
/// plot draws (the steps before a resume included).
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    history: Vec<StepMetrics>,
}

impl MetricsLog {
    /// Opens `output/metrics.jsonl` for a run that starts after `start_step`: the lines of
    /// steps ≤ `start_step` are kept (a resumed run repeats the later ones), the file is
    /// rewritten with them. Removes the temporary folders of an interrupted write first
    /// ([`remove_interrupted_writes`]). Errors: [`TrainerError::Io`], [`TrainerError::Input`]
    /// for a bad line ([`read_metrics`]).
    pub fn open(output: &Path, start_step: usize) -> Result<Self> {
        std::fs::create_dir_all(output).map_err(|e| TrainerError::io(output, e))?;
        remove_interrupted_writes(output)?;
        let path = output.join("metrics.jsonl");
        let mut history = read_metrics(&path)?;
        history.retain(|m| m.step <= start_step);
        let file = std::fs::File::create(&path).map_err(|e| TrainerError::io(&path, e))?;
        let mut log = MetricsLog {
            path,
            file,
            history: Vec::new(),
        };
        for m in history {
            log.append(m)?;
        }
        Ok(log)
    }

    /// Appends one step's line. Errors: [`TrainerError::Io`].
    pub fn append(&mut self, m: StepMetrics) -> Result<()> {
        let line = serde_json::to_string(&m).expect("metrics serialise");
        writeln!(self.file, "{line}").map_err(|e| TrainerError::io(&self.path, e))?;
        self.history.push(m);
        Ok(())
    }

    /// Every step logged, oldest first.
    pub fn history(&self) -> &[StepMetrics] {
        &self.history
    }
}

/// Writes `checkpoint-{step}/` atomically: everything goes into a temporary folder
/// (`.checkpoint-{step}.tmp-{pid}`), every file and the folder are `fsync`ed, then the folder
/// is renamed into place and the output folder `fsync`ed. A kill at any moment leaves either
/// no `checkpoint-{step}` or a complete one, and the earlier checkpoints untouched.
/// Errors: [`TrainerError::Io`], [`TrainerError::Torch`] writing the tensors.
pub fn save_checkpoint(
    model: &Llama,
    opt: &AdamW,
    cfg: &TrainConfig,
    step: usize,
    total_steps: usize,
    world_size: usize,
) -> Result<()> {
    let dir = cfg.output.join(format!("checkpoint-{step}"));
    let tmp = cfg
        .output
        .join(format!(".checkpoint-{step}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    save_adapter(model, &tmp, &cfg.model.display().to_string())?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    write_json(
        &tmp.join("trainer_state.json"),
        &TrainerState {
            step,
            total_steps,
            config: cfg.raw().clone(),
            world_size,
        },
    )?;
    sync_tree(&tmp)?;
    // A checkpoint of the same step from an earlier run (a resume re-saving it) moves aside
    // first: a folder cannot be renamed over a non-empty one.
    let old = cfg
        .output
        .join(format!(".checkpoint-{step}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(|e| TrainerError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainerError::io(&dir, e))?;
    sync_dir(&cfg.output)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
    }
    Ok(())
}

/// Writes the final adapter (`adapter_config.json`, `adapter_model.safetensors`) into
/// `cfg.output` through a temporary folder and a rename per file, each `fsync`ed. Errors: as
/// [`save_checkpoint`].
pub fn save_final_adapter(model: &Llama, cfg: &TrainConfig) -> Result<()> {
    let tmp = cfg
        .output
        .join(format!(".adapter.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    }
    save_adapter(model, &tmp, &cfg.model.display().to_string())?;
    sync_tree(&tmp)?;
    // Weights first: the config is the same at every step of a run.
    for name in [
        logo_formats::peft::ADAPTER_WEIGHTS_FILE,
        logo_formats::peft::ADAPTER_CONFIG_FILE,
    ] {
        let to = cfg.output.join(name);
        std::fs::rename(tmp.join(name), &to).map_err(|e| TrainerError::io(&to, e))?;
    }
    sync_dir(&cfg.output)?;
    std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))
}

/// Removes the temporary folders a killed run left (`.checkpoint-*.tmp-*`, `.checkpoint-*.old-*`,
/// `.adapter.tmp-*`); they were never a checkpoint. Errors: [`TrainerError::Io`].
pub fn remove_interrupted_writes(output: &Path) -> Result<()> {
    for entry in std::fs::read_dir(output).map_err(|e| TrainerError::io(output, e))? {
        let p = entry.map_err(|e| TrainerError::io(output, e))?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let interrupted = (name.starts_with(".checkpoint-")
            && (name.contains(".tmp-") || name.contains(".old-")))
            || name.starts_with(".adapter.tmp-");
        if interrupted && p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(|e| TrainerError::io(&p, e))?;
        }
    }
    Ok(())
}

/// `fsync`s every file of `dir` (one level) and `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| TrainerError::io(dir, e))? {
        let p = entry.map_err(|e| TrainerError::io(dir, e))?.path();
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| TrainerError::io(&p, e))?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainerError::io(dir, e))
}

/// The newest complete checkpoint of an output folder: the `checkpoint-N` with the largest N
/// that holds `trainer_state.json` (checkpoints appear only whole, see the module doc), or
/// `None`. Temporary folders of an interrupted write (`.checkpoint-N.tmp-PID`) are ignored.
pub fn latest_checkpoint(output: &Path) -> Option<PathBuf> {
    std::fs::read_dir(output)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n: usize = p
                .file_name()?
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            p.join("trainer_state.json").is_file().then_some((n, p))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Writes `value` as pretty JSON through a temporary file, `fsync` and a rename. Errors:
/// [`TrainerError::Io`].
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialises");
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| TrainerError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainerError::io(path, e))
}

/// Reads a JSON file. Errors: [`TrainerError::Io`]; [`TrainerError::Input`] naming the file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainerError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads `metrics.jsonl` (empty when absent); a torn last line (no newline: the process was
/// killed while writing it) is dropped. Errors: [`TrainerError::Input`] for another bad line.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(vec![]);
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(l) {
            Ok(m) => out.push(m),
            // A last line without its newline was torn by a kill while it was written.
            Err(_) if i == last => {}
            Err(e) => {
                return Err(TrainerError::Input {
                    path: path.to_path_buf(),
                    message: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok(out)
}
