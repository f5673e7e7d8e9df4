//! LOGO prompts over real document chunks equal transformers' `apply_chat_template(messages,
//! tokenize=True, add_generation_prompt=True)` token for token, in six template families, and
//! each chunk's token span (`prompt_segments`) follows the documented rule (a token belongs to
//! the chunk it starts in), computed independently from transformers' offsets
//! (`tests/py/prompt_reference.py`).
//!
//! Families (templates written for this test in each family's manner, over SmolLM2's
//! byte-level BPE exported from the embedded GGUF with the family's control tokens added):
//! ChatML (the GGUF's own template), Llama 3 (`| trim`), Mistral `[INST]` (no system role:
//! logo folds the system message into the user turn), Qwen2 (a default system message),
//! Llama 2 (the template itself folds the system message into the first user turn, `<<SYS>>`)
//! and a Llama 3 template read from `chat_template.jinja` (as transformers 5 saves it).
//! The same prompts over a SentencePiece GGUF tokenizer with its own template
//! (`scripts/make-sp-fixtures.py`), where a chunk tokenised alone differs from the same text
//! inside the message (`▁first` vs `first`), compare the same way.
//! Samples: essays of `../shared/data/haystack`, with and without leading and trailing spaces
//! and newlines, cut into chunks at byte positions that fall inside words; the chunks of a
//! prompt are not contiguous. Under `CI=true` a missing model, venv or data fails.

use std::path::Path;

