//! The policy's tokenizer and chat template: the byte-level BPE rebuilt from a GGUF's
//! `tokenizer.ggml.*` metadata (or a Hugging Face `tokenizer.json`) and ChatML turns built by
//! id, so that control tokens can never come from document text.
//!
//! Sources: GGUF (github.com/ggml-org/ggml `docs/gguf.md`, tokenizer keys); SmolLM2's
//! `tokenizer.json` (GPT-2 byte-level BPE, digits split one by one) and `tokenizer_config.json`
//! (ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n`, generation prompt
//! `<|im_start|>assistant\n`).

use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;

use candle_core::quantized::gguf_file;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::ModelConfig;
use crate::error::{PolicyError, Result};
use crate::gguf::read_gguf;

mod sentencepiece;

/// The ChatML start-of-turn control token.
pub const IM_START: &str = "<|im_start|>";
/// The ChatML end-of-turn control token; ends every response the policy must learn.
pub const IM_END: &str = "<|im_end|>";
/// The end-of-text control token (SmolLM2 id 0).
pub const END_OF_TEXT: &str = "<|endoftext|>";

pub(crate) fn tok_err(what: impl std::fmt::Display) -> PolicyError {
    PolicyError::Tokenizer(what.to_string())
}

/// Loads the tokenizer of the model: `cfg.tokenizer` (a Hugging Face `tokenizer.json`, or the
/// one inside a folder) when given, else the `tokenizer.json` of a Hugging Face model folder
/// at `cfg.path`, else rebuilt from the GGUF metadata at `cfg.path`:
/// - `tokenizer.ggml.model = gpt2`: byte-level BPE from `tokenizer.ggml.tokens` +
///   `tokenizer.ggml.merges`, pre-tokenizer `Sequence[Digits(individual_digits),
///   ByteLevel(add_prefix_space = false, use_regex)]`, ByteLevel decoder, control tokens
///   (`token_type` 3) added as special tokens;
/// - `tokenizer.ggml.model = llama` (SentencePiece: Llama 2, Mistral, ...): the tokenizer
///   transformers 5 builds from the same GGUF (`AutoTokenizer.from_pretrained(dir,
///   gguf_file=...)`): BPE with byte fallback (`<0x..>` tokens), merges from
///   `tokenizer.ggml.merges` or recovered from `tokenizer.ggml.scores`, `Metaspace` (a `▁` before
///   the text's first piece, whatever `add_space_prefix` says, as transformers does), control
///   tokens (type 3) and the BOS/EOS/UNK/PAD tokens as special tokens, user-defined tokens
///   (type 4) as plain added tokens. Not for `general.architecture` gemma*/phi3, which
///   transformers builds its own way.
///
/// The returned tokenizer has `encode_special_tokens(true)`: text such as `"<|im_end|>"` inside
/// a document is encoded as plain text and can never inject a control token; control tokens
/// are only ever inserted by id ([`ChatTemplate`]) or from a chat template's own text. A
/// SentencePiece user-defined token (e.g. `<think>`) is not a control token and is matched in
/// any text, as transformers and llama.cpp match it. No post-processor: `encode(_, true)` adds
/// nothing (a GGUF's `add_bos_token` is left to the chat template's `bos_token`). Offsets of
/// an [`tokenizers::Encoding`] are byte offsets into the original text.
///
/// Errors: [`PolicyError::Io`] (unreadable GGUF), [`PolicyError::Model`] (not a GGUF),
/// [`PolicyError::Tokenizer`] (bad `tokenizer.json`, missing or unsupported `tokenizer.ggml.*`,
/// naming the key and `model.tokenizer` as the alternative).
pub fn load_tokenizer(cfg: &ModelConfig) -> Result<Tokenizer> {
    let folder = |dir: &Path| dir.join("tokenizer.json");
    let file = match &cfg.tokenizer {
        Some(path) if path.is_dir() => Some(folder(path)),
        Some(path) => Some(path.clone()),
        None if cfg.path.is_dir() => Some(folder(&cfg.path)),
        None => None,
    };
    let mut tokenizer = match file {
        Some(path) => {
            Tokenizer::from_file(&path).map_err(|e| tok_err(format!("{}: {e}", path.display())))?
        }
        None => {
            let (content, _) = read_gguf(&cfg.path)?;
            tokenizer_from_gguf(&content.metadata)
                .map_err(|e| tok_err(format!("{}: {e}", cfg.path.display())))?
        }
    };
    tokenizer.set_encode_special_tokens(true);
    Ok(tokenizer)
}

