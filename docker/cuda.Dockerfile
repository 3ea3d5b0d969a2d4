# syntax=docker/dockerfile:1.7
# vidtune CUDA image for V100 nodes (compute capability 7.0): the train and evaluate services and their
# worker Jobs, and NVENC transcodes.
# Build from the repository root:  docker build -f docker/cuda.Dockerfile -t vidtune:0.1.0-cu126 .
#
# Why CUDA 12.6: CUDA 13 dropped Volta, and PyTorch ships sm_70 kernels only in its cu126 wheels (cu128
# lost Volta in 2.11, cu130/cu132 never had it); 2.14 is the last release with a cu126 build. The torch
# wheel carries its own CUDA 12.6 user-space libraries (cuBLAS, cuDNN 9.10, NCCL), so the runtime stage
# needs no CUDA base image; only the build stage needs nvcc, from NVIDIA's Debian 12 repository, to
# compile DeepSpeed's ops for sm_70. Both stages share one Python so the venv moves between them.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG DEEPSPEED_VERSION=0.19.8
ARG GRPC_VERSION=1.85.1
ARG CUDA_KEYRING_URL=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
ARG CUDA_PKG_VERSION=12.6.3-1
# Numba compiles the caption kernel for any x86-64 CPU, so the cache warm() fills here fits every node.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CPU_NAME=generic \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# nvcc and the CUDA headers/libraries torch's extension headers include; g++ and libaio for DeepSpeed ops.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl g++ libaio-dev \
 && curl -fsSLo /tmp/cuda-keyring.deb "${CUDA_KEYRING_URL}" \
 && dpkg -i /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "cuda-minimal-build-12-6=${CUDA_PKG_VERSION}" "cuda-libraries-dev-12-6=${CUDA_PKG_VERSION}" \
 && rm -rf /var/lib/apt/lists/* /tmp/cuda-keyring.deb
ENV CUDA_HOME=/usr/local/cuda-12.6 \
    PATH=/usr/local/cuda-12.6/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/vidtune
ENV PATH=/opt/vidtune/bin:$PATH
RUN pip install "setuptools==84.2.1" "wheel==0.48.0" "packaging==26.3" "ninja==1.13.2" \
 && pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
      "torch==${TORCH_VERSION}+cu126" "torchvision==${TORCHVISION_VERSION}+cu126" \
 && python -c "import torch; arch = torch.cuda.get_arch_list() or torch._C._cuda_getArchFlags().split(); \
assert 'sm_70' in arch, f'torch {torch.__version__} has no sm_70 kernels: {arch}'"
COPY pyproject.toml constraints.txt README.md ./
# Every other Python dependency at the version the tests ran with (docker/lock.py writes the lock).
COPY docker/requirements.lock ./docker/
ENV PIP_CONSTRAINT=/src/docker/requirements.lock
COPY protos ./protos
COPY services ./services
RUN pip install -c constraints.txt "grpcio-tools==${GRPC_VERSION}" \
 && python -m grpc_tools.protoc -Iprotos --python_out=services --grpc_python_out=services protos/vidtune/v1/*.proto \
 && touch services/vidtune/v1/__init__.py \
 && pip install -c constraints.txt . \
 && python -c "from vidtune.quality.features import warm; warm()"
# DeepSpeed's ops compiled ahead of time for V100 only, so workers never JIT-compile at start. Ops that need
# Ampere or newer, CUTLASS or GPUDirect Storage are left out.
RUN DS_BUILD_OPS=1 TORCH_CUDA_ARCH_LIST="7.0" DS_ACCELERATOR=cuda MAX_JOBS=8 \
    DS_BUILD_EVOFORMER_ATTN=0 DS_BUILD_CUTLASS_OPS=0 DS_BUILD_RAGGED_DEVICE_OPS=0 \
    DS_BUILD_INFERENCE_CORE_OPS=0 DS_BUILD_FP_QUANTIZER=0 DS_BUILD_GDS=0 \
    pip install --no-build-isolation -c constraints.txt "deepspeed==${DEEPSPEED_VERSION}" \
 && python -c "from deepspeed.git_version_info import installed_ops as ops; \
assert ops.get('fused_adam'), f'fused_adam was not prebuilt: {ops}'" \
 && ds_report

FROM ${PYTHON_IMAGE} AS runtime
# Debian bookworm's ffmpeg is built with NVENC (h264_nvenc, hevc_nvenc); the driver's libnvidia-encode is
# mounted by the NVIDIA container toolkit when NVIDIA_DRIVER_CAPABILITIES includes "video".
ARG FFMPEG_VERSION=7:5.1.9-0+deb12u1
ARG LIBAIO_VERSION=0.3.113-4
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends "ffmpeg=${FFMPEG_VERSION}" "libaio1=${LIBAIO_VERSION}" \
 && rm -rf /var/lib/apt/lists/* \
 && ffmpeg -hide_banner -encoders | grep -q h264_nvenc \
 && groupadd --system --gid 10001 vidtune \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/vidtune --create-home --shell /usr/sbin/nologin vidtune \
 && install -d -o 10001 -g 10001 /var/cache/vidtune
COPY --from=build /opt/vidtune /opt/vidtune
# NVIDIA_VISIBLE_DEVICES is left to the device plugin: setting it here would expose every GPU of a node.
ENV PATH=/opt/vidtune/bin:$PATH \
    NUMBA_CPU_NAME=generic \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
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
    VIDTUNE_PORT=50053
USER 10001:10001
WORKDIR /home/vidtune
EXPOSE 50051 50052 50053 50054
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/bin/sh", "-c", "vidtune health --port \"${VIDTUNE_PORT}\""]
ENTRYPOINT ["vidtune"]
CMD ["serve", "train", "--port", "50053"]