use logo_policy::prompt::ResponsePrompt;
use logo_policy::template::{JinjaTemplate, PromptTemplate};
use logo_tests::{embedded_model, or_skip, shared_data};

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + \
message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}\
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}\
{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const QWEN2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}\
{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}\
{% set system_message = false %}{% endif %}{% for message in loop_messages %}\
{% if loop.index0 == 0 and system_message != false %}\
{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\
{% else %}{% set content = message['content'] %}{% endif %}\
{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\
{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

struct Family {
    name: &'static str,
    /// `None`: the GGUF's own template (SmolLM2 ChatML).
    template: Option<&'static str>,
    /// Write the template to `chat_template.jinja` instead of `tokenizer_config.json`.
    jinja_file: bool,
    added: &'static [&'static str],
    bos: Option<&'static str>,
    eos: &'static str,
    /// Whether the template takes a system role (else logo folds it into the user turn).
    system_role: bool,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "chatml",
        template: None,
        jinja_file: false,
        added: &[],
        bos: None,
        eos: "<|im_end|>",
        system_role: true,
    },
    Family {
        name: "llama3",
        template: Some(LLAMA3),
        jinja_file: false,
        added: &[
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        bos: Some("<|begin_of_text|>"),
        eos: "<|eot_id|>",
        system_role: true,
    },
    Family {
        name: "mistral",
        template: Some(MISTRAL),
        jinja_file: false,
        added: &["<s>", "</s>", "[INST]", "[/INST]"],
        bos: Some("<s>"),
        eos: "</s>",
        system_role: false,
    },
    Family {
        name: "qwen2",
        template: Some(QWEN2),
        jinja_file: false,
        added: &[],
        bos: None,
        eos: "<|im_end|>",
        system_role: true,
    },
    Family {
        name: "llama2",
        template: Some(LLAMA2),
        jinja_file: false,
        added: &["<s>", "</s>", "[INST]", "[/INST]"],
        bos: Some("<s>"),
        eos: "</s>",
        system_role: true,
    },
    Family {
        name: "llama3-jinja-file",
        template: Some(LLAMA3),
        jinja_file: true,
        added: &[
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        bos: Some("<|begin_of_text|>"),
        eos: "<|eot_id|>",
        system_role: true,
    },
];

/// Writes the tokenizer folder of `family`.
fn folder(base: &Path, gguf: &Path, family: &Family) -> std::path::PathBuf {
    let dir = base.join(family.name);
    logo_policy::tokenizer::export_hf_tokenizer(gguf, &dir).unwrap();
    let tok_path = dir.join("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
    let added: Vec<tokenizers::AddedToken> = family
        .added
        .iter()
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_special_tokens(&added);
    tok.save(&tok_path, true).unwrap();
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    if let Some(t) = family.template {
        if family.jinja_file {
            cfg.as_object_mut().unwrap().remove("chat_template");
            std::fs::write(dir.join("chat_template.jinja"), t).unwrap();
        } else {
            cfg["chat_template"] = t.into();
        }
    }
    match family.bos {
        Some(b) => cfg["bos_token"] = b.into(),
        None => {
            cfg.as_object_mut().unwrap().remove("bos_token");
        }
    }
    cfg["eos_token"] = family.eos.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    dir
}

/// `text` cut at every `step` bytes (moved back to a character boundary): cuts inside words.
fn cut(text: &str, step: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + step).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push(&text[at..end]);
        at = end;
    }
    out
}

/// The samples: `(chunks, question)`, from essays with and without surrounding whitespace.
fn samples(data: &Path) -> Vec<(Vec<String>, String)> {
    let mut names: Vec<_> = std::fs::read_dir(data.join("haystack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for (i, path) in names.iter().take(6).enumerate() {
        let text = std::fs::read_to_string(path).unwrap();
        let mut end = 1500.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let body = &text[..end];
        let doc = if i % 2 == 0 {
            body.to_string()
        } else {
            format!("  \n {body} \n\n")
        };
        let pieces = cut(&doc, 97 + 13 * i);
        // Not contiguous: the first chunk, then every other one, and the last.
        let mut chosen: Vec<String> = pieces
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == 0 || *k + 1 == pieces.len())
            .map(|(_, p)| p.to_string())
            .collect();
        if i == 4 {
            chosen.insert(1, "   \n".into()); // a chunk of whitespace only
        }
        out.push((chosen, format!("What does essay {i} say first?")));
    }
    out
}

/// Compares `template`'s LOGO prompts over `samples` with transformers' (the tokenizer of
/// `folder`, or of the GGUF `gguf` inside it); returns how many were equal (all, or it panics).
#[allow(clippy::too_many_arguments)]
fn compare(
    py: &Path,
    work: &Path,
    name: &str,
    template: &JinjaTemplate,
    folder: &Path,
    gguf: Option<&str>,
    system_role: bool,
    samples: &[(Vec<String>, String)],
) -> usize {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/prompt_reference.py");
    let prompt = ResponsePrompt::default();
    let mut spec = Vec::new();
    let mut ours = Vec::new();
    for (chunks, question) in samples {
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (before, after) = prompt.around_context(question);
        let user = format!("{before}{}{after}", chunks.concat());
        let messages = if system_role {
            serde_json::json!([{"role": "system", "content": prompt.system}, {"role": "user", "content": user}])
        } else {
            serde_json::json!([{"role": "user", "content": format!("{}\n\n{user}", prompt.system)}])
        };
        let mut parts = refs.clone();
        parts.push(&after);
        spec.push(serde_json::json!({"messages": messages, "parts": parts}));
        ours.push(template.prompt(&prompt, &refs, question).unwrap());
    }
    let spec_path = work.join(format!("{name}.json"));
    let spec = serde_json::json!({"folder": folder, "gguf": gguf, "samples": spec});
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let o = std::process::Command::new(py)
        .arg(&script)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = want["samples"].as_array().unwrap();
    assert_eq!(want.len(), samples.len());
    for (k, ((ids, segments), w)) in ours.iter().zip(want).enumerate() {
        let w_ids: Vec<u32> = serde_json::from_value(w["ids"].clone()).unwrap();
        assert_eq!(ids, &w_ids, "{name} sample {k}: ids");
        // Segments: prefix, each chunk, suffix, from transformers' token offsets.
        let bounds: Vec<usize> = serde_json::from_value(w["bounds"].clone()).unwrap();
        let n = samples[k].0.len();
        let mut want_segments = vec![bounds[0] as u32];
        want_segments.extend(bounds[..n + 1].windows(2).map(|b| (b[1] - b[0]) as u32));
        want_segments.push((ids.len() - bounds[n]) as u32);
        assert_eq!(segments, &want_segments, "{name} sample {k}: segments");
        assert_eq!(segments.iter().sum::<u32>() as usize, ids.len());
    }
    ours.len()
}

#[test]
fn logo_prompts_equal_transformers_in_six_template_families() {
    let Some(gguf) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let Some(data) = or_skip(shared_data(), "../shared/data") else {
        return;
    };
    let py = logo_env::paths::venv_python_with(&["transformers", "sentencepiece", "gguf"]);
    let Some(py) = or_skip(
        py.ok(),
        "the venv with transformers, sentencepiece, gguf (scripts/setup-venv.sh)",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let samples = samples(&data);
    let mut counts = Vec::new();
    for family in FAMILIES {
        let dir = folder(base.path(), &gguf, family);
        let (_, template) = JinjaTemplate::from_hf_folder(&dir).unwrap();
        let n = compare(
            &py,
            base.path(),
            family.name,
            &template,
            &dir,
            None,
            family.system_role,
            &samples,
        );
        counts.push(format!("{}: {n}/{}", family.name, samples.len()));
    }

    // A SentencePiece GGUF (scripts/make-sp-fixtures.py: trained on five essays, a Gemma-style
    // template with `| trim`), read by logo from the GGUF and by transformers with gguf_file.
    let sp = base.path().join("sp");
    std::fs::create_dir_all(&sp).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = vec![root.join("scripts/make-sp-fixtures.py"), sp.clone()];
    for name in [
        "addiction.txt",
        "apple.txt",
        "avg.txt",
        "bias.txt",
        "copy.txt",
    ] {
        args.push(data.join("haystack").join(name));
    }
    let o = std::process::Command::new(&py)
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut cfg = logo_policy::model::default_model_config();
    cfg.path = sp.join("sp.gguf");
    let (_, template) = PromptTemplate::load(&cfg).unwrap();
    let n = compare(
        &py,
        base.path(),
        "sentencepiece-gguf",
        template.jinja(),
        &sp,
        Some("sp.gguf"),
        true,
        &samples,
    );
    counts.push(format!("sentencepiece-gguf: {n}/{}", samples.len()));
    eprintln!("token-for-token equal: {}", counts.join(", "));
}