/// The strings of a GGUF array value `v` (key `key`, for errors).
fn gguf_strings(v: &gguf_file::Value, key: &str) -> std::result::Result<Vec<String>, String> {
    v.to_vec()
        .map_err(|e| format!("{key}: {e}"))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| format!("{key}: {e}")))
        .collect()
}

/// Builds the tokenizer described by the `tokenizer.ggml.*` keys of a GGUF (see
/// [`load_tokenizer`]): `tokenizer.ggml.model = gpt2` (byte-level BPE) or `llama`
/// (SentencePiece BPE, [`sentencepiece::sentencepiece_tokenizer`]).
/// Errors: a message naming the missing, malformed or unsupported key.
pub(crate) fn tokenizer_from_gguf(
    md: &HashMap<String, gguf_file::Value>,
) -> std::result::Result<Tokenizer, String> {
    let get = |k: &str| md.get(k).ok_or_else(|| format!("missing GGUF key {k}"));
    let kind = get("tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| e.to_string())?;
    if kind != "gpt2" && kind != "llama" {
        return Err(format!(
            "tokenizer.ggml.model: expected gpt2 (byte-level BPE) or llama (SentencePiece), \
             got {kind}; give model.tokenizer (a tokenizer.json or a Hugging Face folder) instead"
        ));
    }
    let tokens = gguf_strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| format!("tokenizer.ggml.token_type: {e}"))?
            .iter()
            .map(|t| {
                t.to_i32()
                    .map_err(|e| format!("tokenizer.ggml.token_type: {e}"))
            })
            .collect::<std::result::Result<_, _>>()?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type: expected {} entries, got {}",
            tokens.len(),
            types.len()
        ));
    }
    if kind == "llama" {
        return sentencepiece::sentencepiece_tokenizer(md, &tokens, &types);
    }
    let merges = gguf_strings(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("tokenizer.ggml.merges: expected \"a b\", got {m:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("building BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // token_type 3 = CONTROL (llama.cpp `llama_token_type`).
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Encodes `text` as plain text (no control token is recognised, no special token added).
/// Errors: [`PolicyError::Tokenizer`].
pub fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let enc = tok.encode(text, false).map_err(tok_err)?;
    Ok(enc.get_ids().to_vec())
}

/// One piece of a user message: text (tokenised, control tokens as text) or token ids taken
/// as they are (e.g. a document chunk from the chunker).
#[derive(Debug, Clone, Copy)]
pub enum UserPart<'a> {
    /// Text, tokenised with [`encode_text`].
    Text(&'a str),
    /// Token ids, copied verbatim.
    Ids(&'a [u32]),
}

/// The post-processor transformers' `TokenizersBackend.update_post_processor` builds:
/// `[bos:0] $A:0 [eos:0]` and `[bos:0] $A:0 [eos:0] [bos:1] $B:1 [eos:1]` with the given
/// `(token, id)`s. Errors: [`PolicyError::Tokenizer`] (a template `tokenizers` refuses).
fn bos_eos_processor(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<tokenizers::processors::template::TemplateProcessing> {
    let word = |t: &Option<(String, u32)>, seq: u32, pre: bool| match t {
        Some((s, _)) if pre => format!("{s}:{seq} "),
        Some((s, _)) => format!(" {s}:{seq}"),
        None => String::new(),
    };
    let single = format!("{}$A:0{}", word(&bos, 0, true), word(&eos, 0, false));
    let pair = format!(
        "{single} {}$B:1{}",
        word(&bos, 1, true),
        word(&eos, 1, false)
    );
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).collect();
    let mut b = tokenizers::processors::template::TemplateProcessing::builder();
    b.try_single(single).map_err(tok_err)?;
    b.try_pair(pair).map_err(tok_err)?;
    b.special_tokens(specials);
    b.build().map_err(tok_err)
}

/// Writes the GGUF's tokenizer as a Hugging Face tokenizer folder, so that a model exported
/// by `logo-trainer export-hf` from a GGUF base loads with `AutoTokenizer.from_pretrained`:
/// `tokenizer.json` (the byte-level or SentencePiece BPE of [`load_tokenizer`], control tokens
/// as special tokens; a post-processor adding BOS/EOS when `add_bos_token`/`add_eos_token`
/// below are true, since transformers takes them from there) and `tokenizer_config.json` (`PreTrainedTokenizerFast`;
/// `bos_token`/`eos_token`/`pad_token`/`unk_token` from
/// `tokenizer.ggml.{bos,eos,padding,unknown}_token_id`; `add_bos_token`/`add_eos_token` from
/// `tokenizer.ggml.add_{bos,eos}_token`, `add_bos_token` true for a SentencePiece GGUF that does
/// not say, as transformers' `get_gguf_tokenizer` does; `chat_template` from
/// `tokenizer.chat_template`; `model_max_length` from `llama.context_length`). Keys the GGUF
/// lacks are left out. transformers then gives the folder the ids it gives the GGUF
/// (`encode` with and without special tokens). Returns the files written.
///
/// Source: the GGUF tokenizer keys (ggml `docs/gguf.md`); transformers'
/// `PreTrainedTokenizerFast` reads `tokenizer.json` (the `tokenizers` serialisation) and adds
/// BOS/EOS by `add_bos_token`/`add_eos_token` (`TokenizersBackend.update_post_processor`).
/// Errors: [`PolicyError::Io`] (unreadable GGUF, unwritable folder), [`PolicyError::Model`]
/// (not a GGUF), [`PolicyError::Tokenizer`] (missing or unsupported `tokenizer.ggml.*`).
pub fn export_hf_tokenizer(
    gguf: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>> {
    let (content, _) = read_gguf(gguf)?;
    let md = &content.metadata;
    let mut tok =
        tokenizer_from_gguf(md).map_err(|e| tok_err(format!("{}: {e}", gguf.display())))?;
    let mut config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
    });
    let mut named = HashMap::new();
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
    ] {
        let id = md.get(key).and_then(|v| v.to_u32().ok());
        if let Some((id, token)) = id.and_then(|id| Some((id, tok.id_to_token(id)?))) {
            config[field] = token.clone().into();
            named.insert(field, (token, id));
        }
    }
    let sentencepiece = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .is_some_and(|m| m == "llama");
    let mut adds = Vec::new();
    for (key, field, token, default) in [
        (
            "tokenizer.ggml.add_bos_token",
            "add_bos_token",
            "bos_token",
            sentencepiece,
        ),
        (
            "tokenizer.ggml.add_eos_token",
            "add_eos_token",
            "eos_token",
            false,
        ),
    ] {
        let flag = md.get(key).and_then(|v| v.to_bool().ok());
        if let Some(flag) = flag.or(default.then_some(true)) {
            config[field] = flag.into();
        }
        let add = flag.unwrap_or(default);
        adds.push(if add { named.get(token).cloned() } else { None });
    }
    // transformers ignores `add_bos_token` of a folder that has a tokenizer.json and keeps its
    // post-processor: BOS/EOS go there, as `TokenizersBackend.update_post_processor` writes them.
    if let [bos, eos] = adds.as_slice() {
        if bos.is_some() || eos.is_some() {
            tok.with_post_processor(Some(bos_eos_processor(bos.clone(), eos.clone())?));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, true)
        .map_err(|e| tok_err(format!("{}: {e}", tok_path.display())))?;
    if let Some(t) = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        config["chat_template"] = t.clone().into();
    }
    if let Some(n) = md.get("llama.context_length").and_then(|v| v.to_u32().ok()) {
        config["model_max_length"] = n.into();
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&config).expect("JSON of a JSON value");
    std::fs::write(&cfg_path, text).map_err(|e| PolicyError::io(&cfg_path, e))?;
    Ok(vec![tok_path, cfg_path])
}

