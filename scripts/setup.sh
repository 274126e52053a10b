#!/usr/bin/env bash
# Create .venv and install csr-vlm with its test extras. Idempotent: a second run with an
# unchanged pyproject.toml returns at once.
#   CPU machines (no nvidia-smi): torch==2.13.0 first, so pip never pulls a CUDA build.
#   GPU machines: the normal torch build from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.csr-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
if command -v nvidia-smi >/dev/null 2>&1; then torch_spec=torch; else torch_spec=torch==2.13.0; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "$torch_spec"
.venv/bin/python -m pip install -q -e '.[test]'
echo "$want" > "$stamp"
