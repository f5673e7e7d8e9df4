//! Whether a run needs per-layer activation checkpointing (`--checkpointing auto`, the
//! default): the activation memory of one micro-batch is estimated from the model's shape and
//! the tokens its gradient mode computes, and compared with the CUDA device's free memory.
//!
//! The estimate counts, per token and decoder layer, the tensors autograd keeps for a LoRA
//! backward through a frozen Llama (bf16 or f32 activations): the inputs of both RMSNorms and of
//! the LoRA-adapted projections (≈ 6·H), the attention's q, k, v and output for the fused
//! attention's backward (2·d_q + 2·d_kv), and the SwiGLU's gate, up, activated gate and product
//! (4·I): `(6·H + 2·d_q + 2·d_kv + 4·I) · bytes` per token per layer. For Llama-3-8B's shape at
//! 8,192 tokens in bf16 that is 5.6 MiB per token, 45 GiB in all, beside 15 GiB of weights.
//! Checkpointing keeps only each layer's input (H per token per layer) and one layer's full
//! activations at a time.

use std::ffi::c_int;

use logo_formats::hf_config::LlamaConfig;

/// Share of the free device memory the estimated activations may take before `auto` turns
/// checkpointing on.
pub const AUTO_THRESHOLD: f64 = 0.8;

/// Estimated activation bytes of a micro-batch of `tokens` tokens (see the module doc);
/// `dtype_bytes`: 2 for bf16, 4 for f32.
pub fn activation_bytes(model: &LlamaConfig, tokens: usize, dtype_bytes: usize) -> u64 {
    let (h, i) = (model.hidden_size, model.intermediate_size);
    let d_q = model.num_attention_heads * model.head_dim;
    let d_kv = model.num_key_value_heads * model.head_dim;
    let per_token_layer = (6 * h + 2 * d_q + 2 * d_kv + 4 * i) * dtype_bytes;
    (per_token_layer * model.num_hidden_layers * tokens) as u64
}

/// Whether `auto` turns checkpointing on: the estimate exceeds [`AUTO_THRESHOLD`] of `free`.
pub fn needs_checkpointing(estimate: u64, free: u64) -> bool {
    estimate as f64 > AUTO_THRESHOLD * free as f64
}

/// `(free, total)` bytes of the current CUDA device (`cudaMemGetInfo` of the CUDA runtime
/// libtorch loaded); `None` without a CUDA runtime or on an error.
pub fn cuda_free_memory() -> Option<(u64, u64)> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
    for name in ["libcudart.so.13", "libcudart.so.12", "libcudart.so"] {
        // SAFETY: the CUDA runtime libtorch_cuda already loaded (same soname, same instance);
        // cudaMemGetInfo(size_t*, size_t*) -> cudaError_t writes two sizes.
        let got = unsafe {
            libloading::Library::new(name).and_then(|lib| {
                let f = *lib.get::<MemGetInfo>(b"cudaMemGetInfo\0")?;
                let (mut free, mut total) = (0usize, 0usize);
                let code = f(&mut free, &mut total);
                std::mem::forget(lib); // keep the runtime loaded for the process
                Ok((code, free, total))
            })
        };
        match got {
            Ok((0, free, total)) => return Some((free as u64, total as u64)),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3-8B's shape: (6·4096 + 2·4096 + 2·1024 + 4·14336)·2 = 184,320 bytes per token
    /// per layer; × 32 layers × 8,192 tokens = 48,318,382,080 bytes (45 GiB).
    #[test]
    fn activation_estimate_by_hand() {
        let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0
        }))
        .unwrap();
        assert_eq!(activation_bytes(&cfg, 8192, 2), 48_318_382_080);
        assert_eq!(activation_bytes(&cfg, 1, 4), 368_640 * 32);
    }

    #[test]
    fn auto_turns_checkpointing_on_above_80_percent_of_free_memory() {
        assert!(needs_checkpointing(81, 100));
        assert!(!needs_checkpointing(80, 100));
        assert!(!needs_checkpointing(10, 100));
    }
}