/// The ChatML template of SmolLM2-Instruct, assembled from token ids so that control tokens
/// come only from here:
///
/// ```text
/// <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
/// ```
///
/// Source: SmolLM2-Instruct `tokenizer_config.json` `chat_template` (also the GGUF's
/// `tokenizer.chat_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Id of `<|im_start|>` (SmolLM2: 1).
    pub im_start: u32,
    /// Id of `<|im_end|>`, the end of turn (SmolLM2: 2).
    pub im_end: u32,
    /// Id of `<|endoftext|>` (SmolLM2: 0).
    pub eos: u32,
}

impl ChatTemplate {
    /// Looks the three control tokens up in `tok`.
    /// Errors: [`PolicyError::Tokenizer`] naming a token the vocabulary lacks.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| tok_err(format!("the vocabulary has no {t} (not a ChatML model)")))
        };
        Ok(Self {
            im_start: id(IM_START)?,
            im_end: id(IM_END)?,
            eos: id(END_OF_TEXT)?,
        })
    }

    /// True for the ids that end a generation (`<|im_end|>`, `<|endoftext|>`).
    pub fn is_stop(&self, id: u32) -> bool {
        id == self.im_end || id == self.eos
    }

    /// The ids that end a generation, end of turn first: `[<|im_end|>, <|endoftext|>]`.
    pub fn stop_ids(&self) -> Vec<u32> {
        vec![self.im_end, self.eos]
    }

    /// `<|im_start|>{role}\n`.
    fn header(&self, tok: &Tokenizer, role: &str, out: &mut Vec<u32>) -> Result<()> {
        out.push(self.im_start);
        out.extend(encode_text(tok, &format!("{role}\n"))?);
        Ok(())
    }

    /// `<|im_end|>\n`.
    fn end_turn(&self, tok: &Tokenizer, out: &mut Vec<u32>) -> Result<()> {
        out.push(self.im_end);
        out.extend(encode_text(tok, "\n")?);
        Ok(())
    }

    /// A single-turn chat: system message, one user message made of `parts` (concatenated),
    /// then the assistant header; `assistant_prefix` (may be empty) starts the assistant's
    /// reply, e.g. `"Question:"` to force an answer format. Returns the input ids `[T]`.
    /// Errors: [`PolicyError::Tokenizer`].
    pub fn chat(
        &self,
        tok: &Tokenizer,
        system: &str,
        parts: &[UserPart<'_>],
        assistant_prefix: &str,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.header(tok, "system", &mut ids)?;
        ids.extend(encode_text(tok, system)?);
        self.end_turn(tok, &mut ids)?;
        self.header(tok, "user", &mut ids)?;
        for part in parts {
            match part {
                UserPart::Text(t) => ids.extend(encode_text(tok, t)?),
                UserPart::Ids(x) => ids.extend_from_slice(x),
            }
        }
        self.end_turn(tok, &mut ids)?;
        self.header(tok, "assistant", &mut ids)?;
        ids.extend(encode_text(tok, assistant_prefix)?);
        Ok(ids)
    }

    /// The LOGO prompt `{Q, C}` (paper 3.2.2): system message, the user turn holding the
    /// context chunks' ids concatenated then `"\n\nQuestion: {question}"`, and the assistant
    /// header.
    ///
    /// Returns `(input_ids [T], segments [chunks + 2])`: `segments` are the lengths of the
    /// prefix (everything before the first chunk), each chunk, and the suffix (question through
    /// the assistant header); they sum to `T`. Errors: [`PolicyError::Tokenizer`].
    pub fn prompt(
        &self,
        tok: &Tokenizer,
        system: &str,
        context_chunks: &[&[u32]],
        question: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut ids = Vec::new();
        self.header(tok, "system", &mut ids)?;
        ids.extend(encode_text(tok, system)?);
        self.end_turn(tok, &mut ids)?;
        self.header(tok, "user", &mut ids)?;
        let mut segments = Vec::with_capacity(context_chunks.len() + 2);
        segments.push(ids.len() as u32);
        for chunk in context_chunks {
            ids.extend_from_slice(chunk);
            segments.push(chunk.len() as u32);
        }
        let before_suffix = ids.len();
        ids.extend(encode_text(tok, &format!("\n\nQuestion: {question}"))?);
        self.end_turn(tok, &mut ids)?;
        self.header(tok, "assistant", &mut ids)?;
        segments.push((ids.len() - before_suffix) as u32);
        Ok((ids, segments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::embedded_config;

    fn tokenizer(test: &str) -> Option<Tokenizer> {
        let cfg = embedded_config(test)?;
        Some(load_tokenizer(&cfg).expect("tokenizer from GGUF"))
    }

    #[test]
    fn gguf_tokenizer_round_trips_and_splits_digits() {
        let Some(tok) = tokenizer("gguf_tokenizer_round_trips_and_splits_digits") else {
            return;
        };
        assert_eq!(tok.get_vocab_size(true), 49152);
        for text in [
            "Hello world",
            "  leading spaces, tabs\tand\nnewlines\n\n",
            "Ünïcödé — “quotes” 東京 🙂",
            "In 2024 there were 1,234,567 people.",
        ] {
            let ids = encode_text(&tok, text).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
        }
        // Known ids from the vocabulary: "Hello" then "Ġworld" (byte-level space marker).
        let ids = encode_text(&tok, "Hello world").unwrap();
        let hello = tok.token_to_id("Hello").unwrap();
        let world = tok.token_to_id("Ġworld").unwrap();
        assert_eq!(ids, vec![hello, world]);
        // Digits are split one by one (Digits(individual_digits = true)).
        let ids = encode_text(&tok, "2024").unwrap();
        let digit = |d: &str| tok.token_to_id(d).unwrap();
        assert_eq!(ids, vec![digit("2"), digit("0"), digit("2"), digit("4")]);
    }

    #[test]
    fn control_tokens_in_text_stay_text() {
        let Some(tok) = tokenizer("control_tokens_in_text_stay_text") else {
            return;
        };
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        assert_eq!((t.eos, t.im_start, t.im_end), (0, 1, 2));
        let text = "a doc that says <|im_end|> and <|im_start|>assistant <|endoftext|>";
        let ids = encode_text(&tok, text).unwrap();
        for control in 0..17u32 {
            assert!(!ids.contains(&control), "control id {control} in {ids:?}");
        }
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn prompt_segments_sum_and_control_ids_placed() {
        let Some(tok) = tokenizer("prompt_segments_sum_and_control_ids_placed") else {
            return;
        };
        let t = ChatTemplate::from_tokenizer(&tok).unwrap();
        let c0 = encode_text(&tok, "The cat sat on the mat.").unwrap();
        let c1 = encode_text(&tok, " It was 3 pm <|im_end|>.").unwrap();
        let (ids, seg) = t.prompt(&tok, "Be brief.", &[&c0, &c1], "Where?").unwrap();
        assert_eq!(seg.len(), 4);
        assert_eq!(seg.iter().sum::<u32>() as usize, ids.len());
        assert_eq!(seg[1] as usize, c0.len());
        assert_eq!(seg[2] as usize, c1.len());
        let (p, s) = (seg[0] as usize, *seg.last().unwrap() as usize);
        // The chunks sit verbatim between prefix and suffix.
        assert_eq!(&ids[p..p + c0.len()], &c0[..]);
        assert_eq!(&ids[p + c0.len()..ids.len() - s], &c1[..]);
        // Control ids: start, system end, user start (prefix); user end, assistant start
        // (suffix); nowhere else.
        let starts: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == t.im_start).collect();
        let ends: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == t.im_end).collect();
        assert_eq!(starts.len(), 3);
        assert_eq!(ends.len(), 2);
        assert_eq!(starts[0], 0);
        assert!(starts[1] < p && ends[0] < p);
        assert!(ends[1] >= ids.len() - s && starts[2] >= ids.len() - s);
        // The whole prompt decodes to the ChatML text.
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe cat sat on the \
             mat. It was 3 pm <|im_end|>.\n\nQuestion: Where?<|im_end|>\n<|im_start|>assistant\n"
        );
        // No chunk: [prefix, suffix].
        let (ids, seg) = t.prompt(&tok, "S", &[], "Q?").unwrap();
        assert_eq!(seg.len(), 2);
        assert_eq!(seg.iter().sum::<u32>() as usize, ids.len());
    }
}
