#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh and, for the image tests, scripts/image-tools.sh), then lint,
# check the generated stubs, and run the tests. Extra arguments go to pytest, e.g.
# scripts/test.sh -m "not slow", or -m "not container" where podman cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/image-tools.sh || echo "test.sh: the container tests will fail without them" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/python -m pytest "$@"
