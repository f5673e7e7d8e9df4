//! Generation throughput of the policy model ([`logo_policy::model::Policy`]) on the embedded
//! SmolLM2-135M-Instruct GGUF: prefill tokens/s on a ~512-token chat prompt and decode tokens/s
//! over 64 generated tokens, for each in-memory weight format (`q8_0`, `f32` by default).
//!
//! Run (release, one profile for everything):
//!
//! ```text
//! cargo bench -p logo-engine --bench generation
//! cargo bench -p logo-engine --bench generation -- --iters 5 --weights q8_0,f32,native --threads 2
//! ```
//!
//! Options: `--iters N` (default 3, after one warm-up), `--prompt-tokens N` (512),
//! `--decode-tokens N` (64), `--weights LIST` (`q8_0,f32`), `--threads N` (1; candle reads its
//! thread count once per process, so one value per run). The model is
//! [`logo_env::paths::default_model_path`]; when it is absent the bench prints a message and
//! exits 0.
//!
//! With `LOGO_BENCH_PYTHON` pointing at a python that has `llama-cpp-cffi` (see
//! `bench/llamacpp_generation.py`), llama.cpp is measured on the same GGUF, prompt ids and
//! thread count, and the candle / llama.cpp ratios are reported.
//!
//! Output: `bench/results/generation.json` (provenance from `bench/provenance.py`: command, git
//! commit, machine; run context: crate version, start time, model; per weight format: load seconds, per-iteration prefill and decode seconds and
//! tokens/s, medians; llama.cpp's numbers and the ratios when measured).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use logo_env::paths::DEFAULT_MODEL_FILE;
use logo_policy::config::WeightFormat;
use logo_policy::model::{default_model_config, GenerateOptions, Policy};
use logo_policy::tokenizer::encode_text;
use serde_json::{json, Value};

