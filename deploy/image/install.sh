#!/bin/sh
# venv stage: install vaeserve and its pinned dependencies from /wheels (no index, no network)
# into the venv /opt/vaeserve, with pip run from its wheel so no pip stays behind, then drop
# the test suites that packages ship.
set -eu
python3 -m venv --without-pip /opt/vaeserve
/opt/vaeserve/bin/python "$(ls /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
  --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
  -r /wheels/requirements.txt vaeserve
find /opt/vaeserve -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +
