#!/usr/bin/env bash
# Build a vae-server image with no network inside the build: a Debian base made from Debian
# packages (scripts/image-base.sh; BASE=IMAGE to use another), the wheelhouse
# (scripts/image-wheelhouse.sh), then `podman build --target FLAVOUR`. Prints the tag.
# usage: scripts/image-build.sh cpu|cuda [TAG]      (default tag localhost/vaeserve:VERSION-FLAVOUR)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}
flavour=${1:?usage: scripts/image-build.sh cpu|cuda [TAG]}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
tag=${2:-localhost/vaeserve:$version-$flavour}
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

t0=$(date +%s)
base=${BASE:-$(bash scripts/image-base.sh)}
t1=$(date +%s)
bash scripts/image-wheelhouse.sh "$flavour"
t2=$(date +%s)
old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
podman build --quiet --target "$flavour" --tag "$tag" \
  --build-arg BASE="$base" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --file Containerfile . >&2
t3=$(date +%s)
new=$(podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true   # the previous build of this tag, now untagged
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image-build: $tag base $((t1 - t0))s, wheelhouse $((t2 - t1))s, build $((t3 - t2))s," \
  "$((size / 1000000)) MB" >&2
echo "$tag"
