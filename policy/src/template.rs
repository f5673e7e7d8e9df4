//! Any model's chat template, rendered as transformers' `apply_chat_template(tokenize=True)`
//! does, with document text that can never become a control token.
//!
//! Sources: the Hugging Face chat-template format (a Jinja template in
//! `tokenizer_config.json` `chat_template`, rendered with `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token` and the other special-token strings, `trim_blocks` and
//! `lstrip_blocks` on, then tokenised with `add_special_tokens=False`, so BOS comes only
//! from the template text); GGUF `tokenizer.chat_template` (ggml `docs/gguf.md`). The
//! template runs on `minijinja` (the Jinja engine of Hugging Face's text-generation router and
//! mistral.rs) with its Python-compatibility methods (`.strip()`, `.startswith()`, ...) and
//! `raise_exception`.
//!
//! Document text: the messages are rendered with their real text (so the template's filters,
//! such as Llama 3's `| trim`, see it), and the rendered string is tokenised once with control
//! tokens parsed, which gives transformers' ids; each part of the user message (a context
//! chunk, the question) is found again in the ids from the tokenizer's offsets. When a control
//! token of that encoding falls inside the user message (a document that says `<|im_end|>`,
//! `<|eot_id|>`, `[INST]` or `<s>`), the template text is tokenised with control tokens parsed
//! and the message as plain text: a control string inside a document is never a control token.

use std::collections::HashSet;
use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::read_gguf;
use crate::prompt::ResponsePrompt;
use crate::tokenizer::{encode_text, load_tokenizer, tok_err, ChatTemplate};

/// Start and end of a placeholder (Unicode private-use characters no tokenizer normalises).
const MARK_OPEN: char = '\u{F8F0}';
const MARK_CLOSE: char = '\u{F8F1}';

mod folder;
mod message;

use message::locate_message;

/// A Jinja chat template with the tokenizer it renders for.
pub struct JinjaTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The tokenizer with control tokens parsed (for template text).
    parsing: Tokenizer,
    /// The tokenizer with control tokens as text (for document text).
    plain: Tokenizer,
    specials: HashSet<u32>,
    end_of_turn: u32,
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("end_of_turn", &self.end_of_turn)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

/// A special-token field of `tokenizer_config.json` / `special_tokens_map.json`: a string or
/// `{"content": ...}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(format!("{}: {e}", path.display())))
}

impl JinjaTemplate {
    /// Loads a Hugging Face tokenizer folder as transformers 5 saves and reads it:
    /// `tokenizer.json`; the chat template from `chat_template.jinja` (the template named
    /// `default`) and `additional_chat_templates/<name>.jinja` (named templates), which when
    /// present replace `tokenizer_config.json`'s `chat_template` (a string, or a list of
    /// `{name, template}`); of several templates the one named `default` is taken, as
    /// `apply_chat_template` takes it (see [`JinjaTemplate::from_hf_folder_named`]);
    /// `tokenizer_config.json` `bos_token`, `eos_token`, `special_tokens_map.json` (BOS/EOS
    /// when the config lacks them) and `generation_config.json` (`eos_token_id`, an id or a
    /// list: the stop ids). Returns the tokenizer (control tokens encoded as text, as
    /// [`crate::tokenizer::load_tokenizer`] returns it) and the template.
    ///
    /// Errors: [`PolicyError::Io`], [`PolicyError::Tokenizer`] naming the file (unreadable
    /// JSON, no chat template in any of the three places, several templates and none named
    /// `default`, a template that does not parse or render).
    pub fn from_hf_folder(dir: &Path) -> Result<(Tokenizer, JinjaTemplate)> {
        Self::from_hf_folder_named(dir, None)
    }

