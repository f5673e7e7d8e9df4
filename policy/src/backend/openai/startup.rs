//! The start-up checks of the `openai` backend (see the parent module): every endpoint
//! serves `generator.openai.model` and tokenises [`TOKENIZER_PROBE`] as logo does; while no
//! endpoint answers, all are tried again with backoff.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{root_of, Endpoint, Failure, Health, OpenAi, ServerKind, TOKENIZER_PROBE};
use crate::error::{PolicyError, Result};

#[derive(Deserialize)]
struct ModelsResponse {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    /// `llamacpp`, `vllm`, `sglang`, ... (see [`ServerKind`]).
    #[serde(default)]
    owned_by: Option<String>,
}

#[derive(Deserialize)]
struct TokenizeResponse {
    tokens: Vec<u32>,
}

impl OpenAi {
    /// The start-up loop of [`OpenAi::connect`]: checks every endpoint of the config
    /// ([`Self::check_endpoint`] against the `expected` probe ids) and keeps those that pass;
    /// while none answers (not listening yet, 503 while a server loads its model, 429, 5xx)
    /// all are tried again with backoff until `unavailable_timeout_s`. Then every kept
    /// endpoint starts healthy.
    ///
    /// Errors: [`PolicyError::Config`] (`generator.openai.endpoints`): an endpoint failed a
    /// check for good, or none answered in time (each one's last failure is given).
    pub(super) fn admit_endpoints(&mut self, expected: &[u32]) -> Result<()> {
        let config_err = |message: String| PolicyError::Config {
            key: "generator.openai.endpoints".into(),
            message,
        };
        // Servers started with the job may still be loading (503) or not listening yet: until
        // one answers, every endpoint is tried again with backoff for `unavailable_timeout_s`.
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let mut unreachable = Vec::new();
            let mut retry_after = None;
            for url in &self.cfg.endpoints {
                let root = root_of(url);
                match self.check_endpoint(&root, expected) {
                    Ok(kind) => self.endpoints.push(Endpoint { root, kind }),
                    Err(Failure::Retry(why, after)) => {
                        unreachable.push(format!("{root}: {why}"));
                        retry_after = retry_after.or(after);
                    }
                    Err(Failure::Fatal(why)) => return Err(config_err(why)),
                }
            }
            if !self.endpoints.is_empty() {
                for why in &unreachable {
                    tracing::warn!("generator.openai: {why}; this endpoint is left out");
                }
                break;
            }
            if started.elapsed().as_secs_f64() >= self.cfg.unavailable_timeout_s {
                return Err(config_err(format!(
                    "no endpoint answered within unavailable_timeout_s = {} s: {}",
                    self.cfg.unavailable_timeout_s,
                    unreachable.join("; ")
                )));
            }
            let wait = self.backoff(attempt, retry_after);
            tracing::warn!(
                "generator.openai: no endpoint answers yet ({}); trying again in {:.1} s",
                unreachable.join("; "),
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
            attempt += 1;
        }
        let n = self.endpoints.len();
        *self
            .health
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = vec![
            Health {
                in_flight: 0,
                consecutive_failures: 0,
                out_until: None,
            };
            n
        ];
        Ok(())
    }

    /// The start-up checks of one endpoint (3 quick attempts when it does not answer); its
    /// kind when they pass.
    pub(super) fn check_endpoint(
        &self,
        root: &str,
        expected: &[u32],
    ) -> std::result::Result<ServerKind, Failure> {
        self.runtime.block_on(async {
            let mut last = None;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                match self.check_once(root, expected).await {
                    Err(Failure::Retry(why, _)) => last = Some(why),
                    other => return other,
                }
            }
            Err(Failure::Retry(last.unwrap_or_default(), None))
        })
    }

    /// One try of the checks: `GET /v1/models` lists the model (its `owned_by` gives the
    /// server's kind); `POST /tokenize` of [`TOKENIZER_PROBE`] gives `expected` (when
    /// `check_tokenizer`).
    async fn check_once(
        &self,
        root: &str,
        expected: &[u32],
    ) -> std::result::Result<ServerKind, Failure> {
        let what = format!("GET {root}/v1/models");
        let body = self
            .send(
                self.request(reqwest::Method::GET, format!("{root}/v1/models")),
                &what,
            )
            .await?;
        let models: ModelsResponse = serde_json::from_str(&body)
            .map_err(|e| Failure::Fatal(format!("{what}: not a model list ({e})")))?;
        let Some(served) = models.data.iter().find(|m| m.id == self.cfg.model) else {
            let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
            return Err(Failure::Fatal(format!(
                "{root} does not serve generator.openai.model {:?} (it serves {ids:?})",
                self.cfg.model
            )));
        };
        let kind = ServerKind::from_owned_by(served.owned_by.as_deref());
        if !self.cfg.check_tokenizer {
            return Ok(kind);
        }
        let what = format!("POST {root}/tokenize");
        let payload = serde_json::json!({
            "model": self.cfg.model,
            "content": TOKENIZER_PROBE,
            "prompt": TOKENIZER_PROBE,
            "add_special": false,
            "add_special_tokens": false,
            "parse_special": false,
        });
        let body = self
            .send(
                self.request(reqwest::Method::POST, format!("{root}/tokenize"))
                    .json(&payload),
                &what,
            )
            .await
            .map_err(|f| match f {
                Failure::Fatal(m) => Failure::Fatal(format!(
                    "{m} (cannot compare tokenizers; set generator.openai.check_tokenizer: \
                     false for a server without /tokenize)"
                )),
                retry => retry,
            })?;
        let got: TokenizeResponse = serde_json::from_str(&body)
            .map_err(|e| Failure::Fatal(format!("{what}: no token list ({e})")))?;
        if got.tokens != expected {
            let at = got
                .tokens
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.tokens.len().min(expected.len()));
            return Err(Failure::Fatal(format!(
                "{root} tokenises differently from logo's tokenizer (model.path / \
                 model.tokenizer): the probe {TOKENIZER_PROBE:?} gives {} ids there, {} here, \
                 first difference at id {at}",
                got.tokens.len(),
                expected.len()
            )));
        }
        Ok(kind)
    }
}
