//! SentencePiece GGUF tokenizers (`tokenizer.ggml.model = llama`) and chat
//! templates of Hugging Face folders as transformers 5 saves them (`chat_template.jinja`,
//! `additional_chat_templates/`, the `{name, template}` list), against
//! transformers (the venv's) on the same files.
//!
//! Fixtures, made at test time in a temporary folder: `scripts/make-sp-fixtures.py` trains a
//! SentencePiece BPE (vocab 2000, byte fallback, control tokens `<start_of_turn>`,
//! `<end_of_turn>`, user-defined `<think>`) on five essays of `../shared/data/haystack` and
//! writes it as two GGUFs (`add_space_prefix` true with a chat template, and false);
//! `tests/py/sp_reference.py` gives transformers' ids and saves the tokenizer folders. Under
//! `CI=true` a missing data folder or venv package (transformers, sentencepiece, gguf) fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use logo_policy::config::ModelConfig;
use logo_policy::template::{JinjaTemplate, PromptTemplate};
use logo_policy::tokenizer::{export_hf_tokenizer, load_tokenizer};
use logo_tests::{or_skip, shared_data};

const GGUFS: [&str; 2] = ["sp.gguf", "sp-nospace.gguf"];
const TRAIN_ON: [&str; 5] = [
    "addiction.txt",
    "apple.txt",
    "avg.txt",
    "before.txt",
    "bias.txt",
];

/// Texts at the edges: spaces and newlines at either end, bytes the vocabulary lacks (byte
/// fallback), control and special strings, the `▁` marker and byte-token spellings as text.
const EDGE_TEXTS: &[&str] = &[
    "",
    " ",
    "\n",
    "Hello world",
    "  two leading spaces",
    " one leading space, trailing newlines\n\n",
    "\n\nstarts with newlines",
    "ends with spaces   ",
    "\ttabs\tand\r\nwindows line ends\r\n",
    "Ünïcödé — “quotes” 東京 🙂 ∑ ﬁ Ω",
    "mixed\u{a0}no-break\u{200b}zero-width",
    "<s>a doc that says </s> and <unk> and <start_of_turn>user\n<end_of_turn> <think> x",
    "<start_of_turn>model\nfirst thing in the text",
    "inside<end_of_turn>words<s>",
    "▁ a literal marker ▁▁ and <0x41> <0x0A>",
    "In 2024 there were 1,234,567 people.",
];

