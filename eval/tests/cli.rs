//! The `logo-eval` binary end to end: base vs adapter in one report, and bad flags stopping
//! before any work.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logo-eval"))
}

#[test]
fn compare_writes_one_report_with_differences() {
    let test = "compare_writes_one_report_with_differences";
    let (Some(cfg), Some(hay), Some(qa)) = (
        common::embedded(test),
        common::shared_data(test, "haystack"),
        common::shared_data(test, "leval/scientific_qa.jsonl"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    common::random_adapter(&cfg.path, &adapter, 0.05);
    let out = dir.path().join("report");
    let o = bin()
        .args(["--adapter", adapter.to_str().unwrap(), "--compare"])
        .args(["--out", out.to_str().unwrap()])
        .args(["--haystack", hay.to_str().unwrap()])
        .args(["--niah-lengths", "384", "--niah-depths", "0,100"])
        .args(["--qa", qa.to_str().unwrap(), "--qa-questions", "1"])
        .args(["--max-length", "768", "--max-new-tokens", "24"])
        .args(["--ppl-lengths", "128,256", "--ppl-tokens", "512"])
        .args(["--threads", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // scientific_qa documents (≥ 1,859 words) do not fit 768 tokens: the run says so.
    assert!(
        stderr.contains("1 of 1 documents cut in the middle to fit 768 tokens"),
        "{stderr}"
    );
    // The printed table: a header with both models and Δ, the rows of every task.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("base") && lines[0].contains("adapter") && lines[0].contains('Δ'));
    for metric in [
        "NIAH recall (mean)",
        "QA F1 scientific_qa.jsonl",
        "PPL @ 128",
        "PPL @ 256",
    ] {
        assert!(stdout.contains(metric), "{metric} missing from\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["label"], "base");
    assert_eq!(models[1]["label"], "adapter");
    // Every row has both values and their difference.
    for row in report["table"].as_array().unwrap() {
        let v = row["values"].as_array().unwrap();
        let (a, b) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        assert!(
            (row["delta"].as_f64().unwrap() - (b - a)).abs() < 1e-12,
            "{row}"
        );
    }
    // The random adapter (factors 0.05 · N(0, 1), well beyond what training moves) makes
    // the model worse at language modelling: 28.1 → 36.6 at 128 tokens when written.
    let ppl = |m: &serde_json::Value| m["perplexity"]["points"][0]["perplexity"].as_f64().unwrap();
    let (base, adapted) = (ppl(&models[0]), ppl(&models[1]));
    eprintln!("perplexity @ 128: base {base}, adapter {adapted}");
    assert!(
        adapted > base * 1.1,
        "perplexity base {base}, adapter {adapted}"
    );
    for f in [
        "niah_base.png",
        "niah_adapter.png",
        "perplexity.png",
        "report.txt",
        "base/niah.json",
        "base/qa.json",
        "adapter/perplexity.json",
    ] {
        let p = out.join(f);
        assert!(p.metadata().map(|m| m.len() > 100).unwrap_or(false), "{f}");
    }
}

#[test]
fn bad_flags_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let run = |args: &[&str]| {
        let o = bin()
            .args(["--out", out.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--tasks", "niah,mmlu"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--tasks: unknown task \"mmlu\""), "{err}");
    let (code, err) = run(&["--model", "/no/model.gguf"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--model: /no/model.gguf: no such file"),
        "{err}"
    );
    let (code, err) = run(&["--adapter", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no adapter_config.json"), "{err}");
    if common::embedded("bad_flags_stop_before_any_work").is_some() {
        let (code, err) = run(&["--tasks", "qa"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("--qa: the qa task needs files"), "{err}");
        let (code, err) = run(&["--tasks", "ppl", "--ppl-stride", "1.5"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("--ppl-stride"), "{err}");
        let (code, err) = run(&["--tasks", "niah", "--haystack", "/no/such/haystack"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("--haystack: /no/such/haystack"), "{err}");
        let (code, err) = run(&["--tasks", "ppl", "--ppl-text", "/no/such.txt"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("--ppl-text: /no/such.txt"), "{err}");
    }
    assert!(!out.exists(), "no output before the flags are valid");
}
