//! `generator.openai`: the OpenAI-compatible servers a run generates on (vLLM, SGLang,
//! llama.cpp's `llama-server`, TGI), with the retry, rotation and time-out settings of
//! [`crate::backend::openai`], and their range checks.

use serde::{Deserialize, Serialize};

use super::default_true;
use crate::error::{PolicyError, Result};

/// An OpenAI-compatible completions server (or several serving the same model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URLs, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted); requests are
    /// balanced across them (least requests in flight first).
    pub endpoints: Vec<String>,
    /// The model the servers must serve (an id listed by `GET /v1/models`); sent as `model`.
    pub model: String,
    /// Name of the environment variable holding the API key (sent as `Authorization: Bearer`);
    /// the key itself is never logged, printed or written.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight across all endpoints; default 64 (enough to fill a vLLM batch).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one request, seconds; default 600.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: f64,
    /// First retry delay after a 429, a 5xx, a timeout or a connection error, seconds; doubled
    /// each retry (with jitter) up to `backoff_max_s`; a `Retry-After` header wins. Default 0.5.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    /// Longest retry delay, seconds; default 30.
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// Consecutive failures after which an endpoint leaves the rotation; default 3.
    #[serde(default = "default_failures_before_removal")]
    pub failures_before_removal: u32,
    /// Seconds an endpoint stays out of the rotation before it is tried again; default 10.
    #[serde(default = "default_probe_interval_s")]
    pub probe_interval_s: f64,
    /// The run fails when no endpoint has answered for this long, seconds; default 300.
    #[serde(default = "default_unavailable_timeout_s")]
    pub unavailable_timeout_s: f64,
    /// Check at start-up that the server's `/tokenize` agrees with logo's tokenizer on a probe
    /// string (llama-server, vLLM and SGLang have `/tokenize`); default true.
    #[serde(default = "default_true")]
    pub check_tokenizer: bool,
    /// Positions of the served model (prompt + response); default: `llama.context_length`
    /// of the GGUF at `model.path`.
    #[serde(default)]
    pub context_length: Option<usize>,
}

fn default_max_in_flight() -> usize {
    64
}
fn default_request_timeout_s() -> f64 {
    600.0
}
fn default_backoff_initial_s() -> f64 {
    0.5
}
fn default_backoff_max_s() -> f64 {
    30.0
}
fn default_failures_before_removal() -> u32 {
    3
}
fn default_probe_interval_s() -> f64 {
    10.0
}
fn default_unavailable_timeout_s() -> f64 {
    300.0
}

impl OpenAiConfig {
    /// Checks the endpoints (non-empty, `http://` or `https://`) and every range.
    /// Errors: [`PolicyError::Config`] naming the `generator.openai.*` key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(PolicyError::Config {
                key: format!("generator.openai.{key}"),
                message,
            })
        };
        if self.endpoints.is_empty() {
            return bad("endpoints", "must list at least one base URL".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad(
                    &format!("endpoints[{i}]"),
                    format!("must start with http:// or https:// (got {e:?})"),
                );
            }
        }
        if self.model.trim().is_empty() {
            return bad("model", "must name the served model".into());
        }
        if !(1..=4096).contains(&self.max_in_flight) {
            return bad(
                "max_in_flight",
                format!("must be in 1..=4096 (got {})", self.max_in_flight),
            );
        }
        for (key, v) in [
            ("request_timeout_s", self.request_timeout_s),
            ("backoff_initial_s", self.backoff_initial_s),
            ("backoff_max_s", self.backoff_max_s),
            ("probe_interval_s", self.probe_interval_s),
            ("unavailable_timeout_s", self.unavailable_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(
                    key,
                    format!("must be a positive number of seconds (got {v})"),
                );
            }
        }
        if self.failures_before_removal == 0 {
            return bad("failures_before_removal", "must be >= 1 (got 0)".into());
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() {
                return bad("api_key_env", "must name an environment variable".into());
            }
        }
        Ok(())
    }
}
