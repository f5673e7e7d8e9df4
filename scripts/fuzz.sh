#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 600), one at a time, under
# `nice -n 19`, from small seed inputs, and writes executions and findings per target to
# bench/results/fuzz.json. Crashing inputs land in fuzz/artifacts/<target>/ (libFuzzer's
# default); each must become a fixed bug and a regression test with its input under tests/.
# Logs go to bench/results/fuzz-logs/ (not committed).
#
#   cargo install cargo-fuzz            # once (crates.io)
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer), so RUSTC_BOOTSTRAP=1
# is set; --sanitizer none (no ASan: the code under test is safe Rust; panics, aborts and
# out-of-memory are what is looked for), -rss_limit_mb=2048, -timeout=20.
set -uo pipefail
cd "$(dirname "$0")/.."
command="scripts/fuzz.sh $*"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(jsonl_source parquet_source pipeline_yaml gguf_tokenizer adapter_reader trainer_parquet)
fi
export RUSTC_BOOTSTRAP=1
export LOGO_CACHE=${LOGO_CACHE:-$HOME/.cache/logo}
export VIRTUAL_ENV=${VIRTUAL_ENV:-$LOGO_CACHE/venv}
export PATH=$VIRTUAL_ENV/bin:$PATH
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$LOGO_CACHE/fuzz-target}
torch_lib=$("$VIRTUAL_ENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
export LD_LIBRARY_PATH=$torch_lib:${LD_LIBRARY_PATH:-}
work=$(mktemp -d)
logs=bench/results/fuzz-logs
mkdir -p "$logs"

# Seeds: small valid inputs of each format.
seed() { mkdir -p "$work/corpus/$1"; cp "$2" "$work/corpus/$1/" 2>/dev/null || true; }
printf '{"context": "doc", "question": "q?", "answer": "a"}\n\n{"input": "d", "instructions": ["a", "b"], "outputs": ["x", "y"]}\n{not json\n' >"$work/a.jsonl"
seed jsonl_source "$work/a.jsonl"
for f in pipeline.yaml pipelines/*.yaml; do seed pipeline_yaml "$f"; done
python3 - "$work" <<'EOF'
import struct, sys, json, os, glob
w = sys.argv[1]
def s(x):
    b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv_str(k, v): return s(k) + struct.pack("<I", 8) + s(v)
def kv_u32(k, v): return s(k) + struct.pack("<I", 4) + struct.pack("<I", v)
def kv_arr_str(k, items):
    return s(k) + struct.pack("<I", 9) + struct.pack("<I", 8) + struct.pack("<Q", len(items)) + b"".join(s(i) for i in items)
def kv_arr_i32(k, items):
    return s(k) + struct.pack("<I", 9) + struct.pack("<I", 5) + struct.pack("<Q", len(items)) + b"".join(struct.pack("<i", i) for i in items)
toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "H", "e", "l", "o", "He", "ll", "Hell", "Hello", "1", "2", "3", "Ġ"]
kvs = [kv_str("general.architecture", "llama"), kv_str("tokenizer.ggml.model", "gpt2"),
       kv_arr_str("tokenizer.ggml.tokens", toks), kv_arr_str("tokenizer.ggml.merges", ["H e", "l l", "He ll", "Hell o"]),
       kv_arr_i32("tokenizer.ggml.token_type", [3, 3, 3] + [1] * (len(toks) - 3)),
       kv_u32("llama.block_count", 1), kv_u32("llama.context_length", 64)]
gguf = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", len(kvs)) + b"".join(kvs)
os.makedirs(f"{w}/corpus/gguf_tokenizer", exist_ok=True)
open(f"{w}/corpus/gguf_tokenizer/tiny.gguf", "wb").write(gguf)
# adapter: u16 length, adapter_config.json, then a tiny safetensors file
cfg = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}).encode()
head = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
st = struct.pack("<Q", len(head)) + head + b"\0" * 16
os.makedirs(f"{w}/corpus/adapter_reader", exist_ok=True)
open(f"{w}/corpus/adapter_reader/seed", "wb").write(struct.pack("<H", len(cfg)) + cfg + st)
EOF
# A small training-samples part of the engine (schema version 1), committed as the seed.
for f in tests/fuzz/seeds/*.parquet; do seed parquet_source "$f"; seed trainer_parquet "$f"; done

results=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    log="$logs/$t.log"
    echo "fuzz: $t for $seconds s (log $log)"
    before=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    features=()
    [ "$t" = trainer_parquet ] || [ -n "${FUZZ_TRAINER:-}" ] && features=(--features trainer)
    nice -n 19 cargo fuzz run --release --sanitizer none --fuzz-dir fuzz "${features[@]}" "$t" "$work/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 \
        -max_len=65536 >"$log" 2>&1
    rc=$?
    after=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    secs=$(grep -oE 'stat::average_exec_per_sec: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    results+=("{\"target\": \"$t\", \"seconds\": $seconds, \"exit\": $rc, \"executions\": ${execs:-0}, \"execs_per_second\": ${secs:-0}, \"coverage_edges\": ${cov:-0}, \"new_artifacts\": $((after - before))}")
done
# Merge into bench/results/fuzz.json: one entry per target, the latest run of each.
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys, os
sys.path.insert(0, "bench")
from provenance import provenance
path = "bench/results/fuzz.json"
prov = provenance(sys.argv[1])
doc = json.load(open(path)) if os.path.exists(path) else {"targets": {}}
for line in sys.stdin:
    if line.strip():
        r = json.loads(line)
        doc["targets"][r["target"]] = {**r, "git_commit": prov["git_commit"], "date": prov["date"]}
# The latest run at the top; each target keeps the commit and date of the run that made it.
doc.update(prov)
doc["how"] = "cargo fuzz run --release --sanitizer none, nice -n 19, on a machine shared with other jobs"
json.dump(doc, open(path, "w"), indent=2)
open(path, "a").write("\n")
' "$command"
echo "wrote bench/results/fuzz.json"
rm -rf "$work"
