//! The training loop: LoRA over a frozen backbone with the LOGO objective (paper 3.2.1 and
//! 4.1), AdamW with linear warm-up then cosine decay, gradient accumulation and clipping,
//! checkpoints that resume the same run, metrics as JSON Lines and a PNG of the curves.
//!
//! Determinism: the data order depends only on `seed`; LoRA dropout is re-seeded at every
//! optimizer step from `seed` and the step, so a resumed run repeats the uninterrupted run's
//! losses.
//!
//! Data parallel ([`train_with`]): each rank reads its shard of the row groups, the LoRA
//! gradients are averaged over the ranks before clipping ([`crate::dist::average_gradients`]),
//! the logged metrics are means over the ranks, and only rank 0 writes files.
//!
//! Output folder: `adapter_config.json` + `adapter_model.safetensors` (PEFT) at the end,
//! `checkpoint-{step}/` (adapter, `optimizer.safetensors`, `trainer_state.json`) every
//! `save_steps`, `metrics.jsonl`, `training.png`, `summary.json`.
//!
//! Crash safety: a checkpoint is written into a temporary folder, `fsync`ed and renamed into
//! place, so a kill -9 at any moment leaves the earlier checkpoints loadable and never a
//! partial `checkpoint-N` ([`latest_checkpoint`] finds the newest); the final adapter and the
//! JSON files are renamed into place too, and a torn last line of `metrics.jsonl` is dropped
//! on resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{collate, Batch, ExampleStream, TrainingData};
use crate::decoupled::backward_decoupled;
use crate::dist::{average_gradients, broadcast_parameters, inject_fault, Collective, Local};
use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::loss::{logo_loss, sequence_logps, LossConfig, LossMetrics};
use crate::model::Llama;
use crate::optim::{lr_at, AdamW, AdamWConfig};
use crate::peft::{load_adapter, save_adapter};
use crate::shared_prompt::backward_shared_prompt;

/// Everything a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Folder of the engine's Parquet output.
    pub data: PathBuf,
    /// Base model: a Hugging Face folder (config.json, *.safetensors) or a GGUF file.
    pub model: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// β, γ, λ of Eq. 2/3.
    pub loss: LossConfig,
    /// LoRA rank, alpha, dropout, targets.
    pub lora: LoraConfig,
    /// AdamW.
    pub optim: AdamWConfig,
    /// Optimizer steps; `None`: one pass over the data.
    pub max_steps: Option<usize>,
    /// Samples per micro-batch on each rank (each is M + 1 sequences).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Gradient clipping norm (0 = off).
    pub max_grad_norm: f64,
    /// Checkpoint every this many steps (0 = only at the end).
    pub save_steps: usize,
    /// Rows in the shuffle buffer.
    pub shuffle_buffer: usize,
    /// Seed of data order, LoRA init and dropout.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Checkpoint folder to resume from.
    pub resume: Option<PathBuf>,
    /// Draw a progress bar.
    pub progress: bool,
    /// Compute the gradient one response at a time ([`crate::decoupled`]): activation memory
    /// independent of M for ~1.5× the compute. Without it and without `share_prompt`, all
    /// M + 1 sequences of the micro-batch form one batch (the joint backward).
    #[serde(default)]
    pub decoupled: bool,
    /// Per-layer activation checkpointing ([`Llama::backward_checkpointed`]): keep only layer
    /// inputs, recompute each layer in the backward (~1.3× compute, activation memory of one
    /// layer).
    #[serde(default)]
    pub checkpointing: bool,
    /// Run each sample's prompt once for its M + 1 responses ([`crate::shared_prompt`]): one
    /// prompt forward and backward per sample instead of M + 1, activation memory almost flat
    /// in M. Excludes `decoupled`.
    #[serde(default)]
    pub share_prompt: bool,
}

pub use crate::loss::StepMetrics;

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Ranks of the run (data order depends on it); 1 when absent.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// What [`train`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps done (including resumed ones).
    pub steps: usize,
    /// Metrics of the steps run in this process.
    pub metrics: Vec<StepMetrics>,
    /// The final adapter folder.
    pub adapter: PathBuf,
    /// What was minimised (`--objective`), so a report can tell runs apart.
    #[serde(default)]
    pub objective: crate::loss::Objective,
}

