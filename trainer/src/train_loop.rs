//! The training loop in nanoGPT's shape: [`Trainer::new`] (model, LoRA, optimizer, data
//! stream, resume), [`Trainer::step`] (one optimizer step), [`Trainer::save`] (a checkpoint),
//! [`Trainer::finish`] (final adapter, plot, summary); [`train_with`] is the loop over them.
//! LoRA over a frozen backbone with the LOGO objective (paper 3.2.1 and 4.1), AdamW with
//! linear warm-up then cosine decay, gradient accumulation and clipping, metrics as JSON Lines
//! and a PNG of the curves.
//!
//! Determinism: the data order depends only on `seed`; LoRA dropout is re-seeded at every
//! optimizer step from `seed` and the step, so a resumed run repeats the uninterrupted run's
//! losses.
//!
//! Data parallel ([`train_with`]): each rank takes its rows of one global data stream
//! ([`ExampleStream::for_rank`]), the LoRA
//! gradients are averaged over the ranks before clipping ([`crate::dist::average_gradients`]),
//! the logged metrics are means over the ranks ([`LossMetrics::to_vec`]), and only rank 0
//! writes files.
//!
//! Output folder: `adapter_config.json` + `adapter_model.safetensors` (PEFT) at the end,
//! `checkpoint-{step}/` every `save_steps`, `metrics.jsonl`, `training.png`, `summary.json`;
//! written crash-safe by [`crate::checkpoint`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::{
    read_json, save_checkpoint, save_final_adapter, write_json, MetricsLog, TrainerState,
};
use crate::config::{parse_device, Checkpointing, GradientMode, TrainConfig};
use crate::data::{collate, read_row_group, Batch, Example, ExampleStream, TrainingData};
use crate::decoupled::backward_decoupled;
use crate::dist::{average_gradients, broadcast_parameters, inject_fault, Collective, Local};
use crate::error::{Result, TrainerError};
use crate::loss::{logo_loss, sequence_logps, LossConfig, LossMetrics, LossOutput, StepMetrics};
use crate::model::Llama;
use crate::optim::{lr_at, AdamW};
use crate::peft::load_adapter;
use crate::shared_prompt::backward_shared_prompt;

/// What [`train`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps done (including resumed ones).
    pub steps: usize,
    /// Metrics of the steps run in this process.
    pub metrics: Vec<StepMetrics>,
    /// The final adapter folder.
    pub adapter: PathBuf,
    /// What was minimised (`loss.objective`), so a report can tell runs apart.
    #[serde(default)]
    pub objective: crate::loss::Objective,
}

/// The loss of one micro-batch (graph attached for backward).
pub fn batch_loss(
    model: &Llama,
    batch: &Batch,
    cfg: &LossConfig,
    train: bool,
) -> Result<LossOutput> {
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
) -> Result<LossOutput> {
    let rows = hidden
        .flatten(0, 1)
        .f_index_select(0, &batch.gather_index)?; // [N, H]
    let logits = model.lm_logits(&rows)?; // [N, V] f32
    let s = (batch.num_samples * (batch.num_negatives + 1)) as i64;
    let logps = sequence_logps(&logits, &batch.labels, &batch.sequence, s)?; // [S]
    let (chosen, rejected) = batch.split_chosen_rejected(&logps);
    logo_loss(&chosen, &rejected, cfg)
}

