//! Llama tensor names in llama.cpp's GGUF and in Hugging Face checkpoints, and the row
//! permutation of the q/k projections between the two layouts (names and index arithmetic
//! only; each crate moves the tensor data itself).
//!
//! Sources: llama.cpp `gguf-py/gguf/tensor_mapping.py` (`TensorNameMap`: `token_embd` ↔
//! `model.embed_tokens`, `blk.{i}.attn_q` ↔ `model.layers.{i}.self_attn.q_proj`, …) and
//! `convert_hf_to_gguf.py` (`LlamaModel.permute`, `LlamaModel.modify_tensors`): the rows of
//! `q_proj` and `k_proj` are stored permuted from HF's rotate-half layout (pairs `(i, i +
//! hd/2)`) to the interleaved layout of llama.cpp's rope (pairs `(2i, 2i+1)`),
//!
//! ```text
//! W_gguf = W_hf.reshape(n_head, 2, rows/n_head/2, in).swapaxes(1, 2).reshape(rows, in)
//! ```
//!
//! with `n_head` = `llama.attention.head_count` for q and `llama.attention.head_count_kv`
//! for k ([`permuted_heads`]). [`permuted_rows`] and [`unpermuted_rows`] give that map and its
//! inverse as row indices.

/// GGUF name of the token embedding.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// GGUF name of the untied LM head (absent when the embeddings are tied).
pub const OUTPUT: &str = "output.weight";
/// GGUF name of the final RMS norm.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// GGUF tensor of llama.cpp's Llama 3 rope scaling (frequency divisors); HF has no tensor for
/// it.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// HF name of the token embedding.
pub const HF_EMBED: &str = "model.embed_tokens.weight";
/// HF name of the untied LM head.
pub const HF_LM_HEAD: &str = "lm_head.weight";
/// HF name of the final RMS norm.
pub const HF_NORM: &str = "model.norm.weight";

/// The tensors of one decoder block: (GGUF name after `blk.{i}.`, HF name after
/// `model.layers.{i}.`), both without `.weight`.
const BLOCK: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The tensors outside the blocks: (GGUF name, HF name).
const GLOBAL: [(&str, &str); 3] = [
    (TOKEN_EMBD, HF_EMBED),
    (OUTPUT, HF_LM_HEAD),
    (OUTPUT_NORM, HF_NORM),
];

/// The Hugging Face name of a Llama GGUF tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), or `None` for tensors HF does not have
/// ([`ROPE_FREQS`], biases, other architectures' tensors).
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = BLOCK.iter().find(|(g, _)| *g == name)?;
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// The GGUF name of a Hugging Face Llama parameter (`model.layers.3.self_attn.q_proj.weight`
/// → `blk.3.attn_q.weight`), or `None` for a name GGUF does not have (biases, rotary
/// buffers); the inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((gguf, _)) = GLOBAL.iter().find(|(_, h)| *h == hf) {
        return Some(gguf.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, _) = BLOCK.iter().find(|(_, h)| *h == name)?;
    Some(format!("blk.{layer}.{gguf}.weight"))
}

/// The head counts of a Llama, which the q/k row permutation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadCounts {
    /// `llama.attention.head_count` (HF `num_attention_heads`).
    pub n_head: usize,
    /// `llama.attention.head_count_kv` (HF `num_key_value_heads`).
    pub n_kv_head: usize,
}

/// Heads whose rows GGUF stores permuted for a tensor with this HF name: `n_head` for
/// `q_proj`, `n_kv_head` for `k_proj`, `None` for every other tensor.
pub fn permuted_heads(hf: &str, heads: HeadCounts) -> Option<usize> {
    if hf.ends_with("self_attn.q_proj.weight") {
        Some(heads.n_head)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        Some(heads.n_kv_head)
    } else {
        None
    }
}

/// Rows per half head, or `None` unless `rows` is `n_head` heads of an even size.
fn half_head(rows: usize, n_head: usize) -> Option<usize> {
    (n_head > 0 && rows.is_multiple_of(2 * n_head)).then(|| rows / n_head / 2)
}

/// llama.cpp's permutation (HF → GGUF) as indices: for each GGUF row, the HF row it comes
/// from, so `W_gguf[g] = W_hf[permuted_rows(rows, n_head)[g]]`. `None` unless `rows` is a
/// multiple of `2·n_head` (and `n_head` ≥ 1).
pub fn permuted_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    let half = half_head(rows, n_head)?;
    let hd = 2 * half;
    // GGUF row g = h·hd + 2i + j holds HF row h·hd + j·half + i (h head, i < half, j < 2).
    Some(
        (0..rows)
            .map(|g| {
                let (h, r) = (g / hd, g % hd);
                h * hd + (r % 2) * half + r / 2
            })
            .collect(),
    )
}

