//! `logo-eval`: needle in a haystack, long-context QA and sliding-window perplexity for a
//! model and, with `--adapter`, its PEFT adapter; `--compare` runs both and prints one table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use logo_eval::generate::{Generator, TorchBackend};
use logo_eval::niah::{run_niah, NiahConfig, NiahReport};
use logo_eval::perplexity::{run_perplexity, PerplexityConfig, PerplexityReport};
use logo_eval::qa::{run_qa, QaConfig, QaReport};
use logo_eval::report::{ModelReport, Report};
use logo_eval::{plot, EvalError, Result};
use logo_formats::rejects::Rejects;
use logo_policy::backend::{GenerationBackend, InProcess, OpenAi};
use logo_policy::config::OpenAiConfig;
use logo_policy::model::{max_positions_of, Policy};
use logo_policy::tokenizer::{encode_text, load_tokenizer, ChatTemplate};
use logo_trainer::model::Llama;
use tch::Kind;
use tokenizers::Tokenizer;

use logo_eval::options::{config_err, plan, policy_config, EvalOptions as Cli, Plan};

/// The trainer's libtorch model in f32 on `device` (`--device`), with the PEFT adapter when
/// given.
fn load_torch(model: &Path, adapter: Option<&Path>, device: &str) -> Result<Llama> {
    let device = logo_trainer::config::parse_device(device)
        .map_err(|e| config_err("device", e.to_string()))?;
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
    // The prompts are built with the base model's tokenizer and chat template, whichever
    // backend answers.
    let base_cfg = policy_config(&plan.model, None, cli.threads);
    let tokenizer = load_tokenizer(&base_cfg)?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let torch = torch_model.map(|m| TorchBackend::new(m, tokenizer.clone(), template, "torch"));
    if wants_generation {
        eprintln!("[{label}] loading the {} generator", cli.generator);
        let in_process;
        let server;
        let (kind, backend): (&'static str, &dyn GenerationBackend) = match cli.generator.as_str() {
            "server" => {
                server = server_backend(cli, plan, adapter.is_some(), &tokenizer, &template)?;
                ("server", &server)
            }
            "torch" => ("torch", torch.as_ref().expect("loaded above")),
            _ => {
                let model_cfg = policy_config(&plan.model, adapter, cli.threads);
                in_process = InProcess::new(Arc::new(Mutex::new(Policy::load(&model_cfg)?)));
                ("engine", &in_process)
            }
        };
        let generator = Generator {
            kind,
            backend,
            tokenizer: tokenizer.clone(),
            template,
        };
        if let Some((cfg, haystack)) = &plan.niah {
            report.niah = Some(niah_task(cli, label, &generator, haystack, cfg)?);
        }
        if let Some(cfg) = &plan.qa {
            report.qa = Some(qa_task(cli, label, &generator, cfg, rejects)?);
        }
    }
    if let Some((cfg, text)) = &plan.ppl {
        let model = torch.as_ref().expect("loaded above").model();
        report.perplexity = Some(perplexity_task(cli, label, &model, &tokenizer, cfg, text)?);
    }
    Ok(report)
}

/// The `openai` backend of `--server-url` serving `--server-model` (or
/// `--server-adapter-model` for the adapter), with the GGUF's tokenizer and template.
fn server_backend(
    cli: &Cli,
    plan: &Plan,
    adapter: bool,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<OpenAi> {
    let served = if adapter {
        cli.server_adapter_model.clone()
    } else {
        cli.server_model.clone()
    };
    let cfg: OpenAiConfig = serde_json::from_value(serde_json::json!({
        "endpoints": cli.server_url,
        "model": served,
        "api_key_env": cli.server_api_key_env,
        "max_in_flight": cli.server_in_flight,
    }))
    .map_err(|e| config_err("server_url", e.to_string()))?;
    let model_cfg = policy_config(&plan.model, None, cli.threads);
    Ok(OpenAi::connect(
        &cfg,
        tokenizer.clone(),
        template.stop_ids(),
        max_positions_of(&model_cfg)?,
    )?)
}

/// NIAH: `niah.json` and the heatmap `niah_{label}.png`.
fn niah_task(
    cli: &Cli,
    label: &str,
    generator: &Generator,
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
    generator: &Generator,
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
    label: &str,
    model: &Llama,
    tok: &Tokenizer,
    cfg: &PerplexityConfig,
    text: &str,
) -> Result<PerplexityReport> {
    eprintln!("[{label}] perplexity");
    // Tokenise about what is needed (≥ 1 token per 8 characters of English).
    let cut = text
        .char_indices()
        .nth(cfg.max_tokens * 8)
        .map_or(text.len(), |(i, _)| i);
    let mut tokens = encode_text(tok, &text[..cut])?;
    tokens.truncate(cfg.max_tokens);
    if tokens.len() < cfg.max_tokens {
        return Err(config_err(
            "ppl_tokens",
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

/// An option error as the command line spells it: key `niah_lengths` (or `a/b`) becomes
/// `--niah-lengths` (`--a/--b`); other errors are unchanged.
fn as_flags(e: EvalError) -> EvalError {
    match e {
        EvalError::Config { key, message } => EvalError::Config {
            key: key
                .split('/')
                .map(|k| format!("--{}", k.replace('_', "-")))
                .collect::<Vec<_>>()
                .join("/"),
            message,
        },
        e => e,
    }
}

fn main() -> ExitCode {
    logo_env::cli::reset_sigpipe();
    logo_env::cli::init_logging();
    let cli = Cli::parse();
    let plan = match plan(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("logo-eval: {}", logo_env::cli::error_chain(&as_flags(e)));
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
            eprintln!("logo-eval: {}", logo_env::cli::error_chain(&as_flags(e)));
            ExitCode::FAILURE
        }
    }
}