/// Resolves `cpu`, `cuda`, `cuda:N`, `auto`. Errors: [`TrainerError::Config`] (`--device`).
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = |m: &str| TrainerError::Config {
        key: "--device".into(),
        message: m.into(),
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(bad(
                    "CUDA requested but libtorch sees no GPU (allowed: cpu, cuda, cuda:N, auto)",
                ))
            }
        }
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if (n as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(n)),
            Some(n) => Err(bad(&format!(
                "cuda:{n} is not present ({} GPUs)",
                tch::Cuda::device_count()
            ))),
            None => Err(bad(&format!(
                "unknown device {other} (allowed: cpu, cuda, cuda:N, auto)"
            ))),
        },
    }
}

impl TrainConfig {
    /// Range checks. Errors: [`TrainerError::Config`] naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(TrainerError::Config {
                key: key.into(),
                message,
            })
        };
        if self.batch_size == 0 {
            return bad("--batch-size", "must be >= 1".into());
        }
        if self.grad_accum == 0 {
            return bad("--grad-accum", "must be >= 1".into());
        }
        if !(self.optim.lr > 0.0 && self.optim.lr < 1.0) {
            return bad("--lr", format!("must be in (0, 1) (got {})", self.optim.lr));
        }
        // Written so that NaN fails every range check (a NaN compares false).
        if !(self.loss.beta > 0.0 && self.loss.beta.is_finite()) {
            return bad(
                "--beta",
                format!("must be finite and > 0 (got {})", self.loss.beta),
            );
        }
        if !self.loss.gamma.is_finite() {
            return bad(
                "--gamma",
                format!("must be finite (got {})", self.loss.gamma),
            );
        }
        if !(self.loss.sft_weight >= 0.0 && self.loss.sft_weight.is_finite()) {
            return bad(
                "--sft-weight",
                format!("must be finite and >= 0 (got {})", self.loss.sft_weight),
            );
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad(
                "--max-grad-norm",
                format!(
                    "must be finite and >= 0, 0 = no clipping (got {})",
                    self.max_grad_norm
                ),
            );
        }
        let o = &self.optim;
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return bad(
                "--weight-decay",
                format!("must be finite and >= 0 (got {})", o.weight_decay),
            );
        }
        if !((0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2)) {
            return bad(
                "optim.beta1/optim.beta2",
                format!("must be in [0, 1) (got {}, {})", o.beta1, o.beta2),
            );
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return bad(
                "optim.eps",
                format!("must be finite and > 0 (got {})", o.eps),
            );
        }
        if self.share_prompt && self.decoupled {
            return bad(
                "--share-prompt",
                "cannot be combined with --decoupled (both bound memory in M; --share-prompt \
                 also computes the prompt once)"
                    .into(),
            );
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps", "must be >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(
                "--min-lr-ratio",
                format!("must be in [0, 1] (got {})", self.min_lr_ratio),
            );
        }
        self.lora.validate()?;
        Ok(())
    }
}

/// The loss of one micro-batch (graph attached for backward).
pub fn batch_loss(
    model: &Llama,
    batch: &Batch,
    cfg: &LossConfig,
    train: bool,
) -> Result<crate::loss::LossOutput> {
    let hidden = model.hidden_states(&batch.input_ids, &batch.position_ids, train)?; // [S, T, H]
    loss_from_hidden(model, &hidden, batch, cfg)
}

/// The LOGO loss from the final hidden states `[S,T,H]` of a batch: logits only at the rows
/// that predict response tokens.
pub fn loss_from_hidden(
    model: &Llama,
    hidden: &Tensor,
    batch: &Batch,
    cfg: &LossConfig,
) -> Result<crate::loss::LossOutput> {
    let rows = hidden
        .flatten(0, 1)
        .f_index_select(0, &batch.gather_index)?; // [N, H]
    let logits = model.lm_logits(&rows)?; // [N, V] f32
    let s = (batch.num_samples * (batch.num_negatives + 1)) as i64;
    let logps = sequence_logps(&logits, &batch.labels, &batch.sequence, s)?; // [S]
    let (chosen, rejected) = batch.split_chosen_rejected(&logps);
    logo_loss(&chosen, &rejected, cfg)
}

