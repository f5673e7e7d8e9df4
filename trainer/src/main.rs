//! `logo-trainer`: LoRA training with the LOGO objective on the engine's Parquet output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use logo_trainer::bench::RandomModel;
use logo_trainer::config::{GradientMode, RawTrainConfig, TrainConfig};
use logo_trainer::lora::LoraConfig;
use logo_trainer::loss::Objective;
use logo_trainer::train_loop::train_with;
use logo_trainer::TrainerError;

/// Defaults of the options, taken from the library's `Default` impls (written once there).
fn defaults() -> RawTrainConfig {
    RawTrainConfig::default()
}

/// Trains a LoRA adapter with the LOGO objective (Tang et al., Eq. 2 and 3) on the Parquet
/// training samples written by `logo-engine run`. Writes a PEFT adapter folder, checkpoints,
/// metrics.jsonl and training.png to --output. `logo-trainer --data DIR` is
/// `logo-trainer train --data DIR`. Settings come from --config FILE (trainer/train.yaml lists
/// every key) and the flags; a flag given wins over the file, the file over the default.
#[derive(Parser)]
#[command(
    name = "logo-trainer",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Train a LoRA adapter (the default subcommand: its options also work without it).
    Train(TrainArgs),
    /// Time LOGO training steps on a synthetic sample; prints JSON (step time, tokens/s,
    /// peak memory, estimated MFU).
    Bench(BenchArgs),
    /// Write a model (e.g. the embedded GGUF, dequantised) as a Hugging Face folder,
    /// optionally with a LoRA adapter merged into its weights.
    ExportHf(ExportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Model to export (GGUF file or HF folder). Default: the embedded GGUF.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder to merge into the weights.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Base model (default: the embedded GGUF).
    #[arg(long, value_name = "PATH", conflicts_with = "random_model")]
    model: Option<PathBuf>,
    /// Random weights of the shape given by --hidden-size … --vocab-size (default a ~1B Llama:
    /// 2048, 5632, 16 layers, 32 heads, 8 KV heads, 32000) instead of --model.
    #[arg(long)]
    random_model: bool,
    /// H of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().hidden_size, requires = "random_model")]
    hidden_size: usize,
    /// SwiGLU width of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().intermediate_size, requires = "random_model")]
    intermediate_size: usize,
    /// Layers of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().num_hidden_layers, requires = "random_model")]
    num_hidden_layers: usize,
    /// Query heads of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().num_attention_heads, requires = "random_model")]
    num_attention_heads: usize,
    /// KV heads of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().num_key_value_heads, requires = "random_model")]
    num_key_value_heads: usize,
    /// Vocabulary of the random model.
    #[arg(long, default_value_t = RandomModel::llama_1b().vocab_size, requires = "random_model")]
    vocab_size: usize,
    /// dtype of weights and activations: bf16, f16, f32 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Prompt tokens.
    #[arg(long, default_value_t = 2048)]
    prompt_tokens: usize,
    /// Tokens per response.
    #[arg(long, default_value_t = 64)]
    response_tokens: usize,
    /// M, dis-preferred responses.
    #[arg(long, default_value_t = 2)]
    num_negatives: usize,
    /// Virtual context K of the synthetic positions.
    #[arg(long, default_value_t = 16384)]
    target_length: usize,
    /// Measured steps (after one warm-up).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Peak TFLOP/s of the device, for MFU.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Write the JSON here too.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// How the gradient is computed: shared_prompt (the prompt once for the M + 1
    /// responses), joint (the M + 1 sequences as one batch; bench's default) or decoupled (one
    /// response at a time, memory flat in M).
    #[arg(long, value_enum, default_value_t = GradientMode::Joint,
          conflicts_with_all = ["decoupled", "share_prompt"])]
    gradient: GradientMode,
    /// Same as --gradient decoupled.
    #[arg(long)]
    decoupled: bool,
    /// Per-layer activation checkpointing.
    #[arg(long)]
    checkpointing: bool,
    /// Same as --gradient shared_prompt.
    #[arg(long, conflicts_with = "decoupled")]
    share_prompt: bool,
    /// Write the synthetic sample (prompt ids and positions, responses) as JSON, so that a
    /// reference implementation can run the same step (bench/hf_peft_logo_step.py).
    #[arg(long, value_name = "FILE")]
    dump_example: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A YAML file of training settings (trainer/train.yaml lists every key with its default);
    /// relative paths in it are relative to its folder. The flags below override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the run's settings (file, flags and defaults together, validated) as YAML and
    /// exit without training.
    #[arg(long)]
    print_config: bool,
    /// Folder of the engine's output (*.parquet); key `data`. Required for training.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Base model: a Hugging Face folder (config.json + *.safetensors) or a GGUF file; key
    /// `model`. Default: the embedded SmolLM2-135M-Instruct GGUF in $LOGO_CACHE/models.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Output folder; key `output`.
    #[arg(long, value_name = "DIR", default_value_os_t = defaults().output)]
    output: PathBuf,
    /// What to minimise on the same data (key `loss.objective`): logo (Eq. 2 over the M
    /// rejected responses + λ·NLL), sft (NLL of the chosen response only: the paper's
    /// instruction-tuning baseline), simpo (Eq. 2 with M = 1, the first rejected response,
    /// + λ·NLL; --sft-weight 0 for SimPO's own).
    #[arg(long, value_enum, default_value_t = defaults().loss.objective)]
    objective: Objective,
    /// β of Eq. 2 (reward scale); key `loss.beta`.
    #[arg(long, default_value_t = defaults().loss.beta)]
    beta: f64,
    /// γ of Eq. 2 (target margin); key `loss.gamma`.
    #[arg(long, default_value_t = defaults().loss.gamma)]
    gamma: f64,
    /// λ of Eq. 3 (weight of the SFT negative log-likelihood); key `loss.sft_weight`.
    #[arg(long, default_value_t = defaults().loss.sft_weight)]
    sft_weight: f64,
    /// Peak learning rate; key `optim.lr`.
    #[arg(long, default_value_t = defaults().optim.lr)]
    lr: f64,
    /// AdamW decoupled weight decay; key `optim.weight_decay`.
    #[arg(long, default_value_t = defaults().optim.weight_decay)]
    weight_decay: f64,
    /// Linear warm-up steps; key `warmup_steps`.
    #[arg(long, default_value_t = defaults().warmup_steps)]
    warmup_steps: usize,
    /// Final learning rate as a fraction of the peak (cosine decay); key `min_lr_ratio`.
    #[arg(long, default_value_t = defaults().min_lr_ratio)]
    min_lr_ratio: f64,
    /// Optimizer steps (default: one pass over the data); key `max_steps`.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this step with a checkpoint to --resume from (no final adapter); the
    /// learning-rate schedule still runs to --max-steps. For runs cut into timed parts. Key
    /// `stop_after_step`.
    #[arg(long, value_name = "STEP")]
    stop_after_step: Option<usize>,
    /// Samples per micro-batch (each sample is M + 1 sequences); key `batch_size`.
    #[arg(long, default_value_t = defaults().batch_size)]
    batch_size: usize,
    /// Micro-batches per optimizer step; key `grad_accum`.
    #[arg(long, default_value_t = defaults().grad_accum)]
    grad_accum: usize,
    /// Gradient clipping norm (0 = off); key `max_grad_norm`.
    #[arg(long, default_value_t = defaults().max_grad_norm)]
    max_grad_norm: f64,
    /// Save a checkpoint every N steps (0 = only at the end); key `save_steps`.
    #[arg(long, default_value_t = defaults().save_steps)]
    save_steps: usize,
    /// Rows in the shuffle buffer; key `shuffle_buffer`.
    #[arg(long, default_value_t = defaults().shuffle_buffer)]
    shuffle_buffer: usize,
    /// LoRA rank r; key `lora.r`.
    #[arg(long, default_value_t = defaults().lora.r)]
    lora_r: i64,
    /// LoRA alpha (scaling = alpha / r); key `lora.lora_alpha`.
    #[arg(long, default_value_t = defaults().lora.lora_alpha)]
    lora_alpha: f64,
    /// LoRA dropout; key `lora.lora_dropout`.
    #[arg(long, default_value_t = defaults().lora.lora_dropout)]
    lora_dropout: f64,
    /// Modules that get LoRA (paper 4.1: attention and token embedding); key
    /// `lora.target_modules`.
    #[arg(long, value_delimiter = ',', default_values_t = defaults().lora.target_modules)]
    target_modules: Vec<String>,
    /// Seed of data order, LoRA init and dropout; key `seed`.
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto; key `device`.
    #[arg(long, default_value_t = defaults().device)]
    device: String,
    /// Resume from a checkpoint folder (output/checkpoint-N); key `resume`.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// No progress bar (key `progress: false`).
    #[arg(long)]
    quiet: bool,
    /// How the gradient is computed (key `gradient`): shared_prompt (each sample's prompt once
    /// for its M + 1 responses, memory almost flat in M; trainer/src/shared_prompt.rs), joint
    /// (the M + 1 sequences `prompt ⧺ response` as one batch) or decoupled (one response at a
    /// time, memory independent of M, ~1.5× the compute; trainer/src/decoupled.rs).
    #[arg(long, value_enum, default_value_t = defaults().gradient,
          conflicts_with_all = ["decoupled", "share_prompt", "no_share_prompt"])]
    gradient: GradientMode,
    /// Same as --gradient decoupled.
    #[arg(long)]
    decoupled: bool,
    /// Same as --gradient shared_prompt.
    #[arg(long, conflicts_with_all = ["decoupled", "no_share_prompt"])]
    share_prompt: bool,
    /// Same as --gradient joint (--decoupled wins over it).
    #[arg(long)]
    no_share_prompt: bool,
    /// Per-layer activation checkpointing (keep only layer inputs, recompute in the backward),
    /// key `checkpointing`: auto (on CUDA when the estimated activations exceed 80 % of the
    /// free memory; off on CPU), on (also `--checkpointing` alone) or off.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = defaults().checkpointing,
          default_missing_value = "on")]
    checkpointing: logo_trainer::config::Checkpointing,
    /// Start N data-parallel workers on this machine (one per GPU, or CPU processes) with
    /// torchrun's environment; without it, RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/
    /// SLURM_NTASKS (srun) make this process one rank of a job.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Machines in the job (with --nproc-per-node).
    #[arg(long, default_value_t = 1, requires = "nproc_per_node")]
    nnodes: usize,
    /// This machine's index (with --nproc-per-node).
    #[arg(long, default_value_t = 0, requires = "nproc_per_node")]
    node_rank: usize,
    /// Host of rank 0 (with --nproc-per-node; default 127.0.0.1).
    #[arg(long, requires = "nproc_per_node")]
    master_addr: Option<String>,
    /// Port of rank 0 (with --nproc-per-node; default a free port, 29500 with --nnodes > 1).
    #[arg(long, requires = "nproc_per_node")]
    master_port: Option<u16>,
    /// Gradient all-reduce between ranks: auto (nccl on CUDA, tcp on CPU), tcp, nccl.
    #[arg(long, default_value = "auto")]
    dist_backend: String,
}

