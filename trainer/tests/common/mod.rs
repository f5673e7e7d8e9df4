//! Helpers shared by the trainer's integration tests: a tiny random Llama in HF layout,
//! synthetic training samples as Parquet, a training config, LoRA gradient capture.
#![allow(dead_code)] // each test file uses a subset

pub mod numeric;

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::Schema;
use logo_schemas::{Record, SampleKey, TrainingSample, SCHEMA_VERSION_KEY};
use logo_trainer::config::{GradientMode, RawTrainConfig, TrainConfig};
use logo_trainer::lora::LoraConfig;
use logo_trainer::loss::LossConfig;
use logo_trainer::optim::AdamWConfig;
use logo_trainer::train_loop::TrainSummary;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tch::{Kind, Tensor};

pub const VOCAB: i64 = 64;

/// libtorch's random generator is global to the process and the test harness runs tests on
/// parallel threads: tests that draw from it (dropout, init) take this lock.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`tiny_model`] under [`rng_lock`], for tests that do not hold it for their whole run.
pub fn tiny_model_locked(dir: &Path) {
    let _rng = rng_lock();
    tiny_model(dir);
}

/// A tiny Llama in Hugging Face layout: config.json + model.safetensors, random weights
/// (seeded: the same every run when the caller holds [`rng_lock`]).
pub fn tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, i, layers, heads, kv) = (32i64, 64i64, 2, 4i64, 2i64);
    let hd = h / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": false,
        "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    tch::manual_seed(11);
    let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.08;
    let mut named: Vec<(String, Tensor)> = vec![
        ("model.embed_tokens.weight".into(), r(&[VOCAB, h])),
        (
            "model.norm.weight".into(),
            Tensor::ones([h], (Kind::Float, tch::Device::Cpu)),
        ),
        ("lm_head.weight".into(), r(&[VOCAB, h])),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        named.push((format!("{p}.self_attn.q_proj.weight"), r(&[heads * hd, h])));
        named.push((format!("{p}.self_attn.k_proj.weight"), r(&[kv * hd, h])));
        named.push((format!("{p}.self_attn.v_proj.weight"), r(&[kv * hd, h])));
        named.push((format!("{p}.self_attn.o_proj.weight"), r(&[h, heads * hd])));
        named.push((format!("{p}.mlp.gate_proj.weight"), r(&[i, h])));
        named.push((format!("{p}.mlp.up_proj.weight"), r(&[i, h])));
        named.push((format!("{p}.mlp.down_proj.weight"), r(&[h, i])));
        named.push((
            format!("{p}.input_layernorm.weight"),
            Tensor::ones([h], (Kind::Float, tch::Device::Cpu)),
        ));
        named.push((
            format!("{p}.post_attention_layernorm.weight"),
            Tensor::ones([h], (Kind::Float, tch::Device::Cpu)),
        ));
    }
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
}

pub fn sample(i: u32) -> TrainingSample {
    let prompt: Vec<u32> = (0..12).map(|t| (t * 7 + i * 3) % VOCAB as u32).collect();
    // Synthetic, non-contiguous positions (continuous chunks with gaps).
    let positions: Vec<u32> = (0..12u32)
        .map(|t| t + if t >= 6 { 900 } else { 0 })
        .collect();
    TrainingSample {
        key: SampleKey {
            sample_id: format!("doc:{i}#q0"),
            document_id: format!("doc:{i}"),
            question_index: 0,
            source_file: "synthetic".into(),
            source_row: i as u64 + 1,
            question: Some("q".into()),
            answer: None,
            question_origin: "source".into(),
        },
        context_chunk_ids: vec![0, 1],
        context_chunk_scores: vec![7, 0],
        prompt_input_ids: prompt,
        prompt_segments: vec![6, 6],
        chosen: "a".into(),
        chosen_input_ids: vec![5, 9, 13, 2],
        chosen_origin: "generated".into(),
        rejected: vec!["b".into(), "c".into()],
        rejected_input_ids: vec![vec![40, 41, 2], vec![50, 51, 52, 53, 2]],
        rejected_strategy: vec!["irrelevant".into(), "partial".into()],
        generator: "test".into(),
        generator_settings: "{}".into(),
        chosen_chunk_ids: vec![0],
        rejected_chunk_ids: vec![vec![1]],
        chosen_finish_reason: "stop".into(),
        rejected_finish_reason: vec!["stop".into()],
        chosen_stop_token_id: Some(2),
        rejected_stop_token_id: vec![Some(2)],
        chosen_seed: Some(7),
        rejected_seed: vec![8],
        generator_model: "m".into(),
        prompt_position_ids: positions,
        position_strategy: "continuous".into(),
        target_length: 4096,
    }
}

