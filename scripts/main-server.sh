#!/usr/bin/env bash
# The main job with `generator.backend: openai` (pipelines/server.yaml): starts llama.cpp's
# llama-server (scripts/build-llama-server.sh) on 127.0.0.1:$PORT (default 8080) serving the
# embedded GGUF as `smollm2`, runs logo-engine against it, prints the SQL summary, trains the
# adapter, and stops the server. Usage: scripts/main-server.sh [limit] [steps] [parallel].
set -euo pipefail
limit="${1:-8}"; steps="${2:-8}"; parallel="${3:-2}"
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
bin="${CARGO_TARGET_DIR:-$cache/target}/release"
server="$cache/llama.cpp/bin/llama-server"
port="${PORT:-8080}"
[ -x "$server" ] || scripts/build-llama-server.sh
mkdir -p out
yaml=pipelines/server.yaml
if [ "$port" != 8080 ]; then
    yaml=out/server-$port.yaml
    sed "s|http://127.0.0.1:8080|http://127.0.0.1:$port|" pipelines/server.yaml > "$yaml"
fi
"$server" -m "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" --alias smollm2 \
    --host 127.0.0.1 --port "$port" --parallel "$parallel" -c $((4096 * parallel)) \
    --threads 2 > out/llama-server.log 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat out/llama-server.log >&2; exit 1; }
    sleep 0.1
done
"$bin/logo-engine" run "$yaml" --limit "$limit" --output out/data-server --overwrite
"$bin/logo-engine" sql "SELECT generator_model, chosen_finish_reason, count(*) AS samples, avg(array_length(chosen_input_ids)) AS mean_chosen_tokens FROM samples GROUP BY generator_model, chosen_finish_reason" --data out/data-server
"$bin/logo-trainer" --data out/data-server --output out/adapter-server --max-steps "$steps" --device auto
