//! The `openai` backend: any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp's
//! `llama-server`, TGI), reached with `reqwest` on a private `tokio` runtime.
//!
//! Protocol (OpenAI "Completions" API, `POST /v1/completions`; the prompt as a list of token
//! ids is accepted by vLLM, SGLang and llama-server):
//!
//! ```text
//! → {"model", "prompt": [ids], "max_tokens", "temperature", "top_p", "seed", "n": 1,
//!    "stream": false, "stop_token_ids": [ids]}
//! ← {"model", "choices": [{"text", "finish_reason": "stop" | "length"}]}
//! ```
//!
//! Start-up checks ([`OpenAi::connect`]): `GET /v1/models` lists `generator.openai.model`, and
//! `POST /tokenize` (llama-server and vLLM; `parse_special: false`) of [`TOKENIZER_PROBE`]
//! gives logo's ids. Failures: 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff and jitter (a `Retry-After` header wins); an endpoint failing
//! `failures_before_removal` times in a row leaves the rotation for `probe_interval_s`, then
//! takes requests again (the probe); the run fails only when a request has found no endpoint
//! answering for `unavailable_timeout_s`. Other 4xx (bad request, wrong API key) fail at once.
//!
//! The API key (from the variable `generator.openai.api_key_env`) goes only into the
//! `Authorization: Bearer` header: it is not in `Debug`, in `describe()`, or in any error (a
//! server's error body is redacted before it is quoted).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokenizers::Tokenizer;

use super::{Completion, FinishReason, GenerationBackend};
use crate::config::OpenAiConfig;
use crate::error::{PolicyError, Result};
use crate::model::GenerateOptions;
use crate::tokenizer::encode_text;

/// The string whose ids logo and the server must agree on at start-up: words, digits (split
/// one by one by some tokenizers), punctuation, non-ASCII letters and whitespace runs, no
/// control-token text (servers differ in whether they parse it).
pub const TOKENIZER_PROBE: &str =
    "LOGO tokenizer probe: The quick brown fox jumps over 13 lazy dogs in 2024, naïve café \
     — 東京.\n  Indented line\twith a tab.";

/// One server.
#[derive(Debug)]
struct Endpoint {
    /// Base URL without a trailing `/` or `/v1`.
    root: String,
}

/// Mutable health of one endpoint.
#[derive(Debug, Clone)]
struct Health {
    in_flight: usize,
    consecutive_failures: u32,
    out_until: Option<Instant>,
}

