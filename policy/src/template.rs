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
//! Document text: every user part ([`UserPart`]) enters the template as a placeholder; after
//! rendering, the text is put back and the whole string is tokenised once with control tokens
//! parsed, which gives transformers' ids. When a control token of that encoding falls inside
//! document text (a document that says `<|im_end|>`, `<|eot_id|>`, `[INST]` or `<s>`), the
//! string is instead tokenised piece by piece: template text with control tokens parsed,
//! document text as plain text. Token-id parts (pre-tokenised chunks) are spliced verbatim.

use std::collections::HashSet;
use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::read_gguf;
use crate::tokenizer::{encode_text, load_tokenizer, tok_err, ChatTemplate, UserPart};

/// Start and end of a placeholder (Unicode private-use characters no tokenizer normalises).
const MARK_OPEN: char = '\u{F8F0}';
const MARK_CLOSE: char = '\u{F8F1}';

mod folder;

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

    /// A single-turn chat, ids `[T]`: a system message (left out when `system` is empty, and
    /// folded into the user message as `"{system}\n\n{user}"` when the template refuses a
    /// system role, as Mistral's does), one user message made of `parts`, the generation
    /// prompt, then `assistant_prefix` encoded as text. Also returns where each
    /// [`UserPart::Ids`] part starts in the ids, in order.
    ///
    /// Errors: [`PolicyError::Tokenizer`] (render or tokenizer failure, a template that drops
    /// or repeats the user message).
    pub fn chat(
        &self,
        system: &str,
        parts: &[UserPart<'_>],
        assistant_prefix: &str,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let user: String = (0..parts.len())
            .map(|k| format!("{MARK_OPEN}{k}{MARK_CLOSE}"))
            .collect();
        let messages = |sys: bool| {
            let mut m = Vec::new();
            if sys {
                m.push(serde_json::json!({"role": "system", "content": system}));
            }
            let content = if sys || system.is_empty() {
                user.clone()
            } else {
                format!("{system}\n\n{user}")
            };
            m.push(serde_json::json!({"role": "user", "content": content}));
            m
        };
        let text = match self.render(&messages(!system.is_empty()), true) {
            Ok(t) => t,
            Err(_) if !system.is_empty() => self.render(&messages(false), true)?,
            Err(e) => return Err(e),
        };
        self.encode_rendered(&text, parts, assistant_prefix)
    }

    /// Tokenises a rendered chat whose placeholders stand for `parts` (see the module doc);
    /// returns the ids and the start of each id part.
    fn encode_rendered(
        &self,
        text: &str,
        parts: &[UserPart<'_>],
        assistant_prefix: &str,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let mut ids = Vec::new();
        let mut starts = Vec::new();
        let mut buf = String::new();
        let mut docs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut rest = text;
        let mut used = vec![false; parts.len()];
        while let Some(open) = rest.find(MARK_OPEN) {
            buf.push_str(&rest[..open]);
            let after = &rest[open + MARK_OPEN.len_utf8()..];
            let close = after
                .find(MARK_CLOSE)
                .ok_or_else(|| tok_err("chat_template: a broken placeholder"))?;
            let k: usize = after[..close]
                .parse()
                .map_err(|_| tok_err("chat_template: a broken placeholder"))?;
            let part = parts
                .get(k)
                .ok_or_else(|| tok_err("chat_template: an unknown placeholder"))?;
            if std::mem::replace(&mut used[k], true) {
                return Err(tok_err(
                    "chat_template: the template repeats the user message; not supported",
                ));
            }
            match part {
                UserPart::Text(t) => {
                    let start = buf.len();
                    buf.push_str(t);
                    docs.push(start..buf.len());
                }
                UserPart::Ids(x) => {
                    self.flush(&mut buf, &mut docs, &mut ids)?;
                    starts.push(ids.len());
                    ids.extend_from_slice(x);
                }
            }
            rest = &after[close + MARK_CLOSE.len_utf8()..];
        }
        if used.iter().any(|u| !u) {
            return Err(tok_err(
                "chat_template: the template drops part of the user message",
            ));
        }
        buf.push_str(rest);
        self.flush(&mut buf, &mut docs, &mut ids)?;
        ids.extend(encode_text(&self.plain, assistant_prefix)?);
        Ok((ids, starts))
    }

    /// The LOGO prompt `{Q, C}` (paper 3.2.2) in this template: the user message holds the
    /// context chunks' ids then `"\n\nQuestion: {question}"` (as
    /// [`crate::tokenizer::ChatTemplate::prompt`] for ChatML). Returns `(input_ids [T],
    /// segments [chunks + 2])`: prefix, each chunk, suffix; they sum to `T`.
    /// Errors: as [`JinjaTemplate::chat`].
    pub fn prompt(
        &self,
        system: &str,
        context_chunks: &[&[u32]],
        question: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let suffix = format!("\n\nQuestion: {question}");
        let mut parts: Vec<UserPart<'_>> =
            context_chunks.iter().map(|c| UserPart::Ids(c)).collect();
        parts.push(UserPart::Text(&suffix));
        let (ids, starts) = self.chat(system, &parts, "")?;
        let mut segments = Vec::with_capacity(context_chunks.len() + 2);
        let first = starts.first().copied().unwrap_or(0);
        segments.push(first as u32);
        let mut end = first;
        for (start, chunk) in starts.iter().zip(context_chunks) {
            if *start != end {
                return Err(tok_err("chat_template: text between context chunks"));
            }
            segments.push(chunk.len() as u32);
            end = start + chunk.len();
        }
        if context_chunks.is_empty() {
            // No chunk: the whole prompt is the suffix, `[0, T]`.
            segments[0] = 0;
        }
        segments.push((ids.len() - end) as u32);
        Ok((ids, segments))
    }

    /// Tokenises `buf` (template text with document text at `docs`) onto `ids` and empties
    /// both: in one pass with control tokens parsed when none lands in document text, else
    /// piece by piece.
    fn flush(
        &self,
        buf: &mut String,
        docs: &mut Vec<std::ops::Range<usize>>,
        ids: &mut Vec<u32>,
    ) -> Result<()> {
        if buf.is_empty() {
            docs.clear();
            return Ok(());
        }
        let enc = self.parsing.encode(buf.as_str(), false).map_err(tok_err)?;
        let clash = enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .any(|(id, &(a, b))| {
                self.specials.contains(id) && docs.iter().any(|d| a < d.end && d.start < b)
            });
        if !clash {
            ids.extend_from_slice(enc.get_ids());
        } else {
            let mut at = 0;
            for d in docs.iter() {
                let template_text = &buf[at..d.start];
                if !template_text.is_empty() {
                    let e = self.parsing.encode(template_text, false).map_err(tok_err)?;
                    ids.extend_from_slice(e.get_ids());
                }
                ids.extend(encode_text(&self.plain, &buf[d.clone()])?);
                at = d.end;
            }
            if at < buf.len() {
                let e = self.parsing.encode(&buf[at..], false).map_err(tok_err)?;
                ids.extend_from_slice(e.get_ids());
            }
        }
        buf.clear();
        docs.clear();
        Ok(())
    }
}

/// The chat template of the policy: ChatML assembled by id ([`ChatTemplate`], the embedded
/// SmolLM2 and every GGUF with ChatML tokens), or any model's Jinja template
/// ([`JinjaTemplate`], from a Hugging Face folder or a GGUF's `tokenizer.chat_template`).
#[derive(Debug, Clone)]
pub enum PromptTemplate {
    /// ChatML by id.
    ChatMl(ChatTemplate),
    /// A Jinja chat template.
    Jinja(std::sync::Arc<JinjaTemplate>),
}

impl PromptTemplate {
    /// The tokenizer and template of `cfg`: with `model.tokenizer` (or, when it is unset,
    /// `model.path`) naming a Hugging Face folder (or a `tokenizer.json` in a folder with a chat
    /// template: `chat_template.jinja`, `additional_chat_templates/*.jinja` or
    /// `tokenizer_config.json` `chat_template`), that folder's, its `default` template
    /// ([`JinjaTemplate::from_hf_folder`]); else the
    /// tokenizer of [`load_tokenizer`] with ChatML by id when it has the ChatML tokens, else
    /// the GGUF's `tokenizer.chat_template`.
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
                return Ok((tok, PromptTemplate::Jinja(std::sync::Arc::new(t))));
            }
        }
        let tok = load_tokenizer(cfg)?;
        if let Ok(t) = ChatTemplate::from_tokenizer(&tok) {
            return Ok((tok, PromptTemplate::ChatMl(t)));
        }
        let (content, _) = read_gguf(&cfg.path)?;
        let md = &content.metadata;
        let source = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                tok_err(format!(
                    "{}: no ChatML tokens and no tokenizer.chat_template; give model.tokenizer \
                     (a Hugging Face folder with a chat_template)",
                    cfg.path.display()
                ))
            })?;
        let token = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tok.id_to_token(id))
        };
        let t = JinjaTemplate::new(
            &tok,
            source,
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
            Vec::new(),
        )?;
        Ok((tok, PromptTemplate::Jinja(std::sync::Arc::new(t))))
    }

    /// The end-of-turn id closing every response the model ended itself.
    pub fn end_of_turn(&self) -> u32 {
        match self {
            PromptTemplate::ChatMl(t) => t.im_end,
            PromptTemplate::Jinja(t) => t.end_of_turn(),
        }
    }

    /// The ids that end a generation, end of turn first.
    pub fn stop_ids(&self) -> Vec<u32> {
        match self {
            PromptTemplate::ChatMl(t) => t.stop_ids(),
            PromptTemplate::Jinja(t) => t.stop_ids().to_vec(),
        }
    }

    /// A single-turn chat (see [`ChatTemplate::chat`], [`JinjaTemplate::chat`]), ids `[T]`.
    /// Errors: [`PolicyError::Tokenizer`].
    pub fn chat(
        &self,
        tok: &Tokenizer,
        system: &str,
        parts: &[UserPart<'_>],
        assistant_prefix: &str,
    ) -> Result<Vec<u32>> {
        match self {
            PromptTemplate::ChatMl(t) => t.chat(tok, system, parts, assistant_prefix),
            PromptTemplate::Jinja(t) => Ok(t.chat(system, parts, assistant_prefix)?.0),
        }
    }

    /// The LOGO prompt `{Q, C}`: `(input_ids [T], segments [chunks + 2])` (see
    /// [`ChatTemplate::prompt`], [`JinjaTemplate::prompt`]). Errors: [`PolicyError::Tokenizer`].
    pub fn prompt(
        &self,
        tok: &Tokenizer,
        system: &str,
        context_chunks: &[&[u32]],
        question: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        match self {
            PromptTemplate::ChatMl(t) => t.prompt(tok, system, context_chunks, question),
            PromptTemplate::Jinja(t) => t.prompt(system, context_chunks, question),
        }
    }
}
