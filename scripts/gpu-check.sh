#!/usr/bin/env bash
# GPU check of the trainer: tokens/s, MFU and peak CUDA memory (torch.cuda.max_memory_allocated)
# of LOGO training steps for a random-weight ~1B Llama (H 2048, 16 layers, 32 heads, 8 KV heads,
# SwiGLU 5632, V 32000: 0.85B weights; bf16 weights and activations, f32 LoRA and loss) at 8K real
# tokens per sequence (8064 prompt + 128 response tokens) whose prompt positions spread over
# K = 65536 virtual positions, for M = 1, 2, 4, 8, with the shared-prompt gradient and (for
# comparison) the decoupled gradient with per-layer checkpointing.
#
# Builds nothing. It runs a logo-trainer binary built on a CPU machine against torch 2.11.0
# (`just gpu-bundle` strips it into out/gpu-check/ with the few non-torch libraries it links)
# with this machine's own torch 2.11 libraries, found through `python3 -c 'import torch'`.
# All runs share a budget of GPU_CHECK_BUDGET_S seconds (default 420, under 8 minutes with
# start-up); a run that would not fit is recorded as skipped.
#
# Output: one JSON per run (`logo-trainer bench --json`) and summary.json (GPU, torch, a table
# per run) in $OUT, default bench/results/gpu/.
# Settings (environment): LOGO_TRAINER_BIN (default out/gpu-check/logo-trainer), OUT,
# GPU_CHECK_MS ("1 2 4 8"), GPU_CHECK_MODES ("share-prompt decoupled+ckpt"; also "joint",
# "share-prompt+ckpt", "decoupled"), GPU_CHECK_STEPS (3 measured after 1 warm-up),
# PEAK_TFLOPS (default from the GPU's name: H100/H200 989, A100 312), GPU_CHECK_BUDGET_S.
# GPU_CHECK_DRY_RUN=1 runs the same flags on CPU with a tiny model and short sequences, to check
# the flags and the JSON without a GPU (trainer/tests/gpu_check.rs does).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-420}
dry=${GPU_CHECK_DRY_RUN:-0}
bin=${LOGO_TRAINER_BIN:-out/gpu-check/logo-trainer}
out=${OUT:-bench/results/gpu}
ms=${GPU_CHECK_MS:-"1 2 4 8"}
modes=${GPU_CHECK_MODES:-"share-prompt decoupled+ckpt"}
steps=${GPU_CHECK_STEPS:-3}
py=${PYTHON:-python3}
mkdir -p "$out"

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
    model=(--random-model --hidden-size 64 --intermediate-size 128 --num-hidden-layers 2
           --num-attention-heads 4 --num-key-value-heads 2 --vocab-size 512 --dtype f32)
    shape=(--prompt-tokens 240 --response-tokens 16 --target-length 4096)
    gpu="dry run on CPU"
else
    device=cuda
    model=(--random-model --dtype bf16)
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

for m in $ms; do
    for mode in $modes; do
        flags=()
        case "$mode" in
            share-prompt) flags=(--share-prompt) ;;
            share-prompt+ckpt) flags=(--share-prompt --checkpointing) ;;
            decoupled) flags=(--decoupled) ;;
            decoupled+ckpt) flags=(--decoupled --checkpointing) ;;
            joint) flags=() ;;
            *) echo "gpu-check: unknown mode $mode" >&2; exit 2 ;;
        esac
        name="m${m}_${mode//+/_}"
        left=$(( budget - ($(date +%s) - start) ))
        if [ "$left" -lt 20 ]; then
            echo "{\"skipped\": \"budget of ${budget} s spent\"}" > "$out/$name.json"
            echo "gpu-check: $name skipped (budget)" >&2
            continue
        fi
        code=0
        timeout --signal=KILL "$left" "$bin" bench "${model[@]}" "${shape[@]}" --num-negatives "$m" \
            --steps "$steps" --device "$device" "${flags[@]}" "${peak_flag[@]}" \
            --json "$out/$name.json" > /dev/null 2> "$out/$name.log" || code=$?
        if [ "$code" != 0 ]; then
            reason="exit status $code"
            [ "$code" = 137 ] && reason="killed after the remaining budget ($left s)"
            grep -q -i "out of memory" "$out/$name.log" && reason="CUDA out of memory"
            "$py" -c 'import json, sys; json.dump({"error": sys.argv[1], "stderr_tail": open(sys.argv[2]).read()[-2000:]}, open(sys.argv[3], "w"))' \
                "$reason" "$out/$name.log" "$out/$name.json"
            echo "gpu-check: $name failed: $reason" >&2
        else
            rm -f "$out/$name.log"
            echo "gpu-check: $name done" >&2
        fi
    done
done

"$py" - "$out" "$gpu" "$torch_version" "$(( $(date +%s) - start ))" <<'PY'
import glob, json, os, sys
out, gpu, torch_version, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = {}
for path in sorted(glob.glob(os.path.join(out, "m*_*.json"))):
    name = os.path.basename(path)[:-5]
    r = json.load(open(path))
    if "config" not in r:
        rows[name] = r
        continue
    gib = lambda b: None if b is None else round(b / 2**30, 3)
    rows[name] = {
        "num_negatives": r["config"]["num_negatives"],
        "median_step_seconds": r["median_step_seconds"],
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
summary = {"benchmark": "logo-trainer GPU check: random ~1B Llama, 8K real tokens, K = 65536, M = 1, 2, 4, 8",
           "gpu": gpu, "torch": torch_version, "wall_seconds": seconds, "runs": rows}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=1))
PY
