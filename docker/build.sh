#!/usr/bin/env bash
# Builds the kv-server image without pulling anything (see docker/Dockerfile): a release build of the server
# on this machine, stripped, plus the shared libraries it links, on top of `scratch`.
# Usage: docker/build.sh [image tag, default moniepoint-kv:latest] [cargo profile: release (default) or debug]
# (`make test` builds moniepoint-kv:test-<run> from the debug build it already has, for the container tests.)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-${KV_IMAGE:-moniepoint-kv:latest}}
PROFILE=${2:-release}
command -v docker >/dev/null || { echo "docker not found: install Docker Engine (e.g. apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers: start it (systemctl start docker, or dockerd &) or set DOCKER_HOST" >&2; exit 1; }
case $PROFILE in
  release) cargo build --release -q -p kv-server ;;
  # The selection of `make test` (TEST_BUILD in the Makefile): the same feature unification, so this
  # reuses that build instead of compiling dozens of crates again with fewer features.
  debug) cargo build -q --workspace --bins --tests --examples ;;
  *) echo "profile must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac
BIN=target/$PROFILE/kv-server
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
ROOT=$CTX/rootfs
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc" "$CTX/data"
strip -o "$ROOT/usr/local/bin/kv-server" "$BIN"
# Every library the binary links, and the loader, at the paths the binary expects.
for lib in $(ldd "$BIN" | grep -o '/[^ )]*'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nkv:x:10001:10001:kv-server:/data:/sbin/nologin\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nkv:x:10001:\n' > "$ROOT/etc/group"
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
cp docker/Dockerfile "$CTX/Dockerfile"
# The image the tag names now: once the tag moves to the new build it is untagged, and removed below so
# rebuilds do not pile up dangling images.
OLD=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
# The legacy builder needs nothing but the engine (BuildKit may want to pull its frontend).
if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$CTX" 2>&1); then
  echo "$out" >&2
  exit 1
fi
NEW=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$OLD" ] && [ "$OLD" != "$NEW" ]; then
  # Fails (harmlessly) while a container or another tag still uses it.
  docker image rm "$OLD" >/dev/null 2>&1 || true
fi
echo "built $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1 / 1e6}')"
