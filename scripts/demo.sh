#!/usr/bin/env bash
# The main job end to end on bundled real data: set up, then train, export, serve and score.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/main_job.py "$@"