/// An OpenAI-compatible server pool as a [`GenerationBackend`] (see the module doc).
pub struct OpenAi {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    endpoints: Vec<Endpoint>,
    health: Mutex<Vec<Health>>,
    last_ok: Mutex<Instant>,
    turn: AtomicUsize,
    api_key: Option<String>,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    cfg: OpenAiConfig,
    max_positions: usize,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("endpoints", &self.endpoints)
            .field("model", &self.cfg.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// How one attempt failed.
enum Failure {
    /// Worth retrying elsewhere or later: 429, 5xx, timeout, connection error. Carries a
    /// server-requested delay (`Retry-After`, seconds).
    Retry(String, Option<f64>),
    /// Not worth retrying (4xx other than 429, an unreadable answer).
    Fatal(String),
}

#[derive(Deserialize)]
struct CompletionResponse {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// `url` without a trailing `/` and without a trailing `/v1`.
fn root_of(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

impl OpenAi {
    /// Connects to every endpoint of `cfg` and runs the start-up checks: `GET /v1/models`
    /// lists `cfg.model`, and (`cfg.check_tokenizer`) `/tokenize` of [`TOKENIZER_PROBE`] gives
    /// the ids of logo's `tokenizer`. An endpoint that does not answer at all is left out with
    /// a warning; the others must pass. While no endpoint answers (not listening yet, 503
    /// while a server loads its model, 429, 5xx) all are tried again with backoff until
    /// `cfg.unavailable_timeout_s`. `stop_ids` are sent as `stop_token_ids` (vLLM,
    /// SGLang; servers that stop on the model's end-of-generation tokens ignore it), and
    /// `max_positions` is the served model's context (tokens).
    ///
    /// Errors: [`PolicyError::Config`] naming the endpoint: the API key variable is unset, the
    /// key is rejected (401/403), the model is not served, the tokenizers disagree, or no
    /// endpoint answers.
    pub fn connect(
        cfg: &OpenAiConfig,
        tokenizer: Tokenizer,
        stop_ids: Vec<u32>,
        max_positions: usize,
    ) -> Result<Self> {
        let config_err = |key: &str, message: String| PolicyError::Config {
            key: format!("generator.openai.{key}"),
            message,
        };
        let api_key = match &cfg.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    return Err(config_err(
                        "api_key_env",
                        format!("the environment variable {var} is not set (or empty)"),
                    ))
                }
            },
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("logo-http")
            .enable_all()
            .build()
            .map_err(|e| PolicyError::Internal(format!("starting the HTTP runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.request_timeout_s))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(cfg.max_in_flight)
            .build()
            .map_err(|e| PolicyError::Internal(format!("building the HTTP client: {e}")))?;
        let mut backend = Self {
            runtime,
            client,
            endpoints: Vec::new(),
            health: Mutex::new(Vec::new()),
            last_ok: Mutex::new(Instant::now()),
            turn: AtomicUsize::new(0),
            api_key,
            tokenizer,
            stop_ids,
            cfg: cfg.clone(),
            max_positions,
        };
        let expected = if cfg.check_tokenizer {
            encode_text(&backend.tokenizer, TOKENIZER_PROBE)?
        } else {
            Vec::new()
        };
        backend.admit_endpoints(&expected)?;
        Ok(backend)
    }

    /// Posts a completion `payload` until an endpoint answers it: picks an endpoint
    /// ([`Self::pick`]), retries 429/5xx/timeouts with backoff, and waits for the probe while
    /// every endpoint is out of the rotation. Returns the answer and the number of retries.
    ///
    /// Errors: [`PolicyError::Model`]: a fatal answer (4xx other than 429, unreadable), or no
    /// endpoint answered for `unavailable_timeout_s` (counted from the later of the first
    /// failure and the last success of any request).
    async fn post_with_retries(
        &self,
        payload: &serde_json::Value,
    ) -> Result<(CompletionResponse, u32)> {
        let timeout = Duration::from_secs_f64(self.cfg.unavailable_timeout_s);
        let mut retries = 0u32;
        let mut failing_since: Option<Instant> = None;
        loop {
            let outcome = match self.pick() {
                Ok(i) => {
                    let r = self.attempt(i, payload).await;
                    self.done(i, !matches!(r, Err(Failure::Retry(..))));
                    r
                }
                Err(back_at) => {
                    // Every endpoint is out of the rotation: wait for the first probe.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let last_ok = *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner);
                    if since.max(last_ok).elapsed() > timeout {
                        return Err(PolicyError::Model(format!(
                            "generator.openai: no endpoint answered for {} s \
                             (generator.openai.unavailable_timeout_s); every endpoint is \
                             out of the rotation",
                            self.cfg.unavailable_timeout_s
                        )));
                    }
                    let wait = back_at.saturating_duration_since(Instant::now());
                    tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                    continue;
                }
            };
            match outcome {
                Ok(r) => return Ok((r, retries)),
                Err(Failure::Fatal(m)) => return Err(PolicyError::Model(m)),
                Err(Failure::Retry(why, after)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let last_ok = *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner);
                    if since.max(last_ok).elapsed() > timeout {
                        return Err(PolicyError::Model(format!(
                            "generator.openai: no endpoint answered for {} s \
                             (generator.openai.unavailable_timeout_s); last error: {why}",
                            self.cfg.unavailable_timeout_s
                        )));
                    }
                    tracing::debug!("generator.openai: retrying after {why}");
                    tokio::time::sleep(self.backoff(retries, after)).await;
                    retries += 1;
                }
            }
        }
    }

    /// Replaces every occurrence of the API key in `text` (a server's error body) and cuts
    /// it to 300 characters.
    fn redact(&self, text: &str) -> String {
        let mut t = match &self.api_key {
            Some(k) => text.replace(k.as_str(), "<redacted>"),
            None => text.to_string(),
        };
        if t.chars().count() > 300 {
            t = t.chars().take(300).collect::<String>() + "…";
        }
        t
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends one request; `Ok(body)` on 2xx, else the failure class.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> std::result::Result<String, Failure> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(Failure::Retry(format!("{what}: {}", error_chain(&e)), None)),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => return Err(Failure::Retry(format!("{what}: {}", error_chain(&e)), None)),
        };
        if status.is_success() {
            return Ok(body);
        }
        let msg = format!("{what}: HTTP {status}: {}", self.redact(body.trim()));
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Failure::Retry(msg, retry_after));
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            let hint = match &self.cfg.api_key_env {
                Some(var) => format!("the server rejected the API key in ${var}"),
                None => "the server wants an API key: set generator.openai.api_key_env".into(),
            };
            return Err(Failure::Fatal(format!("{msg} ({hint})")));
        }
        Err(Failure::Fatal(msg))
    }

    /// The endpoint to use now (least requests in flight among those in the rotation, ties
    /// taken in turn), or when the next one comes back.
    fn pick(&self) -> std::result::Result<usize, Instant> {
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let n = health.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| health[i].out_until.is_none_or(|t| t <= now))
            .min_by_key(|&i| health[i].in_flight);
        match best {
            Some(i) => {
                health[i].in_flight += 1;
                Ok(i)
            }
            None => Err(health
                .iter()
                .filter_map(|h| h.out_until)
                .min()
                .unwrap_or(now)),
        }
    }

