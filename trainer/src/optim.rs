//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2) over the
//! LoRA parameters, with a state that is saved and restored exactly for `--resume`, and the
//! learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio · lr`.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because libtorch's optimizer
//! state cannot be serialised through tch, and resuming must continue the same run.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};

/// AdamW hyper-parameters (Loshchilov and Hutter, "Decoupled Weight Decay Regularization",
/// Algorithm 2; PyTorch `torch.optim.AdamW`): the `optim` section of `train.yaml` (every key
/// optional, defaults below; unknown keys refused).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Peak learning rate; default 1e-4.
    pub lr: f64,
    /// β1; default 0.9.
    pub beta1: f64,
    /// β2; default 0.999.
    pub beta2: f64,
    /// ε; default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay; default 0.0.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named parameters (sorted by name, so the state file is stable).
pub struct AdamW {
    cfg: AdamWConfig,
    params: BTreeMap<String, Tensor>,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    step: i64,
}

impl AdamW {
    /// `params`: the trainable tensors (f32, requires_grad), by name.
    pub fn new(params: impl IntoIterator<Item = (String, Tensor)>, cfg: AdamWConfig) -> Self {
        let params: BTreeMap<String, Tensor> = params.into_iter().collect();
        let zeros = |p: &Tensor| p.zeros_like().set_requires_grad(false);
        Self {
            exp_avg: params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect(),
            exp_avg_sq: params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect(),
            params,
            cfg,
            step: 0,
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Clips the global L2 norm of the gradients to `max_norm` (if > 0) and returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .values()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(
            &grads
                .iter()
                .map(|g| g.to_kind(Kind::Float).norm())
                .collect::<Vec<_>>(),
            0,
        )
        .norm()
        .double_value(&[]);
        if max_norm > 0.0 && total > max_norm {
            let scale = max_norm / (total + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        total
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, p) in self.params.iter_mut() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let m = self
                .exp_avg
                .get_mut(name)
                .expect("state for every parameter");
            let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
            let v = self
                .exp_avg_sq
                .get_mut(name)
                .expect("state for every parameter");
            let _ = v
                .g_mul_scalar_(c.beta2)
                .g_add_(&(&g * &g * (1.0 - c.beta2)));
            if c.weight_decay > 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let denom = (&*v / bias2).sqrt() + c.eps;
            let update = (&*m / bias1) / denom * lr;
            let _ = p.g_sub_(&update);
        }
    }

    /// Saves the moments and step count as safetensors (`exp_avg.NAME`, `exp_avg_sq.NAME`,
    /// `step`). Errors: [`TrainerError::Torch`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (k, t) in &self.exp_avg {
            named.push((format!("exp_avg.{k}"), t.to_device(tch::Device::Cpu)));
        }
        for (k, t) in &self.exp_avg_sq {
            named.push((format!("exp_avg_sq.{k}"), t.to_device(tch::Device::Cpu)));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote. Errors: [`TrainerError::Input`] when a moment is
    /// missing or has another shape than its parameter.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let bad = |m: String| TrainerError::Input {
            path: path.to_path_buf(),
            message: m,
        };
        for (name, p) in &self.params {
            for (prefix, store) in [
                ("exp_avg", &mut self.exp_avg),
                ("exp_avg_sq", &mut self.exp_avg_sq),
            ] {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| bad(format!("missing {key}")))?;
                if t.size() != p.size() {
                    return Err(bad(format!(
                        "{key}: shape {:?}, parameter {:?}",
                        t.size(),
                        p.size()
                    )));
                }
                store.insert(name.clone(), t.to_device(p.device()).to_kind(p.kind()));
            }
        }
        self.step = tensors
            .get("step")
            .ok_or_else(|| bad("missing step".into()))?
            .int64_value(&[0]);
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warm-up over `warmup_steps` to
/// `lr`, then cosine decay to `min_lr_ratio · lr` at `total_steps`.
pub fn lr_at(
    step: usize,
    lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    min_lr_ratio: f64,
) -> f64 {
    if step < warmup_steps {
        return lr * (step + 1) as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = ((step - warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_by_hand() {
        assert!((lr_at(0, 1.0, 4, 14, 0.0) - 0.25).abs() < 1e-12);
        assert!((lr_at(3, 1.0, 4, 14, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(4, 1.0, 4, 14, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(9, 1.0, 4, 14, 0.0) - 0.5).abs() < 1e-12); // half-way: cos(π/2)
        assert!((lr_at(14, 1.0, 4, 14, 0.1) - 0.1).abs() < 1e-12);
    }

    /// Two AdamW steps on f(p) = Σ p², against the update computed by hand
    /// (torch.optim.AdamW gives the same: lr=0.1, wd=0.01, betas=(0.9,0.999), eps=1e-8).
    #[test]
    fn two_steps_by_hand() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new([("p".to_string(), p.shallow_clone())], cfg);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1);
            for i in 0..2 {
                let g = 2.0 * expect[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                expect[i] *= 1.0 - 0.1 * 0.01;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expect[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = Vec::try_from(p.detach()).unwrap();
        assert!(
            (got[0] as f64 - expect[0]).abs() < 1e-6,
            "{got:?} {expect:?}"
        );
        assert!(
            (got[1] as f64 - expect[1]).abs() < 1e-6,
            "{got:?} {expect:?}"
        );
    }

    #[test]
    fn state_round_trip() {
        let p = Tensor::from_slice(&[1.0f32, 3.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            [("w".to_string(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(0.01);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.save(&path).unwrap();
        let mut other = AdamW::new(
            [("w".to_string(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        other.load(&path).unwrap();
        assert_eq!(other.steps(), 1);
        let a: Vec<f32> = Vec::try_from(&opt.exp_avg["w"]).unwrap();
        let b: Vec<f32> = Vec::try_from(&other.exp_avg["w"]).unwrap();
        assert_eq!(a, b);
    }
}