impl GradientMode {
    /// Forward, loss (scaled by `scale`, e.g. 1 / grad_accum) and backward of `examples` (one
    /// micro-batch) in this mode, the LoRA gradients accumulated into `model`'s variables on
    /// its device; `seed` drives dropout. The three modes give the same gradient.
    /// Errors: [`TrainerError::Torch`] and what collating the batch refuses.
    pub fn backward(
        self,
        model: &Llama,
        examples: &[Example],
        loss: &LossConfig,
        checkpointing: bool,
        seed: i64,
        scale: f64,
    ) -> Result<LossOutput> {
        let device = model.device();
        // The two per-sample gradients take the same arguments.
        let per_sample = match self {
            GradientMode::SharedPrompt => backward_shared_prompt,
            GradientMode::Decoupled => backward_decoupled,
            GradientMode::Joint => {
                let batch = collate(examples, device)?;
                return backward_joint(model, &batch, loss, checkpointing, seed, scale);
            }
        };
        per_sample(model, examples, loss, device, checkpointing, seed, scale)
    }
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
) -> Result<LossOutput> {
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

/// Trains as one rank of `coll`'s data-parallel group: this rank takes the examples at
/// positions `rank, rank + W, …` of the global stream ([`ExampleStream::for_rank`]),
/// `batch_size` per micro-batch, so a step sees the W·`batch_size`·`grad_accum` samples one
/// rank with W times the batch would; the LoRA gradients are averaged over the ranks
/// before clipping, and only rank 0 writes the output folder. Without `max_steps`, one pass
/// over the data is `⌈rows / (W·batch_size·grad_accum)⌉` steps. When this rank fails it tells
/// the others ([`Collective::abort`]).
///
/// Errors: as [`train`]; [`TrainerError::Config`] when there are fewer samples than ranks
/// or a resumed checkpoint was written by another number of ranks; [`TrainerError::Dist`] when
/// another rank fails or stops answering.
pub fn train_with(cfg: &TrainConfig, coll: &mut dyn Collective) -> Result<TrainSummary> {
    let result = (|| {
        let mut trainer = Trainer::new(cfg, &mut *coll)?;
        while !trainer.done() {
            trainer.step()?;
            if trainer.stop_due() {
                return trainer.stop();
            }
            if trainer.checkpoint_due() {
                trainer.save()?;
            }
        }
        trainer.finish()
    })();
    if let Err(e) = &result {
        if coll.world_size() > 1 {
            coll.abort(&e.to_string());
        }
    }
    result
}

/// One rank's training run: the model with its LoRA adapters, AdamW, the data stream and the
/// step counter. Build with [`Trainer::new`], call [`Trainer::step`] until [`Trainer::done`],
/// then [`Trainer::finish`].
pub struct Trainer<'c> {
    cfg: TrainConfig,
    coll: &'c mut dyn Collective,
    model: Llama,
    /// The LoRA parameters, sorted by name (the collectives pack gradients in this order).
    lora: Vec<Tensor>,
    opt: AdamW,
    stream: ExampleStream,
    mode: GradientMode,
    /// Per-layer activation checkpointing, `cfg.checkpointing` resolved
    /// ([`resolve_checkpointing`]).
    checkpointing: bool,
    /// Optimizer steps done (resumed ones included).
    step: usize,
    total_steps: usize,
    /// Rank 0's `metrics.jsonl`; `None` on the other ranks, which write nothing.
    log: Option<MetricsLog>,
    bar: ProgressBar,
    /// Metrics of the steps run in this process.
    run_metrics: Vec<StepMetrics>,
}