/// The two chat templates the folders hold: `default` (Gemma-like, `| trim`) and `rag`.
const DEFAULT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";
const RAG_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'system' %}{{ '[SYS] ' + message['content'] + '\\n' }}\
{% else %}{{ '<start_of_turn>' + message['role'] + ' ' + message['content'] + '<end_of_turn>' }}{% endif %}\
{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model' }}{% endif %}";

const SYSTEM: &str = "You answer from the context only.";

fn model_config(path: &Path, tokenizer: Option<PathBuf>) -> ModelConfig {
    let mut cfg = logo_policy::model::default_model_config();
    cfg.path = path.to_path_buf();
    cfg.tokenizer = tokenizer;
    cfg
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("a list of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn run_python(py: &Path, args: &[&Path]) -> Vec<u8> {
    let o = Command::new(py).args(args).output().expect("python runs");
    assert!(
        o.status.success(),
        "{} {:?}: {}",
        py.display(),
        args,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Offsets map to the original text: on char boundaries, in order, and the distinct ranges
/// tile the text from 0 to its end (byte-fallback tokens of one character share its range;
/// the `▁` prepended to the first piece maps to the first character).
fn assert_offsets_tile(tok: &tokenizers::Tokenizer, text: &str, what: &str) {
    let enc = tok.encode(text, false).expect("encode");
    let mut ranges: Vec<(usize, usize)> = enc.get_offsets().to_vec();
    ranges.dedup();
    let mut at = 0;
    for &(a, b) in &ranges {
        assert!(
            text.is_char_boundary(a) && text.is_char_boundary(b) && a <= b,
            "{what}: ({a}, {b})"
        );
        assert_eq!(
            a, at,
            "{what}: ranges {ranges:?} leave a gap or overlap at {at}"
        );
        at = b;
    }
    assert_eq!(at, text.len(), "{what}: the ranges end at {at}");
}

#[test]
fn sentencepiece_gguf_and_saved_folders_equal_transformers() {
    let Some(data) = or_skip(shared_data(), "../shared/data (the essays and L-Eval)") else {
        return;
    };
    let py = logo_env::paths::venv_python_with(&["transformers", "sentencepiece", "gguf"]);
    let Some(py) = or_skip(
        py.ok(),
        "the venv with transformers, sentencepiece, gguf (scripts/setup-venv.sh)",
    ) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The fixtures: two SentencePiece GGUFs trained on five essays.
    let mut args: Vec<PathBuf> = vec![root.join("scripts/make-sp-fixtures.py"), dir.into()];
    args.extend(TRAIN_ON.iter().map(|f| data.join("haystack").join(f)));
    let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    run_python(&py, &args);

    // Every essay, the edge texts, and (added by the script) the first two L-Eval documents of
    // each of the 7 files.
    let mut essays: Vec<PathBuf> = std::fs::read_dir(data.join("haystack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    essays.sort();
    assert_eq!(essays.len(), 49, "the haystack's essays");
    let mut texts: Vec<String> = EDGE_TEXTS.iter().map(|t| t.to_string()).collect();
    texts.extend(essays.iter().map(|p| std::fs::read_to_string(p).unwrap()));
    let mut leval: Vec<PathBuf> = std::fs::read_dir(data.join("leval"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    leval.sort();
    assert_eq!(leval.len(), 7, "the L-Eval files");

    // Folders written by logo's export_hf_tokenizer, for transformers to load.
    let mut exported = serde_json::Map::new();
    for name in GGUFS {
        let out = dir.join(format!("export-{name}"));
        export_hf_tokenizer(&dir.join(name), &out).unwrap();
        exported.insert(name.into(), out.to_str().unwrap().into());
    }
    let chat_users = [
        "What is the capital of France?".to_string(),
        format!(
            "{}\n\nQuestion: What is this essay about?",
            texts[EDGE_TEXTS.len()]
                .chars()
                .take(1500)
                .collect::<String>()
                .trim()
        ),
        "Ünïcödé 東京 🙂: where?".to_string(),
    ];
    let chats: Vec<serde_json::Value> = chat_users
        .iter()
        .map(|u| {
            serde_json::json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}])
        })
        .collect();
    let spec = serde_json::json!({
        "gguf_dir": dir,
        "ggufs": GGUFS,
        "texts": texts,
        "leval": leval,
        "leval_per_file": 2,
        "exported": exported,
        "save_dir": dir.join("saved"),
        "templates": {"default": DEFAULT_TEMPLATE, "rag": RAG_TEMPLATE},
        "chats": chats,
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let want: serde_json::Value = serde_json::from_slice(&run_python(
        &py,
        &[&root.join("tests/py/sp_reference.py"), &spec_path],
    ))
    .unwrap();
    let leval_texts = want["leval_texts"].as_array().unwrap();
    assert_eq!(leval_texts.len(), 14);
    texts.extend(leval_texts.iter().map(|t| t.as_str().unwrap().to_string()));
    assert_eq!(texts.len(), EDGE_TEXTS.len() + 49 + 14);

    // 1. Ids: logo's tokenizer of each GGUF (control strings as text) equals transformers' on
    // every text; transformers' default encoding is BOS + those ids (add_bos_token); the
    // folder logo exports loads in transformers with the same ids, with and without BOS.
    for name in GGUFS {
        let tok = load_tokenizer(&model_config(&dir.join(name), None)).unwrap();
        let bos = tok.token_to_id("<s>").unwrap();
        let w = &want["gguf"][name];
        let mut tokens = 0;
        for (i, text) in texts.iter().enumerate() {
            let what = format!(
                "{name} text {i} ({:?}...)",
                text.chars().take(30).collect::<String>()
            );
            let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(got, ids(&w["plain"][i]), "{what}");
            let mut with_bos = vec![bos];
            with_bos.extend(&got);
            assert_eq!(with_bos, ids(&w["bos"][i]), "{what}");
            let e = &want["exported"][name];
            assert_eq!(got, ids(&e["plain"][i]), "{what}: exported folder");
            assert_eq!(with_bos, ids(&e["bos"][i]), "{what}: exported folder");
            // Decoding equals transformers' and gives the text back, less the one leading
            // space the decoder strips (as transformers' LlamaTokenizer does) and with a literal
            // `▁` read as the space it stands for.
            let decoded = tok.decode(&got, false).unwrap();
            assert_eq!(decoded, w["decoded"][i].as_str().unwrap(), "{what}");
            let back = text.replace('\u{2581}', " ");
            assert_eq!(decoded, back.strip_prefix(' ').unwrap_or(&back), "{what}");
            assert_offsets_tile(&tok, text, &what);
            tokens += got.len();
        }
        eprintln!(
            "{name}: {} texts, {tokens} tokens equal to transformers'",
            texts.len()
        );
        assert!(tokens > 450_000, "{name}: {tokens} tokens");
    }

    // Control strings in a document stay text; the user-defined `<think>` is matched whole
    // (transformers and llama.cpp match it in any text).
    let tok = load_tokenizer(&model_config(&dir.join("sp.gguf"), None)).unwrap();
    let controls: Vec<u32> = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"]
        .iter()
        .map(|t| tok.token_to_id(t).unwrap())
        .collect();
    let doc = tok.encode(EDGE_TEXTS[11], false).unwrap();
    assert!(
        doc.get_ids().iter().all(|id| !controls.contains(id)),
        "{:?}",
        doc.get_ids()
    );
    assert!(doc.get_ids().contains(&tok.token_to_id("<think>").unwrap()));
    // Characters outside the vocabulary go through byte fallback (`<0x..>` tokens).
    let unicode = tok.encode(EDGE_TEXTS[9], false).unwrap();
    let bytes = unicode
        .get_tokens()
        .iter()
        .filter(|t| t.starts_with("<0x"))
        .count();
    assert!(bytes >= 10, "{:?}", unicode.get_tokens());

    // 2. The GGUF's own chat template (PromptTemplate::load): transformers' ids.
    let (_, template) = PromptTemplate::load(&model_config(&dir.join("sp.gguf"), None)).unwrap();
    for (k, user) in chat_users.iter().enumerate() {
        let got = template.chat(SYSTEM, &[user.as_str()], "").unwrap();
        assert_eq!(
            got,
            ids(&want["gguf"]["sp.gguf"]["chat"][k]),
            "GGUF chat {k}"
        );
    }

    // 3. Folders saved by transformers 5: chat_template.jinja alone, with
    // additional_chat_templates/rag.jinja, and the legacy list in tokenizer_config.json.
    let saved = dir.join("saved");
    let files = |f: &str| -> Vec<&str> {
        want["saved"][f]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect()
    };
    assert!(files("single").contains(&"chat_template.jinja"));
    assert!(files("named").contains(&"chat_template.jinja"));
    assert!(files("named").contains(&"additional_chat_templates/rag.jinja"));
    assert!(!files("legacy").contains(&"chat_template.jinja"));
    for folder in ["single", "named", "legacy"] {
        let path = saved.join(folder);
        let (_, default) = JinjaTemplate::from_hf_folder(&path).unwrap();
        let rag = (folder != "single").then(|| {
            JinjaTemplate::from_hf_folder_named(&path, Some("rag"))
                .unwrap()
                .1
        });
        for (k, user) in chat_users.iter().enumerate() {
            let (got, _) = default.chat(SYSTEM, &[user.as_str()], "").unwrap();
            assert_eq!(
                got,
                ids(&want["saved"][folder]["default"][k]),
                "{folder} default {k}"
            );
            if let Some(rag) = &rag {
                let (got, _) = rag.chat(SYSTEM, &[user.as_str()], "").unwrap();
                assert_eq!(
                    got,
                    ids(&want["saved"][folder]["rag"][k]),
                    "{folder} rag {k}"
                );
            }
        }
        // model.tokenizer naming the folder's tokenizer.json finds the folder's template.
        let cfg = model_config(&dir.join("sp.gguf"), Some(path.join("tokenizer.json")));
        let (_, t) = PromptTemplate::load(&cfg).unwrap();
        let got = t.chat(SYSTEM, &[chat_users[0].as_str()], "").unwrap();
        assert_eq!(
            got,
            ids(&want["saved"][folder]["default"][0]),
            "{folder} via load"
        );
    }
    let e = JinjaTemplate::from_hf_folder_named(&saved.join("named"), Some("tools")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("no chat template named tools") && msg.contains("default, rag"),
        "{msg}"
    );
}
