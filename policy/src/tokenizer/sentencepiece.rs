//! The SentencePiece tokenizer of a GGUF (`tokenizer.ggml.model = llama`: Llama 2, Mistral,
//! TinyLlama, ...), built as transformers builds it from the same file, so that both give the
//! same ids.
//!
//! Source: transformers 5.24 `integrations/gguf/gguf_tokenizer_mapping.py`
//! (`sentencepiece_tokenizer`, `get_merges`, `add_gguf_special_tokens`, `get_gguf_tokenizer`),
//! `models/llama/tokenization_llama.py` (`LlamaTokenizer`: BPE with byte fallback, `Metaspace`
//! pre-tokenizer with `prepend_scheme = "first"`, no normaliser, decoder `Replace("▁", " ")`,
//! `ByteFallback`, `Fuse`, `Strip(" ", 1, 0)`), `tokenization_utils_base.py` `generate_merges`
//! (merges recovered from the vocabulary and the scores when the file has none) and
//! `tokenization_utils_tokenizers.py` (the BOS/EOS/UNK/PAD strings added as special tokens);
//! the GGUF keys and token types (ggml `docs/gguf.md`; llama.cpp `llama_token_type`:
//! 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
//!
//! transformers ignores `tokenizer.ggml.add_space_prefix` for this tokenizer (a space is
//! always prepended to the text's first piece), and so does logo; llama.cpp honours it, so for
//! the rare file that sets it false the two disagree on a text's first token.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

/// The word-boundary marker of SentencePiece (U+2581).
const SPACE: char = '\u{2581}';

/// `general.architecture` values for which transformers builds a SentencePiece GGUF's
/// tokenizer another way (`GGUF_SENTENCEPIECE_BUILDERS`: Gemma respells its space tokens and
/// orders merges by position, Phi-3 prepends the space in a normaliser); logo does not build
/// those.
const OTHER_BUILDERS: &[&str] = &["gemma", "gemma2", "gemma3", "phi3"];

/// GGUF token type CONTROL (llama.cpp `LLAMA_TOKEN_TYPE_CONTROL`).
const CONTROL: i32 = 3;
/// GGUF token type USER_DEFINED (llama.cpp `LLAMA_TOKEN_TYPE_USER_DEFINED`).
const USER_DEFINED: i32 = 4;

/// Builds the SentencePiece BPE tokenizer of a GGUF from its `tokens` and token `types`
/// (already read and checked to be as many) and the other `tokenizer.ggml.*` keys of `md`:
/// BPE over `tokens` (id = position) with byte fallback and unknown pieces fused, merges from
/// `tokenizer.ggml.merges` or else recovered from `tokenizer.ggml.scores` ([`generate_merges`]);
/// `Metaspace("▁", prepend_scheme = first, split = false)`; the decoder of transformers'
/// `LlamaTokenizer`; control tokens (type 3) and the tokens of
/// `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` added as special tokens, user-defined
/// tokens (type 4) as plain added tokens (matched whole in any text, as transformers and
/// llama.cpp do). No post-processor.
///
/// Errors: a message naming the key: an architecture transformers builds differently
/// (`general.architecture` gemma*, phi3), missing or malformed scores or merges, a special
/// token id out of range, a merge the vocabulary cannot hold.
pub(super) fn sentencepiece_tokenizer(
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, String> {
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("llama");
    if OTHER_BUILDERS.contains(&arch) {
        return Err(format!(
            "general.architecture: {arch} with tokenizer.ggml.model = llama is built by \
             transformers its own way, which logo does not; give model.tokenizer (a \
             tokenizer.json or a Hugging Face folder) instead"
        ));
    }
    let merges = merges(md, tokens)?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| format!("building the SentencePiece BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::First, false)));
    let replace = Replace::new(SPACE.to_string(), " ").map_err(|e| e.to_string())?;
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ])));
    add_gguf_tokens(&mut tokenizer, md, tokens, types)?;
    Ok(tokenizer)
}

/// The merges of `tokenizer.ggml.merges` (`"a b"` strings), else those the scores imply
/// ([`generate_merges`]), as transformers' `get_merges`. Errors: a malformed or missing key.
fn merges(
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
) -> Result<Vec<(String, String)>, String> {
    Ok(match md.get("tokenizer.ggml.merges") {
        Some(v) => super::gguf_strings(v, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("tokenizer.ggml.merges: expected \"a b\", got {m:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let key = "tokenizer.ggml.scores";
            let scores: Vec<f32> = md
                .get(key)
                .ok_or_else(|| format!("missing GGUF key {key} (and no tokenizer.ggml.merges)"))?
                .to_vec()
                .map_err(|e| format!("{key}: {e}"))?
                .iter()
                .map(|s| s.to_f32().map_err(|e| format!("{key}: {e}")))
                .collect::<Result<_, _>>()?;
            if scores.len() != tokens.len() {
                return Err(format!(
                    "{key}: expected {} entries, got {}",
                    tokens.len(),
                    scores.len()
                ));
            }
            generate_merges(tokens, &scores)
        }
    })
}

/// Adds the GGUF's control tokens (type 3) and BOS/EOS/UNK/PAD tokens as special tokens and
/// its user-defined tokens (type 4) as plain added tokens, as transformers'
/// `add_gguf_special_tokens` and `TokenizersBackend.__init__` add them.
/// Errors: a special-token id key that is malformed or out of range.
fn add_gguf_tokens(
    tokenizer: &mut Tokenizer,
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    types: &[i32],
) -> Result<(), String> {
    let mut specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == CONTROL)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    for key in ["bos", "eos", "unknown", "padding"] {
        let key = format!("tokenizer.ggml.{key}_token_id");
        if let Some(v) = md.get(&key) {
            let id = v.to_u32().map_err(|e| format!("{key}: {e}"))?;
            let token = tokens
                .get(id as usize)
                .ok_or_else(|| format!("{key}: id {id} is outside the {} tokens", tokens.len()))?;
            specials.push(AddedToken::from(token.clone(), true));
        }
    }
    tokenizer.add_special_tokens(&specials);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == USER_DEFINED)
        .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);
    Ok(())
}

