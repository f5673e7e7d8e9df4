#!/usr/bin/env bash
# Creates (once) the Python environment the trainer builds and tests against, outside the
# clone: $LOGO_CACHE/venv with torch==2.11.0 (libtorch for tch 0.24; ~2.7 GB download, 4.6 GB
# on disk, ~3 minutes) and the reference libraries the tests compare against
# (trainer/tests/py/requirements.txt: transformers, peft, safetensors).
set -euo pipefail
cache="${LOGO_CACHE:-$HOME/.cache/logo}"
venv="$cache/venv"
req="$(dirname "$0")/../trainer/tests/py/requirements.txt"
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
    echo "setup-venv: installing torch==2.11.0 into $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.11.0
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi
