//! `logo-engine`: build LOGO preference data from long documents, inspect it with SQL.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use logo_engine::config::PipelineConfig;
use logo_engine::pipeline::{self, RunOptions};

/// Turns long documents with questions into LOGO preference data (Tang et al., section 3.2.2).
#[derive(Parser)]
#[command(name = "logo-engine", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a GGUF's tokenizer as a Hugging Face tokenizer folder (tokenizer.json,
    /// tokenizer_config.json with the chat template), e.g. into the folder of
    /// `logo-trainer export-hf`, so that transformers' AutoTokenizer loads it.
    Tokenizer {
        /// The GGUF. Default: the embedded SmolLM2-135M-Instruct in $LOGO_CACHE/models.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Folder to write into (created).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Run a pipeline file: documents → chunks → scores → contexts → responses → positions → Parquet.
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Read at most N documents.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Output folder (default: sink.output of the pipeline file).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Replace an output folder that holds a different run (another configuration,
        /// inputs or model). Its data stays until this run's first unit is written. The same
        /// run is resumed either way.
        #[arg(long)]
        overwrite: bool,
        /// Take only the units whose index ≡ I (mod N), e.g. `--shard 0/4`; shards write
        /// into one output folder. Default: SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
        /// when set, else all units.
        #[arg(long, value_name = "I/N")]
        shard: Option<pipeline::Shard>,
    },
    /// Show an output folder's units: done, pending and failed per shard.
    Status {
        /// The output folder of a run.
        output: PathBuf,
        /// Group by this many shards (default: the shard count of the latest run).
        #[arg(long, value_name = "N")]
        shards: Option<u64>,
    },
    /// Run a SQL query over an output folder (table `samples`) and print the result.
    #[cfg(feature = "sql")]
    Sql {
        /// The query, e.g. "SELECT position_strategy, count(*) FROM samples GROUP BY 1".
        query: String,
        /// Output folder of a run (`scripts/just main` writes `out/data`).
        #[arg(long, value_name = "DIR", default_value = "out/data")]
        data: PathBuf,
    },
    /// Print the Arrow schema of every table that crosses a stage or program boundary.
    Schema,
}

fn main() -> ExitCode {
    logo_env::cli::reset_sigpipe();
    logo_env::cli::init_logging();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logo-engine: {}", logo_env::cli::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            pipeline: path,
            limit,
            output,
            quiet,
            overwrite,
            shard,
        } => {
            let cfg = PipelineConfig::from_path(&path)
                .with_context(|| format!("reading pipeline {}", path.display()))?;
            let shard = match shard {
                Some(s) => s,
                None => pipeline::Shard::from_slurm_env()
                    .map_err(anyhow::Error::msg)?
                    .unwrap_or_default(),
            };
            let opts = RunOptions {
                limit,
                output,
                progress: !quiet,
                overwrite,
                shard,
            };
            let summary = pipeline::run(&cfg, &opts).context("running the pipeline")?;
            print!("{}", pipeline::format_summary(&summary));
            // Rejected rows are not fatal, but the exit code says some input was bad.
            let rejected: u64 = summary.manifest.rejects.values().sum();
            Ok(if rejected > 0 {
                eprintln!(
                    "logo-engine: {rejected} rows rejected, see {}",
                    summary.output.join("rejects.jsonl").display()
                );
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { output, shards } => {
            print!("{}", pipeline::format_status(&output, shards)?);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sql")]
        Command::Sql { query, data } => {
            let batches = logo_engine::sql::query(&data, &query)?;
            println!("{}", logo_engine::sql::pretty(&batches)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenizer { model, output } => {
            let model = model.unwrap_or_else(logo_env::paths::default_model_path);
            let files = logo_policy::tokenizer::export_hf_tokenizer(&model, &output)?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            for (name, schema) in logo_schemas::all_schemas() {
                println!("# {name}");
                for f in schema.fields() {
                    println!(
                        "  {:<22} {}{}",
                        f.name(),
                        f.data_type(),
                        if f.is_nullable() { " (nullable)" } else { "" }
                    );
                }
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
