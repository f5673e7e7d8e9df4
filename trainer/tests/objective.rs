//! `--objective sft|simpo|logo` on the tiny random Llama: SFT's loss is the mean negative
//! log-likelihood of the chosen tokens, computed here independently from the full logits of
//! `prompt ⧺ chosen` (and its gradient equals autograd through that computation) on every
//! gradient path; SimPO is LOGO on the first rejected response only; a run records its
//! objective.

mod common;

use common::numeric::*;
use common::*;
use logo_schemas::SCHEMA_VERSION;
use logo_trainer::checkpoint::TrainerState;
use logo_trainer::data::{collate, Example};
use logo_trainer::decoupled::backward_decoupled;
use logo_trainer::loss::{LossConfig, Objective};
use logo_trainer::shared_prompt::backward_shared_prompt;
use logo_trainer::train_loop::backward_joint;
use tch::{Device, Kind, Tensor};

/// ℓ(y) = (1/|y|) Σ_t log softmax(logits of prompt ⧺ y)[row of t − 1][y_t] for one response
/// `y` of `e`: the full `[1, T, V]` logits, positions the prompt's then last + 1, + 2, ….
fn mean_logp_by_hand(model: &logo_trainer::model::Llama, e: &Example, y: &[i64]) -> Tensor {
    let p = e.prompt_ids.len();
    let ids: Vec<i64> = e.prompt_ids.iter().chain(y).copied().collect();
    let last = *e.prompt_positions.last().unwrap();
    let pos: Vec<i64> = e
        .prompt_positions
        .iter()
        .copied()
        .chain((0..y.len() as i64).map(|t| last + 1 + t))
        .collect();
    let logits = model
        .forward(
            &Tensor::from_slice(&ids).unsqueeze(0),
            &Tensor::from_slice(&pos).unsqueeze(0),
        )
        .unwrap()
        .squeeze_dim(0)
        .log_softmax(-1, Kind::Float);
    let mut sum = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for (t, &token) in y.iter().enumerate() {
        sum += logits.get((p + t - 1) as i64).get(token);
    }
    sum / y.len() as f64
}

/// −ℓ(y_w) averaged over the examples (see [`mean_logp_by_hand`]).
fn chosen_nll_by_hand(model: &logo_trainer::model::Llama, examples: &[Example]) -> Tensor {
    let per: Vec<Tensor> = examples
        .iter()
        .map(|e| -mean_logp_by_hand(model, e, &e.chosen_ids))
        .collect();
    Tensor::stack(&per, 0).mean(Kind::Float)
}

#[test]
fn sft_loss_is_the_nll_of_the_chosen_tokens_on_every_gradient_path() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lora_model(&dir.path().join("model"));
    let examples = tiny_examples();
    // β, γ, λ must not matter to SFT.
    let cfg = LossConfig {
        beta: 7.0,
        gamma: 1.5,
        sft_weight: 0.3,
        objective: Objective::Sft,
    };
    let dev = Device::Cpu;
    let (expect, by_hand) = lora_grads(&model, &|| {
        let l = chosen_nll_by_hand(&model, &examples);
        l.backward();
        l.double_value(&[])
    });
    let batch = collate(&examples, dev).unwrap();
    let runs: [(&str, &dyn Fn() -> f64); 4] = [
        ("joint", &|| {
            backward_joint(&model, &batch, &cfg, false, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        }),
        ("shared prompt", &|| {
            backward_shared_prompt(&model, &examples, &cfg, dev, false, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        }),
        ("decoupled", &|| {
            backward_decoupled(&model, &examples, &cfg, dev, false, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        }),
        ("decoupled + checkpointing", &|| {
            backward_decoupled(&model, &examples, &cfg, dev, true, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        }),
    ];
    // Same maths in another order of operations: the f32 rounding bound of the tiny model's
    // reductions (common::numeric; observed up to 1.2e-5 for the shared prompt).
    let bound = rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH);
    for (name, run) in runs {
        let (loss, grads) = lora_grads(&model, run);
        assert_within(
            &format!("sft {name} loss vs NLL by hand"),
            relative(expect, loss),
            bound,
        );
        assert_within(
            &format!("sft {name} gradient vs NLL by hand"),
            worst_relative(&by_hand, &grads),
            bound,
        );
    }
}

#[test]
fn simpo_is_logo_on_the_first_rejected_response() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lora_model(&dir.path().join("model"));
    let examples = tiny_examples();
    let dev = Device::Cpu;
    let simpo = LossConfig {
        objective: Objective::Simpo,
        ..LossConfig::default()
    };
    let mut first_only = examples.clone();
    for e in &mut first_only {
        e.rejected_ids.truncate(1);
    }
    let (l_simpo, g_simpo) = lora_grads(&model, &|| {
        backward_shared_prompt(&model, &examples, &simpo, dev, false, 1, 1.0)
            .unwrap()
            .loss
            .double_value(&[])
    });
    let (l_m1, g_m1) = lora_grads(&model, &|| {
        backward_shared_prompt(
            &model,
            &first_only,
            &LossConfig::default(),
            dev,
            false,
            1,
            1.0,
        )
        .unwrap()
        .loss
        .double_value(&[])
    });
    let (l_logo, _) = lora_grads(&model, &|| {
        backward_shared_prompt(
            &model,
            &examples,
            &LossConfig::default(),
            dev,
            false,
            1,
            1.0,
        )
        .unwrap()
        .loss
        .double_value(&[])
    });
    // The same maths over differently shaped batches: the tiny model's f32 rounding bound.
    let bound = rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH);
    assert_within(
        "simpo loss vs logo at M = 1",
        relative(l_m1, l_simpo),
        bound,
    );
    assert!(
        (l_simpo - l_logo).abs() > 1e-3,
        "M = 2 should differ: {l_logo}"
    );
    assert_within(
        "simpo gradient vs logo at M = 1",
        worst_relative(&g_m1, &g_simpo),
        bound,
    );
    println!("simpo {l_simpo:.6} = logo at M = 1 {l_m1:.6}; logo at M = 2 {l_logo:.6}");
}

