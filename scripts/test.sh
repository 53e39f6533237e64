#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then lint, check the generated stubs, and run the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/python -m pytest "$@"