    /// [`JinjaTemplate::from_hf_folder`] with the template named `name` (a
    /// `additional_chat_templates/<name>.jinja` file or a `{name, template}` entry, as
    /// transformers' `apply_chat_template(chat_template=name)` picks it; `default` is
    /// `chat_template.jinja` or the only template); `None`: `default`.
    ///
    /// Errors: as [`JinjaTemplate::from_hf_folder`]; no template named `name` (listing the
    /// names there are).
    pub fn from_hf_folder_named(
        dir: &Path,
        name: Option<&str>,
    ) -> Result<(Tokenizer, JinjaTemplate)> {
        let tok_path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tok_path)
            .map_err(|e| tok_err(format!("{}: {e}", tok_path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or_default();
        let source = folder::chat_template_source(dir, &cfg, name)?;
        let map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let special = |key: &str| {
            cfg.get(key)
                .and_then(token_string)
                .or_else(|| map.get(key).and_then(token_string))
        };
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or_default();
        let eos_ids: Vec<u32> = match gen.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| v as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        let template = JinjaTemplate::new(
            &tok,
            source,
            special("bos_token"),
            special("eos_token"),
            eos_ids,
        )
        .map_err(|e| tok_err(format!("{}: {e}", cfg_path.display())))?;
        let mut plain = tok;
        plain.set_encode_special_tokens(true);
        Ok((plain, template))
    }

    /// A template over `tok` from its Jinja `source` (e.g. GGUF `tokenizer.chat_template`),
    /// with the BOS/EOS strings (empty when `None`) and extra stop ids (e.g.
    /// `generation_config.json` `eos_token_id`). The end of turn is found by rendering a
    /// one-word assistant turn: the first control token after it (`<|im_end|>`, `<|eot_id|>`,
    /// `</s>`); else the EOS token. Stop ids: the end of turn, the EOS token, `extra_stops`.
    ///
    /// Errors: [`PolicyError::Tokenizer`] (the template does not parse, or renders no end of
    /// turn and there is no EOS token).
    pub fn new(
        tok: &Tokenizer,
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
        extra_stops: Vec<u32>,
    ) -> Result<JinjaTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| tok_err(format!("chat_template: {e}")))?;
        let mut parsing = tok.clone();
        parsing.set_encode_special_tokens(false);
        let mut plain = tok.clone();
        plain.set_encode_special_tokens(true);
        let specials: HashSet<u32> = tok
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let mut t = JinjaTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            parsing,
            plain,
            specials,
            end_of_turn: 0,
            stop_ids: Vec::new(),
        };
        let eos_id = t.parsing.token_to_id(&t.eos_token);
        let end = t.find_end_of_turn()?.or(eos_id).ok_or_else(|| {
            tok_err("chat_template: no end-of-turn token after an assistant turn and no eos_token")
        })?;
        t.end_of_turn = end;
        let mut stops = vec![end];
        stops.extend(eos_id);
        stops.extend(extra_stops);
        let mut seen = HashSet::new();
        stops.retain(|id| seen.insert(*id));
        t.stop_ids = stops;
        Ok(t)
    }

    /// The control token right after an assistant turn's content, if any.
    fn find_end_of_turn(&self) -> Result<Option<u32>> {
        let word = "LOGOENDOFTURNPROBE";
        let messages = vec![
            serde_json::json!({"role": "user", "content": "Hi"}),
            serde_json::json!({"role": "assistant", "content": word}),
        ];
        let Ok(text) = self.render(&messages, false) else {
            return Ok(None);
        };
        let Some(at) = text.find(word) else {
            return Ok(None);
        };
        let rest = &text[at + word.len()..];
        let enc = self.parsing.encode(rest, false).map_err(tok_err)?;
        Ok(enc
            .get_ids()
            .iter()
            .copied()
            .find(|id| self.specials.contains(id)))
    }

    /// Renders `messages` (`[{role, content}]`) to text. Errors: [`PolicyError::Tokenizer`]
    /// (a render error, e.g. the template's `raise_exception`).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| tok_err(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| tok_err(format!("chat_template: {e}")))
    }

    /// The end-of-turn id that closes every response the model must learn (Llama-3
    /// `<|eot_id|>`, Mistral `</s>`, ChatML `<|im_end|>`).
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// The ids that end a generation, end of turn first.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// A single-turn chat, ids `[T]`, exactly as transformers' `apply_chat_template(messages,
    /// add_generation_prompt=True, tokenize=True)` gives them: a system message (left out when
    /// `system` is empty, and folded into the user message as `"{system}\n\n{user}"` when the
    /// template refuses a system role, as Mistral's does), one user message whose content is
    /// `parts` concatenated, the generation prompt, then `assistant_prefix` encoded as text.
    ///
    /// The messages are rendered with their real text, so the template's content filters
    /// (`| trim`, Llama 3) apply, and the rendered string is tokenised once with control tokens
    /// parsed. A control token may come only from the template's own text: when one would
    /// come from inside the user message (a document quoting `<|im_end|>` or `[INST]`), the
    /// template text before and after the message is tokenised with control tokens parsed and
    /// the message as plain text.
    ///
    /// Also returns `bounds` `[parts.len() + 1]`: the index of the first token of each part,
    /// then the index just past the message's last token. A token belongs to the part in
    /// which it starts (its first byte): a token that straddles two parts (`"▁have"` over
    /// `"▁hav" | "e"`) counts for the first, and a part whose text the template trims away is
    /// empty.
    ///
    /// Errors: [`PolicyError::Tokenizer`] (render or tokenizer failure; a template that drops
    /// or repeats the user message, or changes its text other than by trimming whitespace).
    pub fn chat(
        &self,
        system: &str,
        parts: &[&str],
        assistant_prefix: &str,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let user: String = parts.concat();
        let placeholder = format!("{MARK_OPEN}0{MARK_CLOSE}");
        let messages = |sys: bool, content: &str| {
            let mut m = Vec::new();
            if sys {
                m.push(serde_json::json!({"role": "system", "content": system}));
            }
            let content = if sys || system.is_empty() {
                content.to_string()
            } else {
                format!("{system}\n\n{content}")
            };
            m.push(serde_json::json!({"role": "user", "content": content}));
            m
        };
        let with_system = !system.is_empty();
        let (sys, shape) = match self.render(&messages(with_system, &placeholder), true) {
            Ok(t) => (with_system, t),
            Err(_) if with_system => (false, self.render(&messages(false, &placeholder), true)?),
            Err(e) => return Err(e),
        };
        let real = self.render(&messages(sys, &user), true)?;
        let span = locate_message(&shape, &real, &user)?;
        let (ids, offsets) = self.encode_with_offsets(&real, span.rendered.clone())?;
        // Byte bounds of the parts in `real`, clipped to what the template kept.
        let mut cut = 0;
        let mut byte_bounds = Vec::with_capacity(parts.len() + 1);
        for part in parts.iter().map(|p| p.len()).chain(std::iter::once(0)) {
            let kept = cut.clamp(span.kept.start, span.kept.end) - span.kept.start;
            byte_bounds.push(span.rendered.start + kept);
            cut += part;
        }
        let mut bounds = Vec::with_capacity(byte_bounds.len());
        let mut t = 0;
        for &b in &byte_bounds {
            while t < ids.len() && offsets[t] < b {
                t += 1;
            }
            bounds.push(t);
        }
        let mut ids = ids;
        ids.extend(encode_text(&self.plain, assistant_prefix)?);
        Ok((ids, bounds))
    }

    /// Tokenises `text` (a rendered chat whose user message is at bytes `message`) and returns
    /// the ids and each token's start byte: in one pass with control tokens parsed when no
    /// control token starts or ends inside the message, else template text parsed and the
    /// message as plain text.
    fn encode_with_offsets(
        &self,
        text: &str,
        message: std::ops::Range<usize>,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let enc = self.parsing.encode(text, false).map_err(tok_err)?;
        let clash = enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .any(|(id, &(a, b))| {
                self.specials.contains(id) && a < message.end && message.start < b
            });
        if !clash {
            let starts = enc.get_offsets().iter().map(|o| o.0).collect();
            return Ok((enc.get_ids().to_vec(), starts));
        }
        let mut ids = Vec::new();
        let mut starts = Vec::new();
        let pieces = [
            (0..message.start, &self.parsing),
            (message.clone(), &self.plain),
            (message.end..text.len(), &self.parsing),
        ];
        for (range, tok) in pieces {
            if range.is_empty() {
                continue;
            }
            let e = tok.encode(&text[range.clone()], false).map_err(tok_err)?;
            ids.extend_from_slice(e.get_ids());
            starts.extend(e.get_offsets().iter().map(|o| range.start + o.0));
        }
        Ok((ids, starts))
    }

    /// The LOGO prompt `{Q, C}` (paper 3.2.2) in this template: `prompt.system` as the system
    /// message and `prompt.user` as the user message, its `{context}` the context chunks'
    /// text concatenated and its `{question}` the question ([`ResponsePrompt`]); the prompt is
    /// [`JinjaTemplate::chat`] of them, so the ids are transformers' for the same messages.
    ///
    /// Returns `(input_ids [T], segments [chunks + 2])`: the lengths in tokens of the prefix
    /// (everything before the first chunk), each chunk (its tokens by the rule of
    /// [`JinjaTemplate::chat`]: a token belongs to the chunk it starts in, so a chunk's
    /// length may differ from its tokenisation alone, and is 0 when trimmed away), and the
    /// suffix (the rest of the user message through the generation prompt); they sum to `T`.
    /// Errors: as [`JinjaTemplate::chat`].
    pub fn prompt(
        &self,
        prompt: &ResponsePrompt,
        context_chunks: &[&str],
        question: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let (before, after) = prompt.around_context(question);
        let mut parts: Vec<&str> = Vec::with_capacity(context_chunks.len() + 2);
        parts.push(&before);
        parts.extend_from_slice(context_chunks);
        parts.push(&after);
        let (ids, bounds) = self.chat(&prompt.system, &parts, "")?;
        let n = context_chunks.len();
        let mut segments = Vec::with_capacity(n + 2);
        segments.push(bounds[1] as u32);
        for w in bounds[1..n + 2].windows(2) {
            segments.push((w[1] - w[0]) as u32);
        }
        segments.push((ids.len() - bounds[n + 1]) as u32);
        Ok((ids, segments))
    }
}

/// ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
/// `<|im_start|>assistant\n`), for a GGUF that has the ChatML tokens but no
/// `tokenizer.chat_template`. Source: the ChatML format as SmolLM2-Instruct's and Qwen2's
/// templates write it.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
+ message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}\
{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Control tokens that end a generation wherever the vocabulary has them, as llama.cpp's
/// server treats them (end-of-generation tokens by name, `llama-vocab.cpp`).
const END_OF_GENERATION: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|eom_id|>",
];

/// The chat template of the policy: any model's Jinja template ([`JinjaTemplate`], from a
/// Hugging Face folder or a GGUF's `tokenizer.chat_template`, or ChatML for a GGUF with the
/// ChatML tokens and no template). Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PromptTemplate(std::sync::Arc<JinjaTemplate>);

impl PromptTemplate {
    /// Wraps a Jinja template.
    pub fn new(template: JinjaTemplate) -> Self {
        PromptTemplate(std::sync::Arc::new(template))
    }

    /// ChatML over `tok` (which must have `<|im_start|>`, `<|im_end|>`), stopping on
    /// `<|im_end|>` and `<|endoftext|>`. Errors: [`PolicyError::Tokenizer`] (a token missing).
    pub fn chatml(tok: &Tokenizer) -> Result<Self> {
        ChatTemplate::from_tokenizer(tok)?;
        let stops = END_OF_GENERATION
            .iter()
            .filter_map(|t| tok.token_to_id(t))
            .collect();
        Ok(Self::new(JinjaTemplate::new(
            tok,
            CHATML.into(),
            None,
            Some("<|im_end|>".into()),
            stops,
        )?))
    }

