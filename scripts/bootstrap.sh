#!/usr/bin/env bash
# Create .venv and install vaeserve with every extra. torch is pinned through
# constraints.txt first: an unpinned torch would pull a multi-GB CUDA build.
# Then .venv-triton: tritonclient for tests/kserve, apart because it pins protobuf<7 and our
# stubs need protobuf>=7. Quick when nothing changed (stamps keyed on the files they install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.vaeserve-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
[ -x .venv-triton/bin/python ] || "$PY" -m venv .venv-triton
tstamp=.venv-triton/.vaeserve-installed
twant=$(sha256sum scripts/triton-requirements.txt | cut -d' ' -f1)
if [ "$(cat "$tstamp" 2>/dev/null)" != "$twant" ]; then
  .venv-triton/bin/python -m pip install -q --upgrade pip
  .venv-triton/bin/python -m pip install -q -r scripts/triton-requirements.txt
  echo "$twant" > "$tstamp"
fi
