//! Never lose a sample: `logo-engine run` killed with SIGKILL and run again ends with the
//! uninterrupted run's dataset (same parts, same bytes); a different run on a finished output
//! stops and deletes nothing; parts do not depend on `batch_size` or thread counts; two shards
//! into one folder equal one process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logo_engine::sink::{read_training_samples, Manifest, MANIFEST};
use logo_tests::{binary, describe, embedded_model, or_skip};

/// A document whose first 16-token chunk holds every content term of its question.
fn doc(i: usize) -> String {
    let names = [
        "Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines",
    ];
    let filler = "The weather in the valley was mild and farmers planted barley, rye and oats \
                  along the river. Traders brought salt and copper from distant ports every spring. ";
    let name = names[i % names.len()];
    let q = format!("Where did {name} Zimmerman hide the golden key number {i}?");
    serde_json::json!({
        "context": format!(
            "{name} Zimmerman hid the golden key number {i} under the old oak tree near Bristol harbour. {}",
            filler.repeat(4)
        ),
        "questions": [q, format!("Who hid key number {i} near Bristol harbour?")],
    })
    .to_string()
}

/// Nine documents (one bad line among them) and a pipeline of units of 2 records, generating
/// every response (chosen and 1 rejected) in one short sentence of at most 32 tokens (a
/// response cut there is a counted skip: 4 of 18 samples here).
fn setup(dir: &Path, model: &Path, extra: &str) -> PathBuf {
    let mut lines: Vec<String> = (0..9).map(doc).collect();
    lines.insert(4, "{not json".into());
    std::fs::write(dir.join("docs.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = dir.join("p.yaml");
    std::fs::write(
        &yaml,
        format!(
            "seed: 3\n\
             source: {{paths: [docs.jsonl], batch_size: 3}}\n\
             model: {{path: {}, threads: 2}}\n\
             chunker: {{chunk_size: 16}}\n\
             sampler: {{num_chunks: 2, threshold: 1, num_negatives: 1}}\n\
             generator: {{max_new_tokens: 32, temperature: 0.5, system_prompt: \"Answer in one short sentence, using only the context.\"}}\n\
             positions: {{target_length: 256}}\n\
             sink: {{output: out, row_group_size: 3, unit_rows: 2}}\n{extra}",
            model.display()
        ),
    )
    .unwrap();
    yaml
}

fn engine(args: &[&str]) -> Command {
    let mut c = Command::new(binary("logo-engine"));
    c.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT");
    c
}

fn run_ok(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = engine(args).envs(envs.iter().copied()).output().unwrap();
    // Exit 1: rows were rejected (the bad line), the run completed.
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parts of an output folder: name → SHA-256 of the bytes (computed here, not read from the
/// manifest).
fn parts(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256(&std::fs::read(&p).unwrap()),
            )
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under `dir` (relative path → SHA-256).
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    sha256(&std::fs::read(&p).unwrap()),
                );
            }
        }
    }
    out
}

