# GPU image: Bark on an NVIDIA GPU, announced over zeroconf.
#   docker compose up -d        (see docker-compose.yml and README "Docker with an NVIDIA GPU")
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/huggingface \
    BARK_DATA_DIR=/data \
    BARK_VOICES_DIR=/voices

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wyoming_bark ./wyoming_bark
# The base image's CUDA build of torch satisfies torch>=2.6: pip keeps it.
RUN pip install . \
    && useradd --create-home --uid 1000 bark \
    && mkdir -p /data /voices \
    && chown bark:bark /data /voices

USER 1000:1000
VOLUME ["/data"]
EXPOSE 10200

HEALTHCHECK --start-period=10m --interval=1m --timeout=15s \
    CMD ["python", "-m", "wyoming_bark.health", "--uri", "tcp://127.0.0.1:10200"]

ENTRYPOINT ["python", "-m", "wyoming_bark", "--uri", "tcp://0.0.0.0:10200", "--zeroconf"]
CMD ["--model", "suno/bark", "--preload"]
