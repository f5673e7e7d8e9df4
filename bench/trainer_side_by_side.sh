#!/usr/bin/env bash
# One LOGO training step, logo-trainer vs PyTorch + transformers + PEFT, on the same model
# (the embedded SmolLM2-135M, dequantised) and the same synthetic sample, in this run on this
# machine. Ours runs training's default gradient, the shared prompt (trainer/src/shared_prompt.rs);
# the reference back-propagates the M + 1 sequences as one batch, as a PEFT user would write it.
# Writes bench/results/trainer_step_<device>_p<P>_m<M>.json with both measurements, the ratios
# (or the reference's failure) and the provenance (bench/provenance.py).
# Usage: bench/trainer_side_by_side.sh [prompt_tokens=2048] [num_negatives=2] [steps=3] [device=cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-2048}; M=${2:-2} ; STEPS=${3:-3}; DEVICE=${4:-cpu}
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release/logo-trainer"
py="$cache/venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -d "$cache/smollm2-hf" ] || "$bin" export-hf --output "$cache/smollm2-hf" >&2
"$bin" bench --share-prompt --prompt-tokens "$P" --num-negatives "$M" --steps "$STEPS" --device "$DEVICE" \
    --json "$work/ours.json" --dump-example "$work/example.json" > /dev/null
# The reference may run out of memory (it materialises full [S, T, V] logits and every
# layer's activations); record that instead of failing.
code=0
"$py" bench/hf_peft_logo_step.py "$cache/smollm2-hf" "$work/example.json" "$STEPS" > "$work/theirs.json" || code=$?
if [ "$code" != 0 ]; then
    echo "{\"error\": \"reference exited with status $code (137: killed by the kernel's OOM killer; this machine has $(free -g | awk '/Mem:/{print $2}') GiB)\"}" > "$work/theirs.json"
fi
mkdir -p bench/results
"$py" - "$work/ours.json" "$work/theirs.json" "bench/results/trainer_step_${DEVICE}_p${P}_m${M}.json" \
    "bench/trainer_side_by_side.sh $P $M $STEPS $DEVICE" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from provenance import stamp
ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
report = {
    "benchmark": "one LOGO training step (forward, backward, AdamW), LoRA r=8 on q,k,v,o,embed_tokens; "
                 "logo-trainer with the shared-prompt gradient, the reference with one joint backward",
    "logo_trainer": ours,
    "reference": theirs,
}
if "error" not in theirs:
    report["speedup_step_time"] = theirs["median_step_seconds"] / ours["median_step_seconds"]
    report["memory_ratio_ours_over_reference"] = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
json.dump(stamp(report, sys.argv[4]), open(sys.argv[3], "w"), indent=2)
print(json.dumps({k: report.get(k, theirs.get("error")) for k in ("speedup_step_time", "memory_ratio_ours_over_reference")}))
PY
