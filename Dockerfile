# CosyVoice serving images: one Dockerfile, two final targets.
#
#   docker build --target gpu -t cosyvoice-serving:gpu .   # CUDA 13.0, NVIDIA driver >= 580
#   docker build --target cpu -t cosyvoice-serving:cpu .   # any x86_64 box
#
# Both run every service: `docker run cosyvoice-serving:gpu serve llm` (ENTRYPOINT is `cosyvoice`).
# Pinned versions, the driver floor, volumes and the UID: docs/images.md. Everything is
# downloaded here, at build time, from the lock files in requirements/ (scripts/lock.sh makes
# them); a container never downloads anything when it starts.

# ---------------------------------------------------------------------------------------------
# Bases. Each is named once, so its tag is pinned in exactly one place.
# The CUDA tag matches cuda-toolkit in requirements/runtime-gpu.txt (the CUDA torch was built
# for); tests/deploy/test_dockerfile.py fails if the two drift apart.
FROM nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04 AS cuda-base
FROM python:3.11-slim-bookworm AS python-base
# uv only fetches a CPython 3.11 for the CUDA image (Ubuntu 24.04 ships 3.12); pip installs.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
# GPU builder: CPython 3.11 (uv's standalone build) in /opt/python, the venv in /opt/venv.
FROM cuda-base AS gpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
COPY --from=uv /uv /usr/local/bin/uv
# ca-certificates for uv's and pip's HTTPS; it stays in the builder.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && uv python install 3.11 \
 && "$(uv python find 3.11)" -m venv /opt/venv
# The lock first, the source last: a code change does not reinstall 4 GB of wheels.
COPY requirements/runtime-gpu.txt requirements/runtime-nodeps.txt /tmp/requirements/
# pypi.nvidia.com holds the real tensorrt-cu13-libs wheel (PyPI has only a stub that would
# download it from there anyway, while building). Unlike the CPU build this one resolves deps
# (every locked package still comes at its pinned version): the real wheel's metadata is not on
# PyPI, so the lock cannot know whether it needs more. `pip check` then proves the set whole.
RUN /opt/venv/bin/python -m pip install --prefer-binary \
        --extra-index-url https://pypi.nvidia.com \
        -r /tmp/requirements/runtime-gpu.txt \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip install --no-deps --no-build-isolation \
        -r /tmp/requirements/runtime-nodeps.txt
COPY pyproject.toml README.md /src/
COPY services /src/services
COPY gateway /src/gateway
# --no-build-isolation builds with the locked setuptools instead of fetching another one.
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/cosyvoice --version

# ---------------------------------------------------------------------------------------------
# CPU builder: the same steps on python:3.11; torch's +cpu wheel lies on PyTorch's CPU index.
FROM python-base AS cpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements/runtime-cpu.txt requirements/runtime-nodeps.txt /tmp/requirements/
# --no-deps: this lock is complete (`pip check` proves it), so nothing unpinned can slip in.
RUN /opt/venv/bin/python -m pip install --no-deps --prefer-binary \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /tmp/requirements/runtime-cpu.txt \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip install --no-deps --no-build-isolation \
        -r /tmp/requirements/runtime-nodeps.txt
COPY pyproject.toml README.md /src/
COPY services /src/services
COPY gateway /src/gateway
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/cosyvoice --version

# ---------------------------------------------------------------------------------------------
# Final images. The two targets differ only in base and in what they copy from their builder;
# keep the rest identical (the test checks USER, HEALTHCHECK, ENTRYPOINT and VOLUMEs of both).
FROM cuda-base AS gpu
# UID/GID 10001: fixed so volume owners can be set on the host (docs/images.md). /models is
# owned by it too: a new named volume mounted there takes this owner, so the CPU compose
# variant's init service can write the tiny model into it (stages mount it read-only). No apt
# packages: the wheels bundle what they link (libsndfile in soundfile, CUDA libs in torch).
RUN groupadd --gid 10001 cosyvoice \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/cosyvoice \
        --shell /usr/sbin/nologin cosyvoice \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/cosyvoice /var/lib/cosyvoice \
 && install -d -o 10001 -g 10001 -m 0755 /models
COPY --from=gpu-builder /opt/python /opt/python
COPY --from=gpu-builder /opt/venv /opt/venv
# Offline at run time: the hub clients must not try the network; every cache that a library
# would put under $HOME goes to the cache volume instead.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/cosyvoice \
    COSYVOICE_CACHE=/var/cache/cosyvoice \
    COSYVOICE_GATEWAY_SPEAKER_DB=/var/lib/cosyvoice/speakers.db \
    XDG_CACHE_HOME=/var/cache/cosyvoice \
    HF_HOME=/var/cache/cosyvoice/huggingface \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    NUMBA_CACHE_DIR=/var/cache/cosyvoice/numba \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/cosyvoice/torchinductor \
    TRITON_CACHE_DIR=/var/cache/cosyvoice/triton
VOLUME ["/var/cache/cosyvoice", "/var/lib/cosyvoice"]
WORKDIR /var/lib/cosyvoice
USER 10001:10001
# gateway 50051, llm 50052, flow 50053, vocoder 50054, frontend 50055; metrics 9400-9404.
EXPOSE 50051 50052 50053 50054 50055 9400 9401 9402 9403 9404
# The gateway's address; a stage container overrides it with its own port (compose/k8s do).
# The start period covers loading the model and building TensorRT engines on a first start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["cosyvoice", "health"]
ENTRYPOINT ["cosyvoice"]
CMD ["--help"]

FROM python-base AS cpu
RUN groupadd --gid 10001 cosyvoice \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/cosyvoice \
        --shell /usr/sbin/nologin cosyvoice \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/cosyvoice /var/lib/cosyvoice \
 && install -d -o 10001 -g 10001 -m 0755 /models
COPY --from=cpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/cosyvoice \
    COSYVOICE_CACHE=/var/cache/cosyvoice \
    COSYVOICE_GATEWAY_SPEAKER_DB=/var/lib/cosyvoice/speakers.db \
    XDG_CACHE_HOME=/var/cache/cosyvoice \
    HF_HOME=/var/cache/cosyvoice/huggingface \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    NUMBA_CACHE_DIR=/var/cache/cosyvoice/numba \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/cosyvoice/torchinductor
VOLUME ["/var/cache/cosyvoice", "/var/lib/cosyvoice"]
WORKDIR /var/lib/cosyvoice
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 9400 9401 9402 9403 9404
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["cosyvoice", "health"]
ENTRYPOINT ["cosyvoice"]
CMD ["--help"]
