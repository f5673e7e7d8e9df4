//! End-to-end tests of `logo-engine`: config errors, rejects, and a run over real L-Eval
//! documents (../shared/data/leval) with the embedded model.

use std::path::Path;

use logo_engine::sink::{read_training_samples, Manifest, MANIFEST};
use logo_formats::rejects::Reject;
use logo_tests::{describe, embedded_model, or_skip, run, shared_data};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn config_errors_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("d.jsonl");
    write(&docs, "{\"context\": \"x\", \"question\": \"y\"}\n");
    let out_dir = dir.path().join("out");
    let cases = [
        (
            "sampler: {num_chunks: 4, delta: 3}\n",
            "unknown field `delta`",
        ),
        (
            "sampler: {num_negatives: 0}\n",
            "config key sampler.num_negatives: must be in 1..=64 (got 0)",
        ),
        ("chunker: {chunk_size: big}\n", "invalid type"),
    ];
    for (extra, expected) in cases {
        let yaml = dir.path().join("p.yaml");
        write(
            &yaml,
            &format!("source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\nsink: {{output: out}}\n{extra}"),
        );
        let out = run("logo-engine", &["run", yaml.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(
            !out_dir.exists(),
            "no work may happen before the config is valid"
        );
    }
    // A source that matches nothing is a config error too, named by key.
    let yaml = dir.path().join("p.yaml");
    write(
        &yaml,
        "source: {paths: [missing/*.jsonl]}\nmodel: {path: m.gguf}\n",
    );
    let out = run("logo-engine", &["run", yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config key source.paths") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn schema_lists_every_boundary_table() {
    let out = run("logo-engine", &["schema"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for table in [
        "documents",
        "chunks",
        "scored",
        "sampled",
        "generations",
        "training",
    ] {
        assert!(text.contains(&format!("# {table}\n")), "{text}");
    }
    assert!(text.contains("prompt_position_ids"));
}

/// A document whose first 16-token chunk holds every content term of the question.
fn good_doc(name: &str) -> String {
    let filler = "The weather in the valley was mild and farmers planted barley, rye and oats \
                  along the river. Traders brought salt and copper from distant ports every spring. ";
    format!(
        "{name} Zimmerman hid the golden key under the old oak tree near Bristol harbour. {}",
        filler.repeat(4)
    )
}

#[test]
fn every_kind_of_bad_row_is_rejected_and_the_rest_goes_on() {
    let Some(model) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let q = "Where did Alice Zimmerman hide the golden key?";
    let mut lines: Vec<Vec<u8>> = vec![
        serde_json::json!({"context": good_doc("Alice"), "question": q, "answer": "Under the old oak tree."})
            .to_string()
            .into_bytes(),
        b"{not json".to_vec(),
        b"{\"context\": \"caf\xff\xfe\", \"question\": \"q\"}".to_vec(),
        br#"{"question": "Who?"}"#.to_vec(),
        br#"{"context": "   ", "question": "Who?"}"#.to_vec(),
        br#"{"context": "Some text here.", "question": "   "}"#.to_vec(),
        br#"{"context": "Some text here.", "questions": ["a?", "b?"], "answers": ["x"]}"#.to_vec(),
        br#"{"context": "Some text here.", "question": 5}"#.to_vec(),
        br#"{"context": "Some text here."}"#.to_vec(),
    ];
    lines.push(
        serde_json::json!({"input": good_doc("Alice"), "instructions": [q], "outputs": ["Under the oak."]})
            .to_string()
            .into_bytes(),
    );
    let mut bytes = lines.join(&b'\n');
    bytes.push(b'\n');
    std::fs::write(dir.path().join("docs.jsonl"), bytes).unwrap();
    let yaml = dir.path().join("p.yaml");
    write(
        &yaml,
        &format!(
            "source: {{paths: [docs.jsonl], batch_size: 3}}\n\
             model: {{path: {}}}\n\
             chunker: {{chunk_size: 16}}\n\
             sampler: {{num_chunks: 2, threshold: 1, num_negatives: 1}}\n\
             generator: {{max_new_tokens: 64, on_length: regenerate, chosen: reference}}\n\
             positions: {{target_length: 256}}\n\
             sink: {{output: out}}\n",
            model.display()
        ),
    );
    let out = run("logo-engine", &["run", yaml.to_str().unwrap(), "--quiet"]);
    // Rejected rows set exit code 1; the run still completes.
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let rejects: Vec<Reject> = std::fs::read_to_string(dir.path().join("out/rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, Option<&str>, &str)> = rejects
        .iter()
        .map(|r| (r.row, r.field.as_deref(), r.reason.as_str()))
        .collect();
    let expected: Vec<(u64, Option<&str>, &str)> =
        vec![
        (2, None, "malformed JSON: key must be a string at line 1 column 2"),
        (3, None, "invalid UTF-8 at byte 16"),
        (4, Some("context"), "missing field (expected `context` or `input`)"),
        (5, Some("context"), "empty document"),
        (6, Some("question"), "question 0 is empty"),
        (7, Some("answers"), "1 answers for 2 questions (must pair one to one)"),
        (8, Some("question"), "expected a string or a list of strings"),
        (
            9,
            Some("question"),
            "missing field (expected `question` or `instructions`) and question generation is off",
        ),
    ];
    assert_eq!(got, expected);
    assert!(rejects
        .iter()
        .all(|r| r.file.ends_with("docs.jsonl") && r.stage == "source"));
    // Both valid documents became samples: nothing valid was lost.
    let samples = read_training_samples(&dir.path().join("out")).unwrap();
    let rows: Vec<u64> = samples.iter().map(|s| s.key.source_row).collect();
    assert_eq!(rows, vec![1, 10]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("rejects          8"), "{summary}");
    assert!(summary.contains("samples out      2"), "{summary}");
}

#[test]
fn leval_run_produces_valid_samples() {
    let Some(model) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let Some(data) = or_skip(shared_data(), "../shared/data") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("leval.yaml");
    let (n, m, k) = (4usize, 2usize, 4096u32);
    write(
        &yaml,
        &format!(
            "seed: 7\n\
             source: {{paths: [{}/leval/multidoc_qa.jsonl], batch_size: 1}}\n\
             model: {{path: {}}}\n\
             chunker: {{chunk_size: 64}}\n\
             scorer: {{backend: lexical}}\n\
             sampler: {{num_chunks: {n}, threshold: 2, num_negatives: {m}}}\n\
             generator: {{max_new_tokens: 64, on_length: regenerate, chosen: reference}}\n\
             positions: {{target_length: {k}}}\n\
             sink: {{output: out}}\n",
            data.display(),
            model.display()
        ),
    );
    let out = run(
        "logo-engine",
        &["run", yaml.to_str().unwrap(), "--limit", "2", "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out_dir = dir.path().join("out");
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join(MANIFEST)).unwrap()).unwrap();
    let samples = read_training_samples(&out_dir).unwrap();
    assert_eq!(manifest.documents, 2);
    // Every question is accounted for: a sample or a counted skip.
    let questions = manifest.stats.rows_out["source"];
    let skipped: u64 = manifest.stats.skipped.values().sum();
    assert!(questions >= 2, "{manifest:?}");
    assert_eq!(
        samples.len() as u64 + skipped,
        questions,
        "{:?}",
        manifest.stats
    );
    assert!(
        !samples.is_empty(),
        "no sample: {:?}",
        manifest.stats.skipped
    );
    for s in &samples {
        assert_eq!(s.context_chunk_ids.len(), n);
        assert!(s.context_chunk_ids.windows(2).all(|w| w[0] < w[1]));
        assert!(s.context_chunk_scores.iter().any(|&x| x > 2));
        assert_eq!(s.rejected.len(), m);
        assert_eq!(s.rejected_input_ids.len(), m);
        assert_eq!(s.rejected_strategy.len(), m);
        assert_eq!(
            Some(s.chosen.as_str()),
            s.key.answer.as_deref().map(str::trim)
        );
        assert_eq!(s.chosen_origin, "reference");
        let p = &s.prompt_position_ids;
        assert_eq!(p.len(), s.prompt_input_ids.len());
        assert_eq!(p[0], 0);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        let longest = s
            .rejected_input_ids
            .iter()
            .map(Vec::len)
            .chain([s.chosen_input_ids.len()])
            .max()
            .unwrap();
        assert!((*p.last().unwrap() as usize) + longest < k as usize);
        assert_eq!(s.target_length, k);
        assert_eq!(
            s.prompt_segments.iter().sum::<u32>() as usize,
            s.prompt_input_ids.len()
        );
        assert_eq!(s.prompt_segments.len(), n + 2);
    }
    // SQL reads the output back.
    let sql = run(
        "logo-engine",
        &[
            "sql",
            "SELECT count(*) AS n FROM samples",
            "--data",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(sql.status.success(), "{}", describe(&sql));
    let table = String::from_utf8_lossy(&sql.stdout);
    assert!(table.contains(&format!("| {} ", samples.len())), "{table}");
}

/// `logo-engine tokenizer` writes a folder that transformers' `AutoTokenizer` loads: it
/// encodes text to the engine's own ids, and its chat template (the GGUF's) renders a
/// system + user turn to the ids of the engine's `ChatTemplate`.
#[test]
fn exported_tokenizer_loads_in_transformers_with_the_engines_ids() {
    let Some(model) = or_skip(embedded_model(), "the embedded model") else {
        return;
    };
    let py = match logo_env::paths::venv_python_with(&["transformers"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok");
    let o = run(
        "logo-engine",
        &[
            "tokenizer",
            "--model",
            model.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let text = "Marie Curie was born in 1867 in Warsaw; she won two Nobel prizes.";
    let (system, user) = ("Answer briefly.", "Where was she born?");
    let script = format!(
        "import json, sys\n\
         from transformers import AutoTokenizer\n\
         t = AutoTokenizer.from_pretrained(sys.argv[1])\n\
         chat = t.apply_chat_template([{{'role': 'system', 'content': {system:?}}}, \
         {{'role': 'user', 'content': {user:?}}}], add_generation_prompt=True, tokenize=True)\n\
         if hasattr(chat, 'keys'): chat = chat['input_ids']\n\
         print(json.dumps({{'text': t.encode({text:?}, add_special_tokens=False), \
         'chat': list(chat), 'eos': t.eos_token}}))\n"
    );
    let o = std::process::Command::new(&py)
        .args(["-c", &script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cfg = logo_policy::config::ModelConfig {
        path: model,
        ..logo_policy::model::default_model_config()
    };
    let tok = logo_policy::tokenizer::load_tokenizer(&cfg).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    assert_eq!(
        ids(&got["text"]),
        logo_policy::tokenizer::encode_text(&tok, text).unwrap()
    );
    let template = logo_policy::tokenizer::ChatTemplate::from_tokenizer(&tok).unwrap();
    let ours = template
        .chat(
            &tok,
            system,
            &[logo_policy::tokenizer::UserPart::Text(user)],
            "",
        )
        .unwrap();
    assert_eq!(ids(&got["chat"]), ours);
    assert_eq!(got["eos"], "<|im_end|>");
}
