//! The NER evaluator: named entities from `anno`'s offline recognisers.

use std::collections::HashSet;

use anno::{ConflictStrategy, CrfNER, HeuristicNER, Model, RegexNER, StackedNER};
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::{backend_error, EntityExtractor};
use crate::error::Result;

/// One entity mention found by [`NerExtractor::mentions`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mention {
    /// Label: `PER`, `ORG`, `LOC`, `DATE`, `TIME`, `MONEY`, `PERCENT`, `EMAIL`, `URL`, `PHONE`
    /// (anno's short labels; spaCy spells `PERSON`, and `GPE` for most `LOC`).
    pub label: String,
    /// The normalised surface text, the entity's key (rules in [`NerExtractor`]).
    pub key: String,
}

/// Named entities as entities (`scorer.backend: ner`), the closest match to the paper's spaCy
/// evaluator (section 4.1).
///
/// Recogniser: `anno` 0.13 (pure Rust, built without ONNX or model downloads), a stack of
/// three layers whose overlapping spans are resolved longest-span-first (ties: earlier layer):
///
/// 1. `RegexNER`: DATE (`August 4, 1961`, `28 June 1919`, `April 2018`), TIME, MONEY
///    (`$5 million`), PERCENT (`12%`), EMAIL, URL, PHONE;
/// 2. `HeuristicNER`: PER/ORG/LOC from capitalised spans and cue words (`Inc`, `University
///    of`, `in`/`at` before a place);
/// 3. `CrfNER` with the CRF weights bundled in the crate (trained on WikiANN English,
///    PER/ORG/LOC; about 1 MB compiled into the binary).
///
/// Then, as spaCy's `en_core_web` models tag a bare year as DATE, every word of four ASCII
/// digits from 1000 to 2099 that no entity covers is added as a DATE (`in 1903`).
///
/// **Keys.** The surface text of each mention, normalised: NFKC, lower-cased, typographic
/// apostrophes made ASCII, whitespace runs collapsed to one space, then stripped of
/// surrounding punctuation (`. , ; : ! ? " ' ( ) [ ] { }` and typographic quotes), of a
/// leading `the ` and of a trailing `'s` (`The Sorbonne's.` → `sorbonne`). The label is not
/// part of the key, so `Washington` tagged PER in the question and LOC in a chunk is still
/// one shared entity (the recognisers' labels are noisier than their spans).
///
/// Recall depends on capitalisation: a lower-case question (`where did marie curie work?`)
/// has no entity. Cost: about 40 µs per character of text (≈ 0.1 s for a 512-token chunk of
/// 2,600 characters on one core), nearly all in the CRF layer.
pub struct NerExtractor {
    model: StackedNER,
}

/// The load probe: the bundled CRF weights find this person; the fallback weights `anno`
/// silently uses when they fail to parse find nothing here.
const PROBE: &str = "Barack Obama was born in Honolulu.";
const PROBE_PERSON: &str = "Barack Obama";

impl NerExtractor {
    /// Builds the stack and checks that the bundled CRF weights are in use (the CRF alone must
    /// find the person in a probe sentence).
    ///
    /// Errors: [`crate::EngineError::Config`] naming `scorer.backend` when the CRF weights did
    /// not load or the stack cannot be built.
    pub fn new() -> Result<Self> {
        let crf = CrfNER::new();
        let probe = crf
            .extract_entities(PROBE, None)
            .map_err(|e| backend_error(format!("ner: the CRF recogniser failed: {e}")))?;
        if !probe.iter().any(|e| e.text == PROBE_PERSON) {
            return Err(backend_error(format!(
                "ner: the bundled CRF weights of `anno` did not load (the CRF found {:?} in \
                 {PROBE:?}, expected {PROBE_PERSON:?}); build anno with feature \
                 `bundled-crf-weights`",
                probe.iter().map(|e| e.text.as_str()).collect::<Vec<_>>()
            )));
        }
        let model = StackedNER::builder()
            .layer(RegexNER::new())
            .layer(HeuristicNER::new())
            .layer(crf)
            .strategy(ConflictStrategy::LongestSpan)
            .try_build()
            .map_err(|e| backend_error(format!("ner: {e}")))?;
        Ok(Self { model })
    }

    /// Every mention of `text` in order of position, with its label and key; mentions whose key
    /// is empty after normalisation are left out. A recogniser failure (none is known for
    /// these rule and CRF layers) is logged and yields no mention.
    pub fn mentions(&self, text: &str) -> Vec<Mention> {
        let found = match self.model.extract_entities(text, None) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("scorer: ner: recogniser failed, no entity kept: {e}");
                Vec::new()
            }
        };
        // Character spans covered by an entity, for the bare-year rule.
        let spans: Vec<(usize, usize)> = found.iter().map(|e| (e.start(), e.end())).collect();
        let mut mentions: Vec<(usize, Mention)> = found
            .iter()
            .filter_map(|e| {
                let key = normalise(&e.text)?;
                let label = e.entity_type.as_label().to_string();
                Some((e.start(), Mention { label, key }))
            })
            .collect();
        mentions.extend(
            bare_years(text)
                .filter(|&(start, end)| !spans.iter().any(|&(s, e)| start < e && s < end))
                .map(|(start, end)| {
                    let year: String = text.chars().skip(start).take(end - start).collect();
                    let mention = Mention {
                        label: "DATE".into(),
                        key: year,
                    };
                    (start, mention)
                }),
        );
        mentions.sort_by_key(|(start, _)| *start);
        mentions.into_iter().map(|(_, m)| m).collect()
    }
}

