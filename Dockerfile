# GPU image: Bark on an NVIDIA GPU, announced over zeroconf.
#   docker compose up -d        (see docker-compose.yml and README "Docker with an NVIDIA GPU")
# Every setting is a BARK_* environment variable (README "Flags"); arguments after the image name
# are flags and win over them.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# PyPI's Linux build of torch is the CUDA one (it brings its CUDA libraries; the host needs only
# the NVIDIA driver and Container Toolkit). The version is the one the test suite runs
# (script/test, addon/Dockerfile: one torch version everywhere).
ARG TORCH_VERSION=2.13.0
# For mirrors and offline builds, pip's own settings pass through, e.g.
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://HOST/wheels/
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/huggingface \
    BARK_URI=tcp://0.0.0.0:10200 \
    BARK_ZEROCONF=1 \
    BARK_MODEL=suno/bark \
    BARK_PRELOAD=1 \
    BARK_DATA_DIR=/data \
    BARK_VOICES_DIR=/voices

# Torch and the dependencies first, in a layer of their own: a change to the code (the next
# layer) does not download them again. They are read from pyproject.toml, the one list of them.
WORKDIR /tmp/src
COPY pyproject.toml ./
RUN pip install "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && useradd --create-home --uid 1000 bark \
    && mkdir -p /data /voices \
    && chown bark:bark /data /voices

# The package, installed like any user's pip install (a wheel, not the source tree).
COPY README.md ./
COPY wyoming_bark ./wyoming_bark
RUN pip install --no-deps . && rm -rf /tmp/src

WORKDIR /data
USER 1000:1000
VOLUME ["/data"]
EXPOSE 10200

HEALTHCHECK --start-period=10m --interval=1m --timeout=15s \
    CMD ["python", "-m", "wyoming_bark.health"]

ENTRYPOINT ["python", "-m", "wyoming_bark"]
