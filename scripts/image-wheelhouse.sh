#!/usr/bin/env bash
# Fill deploy/wheelhouse/FLAVOUR/ (cpu or cuda) with every wheel that image installs, for its
# Python (cp311) and this machine's architecture, so the image builds with no network inside.
# A rerun with the same requirement files does nothing. PYTHON: any python with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:?usage: scripts/image-wheelhouse.sh cpu|cuda}
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
arch=$(uname -m)
req=deploy/image/requirements-$flavour.txt
dest=deploy/wheelhouse/$flavour
want="$(cat "$req" deploy/image/requirements-build.txt | sha256sum | cut -c1-16)-$arch"
if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
rm -f "$dest"/*.whl "$dest/.stamp"
platforms=(--platform "manylinux2014_$arch")
for glibc in $(seq 17 36); do   # bookworm has glibc 2.36
  platforms+=(--platform "manylinux_2_${glibc}_$arch")
done
"$py" -m pip download --quiet --disable-pip-version-check --dest "$dest" \
  --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
  -r "$req" -r deploy/image/requirements-build.txt
echo "$want" > "$dest/.stamp"
