//! The `openai` backend: any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp's
//! `llama-server`, TGI), reached with `reqwest` on a private `tokio` runtime.
//!
//! Protocol (OpenAI "Completions" API, `POST /v1/completions`; the prompt as a list of token
//! ids is accepted by vLLM, SGLang and llama-server):
//!
//! ```text
//! → {"model", "prompt": [ids], "max_tokens", "temperature", "top_p", "seed", "n": 1,
//!    "stream": false, "stop_token_ids": [ids]}
//!    + llama-server: "n_probs": 1; vLLM: "return_token_ids": true (see below)
//! ← {"model", "choices": [{"text", "finish_reason": "stop" | "length", ...}], "usage"}
//! ```
//!
//! Which token ended a completion ([`Completion::stop_token_id`], [`reported_stop_token`]):
//! the OpenAI API does not say, so each server's own report is read, by the kind of server
//! `GET /v1/models` names (`data[].owned_by`: `llamacpp`, `vllm`, `sglang`):
//!
//! - SGLang: `choices[].matched_stop`, the token id for every stop on a token (its
//!   `stop_token_ids`, the model's EOS ids; `FINISH_MATCHED_TOKEN(matched=last_token_id)` in
//!   `python/sglang/srt/managers/schedule_batch.py` `Req.check_finished`), a string for a stop
//!   string (logo sends none);
//! - vLLM: `choices[].stop_reason`, the token id when a `stop_token_ids` entry (which includes
//!   `generation_config.json`'s extra EOS ids) ended it, `null` when the tokenizer's primary
//!   EOS did (`vllm/v1/core/sched/utils.py` `check_stop`); for that case logo asks for
//!   `return_token_ids` (vLLM ≥ 0.10.2), whose `choices[].token_ids` keep the stop token last
//!   (`vllm/v1/engine/detokenizer.py` skips it only when decoding text);
//! - llama-server: neither field exists; it stops on any end-of-generation token of the GGUF
//!   (`llama_vocab_is_eog`, `tools/server/server-context.cpp` `process_token`), and with
//!   `n_probs: 1` its `/v1/completions` answer carries `choices[].logprobs.content[]` with the
//!   `id` of every generated token, the stop token last (`server-task.cpp`
//!   `to_json_oaicompat`, `probs_vector_to_json`); logo takes the last id when the list holds
//!   exactly `usage.completion_tokens` entries.
//!
//! A server that says `stop` but none of these (TGI, an unknown server, a stop string) leaves
//! the stop id unknown (`None`, a warning once): logo does not guess one of several possible
//! stop ids; the engine then treats the response like a cut one (no end id appended).
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
//!
//! Why this file is over 600 lines: one file per backend (as the engine has one per stage);
//! the request, the three servers' ways of naming the stop token, retries and the reply's
//! checks belong to one protocol and are read together.

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

/// The kind of server behind an endpoint (`GET /v1/models` `data[].owned_by` of the served
/// model), which decides the request fields that make it report the stop token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// llama.cpp's `llama-server` (`owned_by: "llamacpp"`): asked for `n_probs: 1`.
    LlamaCpp,
    /// vLLM (`owned_by: "vllm"`): asked for `return_token_ids: true`.
    Vllm,
    /// SGLang (`owned_by: "sglang"`) or any other server: no extra field.
    Other,
}

impl ServerKind {
    /// The kind `owned_by` names.
    fn from_owned_by(owned_by: Option<&str>) -> Self {
        match owned_by {
            Some("llamacpp") => ServerKind::LlamaCpp,
            Some("vllm") => ServerKind::Vllm,
            _ => ServerKind::Other,
        }
    }
}

