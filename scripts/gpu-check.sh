#!/usr/bin/env bash
# GPU check of the trainer, in one go: tokens/s, MFU and peak CUDA memory
# (torch.cuda.max_memory_allocated) of LOGO training steps on random-weight Llamas (bf16
# weights and activations, f32 LoRA and loss), whose prompt positions spread over K = 65536:
#   1b: H 2048, 16 layers, 32 heads, 8 KV heads, SwiGLU 5632, V 32000 (0.85B weights), 8K real
#       tokens per sequence (8064 prompt + 128 response), M = 1 and 8, with the shared prompt
#       (training's default), shared prompt + per-layer checkpointing, decoupled +
#       checkpointing, and the joint backward;
#   8b: Llama-3-8B's shape (H 4096, 32 layers, 32/8 heads, SwiGLU 14336, V 128256), 8K real
#       tokens, M = 1, shared prompt with and without checkpointing.
# Runs go in that order of importance (1b shared prompt, 8b, the other 1b modes); all share a
# budget of GPU_CHECK_BUDGET_S seconds (default 420: with start-up, under 8 minutes on one
# H100), and a run that would not fit is recorded as skipped, one that runs out of memory as
# such.
#
# Builds nothing. It runs a logo-trainer binary built on a CPU machine against torch 2.11.0
# (`scripts/gpu-bundle.sh` strips it into out/gpu-check/ with the few non-torch libraries it
# links) with this machine's own torch 2.11 libraries, found through `python3 -c 'import torch'`.
# Carry out/gpu-check/ and scripts/ to the GPU machine and run `scripts/gpu-check.sh` there.
#
# Output: ONE archive, $OUT/gpu-check.tgz (default OUT=bench/results/gpu): every run's JSON
# (`logo-trainer bench --json`), the log of every run that failed, and summary.json (GPU,
# torch, a row per run); and a one-screen summary table on stdout.
# Settings (environment): LOGO_TRAINER_BIN (default out/gpu-check/logo-trainer), OUT,
# GPU_CHECK_RUNS (the plan: "SHAPE:M:MODE ...", e.g. "1b:1:share-prompt 8b:1:share-prompt+ckpt";
# modes share-prompt, share-prompt+ckpt, decoupled, decoupled+ckpt, joint), GPU_CHECK_STEPS (3
# measured after 1 warm-up), PEAK_TFLOPS (default from the GPU's name: H100/H200 989, A100
# 312), GPU_CHECK_BUDGET_S.
# GPU_CHECK_DRY_RUN=1 runs the same plan on CPU with tiny models and short sequences, to check
# the flags, the JSON and the archive without a GPU (trainer/tests/gpu_check.rs does).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-420}
dry=${GPU_CHECK_DRY_RUN:-0}
bin=${LOGO_TRAINER_BIN:-out/gpu-check/logo-trainer}
out=${OUT:-bench/results/gpu}
runs=${GPU_CHECK_RUNS:-"1b:1:share-prompt 1b:8:share-prompt 8b:1:share-prompt 8b:1:share-prompt+ckpt
    1b:1:share-prompt+ckpt 1b:8:share-prompt+ckpt 1b:1:decoupled+ckpt 1b:8:decoupled+ckpt
    1b:1:joint 1b:8:joint"}
steps=${GPU_CHECK_STEPS:-3}
py=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$bin" ]; then
    echo "gpu-check: no logo-trainer binary at $bin (run \`just gpu-bundle\` on the build machine, or set LOGO_TRAINER_BIN)" >&2
    exit 2
fi
# This machine's torch: its lib folder goes first on the loader's path.
torch_info=$("$py" -c 'import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), "lib")); print(torch.cuda.is_available())') || {
    echo "gpu-check: $py cannot import torch (set PYTHON to the interpreter that has torch 2.11)" >&2
    exit 2
}
torch_version=$(sed -n 1p <<< "$torch_info")
torch_lib=$(sed -n 2p <<< "$torch_info")
case "$torch_version" in
    2.11.*) ;;
    *) if [ "${GPU_CHECK_ANY_TORCH:-0}" != 1 ]; then
           echo "gpu-check: torch $torch_version here, the binary needs 2.11 (GPU_CHECK_ANY_TORCH=1 to try anyway)" >&2
           exit 2
       fi ;;
esac
bundle_lib="$(cd "$(dirname "$bin")" && pwd)/lib"
export LD_LIBRARY_PATH="$torch_lib:$bundle_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! "$bin" --version > /dev/null 2>&1; then
    echo "gpu-check: $bin does not start:" >&2
    "$bin" --version >&2 || true
    ldd "$bin" | grep "not found" >&2 || true
    exit 2
fi

if [ "$dry" = 1 ]; then
    device=cpu
    model_1b=(--random-model --hidden-size 64 --intermediate-size 128 --num-hidden-layers 2
              --num-attention-heads 4 --num-key-value-heads 2 --vocab-size 512 --dtype f32)
    model_8b=(--random-model --hidden-size 64 --intermediate-size 224 --num-hidden-layers 4
              --num-attention-heads 4 --num-key-value-heads 1 --vocab-size 1024 --dtype f32)
    shape=(--prompt-tokens 240 --response-tokens 16 --target-length 4096)
    gpu="dry run on CPU"
