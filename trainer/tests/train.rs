//! Training behaviour on a tiny random Llama written by the test itself: the loss falls and
//! the margin rises on a fixed batch, resume repeats the uninterrupted run, and bad Parquet
//! files give clear errors naming the file and the column.

mod common;

use std::path::Path;

use common::numeric::*;
use common::*;
use logo_schemas::{Record, TrainingSample, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use logo_trainer::checkpoint::read_metrics;
use logo_trainer::config::GradientMode;
use logo_trainer::loss::LossConfig;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tch::{Kind, Tensor};

#[test]
fn loss_falls_and_margin_rises_on_a_fixed_batch() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // Two samples, batch 2: every step sees the same batch.
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
    cfg.lora.lora_dropout = 0.0;
    cfg.max_steps = Some(8);
    cfg.save_steps = 0;
    let summary = train(&cfg).unwrap();
    let (first, last) = (summary.metrics[0], *summary.metrics.last().unwrap());
    assert_eq!(summary.metrics.len(), 8);
    assert!(
        last.loss < first.loss - 0.05,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    assert!(
        last.margin > first.margin + 0.1,
        "margin {} → {}",
        first.margin,
        last.margin
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "training.png",
    ] {
        assert!(dir.path().join("out").join(f).is_file(), "{f} missing");
    }
}

#[test]
fn resume_repeats_the_uninterrupted_run() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let rows: Vec<TrainingSample> = (0..10).map(sample).collect();
    write_parquet(
        &dir.path().join("data/a.parquet"),
        &rows,
        Some(SCHEMA_VERSION),
    );
    let data = dir.path().join("data");
    let model = dir.path().join("model");
    // Uninterrupted: 6 steps.
    let full = train(&config(&data, &model, &dir.path().join("full"))).unwrap();
    // Interrupted: copy the run's checkpoint-3 and resume from it in a fresh folder.
    let mut resumed_cfg = config(&data, &model, &dir.path().join("full"));
    resumed_cfg.resume = Some(dir.path().join("full/checkpoint-3"));
    resumed_cfg.output = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed_cfg.output).unwrap();
    std::fs::copy(
        dir.path().join("full/metrics.jsonl"),
        resumed_cfg.output.join("metrics.jsonl"),
    )
    .unwrap();
    let resumed = train(&resumed_cfg).unwrap();
    assert_eq!(resumed.metrics.len(), 3);
    for (a, b) in full.metrics[3..].iter().zip(&resumed.metrics) {
        assert_eq!(a.step, b.step);
        // The same operations in the same order on the same inputs: identical.
        assert_within(
            &format!("resume step {} loss", a.step),
            relative(a.loss, b.loss),
            RESUME_BOUND,
        );
        assert_within(
            &format!("resume step {} margin", a.step),
            relative(a.margin, b.margin),
            RESUME_BOUND,
        );
    }
    // metrics.jsonl of the resumed folder holds steps 1..=6 once each.
    let steps: Vec<usize> = read_metrics(&resumed_cfg.output.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    // A checkpoint at or past the run's last step has nothing left to train: refused, not a
    // silent success.
    let mut done = config(&data, &model, &dir.path().join("done"));
    done.resume = Some(dir.path().join("full/checkpoint-3"));
    done.max_steps = Some(3);
    let e = train(&done).unwrap_err().to_string();
    assert!(
        e.contains("config key resume: ")
            && e.contains("is at step 3, and this run ends at step 3"),
        "{e}"
    );
    // A run cut into parts (stop_after_step 2, then resumed in the same folder) is the
    // uninterrupted run: the cut part leaves checkpoint-2 and no final adapter or summary.
    let mut cut = config(&data, &model, &dir.path().join("cut"));
    cut.stop_after_step = Some(2);
    let first = train(&cut).unwrap();
    assert_eq!(first.steps, 2);
    let out = dir.path().join("cut");
    assert!(out.join("checkpoint-2/trainer_state.json").is_file());
    for f in ["adapter_model.safetensors", "summary.json", "checkpoint-3"] {
        assert!(!out.join(f).exists(), "{f} written by a cut run");
    }
    cut.stop_after_step = None;
    cut.resume = Some(out.join("checkpoint-2"));
    let rest = train(&cut).unwrap();
    assert_eq!(rest.metrics.len(), 4);
    for (a, b) in full.metrics[2..].iter().zip(&rest.metrics) {
        assert_eq!(a.step, b.step);
        assert_within(
            &format!("cut run step {} loss", a.step),
            relative(a.loss, b.loss),
            RESUME_BOUND,
        );
    }
    assert!(out.join("adapter_model.safetensors").is_file());
}

