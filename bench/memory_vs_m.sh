#!/usr/bin/env bash
# Peak memory of one LOGO step against M with the decoupled gradient (trainer/src/decoupled.rs),
# with the decoupled gradient plus per-layer activation checkpointing, and with the joint backward, on the embedded SmolLM2-135M at 2K prompt tokens on CPU.
# A run the kernel kills for memory is recorded as such. Writes
# bench/results/memory_vs_m_cpu.json; trainer/tests/bench_results.rs checks it.
# Usage: bench/memory_vs_m.sh [prompt_tokens=2048] [steps=1]
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-2048}; STEPS=${2:-1}
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release/logo-trainer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # mode m
    local flag=""
    case "$1" in
        decoupled) flag="--decoupled" ;;
        checkpointed) flag="--decoupled --checkpointing" ;;
    esac
    local code=0
    "$bin" bench --prompt-tokens "$P" --num-negatives "$2" --steps "$STEPS" --device cpu $flag \
        --json "$work/$1-$2.json" > /dev/null || code=$?
    if [ "$code" != 0 ]; then
        echo "{\"error\": \"exit status $code (137: killed by the kernel's OOM killer)\"}" > "$work/$1-$2.json"
    fi
}
for m in 1 4; do run decoupled "$m"; run checkpointed "$m"; done
for m in 1 2 4; do run joint "$m"; done
mkdir -p bench/results
python3 - "$work" bench/results/memory_vs_m_cpu.json <<'PY'
import glob, json, os, platform, sys, time
w = sys.argv[1]
runs = {os.path.basename(p)[:-5].replace("-", "_m"): json.load(open(p)) for p in sorted(glob.glob(f"{w}/*.json"))}
gib = {k: (v["peak_rss_bytes"] / 2**30 if "peak_rss_bytes" in v else v["error"]) for k, v in runs.items()}
ratio = lambda a, b: runs[a]["peak_rss_bytes"] / runs[b]["peak_rss_bytes"] if "peak_rss_bytes" in runs[a] else None
report = {
    "benchmark": "peak RSS of one LOGO step vs M (embedded SmolLM2-135M, CPU, f32, LoRA r=8)",
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
    "unix_time": int(time.time()),
    "prompt_tokens": runs["decoupled_m1"]["config"]["prompt_tokens"],
    "peak_rss_gib": gib,
    "median_step_seconds": {k: v.get("median_step_seconds") for k, v in runs.items()},
    "decoupled_m4_over_m1": ratio("decoupled_m4", "decoupled_m1"),
    "checkpointed_m4_over_m1": ratio("checkpointed_m4", "checkpointed_m1"),
    "joint_m2_over_m1": ratio("joint_m2", "joint_m1"),
    "joint_m4_over_m1": ratio("joint_m4", "joint_m1"),
    "runs": runs,
}
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(json.dumps({k: report[k] for k in ("peak_rss_gib", "median_step_seconds", "decoupled_m4_over_m1", "checkpointed_m4_over_m1", "joint_m2_over_m1", "joint_m4_over_m1")}, indent=1))
PY