impl EntityExtractor for NerExtractor {
    fn name(&self) -> &'static str {
        "ner"
    }

    fn entities(&self, text: &str) -> HashSet<String> {
        self.mentions(text).into_iter().map(|m| m.key).collect()
    }
}

/// Character spans `[start, end)` of the words of `text` that are four ASCII digits from 1000
/// to 2099 (spaCy tags such bare years as DATE).
fn bare_years(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut chars_before = 0usize;
    let mut bytes_seen = 0usize;
    text.unicode_word_indices().filter_map(move |(byte, word)| {
        chars_before += text[bytes_seen..byte].chars().count();
        bytes_seen = byte;
        let is_year = word.len() == 4
            && word.bytes().all(|b| b.is_ascii_digit())
            && (word.starts_with('1') || word.starts_with("20"));
        is_year.then_some((chars_before, chars_before + 4))
    })
}

/// The key of an entity's surface text (rules in [`NerExtractor`]), `None` when nothing is left.
fn normalise(surface: &str) -> Option<String> {
    const PUNCT: &[char] = &[
        '.', ',', ';', ':', '!', '?', '"', '\'', '(', ')', '[', ']', '{', '}', '\u{201C}',
        '\u{201D}', '\u{00AB}', '\u{00BB}',
    ];
    let lowered: String = surface
        .nfkc()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\u{2019}' | '\u{2018}' | '\u{02BC}' => '\'',
            c => c,
        })
        .collect();
    let collapsed = lowered.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut key = collapsed.trim_matches(PUNCT);
    key = key.strip_prefix("the ").unwrap_or(key);
    key = key.strip_suffix("'s").unwrap_or(key);
    let key = key.trim_matches(PUNCT);
    (!key.is_empty()).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::entities::overlap;

    fn ner() -> NerExtractor {
        NerExtractor::new().unwrap()
    }

    fn m(label: &str, key: &str) -> Mention {
        Mention {
            label: label.into(),
            key: key.into(),
        }
    }

    #[test]
    fn normalise_follows_the_documented_rules() {
        assert_eq!(
            normalise("Sorbonne in Paris.").as_deref(),
            Some("sorbonne in paris")
        );
        assert_eq!(normalise("The  Sorbonne’s.").as_deref(), Some("sorbonne"));
        assert_eq!(normalise("Apple\nInc.").as_deref(), Some("apple inc"));
        assert_eq!(normalise("$5 million").as_deref(), Some("$5 million"));
        assert_eq!(normalise("12%").as_deref(), Some("12%"));
        assert_eq!(normalise(" ... "), None);
    }

    #[test]
    fn bare_years_are_char_spans() {
        let t = "Née in 1903, not 999 nor 2150 or 12345; é 2001.";
        let years: Vec<(usize, usize)> = bare_years(t).collect();
        assert_eq!(years, [(7, 11), (42, 46)]);
        assert_eq!(t.chars().skip(42).take(4).collect::<String>(), "2001");
    }

    #[test]
    fn finds_people_organisations_places_and_dates() {
        let found = ner().mentions(
            "Barack Obama was born in Honolulu, Hawaii, on August 4, 1961. \
             He worked for the University of Chicago and later moved to Washington.",
        );
        assert_eq!(
            found,
            [
                m("PER", "barack obama"),
                m("LOC", "honolulu, hawaii"),
                m("DATE", "august 4, 1961"),
                m("ORG", "university of chicago"),
                m("LOC", "washington"),
            ]
        );
        let found = ner().mentions(
            "Marie Curie won the Nobel Prize in 1903. It cost $5 million, about 12% of it.",
        );
        let keys: Vec<&str> = found.iter().map(|m| m.key.as_str()).collect();
        assert!(keys.contains(&"marie curie"), "{found:?}");
        assert!(found.contains(&m("DATE", "1903")), "{found:?}");
        assert!(found.contains(&m("MONEY", "$5 million")), "{found:?}");
        assert!(found.contains(&m("PERCENT", "12%")), "{found:?}");
    }

    #[test]
    fn score_of_hand_made_pair() {
        let n = ner();
        let q = n.entities("Which company did Steve Jobs found with Steve Wozniak in California?");
        let mut qk: Vec<&String> = q.iter().collect();
        qk.sort();
        assert_eq!(qk, ["california", "steve jobs", "steve wozniak"]);
        // Shares Steve Jobs and California (twice, counted once); not Steve Wozniak.
        let c = n.entities(
            "In 1976 Steve Jobs started Apple Inc. in California. Steve Jobs later \
             returned to California.",
        );
        assert_eq!(overlap(&c, &q), 2, "{c:?}");
        // Lower-case text has no entity: the recogniser keys on capitalisation.
        assert!(n.entities("which company did steve jobs found?").is_empty());
    }
}