/// Parsed command line.
struct Args {
    iters: usize,
    prompt_tokens: usize,
    decode_tokens: usize,
    weights: Vec<WeightFormat>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iters: 3,
        prompt_tokens: 512,
        decode_tokens: 64,
        weights: vec![WeightFormat::Q8_0, WeightFormat::F32],
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<usize, String> {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}: expected a positive integer, got {v:?}"))
        };
        match flag.as_str() {
            "--iters" => a.iters = number("--iters", value("--iters")?)?,
            "--prompt-tokens" => {
                a.prompt_tokens = number("--prompt-tokens", value("--prompt-tokens")?)?
            }
            "--decode-tokens" => {
                a.decode_tokens = number("--decode-tokens", value("--decode-tokens")?)?
            }
            "--threads" => a.threads = number("--threads", value("--threads")?)?,
            "--weights" => {
                a.weights = value("--weights")?
                    .split(',')
                    .map(|w| match w.trim() {
                        "q8_0" => Ok(WeightFormat::Q8_0),
                        "f32" => Ok(WeightFormat::F32),
                        "native" => Ok(WeightFormat::Native),
                        other => Err(format!(
                            "--weights: expected q8_0, f32 or native, got {other:?}"
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            // `cargo bench` passes `--bench`; libtest-style filters are ignored too.
            _ => {}
        }
    }
    Ok(a)
}

fn weights_name(w: WeightFormat) -> &'static str {
    match w {
        WeightFormat::Q8_0 => "q8_0",
        WeightFormat::F32 => "f32",
        WeightFormat::Native => "native",
    }
}

/// A deterministic English text long enough for any prompt length.
fn filler_text(min_words: usize) -> String {
    const PARAGRAPH: &str = "The river town kept its records in a stone archive near the bridge. \
        Every spring the archivists counted the boats, the bales of wool and the barrels of \
        salted fish that passed under the arches, and wrote the totals in a ledger bound with \
        green leather. Travellers who asked to see the ledgers were shown a copy, because the \
        originals were too fragile to handle after three hundred years of damp winters.";
    let mut text = String::new();
    let mut i = 1;
    while text.split_whitespace().count() < min_words {
        text.push_str(&format!("Section {i}. {PARAGRAPH}\n\n"));
        i += 1;
    }
    text
}

/// A chat prompt of exactly `n` tokens: system message, one context chunk cut to fit, question.
fn build_prompt(policy: &Policy, n: usize) -> Result<Vec<u32>, String> {
    let tok = policy.tokenizer();
    let template = policy.template().map_err(|e| e.to_string())?;
    let system = "You are a helpful assistant. Answer the question using only the given context.";
    let question = "How did the archivists keep track of the boats?";
    let (frame, _) = template
        .prompt(tok, system, &[], question)
        .map_err(|e| e.to_string())?;
    let room = n
        .checked_sub(frame.len())
        .ok_or_else(|| format!("--prompt-tokens must be > {}", frame.len()))?;
    let ids = encode_text(tok, &filler_text(room + 100)).map_err(|e| e.to_string())?;
    let chunk = &ids[..room.min(ids.len())];
    let (prompt, _) = template
        .prompt(tok, system, &[chunk], question)
        .map_err(|e| e.to_string())?;
    Ok(prompt)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a UNIX time (civil-from-days, H. Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Loads one weight format and times `iters` generations (after a warm-up).
fn bench_weights(w: WeightFormat, args: &Args, model: &Path) -> Result<(Value, Vec<u32>), String> {
    let mut cfg = default_model_config();
    cfg.path = model.to_path_buf();
    cfg.weights = w;
    cfg.threads = args.threads;
    let t0 = Instant::now();
    let mut policy = Policy::load(&cfg).map_err(|e| e.to_string())?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let prompt = build_prompt(&policy, args.prompt_tokens)?;
    let opts = GenerateOptions {
        min_new_tokens: args.decode_tokens,
        ..GenerateOptions::greedy(args.decode_tokens)
    };
    let mut iterations = Vec::new();
    for i in 0..=args.iters {
        let g = policy.generate(&prompt, &opts).map_err(|e| e.to_string())?;
        if i == 0 {
            continue; // warm-up
        }
        let decoded = g.token_ids.len().saturating_sub(1) as f64;
        let row = json!({
            "prefill_ms": g.prefill_seconds * 1e3,
            "decode_ms": g.decode_seconds * 1e3,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.token_ids.len(),
            "prefill_tokens_per_s": g.prompt_tokens as f64 / g.prefill_seconds,
            "decode_tokens_per_s": decoded / g.decode_seconds,
        });
        eprintln!(
            "{:>6} iter {i}: prefill {:7.1} tok/s, decode {:6.1} tok/s",
            weights_name(w),
            row["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            row["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        iterations.push(row);
    }
    let med = |k: &str| median(iterations.iter().filter_map(|r| r[k].as_f64()).collect());
    let summary = json!({
        "weights": weights_name(w),
        "load_seconds": load_seconds,
        "prefill_tokens_per_s": med("prefill_tokens_per_s"),
        "decode_tokens_per_s": med("decode_tokens_per_s"),
        "iterations": iterations,
    });
    Ok((summary, prompt))
}

/// Runs `bench/llamacpp_generation.py` with `python` on the same model and prompt ids.
fn bench_llama_cpp(
    python: &str,
    root: &Path,
    model: &Path,
    prompt: &[u32],
    args: &Args,
) -> Result<Value, String> {
    let ids_path =
        std::env::temp_dir().join(format!("logo-bench-prompt-{}.json", std::process::id()));
    std::fs::write(
        &ids_path,
        serde_json::to_string(prompt).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", ids_path.display()))?;
    let script = root.join("bench").join("llamacpp_generation.py");
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--prompt-ids")
        .arg(&ids_path)
        .args(["--decode-tokens", &args.decode_tokens.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--iters", &args.iters.to_string()])
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    let _ = std::fs::remove_file(&ids_path);
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{}: bad JSON output: {e}", script.display()))?;
    let its = v["iterations"].as_array().cloned().unwrap_or_default();
    let med = |k: &str| median(its.iter().filter_map(|r| r[k].as_f64()).collect());
    v["prefill_tokens_per_s"] = json!(med("prefill_tokens_per_s"));
    v["decode_tokens_per_s"] = json!(med("decode_tokens_per_s"));
    Ok(v)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("generation bench: {e}");
            std::process::exit(2);
        }
    };
    let model = logo_env::paths::default_model_path();
    if !model.exists() {
        eprintln!(
            "generation bench: skipped, {DEFAULT_MODEL_FILE} not found at {} (set LOGO_CACHE)",
            model.display()
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut configs = Vec::new();
    let mut prompt = Vec::new();
    for &w in &args.weights {
        match bench_weights(w, &args, &model) {
            Ok((summary, p)) => {
                configs.push(summary);
                prompt = p;
            }
            Err(e) => {
                eprintln!("generation bench: {}: {e}", weights_name(w));
                std::process::exit(1);
            }
        }
    }
    let llama_cpp = match std::env::var("LOGO_BENCH_PYTHON") {
        Ok(python) if !python.is_empty() => {
            match bench_llama_cpp(&python, &root, &model, &prompt, &args) {
                Ok(v) => {
                    let ratio = |k: &str, c: &Value| {
                        c[k].as_f64().unwrap_or(f64::NAN) / v[k].as_f64().unwrap_or(f64::NAN)
                    };
                    let ratios: Vec<Value> = configs
                        .iter()
                        .map(|c| {
                            json!({
                                "weights": c["weights"],
                                "prefill_candle_over_llama_cpp": ratio("prefill_tokens_per_s", c),
                                "decode_candle_over_llama_cpp": ratio("decode_tokens_per_s", c),
                            })
                        })
                        .collect();
                    eprintln!(
                        "llama.cpp: prefill {:.1} tok/s, decode {:.1} tok/s",
                        v["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                        v["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
                    );
                    json!({ "result": v, "ratios": ratios })
                }
                Err(e) => {
                    eprintln!("generation bench: llama.cpp: {e}");
                    json!({ "error": e })
                }
            }
        }
        _ => json!({ "skipped": "LOGO_BENCH_PYTHON not set" }),
    };
    let report = json!({
        "bench": "generation",
        "context": {
            "crate": "logo-engine",
            "version": env!("CARGO_PKG_VERSION"),
            "start": rfc3339(start),
            "model": model.display().to_string(),
            "threads": args.threads,
            "prompt_tokens": prompt.len(),
            "decode_tokens": args.decode_tokens,
            "iters": args.iters,
        },
        "configs": configs,
        "llama_cpp": llama_cpp,
    });
    let report = common::stamp(report, &common::command("generation"));
    let out_dir = root.join("bench").join("results");
    let out = out_dir.join("generation.json");
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&out_dir).and_then(|_| std::fs::write(&out, &text)) {
        eprintln!("generation bench: {}: {e}", out.display());
        std::process::exit(1);
    }
    for c in &configs {
        println!(
            "{:>6}: prefill {:7.1} tok/s ({} tokens), decode {:6.1} tok/s ({} tokens), load {:.2} s",
            c["weights"].as_str().unwrap_or("?"),
            c["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            prompt.len(),
            c["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            args.decode_tokens,
            c["load_seconds"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("wrote {}", out.display());
}