fn main() -> ExitCode {
    logo_env::cli::reset_sigpipe();
    logo_env::cli::init_logging();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logo-trainer: {}", logo_env::cli::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Train(args)) => {
            let m = matches.subcommand_matches("train").unwrap_or(matches);
            train(args, m)
        }
        Some(Command::Bench(args)) => bench(args),
        Some(Command::ExportHf(args)) => export_hf(args),
        None => train(cli.train, matches),
    }
}

/// The flag that sets config key `key` (`loss.beta` → `--beta`), for messages; `None` for a
/// key without a flag (`optim.eps`) or an environment variable (`WORLD_SIZE`).
fn flag_of(key: &str) -> Option<String> {
    let flag = match key {
        "loss.objective" => "--objective",
        "loss.beta" => "--beta",
        "loss.gamma" => "--gamma",
        "loss.sft_weight" => "--sft-weight",
        "optim.lr" => "--lr",
        "optim.weight_decay" => "--weight-decay",
        "lora.r" => "--lora-r",
        "lora.lora_alpha" => "--lora-alpha",
        "lora.lora_dropout" => "--lora-dropout",
        "lora.target_modules" => "--target-modules",
        "progress" => "--quiet",
        "data" | "model" | "output" | "resume" | "max_steps" | "stop_after_step" | "batch_size"
        | "grad_accum" | "warmup_steps" | "min_lr_ratio" | "max_grad_norm" | "save_steps"
        | "shuffle_buffer" | "seed" | "device" | "gradient" | "checkpointing" | "dist_backend"
        | "nproc_per_node" | "nnodes" | "node_rank" | "master_addr" | "master_port"
        | "prompt_tokens" | "response_tokens" | "num_negatives" | "target_length" | "steps"
        | "dtype" | "random_model" => return Some(format!("--{}", key.replace('_', "-"))),
        _ => return None,
    };
    Some(flag.to_string())
}

