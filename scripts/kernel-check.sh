#!/usr/bin/env bash
# Reruns the trainer's numeric test binaries (lib, train, dist, grad_vs_peft, loss_vs_torch,
# model_vs_hf) under each of
# libtorch's CPU kernel sets, as cargo runs them (test binaries in parallel threads), so that a
# bound that holds on one CPU only cannot land. Every numeric check prints
# `numeric <label>: observed <o> bound <b>` (trainer/tests/common/numeric.rs); this script
# collects them and, with --json, writes the worst observation per check and kernel.
#
# usage: scripts/kernel-check.sh [--runs N] [--json FILE] KERNEL...
#   KERNEL: avx2 | avx512 | default (libtorch's own choice for this CPU)
# Run it through `just` (scripts/just kernel-check ...) so the torch venv is on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
args="$*"
runs=1
json=""
kernels=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        avx2|avx512|default) kernels+=("$1"); shift ;;
        *) echo "kernel-check: unknown argument $1 (want avx2, avx512, default, --runs N, --json FILE)" >&2; exit 2 ;;
    esac
done
[ ${#kernels[@]} -gt 0 ] || kernels=(avx2)
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
# The test executables of the workspace build (the selection CI builds, so no dependency is
# built again with other features), run directly: one binary at a time, its tests on parallel
# threads, as `cargo test` runs them.
binaries=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
wanted = {"lib", "train", "dist", "grad_vs_peft", "loss_vs_torch", "model_vs_hf", "objective", "kv_cache"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    package = m["package_id"].split("#")[-1].split("@")[0]
    name = "lib" if "lib" in m["target"]["kind"] else m["target"]["name"]
    if package == "logo-trainer" and name in wanted:
        print(m["executable"])
')
[ -n "$binaries" ] || { echo "kernel-check: no trainer test executables found (build failed?)" >&2; exit 1; }
status=0
for kernel in "${kernels[@]}"; do
    for run in $(seq 1 "$runs"); do
        out="$log/$kernel-$run.txt"
        echo "kernel-check: ATEN_CPU_CAPABILITY=$kernel, run $run of $runs"
        : >"$out"
        for bin in $binaries; do
            if [ "$kernel" = default ]; then
                (cd trainer && env -u ATEN_CPU_CAPABILITY "$bin" --nocapture >>"$out" 2>&1) || status=1
            else
                (cd trainer && ATEN_CPU_CAPABILITY=$kernel "$bin" --nocapture >>"$out" 2>&1) || status=1
            fi
        done
        # Summaries without the "test result:" prefix, which .ci/run counts for the main suite.
        grep -E '^test result|FAILED|panicked' "$out" | sed -e 's/^test result: //' -e "s/^/  [$kernel #$run] /" || true
    done
done
if [ -n "$json" ]; then
    python3 - "$log" "$json" "$args" <<'EOF'
import json, os, re, sys
sys.path.insert(0, "bench")
from provenance import stamp
log, path = sys.argv[1], sys.argv[2]
line = re.compile(r"numeric (.+): observed (\S+) bound (\S+)")
checks = {}
for name in sorted(os.listdir(log)):
    kernel = name.rsplit("-", 1)[0]
    for m in line.finditer(open(os.path.join(log, name), errors="replace").read()):
        label, observed, bound = m.group(1), float(m.group(2)), float(m.group(3))
        c = checks.setdefault(label, {"bound": bound, "worst": {}})
        c["worst"][kernel] = max(c["worst"].get(kernel, 0.0), observed)
def margin(check):
    """bound / worst observation; None for an exact check (bound 0) that held."""
    worst = max(check["worst"].values())
    return None if worst == 0 else check["bound"] / worst

doc = stamp({
    "runs": sorted(os.listdir(log)),
    "checks": {k: {**v, "margin": margin(v)} for k, v in sorted(checks.items())},
}, ("scripts/kernel-check.sh " + sys.argv[3]).strip())
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
json.dump(doc, open(path, "w"), indent=1)
print(f"kernel-check: {len(checks)} checks → {path}")
tight = [(k, v["margin"]) for k, v in doc["checks"].items() if v["margin"] is not None and v["margin"] < 2]
for k, m in tight:
    print(f"kernel-check: bound within 2x of the worst observation: {k} (margin {m:.2f})")
EOF
fi
exit $status
