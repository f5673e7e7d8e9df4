//! The engine under a real Slurm (a one-node cluster of Debian's slurm-wlm started by
//! `scripts/slurm-cluster.sh`, stopped after): the README's job array, `sbatch --array=0-1 …
//! logo-engine run … --output SHARED`, writes the same parts (bytes) as one process without
//! shards, and `logo-engine status` shows every unit done; an array task killed with `scancel`
//! in the middle of its units and the same line submitted again complete the folder with
//! nothing lost or duplicated. Under `CI=true` a missing Slurm, model or venv fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logo_env::slurm::Cluster;
use logo_tests::{binary, describe, embedded_model, or_skip, run};

/// Eight one-question documents (one unit each) for the embedded model.
fn write_inputs(dir: &Path, model: &Path) -> PathBuf {
    let filler = "The weather in the valley was mild and farmers planted barley, rye and oats \
                  along the river. Traders brought salt and copper from distant ports every spring. ";
    let names = [
        "Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana",
    ];
    let lines: Vec<String> = names
        .iter()
        .map(|n| {
            serde_json::json!({
                "input": format!(
                    "{n} Zimmerman hid the golden key under the old oak tree near Bristol harbour. {}",
                    filler.repeat(3)
                ),
                "instructions": [format!("Where did {n} Zimmerman hide the golden key?")],
                "outputs": ["Under the old oak tree near Bristol harbour."],
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("docs.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = dir.join("p.yaml");
    std::fs::write(
        &yaml,
        format!(
            "seed: 3\n\
             source: {{paths: [docs.jsonl], batch_size: 1}}\n\
             model: {{path: {}, threads: 1}}\n\
             chunker: {{chunk_size: 16}}\n\
             sampler: {{num_chunks: 2, threshold: 1, num_negatives: 1}}\n\
             generator: {{max_new_tokens: 48, chosen: reference}}\n\
             positions: {{target_length: 512}}\n\
             sink: {{output: out, unit_rows: 1}}\n",
            model.display()
        ),
    )
    .unwrap();
    yaml
}

/// The Parquet parts of `dir` by name, with their bytes.
fn parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Units with a record in `out/units/*/` (done).
fn units_done(out: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(out.join("units")) else {
        return 0;
    };
    dirs.flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

fn array_line(yaml: &Path, out: &Path, log: &Path) -> Vec<String> {
    vec![
        "--array=0-1".into(),
        "--cpus-per-task=1".into(),
        format!("--output={}", log.display()),
        "--wrap".into(),
        format!(
            "{} run {} --quiet --output {}",
            binary("logo-engine").display(),
            yaml.display(),
            out.display()
        ),
    ]
}

/// `logo-engine status`'s `all` row says 8 units done, 0 pending, 0 failed.
fn assert_all_done(status: &str) {
    let all = status
        .lines()
        .find(|l| l.trim_start().starts_with("all"))
        .unwrap();
    let cols: Vec<&str> = all.split_whitespace().collect();
    assert_eq!(&cols[1..4], ["8", "0", "0"], "{status}");
}

fn status(out: &Path) -> String {
    let o = run("logo-engine", &["status", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", describe(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_job_array_equals_one_process_and_survives_scancel() {
    let Some(model) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(cluster) = Cluster::start(&repo, &dir.path().join("slurm")) else {
        return;
    };
    let yaml = write_inputs(dir.path(), &model);
    // One process, no shards: the reference.
    let single = dir.path().join("single");
    let o = run(
        "logo-engine",
        &[
            "run",
            yaml.to_str().unwrap(),
            "--quiet",
            "--output",
            single.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let reference = parts(&single);
    assert_eq!(reference.len(), 8, "one part per document");

    // The README's array: two tasks on one shared folder.
    let shared = dir.path().join("shared");
    let line = array_line(&yaml, &shared, &dir.path().join("array-%a.log"));
    let args: Vec<&str> = line.iter().map(String::as_str).collect();
    let job = cluster.sbatch(&args);
    cluster.wait(&job, Duration::from_secs(600));
    assert_eq!(parts(&shared), reference, "array parts vs one process");
    let s = status(&shared);
    assert!(s.contains("0/2") && s.contains("1/2"), "{s}");
    assert_all_done(&s);

    // Task 1 killed after its first unit, the same line submitted again.
    let killed = dir.path().join("killed");
    let line = array_line(&yaml, &killed, &dir.path().join("killed-%a.log"));
    let args: Vec<&str> = line.iter().map(String::as_str).collect();
    let job = cluster.sbatch(&args);
    let started = Instant::now();
    while units_done(&killed) < 2 {
        assert!(started.elapsed() < Duration::from_secs(300), "no unit done");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = cluster
        .command("scancel")
        .arg(format!("{job}_1"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cluster.wait(&job, Duration::from_secs(600));
    let after_kill = units_done(&killed);
    assert!(after_kill < 8, "the kill came after every unit was done");
    let job = cluster.sbatch(&args);
    cluster.wait(&job, Duration::from_secs(600));
    assert_eq!(
        parts(&killed),
        reference,
        "killed and resubmitted vs one process"
    );
    let s = status(&killed);
    assert_all_done(&s);
    println!("units done when task 1 was cancelled: {after_kill} of 8\n{s}");
}
