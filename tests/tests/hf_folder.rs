//! Hugging Face model folders in process: the embedded GGUF exported as an HF folder
//! (`logo-trainer export-hf` + `logo-engine tokenizer`) runs in the engine's in-process
//! backend with the logits of the GGUF it came from and of transformers on the same folder;
//! and data built for a template that is not SmolLM2's ChatML (one written here, whose
//! assistant turns end with `<|endoftext|>`, as Mistral's end with `</s>`) ends every response
//! with the stop token the model wrote (that end of turn, or SmolLM2's own `<|im_end|>`) and
//! trains.
//! Under `CI=true` a missing model or venv fails.

use std::path::{Path, PathBuf};

use logo_engine::sink::read_training_samples;
use logo_policy::config::{ModelConfig, WeightFormat};
use logo_policy::model::{GenerateOptions, Policy};
use logo_policy::prompt::ResponsePrompt;
use logo_policy::template::PromptTemplate;
use logo_tests::{describe, embedded_model, or_skip, run};

/// A chat template written for this test, in Mistral's manner: system and user turns are
/// ChatML's, but an assistant turn ends with the EOS token (`<|endoftext|>` here), so the end
/// of turn is not `<|im_end|>`. SmolLM2 (tuned on ChatML) still ends its answer with
/// `<|im_end|>`, a stop id through `generation_config.json`; the response then ends with that
/// `<|im_end|>`, the token the model wrote, not with the template's end of turn. (With
/// foreign headers, Zephyr's `<|user|>` say, or `<|endoftext|>` closing every turn, SmolLM2
/// rambles past any budget.)
const EOS_TURNS: &str = "{% for message in messages %}\
{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + message['content'] + eos_token + '\\n' }}\
{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// SmolLM2's `<|endoftext|>` and `<|im_end|>` ids.
const END_OF_TEXT: u32 = 0;
const IM_END: u32 = 2;

