#!/usr/bin/env bash
# Seconds per NIAH cell and per QA question with the engine's generator (every prompt prefilled
# on its own) and the torch generator (KV cache; the depths of one haystack length and the
# questions of one document share their prefill), in one run on the embedded SmolLM2-135M, plus
# perplexity windows one at a time vs batched, and NIAH cells past the model's 8K (torch only:
# the engine's policy stops at 8,192 positions). Writes bench/results/eval_speed.json with the
# commands, the git commit, the machine and the load average around each run.
# Usage: bench/eval_speed.sh [niah lengths=1024] [depths=0,50,100] [qa questions=4]
#        [long length=9000] [threads=2]
set -euo pipefail
cd "$(dirname "$0")/.."
LENGTHS=${1:-1024}; DEPTHS=${2:-0,50,100}; QAQ=${3:-4}; LONG=${4:-9000}; THREADS=${5:-2}
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release/logo-eval"
qa=../shared/data/leval/multidoc_qa.jsonl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runs=()
run() { # name, args...
    local name=$1; shift
    local before after t0 t1
    before=$(cut -d' ' -f1 /proc/loadavg); t0=$(date +%s.%N)
    "$bin" --threads "$THREADS" --out "$work/$name" "$@" > "$work/$name.log" 2>&1
    t1=$(date +%s.%N); after=$(cut -d' ' -f1 /proc/loadavg)
    echo "$name: $(echo "$t1 - $t0" | bc) s (load $before -> $after)" >&2
    printf '{"name": "%s", "wall_seconds": %s, "load_before": %s, "load_after": %s, "command": "%s"}\n' \
        "$name" "$(echo "$t1 - $t0" | bc)" "$before" "$after" "logo-eval --threads $THREADS $*" > "$work/$name.run"
    runs+=("$name")
}
for g in engine torch; do
    run "niah_$g" --generator "$g" --tasks niah --niah-lengths "$LENGTHS" --niah-depths "$DEPTHS" --needle pizza
    run "qa_$g" --generator "$g" --tasks qa --qa "$qa" --qa-questions "$QAQ" --qa-per-document "$QAQ" \
        --max-length 2048 --max-new-tokens 32
done
run ppl_batch1 --tasks ppl --ppl-lengths 1024 --ppl-tokens 4096 --ppl-batch 1
run ppl_batch4 --tasks ppl --ppl-lengths 1024 --ppl-tokens 4096 --ppl-batch 4
run niah_long_torch --generator torch --tasks niah --niah-lengths "$LONG" --niah-depths 50 --needle pizza
BENCH_CMD="bench/eval_speed.sh $*" python3 - "$work" "${runs[@]}" <<'PY'
import json, os, subprocess, sys
work, names = sys.argv[1], sys.argv[2:]
def model(name):
    return os.path.join(work, name, "base")
out = {"benchmark": "eval_speed", "runs": {}}
for n in names:
    r = json.load(open(os.path.join(work, n + ".run")))
    m = model(n)
    if n.startswith("niah"):
        rep = json.load(open(os.path.join(m, "niah.json")))
        cells = len(rep["results"])
        r.update(cells=cells, task_seconds=rep["seconds"],
                 seconds_per_cell=rep["seconds"] / cells, mean_recall=rep["mean_recall"],
                 answers=[x["answer"] for x in rep["results"]],
                 retrieval_score=(rep.get("retrieval") or {}).get("top_mean"),
                 retrieval_heads=(rep.get("retrieval") or {}).get("retrieval_heads"),
                 lengths=rep["context_lengths"])
    elif n.startswith("qa"):
        rep = json.load(open(os.path.join(m, "qa.json")))
        q = len(rep["items"])
        r.update(questions=q, task_seconds=rep["seconds"], seconds_per_question=rep["seconds"] / q,
                 f1=rep["mean"]["f1"], answers=[x["prediction"] for x in rep["items"]])
    else:
        rep = json.load(open(os.path.join(m, "perplexity.json")))
        r.update(points=rep["points"])
    out["runs"][n] = r
R = out["runs"]
same = lambda a, b: sum(x == y for x, y in zip(R[a]["answers"], R[b]["answers"]))
out["summary"] = {
    "niah_seconds_per_cell": {"engine": R["niah_engine"]["seconds_per_cell"],
                              "torch": R["niah_torch"]["seconds_per_cell"]},
    "niah_speedup": R["niah_engine"]["seconds_per_cell"] / R["niah_torch"]["seconds_per_cell"],
    "niah_same_answers": f"{same('niah_engine', 'niah_torch')}/{len(R['niah_torch']['answers'])}",
    "qa_seconds_per_question": {"engine": R["qa_engine"]["seconds_per_question"],
                                "torch": R["qa_torch"]["seconds_per_question"]},
    "qa_speedup": R["qa_engine"]["seconds_per_question"] / R["qa_torch"]["seconds_per_question"],
    "qa_same_answers": f"{same('qa_engine', 'qa_torch')}/{len(R['qa_torch']['answers'])}",
    "ppl_wall_seconds": {"batch1": R["ppl_batch1"]["wall_seconds"],
                         "batch4": R["ppl_batch4"]["wall_seconds"]},
    "niah_long_seconds_per_cell": R["niah_long_torch"]["seconds_per_cell"],
    "niah_long_length": R["niah_long_torch"]["lengths"],
}
sys.path.insert(0, "bench")
from provenance import stamp
out = stamp(out, os.environ["BENCH_CMD"])
json.dump(out, open("bench/results/eval_speed.json", "w"), indent=2)
print(json.dumps(out["summary"], indent=2))
PY
