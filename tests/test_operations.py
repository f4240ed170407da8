"""Operating the server: Prometheus metrics scraped from a running server while it works, and
the client's own address through the PROXY protocol (v1, v2; trusted or not; cut short or slow)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import struct
import time
import urllib.request

import pytest
from helpers import SEMANTIC_TOKENS, TIMEOUT, free_port, read_until
from wyoming.client import AsyncClient
from wyoming.event import async_read_event, async_write_event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_bark import metrics
from wyoming_bark.cli import parse_args
from wyoming_bark.proxy import HEADER_TIMEOUT_S

SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """The endpoint's samples: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            samples[(match[1], labels)] = float(match[3])
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metered(server_factory, tiny_model):
    port = free_port()
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", str(SEMANTIC_TOKENS),
                            "--metrics-port", str(port), "--max-connections-per-address", "4")  # fmt: skip
    return server, port


def test_metrics_are_off_by_default(bark_server):
    assert parse_args([]).metrics_port is None
    assert "Prometheus metrics on" not in bark_server.log_text()


async def _oneshot(uri: str, text: str, voice: str | None = None):
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(
            Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event()
        )
        return await read_until(client, "audio-stop")


async def _streamed(uri: str, *chunks: str):
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(SynthesizeStart().event())
        for chunk in chunks:
            await client.write_event(SynthesizeChunk(text=chunk).event())
        await client.write_event(SynthesizeStop().event())
        return await read_until(client, "synthesize-stopped")


async def test_the_counters_move_by_exactly_the_requests_made(metered):
    server, port = metered
    before = scrape(port)
    scrapes = []

    async def scrape_meanwhile():  # answered while sentences are made: never held up by them
        for _ in range(5):
            began = time.monotonic()
            scrapes.append((await asyncio.to_thread(scrape, port), time.monotonic() - began))
            await asyncio.sleep(0.2)

    await asyncio.gather(
        scrape_meanwhile(),
        *(_oneshot(server.uri, f"Request {n}.") for n in range(2)),
        _streamed(server.uri, "Streamed ", "text."),
        _oneshot(server.uri, 'An \u202evoice} name="x" that does not exist.', voice='evil"} 1\nbark_x{a="b'),
    )  # four at once: the address's cap here
    await _oneshot(server.uri, "Request 2.")
    too_long = await _oneshot(server.uri, "x" * 20_000)
    assert too_long.error() is not None
    after = scrape(port)
    moved = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert moved[("bark_requests_total", frozenset({("kind", "oneshot"), ("outcome", "ok")}))] == 4, {
        k: v for k, v in moved.items() if v and "requests" in k[0]
    }
    assert moved[("bark_requests_total", frozenset({("kind", "streaming"), ("outcome", "ok")}))] == 1
    assert moved[("bark_requests_total", frozenset({("kind", "oneshot"), ("outcome", "text-too-long")}))] == 1
    assert sum(v for (name, _), v in moved.items() if name == "bark_requests_total") == 6
    assert moved[("bark_first_audio_seconds_count", frozenset({("kind", "oneshot")}))] == 4
    assert moved[("bark_first_audio_seconds_count", frozenset({("kind", "streaming")}))] == 1
    assert moved[("bark_sentence_generation_seconds_count", frozenset())] >= 5
    assert moved[("bark_audio_seconds_total", frozenset())] > 0
    assert value(after, "bark_model_state", state="loaded") == 1
    assert value(after, "bark_decode_step_seconds_count", gpt="semantic", kind="step") > 0
    assert all(seconds < 5 for _, seconds in scrapes), [s for _, s in scrapes]
    # Bounded labels: whatever a client sends, every label value comes from a fixed set.
    allowed = {
        "kind": {*metrics.KINDS, "step", "prefill"}, "outcome": set(metrics.OUTCOMES), "gpt": set(metrics.GPTS),
        "reason": {*metrics.REFUSALS, *metrics.PROXY_REJECTIONS}, "state": {"running", "waiting", "loading",
        "loaded", "failed", "listed", "skipped"}, "priority": {"now", "ahead"}, "le": None, "stage": None,
        "path": None,
    }  # fmt: skip
    for name, labels in after:
        for key, label in labels:
            if name.startswith("bark_"):
                assert key in allowed, (name, key)
                assert allowed[key] is None or label in allowed[key], (name, key, label)
    assert not [name for name, _ in after if name.startswith("bark_x")]