impl<'c> Trainer<'c> {
    /// Checks `cfg`, opens this rank's data shard, loads the model (bf16 on CUDA, f32 on CPU)
    /// with fresh LoRA adapters (seeded by `cfg.seed`, then broadcast from rank 0) or those of
    /// `cfg.resume` with its optimizer state, and replays the data stream to the resumed step.
    ///
    /// Errors: [`TrainerError::Config`] (a range, a device, fewer samples than ranks, a
    /// checkpoint of another world size or already at the last step, no LoRA target);
    /// [`TrainerError::Input`] for the data; model loading and [`TrainerError::Dist`].
    pub fn new(cfg: &TrainConfig, coll: &'c mut dyn Collective) -> Result<Self> {
        let (rank, world) = (coll.rank(), coll.world_size());
        let device = parse_device(&cfg.device)?;
        let data = TrainingData::open(&cfg.data)?;
        if data.num_rows() < world {
            return Err(too_few_rows(data.num_rows(), world));
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
        let checkpointing = resolve_checkpointing(cfg, &data, &model, rank)?;
        let step = match &cfg.resume {
            Some(dir) => resume_step(&model, dir, world, total_steps)?,
            None => 0,
        };
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
        let groups = data.row_groups().to_vec();
        let mut stream =
            ExampleStream::new(groups, cfg.shuffle_buffer, cfg.seed, data.num_negatives())
                .with_vocab_size(model.config().vocab_size)
                .for_rank(rank, world);
        // Replay the data consumed before the checkpoint, so the run continues where it stopped.
        for _ in 0..step * per_step {
            stream.next_example()?;
        }
        let log = (rank == 0)
            .then(|| MetricsLog::open(&cfg.output, step))
            .transpose()?;
        let bar = progress_bar(total_steps, step, cfg.progress && rank == 0);
        Ok(Trainer {
            mode: cfg.gradient,
            checkpointing,
            cfg: cfg.clone(),
            coll,
            model,
            lora,
            opt,
            stream,
            step,
            total_steps,
            log,
            bar,
            run_metrics: Vec::new(),
        })
    }

    /// Whether every step of the run is done.
    pub fn done(&self) -> bool {
        self.step >= self.total_steps
    }

    /// Whether the run stops after the step just done (`stop_after_step`, before the last
    /// step).
    pub fn stop_due(&self) -> bool {
        self.cfg.stop_after_step == Some(self.step) && self.step < self.total_steps
    }

    /// Ends a run cut at `stop_after_step`: rank 0 saves `checkpoint-{step}/` (to `resume`
    /// from) and nothing else, then every rank waits for the others. The summary's `steps` is
    /// the step reached. Errors: as [`Trainer::save`], [`TrainerError::Dist`].
    pub fn stop(self) -> Result<TrainSummary> {
        self.bar.finish_and_clear();
        self.save()?;
        self.coll.barrier()?;
        Ok(TrainSummary {
            steps: self.step,
            metrics: self.run_metrics,
            adapter: self.cfg.output.clone(),
            objective: self.cfg.loss.objective,
        })
    }

    /// Whether a checkpoint is due after the step just done (every `save_steps`; the last step
    /// is saved by [`Trainer::finish`]).
    pub fn checkpoint_due(&self) -> bool {
        let s = self.cfg.save_steps;
        s > 0 && self.step.is_multiple_of(s) && self.step < self.total_steps
    }

    /// One optimizer step: `grad_accum` micro-batches of `batch_size` samples forward and
    /// backward (the loss scaled by 1 / `grad_accum`), gradients averaged over the ranks and
    /// clipped, metrics reduced over micro-batches and ranks, AdamW at the scheduled rate.
    /// Returns the step's metrics (also logged and printed on rank 0).
    ///
    /// Errors: [`TrainerError::Diverged`] before the update when the loss or the gradient
    /// norm is not finite (every rank sees the same values, so all stop together); data,
    /// torch and [`TrainerError::Dist`] errors.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let rank = self.coll.rank();
        inject_fault(rank, self.step);
        let started = Instant::now();
        // Rank 0 draws what a single process would; other ranks get their own dropout masks.
        let step_seed = crate_seed(self.cfg.seed, self.step) ^ ((rank as i64) << 40);
        tch::manual_seed(step_seed);
        let mut micro_metrics = Vec::with_capacity(self.cfg.grad_accum);
        let mut tokens = 0;
        for micro in 0..self.cfg.grad_accum {
            let examples = self.stream.next_batch(self.cfg.batch_size)?;
            tokens += examples.iter().map(|e| e.tokens()).sum::<usize>();
            let seed = step_seed.wrapping_add(1 << 20 | micro as i64);
            micro_metrics.push(self.backward(&examples, seed)?.metrics()?);
        }
        average_gradients(self.coll, &self.lora)?;
        let grad_norm = self.opt.clip_grad_norm(self.cfg.max_grad_norm);
        let (loss, tokens) = self.reduce(&micro_metrics, tokens)?;
        if !(loss.loss.is_finite() && grad_norm.is_finite()) {
            return Err(TrainerError::Diverged {
                step: self.step + 1,
                message: format!(
                    "loss {}, gradient norm {grad_norm}; nothing of this step was applied or \
                     saved (lower optim.lr or loss.beta, or resume from an earlier checkpoint)",
                    loss.loss
                ),
            });
        }
        let c = &self.cfg;
        let lr = lr_at(
            self.step,
            c.optim.lr,
            c.warmup_steps,
            self.total_steps,
            c.min_lr_ratio,
        );
        self.opt.step(lr);
        self.opt.zero_grad();
        self.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        let m = StepMetrics::new(self.step, lr, &loss, grad_norm, tokens, seconds);
        self.report(m)?;
        Ok(m)
    }

