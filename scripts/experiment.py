#!/usr/bin/env python3
"""The LOGO experiment recipe (issue 12): base vs SFT vs SimPO vs LOGO on held-out documents.

    scripts/just experiment experiments/tiny.yaml      # or: python3 scripts/experiment.py CONFIG

Driven by one YAML config (experiments/*.yaml), it
  1. splits the documents of the L-Eval QA files by document (seeded) into train / validation
     / test, prints the split and writes it (no document in two splits; checked);
  2. builds LOGO preference data from the train documents with `logo-engine run` (the
     config's pipeline and overrides), plus, optionally, essays with questions the model writes;
  3. trains one LOGO adapter per point of a small sweep (beta, gamma, lambda, lr, steps) and
     picks the point with the best validation QA F1 (never the test split);
  4. trains SFT and SimPO adapters with the chosen point's budget (lr, steps, batch) on the
     same data (`logo-trainer --objective sft|simpo`);
  5. evaluates base, SFT, SimPO and LOGO on the test split with `logo-eval` (QA, NIAH single and
     multi-value with the retrieval score, sliding-window perplexity);
  6. writes one report with `logo-experiment-report`: table, bar charts with bootstrap 95 %
     intervals, NIAH heatmaps side by side, training curves.

Every step writes its outputs under the work folder (`out/experiment_<name>/`) and is skipped
when they exist, so a run that stops resumes where it stopped; training resumes from the
latest checkpoint (`logo-trainer --resume`). Binaries come from $CARGO_TARGET_DIR/release
(default $LOGO_CACHE/target/release), built by `scripts/just build`.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import provenance  # noqa: E402


def log(msg):
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def binary(name):
    cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
    target = Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))
    path = target / "release" / name
    if not path.exists():
        sys.exit(f"experiment: {path} not found (run `scripts/just build`)")
    return str(path)


def run(cmd, ok_codes=(0,), log_file=None):
    log("$ " + " ".join(str(c) for c in cmd))
    started = time.time()
    with open(log_file, "a") if log_file else open(os.devnull, "w") as sink:
        proc = subprocess.run(
            [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sink.write(proc.stdout)
    if proc.returncode not in ok_codes:
        sys.stderr.write(proc.stdout[-4000:])
        sys.exit(f"experiment: {cmd[0]} exited with {proc.returncode}")
    return time.time() - started


def load_config(path):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for key in ["name", "data", "engine", "train", "eval"]:
        if key not in cfg:
            sys.exit(f"experiment: {path}: missing key {key}")
    return cfg


def split_documents(cfg, work):
    """Seeded split of every QA file's documents (rows) into train/validation/test."""
    data = cfg["data"]
    root = (ROOT / data["root"]).resolve()
    fractions = data["split"]
    seed = cfg.get("seed", 42)
    per_file = data.get("max_documents_per_file")
    split = {"train": [], "validation": [], "test": []}
    questions = {"train": 0, "validation": 0, "test": 0}
    out = {s: work / "split" / s for s in split}
    for d in out.values():
        d.mkdir(parents=True, exist_ok=True)
    for name in data["qa_files"]:
        path = root / name
        lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                row = json.loads(line, strict=False)
            except json.JSONDecodeError:
                continue  # the engine's source rejects it with a named error too
            n = len(row.get("instructions") or [])
            if n == 0 or not row.get("input"):
                continue
            rows.append((i + 1, line, n))
        rng = random.Random(f"{seed}:{name}")
        rng.shuffle(rows)
        if per_file:
            rows = rows[:per_file]
        n = len(rows)
        n_test = max(1, round(n * fractions["test"]))
        n_val = max(1, round(n * fractions["validation"]))
        parts = {
            "test": rows[:n_test],
            "validation": rows[n_test:n_test + n_val],
            "train": rows[n_test + n_val:],
        }
        cap = data.get("train_questions_per_document")
        for s, part in parts.items():
            with open(out[s] / name, "w", encoding="utf-8") as f:
                for row_no, line, nq in sorted(part):
                    if s == "train" and cap and nq > cap:
                        # Fewer training questions per document (the copy in the work folder).
                        row = json.loads(line, strict=False)
                        row["instructions"] = row["instructions"][:cap]
                        row["outputs"] = row["outputs"][:cap]
                        line, nq = json.dumps(row, ensure_ascii=False), cap
                    f.write(line + "\n")
                    split[s].append(f"{name}:{row_no}")
                    questions[s] += nq
    seen = {}
    for s, ids in split.items():
        for doc in ids:
            if doc in seen:
                sys.exit(f"experiment: document {doc} is in {seen[doc]} and {s}")
            seen[doc] = s
    result = {
        "seed": seed,
        "documents": {s: len(v) for s, v in split.items()},
        "questions": questions,
        "ids": split,
    }
    (work / "split.json").write_text(json.dumps(result, indent=2) + "\n")
    log("split by document (seed %s):" % seed)
    for s in split:
        log(f"  {s:<10} {len(split[s]):>3} documents, {questions[s]:>4} questions: "
            + ", ".join(split[s]))
    return result