/// A library error, with the flag named next to a config key it concerns:
/// `config key batch_size (--batch-size): must be >= 1`.
fn name_flag(e: TrainerError) -> anyhow::Error {
    match &e {
        TrainerError::Config { key, message } => match flag_of(key) {
            Some(flag) => anyhow::anyhow!("config key {key} ({flag}): {message}"),
            None => e.into(),
        },
        _ => e.into(),
    }
}

fn bench(b: BenchArgs) -> anyhow::Result<()> {
    let random_model = b.random_model.then_some(RandomModel {
        hidden_size: b.hidden_size,
        intermediate_size: b.intermediate_size,
        num_hidden_layers: b.num_hidden_layers,
        num_attention_heads: b.num_attention_heads,
        num_key_value_heads: b.num_key_value_heads,
        vocab_size: b.vocab_size,
    });
    let cfg = logo_trainer::bench::BenchConfig {
        model: b.model.unwrap_or_else(logo_env::paths::default_model_path),
        prompt_tokens: b.prompt_tokens,
        response_tokens: b.response_tokens,
        num_negatives: b.num_negatives,
        target_length: b.target_length,
        steps: b.steps.max(1),
        device: b.device,
        lora: LoraConfig::default(),
        peak_tflops: b.peak_tflops,
        seed: 0,
        gradient: if b.decoupled {
            GradientMode::Decoupled
        } else if b.share_prompt {
            GradientMode::SharedPrompt
        } else {
            b.gradient
        },
        checkpointing: b.checkpointing,
        random_model,
        dtype: b.dtype,
    };
    if let Some(path) = &b.dump_example {
        let vocab = match &cfg.random_model {
            Some(r) => r.vocab_size,
            None => {
                logo_trainer::model::Llama::config_of(&cfg.model)
                    .context("reading the model config")?
                    .vocab_size
            }
        };
        let ex = logo_trainer::bench::synthetic_example(vocab, &cfg);
        let json = serde_json::json!({
            "prompt_ids": ex.prompt_ids, "prompt_positions": ex.prompt_positions,
            "chosen_ids": ex.chosen_ids, "rejected_ids": ex.rejected_ids,
        });
        std::fs::write(path, json.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let report = logo_trainer::bench::run(&cfg)
        .map_err(name_flag)
        .context("benchmark")?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = b.json {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn export_hf(args: ExportArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .unwrap_or_else(logo_env::paths::default_model_path);
    logo_trainer::peft::export_hf(&model, args.adapter.as_deref(), &args.output)
        .context("export")?;
    println!(
        "logo-trainer: wrote {} (config.json, model.safetensors)",
        args.output.display()
    );
    Ok(())
}

fn train(args: TrainArgs, m: &ArgMatches) -> anyhow::Result<()> {
    if args.print_config {
        let env = logo_trainer::dist::DistEnv::from_env().context("launch environment")?;
        let cfg = args.into_config(m, &env)?;
        print!("{}", cfg.raw().to_yaml());
        return Ok(());
    }
    if let Some(nproc_per_node) = args.nproc_per_node {
        let launch = logo_trainer::dist::launch::LaunchConfig {
            nproc_per_node,
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            master_addr: args.master_addr,
            master_port: args.master_port,
            grace_seconds: 10.0,
        };
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let exe = std::env::current_exe().context("locating the logo-trainer binary")?;
        let worker = logo_trainer::dist::launch::worker_args(&args);
        logo_trainer::dist::launch::launch(&launch, &exe, &worker)
            .map_err(name_flag)
            .context("launcher")?;
        return Ok(());
    }
    let env = logo_trainer::dist::DistEnv::from_env().context("launch environment")?;
    let dist_backend = args.dist_backend.clone();
    let cfg = args.into_config(m, &env)?;
    let device = logo_trainer::config::parse_device(&cfg.device).map_err(name_flag)?;
    let mut coll = logo_trainer::dist::connect(&env, &dist_backend, device)
        .map_err(name_flag)
        .with_context(|| format!("rank {} of {}: joining the job", env.rank, env.world_size))?;
    let summary = train_with(&cfg, coll.as_mut())
        .map_err(name_flag)
        .with_context(|| match env.world_size {
            1 => "training".to_string(),
            w => format!("training (rank {} of {w})", env.rank),
        })?;
    if env.rank != 0 {
        return Ok(());
    }
    if let (Some(first), Some(last)) = (summary.metrics.first(), summary.metrics.last()) {
        println!(
            "logo-trainer: {} steps of {}; loss {:.4} → {:.4}, margin {:+.3} → {:+.3}, accuracy {:.2} → {:.2}",
            summary.steps, cfg.loss.objective.as_str(), first.loss, last.loss, first.margin, last.margin, first.accuracy, last.accuracy
        );
    }
    println!(
        "logo-trainer: adapter in {} (adapter_config.json, adapter_model.safetensors); metrics.jsonl, training.png",
        summary.adapter.display()
    );
    Ok(())
}

impl TrainArgs {
    /// The run's configuration: [`RawTrainConfig::default`], then the keys of --config, then
    /// the flags given on the command line (`m` tells which), validated once; the device of
    /// this rank ([`logo_trainer::dist::rank_device`]).
    fn into_config(
        self,
        m: &ArgMatches,
        env: &logo_trainer::dist::DistEnv,
    ) -> anyhow::Result<TrainConfig> {
        let mut raw = match &self.config {
            Some(path) => RawTrainConfig::from_path(path).map_err(name_flag)?,
            None => RawTrainConfig::default(),
        };
        let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
        macro_rules! flag {
            ($id:ident => $($key:ident).+) => {
                if given(stringify!($id)) {
                    raw.$($key).+ = self.$id.clone().into();
                }
            };
        }
        flag!(output => output);
        flag!(objective => loss.objective);
        flag!(beta => loss.beta);
        flag!(gamma => loss.gamma);
        flag!(sft_weight => loss.sft_weight);
        flag!(lr => optim.lr);
        flag!(weight_decay => optim.weight_decay);
        flag!(warmup_steps => warmup_steps);
        flag!(min_lr_ratio => min_lr_ratio);
        flag!(max_steps => max_steps);
        flag!(stop_after_step => stop_after_step);
        flag!(batch_size => batch_size);
        flag!(grad_accum => grad_accum);
        flag!(max_grad_norm => max_grad_norm);
        flag!(save_steps => save_steps);
        flag!(shuffle_buffer => shuffle_buffer);
        flag!(lora_r => lora.r);
        flag!(lora_alpha => lora.lora_alpha);
        flag!(lora_dropout => lora.lora_dropout);
        flag!(target_modules => lora.target_modules);
        flag!(seed => seed);
        flag!(device => device);
        flag!(resume => resume);
        flag!(gradient => gradient);
        flag!(checkpointing => checkpointing);
        if let Some(data) = self.data {
            raw.data = data;
        }
        if let Some(model) = self.model {
            raw.model = model;
        }
        if self.quiet {
            raw.progress = false;
        }
        // The flags of the two booleans `gradient` replaced.
        if self.decoupled {
            raw.gradient = GradientMode::Decoupled;
        } else if self.share_prompt {
            raw.gradient = GradientMode::SharedPrompt;
        } else if self.no_share_prompt {
            raw.gradient = GradientMode::Joint;
        }
        raw.device = logo_trainer::dist::rank_device(&raw.device, env);
        TrainConfig::try_from(raw).map_err(name_flag)
    }
}