    /// Rank 0 writes `checkpoint-{step}/` for the steps done ([`save_checkpoint`]); the other
    /// ranks write nothing. Errors: as [`save_checkpoint`].
    pub fn save(&self) -> Result<()> {
        if self.log.is_none() {
            return Ok(());
        }
        let world = self.coll.world_size();
        save_checkpoint(
            &self.model,
            &self.opt,
            &self.cfg,
            self.step,
            self.total_steps,
            world,
        )
    }

    /// Ends the run: rank 0 saves the last checkpoint, the final adapter, `training.png` and
    /// `summary.json`; then every rank waits for the others (a failure of rank 0 while saving
    /// reaches them). Errors: I/O, plotting, [`TrainerError::Dist`].
    pub fn finish(self) -> Result<TrainSummary> {
        self.bar.finish_and_clear();
        let summary = TrainSummary {
            steps: self.step,
            metrics: self.run_metrics.clone(),
            adapter: self.cfg.output.clone(),
            objective: self.cfg.loss.objective,
        };
        if let Some(log) = &self.log {
            self.save()?;
            save_final_adapter(&self.model, &self.cfg)?;
            if !log.history().is_empty() {
                let png = self.cfg.output.join("training.png");
                crate::plot::plot_training(log.history(), &png)?;
            }
            write_json(&self.cfg.output.join("summary.json"), &summary)?;
        }
        self.coll.barrier()?;
        Ok(summary)
    }

    /// Forward, loss and backward of one micro-batch in the run's [`GradientMode`].
    fn backward(&self, examples: &[Example], seed: i64) -> Result<LossOutput> {
        let (c, scale) = (&self.cfg, 1.0 / self.cfg.grad_accum as f64);
        self.mode.backward(
            &self.model,
            examples,
            &c.loss,
            self.checkpointing,
            seed,
            scale,
        )
    }

    /// The step's metrics: this rank's means over its micro-batches, then the means over the
    /// ranks (tokens: the sum), through one f32 all-reduce of [`LossMetrics::to_vec`].
    fn reduce(&mut self, micro: &[LossMetrics], tokens: usize) -> Result<(LossMetrics, usize)> {
        let internal = || TrainerError::Internal("a step without micro-batches".into());
        let mine = LossMetrics::mean(micro).ok_or_else(internal)?;
        let world = self.coll.world_size();
        if world == 1 {
            return Ok((mine, tokens));
        }
        let mut buf: Vec<f32> = mine.to_vec().iter().map(|&v| v as f32).collect();
        buf.push(tokens as f32);
        self.coll.all_reduce_sum_f32(&mut buf)?;
        let tokens = buf.pop().unwrap_or(0.0).round() as usize;
        let means: Vec<f64> = buf.iter().map(|&v| v as f64 / world as f64).collect();
        Ok((LossMetrics::from_vec(&means).ok_or_else(internal)?, tokens))
    }

    /// Logs a finished step: `metrics.jsonl` and a printed line on rank 0, the progress bar.
    fn report(&mut self, m: StepMetrics) -> Result<()> {
        let tok_s = m.tokens as f64 / m.seconds;
        self.bar.set_message(format!(
            "loss {:.4} margin {:+.3} {tok_s:.0} tok/s",
            m.loss, m.margin
        ));
        self.bar.inc(1);
        if let Some(log) = self.log.as_mut() {
            log.append(m)?;
            self.bar.suspend(|| {
                println!(
                    "step {:>4}  loss {:.4}  pref {:.4}  sft {:.4}  margin {:+.3}  acc {:.2}  {tok_s:.0} tok/s",
                    m.step, m.loss, m.preference_loss, m.sft_loss, m.margin, m.accuracy
                )
            });
        }
        self.run_metrics.push(m);
        Ok(())
    }
}