#[test]
fn bad_parquet_gives_a_clear_error() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    let case = |name: &str, write: &dyn Fn(&Path)| -> String {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        write(&data.join("part.parquet"));
        let cfg = config(&data, &model, &dir.path().join(format!("{name}-out")));
        train(&cfg).unwrap_err().to_string()
    };
    let e = case("noversion", &|p| write_parquet(p, &[sample(0)], None));
    assert!(
        e.contains("part.parquet") && e.contains("schema version: expected 1, got none"),
        "{e}"
    );
    let e = case("oldversion", &|p| write_parquet(p, &[sample(0)], Some("0")));
    assert!(e.contains("schema version: expected 1, got 0"), "{e}");
    let e = case("nocolumn", &|p| {
        let batch = TrainingSample::to_batch(&[sample(0)]).unwrap();
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| batch.schema().field(i).name() != "chosen_input_ids")
            .collect();
        let batch = batch.project(&keep).unwrap();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_string(),
                SCHEMA_VERSION.to_string(),
            )]))
            .build();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(p).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    });
    assert!(
        e.contains("part.parquet") && e.contains("missing column chosen_input_ids"),
        "{e}"
    );
    let e = case("emptyresponse", &|p| {
        let mut s = sample(0);
        s.rejected_input_ids[1].clear();
        write_parquet(p, &[s], Some(SCHEMA_VERSION))
    });
    assert!(
        e.contains("part.parquet")
            && e.contains(
                "sample doc:0#q0: field rejected_input_ids: rejected response 1 is empty"
            ),
        "{e}"
    );
}

/// The bounds of a same-maths gradient test: the f32 tiny model (a regression bound, from
/// the reduction depth) and its f64 twin (tight), see `common::numeric`.
fn same_maths_models(dir: &Path) -> [(logo_trainer::model::Llama, f64); 2] {
    let model = tiny_lora_model(dir);
    let twin = f64_twin(&model, dir);
    [
        (model, rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH)),
        (twin, F64_TWIN_BOUND),
    ]
}

/// Checks every gradient of `other` against `reference` and the losses, under `bound`.
fn assert_same_gradients(
    label: &str,
    (loss_ref, reference): &(f64, Vec<(String, Tensor)>),
    (loss, other): &(f64, Vec<(String, Tensor)>),
    bound: f64,
) {
    assert_within(&format!("{label} loss"), relative(*loss_ref, *loss), bound);
    assert_within(
        &format!("{label} gradient"),
        worst_relative(reference, other),
        bound,
    );
}

/// The decoupled gradient (one response graph at a time) equals the joint backward.
#[test]
fn decoupled_gradient_equals_joint_gradient() {
    use logo_trainer::data::collate;
    use logo_trainer::decoupled::backward_decoupled;
    use logo_trainer::train_loop::batch_loss;
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let examples = tiny_examples();
    let cfg = LossConfig::default();
    for (model, bound) in same_maths_models(&dir.path().join("model")) {
        let joint = lora_grads(&model, &|| {
            let out = batch_loss(
                &model,
                &collate(&examples, tch::Device::Cpu).unwrap(),
                &cfg,
                false,
            )
            .unwrap();
            (&out.loss * 0.5).backward();
            out.loss.double_value(&[])
        });
        let dec = lora_grads(&model, &|| {
            backward_decoupled(&model, &examples, &cfg, tch::Device::Cpu, false, 1, 0.5)
                .unwrap()
                .loss
                .double_value(&[])
        });
        let label = format!("decoupled vs joint ({:?})", model.kind());
        assert_same_gradients(&label, &joint, &dec, bound);
    }
}