async def test_refusals_are_counted_by_reason(metered):
    server, port = metered
    before = value(scrape(port), "bark_connections_refused_total", reason="per_address")
    host, port_ = server.uri.removeprefix("tcp://").rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port_)) for _ in range(4)]
    try:
        for _, writer in held:  # each one admitted (a describe answered)
            await async_write_event(Describe().event(), writer)
        for reader, _ in held:
            assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
        reader, writer = await asyncio.open_connection(host, int(port_))
        refused = await asyncio.wait_for(async_read_event(reader), TIMEOUT)
        assert refused.type == "error" and refused.data["code"] == "busy"
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
    assert value(scrape(port), "bark_connections_refused_total", reason="per_address") == before + 1


def _v1(source: str) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {'::1' if ':' in source else '127.0.0.1'} 40000 10200\r\n".encode()


def _v2(source: str) -> bytes:
    address = ipaddress.ip_address(source)
    family = 0x11 if address.version == 4 else 0x21
    destination = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    body = address.packed + destination.packed + struct.pack("!HH", 40000, 10200)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


PROXY = "127.0.0.2"  # the balancer's address in these tests (the test helpers connect from 127.0.0.1)


async def _open(
    uri: str, header: bytes, source: str = PROXY
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    writer.write(header)
    await async_write_event(Describe().event(), writer)
    return reader, writer


@pytest.fixture(scope="module")
def behind_proxy(server_factory, tiny_model):
    port = free_port()
    server = server_factory("--model", str(tiny_model), "--proxy-protocol", "--trusted-proxies", PROXY,
                            "--max-connections-per-address", "2", "--metrics-port", str(port))  # fmt: skip
    return server, port


@pytest.mark.parametrize("header", [_v1, _v2], ids=["v1", "v2"])
async def test_the_cap_applies_to_the_address_the_proxy_carries(behind_proxy, header):
    server, _ = behind_proxy
    first = "192.0.2.1" if header is _v1 else "2001:db8::1"
    held = [await _open(server.uri, header(first)) for _ in range(2)]
    try:
        for reader, _ in held:
            assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
        reader, writer = await _open(server.uri, header(first))  # a third from the same client
        refused = await asyncio.wait_for(async_read_event(reader), TIMEOUT)
        assert refused.type == "error" and "from this address" in refused.data["text"]
        writer.close()
        reader, writer = await _open(server.uri, header("198.51.100.7"))  # another client: in
        assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
        writer.close()
    finally:
        for _, writer in held:
            writer.close()


async def test_bad_and_slow_headers_are_closed_and_the_server_serves_on(behind_proxy):
    server, port = behind_proxy
    before = scrape(port)
    for header in (
        b"PROXY TCP4 192.0.2.1\r\n",
        b"PROXY is not how it goes\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c12",
    ):
        host, port_ = server.uri.removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port_), local_addr=(PROXY, 0))
        writer.write(header)
        writer.write_eof()  # cut short
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed, nothing said
        writer.close()
    began = time.monotonic()
    host, port_ = server.uri.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port_), local_addr=(PROXY, 0))
    writer.write(b"PROXY TCP4 192.0.")  # and then nothing: slowloris
    assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 5) == b""
    assert HEADER_TIMEOUT_S - 0.5 < time.monotonic() - began < HEADER_TIMEOUT_S + 5
    writer.close()
    reader, writer = await _open(server.uri, _v1("192.0.2.50"))
    assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
    writer.close()
    reader, writer = await _open(server.uri, b"")  # no header from the proxy's host: served as itself
    assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
    writer.close()
    after = scrape(port)
    assert value(after, "bark_proxy_headers_rejected_total", reason="malformed") == value(
        before, "bark_proxy_headers_rejected_total", reason="malformed") + 3  # fmt: skip
    assert value(after, "bark_proxy_headers_rejected_total", reason="timeout") == value(
        before, "bark_proxy_headers_rejected_total", reason="timeout") + 1  # fmt: skip
    log = server.log_text()
    assert log.count("Connection closed: a bad PROXY header") >= 3 and "Traceback" not in log


async def test_an_untrusted_peer_is_served_as_it_connects(server_factory, tiny_model):
    server = server_factory(
        "--model", str(tiny_model), "--proxy-protocol", "--trusted-proxies", "192.0.2.0/24"
    )
    reader, writer = await _open(server.uri, b"", source="127.0.0.1")  # not trusted here: no header needed
    assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
    writer.close()
    reader, writer = await _open(
        server.uri, _v1("203.0.113.9"), source="127.0.0.1"
    )  # its header: not believed
    answer = await asyncio.wait_for(async_read_event(reader), TIMEOUT)
    assert answer.type == "error" and answer.data["code"] == "bad-event"
    writer.close()