else
    device=cuda
    model_1b=(--random-model --dtype bf16)
    model_8b=(--random-model --hidden-size 4096 --intermediate-size 14336 --num-hidden-layers 32
              --num-attention-heads 32 --num-key-value-heads 8 --vocab-size 128256 --dtype bf16)
    shape=(--prompt-tokens 8064 --response-tokens 128 --target-length 65536)
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i 0 2>/dev/null || echo unknown)
fi
peak=${PEAK_TFLOPS:-}
if [ -z "$peak" ]; then
    case "$gpu" in
        *H100*|*H200*|*H800*|*GH200*) peak=989.4 ;; # dense bf16 (SXM)
        *A100*|*A800*) peak=312 ;;
        *L40S*) peak=362 ;;
    esac
fi
peak_flag=()
if [ -n "$peak" ]; then peak_flag=(--peak-tflops "$peak"); fi
echo "gpu-check: $gpu; torch $torch_version ($torch_lib); binary $("$bin" --version)" >&2

for run in $runs; do
    IFS=: read -r size m mode <<< "$run"
    case "$size" in
        1b) model=("${model_1b[@]}") ;;
        8b) model=("${model_8b[@]}") ;;
        *) echo "gpu-check: unknown model $size in $run (1b, 8b)" >&2; exit 2 ;;
    esac
    flags=()
    case "$mode" in
        share-prompt) flags=(--share-prompt) ;;
        share-prompt+ckpt) flags=(--share-prompt --checkpointing) ;;
        decoupled) flags=(--decoupled) ;;
        decoupled+ckpt) flags=(--decoupled --checkpointing) ;;
        joint) flags=() ;;
        *) echo "gpu-check: unknown mode $mode in $run" >&2; exit 2 ;;
    esac
    name="${size}_m${m}_${mode//+/_}"
    left=$(( budget - ($(date +%s) - start) ))
    if [ "$left" -lt 20 ]; then
        echo "{\"skipped\": \"budget of ${budget} s spent\"}" > "$work/$name.json"
        echo "gpu-check: $name skipped (budget)" >&2
        continue
    fi
    code=0
    timeout --signal=KILL "$left" "$bin" bench "${model[@]}" "${shape[@]}" --num-negatives "$m" \
        --steps "$steps" --device "$device" "${flags[@]}" "${peak_flag[@]}" \
        --json "$work/$name.json" > /dev/null 2> "$work/$name.log" || code=$?
    if [ "$code" != 0 ]; then
        reason="exit status $code"
        [ "$code" = 137 ] && reason="killed after the remaining budget ($left s)"
        grep -q -i "out of memory" "$work/$name.log" && reason="CUDA out of memory"
        "$py" -c 'import json, sys; json.dump({"error": sys.argv[1], "stderr_tail": open(sys.argv[2]).read()[-2000:]}, open(sys.argv[3], "w"))' \
            "$reason" "$work/$name.log" "$work/$name.json"
        echo "gpu-check: $name failed: $reason" >&2
    else
        rm -f "$work/$name.log"
        echo "gpu-check: $name done" >&2
    fi
done

"$py" - "$work" "$gpu" "$torch_version" "$(( $(date +%s) - start ))" <<'PY'
import glob, json, os, sys
work, gpu, torch_version, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = {}
for path in sorted(glob.glob(os.path.join(work, "*_m*_*.json"))):
    name = os.path.basename(path)[:-5]
    r = json.load(open(path))
    if "config" not in r:
        rows[name] = r
        continue
    gib = lambda b: None if b is None else round(b / 2**30, 3)
    rows[name] = {
        "num_negatives": r["config"]["num_negatives"],
        "median_step_seconds": r["median_step_seconds"],
        "tokens_per_step": r["tokens_per_step"],
        "tokens_per_second": r["tokens_per_second"],
        "computed_tokens_per_step": r["computed_tokens_per_step"],
        "achieved_tflops": r["achieved_tflops"],
        "mfu": r["mfu"],
        "cuda_max_allocated_gib": gib(r["cuda_max_allocated_bytes"]),
        "cuda_max_reserved_gib": gib(r["cuda_max_reserved_bytes"]),
        "peak_rss_gib": gib(r["peak_rss_bytes"]),
        "model_parameters": r["model_parameters"],
        "dtype": r["dtype"],
    }
summary = {"benchmark": "logo-trainer GPU check: random 1B and 8B-shaped Llamas, 8K real tokens, "
                        "K = 65536; MFU counts attention's backward as 2x its forward and each "
                        "token once",
           "gpu": gpu, "torch": torch_version, "wall_seconds": seconds, "runs": rows}
json.dump(summary, open(os.path.join(work, "summary.json"), "w"), indent=2)
print(f"gpu-check: {gpu}; torch {torch_version}; {seconds} s")
print(f"{'run':<28} {'step s':>8} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}")
fmt = lambda v, f: "-" if v is None else format(v, f)
for name, r in rows.items():
    if "median_step_seconds" not in r:
        print(f"{name:<28} {r.get('error') or r.get('skipped')}")
        continue
    print(f"{name:<28} {r['median_step_seconds']:>8.3f} {r['tokens_per_second']:>9.0f} "
          f"{r['achieved_tflops']:>8.2f} {fmt(r['mfu'], '>6.3f')} "
          f"{fmt(r['cuda_max_allocated_gib'], '>9.2f')}")
PY
tar -czf "$out/gpu-check.tgz" -C "$work" .
echo "gpu-check: every JSON and log in $out/gpu-check.tgz"
