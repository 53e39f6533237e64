#!/bin/sh
# Builder stage: build the vaeserve wheel and gather every wheel the image installs in /wheels.
# With wheels in /wheelhouse (scripts/image-wheelhouse.sh fills it on the host) no network is
# used; with none there, pip takes them from the package index.
set -eu
flavour=$1
req=/src/deploy/image/requirements-$flavour.txt
if ls /wheelhouse/*.whl >/dev/null 2>&1; then
  pip="python3 $(ls /wheelhouse/pip-*.whl)/pip"
  offline="--no-index --find-links /wheelhouse"
else
  pip="python3 -m pip"
  offline=""
fi
# shellcheck disable=SC2086  # $pip and $offline are word lists
$pip wheel $offline --no-cache-dir --disable-pip-version-check --wheel-dir /wheels \
  -r "$req" -r /src/deploy/image/requirements-build.txt /src
cp "$req" /wheels/requirements.txt
cp /src/deploy/image/install.sh /wheels/install.sh
