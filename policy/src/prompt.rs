//! The response prompt: the system message and the user-message template of the responses the
//! policy writes for LOGO's preference data (paper 3.2.2: `P = π_θ(Q, C)`), read from a YAML
//! file the pipeline names (`generator.prompt`), with a default compiled in
//! (`policy/prompts/response.yaml`).
//!
//! Format: `{system: <text>, user: <text with {context} and {question} once each>}`; other
//! keys are errors. `{context}` stands for the context chunks' text concatenated,
//! `{question}` for the question; every other character, braces included, is literal. The
//! question is put in after the template is split, so a question that says `{context}` stays
//! text.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// The default prompt file's text (`policy/prompts/response.yaml`).
pub const DEFAULT_RESPONSE_PROMPT: &str = include_str!("../prompts/response.yaml");

/// The pipeline key that names a prompt file (in errors).
pub const PROMPT_KEY: &str = "generator.prompt";

/// The placeholder of the context chunks in [`ResponsePrompt::user`].
pub const CONTEXT: &str = "{context}";
/// The placeholder of the question in [`ResponsePrompt::user`].
pub const QUESTION: &str = "{question}";

/// A response prompt (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsePrompt {
    /// The system message; empty leaves it out.
    pub system: String,
    /// The user message, holding [`CONTEXT`] and [`QUESTION`] once each.
    pub user: String,
}

impl Default for ResponsePrompt {
    /// The compiled-in default ([`DEFAULT_RESPONSE_PROMPT`]).
    fn default() -> Self {
        Self::from_yaml(DEFAULT_RESPONSE_PROMPT, "the default response prompt")
            .expect("the default response prompt is valid (tested)")
    }
}

impl ResponsePrompt {
    /// Reads and checks a prompt file. Errors: [`PolicyError::Io`] (unreadable),
    /// [`PolicyError::Config`] with key [`PROMPT_KEY`], naming the file and the file's key
    /// (not YAML, unknown or missing key, a placeholder missing or repeated).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and checks prompt YAML; `origin` names it in errors. Errors: as
    /// [`ResponsePrompt::from_file`].
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let err = |message: String| PolicyError::Config {
            key: PROMPT_KEY.into(),
            message: format!("{origin}: {message}"),
        };
        let p: ResponsePrompt = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        p.check().map_err(err)?;
        Ok(p)
    }

    /// Checks that `user` holds [`CONTEXT`] and [`QUESTION`] exactly once each. Errors: a
    /// message naming the key and the placeholder.
    pub fn check(&self) -> std::result::Result<(), String> {
        for placeholder in [CONTEXT, QUESTION] {
            let n = self.user.matches(placeholder).count();
            if n != 1 {
                return Err(format!(
                    "key user: must hold {placeholder} exactly once, holds it {n} times"
                ));
            }
        }
        Ok(())
    }

    /// The user message around the context for `question`: `(before, after)` with
    /// `user = before + {context} + after` and [`QUESTION`] replaced by `question`.
    pub fn around_context(&self, question: &str) -> (String, String) {
        let (before, after) = self
            .user
            .split_once(CONTEXT)
            .unwrap_or((self.user.as_str(), ""));
        let fill = |s: &str| match s.split_once(QUESTION) {
            Some((a, b)) => format!("{a}{question}{b}"),
            None => s.to_string(),
        };
        (fill(before), fill(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_parses_and_asks_for_a_short_answer_from_the_context() {
        let p = ResponsePrompt::default();
        assert!(p.system.contains("only the given context"), "{p:?}");
        assert!(p.system.contains("short"), "{p:?}");
        assert_eq!(p.user, "{context}\n\nQuestion: {question}");
        assert_eq!(
            p.around_context("Where?"),
            (String::new(), "\n\nQuestion: Where?".to_string())
        );
    }

    #[test]
    fn placeholders_split_the_user_message_and_a_question_stays_text() {
        let p = ResponsePrompt {
            system: String::new(),
            user: "Q: {question} {braces}\n<doc>{context}</doc>".into(),
        };
        assert_eq!(
            p.around_context("why {context}?"),
            (
                "Q: why {context}? {braces}\n<doc>".to_string(),
                "</doc>".to_string()
            )
        );
    }

    #[test]
    fn errors_name_the_origin_the_key_and_the_placeholder() {
        let e = ResponsePrompt::from_yaml("system: s\nuser: \"{context} only\"\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config key generator.prompt: p.yaml: "),
            "{e}"
        );
        assert!(e.contains("key user") && e.contains("{question}"), "{e}");
        assert!(e.contains("0 times"), "{e}");
        let e = ResponsePrompt::from_yaml(
            "system: s\nuser: \"{context}{context}{question}\"\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("{context} exactly once, holds it 2 times"),
            "{e}"
        );
        let e = ResponsePrompt::from_yaml("system: s\nuser: u\nextra: 1\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yaml") && e.contains("extra"), "{e}");
        let e = ResponsePrompt::from_file(Path::new("/nonexistent/p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/p.yaml"), "{e}");
    }
}