/// `cfg.checkpointing` decided: `on`/`off` as given; `auto` off on CPU, and on CUDA on when the
/// activations of a micro-batch of the first row group's longest sample
/// ([`crate::memory::activation_bytes`] of the tokens the gradient mode computes) exceed 80 % of
/// the device's free memory, said on rank 0. Errors: reading the first row group.
fn resolve_checkpointing(
    cfg: &TrainConfig,
    data: &TrainingData,
    model: &Llama,
    rank: usize,
) -> Result<bool> {
    let device = model.device();
    match cfg.checkpointing {
        Checkpointing::On => return Ok(true),
        Checkpointing::Off => return Ok(false),
        Checkpointing::Auto if !device.is_cuda() => return Ok(false),
        Checkpointing::Auto => {}
    }
    let Some((free, _)) = crate::memory::cuda_free_memory() else {
        return Ok(false);
    };
    let first = data.row_groups().iter().find(|g| g.rows > 0);
    let examples = first.map(read_row_group).transpose()?.unwrap_or_default();
    let mode = cfg.gradient;
    let tokens = examples
        .iter()
        .map(|e| {
            let (p, chosen) = (e.prompt_ids.len(), e.chosen_ids.len());
            let rejected = e.rejected_ids.iter().map(Vec::len);
            match mode {
                GradientMode::SharedPrompt => p + chosen + rejected.sum::<usize>(),
                GradientMode::Decoupled => p + rejected.chain([chosen]).max().unwrap_or(0),
                GradientMode::Joint => e.tokens(),
            }
        })
        .max()
        .unwrap_or(0)
        * cfg.batch_size;
    let bytes = if device.is_cuda() { 2 } else { 4 };
    let estimate = crate::memory::activation_bytes(model.config(), tokens, bytes);
    let on = crate::memory::needs_checkpointing(estimate, free);
    if rank == 0 {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "checkpointing {} (auto): estimated activations {:.1} GiB for {tokens} tokens vs \
             {:.1} GiB free on the device (threshold 80 %)",
            if on { "on" } else { "off" },
            gib(estimate),
            gib(free)
        );
    }
    Ok(on)
}

/// Loads the adapter of checkpoint `dir` into `model` and returns its step. Errors:
/// [`TrainerError::Config`] when it was written by another number of ranks (the data order
/// would differ) or is already at `total_steps`; I/O and model errors.
fn resume_step(model: &Llama, dir: &Path, world: usize, total_steps: usize) -> Result<usize> {
    load_adapter(model, dir)?;
    let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
    let bad = |message: String| TrainerError::Config {
        key: "resume".into(),
        message,
    };
    if state.world_size != world {
        return Err(bad(format!(
            "{} was written by a run of {} ranks, this one has {world}; the data order would \
             differ",
            dir.display(),
            state.world_size
        )));
    }
    if state.step >= total_steps {
        return Err(bad(format!(
            "{} is at step {}, and this run ends at step {total_steps} (max_steps): nothing \
             to train",
            dir.display(),
            state.step
        )));
    }
    Ok(state.step)
}

fn too_few_rows(rows: usize, world: usize) -> TrainerError {
    TrainerError::Config {
        key: "WORLD_SIZE".into(),
        message: format!(
            "{rows} training samples cannot feed {world} ranks (each rank needs at least one): \
             use fewer ranks or more data"
        ),
    }
}

fn progress_bar(total_steps: usize, start: usize, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total_steps as u64), target);
    bar.set_style(
        ProgressStyle::with_template(
            "train {bar:30} {pos}/{len} steps {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(start as u64);
    bar
}

fn crate_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step as u64) as i64 & i64::MAX
}
