# The streamcell image: the service, the trainer (Ray) and the CLI in one.
#   docker build -t streamcell .                                  # CPU torch (default)
#   docker build -t streamcell:cuda --build-arg TORCH_VARIANT=cu126 .   # CUDA 12.6 torch
# TORCH_VARIANT picks the PyTorch wheel index (cpu, cu118, cu126, ...); the CUDA
# wheels carry their own CUDA runtime, so the same slim base serves both and a
# GPU host needs only the NVIDIA driver and container toolkit.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
# The service needs none of the extras; the image also trains (Ray) and replays data sets.
ARG EXTRAS=train,broker,bench

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the chosen index, so that installing the project keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

WORKDIR /opt/streamcell
COPY pyproject.toml README.md* ./
COPY core core
COPY service service
COPY trainer trainer
COPY demo demo
COPY protos protos
# ray[default] adds the dashboard and the Jobs API: the compose cluster's head health
# check and `ray job submit`, and KubeRay's RayJob submitter, need them.
RUN pip install ".[${EXTRAS}]" "ray[default]" \
    && python -c "import streamcell.service.app, streamcell.v1.predictor_pb2_grpc" \
    && python -c "from ray.dashboard.modules.job.sdk import JobSubmissionClient"

# Runs as an unprivileged user; /registry (model versions), /data and /ray-storage
# (Ray Train checkpoints, shared by the cluster) are volumes it must own.
RUN useradd --create-home --uid 10001 streamcell \
    && mkdir -p /registry /data /ray-storage \
    && chown streamcell:streamcell /registry /data /ray-storage
USER streamcell
WORKDIR /home/streamcell

# gRPC, Prometheus /metrics
EXPOSE 50051 9100
CMD ["streamcell", "--help"]
