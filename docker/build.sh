#!/usr/bin/env bash
# Build the vidtune images: the CPU image (transcode, quality) and the CUDA image for V100 nodes
# (train, evaluate, worker Jobs). Needs a running Docker engine (BuildKit).
#
#   docker/build.sh [cpu|cuda|all]        IMAGE=ghcr.io/vidtune/vidtune TAG=0.1.0 PUSH=1 docker/build.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${IMAGE:-ghcr.io/vidtune/vidtune}"
tag="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "${root}/pyproject.toml" | head -n 1)}"
which="${1:-all}"

case "${which}" in
  cpu | cuda | all) ;;
  *) echo "usage: docker/build.sh [cpu|cuda|all]" >&2; exit 2 ;;
esac

if ! command -v docker >/dev/null 2>&1; then
  echo "docker/build.sh: no docker command on this machine; install Docker to build the images." >&2
  exit 3
fi
if ! docker info >/dev/null 2>&1; then
  echo "docker/build.sh: the docker client is here but no Docker engine answers (docker info failed);" \
       "start the daemon or set DOCKER_HOST to build the images." >&2
  exit 3
fi

build() {  # build <dockerfile> <tag>
  echo "building ${image}:$2 from docker/$1" >&2
  DOCKER_BUILDKIT=1 docker build --file "${root}/docker/$1" --tag "${image}:$2" "${root}"
  if [[ "${PUSH:-0}" == "1" ]]; then
    docker push "${image}:$2"
  fi
}

if [[ "${which}" == "cpu" || "${which}" == "all" ]]; then
  build cpu.Dockerfile "${tag}"
fi
if [[ "${which}" == "cuda" || "${which}" == "all" ]]; then
  build cuda.Dockerfile "${tag}-cu126"
fi
