//! The policy's settings, as the engine's `pipeline.yaml` spells them under `model:` and
//! `generator:` (and `logo-eval` builds them from its flags): which model is loaded and how
//! ([`ModelConfig`]), which backend generates ([`BackendKind`]) and the OpenAI-compatible
//! servers of `backend: openai` ([`OpenAiConfig`]). Range checks name the pipeline key
//! (`generator.openai.max_in_flight`), the one place a policy setting is validated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod openai;

pub use openai::OpenAiConfig;

/// The policy model π_θ used by question generation and the generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A GGUF file of a Llama-family model (the embedded default is SmolLM2-135M-Instruct), or
    /// a Hugging Face folder of a Llama or Mistral model (`config.json`, safetensors,
    /// `tokenizer.json`, `tokenizer_config.json` with its `chat_template`), run in f32.
    pub path: PathBuf,
    /// `tokenizer.json` (or a Hugging Face folder holding one and its chat template) to use
    /// instead of the model's own: the tokenizer rebuilt from the GGUF metadata, or the
    /// folder's.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Name written to the output's `generator` column; default: the GGUF's `general.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`; the
    /// trainer's output or any plain PEFT LoRA on the same base) folded into the weights at
    /// load time (see [`crate::adapter`]); default none.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Weights in memory of a GGUF (a folder is always `f32`): `f32` (default, dequantised:
    /// LOGO prompts are long and answers short, and f32 prefill measured 2–3× faster than Q8_0
    /// on CPU), `q8_0` (requantised, fastest decode) or `native` (as stored). See
    /// `bench/results/generation.json`.
    #[serde(default)]
    pub weights: WeightFormat,
    /// CPU threads for the model's matrix products; default: every core (2 threads measured
    /// 1.7× faster prefill than 1 on a 2-core machine).
    #[serde(default = "all_cores")]
    pub threads: usize,
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How the GGUF weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// Requantised to Q8_0.
    Q8_0,
    /// Dequantised to f32.
    #[default]
    F32,
    /// As stored in the file.
    Native,
}

/// Which [`crate::backend::GenerationBackend`] writes the responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The candle policy loaded from `model` (the embedded default).
    #[default]
    InProcess,
    /// Any OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server, TGI) through
    /// `POST /v1/completions` with the prompt as token ids.
    Openai,
}

fn default_true() -> bool {
    true
}