def deep_merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def build_data(cfg, work):
    eng = cfg["engine"]
    data_dir = work / "data"
    if (data_dir / "done").exists():
        log(f"data: {data_dir} exists, skipped")
        return data_dir
    parts = []
    train_files = sorted((work / "split" / "train").glob("*.jsonl"))
    with open(ROOT / eng["pipeline"]) as f:
        pipeline = yaml.safe_load(f)
    pipeline["source"]["paths"] = [str(p) for p in train_files]
    deep_merge(pipeline, eng.get("overrides", {}))
    pipeline["sink"] = {**pipeline.get("sink", {}), "output": str(work / "data_leval")}
    (work / "pipeline_leval.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    if not (work / "data_leval" / "manifest.json").exists():
        limit = ["--limit", eng["limit_documents"]] if eng.get("limit_documents") else []
        run([binary("logo-engine"), "run", work / "pipeline_leval.yaml", *limit,
             "--output", work / "data_leval"],
            ok_codes=(0, 1), log_file=work / "engine.log")
    parts.append(work / "data_leval")
    essays = eng.get("essays", 0)
    if essays:
        with open(ROOT / eng.get("essay_pipeline", "pipeline.yaml")) as f:
            ep = yaml.safe_load(f)
        deep_merge(ep, eng.get("essay_overrides", {}))
        ep["sink"] = {**ep.get("sink", {}), "output": str(work / "data_essays")}
        (work / "pipeline_essays.yaml").write_text(yaml.safe_dump(ep, sort_keys=False))
        if not (work / "data_essays" / "manifest.json").exists():
            run([binary("logo-engine"), "run", work / "pipeline_essays.yaml",
                 "--limit", essays, "--output", work / "data_essays"],
                ok_codes=(0, 1), log_file=work / "engine.log")
        parts.append(work / "data_essays")
    data_dir.mkdir(parents=True, exist_ok=True)
    for p in parts:
        for f in sorted(p.glob("*.parquet")):
            shutil.copy(f, data_dir / f"{p.name}-{f.name}")
    (data_dir / "done").write_text("")
    return data_dir


def train(cfg, work, data, name, objective, point):
    """One adapter; resumes from the latest checkpoint; skipped when finished."""
    out = work / "adapters" / name
    if (out / "summary.json").exists():
        log(f"train {name}: done, skipped")
        return out
    common = cfg["train"].get("common", {})
    args = [binary("logo-trainer"), "--data", data, "--output", out, "--objective", objective,
            "--device", cfg["train"].get("device", "auto"), "--quiet",
            "--seed", cfg.get("seed", 42)]
    flags = {**common, **point}
    for k, v in flags.items():
        if v is True:
            args.append("--" + k.replace("_", "-"))
        elif v is not False:
            args += ["--" + k.replace("_", "-"), v]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if checkpoints:
        log(f"train {name}: resuming from {checkpoints[-1].name}")
        args += ["--resume", checkpoints[-1]]
    run(args, log_file=work / f"train_{name}.log")
    return out


def evaluate(cfg, work, split, label, adapter, tasks, spec, out):
    """One logo-eval run; skipped when its report exists."""
    if (out / "report.json").exists():
        log(f"eval {out.relative_to(work)}: done, skipped")
        return out
    ev = cfg["eval"]
    args = [binary("logo-eval"), "--out", out, "--generator", ev.get("generator", "torch"),
            "--tasks", tasks]
    if ev.get("threads"):
        args += ["--threads", ev["threads"]]
    if ev.get("device"):
        args += ["--device", ev["device"]]
    if adapter:
        args += ["--adapter", adapter]
    if "qa" in tasks:
        files = sorted((work / "split" / split).glob("*.jsonl"))
        args += ["--qa", ",".join(str(f) for f in files),
                 "--qa-questions", spec.get("qa_questions", 1000),
                 "--qa-per-document", spec.get("qa_per_document", 1000),
                 "--max-length", spec["max_length"],
                 "--max-new-tokens", spec.get("max_new_tokens", 32)]
    if "niah" in tasks:
        args += ["--needle", spec["needle"],
                 "--niah-lengths", ",".join(str(x) for x in spec["lengths"]),
                 "--niah-depths", ",".join(str(x) for x in spec["depths"]),
                 "--niah-new-tokens", spec.get("new_tokens", 32)]
    if "ppl" in tasks:
        args += ["--ppl-lengths", ",".join(str(x) for x in spec["lengths"]),
                 "--ppl-tokens", spec["tokens"], "--ppl-batch", spec.get("batch", 1)]
    seconds = run(args, log_file=work / "eval.log")
    (out / "seconds.txt").write_text(f"{seconds:.1f}\n")
    return out


def model_dir(out):
    """The per-model folder logo-eval wrote (base/ or adapter/)."""
    for name in ["adapter", "base"]:
        if (out / name).exists():
            return out / name
    sys.exit(f"experiment: no model folder in {out}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    config_path = Path(sys.argv[1])
    cfg = load_config(config_path)
    name = cfg["name"]
    work = ROOT / "out" / f"experiment_{name}"
    report = ROOT / cfg.get("report", f"bench/results/experiment_{name}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    split = split_documents(cfg, work)
    data = build_data(cfg, work)
    manifest = json.loads((work / "data_leval" / "manifest.json").read_text())
    log(f"data: {data} ({manifest.get('stats', manifest.get('counters', {}))})")

    # Sweep (LOGO) on validation.
    sweep = []
    val = cfg["eval"]["validation"]
    for i, point in enumerate(cfg["train"]["sweep"]):
        adapter = train(cfg, work, data, f"logo_sweep{i}", "logo", point)
        out = evaluate(cfg, work, "validation", f"sweep{i}", adapter, "qa", val,
                       work / "validation" / f"sweep{i}")
        qa = json.loads((model_dir(out) / "qa.json").read_text())
        sweep.append({"point": point, "adapter": str(adapter.relative_to(work)),
                      "validation_f1": qa["mean"]["f1"],
                      "validation_rouge_l": qa["mean"]["rouge_l"],
                      "questions": sum(f["questions"] for f in qa["files"])})
        log(f"sweep {i} {point}: validation F1 {qa['mean']['f1']:.4f}")
    best = max(range(len(sweep)), key=lambda i: (sweep[i]["validation_f1"], -i))
    chosen = cfg["train"]["sweep"][best]
    log(f"chosen sweep point {best}: {chosen}")
    (work / "sweep.json").write_text(json.dumps(
        {"chosen": best, "criterion": "validation QA token F1 (mean over files)",
         "points": sweep}, indent=2) + "\n")

    # Baselines with the chosen point's budget.
    budget = {k: chosen[k] for k in ["lr", "max_steps"] if k in chosen}
    adapters = {"base": None, "logo": work / "adapters" / f"logo_sweep{best}"}
    for objective in cfg["train"].get("baselines", ["sft", "simpo"]):
        point = {**budget}
        if objective == "simpo":
            point.update({k: chosen[k] for k in ["beta", "gamma"] if k in chosen})
            point.update(cfg["train"].get("simpo", {}))
        adapters[objective] = train(cfg, work, data, objective, objective, point)

    # Test.
    test = cfg["eval"]["test"]
    models = []
    for label, adapter in adapters.items():
        entry = {"label": label, "adapter": str(adapter) if adapter else None, "niah": {}}
        base = work / "test" / label
        if test.get("qa"):
            out = evaluate(cfg, work, "test", label, adapter, "qa", test["qa"], base / "qa")
            entry["qa"] = str(model_dir(out) / "qa.json")
        for spec in test.get("niah", []):
            out = evaluate(cfg, work, "test", label, adapter, "niah", spec,
                           base / f"niah_{spec['needle']}")
            entry["niah"][spec["needle"]] = str(model_dir(out) / "niah.json")
        if test.get("ppl"):
            out = evaluate(cfg, work, "test", label, adapter, "ppl", test["ppl"], base / "ppl")
            entry["perplexity"] = str(model_dir(out) / "perplexity.json")
        if adapter:
            entry["metrics"] = str(Path(adapter) / "metrics.jsonl")
        models.append(entry)

    report.mkdir(parents=True, exist_ok=True)
    prov = provenance(["scripts/experiment.py"] + sys.argv[1:])
    shutil.copy(config_path, report / "config.yaml")
    shutil.copy(work / "split.json", report / "split.json")
    shutil.copy(work / "sweep.json", report / "sweep.json")
    runs = {
        "name": name,
        "label": cfg.get("label", ""),
        "config": str(config_path),
        "models": models,
        "sweep": json.loads((work / "sweep.json").read_text()),
        "split": {k: split[k] for k in ["documents", "questions", "seed"]},
        "data": manifest.get("stats", manifest.get("counters", {})),
        "seconds": round(time.time() - started, 1),
        **prov,
    }
    (work / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    (report / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    run([binary("logo-experiment-report"), "--runs", work / "runs.json", "--out", report])
    log(f"report in {report} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
