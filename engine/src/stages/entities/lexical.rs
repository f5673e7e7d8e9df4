//! The lexical evaluator: normalised, stemmed content terms.

use std::collections::HashSet;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::{backend_error, EntityExtractor};
use crate::error::Result;

/// Shortest term kept, in Unicode scalar values (`char`s) of the normalised word: 2. Words of
/// one character (`a`, `x`, the digit `5`) are dropped.
pub const MIN_TERM_CHARS: usize = 2;

/// Content terms as entities (`scorer.backend: lexical`, the default).
///
/// The keys of a text are built by these rules, in order:
///
/// 1. **Normalise**: Unicode NFKC (full-width and compatibility forms fold to ASCII, e.g.
///    `Ｐａｒｉｓ` → `Paris`, `ﬁ` → `fi`), then lower-case (Unicode `to_lowercase`); the
///    typographic apostrophes `’ ‘ ʼ` become `'`.
/// 2. **Segment** into words by Unicode word boundaries (UAX #29, `unicode-segmentation`'s
///    `unicode_words`): punctuation and spaces separate words, hyphens split (`covid-19` →
///    `covid`, `19`), apostrophes and number separators do not (`club's`, `3.14`, `1,000`).
/// 3. **Numbers**: a word made only of digits, `.` and `,` is a number term and is kept as is,
///    minus its `,` separators (`1,000` → `1000`), without stemming.
/// 4. **Short words**: a word (number or not) of fewer than [`MIN_TERM_CHARS`] characters is
///    dropped.
/// 5. **Stop words**: a word in NLTK's English stop-word list (198 words, from the
///    `stop-words` crate: `the`, `was`, `who`, `don't`, ...) is dropped.
/// 6. **Stem**: the other words are reduced with the Snowball English (Porter2) stemmer
///    (`rust-stemmers`): `running`, `runs` → `run`; `club's` → `club`; `Paris` → `pari`.
///
/// The key set is the distinct results; a term repeated in the text counts once.
pub struct LexicalExtractor {
    stemmer: Stemmer,
    stop_words: HashSet<&'static str>,
}

impl LexicalExtractor {
    /// Loads the Snowball English stemmer and the NLTK English stop words (both compiled in).
    ///
    /// Errors: [`crate::EngineError::Config`] naming `scorer.backend` when the `stop-words`
    /// crate was built without its English list.
    pub fn new() -> Result<Self> {
        let words = stop_words::lookup("en").ok_or_else(|| {
            backend_error(
                "lexical: the stop-words crate has no English list (feature `nltk` missing)".into(),
            )
        })?;
        Ok(Self {
            stemmer: Stemmer::create(Algorithm::English),
            stop_words: words.iter().copied().collect(),
        })
    }

    /// Number of stop words in use (198 for NLTK's English list).
    pub fn num_stop_words(&self) -> usize {
        self.stop_words.len()
    }

    /// The terms of `text` in order of occurrence, repeats included (rules in the type's doc).
    pub fn terms(&self, text: &str) -> Vec<String> {
        let normalised: String = text
            .nfkc()
            .flat_map(char::to_lowercase)
            .map(|c| match c {
                '\u{2019}' | '\u{2018}' | '\u{02BC}' => '\'',
                c => c,
            })
            .collect();
        normalised
            .unicode_words()
            .filter_map(|word| self.term(word))
            .collect()
    }

    /// The key of one normalised word, or `None` when it is dropped (rules 3 to 6).
    fn term(&self, word: &str) -> Option<String> {
        if word.chars().count() < MIN_TERM_CHARS {
            return None;
        }
        let is_number = word.chars().any(|c| c.is_ascii_digit())
            && word
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == ',');
        if is_number {
            return Some(word.replace(',', ""));
        }
        if self.stop_words.contains(word) {
            return None;
        }
        Some(self.stemmer.stem(word).into_owned())
    }
}

impl EntityExtractor for LexicalExtractor {
    fn name(&self) -> &'static str {
        "lexical"
    }

    fn entities(&self, text: &str) -> HashSet<String> {
        self.terms(text).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::entities::overlap;

    fn lex() -> LexicalExtractor {
        LexicalExtractor::new().unwrap()
    }

    fn sorted(set: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn uses_nltk_english_stop_words() {
        assert_eq!(lex().num_stop_words(), 198);
    }

    #[test]
    fn terms_follow_the_documented_rules() {
        // By hand: who(stop) runs→run the(stop) running→run club in(stop) paris→pari;
        // "5" is one char (dropped); 2,019 → 2019; km kept; club's → club.
        let l = lex();
        assert_eq!(
            l.terms("Who runs the Running Club in Paris?"),
            ["run", "run", "club", "pari"]
        );
        assert_eq!(
            l.terms("The club's members ran 5 km in 2,019 (or 3.5) days!"),
            ["club", "member", "ran", "km", "2019", "3.5", "day"]
        );
        // NFKC folds full-width letters; the typographic apostrophe is an ASCII one.
        assert_eq!(l.terms("ＰＡＲＩＳ Curie’s"), ["pari", "curi"]);
        // Hyphens split; the one-char "x" goes.
        assert_eq!(l.terms("COVID-19 x-ray"), ["covid", "19", "ray"]);
    }

    #[test]
    fn entities_are_distinct() {
        let e = lex().entities("Paris, PARIS and paris! running runs run.");
        assert_eq!(sorted(e), ["pari", "run"]);
    }

    #[test]
    fn score_of_hand_made_pair() {
        // Question keys {run, club, pari}; chunk keys {pari, club, member, run, km, 2019}.
        // Shared: run (running ~ runs), club (club's ~ Club), pari (case): 3. The repeated
        // "Paris" counts once, "The"/"were"/"in" are stop words.
        let l = lex();
        let q = l.entities("Who runs the Running Club in Paris?");
        let c = l.entities("Paris, PARIS and paris! The club's members were running 5 km in 2019.");
        assert_eq!(
            sorted(c.clone()),
            ["2019", "club", "km", "member", "pari", "run"]
        );
        assert_eq!(overlap(&c, &q), 3);
        // A number is a term: asking about 2019 adds one shared key.
        let q2 = l.entities("Who runs the Running Club in Paris in 2019?");
        assert_eq!(overlap(&c, &q2), 4);
        // Only stop words and punctuation: nothing to share.
        assert!(l.entities("Who was it? It was them, wasn't it!").is_empty());
    }
}
