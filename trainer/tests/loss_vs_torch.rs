//! The LOGO loss against an independent PyTorch implementation on the same log-probabilities
//! (the project's venv python; skipped with a message when it is absent).

use std::process::Command;

#[path = "common/numeric.rs"]
mod numeric;

use logo_trainer::loss::{logo_loss, LossConfig};
use tch::Tensor;

/// Written independently of loss.rs, from the paper's Eq. 2 and the NLL regulariser:
/// sigmoid form (not softplus), explicit loop over negatives, float64.
const SCRIPT: &str = r#"
import json, sys, torch
case = json.loads(sys.stdin.read())
lw = torch.tensor(case["chosen"], dtype=torch.float64)
ll = torch.tensor(case["rejected"], dtype=torch.float64)
beta, gamma, lam = case["beta"], case["gamma"], case["sft_weight"]
M = ll.shape[1]
neg = torch.zeros_like(lw)
for j in range(M):
    neg = neg + ll[:, j]
pref = -torch.log(torch.sigmoid(beta * lw - beta / M * neg - gamma))
print(json.dumps((pref + lam * (-lw)).mean().item()))
"#;

#[test]
fn loss_equals_pytorch_for_m_1_2_3() {
    let py = match logo_env::paths::venv_python_with(&["torch"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    tch::manual_seed(0);
    for m in 1..=3i64 {
        let chosen = Tensor::rand([5], (tch::Kind::Float, tch::Device::Cpu)) * -2.0;
        let rejected = Tensor::rand([5, m], (tch::Kind::Float, tch::Device::Cpu)) * -2.0;
        for cfg in [
            LossConfig::default(),
            LossConfig {
                beta: 2.5,
                gamma: 0.25,
                sft_weight: 0.0,
                ..LossConfig::default()
            },
            LossConfig {
                beta: 3.0,
                gamma: 0.6,
                sft_weight: 0.5,
                ..LossConfig::default()
            },
        ] {
            let ours = logo_loss(&chosen, &rejected, &cfg)
                .unwrap()
                .loss
                .double_value(&[]);
            let c: Vec<f32> = Vec::try_from(&chosen).unwrap();
            let r: Vec<Vec<f32>> = (0..5)
                .map(|b| Vec::try_from(rejected.get(b)).unwrap())
                .collect();
            let input = serde_json::json!({
                "chosen": c, "rejected": r,
                "beta": cfg.beta, "gamma": cfg.gamma, "sft_weight": cfg.sft_weight,
            });
            let mut child = Command::new(&py)
                .args(["-c", SCRIPT])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs: f64 = serde_json::from_slice(&out.stdout).unwrap();
            // f32 against f64: 5 samples × (M + 1) log-probabilities summed, then the
            // sigmoid, log and mean: fewer than 32 roundings in a row.
            numeric::assert_within(
                &format!("loss M={m} {cfg:?} vs torch"),
                numeric::relative(theirs, ours),
                numeric::rounding_bound(tch::Kind::Float, 32),
            );
        }
    }
}