/// The BPE merges a SentencePiece vocabulary implies, best first, as transformers'
/// `generate_merges(vocab, vocab_scores)` recovers them: for each token (in vocabulary order)
/// every split into two vocabulary tokens `(left, right)`, the splits of one token ordered by
/// the ids of `left` then `right`; then all splits stably sorted by descending
/// `(score of the token, chars of left, chars of right)`. A token listed twice counts once, at
/// its first position, with its last id and score (Python dict semantics).
pub(crate) fn generate_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (t, &s)) in tokens.iter().zip(scores).enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, s);
    }
    // (left, right, score of the merged token, chars of left, chars of right)
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for token in order {
        let s = score[token];
        let mut local: Vec<(&str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (id[l], id[r]));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (l, r, s, l.chars().count(), r.chars().count())),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value;

    /// A toy SentencePiece GGUF's metadata: `<unk>` 0, `<s>` 1, `</s>` 2, `<eot>` 3 (control),
    /// `<0x0A>` 4 (byte), then pieces with scores (merges come from the scores).
    fn toy(arch: &str) -> HashMap<String, Value> {
        let tokens = [
            "<unk>", "<s>", "</s>", "<eot>", "<0x0A>", "▁", "a", "b", "▁a", "ab", "▁ab",
        ];
        let types = [2, 3, 3, 3, 6, 1, 1, 1, 1, 1, 1];
        let scores = [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1.5, -1.6, -1.2];
        let s = |v: &str| Value::String(v.to_string());
        HashMap::from([
            ("general.architecture".into(), s(arch)),
            ("tokenizer.ggml.model".into(), s("llama")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(scores.iter().map(|&x| Value::F32(x)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ])
    }

    #[test]
    fn toy_sentencepiece_gguf_encodes_with_metaspace_and_byte_fallback() {
        let mut tok = super::super::tokenizer_from_gguf(&toy("llama")).unwrap();
        tok.set_encode_special_tokens(true);
        // "ab ab\n" -> "▁ab▁ab\n": merges by score (▁a+b = ▁ab best), "\n" by byte fallback.
        let enc = tok.encode("ab ab\n", false).unwrap();
        assert_eq!(enc.get_ids(), &[10, 10, 4]);
        // Offsets are in the original text: the prepended ▁ maps to the first char.
        assert_eq!(enc.get_offsets(), &[(0, 2), (2, 5), (5, 6)]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "ab ab\n");
        // Control strings stay text with encode_special_tokens(true); parsed without.
        let text = tok.encode("<eot>", false).unwrap();
        assert!(!text.get_ids().contains(&3), "{:?}", text.get_ids());
        tok.set_encode_special_tokens(false);
        assert_eq!(tok.encode("a<eot>", false).unwrap().get_ids(), &[8, 3]);
    }

    #[test]
    fn other_builders_and_tokenizer_kinds_are_refused_by_key() {
        let e = super::super::tokenizer_from_gguf(&toy("gemma2")).unwrap_err();
        assert!(e.starts_with("general.architecture: gemma2") && e.contains("model.tokenizer"));
        let mut md = toy("llama");
        md.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        let e = super::super::tokenizer_from_gguf(&md).unwrap_err();
        assert!(e.starts_with("tokenizer.ggml.model: expected gpt2") && e.contains("got bert"));
        let mut md = toy("llama");
        md.remove("tokenizer.ggml.scores");
        let e = super::super::tokenizer_from_gguf(&md).unwrap_err();
        assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    }

    #[test]
    fn merges_follow_transformers_generate_merges() {
        // transformers 5.24, by hand in Python:
        // >>> from transformers.tokenization_utils_base import generate_merges
        // >>> toks = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "ca", "a"]
        // >>> sc = [0, -1, -2, -3, -0.5, -0.5, -0.25, -0.5, -9]
        // >>> generate_merges({t: i for i, t in enumerate(toks)}, dict(zip(toks, sc)))
        // [('ab', 'c'), ('a', 'bc'), ('a', 'b'), ('b', 'c'), ('c', 'a')]
        // ("a" has the id of its last listing, 8, so ("ab", "c") sorts first within "abc".)
        let toks: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "ca", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sc = [0.0, -1.0, -2.0, -3.0, -0.5, -0.5, -0.25, -0.5, -9.0];
        let got = generate_merges(&toks, &sc);
        let want = [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c"), ("c", "a")];
        let got: Vec<(&str, &str)> = got.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(got, want);
    }
}