/// The embedded GGUF as an HF folder under `dir`: `config.json`, `model.safetensors` (f32),
/// `tokenizer.json`, `tokenizer_config.json` (the GGUF's ChatML template).
fn hf_folder(dir: &Path, gguf: &Path) -> PathBuf {
    let out = dir.join("model");
    let o = run(
        "logo-trainer",
        &[
            "export-hf",
            "--model",
            gguf.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "export-hf: {}", describe(&o));
    let o = run(
        "logo-engine",
        &[
            "tokenizer",
            "--model",
            gguf.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "tokenizer: {}", describe(&o));
    out
}

fn config(path: &Path) -> ModelConfig {
    ModelConfig {
        path: path.to_path_buf(),
        tokenizer: None,
        name: None,
        adapter: None,
        weights: WeightFormat::F32,
        threads: 2,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap()
}

#[test]
fn an_hf_folder_runs_in_process_with_the_logits_of_its_gguf_and_of_transformers() {
    let Some(gguf) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let py = logo_env::paths::venv_python_with(&["transformers", "torch"]);
    let Some(py) = or_skip(
        py.ok(),
        "the venv with transformers (scripts/setup-venv.sh)",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let folder = hf_folder(tmp.path(), &gguf);
    let mut from_gguf = Policy::load(&config(&gguf)).unwrap();
    let mut from_folder = Policy::load(&config(&folder)).unwrap();
    assert_eq!(from_folder.name(), "model");
    assert_eq!(from_folder.vocab_size(), from_gguf.vocab_size());
    assert_eq!(from_folder.max_positions(), 8192);
    // The folder's end of turn and EOS are both <|im_end|> (its tokenizer_config.json); the
    // GGUF's ChatML also stops on <|endoftext|>.
    assert_eq!(from_folder.stop_ids(), [IM_END]);
    assert!(from_gguf.stop_ids().contains(&IM_END));

    // The folder's own template renders the GGUF's template's prompt id for id.
    let (_, template) = PromptTemplate::load(&config(&folder)).unwrap();
    let (_, chatml) = PromptTemplate::load(&config(&gguf)).unwrap();
    let context = "Marie Curie was born in 1867 in Warsaw. She moved to Paris in 1891.";
    let question = "Where was Marie Curie born?";
    let prompt = ResponsePrompt::default();
    let (ids, _) = template.prompt(&prompt, &[context], question).unwrap();
    let (ids_gguf, _) = chatml.prompt(&prompt, &[context], question).unwrap();
    assert_eq!(ids, ids_gguf);

    let a = from_gguf.next_token_logits(&ids).unwrap();
    let b = from_folder.next_token_logits(&ids).unwrap();
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d_gguf = max_abs_diff(&a, &b);
    // The same f32 weights (dequantised by candle here, by the trainer for the export) in the
    // same candle model: equal up to the dequantisation's rounding.
    assert!(
        d_gguf <= 1e-4 * scale,
        "GGUF vs folder: {d_gguf} (scale {scale})"
    );

    let script = "import json, sys, torch\n\
         from transformers import AutoModelForCausalLM\n\
         m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)\n\
         ids = torch.tensor([json.loads(sys.argv[2])])\n\
         with torch.no_grad(): out = m(ids).logits[0, -1]\n\
         print(json.dumps(out.tolist()))\n";
    let o = std::process::Command::new(&py)
        .args([
            "-c",
            script,
            folder.to_str().unwrap(),
            &serde_json::to_string(&ids).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hf: Vec<f32> = serde_json::from_slice(&o.stdout).unwrap();
    let d_hf = max_abs_diff(&hf, &b);
    // Two f32 implementations over 30 layers (observed ~1e-4 of the scale); the bound holds
    // whichever CPU kernels libtorch picks.
    assert!(
        d_hf <= 2e-3 * scale,
        "transformers vs folder: {d_hf} (scale {scale})"
    );
    assert_eq!(argmax(&hf), argmax(&b));
    eprintln!("max |Δlogit|: GGUF {d_gguf:.3e}, transformers {d_hf:.3e} (max |logit| {scale:.2})");

    let greedy = GenerateOptions::greedy(12);
    let g = from_gguf.generate(&ids, &greedy).unwrap();
    let f = from_folder.generate(&ids, &greedy).unwrap();
    assert_eq!(f.token_ids, g.token_ids);
    assert!(!f.token_ids.is_empty());
}

/// A document whose first chunk answers its question.
fn doc(i: usize) -> String {
    let names = ["Alice", "Bruno", "Chiara"];
    let name = names[i % names.len()];
    serde_json::json!({
        "context": format!(
            "{name} Zimmerman hid the golden key number {i} under the old oak tree near Bristol \
             harbour. The weather in the valley was mild and farmers planted barley, rye and oats \
             along the river. Traders brought salt and copper from distant ports every spring."
        ),
        "questions": [format!("Where did {name} Zimmerman hide the golden key number {i}?")],
    })
    .to_string()
}

#[test]
fn data_built_for_another_template_ends_with_the_models_stop_token_and_trains() {
    let Some(gguf) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let folder = hf_folder(dir, &gguf);
    let tc_path = folder.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc_path).unwrap()).unwrap();
    tc["chat_template"] = EOS_TURNS.into();
    tc["eos_token"] = "<|endoftext|>".into();
    std::fs::write(&tc_path, tc.to_string()).unwrap();
    // SmolLM2 was tuned on ChatML and may still end a turn with <|im_end|> (2): both stop.
    std::fs::write(
        folder.join("generation_config.json"),
        r#"{"eos_token_id": [0, 2]}"#,
    )
    .unwrap();

    let lines: Vec<String> = (0..3).map(doc).collect();
    std::fs::write(dir.join("docs.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = dir.join("p.yaml");
    std::fs::write(
        &yaml,
        format!(
            "seed: 3\n\
             source: {{paths: [docs.jsonl]}}\n\
             model: {{path: {}, threads: 2}}\n\
             chunker: {{chunk_size: 16}}\n\
             sampler: {{num_chunks: 2, threshold: 1, num_negatives: 1}}\n\
             generator: {{max_new_tokens: 32, temperature: 0.5, on_length: regenerate, system_prompt: \"Answer in one short sentence, using only the context.\"}}\n\
             positions: {{target_length: 256}}\n\
             sink: {{output: out}}\n",
            folder.display()
        ),
    )
    .unwrap();
    let o = run("logo-engine", &["run", yaml.to_str().unwrap()]);
    assert!(o.status.success(), "{}", describe(&o));
    let samples = read_training_samples(&dir.join("out")).unwrap();
    assert!(!samples.is_empty(), "no sample kept: {}", describe(&o));

    let (_, template) = PromptTemplate::load(&config(&folder)).unwrap();
    assert_eq!(template.end_of_turn(), END_OF_TEXT);
    for s in &samples {
        // The prompt has no assistant turn, so no <|endoftext|>.
        assert!(
            !s.prompt_input_ids.contains(&END_OF_TEXT),
            "{}",
            s.key.sample_id
        );
        // Every response ends with the stop token the model wrote: the template's
        // end of turn or SmolLM2's own <|im_end|>, recorded in the stop id columns, once.
        let stops = std::iter::once(&s.chosen_stop_token_id).chain(&s.rejected_stop_token_id);
        for (r, stop) in std::iter::once(&s.chosen_input_ids)
            .chain(&s.rejected_input_ids)
            .zip(stops)
        {
            let stop = stop.expect("a stop id");
            assert!([END_OF_TEXT, IM_END].contains(&stop), "{}", s.key.sample_id);
            assert_eq!(r.last(), Some(&stop), "{}", s.key.sample_id);
            assert_eq!(
                r.iter()
                    .filter(|&&t| t == END_OF_TEXT || t == IM_END)
                    .count(),
                1,
                "{}",
                s.key.sample_id
            );
        }
    }

    let adapter = dir.join("adapter");
    let o = run(
        "logo-trainer",
        &[
            "--data",
            dir.join("out").to_str().unwrap(),
            "--model",
            folder.to_str().unwrap(),
            "--output",
            adapter.to_str().unwrap(),
            "--max-steps",
            "2",
            "--device",
            "cpu",
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let metrics = std::fs::read_to_string(adapter.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 2);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    eprintln!(
        "{} samples, every response closed by <|endoftext|>; losses {losses:?}",
        samples.len()
    );
}
