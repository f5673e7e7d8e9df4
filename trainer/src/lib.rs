//! logo-trainer: LoRA training of a Llama-family model with the LOGO objective (Tang et al.,
//! "LOGO — Long cOntext aliGnment via efficient preference Optimization", section 3.2.1,
//! Eq. 2 and 3, section 4.1) on libtorch through `tch`, streaming the Parquet training samples
//! written by `logo-engine` (`logo_schemas::training_schema`).
//!
//! Modules: [`model`] (the decoder with explicit `position_ids`; the embedded GGUF,
//! dequantised), [`lora`] (adapter layers), [`peft`] (PEFT adapter folders, merging, export
//! as a Hugging Face folder), [`loss`] (Eq. 2/3), [`data`] (Parquet streaming and batching),
//! [`decoupled`] and [`shared_prompt`] (the LOGO gradient with memory flat in M; the second
//! computes each sample's prompt once), [`optim`] (AdamW with a saveable state), [`config`]
//! (a run's settings: `train.yaml` → [`config::RawTrainConfig`] → the validated
//! [`config::TrainConfig`]), [`train_loop`] (the [`train_loop::Trainer`]),
//! [`checkpoint`] (crash-safe checkpoints, metrics, resume), [`dist`] (data parallelism over
//! processes and GPUs: collectives, launcher), [`plot`] (loss and margin PNG), [`bench`]
//! (timed training steps).
#![deny(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod decoupled;
pub mod dist;
pub mod error;
pub mod lora;
pub mod loss;
pub mod memory;
pub mod model;
pub mod optim;
pub mod peft;
pub mod plot;
pub mod shared_prompt;
pub mod train_loop;

pub use error::{Result, TrainerError};
