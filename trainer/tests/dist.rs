//! Data parallelism on CPU: 2 ranks with batch b take the same step as 1 rank with batch 2b
//! (in-process thread ranks, and `logo-trainer --nproc-per-node 2` processes over TCP); only
//! rank 0 writes; a rank that dies or hangs stops the job with an error naming it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::numeric::*;
use common::*;
use logo_schemas::SCHEMA_VERSION;
use logo_trainer::config::TrainConfig;
use logo_trainer::data::collate;
use logo_trainer::dist::{average_gradients, Collective, Threads};
use logo_trainer::lora::LoraConfig;
use logo_trainer::loss::LossConfig;
use logo_trainer::model::Llama;
use logo_trainer::optim::{AdamW, AdamWConfig};
use logo_trainer::train_loop::{backward_joint, train_with};
use tch::{Device, Kind, Tensor};

/// Tensors by name.
type Named = Vec<(String, Tensor)>;

/// One optimizer step on `examples`: joint backward (mean loss over the batch), gradients
/// averaged over `coll`'s ranks, clipping at 1, AdamW at lr 1e-2. Returns the averaged
/// gradients and the updated LoRA weights.
fn step(
    model: &Llama,
    examples: &[logo_trainer::data::Example],
    coll: &mut dyn Collective,
) -> (Named, Named) {
    let named = model.lora_parameters();
    let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt = AdamW::new(
        named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
        AdamWConfig::default(),
    );
    let batch = collate(examples, Device::Cpu).unwrap();
    backward_joint(model, &batch, &LossConfig::default(), false, 1, 1.0).unwrap();
    average_gradients(coll, &params).unwrap();
    let grads = named
        .iter()
        .map(|(n, t)| (n.clone(), t.grad().copy()))
        .collect();
    opt.clip_grad_norm(1.0);
    opt.step(1e-2);
    let weights = named
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect();
    (grads, weights)
}

/// The Threads collective: rank r back-propagates sample r alone, the ranks average; this
/// equals one rank back-propagating both samples (the loss is the batch mean), in the
/// gradient and in the AdamW update. The models run in f64 (the LoRA weights and gradients
/// stay f32), so that what is left is f32 rounding of the gradient, not of the activations;
/// the f32 end to end comparison is the `--nproc-per-node` test below.
#[test]
fn two_thread_ranks_equal_one_rank_with_twice_the_batch() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let adapters = tiny_lora_model(&dir.path().join("model"));
    let lora = LoraConfig::default().with_r(4).with_dropout(0.0);
    let examples = tiny_examples();
    // Three f64 models with the same base and the same (random) adapters: the reference and
    // the two ranks.
    let mut models: Vec<Llama> = (0..3)
        .map(|_| {
            let m = Llama::load(
                &dir.path().join("model"),
                Some(&lora),
                Device::Cpu,
                Kind::Double,
            )
            .unwrap();
            let _g = tch::no_grad_guard();
            for ((_, mut dst), (_, src)) in m
                .lora_parameters()
                .into_iter()
                .zip(adapters.lora_parameters())
            {
                dst.copy_(&src);
            }
            m
        })
        .collect();
    let reference = models.remove(0);
    let (one_grads, one_weights) = step(&reference, &examples, &mut logo_trainer::dist::Local);
    let handles: Vec<_> = models
        .into_iter()
        .zip(Threads::group(2))
        .zip(examples.clone())
        .map(|((model, mut coll), example)| {
            std::thread::spawn(move || step(&model, &[example], &mut coll))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Both ranks hold the same averaged gradient and weights, bit for bit (same sum order).
    assert_eq!(worst_relative(&results[0].0, &results[1].0), 0.0);
    assert_eq!(worst_relative(&results[0].1, &results[1].1), 0.0);
    let grad_diff = worst_relative(&one_grads, &results[0].0);
    let weight_diff = worst_relative(&one_weights, &results[0].1);
    println!(
        "2 thread ranks vs 1 rank with 2x batch: gradient {grad_diff:.2e}, weights after AdamW {weight_diff:.2e}"
    );
    assert_within(
        "2 thread ranks vs 1 rank, gradient (f64)",
        grad_diff,
        F64_TWIN_BOUND,
    );
    assert_within(
        "2 thread ranks vs 1 rank, weights (f64)",
        weight_diff,
        F64_TWIN_BOUND,
    );
}

/// Two thread ranks through the whole training loop: they log the same (global) metrics, and
/// only rank 0 writes its output folder.
#[test]
fn only_rank_zero_writes() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("model"));
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_parquet(&data.join("a.parquet"), &[sample(0)], Some(SCHEMA_VERSION));
    write_parquet(&data.join("b.parquet"), &[sample(1)], Some(SCHEMA_VERSION));
    let handles: Vec<_> = Threads::group(2)
        .into_iter()
        .map(|mut coll| {
            let mut cfg = config(
                &data,
                &dir.path().join("model"),
                &dir.path().join(format!("out{}", coll.rank())),
            );
            cfg.batch_size = 1;
            cfg.max_steps = Some(2);
            cfg.save_steps = 1;
            let cfg = TrainConfig::try_from(cfg).unwrap();
            std::thread::spawn(move || train_with(&cfg, &mut coll).unwrap())
        })
        .collect();
    let summaries: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(dir.path().join("out0/adapter_model.safetensors").is_file());
    assert!(dir
        .path()
        .join("out0/checkpoint-1/trainer_state.json")
        .is_file());
    assert!(!dir.path().join("out1").exists(), "rank 1 wrote files");
    for (a, b) in summaries[0].metrics.iter().zip(&summaries[1].metrics) {
        assert_eq!(
            (a.loss, a.grad_norm, a.tokens),
            (b.loss, b.grad_norm, b.tokens)
        );
    }
    // Both samples are seen each step: 12 prompt tokens × 3 sequences + responses 4 + 3 + 5.
    assert_eq!(summaries[0].metrics[0].tokens, 2 * (3 * 12 + 4 + 3 + 5));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out0/checkpoint-1/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2);
}

