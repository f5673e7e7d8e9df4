//! The automatic evaluator Eval(·) of LOGO's importance scoring: the "entities" of a text.
//!
//! Source: Tang et al., "LOGO — Long cOntext aliGnment via efficient preference Optimization",
//! section 3.2.2 ("Importance Scoring with Automatic Evaluator") and section 4.1. The paper runs
//! a spaCy `en_core_web` named-entity recogniser over each chunk C_i and over the question Q and
//! uses the number of overlapping entities as the chunk's importance score s_i; the threshold
//! δ = 6 of the sampler is set on that scale. [`crate::stages::ScorerStage`] computes
//! `s_i = |E(C_i) ∩ (E(Q) ∪ E(answer))|` with one of the two [`EntityExtractor`]s below.
//!
//! | backend | entity keys | closeness to the paper |
//! |---|---|---|
//! | [`LexicalExtractor`] (`scorer.backend: lexical`, default) | Snowball stems of content words and numbers | not NER: it counts shared *content terms* |
//! | [`NerExtractor`] (`scorer.backend: ner`) | normalised surface text of named entities | the paper's notion (named-entity overlap) |
//!
//! **Which one matches the paper.** [`NerExtractor`] matches the paper's evaluator most
//! closely: like spaCy it finds person, organisation, location, date, time, money and
//! percentage mentions, and the score counts distinct entities shared with the question. It
//! differs from spaCy `en_core_web_sm` in its model and label set: a linear-chain CRF trained
//! on WikiANN (PER/ORG/LOC, bundled with the `anno` crate), capitalisation heuristics and
//! patterns, instead of spaCy's CNN trained on OntoNotes (18 labels, among them NORP, FAC,
//! PRODUCT, EVENT, WORK_OF_ART, LAW, CARDINAL, ORDINAL). So it has no CARDINAL/ORDINAL and
//! no EVENT/WORK_OF_ART labels, lower recall on lower-case text, and its keys ignore the
//! label and are case-folded (spaCy's `ent.text` is case-sensitive), so scores are in the same
//! range as the paper's but not equal to them. Measured on all L-Eval chunks (512 tokens,
//! 971 questions; `bench/results/engine_stages.json`): its scores correlate with spaCy
//! `en_core_web_sm` 3.8's at Pearson r = 0.73, at 0.86× spaCy's speed.
//!
//! [`LexicalExtractor`] counts every shared content term (stop words removed, stems matched),
//! not only names: a question of 12 content words yields up to 12 keys where spaCy finds 2–3
//! entities, so its scores are several times higher than entity counts and the paper's δ = 6
//! keeps more chunks as relevant than it would with spaCy. Raise `sampler.threshold` with
//! this backend if the relevant set must stay as selective as in the paper. It is the default
//! because it is deterministic, fast (about 0.1 ms per 512-token chunk of English prose on one
//! core, against about 0.1 s for the NER stack) and does not depend on capitalisation.
//!
//! ```
//! use logo_engine::stages::entities::{EntityExtractor, LexicalExtractor};
//! let lex = LexicalExtractor::new().unwrap();
//! let q = lex.entities("Who runs the Running Club?");
//! let c = lex.entities("The club's members were running.");
//! assert_eq!(logo_engine::stages::entities::overlap(&c, &q), 2); // "run", "club"
//! ```

use std::collections::HashSet;

use crate::config::ScorerBackend;
use crate::error::{EngineError, Result};

mod lexical;
mod ner;

pub use lexical::{LexicalExtractor, MIN_TERM_CHARS};
pub use ner::{Mention, NerExtractor};

/// An automatic evaluator Eval(·) (paper 3.2.2): maps a text to the set of its entities.
///
/// Implementations are pure functions of the text, shareable between threads (the scorer
/// calls them from rayon workers).
pub trait EntityExtractor: Send + Sync {
    /// Short backend name, as spelled in `scorer.backend` (`lexical`, `ner`).
    fn name(&self) -> &'static str;

    /// The normalised, distinct entity keys of `text` (each counted once however often it
    /// occurs); two texts share an entity when their sets share a key. Empty for a text with
    /// no entity. The exact rules are the implementation's (see [`LexicalExtractor`],
    /// [`NerExtractor`]).
    fn entities(&self, text: &str) -> HashSet<String>;
}

/// Builds the extractor `scorer.backend` names.
///
/// Errors: [`EngineError::Config`] with key `scorer.backend` when the backend cannot be loaded
/// (its bundled stop-word list or NER weights are missing or broken).
pub fn extractor(backend: ScorerBackend) -> Result<Box<dyn EntityExtractor>> {
    Ok(match backend {
        ScorerBackend::Lexical => Box::new(LexicalExtractor::new()?),
        ScorerBackend::Ner => Box::new(NerExtractor::new()?),
    })
}

/// Number of keys `a` and `b` share, `|a ∩ b|`: the importance score s_i of a chunk when `a`
/// is E(C_i) and `b` is E(Q) (paper 3.2.2).
pub fn overlap(a: &HashSet<String>, b: &HashSet<String>) -> usize {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().filter(|k| large.contains(*k)).count()
}

/// A [`EngineError::Config`] naming `scorer.backend`.
fn backend_error(message: String) -> EngineError {
    EngineError::Config {
        key: "scorer.backend".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn overlap_counts_shared_keys_once() {
        assert_eq!(overlap(&set(&["a", "b", "c"]), &set(&["b", "c", "d"])), 2);
        assert_eq!(overlap(&set(&["a"]), &set(&[])), 0);
        assert_eq!(overlap(&set(&[]), &set(&[])), 0);
    }

    #[test]
    fn extractor_builds_each_backend() {
        assert_eq!(extractor(ScorerBackend::Lexical).unwrap().name(), "lexical");
        assert_eq!(extractor(ScorerBackend::Ner).unwrap().name(), "ner");
    }
}
