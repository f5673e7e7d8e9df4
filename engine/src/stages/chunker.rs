//! Chunker: cuts each document into equal token chunks C_1..C_n (paper 3.2.2; 512 tokens in
//! section 4.1) with the policy model's own tokenizer.
//!
//! Every chunk holds `chunk_size` tokens except the last, which holds the rest (the end of a
//! document is kept: it may hold the answer). Chunk ids are the chunk's index in document
//! order. `chunk_text[i]` is the slice of the document its tokens cover, cut at the byte offset
//! where the chunk's first token starts (moved back to a character boundary), so the chunk texts
//! concatenate back to the document exactly, and the chunk ids concatenate back to the
//! document's encoding.
//!
//! Input [`logo_schemas::documents_schema`], output [`logo_schemas::chunks_schema`]. A document
//! or question that cannot be tokenised (tokenizer error, or no token) goes to the rejects.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{chunks_schema, ChunkedRecord, DocumentRecord, Record};
use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::config::ChunkerConfig;
use crate::error::{EngineError, Result};
use crate::stage::{emit, map_rows, RowOutcome, Stage, StageContext};
use logo_formats::rejects::Reject;

/// The chunker stage.
pub struct ChunkerStage {
    chunk_size: usize,
    tokenizer: Tokenizer,
}

/// A document cut into chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunks {
    /// `[n_chunks][<= chunk_size]` token ids, document order.
    pub input_ids: Vec<Vec<u32>>,
    /// `[n_chunks]` texts; their concatenation is the document.
    pub text: Vec<String>,
}

impl ChunkerStage {
    /// `tokenizer` must be the policy model's (see `logo_policy::model::load_tokenizer`), with
    /// special tokens encoded as text. Errors: [`EngineError::Config`] for `chunk_size == 0`.
    pub fn try_new(cfg: &ChunkerConfig, tokenizer: Tokenizer) -> Result<Self> {
        if cfg.chunk_size == 0 {
            return Err(EngineError::Config {
                key: "chunker.chunk_size".into(),
                message: "must be >= 1 (got 0)".into(),
            });
        }
        Ok(Self {
            chunk_size: cfg.chunk_size,
            tokenizer,
        })
    }

    /// Cuts `text` into chunks of `chunk_size` tokens. Errors: the tokenizer's message when
    /// it fails, or `"no tokens"` for text that encodes to nothing.
    pub fn chunk(&self, text: &str) -> std::result::Result<Chunks, String> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("cannot be tokenised: {e}"))?;
        let ids = enc.get_ids();
        if ids.is_empty() {
            return Err("cannot be tokenised: no tokens".into());
        }
        let offsets = enc.get_offsets();
        let mut input_ids = Vec::with_capacity(ids.len().div_ceil(self.chunk_size));
        let mut starts = Vec::with_capacity(input_ids.capacity());
        for (k, piece) in ids.chunks(self.chunk_size).enumerate() {
            input_ids.push(piece.to_vec());
            let byte = if k == 0 {
                0
            } else {
                floor_char_boundary(text, offsets[k * self.chunk_size].0)
            };
            starts.push(byte);
        }
        starts.push(text.len());
        let text = starts
            .windows(2)
            .map(|w| text[w[0]..w[1].max(w[0])].to_string())
            .collect();
        Ok(Chunks { input_ids, text })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Stage for ChunkerStage {
    fn name(&self) -> &'static str {
        "chunker"
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::documents_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        chunks_schema()
    }

    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = DocumentRecord::from_batch(&batch)?;
        let this = &*self;
        // A document with several questions is one row per question: tokenise it once.
        let mut first_row: HashMap<&str, usize> = HashMap::new();
        for (i, d) in rows.iter().enumerate() {
            first_row.entry(d.key.document_id.as_str()).or_insert(i);
        }
        let cache: HashMap<String, std::result::Result<Chunks, String>> = first_row
            .into_par_iter()
            .map(|(id, i)| {
                let chunks = this.chunk(&rows[i].context);
                if let Ok(c) = &chunks {
                    let n: usize = c.input_ids.iter().map(Vec::len).sum();
                    ctx.stats.add_tokens("chunker", n as u64);
                }
                (id.to_string(), chunks)
            })
            .collect();
        let out = map_rows(rows, "chunker", ctx, |d| {
            let reject = |field: &str, reason: String| Reject {
                stage: "chunker".into(),
                file: d.key.source_file.clone(),
                row: d.key.source_row,
                field: Some(field.into()),
                reason,
            };
            let Some(question) = d.key.question.as_deref() else {
                return RowOutcome::Reject(reject(
                    "question",
                    "missing (question generation did not run)".into(),
                ));
            };
            match this.tokenizer.encode(question, false) {
                Ok(e) if !e.get_ids().is_empty() => {}
                Ok(_) => {
                    let why = "cannot be tokenised: no tokens".into();
                    return RowOutcome::Reject(reject("question", why));
                }
                Err(e) => {
                    let why = format!("cannot be tokenised: {e}");
                    return RowOutcome::Reject(reject("question", why));
                }
            }
            let chunks = match cache[&d.key.document_id].clone() {
                Ok(chunks) => chunks,
                Err(m) => return RowOutcome::Reject(reject("context", m)),
            };
            RowOutcome::Keep(ChunkedRecord {
                key: d.key,
                chunk_input_ids: chunks.input_ids,
                chunk_text: chunks.text,
            })
        })?;
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

    /// A word-level tokenizer over a fixed vocabulary: one token per whitespace-separated word,
    /// so chunk boundaries can be computed by hand.
    fn word_tokenizer() -> Tokenizer {
        let vocab = [
            "[UNK]", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "ü",
        ]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut t = Tokenizer::new(model);
        t.with_pre_tokenizer(Some(WhitespaceSplit));
        t
    }

    #[test]
    fn chunks_are_equal_and_concatenate_back() {
        let stage =
            ChunkerStage::try_new(&ChunkerConfig { chunk_size: 3 }, word_tokenizer()).unwrap();
        let text = "a b c d e f g h";
        let c = stage.chunk(text).unwrap();
        // 8 tokens at 3 per chunk: [a b c] [d e f] [g h]
        assert_eq!(c.input_ids, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]]);
        assert_eq!(c.text, vec!["a b c ", "d e f ", "g h"]);
        assert_eq!(c.text.concat(), text);
        let all: Vec<u32> = c.input_ids.concat();
        assert_eq!(all, stage.tokenizer.encode(text, false).unwrap().get_ids());
    }

    #[test]
    fn exact_multiple_and_multibyte_text() {
        let stage =
            ChunkerStage::try_new(&ChunkerConfig { chunk_size: 2 }, word_tokenizer()).unwrap();
        let text = "ü a ü b";
        let c = stage.chunk(text).unwrap();
        assert_eq!(c.input_ids, vec![vec![11, 1], vec![11, 2]]);
        assert_eq!(c.text, vec!["ü a ", "ü b"]);
    }

    #[test]
    fn empty_text_is_an_error() {
        let stage =
            ChunkerStage::try_new(&ChunkerConfig { chunk_size: 2 }, word_tokenizer()).unwrap();
        assert_eq!(
            stage.chunk("   ").unwrap_err(),
            "cannot be tokenised: no tokens"
        );
    }
}
