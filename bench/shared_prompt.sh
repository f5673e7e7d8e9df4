#!/usr/bin/env bash
# Step time and peak memory of one LOGO step against M with the shared-prompt gradient
# (trainer/src/shared_prompt.rs: the prompt runs once for the M + 1 responses), with and without
# per-layer checkpointing, next to the decoupled gradient (trainer/src/decoupled.rs) with and
# without checkpointing, on the embedded SmolLM2-135M at 2K prompt tokens on CPU (f32).
# Each run is its own process (peak RSS = VmHWM); the load average before and after each run is
# recorded, since step times on a shared machine move with its load. Writes
# bench/results/shared_prompt_cpu.json; trainer/tests/bench_results.rs checks it.
# One libtorch thread by default (OMP_NUM_THREADS): on a machine shared with other jobs, two
# spinning OpenMP threads made steps up to 10x slower and erratic.
# Usage: bench/shared_prompt.sh [prompt_tokens=2048] [steps=1] [m values="1 2 4"]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/.."
P=${1:-2048}; STEPS=${2:-1}; MS=${3:-"1 2 4"}
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release/logo-trainer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # mode m
    local flags=""
    case "$1" in
        shared) flags="--share-prompt" ;;
        shared_ckpt) flags="--share-prompt --checkpointing" ;;
        decoupled) flags="--decoupled" ;;
        decoupled_ckpt) flags="--decoupled --checkpointing" ;;
    esac
    local code=0 before after
    before=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086
    "$bin" bench --prompt-tokens "$P" --num-negatives "$2" --steps "$STEPS" --device cpu $flags \
        --json "$work/$1-$2.json" > /dev/null || code=$?
    after=$(cut -d' ' -f1 /proc/loadavg)
    if [ "$code" != 0 ]; then
        echo "{\"error\": \"exit status $code (137: killed by the kernel's OOM killer)\"}" > "$work/$1-$2.json"
    fi
    echo "{\"before\": $before, \"after\": $after}" > "$work/$1-$2.load"
    echo "$1 M=$2 done (load $before -> $after)" >&2
}
for m in $MS; do
    for mode in shared shared_ckpt decoupled decoupled_ckpt; do run "$mode" "$m"; done
done
mkdir -p bench/results
python3 - "$work" bench/results/shared_prompt_cpu.json "bench/shared_prompt.sh $*" <<'PY'
import glob, json, os, sys
sys.path.insert(0, "bench")
from provenance import stamp
w = sys.argv[1]
key = lambda p: os.path.basename(p).rsplit(".", 1)[0].replace("-", "_m")
runs = {key(p): json.load(open(p)) for p in sorted(glob.glob(f"{w}/*.json"))}
load = {key(p): json.load(open(p)) for p in sorted(glob.glob(f"{w}/*.load"))}
gib = {k: (v["peak_rss_bytes"] / 2**30 if "peak_rss_bytes" in v else v["error"]) for k, v in runs.items()}
secs = {k: v.get("median_step_seconds") for k, v in runs.items()}
def ratio(table, a, b):
    return table[a] / table[b] if isinstance(table.get(a), float) and isinstance(table.get(b), float) else None
ms = sorted({int(k.rsplit("_m", 1)[1]) for k in runs})
report = {
    "benchmark": "one LOGO step vs M: shared-prompt vs decoupled gradient, each with and without "
                 "per-layer checkpointing (embedded SmolLM2-135M, CPU, f32, LoRA r=8, 64-token responses)",
    "note": "a machine shared with other jobs makes step times noisy (see load_average per run); "
            "peak RSS is not",
    "prompt_tokens": next(iter(v["config"]["prompt_tokens"] for v in runs.values() if "config" in v)),
    "num_negatives": ms,
    "peak_rss_gib": gib,
    "median_step_seconds": secs,
    "load_average": load,
    "speedup_shared_over_decoupled": {f"m{m}": ratio(secs, f"decoupled_m{m}", f"shared_m{m}") for m in ms},
    "speedup_shared_ckpt_over_decoupled_ckpt": {f"m{m}": ratio(secs, f"decoupled_ckpt_m{m}", f"shared_ckpt_m{m}") for m in ms},
    "shared_m4_over_m1": {"rss": ratio(gib, "shared_m4", "shared_m1"), "seconds": ratio(secs, "shared_m4", "shared_m1")},
    "shared_ckpt_m4_over_m1": {"rss": ratio(gib, "shared_ckpt_m4", "shared_ckpt_m1"), "seconds": ratio(secs, "shared_ckpt_m4", "shared_ckpt_m1")},
    "decoupled_m4_over_m1": {"rss": ratio(gib, "decoupled_m4", "decoupled_m1"), "seconds": ratio(secs, "decoupled_m4", "decoupled_m1")},
    "decoupled_ckpt_m4_over_m1": {"rss": ratio(gib, "decoupled_ckpt_m4", "decoupled_ckpt_m1"), "seconds": ratio(secs, "decoupled_ckpt_m4", "decoupled_ckpt_m1")},
    "runs": runs,
}
json.dump(stamp(report, sys.argv[3]), open(sys.argv[2], "w"), indent=2)
print(json.dumps({k: report[k] for k in ("peak_rss_gib", "median_step_seconds", "speedup_shared_over_decoupled",
                                          "speedup_shared_ckpt_over_decoupled_ckpt", "shared_m4_over_m1",
                                          "shared_ckpt_m4_over_m1", "decoupled_m4_over_m1")}, indent=1))
PY