    /// Records the outcome of a request to endpoint `i`.
    fn done(&self, i: usize, ok: bool) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let h = &mut health[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        if ok {
            h.consecutive_failures = 0;
            h.out_until = None;
            drop(health);
            *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        } else {
            h.consecutive_failures += 1;
            if h.consecutive_failures >= self.cfg.failures_before_removal {
                h.out_until =
                    Some(Instant::now() + Duration::from_secs_f64(self.cfg.probe_interval_s));
                tracing::warn!(
                    "generator.openai: {} failed {} times in a row; out of the rotation for {} s",
                    self.endpoints[i].root,
                    h.consecutive_failures,
                    self.cfg.probe_interval_s
                );
            }
        }
    }

    /// Delay before retry `attempt` (0-based): `backoff_initial_s × 2^attempt`, capped at
    /// `backoff_max_s`, times a jitter in [0.5, 1); a server's `Retry-After` wins.
    fn backoff(&self, attempt: u32, retry_after: Option<f64>) -> Duration {
        let secs = match retry_after {
            Some(s) if s.is_finite() && s >= 0.0 => s.min(self.cfg.unavailable_timeout_s),
            _ => {
                let base = self.cfg.backoff_initial_s * 2f64.powi(attempt.min(30) as i32);
                base.min(self.cfg.backoff_max_s) * (0.5 + 0.5 * rand::random::<f64>())
            }
        };
        Duration::from_secs_f64(secs)
    }

    /// One completion request against endpoint `i`.
    async fn attempt(
        &self,
        i: usize,
        payload: &serde_json::Value,
    ) -> std::result::Result<CompletionResponse, Failure> {
        let root = &self.endpoints[i].root;
        let what = format!("POST {root}/v1/completions");
        let body = self
            .send(
                self.request(reqwest::Method::POST, format!("{root}/v1/completions"))
                    .json(payload),
                &what,
            )
            .await?;
        serde_json::from_str(&body).map_err(|e| {
            Failure::Fatal(format!(
                "{what}: not a completion ({e}): {}",
                self.redact(&body)
            ))
        })
    }
}