/// (generated, replayed) from a run summary's `generations` line.
fn generations(summary: &str) -> (u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("generations"))
        .unwrap_or_else(|| panic!("no generations line in {summary}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

fn sample_ids(dir: &Path) -> Vec<String> {
    read_training_samples(dir)
        .unwrap()
        .into_iter()
        .map(|s| s.key.sample_id)
        .collect()
}

/// The uninterrupted run, then: a kill -9 once a unit is committed and a rerun (same parts,
/// same bytes, same rejects; no sample lost or written twice; generations replayed from the
/// cache); a rerun of the finished output (nothing to do); another configuration on it
/// (refused, nothing deleted); `batch_size` 1 and one thread everywhere (same bytes); two
/// concurrent shards into one folder (same parts as one process) and `status`.
#[test]
fn killed_resumed_sharded_and_rebatched_runs_equal_the_uninterrupted_one() {
    let Some(model) = or_skip(embedded_model(), "the embedded model (scripts/just setup)") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path(), &model, "");
    let y = yaml.to_str().unwrap();
    let full = dir.path().join("full");
    let summary = run_ok(
        &["run", y, "--quiet", "--output", full.to_str().unwrap()],
        &[],
    );
    let reference = parts(&full);
    let ids = sample_ids(&full);
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(full.join(MANIFEST)).unwrap()).unwrap();
    // 10 records (one bad) in units of 2: 5 units; 9 documents × 2 questions.
    assert_eq!((manifest.units_total, manifest.units_done), (5, 5));
    assert_eq!(manifest.documents, 10);
    assert_eq!(manifest.rejects.get("source"), Some(&1));
    let questions = manifest.stats.rows_out["source"];
    let skipped: u64 = manifest.stats.skipped.values().sum();
    assert_eq!(questions, 18);
    assert_eq!(
        ids.len() as u64 + skipped,
        questions,
        "{:?}",
        manifest.stats
    );
    assert!(ids.len() >= 10, "{summary}");
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    assert_eq!(
        manifest.files.iter().map(|f| f.rows).sum::<u64>(),
        ids.len() as u64
    );
    // No timing inside what is compared: the manifest's stats carry none.
    assert!(manifest.stats.seconds.is_empty());
    let rejects = std::fs::read_to_string(full.join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1);
    assert!(rejects.contains("\"row\":5"), "{rejects}");

    // Killed with SIGKILL once the first unit is committed, then run again.
    let killed = dir.path().join("killed");
    let mut child = engine(&["run", y, "--quiet", "--output", killed.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let committed = |d: &Path| -> usize {
        std::fs::read_dir(d.join("units"))
            .ok()
            .and_then(|mut it| it.next())
            .and_then(|e| std::fs::read_dir(e.ok()?.path()).ok())
            .map(|it| {
                it.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    while committed(&killed) < 1 {
        assert!(started.elapsed() < Duration::from_secs(600));
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300)); // into the next unit's generations
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = committed(&killed);
    assert!(done_before < 5, "the run finished before the kill");
    let cached_before = std::fs::read_to_string(killed.join("cache/generations-0-of-1.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let rerun = run_ok(
        &["run", y, "--quiet", "--output", killed.to_str().unwrap()],
        &[],
    );
    assert!(
        rerun.contains(&format!(
            "{} now, {done_before} found done",
            5 - done_before
        )),
        "{rerun}"
    );
    // No generation is computed twice: the rerun computes only what the cache lacked, and
    // the cache ends with one entry per generation of the uninterrupted run.
    let (full_generated, _) = generations(&summary);
    let (generated, replayed) = generations(&rerun);
    assert_eq!(generated, full_generated - cached_before as u64, "{rerun}");
    assert!(replayed <= cached_before as u64, "{rerun}");
    let cached_after = std::fs::read_to_string(killed.join("cache/generations-0-of-1.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(cached_after as u64, full_generated);
    assert_eq!(parts(&killed), reference);
    assert_eq!(sample_ids(&killed), ids);
    assert_eq!(
        std::fs::read_to_string(killed.join("rejects.jsonl")).unwrap(),
        rejects
    );
    let resumed: Manifest =
        serde_json::from_str(&std::fs::read_to_string(killed.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(resumed.stats, manifest.stats);
    assert_eq!(resumed.rejects, manifest.rejects);
    assert_eq!(resumed.files, manifest.files);

    // The finished output again: nothing to do, nothing rewritten.
    let before = tree(&full);
    let again = run_ok(
        &["run", y, "--quiet", "--output", full.to_str().unwrap()],
        &[],
    );
    assert!(again.contains("0 now, 5 found done"), "{again}");
    assert!(again.contains("0 generated, 0 replayed"), "{again}");
    let after = tree(&full);
    let without_log = |t: &BTreeMap<String, String>| {
        t.iter()
            .filter(|(k, _)| k.as_str() != "runs.jsonl")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(without_log(&after), without_log(&before));

    // Another configuration on the finished output: stops before any work, deletes nothing.
    let other = setup(dir.path(), &model, "");
    std::fs::write(
        &other,
        std::fs::read_to_string(&other)
            .unwrap()
            .replace("seed: 3", "seed: 4"),
    )
    .unwrap();
    let out = engine(&[
        "run",
        other.to_str().unwrap(),
        "--quiet",
        "--output",
        full.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configuration differs: config.seed (3 → 4)") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(tree(&full), after);

    // batch_size 1, one model thread, one rayon thread: the same bytes.
    let narrow = setup(dir.path(), &model, "runtime: {channel_capacity: 1}\n");
    std::fs::write(
        &narrow,
        std::fs::read_to_string(&narrow)
            .unwrap()
            .replace("batch_size: 3", "batch_size: 1")
            .replace("threads: 2", "threads: 1"),
    )
    .unwrap();
    let one = dir.path().join("one-thread");
    run_ok(
        &[
            "run",
            narrow.to_str().unwrap(),
            "--quiet",
            "--output",
            one.to_str().unwrap(),
        ],
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert_eq!(parts(&one), reference);

    // Two shards at once into one folder: the same parts as one process.
    let yaml = setup(dir.path(), &model, "");
    let y = yaml.to_str().unwrap();
    let sharded = dir.path().join("sharded");
    let shards: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|s| {
            engine(&[
                "run",
                y,
                "--quiet",
                "--output",
                sharded.to_str().unwrap(),
                "--shard",
                s,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in shards {
        let out = c.wait_with_output().unwrap();
        // The shard holding the bad line exits 1, the other 0 or 1 (the manifest is the union).
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            describe(&out)
        );
    }
    assert_eq!(parts(&sharded), reference);
    assert_eq!(sample_ids(&sharded), ids);
    let status = engine(&["status", sharded.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", describe(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    // Units 0, 2, 4 on shard 0; 1, 3 on shard 1; all done.
    let row = |shard: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(shard))
            .map(|l| l.split_whitespace().skip(1).take(3).collect::<Vec<_>>())
    };
    assert_eq!(row("0/2"), Some(vec!["3", "0", "0"]), "{text}");
    assert_eq!(row("1/2"), Some(vec!["2", "0", "0"]), "{text}");
    // SLURM array variables pick the shard when --shard is absent.
    let slurm = dir.path().join("slurm");
    let out = engine(&["run", y, "--quiet", "--output", slurm.to_str().unwrap()])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        describe(&out)
    );
    let slurm_parts: Vec<String> = parts(&slurm).into_keys().collect();
    let odd: Vec<String> = reference
        .keys()
        .filter(|k| {
            let unit: u64 = k
                .trim_end_matches(".parquet")
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            unit % 2 == 1
        })
        .cloned()
        .collect();
    assert_eq!(slurm_parts, odd);
}