#[test]
fn a_run_records_its_objective() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    write_parquet(
        &dir.path().join("data/a.parquet"),
        &[sample(0), sample(1)],
        Some(SCHEMA_VERSION),
    );
    let mut cfg = config(
        &dir.path().join("data"),
        &dir.path().join("model"),
        &dir.path().join("out"),
    );
    cfg.loss.objective = Objective::Sft;
    cfg.lora.lora_dropout = 0.0;
    cfg.max_steps = Some(4);
    cfg.save_steps = 0;
    let summary = train(&cfg).unwrap();
    // SFT lowers the chosen NLL; its loss is that NLL.
    let (first, last) = (summary.metrics[0], *summary.metrics.last().unwrap());
    assert!((first.loss - first.sft_loss).abs() < 1e-9);
    assert!(last.sft_loss < first.sft_loss, "{first:?} → {last:?}");
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/checkpoint-4/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state.config.loss.objective, Objective::Sft);
    let summary_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary_json["objective"], "sft");
}

/// Rows written by `positions.scheme: paper` (Eq. 4 as printed) may have ids that go back
/// across a segment border; the trainer reads them, and still refuses such ids elsewhere.
#[test]
fn paper_positions_may_go_back_only_in_paper_rows() {
    use logo_trainer::data::TrainingData;
    let dir = tempfile::tempdir().unwrap();
    let mut s = sample(0);
    // Segments (6, 6): the second's bias below the first's.
    s.prompt_position_ids = (0..12u32)
        .map(|t| t + if t >= 6 { 2 } else { 40 })
        .collect();
    s.prompt_position_ids[0] = 0;
    s.position_strategy = "paper".into();
    let ok = dir.path().join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    write_parquet(&ok.join("a.parquet"), &[s.clone()], Some(SCHEMA_VERSION));
    let data = TrainingData::open(&ok).unwrap();
    let rows = logo_trainer::data::read_row_group(&data.row_groups()[0]).unwrap();
    assert_eq!(rows[0].prompt_positions[6], 8);
    s.position_strategy = "continuous".into();
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    write_parquet(&bad.join("a.parquet"), &[s], Some(SCHEMA_VERSION));
    // Refused when the folder is opened (the rows are checked there) or read.
    let e = TrainingData::open(&bad)
        .and_then(|d| logo_trainer::data::read_row_group(&d.row_groups()[0]).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prompt_position_ids: not strictly increasing"),
        "{e}"
    );
}

