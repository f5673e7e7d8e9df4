//! Answer-quality metrics of extractive and abstractive QA, as LongBench and L-Eval report them.
//!
//! Sources:
//! - [`normalize_answer`], [`token_f1`], [`exact_match`]: the SQuAD v1.1 evaluation script
//!   (Rajpurkar et al. 2016, `evaluate-v1.1.py`), which LongBench's `qa_f1_score` reuses:
//!   lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse white space;
//!   F1 over the multiset of tokens.
//! - [`rouge_l`]: ROUGE-L F-measure (Lin 2004, β = 1) on the longest common subsequence of
//!   tokens, tokenised as Google's `rouge_score` does without stemming (lower-case, every run
//!   of characters other than `[a-z0-9]` is a separator).
//! - Several references: the best score over them (LongBench `max(score(pred, ref))`).
//!
//! Every score is a fraction in `[0, 1]`.

use std::collections::HashMap;

/// SQuAD answer normalisation: lower-case, remove ASCII punctuation, remove the words
/// `a`, `an`, `the`, and join the remaining white-space separated words with one space.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD/LongBench token F1 between a prediction and one reference, after
/// [`normalize_answer`]: with `c` tokens in common (multiset intersection), precision
/// `c / |pred|`, recall `c / |ref|`, F1 their harmonic mean; 0 when `c == 0` (so also when
/// either side is empty, unless both are, which scores 1, as in SQuAD).
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let p = normalize_answer(prediction);
    let r = normalize_answer(reference);
    let p: Vec<&str> = p.split_whitespace().collect();
    let r: Vec<&str> = r.split_whitespace().collect();
    if p.is_empty() && r.is_empty() {
        return 1.0;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// 1 when prediction and reference are equal after [`normalize_answer`], else 0.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(reference),
    ))
}

/// `rouge_score`'s default tokenisation: lower-case, split on every character outside
/// `[a-z0-9]`.
pub fn rouge_tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence of two token lists (dynamic programming,
/// `O(|a|·|b|)` time, `O(|b|)` memory).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1: with `l` the LCS length of the [`rouge_tokens`] of both sides, precision
/// `l / |pred|`, recall `l / |ref|`, F1 their harmonic mean; 0 when either side has no token.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let p = rouge_tokens(prediction);
    let r = rouge_tokens(reference);
    if p.is_empty() || r.is_empty() {
        return 0.0;
    }
    let l = lcs_len(&p, &r);
    if l == 0 {
        return 0.0;
    }
    let precision = l as f64 / p.len() as f64;
    let recall = l as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The three scores of one prediction, each the best over the references.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaScores {
    /// [`token_f1`].
    pub f1: f64,
    /// [`rouge_l`].
    pub rouge_l: f64,
    /// [`exact_match`].
    pub exact_match: f64,
}

impl QaScores {
    /// Scores `prediction` against every reference and keeps the best of each metric
    /// (all 0 without references).
    pub fn best_of(prediction: &str, references: &[String]) -> QaScores {
        let best = |f: fn(&str, &str) -> f64| {
            references
                .iter()
                .map(|r| f(prediction, r))
                .fold(0.0, f64::max)
        };
        QaScores {
            f1: best(token_f1),
            rouge_l: best(rouge_l),
            exact_match: best(exact_match),
        }
    }

    /// The mean of each metric over `scores` (all 0 when empty).
    pub fn mean(scores: &[QaScores]) -> QaScores {
        let n = scores.len().max(1) as f64;
        QaScores {
            f1: scores.iter().map(|s| s.f1).sum::<f64>() / n,
            rouge_l: scores.iter().map(|s| s.rouge_l).sum::<f64>() / n,
            exact_match: scores.iter().map(|s| s.exact_match).sum::<f64>() / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn normalisation_follows_squad() {
        assert_eq!(normalize_answer("The  Cat, sat!"), "cat sat");
        assert_eq!(normalize_answer("An apple a day"), "apple day");
        // Articles only as whole words; punctuation removal can join words ("don't" → "dont").
        assert_eq!(normalize_answer("Theatre: don't"), "theatre dont");
        assert_eq!(normalize_answer("A-the"), "athe");
        assert_eq!(normalize_answer("  \t\n "), "");
        // Non-ASCII punctuation is kept, as in Python's string.punctuation.
        assert_eq!(normalize_answer("“Paris”"), "“paris”");
    }

    #[test]
    fn token_f1_by_hand() {
        // pred {cat, sat, on, mat} vs ref {cat, sat, on, red, mat}: common 4,
        // P = 4/4, R = 4/5, F1 = 2·1·0.8/1.8 = 8/9.
        close(
            token_f1("The cat sat on the mat.", "A cat sat on the red mat"),
            8.0 / 9.0,
        );
        // Repeated tokens count once per occurrence: pred "a b b" (article removed: "b b")
        // vs ref "b c": common 1, P = 1/2, R = 1/2, F1 = 1/2.
        close(token_f1("a b b", "b c"), 0.5);
        close(token_f1("Paris", "paris!"), 1.0);
        close(token_f1("London", "Paris"), 0.0);
        close(token_f1("", "Paris"), 0.0);
        close(token_f1("the", "a"), 1.0); // both normalise to nothing
    }

    #[test]
    fn exact_match_normalises() {
        close(exact_match("The Eiffel Tower.", "eiffel tower"), 1.0);
        close(exact_match("Eiffel Tower, Paris", "eiffel tower"), 0.0);
    }

    #[test]
    fn rouge_l_by_hand() {
        // pred: police killed the gunman (4), ref: police kill the gunman (4); LCS: police,
        // the, gunman = 3; P = R = 3/4, F1 = 0.75.
        close(
            rouge_l("police killed the gunman", "police kill the gunman"),
            0.75,
        );
        // pred: the gunman police killed (4); LCS with ref "police kill the gunman" is 2
        // ("the gunman" or "police …"): F1 = 0.5.
        close(
            rouge_l("the gunman police killed", "police kill the gunman"),
            0.5,
        );
        // Tokenisation splits on punctuation and keeps articles: "U.S.-based" → u s based.
        assert_eq!(
            rouge_tokens("U.S.-based, 2024!"),
            vec!["u", "s", "based", "2024"]
        );
        // pred a b c d e (5) vs ref a x c e (4): LCS a c e = 3; P = 3/5, R = 3/4,
        // F1 = 2·0.6·0.75/1.35 = 2/3.
        close(rouge_l("a b c d e", "a x c e"), 2.0 / 3.0);
        close(rouge_l("", "a"), 0.0);
        assert_eq!(lcs_len(&[1, 2, 3, 4], &[2, 4, 3]), 2);
    }

    #[test]
    fn best_over_references_and_mean() {
        let refs = vec!["Paris".to_string(), "the city of Paris".to_string()];
        let s = QaScores::best_of("Paris", &refs);
        assert_eq!(
            s,
            QaScores {
                f1: 1.0,
                rouge_l: 1.0,
                exact_match: 1.0
            }
        );
        let t = QaScores::best_of("city", &refs);
        // "city" vs "city of paris" (normalised): common 1, P = 1, R = 1/3, F1 = 0.5.
        close(t.f1, 0.5);
        close(t.exact_match, 0.0);
        let m = QaScores::mean(&[s, t]);
        close(m.f1, 0.75);
        close(m.exact_match, 0.5);
        assert_eq!(QaScores::best_of("x", &[]), QaScores::default());
    }
}