/// Two one-sample Parquet files (one row group each: one per rank) and the tiny model.
fn two_shard_setup(dir: &Path) {
    tiny_model_locked(&dir.join("model"));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_parquet(&data.join("a.parquet"), &[sample(0)], Some(SCHEMA_VERSION));
    write_parquet(&data.join("b.parquet"), &[sample(1)], Some(SCHEMA_VERSION));
}

fn trainer(dir: &Path, out: &str, batch: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logo-trainer"));
    c.args(["--data", &dir.join("data").display().to_string()])
        .args(["--model", &dir.join("model").display().to_string()])
        .args(["--output", &dir.join(out).display().to_string()])
        .args(["--batch-size", &batch.to_string()])
        .args([
            "--max-steps",
            "3",
            "--lr",
            "5e-3",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0",
        ])
        .args(["--device", "cpu", "--quiet", "--seed", "5"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("LOGO_FAULT")
        .env("OMP_NUM_THREADS", "1");
    c
}

fn read_adapter(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `logo-trainer --nproc-per-node 2 --batch-size 1` (two processes, TCP all-reduce, each
/// reading its own Parquet row group) trains the same adapter as one process with
/// `--batch-size 2`, with the default shared-prompt gradient and with the joint backward. The
/// shared-prompt gradient of a batch is the mean of per-sample gradients, (g₀ + g₁)/2 either
/// way, so the two runs agree bit for bit; the joint batch pads and sums in another order
/// (`common::numeric::training_run_bound(3)` = 2.2e-4; observed 2.5e-6 with avx2 kernels, 9.1e-6
/// with avx512).
#[test]
fn nproc_per_node_2_equals_one_process_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    two_shard_setup(dir.path());
    // 3 steps of the run below.
    for (mode, flags, tolerance) in [
        ("shared", &[][..], 0.0),
        ("joint", &["--gradient", "joint"][..], training_run_bound(3)),
    ] {
        let one = trainer(dir.path(), &format!("{mode}-one"), 2)
            .args(flags)
            .output()
            .unwrap();
        assert!(
            one.status.success(),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        let two = trainer(dir.path(), &format!("{mode}-two"), 1)
            .args(flags)
            .args(["--nproc-per-node", "2"])
            .output()
            .unwrap();
        assert!(
            two.status.success(),
            "{}",
            String::from_utf8_lossy(&two.stderr)
        );
        // Only rank 0 prints the step lines.
        let stdout = String::from_utf8_lossy(&two.stdout);
        assert_eq!(stdout.matches("step ").count(), 3, "{stdout}");
        let metrics = |run: &str| {
            logo_trainer::checkpoint::read_metrics(
                &dir.path().join(format!("{mode}-{run}/metrics.jsonl")),
            )
            .unwrap()
        };
        let (m1, m2) = (metrics("one"), metrics("two"));
        assert_eq!((m1.len(), m2.len()), (3, 3));
        let mut worst_loss = 0.0f64;
        for (a, b) in m1.iter().zip(&m2) {
            assert_eq!(a.tokens, b.tokens);
            worst_loss = worst_loss.max((a.loss - b.loss).abs());
            assert_within(
                &format!("--nproc-per-node 2 vs 1 ({mode}), step {} loss", a.step),
                relative(a.loss, b.loss),
                tolerance,
            );
            assert_within(
                &format!(
                    "--nproc-per-node 2 vs 1 ({mode}), step {} grad norm",
                    a.step
                ),
                relative(a.grad_norm, b.grad_norm),
                tolerance,
            );
        }
        let adapter = |run: &str| {
            read_adapter(
                &dir.path()
                    .join(format!("{mode}-{run}/adapter_model.safetensors")),
            )
        };
        let worst = worst_relative(&adapter("one"), &adapter("two"));
        println!(
            "--nproc-per-node 2 vs 1 process with 2x batch ({mode}): loss {worst_loss:.2e}, adapter {worst:.2e}"
        );
        // Three AdamW steps amplify f32 noise where a gradient element is ~0 (first-step
        // updates are ±lr whatever the magnitude).
        assert_within(
            &format!("--nproc-per-node 2 vs 1 ({mode}), adapter"),
            worst,
            tolerance,
        );
    }
}

/// torch 2.11's real `torchrun --no-python --nproc-per-node 2` (from the venv) starting two
/// `logo-trainer` ranks with `--batch-size 1` trains the adapter of one process with
/// `--batch-size 2`, bit for bit with the shared prompt (the mean of per-sample gradients
/// either way). Its agent holds `MASTER_PORT`; the ranks meet on `MASTER_PORT + 1`.
#[test]
fn torchrun_2_ranks_equal_one_process_with_twice_the_batch() {
    let py = logo_env::paths::venv_python_with(&["torch"]).ok();
    let torchrun = py
        .map(|p| p.with_file_name("torchrun"))
        .filter(|t| t.is_file());
    let Some(torchrun) = logo_env::paths::require_fixture(torchrun, "the venv's torchrun") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    two_shard_setup(dir.path());
    let one = trainer(dir.path(), "one", 2).output().unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    // The static launch (--master-port) and the elastic one (c10d rendezvous, as multi-node
    // jobs start), each a separate run.
    let (port, endpoint) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let launches: [(&str, Vec<&str>); 2] = [
        ("static", vec!["--master-port", &port]),
        (
            "c10d",
            vec![
                "--nnodes",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                &endpoint,
            ],
        ),
    ];
    for (name, launch) in launches {
        torchrun_run(&torchrun, dir.path(), name, &launch);
        compare_runs(dir.path(), "one", name);
    }
}

/// `srun -n 2 logo-trainer … --batch-size 1` on a real one-node Slurm cluster (Debian's
/// slurm-wlm, started by `scripts/slurm-cluster.sh`): the ranks find each other from
/// `SLURM_PROCID`/`SLURM_NTASKS` and the node list, and train the adapter of one process with
/// `--batch-size 2`, bit for bit with the shared prompt.
#[test]
fn srun_2_ranks_equal_one_process_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(cluster) = logo_env::slurm::Cluster::start(&repo, &dir.path().join("slurm")) else {
        return;
    };
    two_shard_setup(dir.path());
    let one = trainer(dir.path(), "one", 2).output().unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut srun = cluster.command("srun");
    srun.args(["-n", "2", "--cpus-per-task", "1"])
        .env("MASTER_PORT", port.to_string());
    run_launched(srun, dir.path(), "srun");
    compare_runs(dir.path(), "one", "srun");
}

/// `torchrun LAUNCH --no-python --nproc-per-node 2 logo-trainer …` (batch 1 per rank) into
/// `dir/out`.
fn torchrun_run(torchrun: &Path, dir: &Path, out: &str, launch: &[&str]) {
    let mut c = Command::new(torchrun);
    c.args(launch)
        .args(["--no-python", "--nproc-per-node", "2"]);
    run_launched(c, dir, out);
}

/// `launcher` (torchrun, srun, with its own options) starting `logo-trainer` with [`trainer`]'s
/// arguments (batch 1 per rank, output `dir/out`) over TCP; asserts it succeeded.
fn run_launched(mut launcher: Command, dir: &Path, out: &str) {
    let reference = trainer(dir, out, 1);
    let output = launcher
        .arg(env!("CARGO_BIN_EXE_logo-trainer"))
        .args(reference.get_args())
        .args(["--dist-backend", "tcp"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("LOGO_FAULT")
        .env_remove(logo_trainer::dist::PORT_VAR)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{:?}: {}\n{}",
        launcher.get_program(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `a` and `b` (folders of `dir`) logged the same 3 steps and wrote the same adapter, bit
/// for bit.
fn compare_runs(dir: &Path, a: &str, b: &str) {
    let metrics = |run: &str| {
        logo_trainer::checkpoint::read_metrics(&dir.join(run).join("metrics.jsonl")).unwrap()
    };
    let (m1, m2) = (metrics(a), metrics(b));
    assert_eq!((m1.len(), m2.len()), (3, 3));
    for (x, y) in m1.iter().zip(&m2) {
        assert_eq!(
            (x.tokens, x.loss, x.grad_norm),
            (y.tokens, y.loss, y.grad_norm)
        );
    }
    let adapter = |run: &str| read_adapter(&dir.join(run).join("adapter_model.safetensors"));
    let worst = worst_relative(&adapter(a), &adapter(b));
    println!("{b} (2 ranks) vs {a} (1 process, 2x batch): adapter {worst:.2e}");
    assert_eq!(worst, 0.0, "{b} vs {a}");
}

/// A rank that exits in the middle of training (`LOGO_FAULT=1:1`, test only) ends the job
/// within seconds, with a non-zero status and a message naming it.
#[test]
fn a_rank_that_exits_stops_the_job_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    two_shard_setup(dir.path());
    let started = Instant::now();
    let out = trainer(dir.path(), "out", 1)
        .args(["--nproc-per-node", "2"])
        .env("LOGO_FAULT", "1:1")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rank 1 (pid") && stderr.contains("exit status 17"),
        "{stderr}"
    );
    // Rank 0 saw the connection close while waiting in the all-reduce.
    assert!(
        stderr.contains("closed its connection during all_reduce"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    println!("job stopped {elapsed:?} after start:\n{stderr}");
}

/// Ranks started directly with torchrun's variables: when rank 1 hangs, rank 0 names it after
/// `LOGO_DIST_TIMEOUT_S` and exits non-zero instead of waiting forever.
#[test]
fn a_rank_that_hangs_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    two_shard_setup(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = |rank: usize| {
        trainer(dir.path(), "out", 1)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("LOGO_DIST_TIMEOUT_S", "3")
            .env("LOGO_FAULT", "1:1:hang")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let root = spawn(0);
    let mut hung = spawn(1);
    let started = Instant::now();
    let out = root.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let _ = hung.kill();
    let _ = hung.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rank 1 (pid") && stderr.contains("did not answer within 3 s"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    println!("rank 0 gave up {elapsed:?} after start:\n{stderr}");
}