/// Per-layer activation checkpointing gives the plain gradient, joint and decoupled.
#[test]
fn checkpointed_gradient_equals_plain_gradient() {
    use logo_trainer::data::collate;
    use logo_trainer::decoupled::backward_decoupled;
    use logo_trainer::train_loop::backward_joint;
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let examples = tiny_examples();
    let cfg = LossConfig::default();
    let batch = collate(&examples, tch::Device::Cpu).unwrap();
    let dev = tch::Device::Cpu;
    for (model, bound) in same_maths_models(&dir.path().join("model")) {
        let joint = |ckpt: bool| {
            backward_joint(&model, &batch, &cfg, ckpt, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        };
        let plain = lora_grads(&model, &|| joint(false));
        let ckpt = lora_grads(&model, &|| joint(true));
        let both = lora_grads(&model, &|| {
            backward_decoupled(&model, &examples, &cfg, dev, true, 1, 1.0)
                .unwrap()
                .loss
                .double_value(&[])
        });
        let kind = model.kind();
        assert_same_gradients(
            &format!("checkpointed vs plain ({kind:?})"),
            &plain,
            &ckpt,
            bound,
        );
        assert_same_gradients(
            &format!("decoupled+checkpointed vs plain ({kind:?})"),
            &plain,
            &both,
            bound,
        );
    }
}

/// The shared-prompt gradient (prompt once, responses against its cached keys and values)
/// equals the joint backward over the M + 1 full sequences, with and without checkpointing:
/// to the f32 reduction bound with an f32 model, and to the f64 twin's bound with an f64
/// model, which separates rounding from a real difference (a fixed f32 bound of 1e-5 once
/// failed at 1.03e-5 under another CPU's kernels).
#[test]
fn shared_prompt_gradient_equals_joint_gradient() {
    use logo_trainer::data::collate;
    use logo_trainer::shared_prompt::backward_shared_prompt;
    use logo_trainer::train_loop::backward_joint;
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut examples = tiny_examples();
    // Different prompt lengths in the batch (the joint batch pads; the shared path never does).
    examples[1].prompt_ids.truncate(9);
    examples[1].prompt_positions.truncate(9);
    let cfg = LossConfig::default();
    let dev = tch::Device::Cpu;
    let batch = collate(&examples, dev).unwrap();
    for (model, bound) in same_maths_models(&dir.path().join("model")) {
        let joint = lora_grads(&model, &|| {
            backward_joint(&model, &batch, &cfg, false, 1, 0.5)
                .unwrap()
                .loss
                .double_value(&[])
        });
        let shared = |ckpt: bool| {
            backward_shared_prompt(&model, &examples, &cfg, dev, ckpt, 1, 0.5)
                .unwrap()
                .loss
                .double_value(&[])
        };
        let plain = lora_grads(&model, &|| shared(false));
        let ckpt = lora_grads(&model, &|| shared(true));
        let kind = model.kind();
        assert_same_gradients(
            &format!("shared prompt vs joint ({kind:?})"),
            &joint,
            &plain,
            bound,
        );
        assert_same_gradients(
            &format!("shared prompt+checkpointed vs joint ({kind:?})"),
            &joint,
            &ckpt,
            bound,
        );
    }
}

/// A whole run with `gradient: shared_prompt` logs the joint run's losses (no dropout, so both runs see
/// the same model at every step).
#[test]
fn share_prompt_run_repeats_the_joint_run() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let rows: Vec<TrainingSample> = (0..4).map(sample).collect();
    write_parquet(
        &dir.path().join("data/a.parquet"),
        &rows,
        Some(SCHEMA_VERSION),
    );
    let run = |share: bool, out: &str| {
        let mut cfg = config(
            &dir.path().join("data"),
            &dir.path().join("model"),
            &dir.path().join(out),
        );
        cfg.lora.lora_dropout = 0.0;
        cfg.max_steps = Some(4);
        cfg.save_steps = 0;
        cfg.gradient = if share {
            GradientMode::SharedPrompt
        } else {
            GradientMode::Joint
        };
        train(&cfg).unwrap().metrics
    };
    let joint = run(false, "joint");
    let shared = run(true, "shared");
    for (a, b) in joint.iter().zip(&shared) {
        assert_within(
            &format!("shared prompt run vs joint run, step {} loss", a.step),
            relative(a.loss, b.loss),
            training_run_bound(a.step),
        );
        assert_eq!(a.tokens, b.tokens);
    }
}