/// The inverse of [`permuted_rows`] (GGUF → HF): for each HF row, the GGUF row it comes from,
/// so `W_hf[f] = W_gguf[unpermuted_rows(rows, n_head)[f]]`. `None` unless `rows` is a
/// multiple of `2·n_head` (and `n_head` ≥ 1).
pub fn unpermuted_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    let half = half_head(rows, n_head)?;
    let hd = 2 * half;
    // HF row f = h·hd + j·half + i is GGUF row h·hd + 2i + j.
    Some(
        (0..rows)
            .map(|f| {
                let (h, r) = (f / hd, f % hd);
                h * hd + 2 * (r % half) + r / half
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's formula on row ids, written out: `ids.reshape(n_head, 2, half)` is
    /// `src[h][a][b] = h·hd + a·half + b`; `.swapaxes(1, 2)` makes `dst[h][b][a] = src[h][a][b]`;
    /// `.reshape(rows)` reads `dst` in order (h, b, a). The result is the HF row behind each
    /// GGUF row.
    fn by_formula(rows: usize, n_head: usize) -> Vec<usize> {
        let half = rows / n_head / 2;
        let src: Vec<Vec<Vec<usize>>> = (0..n_head)
            .map(|h| {
                (0..2)
                    .map(|a| (0..half).map(|b| h * 2 * half + a * half + b).collect())
                    .collect()
            })
            .collect();
        let mut out = Vec::with_capacity(rows);
        for head in &src {
            for b in 0..half {
                for pair in head {
                    out.push(pair[b]);
                }
            }
        }
        out
    }

    #[test]
    fn permutation_matches_llama_cpp_reshape() {
        // 2 heads of 4 rows: each head's first and second halves interleave.
        assert_eq!(by_formula(8, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permuted_rows(8, 2).unwrap(), by_formula(8, 2));
        // Heads of 6 rows (half 3): 0 3 1 4 2 5, where the map is not its own inverse.
        assert_eq!(
            permuted_rows(12, 2).unwrap(),
            vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
        );
        assert_eq!(
            unpermuted_rows(12, 2).unwrap(),
            vec![0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]
        );
        for (rows, n_head) in [(8, 2), (12, 2), (24, 3), (576, 9), (192, 3), (64, 1)] {
            let p = permuted_rows(rows, n_head).unwrap();
            assert_eq!(p, by_formula(rows, n_head), "rows {rows}, n_head {n_head}");
            let u = unpermuted_rows(rows, n_head).unwrap();
            // W_hf[f] = W_gguf[u[f]] = W_hf[p[u[f]]]: u undoes p, and p undoes u.
            assert!((0..rows).all(|f| p[u[f]] == f && u[p[f]] == f));
        }
        assert_eq!(permuted_rows(10, 2), None);
        assert_eq!(unpermuted_rows(8, 0), None);
    }

    #[test]
    fn names_map_both_ways() {
        assert_eq!(
            hf_name("blk.3.attn_output.weight").as_deref(),
            Some("model.layers.3.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name(TOKEN_EMBD).as_deref(), Some(HF_EMBED));
        assert_eq!(hf_name(OUTPUT).as_deref(), Some(HF_LM_HEAD));
        assert_eq!(hf_name(ROPE_FREQS), None);
        assert_eq!(hf_name("blk.0.attn_q.bias"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(
            gguf_name("model.layers.7.self_attn.q_proj.weight").as_deref(),
            Some("blk.7.attn_q.weight")
        );
        assert_eq!(
            gguf_name("model.layers.2.post_attention_layernorm.weight").as_deref(),
            Some("blk.2.ffn_norm.weight")
        );
        assert_eq!(gguf_name(HF_NORM).as_deref(), Some(OUTPUT_NORM));
        assert_eq!(gguf_name("model.layers.2.self_attn.q_proj.bias"), None);
        assert_eq!(gguf_name("model.layers.1.self_attn.rotary.weight"), None);
        for layer in [0, 11, 29] {
            for (g, _) in BLOCK {
                let gguf = format!("blk.{layer}.{g}.weight");
                let hf = hf_name(&gguf).unwrap();
                assert_eq!(gguf_name(&hf), Some(gguf));
            }
        }
        for (g, h) in GLOBAL {
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
    }

    #[test]
    fn q_and_k_are_permuted_over_their_heads() {
        let heads = HeadCounts {
            n_head: 9,
            n_kv_head: 3,
        };
        assert_eq!(
            permuted_heads("model.layers.2.self_attn.q_proj.weight", heads),
            Some(9)
        );
        assert_eq!(
            permuted_heads("model.layers.2.self_attn.k_proj.weight", heads),
            Some(3)
        );
        assert_eq!(
            permuted_heads("model.layers.2.self_attn.v_proj.weight", heads),
            None
        );
    }
}
