#!/usr/bin/env bash
# Regenerates bench/results/eval_embedded/: the embedded SmolLM2-135M vs the adapter of the
# README's main job (`scripts/just main`: 8 essays, 8 steps), through `scripts/just eval` (NIAH
# heatmaps, L-Eval QA, perplexity to 12K; report.json, report.txt, PNGs), plus the base model's
# NIAH out to its trained 8K (niah_8k_base.json, niah_8k_base.png), and provenance.json
# (bench/provenance.py: command, git commit, machine; with the wall time of each part).
# About an hour on an idle 2-core machine (perplexity at 12K and the 8K NIAH dominate). Runs
# the built binaries (`scripts/just build` first; `just results` does), building nothing.
# Usage: bench/eval_embedded.sh [limit=8] [steps=8] [questions=4]
set -euo pipefail
cd "$(dirname "$0")/.."
command="bench/eval_embedded.sh $*"
LIMIT=${1:-8}; STEPS=${2:-8}; QUESTIONS=${3:-4}
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Provenance of the tree the run starts from (commits made while it runs are not its own).
python3 bench/provenance.py "$command" > "$work/provenance.json"
t0=$(date +%s)
scripts/just --no-deps main "$LIMIT" "$STEPS"
t1=$(date +%s)
scripts/just --no-deps eval out/adapter "$QUESTIONS" "$work/eval"
t2=$(date +%s)
"$bin/logo-eval" --tasks niah --niah-lengths 2048,4096,6144,8000 --niah-depths 0,50,100 \
    --out "$work/niah8k"
t3=$(date +%s)
dest=bench/results/eval_embedded
rm -rf "$dest"
mkdir -p "$dest"
cp -r "$work/eval/." "$dest/"
[ -s "$dest/rejects.jsonl" ] || rm -f "$dest/rejects.jsonl"
cp "$work/niah8k/base/niah.json" "$dest/niah_8k_base.json"
cp "$work/niah8k/niah_base.png" "$dest/niah_8k_base.png"
python3 - "$dest/provenance.json" "$work/provenance.json" "$((t1 - t0))" "$((t2 - t1))" \
    "$((t3 - t2))" "$LIMIT" "$STEPS" <<'PY'
import json, sys
path, start, main_s, eval_s, niah_s, limit, steps = sys.argv[1:]
doc = {**json.load(open(start)), **{
    "what": "embedded SmolLM2-135M-Instruct vs the adapter of the main job: NIAH, L-Eval QA, "
            "perplexity (report.json); the base model's NIAH out to 8K (niah_8k_base.json)",
    "adapter": f"out/adapter from `scripts/just main {limit} {steps}`",
    "parts": {
        "main": {"command": f"scripts/just main {limit} {steps}", "wall_seconds": int(main_s)},
        "eval": {"command": "scripts/just eval out/adapter QUESTIONS OUT", "wall_seconds": int(eval_s)},
        "niah_8k_base": {"command": "logo-eval --tasks niah --niah-lengths 2048,4096,6144,8000 "
                                    "--niah-depths 0,50,100", "wall_seconds": int(niah_s)},
    },
    "note": "quality numbers are deterministic (greedy decoding); wall times move with the load",
}}
json.dump(doc, open(path, "w"), indent=2)
print(f"wrote {path}")
PY
