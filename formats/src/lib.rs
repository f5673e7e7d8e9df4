//! The external file formats that more than one logo crate reads or writes, each in one
//! module: [`peft`] (PEFT LoRA adapter folders, `adapter_config.json` +
//! `adapter_model.safetensors`), [`hf_config`] (a Llama-family model's Hugging Face
//! `config.json`), [`gguf`] (the names of a Llama's tensors in llama.cpp's
//! GGUF and in Hugging Face checkpoints, and the q/k row permutation between them),
//! [`gguf_config`] (a Llama GGUF's metadata as that same `config.json`),
//! [`parquet_pages`] (the page headers of a Parquet file, checked before the `parquet` crate
//! trusts the sizes they declare; the engine's source and the trainer's data reader both read
//! untrusted Parquet), [`documents`] (the input documents the engine's source and `logo-eval`'s
//! QA reader read) and [`rejects`] (`rejects.jsonl`, the bad rows of both).
//!
//! Why a crate of its own: the policy (`logo-policy`, run by the engine and `logo-eval`) runs
//! on candle and never links libtorch; the trainer trains on libtorch (tch) and never links
//! candle's models; both read the same adapter folders and GGUF files (the trainer writes the
//! adapter that the policy folds into its weights). The format therefore lives below both, with
//! no tensor library: only file names, tensor names, JSON keys, validation and index arithmetic
//! (the optional `candle` feature only lets [`gguf_config`] read candle's GGUF header). Tensor
//! code (reading safetensors, permuting rows) stays in each crate, which applies the index maps
//! given here.
//!
//! Errors are [`FormatError`]s naming the file; each crate converts them into its own error
//! type.

#![deny(missing_docs)]

pub mod documents;
pub mod error;
pub mod gguf;
pub mod gguf_config;
pub mod hf_config;
pub mod parquet_pages;
pub mod peft;
pub mod rejects;

pub use error::FormatError;