    /// The Jinja template.
    pub fn jinja(&self) -> &JinjaTemplate {
        &self.0
    }

    /// The tokenizer and template of `cfg`: with `model.tokenizer` (or, when it is unset,
    /// `model.path`) naming a Hugging Face folder (or a `tokenizer.json` in a folder with a chat
    /// template: `chat_template.jinja`, `additional_chat_templates/*.jinja` or
    /// `tokenizer_config.json` `chat_template`), that folder's, its `default` template
    /// ([`JinjaTemplate::from_hf_folder`]); else the tokenizer of [`load_tokenizer`] with the
    /// GGUF's `tokenizer.chat_template` (stop ids: its end of turn, `tokenizer.ggml.eos_token_id`
    /// and the end-of-generation control tokens llama.cpp stops on), else ChatML
    /// ([`PromptTemplate::chatml`]) when the vocabulary has the ChatML tokens.
    ///
    /// Errors: [`PolicyError::Io`], [`PolicyError::Model`], [`PolicyError::Tokenizer`]
    /// (no usable template).
    pub fn load(cfg: &ModelConfig) -> Result<(Tokenizer, PromptTemplate)> {
        let source = cfg
            .tokenizer
            .as_ref()
            .or_else(|| cfg.path.is_dir().then_some(&cfg.path));
        if let Some(path) = source {
            let dir = if path.is_dir() {
                Some(path.clone())
            } else {
                path.parent()
                    .filter(|d| folder::has_chat_template(d))
                    .map(Path::to_path_buf)
            };
            if let Some(dir) = dir {
                let (tok, t) = JinjaTemplate::from_hf_folder(&dir)?;
                return Ok((tok, PromptTemplate::new(t)));
            }
        }
        let tok = load_tokenizer(cfg)?;
        let (content, _) = read_gguf(&cfg.path)?;
        let md = &content.metadata;
        let Some(source) = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
        else {
            return match PromptTemplate::chatml(&tok) {
                Ok(t) => Ok((tok, t)),
                Err(_) => Err(tok_err(format!(
                    "{}: no ChatML tokens and no tokenizer.chat_template; give model.tokenizer \
                     (a Hugging Face folder with a chat_template)",
                    cfg.path.display()
                ))),
            };
        };
        let token = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tok.id_to_token(id))
        };
        let stops = END_OF_GENERATION
            .iter()
            .filter_map(|t| tok.token_to_id(t))
            .collect();
        let t = JinjaTemplate::new(
            &tok,
            source,
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
            stops,
        )?;
        Ok((tok, PromptTemplate::new(t)))
    }

    /// The end-of-turn id closing every response the model ended itself.
    pub fn end_of_turn(&self) -> u32 {
        self.0.end_of_turn()
    }

    /// The ids that end a generation, end of turn first.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.0.stop_ids().to_vec()
    }

    /// A single-turn chat whose user message is `parts` concatenated, ids `[T]` (see
    /// [`JinjaTemplate::chat`]). Errors: [`PolicyError::Tokenizer`].
    pub fn chat(&self, system: &str, parts: &[&str], assistant_prefix: &str) -> Result<Vec<u32>> {
        Ok(self.0.chat(system, parts, assistant_prefix)?.0)
    }

    /// The LOGO prompt `{Q, C}` over the context chunks' text in `prompt`'s messages:
    /// `(input_ids [T], segments [chunks + 2])` (see [`JinjaTemplate::prompt`]).
    /// Errors: [`PolicyError::Tokenizer`].
    pub fn prompt(
        &self,
        prompt: &ResponsePrompt,
        context_chunks: &[&str],
        question: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        self.0.prompt(prompt, context_chunks, question)
    }
}