pub fn write_parquet(path: &Path, rows: &[TrainingSample], version: Option<&str>) {
    write_parquet_without(path, rows, version, &[]);
}

/// [`write_parquet`] without the columns `drop` (a file written before they existed).
pub fn write_parquet_without(
    path: &Path,
    rows: &[TrainingSample],
    version: Option<&str>,
    drop: &[&str],
) {
    let batch = TrainingSample::to_batch(rows).unwrap();
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !drop.contains(&batch.schema().field(i).name().as_str()))
        .collect();
    let batch = batch.project(&keep).unwrap();
    let props = WriterProperties::builder()
        .set_key_value_metadata(
            version.map(|v| vec![KeyValue::new(SCHEMA_VERSION_KEY.into(), v.to_string())]),
        )
        .build();
    // Drop the Arrow schema metadata (which carries the version too): the KV entry alone decides.
    let schema = Arc::new(Schema::new(batch.schema().fields().clone()));
    let batch =
        arrow::array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

pub fn config(data: &Path, model: &Path, output: &Path) -> RawTrainConfig {
    RawTrainConfig {
        data: data.into(),
        model: model.into(),
        output: output.into(),
        loss: LossConfig::default(),
        lora: LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.1,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        },
        optim: AdamWConfig {
            lr: 5e-3,
            ..AdamWConfig::default()
        },
        max_steps: Some(6),
        stop_after_step: None,
        batch_size: 2,
        grad_accum: 1,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        max_grad_norm: 1.0,
        save_steps: 3,
        shuffle_buffer: 8,
        seed: 3,
        device: "cpu".into(),
        resume: None,
        progress: false,
        gradient: GradientMode::Joint,
        checkpointing: logo_trainer::config::Checkpointing::Off,
    }
}

/// [`logo_trainer::train_loop::train`] on `cfg`, validated first (`TrainConfig::try_from`, the
/// binary's one check): a range error comes back as training's would.
pub fn train(cfg: &RawTrainConfig) -> logo_trainer::Result<TrainSummary> {
    logo_trainer::train_loop::train(&TrainConfig::try_from(cfg.clone())?)
}

/// The tiny model with LoRA r = 4, no dropout, and every adapter tensor random (so every
/// gradient path is exercised).
pub fn tiny_lora_model(dir: &Path) -> logo_trainer::model::Llama {
    tiny_model(dir);
    let lora = LoraConfig::default().with_r(4).with_dropout(0.0);
    let model =
        logo_trainer::model::Llama::load(dir, Some(&lora), tch::Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(13);
    let _g = tch::no_grad_guard();
    // By name: the store's map iterates in a different order in every process.
    for (_, mut t) in model.lora_parameters() {
        let r = Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * 0.3;
        t.copy_(&r);
    }
    drop(_g);
    model
}

/// Samples 0 and 1 as the trainer's examples.
pub fn tiny_examples() -> Vec<logo_trainer::data::Example> {
    let v = |x: &[u32]| x.iter().map(|&t| t as i64).collect::<Vec<i64>>();
    (0..2)
        .map(|i| {
            let s = sample(i);
            logo_trainer::data::Example {
                sample_id: s.key.sample_id.clone(),
                prompt_ids: v(&s.prompt_input_ids),
                prompt_positions: v(&s.prompt_position_ids),
                chosen_ids: v(&s.chosen_input_ids),
                rejected_ids: s.rejected_input_ids.iter().map(|r| v(r)).collect(),
            }
        })
        .collect()
}

/// Zeroes the LoRA gradients, runs `run` (which back-propagates and returns the loss), and
/// returns the loss and the gradients sorted by name.
pub fn lora_grads(
    model: &logo_trainer::model::Llama,
    run: &dyn Fn() -> f64,
) -> (f64, Vec<(String, Tensor)>) {
    let vars = model.lora_parameters();
    for (_, t) in &vars {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let loss = run();
    let named = vars
        .into_iter()
        .map(|(k, t)| (k, t.grad().copy()))
        .collect();
    (loss, named)
}

/// An f64 copy of `model`'s base (loaded again from `dir`) carrying the same adapters: the
/// twin of a same-maths test (see [`numeric`]).
pub fn f64_twin(model: &logo_trainer::model::Llama, dir: &Path) -> logo_trainer::model::Llama {
    let lora = LoraConfig::default().with_r(4).with_dropout(0.0);
    let twin =
        logo_trainer::model::Llama::load(dir, Some(&lora), tch::Device::Cpu, Kind::Double).unwrap();
    let _g = tch::no_grad_guard();
    for ((_, mut dst), (_, src)) in twin
        .lora_parameters()
        .into_iter()
        .zip(model.lora_parameters())
    {
        dst.copy_(&src);
    }
    twin
}
