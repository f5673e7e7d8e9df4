//! Incremental decoding ([`Llama::extend`] with a [`KvCache`]) against the full forward on a
//! tiny random Llama with LoRA and jumping position ids: prefill in chunks, one token at a
//! time, after a fork; and the per-head attention argmax of layer 0 against a computation by
//! hand from the weights in the safetensors file.

mod common;

use common::numeric::*;
use common::*;
use logo_trainer::model::Llama;
use tch::{Device, IndexOp, Kind, Tensor};

fn ids_and_positions() -> (Vec<i64>, Vec<i64>) {
    let ids: Vec<i64> = (0..20).map(|t| (t * 11 + 3) % VOCAB).collect();
    // Jumps, as LOGO's synthesised positions and NIAH past the trained length have.
    let pos: Vec<i64> = (0..20).map(|t| t + if t >= 9 { 3000 } else { 0 }).collect();
    (ids, pos)
}

#[test]
fn extend_equals_the_full_forward() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lora_model(&dir.path().join("model"));
    let (ids, pos) = ids_and_positions();
    let full = tch::no_grad(|| {
        model
            .forward(
                &Tensor::from_slice(&ids).unsqueeze(0),
                &Tensor::from_slice(&pos).unsqueeze(0),
            )
            .unwrap()
            .squeeze_dim(0)
    }); // [20, V]
    let logits = |h: &Tensor| model.lm_logits(h).unwrap().squeeze_dim(0);
    let diff = |a: &Tensor, row: i64| -> f64 { (a - full.get(row)).abs().max().double_value(&[]) };
    // Capacity 4: the buffers grow twice on the way.
    let mut cache = model.new_cache(4).unwrap();
    let mut worst = 0.0f64;
    let (h, _) = model
        .extend(&mut cache, &ids[..7], &pos[..7], false)
        .unwrap();
    worst = worst.max(diff(&logits(&h), 6));
    let (h, _) = model
        .extend(&mut cache, &ids[7..12], &pos[7..12], false)
        .unwrap();
    worst = worst.max(diff(&logits(&h), 11));
    let fork = cache.fork(7, 2).unwrap();
    for t in 12..20 {
        let (h, _) = model
            .extend(&mut cache, &ids[t..t + 1], &pos[t..t + 1], false)
            .unwrap();
        worst = worst.max(diff(&logits(&h), t as i64));
    }
    assert_eq!(cache.len(), 20);
    // The fork continues from token 7 as if 7..20 had never been read.
    let mut fork = fork;
    let (h, _) = model
        .extend(&mut fork, &ids[7..20], &pos[7..20], false)
        .unwrap();
    worst = worst.max(diff(&logits(&h), 19));
    assert_eq!(fork.len(), 20);
    // The same maths in another order (cached keys, chunked reads): the tiny model's f32
    // rounding bound, on logits of order 1 (observed 1.3e-6).
    assert_within(
        "kv cache extend vs full forward, worst logit difference",
        worst,
        rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH),
    );
    assert!(cache.fork(21, 0).is_err());
    assert!(model.extend(&mut cache, &[], &[], false).is_err());
}

/// Layer 0's argmax by hand: x = embedding rows, RMSNorm with the file's weight, q/k
/// projections, HF's rotate-half rotary embedding at the given positions, q_last · k_j over
/// every key j, kv head ⌊h / 2⌋ for query head h.
#[test]
fn attention_argmax_of_layer_0_by_hand() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    tiny_model(&path);
    let model = Llama::load(&path, None, Device::Cpu, Kind::Float).unwrap();
    let w: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(path.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let (ids, pos) = ids_and_positions();
    let mut cache = model.new_cache(32).unwrap();
    let (_, heads) = model
        .extend(&mut cache, &ids[..15], &pos[..15], true)
        .unwrap();
    let heads = heads.unwrap();
    assert_eq!(heads.size(), vec![2, 4]);
    let x = w["model.embed_tokens.weight"].index_select(0, &Tensor::from_slice(&ids[..15]));
    let norm = &x
        * (x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + 1e-5).rsqrt()
        * &w["model.layers.0.input_layernorm.weight"];
    let q = norm.matmul(&w["model.layers.0.self_attn.q_proj.weight"].tr()); // [15, 32]
    let k = norm.matmul(&w["model.layers.0.self_attn.k_proj.weight"].tr()); // [15, 16]
    let hd = 8i64;
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let rot = |x: &Tensor, n: i64| -> Tensor {
        // x [15, n·hd] → [n, 15, hd] rotated
        let x = x.view([15, n, hd]).transpose(0, 1);
        let p = Tensor::from_slice(&pos[..15])
            .to_kind(Kind::Float)
            .unsqueeze(1);
        let f = p * Tensor::from_slice(&inv).unsqueeze(0); // [15, hd/2]
        let emb = Tensor::cat(&[&f, &f], -1);
        let (x1, x2) = (x.narrow(-1, 0, hd / 2), x.narrow(-1, hd / 2, hd / 2));
        let rh = Tensor::cat(&[-x2, x1], -1);
        x * emb.cos() + rh * emb.sin()
    };
    let (q, k) = (rot(&q, 4), rot(&k, 2));
    for h in 0..4 {
        let scores = k
            .get(h / 2)
            .matmul(&q.i((h, 14)).unsqueeze(1))
            .squeeze_dim(1); // [15]
        let by_hand = scores.argmax(0, false).int64_value(&[]);
        assert_eq!(heads.int64_value(&[0, h]), by_hand, "head {h}: {scores:?}");
    }
}
