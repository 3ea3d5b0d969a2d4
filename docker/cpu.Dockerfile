# syntax=docker/dockerfile:1.7
# vidtune CPU image: the transcode and quality services, transcode shards and local runs.
# Build from the repository root:  docker build -f docker/cpu.Dockerfile -t vidtune:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG DEEPSPEED_VERSION=0.19.8
ARG GRPC_VERSION=1.85.1
# Numba compiles the caption kernel for any x86-64 CPU, so the cache warm() fills here fits every node.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CPU_NAME=generic \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
RUN python -m venv /opt/vidtune
ENV PATH=/opt/vidtune/bin:$PATH
# torch first, from the CPU wheel index: the services need no CUDA and this keeps ~5 GB out of the image.
RUN pip install "setuptools==84.2.1" "wheel==0.48.0" "packaging==26.3" \
 && pip install --index-url https://download.pytorch.org/whl/cpu \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY pyproject.toml constraints.txt README.md ./
# Every other Python dependency at the version the tests ran with (docker/lock.py writes the lock).
COPY docker/requirements.lock ./docker/
ENV PIP_CONSTRAINT=/src/docker/requirements.lock
COPY protos ./protos
COPY services ./services
# gRPC stubs are generated here, not committed.
RUN pip install -c constraints.txt "grpcio-tools==${GRPC_VERSION}" \
 && python -m grpc_tools.protoc -Iprotos --python_out=services --grpc_python_out=services protos/vidtune/v1/*.proto \
 && touch services/vidtune/v1/__init__.py \
 && pip install -c constraints.txt . \
 && DS_BUILD_OPS=0 pip install --no-build-isolation -c constraints.txt "deepspeed==${DEEPSPEED_VERSION}" \
 && python -c "import torch, vidtune; from vidtune.v1 import jobs_pb2; assert torch.__version__.startswith('${TORCH_VERSION}')" \
 && python -c "from vidtune.quality.features import warm; warm()"

FROM ${PYTHON_IMAGE} AS runtime
# Debian bookworm's ffmpeg/ffprobe (libx264, h264_nvenc). Bump FFMPEG_VERSION when Debian replaces it.
ARG FFMPEG_VERSION=7:5.1.9-0+deb12u1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends "ffmpeg=${FFMPEG_VERSION}" \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vidtune \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/vidtune --create-home --shell /usr/sbin/nologin vidtune \
 && install -d -o 10001 -g 10001 /var/cache/vidtune
COPY --from=build /opt/vidtune /opt/vidtune
# Every writable path points at /tmp or the cache dir, so the root filesystem can be read-only.
ENV PATH=/opt/vidtune/bin:$PATH \
    NUMBA_CPU_NAME=generic \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/vidtune \
    VIDTUNE_CACHE_DIR=/var/cache/vidtune \
    XDG_CACHE_HOME=/var/cache/vidtune \
    TORCH_HOME=/var/cache/vidtune/torch \
    HF_HOME=/var/cache/vidtune/huggingface \
    TORCH_EXTENSIONS_DIR=/var/cache/vidtune/torch_extensions \
    TRITON_CACHE_DIR=/var/cache/vidtune/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    VIDTUNE_LOG_FORMAT=json \
    VIDTUNE_HOST=0.0.0.0 \
    VIDTUNE_PORT=50051
USER 10001:10001
WORKDIR /home/vidtune
EXPOSE 50051 50052 50053 50054
# grpc.health.v1 on the port the service listens on (set VIDTUNE_PORT with --port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["/bin/sh", "-c", "vidtune health --port \"${VIDTUNE_PORT}\""]
ENTRYPOINT ["vidtune"]
CMD ["serve", "transcode", "--port", "50051"]
