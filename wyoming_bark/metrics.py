"""Prometheus metrics (``--metrics-port``): what an operator graphs and alerts on.

Counters and histograms are moved where things happen (a request ends, audio starts, a sentence
is made, a connection is refused, a decode step runs); states (batch rows, the model, the cache,
connections open, voices) are read from the engine when Prometheus scrapes. The endpoint is
``prometheus_client``'s HTTP server on a thread of its own: neither the event loop nor the decode
thread ever waits for a scrape. Every label takes values from a fixed set (never a text, a voice
name or an address).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LOGGER = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
KINDS = ("oneshot", "streaming")
# A request's outcome: ok, cancelled, or the code of the error it ended with.
OUTCOMES = (
    "ok", "cancelled", "busy", "text-too-long", "unknown-voice", "voice-error", "model-not-loaded",
    "out-of-memory", "bad-model-output", "synthesis-failed", "tts-error", "other",
)  # fmt: skip
REFUSALS = ("busy", "per_address")
PROXY_REJECTIONS = ("malformed", "timeout")
GPTS = ("semantic", "coarse", "mixed")
SECONDS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter("bark_requests", "Synthesis requests ended, by kind and outcome", ["kind", "outcome"],
                   registry=REGISTRY)  # fmt: skip
FIRST_AUDIO = Histogram("bark_first_audio_seconds", "From a request's start to its first audio", ["kind"],
                        buckets=SECONDS, registry=REGISTRY)  # fmt: skip
SENTENCE = Histogram("bark_sentence_generation_seconds", "Time to make one sentence's audio", buckets=SECONDS,
                     registry=REGISTRY)  # fmt: skip
RTF = Histogram("bark_sentence_real_time_factor", "Seconds of work per second of a sentence's speech",
                buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32), registry=REGISTRY)  # fmt: skip
AUDIO = Counter("bark_audio_seconds", "Seconds of speech made", registry=REGISTRY)
STEPS = Histogram("bark_decode_step_seconds", "One batched decode call, by GPT (mixed: both in one call) and kind",
                  ["gpt", "kind"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                  registry=REGISTRY)  # fmt: skip
REFUSED = Counter("bark_connections_refused", "Connections refused: the server (busy) or one address full",
                  ["reason"], registry=REGISTRY)  # fmt: skip
IDLE_CLOSED = Counter("bark_connections_idle_closed", "Connections closed after --idle-timeout without work",
                      registry=REGISTRY)  # fmt: skip
PROXY_REJECTED = Counter("bark_proxy_headers_rejected", "Connections closed for a bad or slow PROXY header",
                         ["reason"], registry=REGISTRY)  # fmt: skip
for _kind in KINDS:  # every series exists from the start: a rate() needs its zero
    FIRST_AUDIO.labels(_kind)
    for _outcome in OUTCOMES:
        REQUESTS.labels(_kind, _outcome)
for _reason in REFUSALS:
    REFUSED.labels(_reason)
for _reason in PROXY_REJECTIONS:
    PROXY_REJECTED.labels(_reason)


def request_ended(kind: str, outcome: str) -> None:
    REQUESTS.labels(kind, outcome if outcome in OUTCOMES else "other").inc()


def sentence_made(seconds: float, audio_seconds: float) -> None:
    SENTENCE.observe(seconds)
    AUDIO.inc(audio_seconds)
    if audio_seconds > 0:
        RTF.observe(seconds / audio_seconds)


def decode_step(gpts: set[str], prefill: bool, seconds: float) -> None:
    gpt = next(iter(gpts)) if len(gpts) == 1 else "mixed"
    STEPS.labels(gpt if gpt in GPTS else "mixed", "prefill" if prefill else "step").observe(seconds)


class StateCollector(Collector):
    """Gauges read at scrape time from ``status()`` (the engine's ``get_status`` and the
    connection counts): nothing is kept in step with them."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            status = self.status()
        except Exception:  # a scrape must not fail the server, nor go unanswered
            _LOGGER.exception("Reading the status for metrics failed")
            return
        batch = status.get("batch", {})
        rows = GaugeMetricFamily("bark_batch_rows", "Sentences in the batch, running or waiting for a row, "
                                 "waited for now or made ahead", labels=["state", "priority"])  # fmt: skip
        for state in ("running", "waiting"):
            for priority in ("now", "ahead"):
                rows.add_metric([state, priority], batch.get(f"{state}_{priority}", 0))
        yield rows
        yield _gauge("bark_batch_rows_max", "Rows the batch has", batch.get("max", 0))
        yield _counter_like("bark_batch_preemptions_total", "Sentences made ahead that gave their row up",
                            batch.get("preempted", 0))  # fmt: skip
        model = GaugeMetricFamily("bark_model_state", "The model: loading, loaded or failed (1 for the one it is in)",
                                  labels=["state"])  # fmt: skip
        for state in ("loading", "loaded", "failed"):
            model.add_metric([state], 1.0 if status.get("model_state") == state else 0.0)
        yield model
        yield _gauge(
            "bark_model_load_seconds", "How long the model took to load", status.get("load_seconds") or 0
        )
        paths = GaugeMetricFamily("bark_decode_path", "The decode path each stage runs (self-check's rung)",
                                  labels=["stage", "path"])  # fmt: skip
        for stage, path in (status.get("decode") or {}).items():
            paths.add_metric([str(stage), str(path)], 1.0)
        yield paths
        for name, key, text in (
            ("bark_cache_hits_total", "cache_hits", "Sentences replayed from the cache"),
            ("bark_cache_misses_total", "cache_misses", "Sentences not in the cache"),
        ):
            yield _counter_like(name, text, status.get(key, 0))
        yield _gauge("bark_cache_bytes", "Bytes the sentence cache holds", status.get("cache_bytes", 0))
        yield _gauge("bark_connections_open", "Connections open now", status.get("connections_open", 0))
        voices = GaugeMetricFamily(
            "bark_custom_voices", "Custom voices listed, and files skipped", labels=["state"]
        )
        voices.add_metric(["listed"], status.get("custom_voices", 0))
        voices.add_metric(["skipped"], status.get("custom_voices_skipped", 0))
        yield voices
        if "gpu_memory_mib" in status:
            gpu = GaugeMetricFamily("bark_gpu_memory_bytes", "CUDA memory allocated, now and at its peak",
                                    labels=["kind"])  # fmt: skip
            gpu.add_metric(["in_use"], status["gpu_memory_mib"] * 2**20)
            gpu.add_metric(["peak"], status.get("gpu_peak_mib", 0) * 2**20)
            yield gpu


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter_like(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name.removesuffix("_total"), text, value=value)


def serve_metrics(port: int, host: str, status: Callable[[], dict[str, Any]]) -> None:
    """The endpoint on ``host:port`` (its own thread), with the state read from ``status``."""
    REGISTRY.register(StateCollector(status))
    start_http_server(port, addr=host, registry=REGISTRY)
    _LOGGER.info("Prometheus metrics on http://%s:%d/metrics", host or "0.0.0.0", port)
