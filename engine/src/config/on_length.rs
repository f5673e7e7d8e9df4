//! `generator.on_length`: what becomes of a response cut at `max_new_tokens`, per role.

use serde::{Deserialize, Serialize};

/// What to do with a response that hit `max_new_tokens` (finish reason `length`), per role:
/// `generator.on_length: {chosen: regenerate, rejected: keep}` (the default). A single value
/// (`on_length: regenerate`) sets both roles.
///
/// Why the roles differ: the chosen response's tokens are pushed up (the SFT term and the
/// preference term), so a cut one closed with an end of turn would teach the model to stop
/// mid-sentence; `keep` is refused for it. A dis-preferred response is only pushed down through
/// its mean log-probability (paper Eq. 2): a cut one, kept as written with no end of turn, is
/// still a response of the same error pattern, and regenerating it only costs generation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OnLength {
    /// For the preferred response: `regenerate` (default) or `skip`.
    pub chosen: LengthAction,
    /// For each dis-preferred response: `keep` (default), `regenerate` or `skip`.
    pub rejected: LengthAction,
}

impl Default for OnLength {
    fn default() -> Self {
        OnLength {
            chosen: LengthAction::Regenerate,
            rejected: LengthAction::Keep,
        }
    }
}

/// One role's rule for a cut response (see [`OnLength`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthAction {
    /// Skip the sample (counted as `generator: response hit max_new_tokens`).
    Skip,
    /// Regenerate with a new derived seed, up to `max_regenerations` times, then skip.
    Regenerate,
    /// Keep the cut response as written: its ids without an end of turn, finish reason
    /// `length` (dis-preferred responses only).
    Keep,
}

impl<'de> Deserialize<'de> for OnLength {
    /// A single [`LengthAction`] for both roles, or a map with the keys `chosen` and
    /// `rejected` (each optional, defaults as [`OnLength::default`]); unknown keys are errors.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Both(LengthAction),
            Roles(Roles),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Roles {
            chosen: Option<LengthAction>,
            rejected: Option<LengthAction>,
        }
        let value = serde_yaml::Value::deserialize(d)?;
        let raw = Raw::deserialize(value).map_err(|_| {
            serde::de::Error::custom(
                "on_length: expected skip, regenerate, keep, or a map {chosen: \
                 skip|regenerate, rejected: skip|regenerate|keep}",
            )
        })?;
        let default = OnLength::default();
        Ok(match raw {
            Raw::Both(action) => OnLength {
                chosen: action,
                rejected: action,
            },
            Raw::Roles(r) => OnLength {
                chosen: r.chosen.unwrap_or(default.chosen),
                rejected: r.rejected.unwrap_or(default.rejected),
            },
        })
    }
}