/// `e` with its sources (reqwest's top-level message hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl GenerationBackend for OpenAi {
    /// Sends the completion request, retrying as the module doc says, and re-encodes the
    /// returned text with logo's tokenizer (as text: a control-token string the model wrote
    /// stays text). Errors: [`PolicyError::Model`] naming the endpoint (refused request,
    /// unreadable answer, an unknown finish reason, no endpoint answering for
    /// `unavailable_timeout_s`); [`PolicyError::Tokenizer`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Completion> {
        if prompt_ids.is_empty() {
            return Err(PolicyError::Model("generate: empty prompt".into()));
        }
        let mut payload = serde_json::json!({
            "model": self.cfg.model,
            "prompt": prompt_ids,
            "max_tokens": opts.max_new_tokens,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "seed": opts.seed,
            "n": 1,
            "stream": false,
        });
        if !self.stop_ids.is_empty() {
            payload["stop_token_ids"] = serde_json::json!(self.stop_ids);
        }
        let (resp, retries) = self.runtime.block_on(self.post_with_retries(&payload))?;
        let choice = resp.choices.into_iter().next().ok_or_else(|| {
            PolicyError::Model("generator.openai: a completion without choices".into())
        })?;
        let finish_reason = match choice.finish_reason.as_deref() {
            Some("stop") | Some("eos_token") | Some("stop_sequence") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            other => {
                return Err(PolicyError::Model(format!(
                    "generator.openai: unknown finish_reason {other:?}"
                )))
            }
        };
        let token_ids = encode_text(&self.tokenizer, &choice.text)?;
        Ok(Completion {
            token_ids,
            text: choice.text,
            finish_reason,
            model: resp.model.unwrap_or_else(|| self.cfg.model.clone()),
            retries,
        })
    }

    fn name(&self) -> &str {
        &self.cfg.model
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn max_in_flight(&self) -> usize {
        self.cfg.max_in_flight
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "openai",
            "endpoints": self.endpoints.iter().map(|e| e.root.as_str()).collect::<Vec<_>>(),
            "model": self.cfg.model,
        })
    }

    /// The prompts in groups of `max_in_flight`, each request of a group on its own thread.
    /// Errors: the first request's that failed.
    fn complete_group(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
    ) -> Result<Vec<Completion>> {
        let mut out = Vec::with_capacity(prompts.len());
        for batch in prompts.chunks(self.max_in_flight().max(1)) {
            let done: Vec<Result<Completion>> = std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|p| scope.spawn(move || self.complete(p, opts)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("request thread"))
                    .collect()
            });
            for c in done {
                out.push(c?);
            }
        }
        Ok(out)
    }
}

mod startup;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_roots_drop_a_trailing_slash_and_v1() {
        assert_eq!(root_of("http://h:8000"), "http://h:8000");
        assert_eq!(root_of("http://h:8000/"), "http://h:8000");
        assert_eq!(root_of("http://h:8000/v1"), "http://h:8000");
        assert_eq!(root_of("https://h/api/v1/"), "https://h/api");
    }

    #[test]
    fn nothing_listening_is_a_config_error_naming_the_endpoint() {
        // A port that was just free: connection refused on 127.0.0.1.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg: OpenAiConfig = serde_yaml::from_str(&format!(
            "{{endpoints: [\"http://127.0.0.1:{port}\"], model: m, api_key_env: LOGO_UNIT_KEY, \
             check_tokenizer: false}}"
        ))
        .unwrap();
        let tok = Tokenizer::new(tokenizers::models::bpe::BPE::default());
        std::env::remove_var("LOGO_UNIT_KEY");
        let e = OpenAi::connect(&cfg, tok.clone(), vec![], 8192).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key generator.openai.api_key_env: the environment variable LOGO_UNIT_KEY \
             is not set (or empty)"
        );
        // Tried again with backoff (0.1 s, 0.2 s, ...) until the 1 s are over.
        let cfg = OpenAiConfig {
            api_key_env: None,
            backoff_initial_s: 0.1,
            unavailable_timeout_s: 1.0,
            ..cfg
        };
        let start = Instant::now();
        let e = OpenAi::connect(&cfg, tok, vec![], 8192)
            .unwrap_err()
            .to_string();
        let waited = start.elapsed().as_secs_f64();
        assert!(waited >= 1.0, "gave up after {waited} s");
        assert!(
            e.starts_with(&format!(
                "config key generator.openai.endpoints: no endpoint answered within \
                 unavailable_timeout_s = 1 s: \
                 http://127.0.0.1:{port}: GET http://127.0.0.1:{port}/v1/models: "
            )),
            "{e}"
        );
    }
}
