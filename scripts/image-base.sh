#!/usr/bin/env bash
# Make a Debian bookworm base image (python3 3.11) from Debian packages with mmdebstrap and
# import it into podman; print its tag. The tag carries a hash of everything that goes into
# it, so an existing image is reused and reruns take a second. The host's apt sources file is
# mmdebstrap's mirror argument, so the packages come from wherever this host's apt points.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}

suite=bookworm   # python3 3.11: the wheelhouse is built for cp311
sources=${VAESERVE_APT_SOURCES:-}
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$f" ] && { sources=$f; break; }
  done
fi
[ -n "$sources" ] || { echo "image-base: no apt sources file found; set VAESERVE_APT_SOURCES" >&2; exit 1; }

args=(
  --variant=minbase
  --include=python3
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
)
key=$( { printf '%s\n' "$suite" "${args[@]}"; cat "$sources"; } | sha256sum | cut -c1-16)
tag=localhost/vaeserve-base:$suite-$key
if podman image exists "$tag"; then
  echo "$tag"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet "${args[@]}" "$suite" "$tmp/rootfs.tar" "$sources" >&2
podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL io.vaeserve.base.key=$key" \
  "$tmp/rootfs.tar" "$tag" >&2
echo "$tag"