/// Forward, loss and backward of one micro-batch with the joint backward; `scale` multiplies
/// the loss before backward (1 / grad_accum). With `checkpointing`, per-layer activation
/// checkpointing ([`Llama::backward_checkpointed`]). Returns the loss outputs (detached use).
pub fn backward_joint(
    model: &Llama,
    batch: &Batch,
    cfg: &LossConfig,
    checkpointing: bool,
    seed: i64,
    scale: f64,
) -> Result<crate::loss::LossOutput> {
    if !checkpointing {
        let out = batch_loss(model, batch, cfg, true)?;
        (&out.loss * scale).f_backward()?;
        return Ok(out);
    }
    let mut stash = None;
    model.backward_checkpointed(
        &batch.input_ids,
        &batch.position_ids,
        true,
        seed,
        &mut |hidden| {
            let out = loss_from_hidden(model, hidden, batch, cfg)?;
            let scaled = &out.loss * scale;
            stash = Some(out);
            Ok(scaled)
        },
    )?;
    stash.ok_or_else(|| TrainerError::Internal("checkpointed head did not run".into()))
}

/// Trains on one rank. Errors: config ([`TrainerError::Config`]) and data checks
/// ([`TrainerError::Input`]) before the first step; I/O and torch errors after.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary> {
    train_with(cfg, &mut Local)
}

/// Trains as one rank of `coll`'s data-parallel group: this rank reads row groups `rank, rank
/// + W, …` ([`TrainingData::shard`]) and takes `batch_size` samples per micro-batch, so a step
/// sees W·`batch_size`·`grad_accum` samples; the LoRA gradients are averaged over the ranks
/// before clipping, and only rank 0 writes the output folder. Without `max_steps`, one pass
/// over the data is `⌈rows / (W·batch_size·grad_accum)⌉` steps. When this rank fails it tells
/// the others ([`Collective::abort`]).
///
/// Errors: as [`train`]; [`TrainerError::Config`] when there are fewer row groups than ranks
/// or a resumed checkpoint was written by another number of ranks; [`TrainerError::Dist`] when
/// another rank fails or stops answering.
pub fn train_with(cfg: &TrainConfig, coll: &mut dyn Collective) -> Result<TrainSummary> {
    let result = train_ranked(cfg, coll);
    if let Err(e) = &result {
        if coll.world_size() > 1 {
            coll.abort(&e.to_string());
        }
    }
    result
}