/// `export-hf --adapter` writes a HF folder whose plain logits equal the base model with the
/// adapter applied.
#[test]
fn exported_merged_model_equals_base_with_adapter() {
    use logo_trainer::model::Llama;
    use logo_trainer::peft::save_adapter;
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("model");
    let model = tiny_lora_model(&base);
    save_adapter(&model, &dir.path().join("adapter"), "tiny").unwrap();
    logo_trainer::peft::export_hf(
        &base,
        Some(&dir.path().join("adapter")),
        &dir.path().join("merged"),
    )
    .unwrap();
    let merged = Llama::load(
        &dir.path().join("merged"),
        None,
        tch::Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let ids = Tensor::from_slice(&[3i64, 9, 27, 14, 5, 60]).reshape([1, 6]);
    let pos = Tensor::from_slice(&[0i64, 1, 2, 700, 701, 702]).reshape([1, 6]);
    let _g = tch::no_grad_guard();
    let a = model.forward(&ids, &pos).unwrap();
    let b = merged.forward(&ids, &pos).unwrap();
    let plain = Llama::load(&base, None, tch::Device::Cpu, Kind::Float)
        .unwrap()
        .forward(&ids, &pos)
        .unwrap();
    let diff = (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]);
    assert_within(
        "merged export vs base with adapter, logits",
        diff,
        rounding_bound(Kind::Float, TINY_GRADIENT_DEPTH),
    );
    assert!(
        (&a - &plain).abs().max().double_value(&[]) > 1e-2,
        "the adapter must matter"
    );
}

/// Hyper-parameters that are NaN, infinite or out of range stop the run before any work,
/// naming the config key; nothing is written.
#[test]
fn bad_hyperparameters_stop_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    type Set = fn(&mut logo_trainer::config::RawTrainConfig);
    let cases: [(&str, Set); 7] = [
        ("loss.beta", |c| c.loss.beta = f64::NAN),
        ("loss.beta", |c| c.loss.beta = f64::INFINITY),
        ("loss.gamma", |c| c.loss.gamma = f64::INFINITY),
        ("loss.sft_weight", |c| c.loss.sft_weight = f64::NAN),
        ("max_grad_norm", |c| c.max_grad_norm = -1.0),
        ("optim.lr", |c| c.optim.lr = f64::NAN),
        ("lora.lora_alpha", |c| c.lora.lora_alpha = f64::INFINITY),
    ];
    for (key, set) in cases {
        let mut cfg = config(&dir.path().join("data"), &dir.path().join("model"), &out);
        set(&mut cfg);
        let e = train(&cfg).unwrap_err().to_string();
        assert!(e.starts_with(&format!("config key {key}: ")), "{key}: {e}");
    }
    assert!(!out.exists(), "no output before the config is valid");
}

/// Token ids outside the model's vocabulary (data made with another tokenizer) are an input
/// error naming the file, the sample, the column and the id, not a libtorch index error.
#[test]
fn token_ids_outside_the_vocabulary_are_named() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let mut bad = sample(1);
    bad.chosen_input_ids[1] = VOCAB as u32 + 7;
    write_parquet(
        &dir.path().join("data/part.parquet"),
        &[sample(0), bad],
        Some(SCHEMA_VERSION),
    );
    let cfg = config(
        &dir.path().join("data"),
        &dir.path().join("model"),
        &dir.path().join("out"),
    );
    let e = train(&cfg).unwrap_err().to_string();
    let want = format!(
        "sample doc:1#q0: field chosen_input_ids: token id {} is outside the model's vocabulary of {VOCAB}",
        VOCAB + 7
    );
    assert!(e.contains("part.parquet") && e.contains(&want), "{e}");
}

/// A loss that turns non-finite stops the run at that step with a clear error, before the
/// update: no adapter of NaNs is written.
#[test]
fn a_diverged_step_stops_before_the_update() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_model(&model);
    // A model whose output head holds an infinity: every logit row is non-finite.
    let file = model.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "lm_head.weight" {
            let _ = t.get(0).get(0).fill_(f64::INFINITY);
        }
    }
    Tensor::write_safetensors(&tensors, &file).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    write_parquet(
        &dir.path().join("data/a.parquet"),
        &[sample(0), sample(1)],
        Some(SCHEMA_VERSION),
    );
    let out = dir.path().join("out");
    let e = train(&config(&dir.path().join("data"), &model, &out))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("step 1: training diverged: loss NaN") && e.contains("nothing of this step"),
        "{e}"
    );
    assert!(!out.join("adapter_model.safetensors").exists());
    assert!(!out.join("checkpoint-1").exists());
}