/// One server.
#[derive(Debug)]
struct Endpoint {
    /// Base URL without a trailing `/` or `/v1`.
    root: String,
    /// What it is (see [`ServerKind`]).
    kind: ServerKind,
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
    /// Set once a `stop` without a stop id was warned about.
    warned_unidentified: std::sync::atomic::AtomicBool,
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
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// One `choices[]` entry; the server-specific fields are kept as JSON and read by
/// [`reported_stop_token`].
#[derive(Deserialize)]
struct Choice {
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
    /// vLLM: token id, stop string, or null.
    #[serde(default)]
    stop_reason: Option<serde_json::Value>,
    /// SGLang: token id, stop string, or null.
    #[serde(default)]
    matched_stop: Option<serde_json::Value>,
    /// vLLM with `return_token_ids`: the generated ids, stop token included.
    #[serde(default)]
    token_ids: Option<serde_json::Value>,
    /// llama-server with `n_probs`: `{"content": [{"id", ...}]}`.
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
}

/// The id of the token that ended a `stop` completion as the server reports it (see the
/// module doc for each server's protocol), from the first of: `matched_stop` (SGLang) or
/// `stop_reason` (vLLM) when it is a token id; the last of `token_ids` (vLLM
/// `return_token_ids`); the last `id` of `logprobs.content` (llama-server `n_probs`) when it
/// holds exactly `completion_tokens` entries (so the last entry is the last generated token).
/// `None` when the server does not say (a stop string in `matched_stop`/`stop_reason`, or no
/// such field): the caller must not make one up.
fn reported_stop_token(choice: &Choice, completion_tokens: Option<u64>) -> Option<u32> {
    use serde_json::Value;
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    for field in [&choice.matched_stop, &choice.stop_reason] {
        match field {
            Some(Value::Number(n)) => return n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(_)) => return None, // a stop string, not a token
            _ => {}
        }
    }
    if let Some(last) = choice
        .token_ids
        .as_ref()
        .and_then(Value::as_array)
        .and_then(|ids| ids.last())
    {
        return id(last);
    }
    let content = choice
        .logprobs
        .as_ref()
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array)?;
    if completion_tokens.is_some_and(|n| n == content.len() as u64) {
        return content.last().and_then(|t| t.get("id")).and_then(id);
    }
    None
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
            warned_unidentified: std::sync::atomic::AtomicBool::new(false),
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

    /// One completion request against endpoint `i`, with the fields that make its kind of
    /// server report the stop token (see the module doc).
    async fn attempt(
        &self,
        i: usize,
        payload: &serde_json::Value,
    ) -> std::result::Result<CompletionResponse, Failure> {
        let Endpoint { root, kind } = &self.endpoints[i];
        let what = format!("POST {root}/v1/completions");
        let mut payload = payload.clone();
        match kind {
            ServerKind::LlamaCpp => payload["n_probs"] = serde_json::json!(1),
            ServerKind::Vllm => payload["return_token_ids"] = serde_json::json!(true),
            ServerKind::Other => {}
        }
        let body = self
            .send(
                self.request(reqwest::Method::POST, format!("{root}/v1/completions"))
                    .json(&payload),
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
    /// stays text). The stop id is the one the server reports ([`reported_stop_token`]), or
    /// `None` (warned once) when it does not say. Errors: [`PolicyError::Model`] naming the
    /// endpoint (refused request, unreadable answer, an unknown finish reason, a reported stop
    /// id outside logo's vocabulary, no endpoint answering for `unavailable_timeout_s`);
    /// [`PolicyError::Tokenizer`].
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
        let stop_token_id = match finish_reason {
            FinishReason::Length => None,
            FinishReason::Stop => {
                let completion_tokens = resp.usage.as_ref().and_then(|u| u.completion_tokens);
                let id = reported_stop_token(&choice, completion_tokens);
                let vocab = self.tokenizer.get_vocab_size(true);
                if let Some(bad) = id.filter(|&t| t as usize >= vocab) {
                    return Err(PolicyError::Model(format!(
                        "generator.openai: the server reports stop token {bad}, outside logo's \
                         vocabulary of {vocab} ids (model.tokenizer differs from the served \
                         model's)"
                    )));
                }
                if id.is_none() && !self.warned_unidentified.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "generator.openai: the server ended a completion with finish_reason \
                         stop but did not say which stop token (no matched_stop, stop_reason \
                         id, token_ids or logprobs ids); such responses get no end id and are \
                         treated as cut (generator.on_length)"
                    );
                }
                id
            }
        };
        let token_ids = encode_text(&self.tokenizer, &choice.text)?;
        Ok(Completion {
            token_ids,
            text: choice.text,
            finish_reason,
            stop_token_id,
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

    /// The stop id of the first choice of a recorded `/v1/completions` answer.
    fn stop_of(json: &str) -> Option<u32> {
        let r: CompletionResponse = serde_json::from_str(json).unwrap();
        let n = r.usage.as_ref().and_then(|u| u.completion_tokens);
        reported_stop_token(&r.choices[0], n)
    }

    /// vLLM's `CompletionResponseChoice` (`vllm/entrypoints/openai/protocol.py`; the values a
    /// Qwen2.5 server gives): `stop_reason` is the id of a `stop_token_ids` entry (151645
    /// `<|im_end|>`); `null` for the primary EOS (151643 `<|endoftext|>`), which
    /// `return_token_ids` then shows last in `token_ids`; a string for a stop string.
    #[test]
    fn vllm_stop_reason_and_token_ids_give_the_stop_id() {
        let by_stop_token_id = r#"{"id":"cmpl-1","object":"text_completion","created":1,
            "model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,"text":" Paris.",
            "logprobs":null,"finish_reason":"stop","stop_reason":151645,
            "prompt_logprobs":null,"prompt_token_ids":null,"token_ids":[12095,13,151645]}],
            "usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3}}"#;
        assert_eq!(stop_of(by_stop_token_id), Some(151645));
        let by_eos = r#"{"model":"q","choices":[{"index":0,"text":" Paris.","logprobs":null,
            "finish_reason":"stop","stop_reason":null,"token_ids":[12095,13,151643]}],
            "usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3}}"#;
        assert_eq!(stop_of(by_eos), Some(151643));
        // A vLLM before return_token_ids: an EOS stop it does not name.
        let old = r#"{"model":"q","choices":[{"index":0,"text":" Paris.","logprobs":null,
            "finish_reason":"stop","stop_reason":null}]}"#;
        assert_eq!(stop_of(old), None);
        let by_string = r#"{"model":"q","choices":[{"index":0,"text":" Paris.",
            "finish_reason":"stop","stop_reason":"\n\n","token_ids":[12095,13,271]}]}"#;
        assert_eq!(stop_of(by_string), None);
    }

    /// SGLang's `CompletionResponseChoice` (`python/sglang/srt/entrypoints/openai/protocol.py`):
    /// `matched_stop` is the token id for every stop on a token (EOS included), a string for
    /// a stop string.
    #[test]
    fn sglang_matched_stop_gives_the_stop_id() {
        let by_token = r#"{"id":"5f1","object":"text_completion","created":1,
            "model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,
            "text":" Paris.","logprobs":null,"finish_reason":"stop","matched_stop":128009}],
            "usage":{"prompt_tokens":20,"total_tokens":23,"completion_tokens":3,
            "prompt_tokens_details":null}}"#;
        assert_eq!(stop_of(by_token), Some(128009));
        let by_string = r####"{"model":"m","choices":[{"index":0,"text":" Paris.",
            "finish_reason":"stop","matched_stop":"###"}]}"####;
        assert_eq!(stop_of(by_string), None);
        let cut = r#"{"model":"m","choices":[{"index":0,"text":" Paris is",
            "finish_reason":"length","matched_stop":null}]}"#;
        assert_eq!(stop_of(cut), None);
    }

    /// llama-server's `/v1/completions` with `n_probs: 1`, recorded from the embedded
    /// SmolLM2 GGUF (`top_logprobs` and `bytes` dropped): the last `logprobs.content` id is
    /// the stop token (2, `<|im_end|>`, empty text), taken only when the list holds
    /// `usage.completion_tokens` entries.
    #[test]
    fn llama_server_logprobs_give_the_stop_id() {
        let recorded = r#"{"choices": [{"text": "The capital of France is Paris.", "index": 0,
            "logprobs": {"content": [{"id": 504, "token": "The", "logprob": -0.58},
            {"id": 3575, "token": " capital", "logprob": -0.005},
            {"id": 282, "token": " of", "logprob": -0.004},
            {"id": 4649, "token": " France", "logprob": -0.008},
            {"id": 314, "token": " is", "logprob": -0.013},
            {"id": 7042, "token": " Paris", "logprob": -0.036},
            {"id": 30, "token": ".", "logprob": -0.207},
            {"id": 2, "token": "", "logprob": -0.380}]}, "finish_reason": "stop"}],
            "created": 1796693859, "model": "smollm2", "system_fingerprint": "b0-unknown",
            "object": "text_completion", "usage": {"completion_tokens": 8,
            "prompt_tokens": 16, "total_tokens": 24,
            "prompt_tokens_details": {"cached_tokens": 15}}, "id": "chatcmpl-io7m"}"#;
        assert_eq!(stop_of(recorded), Some(2));
        // Without n_probs (logprobs null), or a list that is not every generated token.
        let bare = r#"{"choices": [{"text": "Paris.", "index": 0, "logprobs": null,
            "finish_reason": "stop"}], "model": "smollm2",
            "usage": {"completion_tokens": 3}}"#;
        assert_eq!(stop_of(bare), None);
        let short = r#"{"choices": [{"text": "Paris.", "index": 0, "logprobs": {"content":
            [{"id": 7042}, {"id": 30}]}, "finish_reason": "stop"}], "model": "smollm2",
            "usage": {"completion_tokens": 3}}"#;
        assert_eq!(stop_of(short), None);
        assert_eq!(
            ServerKind::from_owned_by(Some("llamacpp")),
            ServerKind::LlamaCpp
        );
        assert_eq!(ServerKind::from_owned_by(Some("vllm")), ServerKind::Vllm);
        assert_eq!(ServerKind::from_owned_by(Some("sglang")), ServerKind::Other);
        assert_eq!(ServerKind::from_owned_by(None), ServerKind::Other);
    }

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