fn train_ranked(cfg: &TrainConfig, coll: &mut dyn Collective) -> Result<TrainSummary> {
    cfg.validate()?;
    let (rank, world) = (coll.rank(), coll.world_size());
    let writer = rank == 0;
    let device = parse_device(&cfg.device)?;
    let data = TrainingData::open(&cfg.data)?;
    let shard = data.shard(rank, world);
    if shard.is_empty() {
        return Err(TrainerError::Config {
            key: "WORLD_SIZE".into(),
            message: format!(
                "{} Parquet row groups cannot feed {world} ranks (each rank reads whole row \
                 groups): use fewer ranks, or write smaller row groups (`sink.row_group_size` in the \
                 engine's pipeline YAML)",
                data.row_groups().len()
            ),
        });
    }
    let per_step = cfg.batch_size * cfg.grad_accum;
    let total_steps = cfg
        .max_steps
        .unwrap_or_else(|| data.num_rows().div_ceil(per_step * world).max(1));
    tch::manual_seed(cfg.seed as i64);
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let model = Llama::load(&cfg.model, Some(&cfg.lora), device, kind)?;
    let mut start_step = 0;
    if let Some(dir) = &cfg.resume {
        load_adapter(&model, dir)?;
        let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
        if state.world_size != world {
            return Err(TrainerError::Config {
                key: "--resume".into(),
                message: format!(
                    "{} was written by a run of {} ranks, this one has {world}; the data order \
                     would differ",
                    dir.display(),
                    state.world_size
                ),
            });
        }
        start_step = state.step;
        if start_step >= total_steps {
            return Err(TrainerError::Config {
                key: "--resume".into(),
                message: format!(
                    "{} is at step {start_step}, and this run ends at step {total_steps} \
                     (--max-steps): nothing to train",
                    dir.display()
                ),
            });
        }
    }
    // Sorted by name, so the same order on every rank: the collectives pack the gradients in
    // this order.
    let params = model.lora_parameters();
    if params.is_empty() {
        return Err(TrainerError::Config {
            key: "lora.target_modules".into(),
            message: "no LoRA parameter to train".into(),
        });
    }
    let lora: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    broadcast_parameters(coll, &lora)?;
    let mut opt = AdamW::new(params, cfg.optim);
    if let Some(dir) = &cfg.resume {
        opt.load(&dir.join("optimizer.safetensors"))?;
    }
    let mut stream = ExampleStream::new(shard, cfg.shuffle_buffer, cfg.seed, data.num_negatives())
        .with_vocab_size(model.config().vocab_size);
    // Replay the data consumed before the checkpoint, so the run continues where it stopped.
    for _ in 0..start_step * per_step {
        stream.next_example()?;
    }

    let metrics_path = cfg.output.join("metrics.jsonl");
    let mut history = Vec::new();
    let mut metrics_file = None;
    if writer {
        std::fs::create_dir_all(&cfg.output).map_err(|e| TrainerError::io(&cfg.output, e))?;
        remove_interrupted_writes(&cfg.output)?;
        history = read_metrics(&metrics_path)?;
        history.retain(|m| m.step <= start_step);
        let mut file =
            std::fs::File::create(&metrics_path).map_err(|e| TrainerError::io(&metrics_path, e))?;
        for m in &history {
            writeln!(
                file,
                "{}",
                serde_json::to_string(m).expect("metrics serialise")
            )
            .map_err(|e| TrainerError::io(&metrics_path, e))?;
        }
        metrics_file = Some(file);
    }

    let bar = ProgressBar::with_draw_target(
        Some(total_steps as u64),
        if cfg.progress && writer {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "train {bar:30} {pos}/{len} steps {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(start_step as u64);

    let mut run_metrics = Vec::new();
    for step in start_step..total_steps {
        inject_fault(rank, step);
        let started = Instant::now();
        // Rank 0 draws what a single process would; other ranks get their own dropout masks.
        let step_seed = crate_seed(cfg.seed, step) ^ ((rank as i64) << 40);
        tch::manual_seed(step_seed);
        let mut acc: Vec<LossMetrics> = Vec::with_capacity(cfg.grad_accum);
        let mut tokens = 0;
        for micro in 0..cfg.grad_accum {
            let examples = stream.next_batch(cfg.batch_size)?;
            tokens += examples.iter().map(|e| e.tokens()).sum::<usize>();
            let scale = 1.0 / cfg.grad_accum as f64;
            let seed = step_seed.wrapping_add(1 << 20 | micro as i64);
            let out = if cfg.share_prompt {
                backward_shared_prompt(
                    &model,
                    &examples,
                    &cfg.loss,
                    device,
                    cfg.checkpointing,
                    seed,
                    scale,
                )?
            } else if cfg.decoupled {
                backward_decoupled(
                    &model,
                    &examples,
                    &cfg.loss,
                    device,
                    cfg.checkpointing,
                    seed,
                    scale,
                )?
            } else {
                let batch = collate(&examples, device)?;
                backward_joint(&model, &batch, &cfg.loss, cfg.checkpointing, seed, scale)?
            };
            acc.push(out.metrics()?);
        }
        average_gradients(coll, &lora)?;
        let grad_norm = opt.clip_grad_norm(cfg.max_grad_norm);
        let mean = |f: fn(&LossMetrics) -> f64| acc.iter().map(f).sum::<f64>() / acc.len() as f64;
        // This rank's means, then the means over the ranks (tokens: the sum).
        let fields: [fn(&LossMetrics) -> f64; 7] = [
            |m| m.loss,
            |m| m.preference_loss,
            |m| m.sft_loss,
            |m| m.reward_chosen,
            |m| m.reward_rejected,
            |m| m.margin,
            |m| m.accuracy,
        ];
        let mut global: Vec<f64> = fields.iter().map(|f| mean(*f)).collect();
        let mut tokens = tokens as f64;
        if world > 1 {
            let mut buf: Vec<f32> = global.iter().map(|&v| v as f32).collect();
            buf.push(tokens as f32);
            coll.all_reduce_sum_f32(&mut buf)?;
            tokens = buf.pop().unwrap_or(0.0) as f64;
            global = buf.iter().map(|&v| v as f64 / world as f64).collect();
        }
        // Every rank sees the same means and norm, so all stop together, before the update.
        if !(global[0].is_finite() && grad_norm.is_finite()) {
            return Err(TrainerError::Diverged {
                step: step + 1,
                message: format!(
                    "loss {}, gradient norm {grad_norm}; nothing of this step was applied or \
                     saved (lower --lr or --beta, or resume from an earlier checkpoint)",
                    global[0]
                ),
            });
        }
        let lr = lr_at(
            step,
            cfg.optim.lr,
            cfg.warmup_steps,
            total_steps,
            cfg.min_lr_ratio,
        );
        opt.step(lr);
        opt.zero_grad();
        let m = StepMetrics {
            step: step + 1,
            lr,
            loss: global[0],
            preference_loss: global[1],
            sft_loss: global[2],
            reward_chosen: global[3],
            reward_rejected: global[4],
            margin: global[5],
            accuracy: global[6],
            grad_norm,
            tokens: tokens.round() as usize,
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(file) = metrics_file.as_mut() {
            writeln!(
                file,
                "{}",
                serde_json::to_string(&m).expect("metrics serialise")
            )
            .map_err(|e| TrainerError::io(&metrics_path, e))?;
        }
        let line = format!(
            "step {:>4}  loss {:.4}  pref {:.4}  sft {:.4}  margin {:+.3}  acc {:.2}  {:.0} tok/s",
            m.step,
            m.loss,
            m.preference_loss,
            m.sft_loss,
            m.margin,
            m.accuracy,
            m.tokens as f64 / m.seconds
        );
        bar.set_message(format!(
            "loss {:.4} margin {:+.3} {:.0} tok/s",
            m.loss,
            m.margin,
            m.tokens as f64 / m.seconds
        ));
        bar.inc(1);
        if writer {
            bar.suspend(|| println!("{line}"));
        }
        run_metrics.push(m);
        history.push(m);
        let done = step + 1;
        if writer && cfg.save_steps > 0 && done % cfg.save_steps == 0 && done < total_steps {
            save_checkpoint(&model, &opt, cfg, done, total_steps, world)?;
        }
    }
    bar.finish_and_clear();
    let summary = TrainSummary {
        steps: total_steps,
        metrics: run_metrics,
        adapter: cfg.output.clone(),
        objective: cfg.loss.objective,
    };
    if writer {
        save_checkpoint(&model, &opt, cfg, total_steps, total_steps, world)?;
        save_final_adapter(&model, cfg)?;
        if !history.is_empty() {
            crate::plot::plot_training(&history, &cfg.output.join("training.png"))?;
        }
        write_json(&cfg.output.join("summary.json"), &summary)?;
    }
    // Every rank ends here; a failure of rank 0 while saving reaches the others.
    coll.barrier()?;
    Ok(summary)
}

fn crate_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step as u64) as i64 & i64::MAX
}

/// Writes `checkpoint-{step}/` atomically: everything goes into a temporary folder
/// (`.checkpoint-{step}.tmp-{pid}`), every file and the folder are `fsync`ed, then the folder
/// is renamed into place and the output folder `fsync`ed. A kill at any moment leaves either
/// no `checkpoint-{step}` or a complete one, and the earlier checkpoints untouched.
fn save_checkpoint(
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
            config: cfg.clone(),
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
/// `cfg.output` through a temporary folder and a rename per file, each `fsync`ed.
fn save_final_adapter(model: &Llama, cfg: &TrainConfig) -> Result<()> {
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
/// `.adapter.tmp-*`); they were never a checkpoint.
fn remove_interrupted_writes(output: &Path) -> Result<()> {
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

/// Writes JSON through a temporary file, `fsync` and a rename.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
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
