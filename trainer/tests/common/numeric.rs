//! Tolerances of the numeric tests, derived from the dtype's rounding error instead of picked
//! from one machine's observation (a bound of 1e-5 once held on one CPU and failed at 1.03e-5
//! on the next).
//!
//! libtorch chooses its CPU kernels by CPU (`ATEN_CPU_CAPABILITY` = `avx2` or `avx512` on the
//! machines this project runs on), and the kernels sum in different orders. Two evaluations of
//! the same maths that differ only in operation order (a padded batch vs single sequences, a
//! recomputed forward, another kernel) therefore differ by rounding. A sum of `n` terms in
//! floating point carries a relative error of at most about `n · ε` (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, 2nd ed., §4.2), so a test compares against
//! `depth · ε(dtype)` with `depth` the number of terms on the longest chain of reductions its
//! quantity passes through (see [`TINY_GRADIENT_DEPTH`]). Every check prints one line
//! `numeric <label>: observed … bound …`, which `scripts/kernel-check.sh` collects under both
//! kernels.
//!
//! Where a test proves that two computations are the same maths, an f64 twin runs it with an
//! f64 base model, whose remaining f32 steps (LoRA weights and gradients, RMSNorm and the
//! logits upcast as HF computes them) give [`F64_TWIN_BOUND`]; the f32 check is then a
//! regression bound only.
#![allow(dead_code)] // each test file uses a subset

use tch::Kind;

/// Machine epsilon of `kind`, the gap between 1 and the next representable number:
/// f32 2⁻²³ ≈ 1.19e-7, f64 2⁻⁵² ≈ 2.22e-16, bf16 2⁻⁷, f16 2⁻¹⁰.
///
/// Panics on a non-floating kind (a bug in the test).
pub fn epsilon(kind: Kind) -> f64 {
    match kind {
        Kind::Float => f32::EPSILON as f64,
        Kind::Double => f64::EPSILON,
        Kind::BFloat16 => 2f64.powi(-7),
        Kind::Half => 2f64.powi(-10),
        other => panic!("no epsilon for {other:?}"),
    }
}

/// The relative bound `depth · ε(kind)` for two evaluations of the same maths in `kind` that
/// differ only in the order of their operations (module doc).
pub fn rounding_bound(kind: Kind, depth: usize) -> f64 {
    depth as f64 * epsilon(kind)
}

/// Terms on the longest reduction chain of a LoRA gradient of the tests' tiny Llama (h 32,
/// intermediate 64, 2 layers, vocabulary 64) on [`super::tiny_examples`] (2 samples, 3
/// sequences each, ≤ 17 tokens): the batch's tokens (2 · 3 · 17 = 102), each layer's hidden,
/// intermediate and attention reductions forward and backward (2 · 2 · (32 + 64 + 17) = 452),
/// and the softmax over the vocabulary (64): 618. With f32 that bounds a relative gradient
/// difference by 7.4e-5; observed up to 9.0e-6 (decoupled vs joint, avx512 kernels) and
/// 1.03e-5 on another CPU's kernels.
pub const TINY_GRADIENT_DEPTH: usize = 102 + 452 + 64;

/// The f64 twin's bound: what is left in f32 when the base model is f64 is a fixed handful of
/// roundings per value, not a reduction (the LoRA weight and its stored gradient, the RMSNorm
/// and logits upcast), so 8 · ε(f32) ≈ 9.5e-7 however long the sums are.
pub const F64_TWIN_BOUND: f64 = 8.0 * f32::EPSILON as f64;

/// Asserts `observed <= bound`, printing `numeric <label>: observed <o> bound <b>` either way
/// (run the tests with `--nocapture` to collect them).
pub fn assert_within(label: &str, observed: f64, bound: f64) {
    println!("numeric {label}: observed {observed:.3e} bound {bound:.3e}");
    assert!(
        observed <= bound,
        "{label}: observed {observed:.3e} exceeds the bound {bound:.3e}"
    );
}

/// Worst relative difference `‖a − b‖ / ‖a‖` (L2 over each tensor) over named tensors with
/// the same names in the same order.
pub fn worst_relative(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            let tb = tb.to_kind(ta.kind());
            (ta - tb).norm().double_value(&[]) / ta.norm().double_value(&[]).max(1e-12)
        })
        .fold(0.0, f64::max)
}

/// `|a − b| / max(|a|, 1)`: relative for values above 1, absolute below.
pub fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(1.0)
}

/// Resuming from a checkpoint repeats the same operations in the same order on the same
/// inputs: the metrics agree to one rounding, ε(f32) (observed: identical).
pub const RESUME_BOUND: f64 = f32::EPSILON as f64;

/// Bound on the relative difference of a training run's metrics (loss, gradient norm) and
/// adapter after `steps` AdamW steps whose gradients differ only by rounding: each step's
/// gradient carries at most the tiny model's reduction bound, and AdamW's update
/// `m / (√v + ε)` does not depend on the gradient's scale, so a relative difference does not
/// grow (except in elements whose gradient is within rounding of 0, whose first update is
/// ±lr whatever its size: a few elements of the whole adapter); the steps add up:
/// `steps · TINY_GRADIENT_DEPTH · ε(f32)`.
pub fn training_run_bound(steps: usize) -> f64 {
    steps as f64 * rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH)
}
