#!/usr/bin/env bash
# Build the CPU image and prove it: install the container tools when missing (as root), then
# run the `container` tests (tests/deploy/test_image.py): size, non-root, CPU-only, start to
# SERVING on the probe port, scores equal to the server run directly, exit 0 on SIGTERM.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/image-tools.sh
exec .venv/bin/python -m pytest -m container tests/deploy "$@"
