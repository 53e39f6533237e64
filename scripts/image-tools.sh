#!/usr/bin/env bash
# Make sure the container tools the image tests use are here: podman, runc (crun cannot set
# rlimits on hosts like CI's, see deploy/image/containers.conf) and mmdebstrap. As root with
# apt-get (CI) it installs what is missing from Debian; otherwise it says what to install and
# fails, so a missing tool never turns into skipped tests.
set -euo pipefail
tools=(podman runc mmdebstrap)
missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "image-tools: installing ${missing[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "image-tools: missing ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install" \
  "${missing[*]}) or run the tests with -m 'not container'" >&2
exit 1