/// Data written before the stop id columns existed (`chosen_stop_token_id`,
/// `rejected_stop_token_id`) reads as the same examples: the trainer reads neither column.
#[test]
fn data_without_the_stop_id_columns_reads_the_same() {
    use logo_schemas::col;
    use logo_trainer::data::{read_row_group, TrainingData};
    let dir = tempfile::tempdir().unwrap();
    let rows = [sample(0), sample(1)];
    let (new, old) = (dir.path().join("new"), dir.path().join("old"));
    std::fs::create_dir_all(&new).unwrap();
    std::fs::create_dir_all(&old).unwrap();
    write_parquet(&new.join("a.parquet"), &rows, Some(SCHEMA_VERSION));
    write_parquet_without(
        &old.join("a.parquet"),
        &rows,
        Some(SCHEMA_VERSION),
        &[col::CHOSEN_STOP_TOKEN_ID, col::REJECTED_STOP_TOKEN_ID],
    );
    let read = |d: &std::path::Path| {
        read_row_group(&TrainingData::open(d).unwrap().row_groups()[0]).unwrap()
    };
    let (a, b) = (read(&new), read(&old));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
}

/// A dis-preferred response cut at `max_new_tokens` and kept by the engine
/// (`rejected_finish_reason` `length`) carries no end-of-turn id: the trainer reads exactly its
/// ids from Parquet and Eq. 2 uses the mean log-probability over those tokens alone. The LOGO
/// loss equals the hand value −log σ(β·ℓ_w − (β/M)·Σ_j ℓ_l^(j) − γ) + λ·(−ℓ_w), with each ℓ
/// from the full logits, on the shared-prompt (training's default) and joint paths; with an
/// end of turn wrongly appended the value would differ.
#[test]
fn a_cut_rejected_response_is_averaged_over_its_own_tokens() {
    use logo_trainer::data::{read_row_group, TrainingData};
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lora_model(&dir.path().join("model"));
    let eot = 2u32;
    let mut s = sample(0);
    s.rejected_input_ids = vec![vec![40, 41, eot], vec![50, 51, 52, 53]];
    s.rejected_finish_reason = vec!["stop".into(), "length".into()];
    s.rejected_stop_token_id = vec![Some(eot), None];
    s.rejected_chunk_ids = vec![vec![1], vec![1, 0]];
    s.rejected_seed = vec![8, 9];
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_parquet(&data.join("a.parquet"), &[s], Some(SCHEMA_VERSION));
    let examples = read_row_group(&TrainingData::open(&data).unwrap().row_groups()[0]).unwrap();
    let e = &examples[0];
    assert_eq!(e.rejected_ids, vec![vec![40, 41, 2], vec![50, 51, 52, 53]]);
    let cfg = LossConfig::default();
    let (beta, gamma, lambda) = (cfg.beta, cfg.gamma, cfg.sft_weight);
    let by_hand = |rejected: &[Vec<i64>]| {
        let _g = tch::no_grad_guard();
        let l_w = mean_logp_by_hand(&model, e, &e.chosen_ids).double_value(&[]);
        let l_l: Vec<f64> = rejected
            .iter()
            .map(|y| mean_logp_by_hand(&model, e, y).double_value(&[]))
            .collect();
        let z = beta * l_w - beta * l_l.iter().sum::<f64>() / l_l.len() as f64 - gamma;
        // −log σ(z) = ln(1 + e^(−z))
        (1.0 + (-z).exp()).ln() + lambda * -l_w
    };
    let expect = by_hand(&e.rejected_ids);
    let mut with_eot = e.rejected_ids.clone();
    with_eot[1].push(eot as i64);
    let wrong = by_hand(&with_eot);
    let dev = Device::Cpu;
    let shared = backward_shared_prompt(&model, &examples, &cfg, dev, false, 1, 1.0)
        .unwrap()
        .loss
        .double_value(&[]);
    let batch = collate(&examples, dev).unwrap();
    let joint = backward_joint(&model, &batch, &cfg, false, 1, 1.0)
        .unwrap()
        .loss
        .double_value(&[]);
    let bound = rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH);
    assert_within("shared prompt vs hand", relative(expect, shared), bound);
    assert_within("joint vs hand", relative(expect, joint), bound);
    assert!(
        relative(expect, wrong) > 100.0 * bound,
        "an appended end of turn must change the loss: {expect} vs {wrong}"
    );
    println!("loss {shared:.6} (hand {expect:.6}; with an end of turn appended {wrong:.6})");
}
