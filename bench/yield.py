#!/usr/bin/env python3
"""Kept samples per hour of generation, before and after the data-keeping rules, in one run.

    python3 bench/yield.py [--limit 8] [--leval-limit 2]    # writes bench/results/yield.json

Runs `logo-engine run` twice on each of two pipelines with the same binary and model:
  - the main job (`pipeline.yaml`, essays, questions written by the policy, `--limit` essays);
  - L-Eval multi-document QA (`pipelines/leval.yaml` on multidoc_qa.jsonl, reference answers
    preferred, `max_new_tokens` 32, `--leval-limit` documents).
"before" restores the earlier rules in the configuration: `generator.on_length: regenerate`
for both roles (a cut dis-preferred response is regenerated, then the sample skipped) and
`questions.max_retries: 0` (an unparseable question drops the document at once). "after" is
the default (`on_length: {chosen: regenerate, rejected: keep}`, 3 question retries). For each
run: samples kept, documents that gave a sample, skip reasons, regenerations, generated tokens,
wall seconds (generation dominates them), and kept samples per hour; the ratio after/before.
Measure on an idle machine: the ratio is only as good as the two runs' conditions.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import provenance  # noqa: E402

BEFORE = {"generator": {"on_length": "regenerate"}, "questions": {"max_retries": 0}}


def engine():
    cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
    target = Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))
    return target / "release" / "logo-engine"


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def run(name, pipeline, overrides, limit, work):
    with open(ROOT / pipeline) as f:
        cfg = yaml.safe_load(f)
    merge(cfg, overrides)
    base = (ROOT / pipeline).parent
    # Relative source and model paths are resolved against the pipeline file's folder.
    cfg["source"]["paths"] = [p if p.startswith(("/", "$")) else str((base / p).resolve())
                              for p in cfg["source"]["paths"]]
    out = work / name
    cfg["sink"] = {**cfg.get("sink", {}), "output": str(out)}
    conf = work / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(engine()), "run", str(conf), "--limit", str(limit), "--quiet", "--output", str(out)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"yield: {name}: {proc.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest.get("stats") or manifest.get("counters") or {}
    samples = stats.get("rows_out", {}).get("positions", 0)
    docs = subprocess.run(
        [str(engine()), "sql", "SELECT count(DISTINCT document_id) AS documents FROM samples",
         "--data", str(out)], capture_output=True, text=True)
    numbers = re.findall(r"\|\s*(\d+)\s*\|", docs.stdout)
    documents = int(numbers[-1]) if numbers else None
    return {
        "name": name,
        "command": " ".join(cmd[1:]),
        "overrides": overrides,
        "samples": samples,
        "documents_with_a_sample": documents,
        "documents": limit,
        "skipped": stats.get("skipped", {}),
        "events": stats.get("events", {}),
        "generated_tokens": stats.get("tokens", {}),
        "wall_seconds": round(seconds, 1),
        "samples_per_hour": round(samples / seconds * 3600, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=8, help="essays of the main job")
    ap.add_argument("--leval-limit", type=int, default=2, help="L-Eval documents")
    ap.add_argument("--out", default=str(ROOT / "bench/results/yield.json"))
    a = ap.parse_args()
    leval = {"source": {"paths": [str((ROOT / "../shared/data/leval/multidoc_qa.jsonl").resolve())]},
             "generator": {"max_new_tokens": 32}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for job, pipeline, extra, limit in [("main", "pipeline.yaml", {}, a.limit),
                                            ("leval", "pipelines/leval.yaml", leval,
                                             a.leval_limit)]:
            before = run(f"{job}-before", pipeline, merge(json.loads(json.dumps(extra)),
                                                          json.loads(json.dumps(BEFORE))),
                         limit, work)
            after = run(f"{job}-after", pipeline, extra, limit, work)
            ratio = (after["samples_per_hour"] / before["samples_per_hour"]
                     if before["samples_per_hour"] else None)
            results[job] = {"before": before, "after": after,
                            "samples_per_hour_ratio": round(ratio, 2) if ratio else None}
            print(f"{job}: {before['samples']} samples in {before['wall_seconds']} s before, "
                  f"{after['samples']} in {after['wall_seconds']} s after "
                  f"(samples per hour x{results[job]['samples_per_hour_ratio']})", flush=True)
    doc = {"bench": "yield", **results,
           **provenance(["bench/yield.py"] + sys.argv[1:])}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
