"""Connections a hostile or broken client holds: idle, slow, too many, or half-sent and large."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import time

import pytest
from helpers import TIMEOUT, assert_stream, describe, free_port, header, read_until, rss_mib, synthesize
from wyoming.client import AsyncClient
from wyoming.event import async_read_event
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

pytestmark = pytest.mark.slow  # waits, builds or soaks: left out of the quick loop


def port_of(server) -> int:
    return int(server.uri.rsplit(":", 1)[1])


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> list:
    """Events until the server closes the connection; fails if it is still open after ``seconds``."""
    events = []
    async with asyncio.timeout(seconds):
        while (event := await async_read_event(reader)) is not None:
            events.append(event)
    return events


async def test_idle_connections_are_closed_but_open_requests_wait(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", "20", "--idle-timeout", "2")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    started = time.monotonic()
    assert await closed_within(reader, 10) == []
    assert 1.5 < time.monotonic() - started < 10, "closed by the idle timeout, quietly"
    writer.close()
    # A streaming request whose text pauses (an LLM calling a tool) within the idle timeout goes
    # on; one that sends nothing for longer ends (test_half_open_streams_end_after_the_idle_timeout).
    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await asyncio.sleep(1)
        await client.write_event(SynthesizeChunk("Still here after a pause.").event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped")
    assert result.types[-2:] == ["audio-stop", "synthesize-stopped"]


async def test_a_slow_event_is_refused(bark_server):
    """An event sent a byte a second is cut off after the event timeout (10 s), with a reason."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(bark_server))

    async def trickle() -> None:
        for byte in b'{"type": "describe", "data": {"padding": "' + b"x" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(1)

    sender = asyncio.create_task(trickle())
    events = await closed_within(reader, 20)
    sender.cancel()
    writer.close()
    assert [e.data["code"] for e in events] == ["bad-event"] and "not complete within" in events[0].data[
        "text"
    ]


async def test_connections_beyond_the_cap_are_refused(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--max-connections", "3")
    held = [await asyncio.open_connection("127.0.0.1", port_of(server)) for _ in range(3)]
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    events = await closed_within(reader, 10)
    assert [e.data["code"] for e in events] == ["busy"] and "--max-connections" in events[0].data["text"]
    writer.close()
    held.pop()[1].close()
    await asyncio.sleep(0.5)
    assert (await describe(server.uri)).type == "info", "served again once a place is free"
    for _, held_writer in held:
        held_writer.close()


async def test_half_sent_large_events_are_bounded_in_memory(server_factory, tiny_model):
    """100 connections each claiming 1 MiB + 1 MiB and sending most of it: bounded, others served."""
    server = server_factory(
        "--model", str(tiny_model), "--max-semantic-tokens", "20", "--max-connections", "200",
        "--max-connections-per-address", "200",
    )  # fmt: skip
    assert_stream(await synthesize(server.uri, "Warm up."), sentences=1)
    before = rss_mib(server.process.pid)
    header = json.dumps({"type": "synthesize", "data_length": 1 << 20, "payload_length": 1 << 20}).encode()
    connections = []
    for _ in range(100):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(header + b"\n" + b" " * ((1 << 20) - 1))
        connections.append((reader, writer))
    # Beyond the server's budget for large events, connections are refused (busy) and reset.
    await asyncio.gather(*(writer.drain() for _, writer in connections), return_exceptions=True)
    await asyncio.sleep(2)
    grown = rss_mib(server.process.pid) - before
    assert grown < 64, f"{grown:.0f} MiB for half-sent events"
    assert_stream(await synthesize(server.uri, "Others are fine."), sentences=1)
    for _, writer in connections:
        writer.close()


async def test_at_the_open_file_limit_the_log_stays_short_and_describe_recovers(tiny_model, tmp_path):
    """With the process out of file descriptors, asyncio's accept() errors are logged once per
    30 s, and once idle connections time out a describe is answered again."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wyoming_bark", "--uri", f"tcp://127.0.0.1:{port}", "--device", "cpu",
            "--model", str(tiny_model), "--data-dir", str(tmp_path / "data"),
            "--max-connections", "1000", "--max-connections-per-address", "1000", "--idle-timeout", "3",
            stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)),
        )  # fmt: skip
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                await describe(f"tcp://127.0.0.1:{port}")
                break
            await asyncio.sleep(0.1)
        held = []
        for _ in range(200):  # more than the server can accept
            with contextlib.suppress(OSError):
                held.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(4)
        for _, writer in held:
            writer.close()
        started = time.monotonic()
        while True:
            try:
                await describe(f"tcp://127.0.0.1:{port}")
                break
            except (OSError, asyncio.TimeoutError):
                assert time.monotonic() - started < 30, "describe is answered again"
                await asyncio.sleep(0.5)
        text = log.read_text(errors="replace")
        assert text.count("out of system resource") <= 2, text.count("out of system resource")
    finally:
        process.terminate()
        await process.wait()


async def test_one_address_cannot_take_every_place(server_factory, tiny_model):
    """Silent sockets from one address fill its own share only: another address is served."""
    server = server_factory("--model", str(tiny_model), "--max-connections-per-address", "4")
    held = [await asyncio.open_connection("127.0.0.1", port_of(server)) for _ in range(4)]
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    events = await closed_within(reader, 10)
    assert [e.data["code"] for e in events] == ["busy"]
    assert "--max-connections-per-address" in events[0].data["text"]
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server), local_addr=("127.0.0.2", 0))
    writer.write(b'{"type": "describe"}\n')
    await writer.drain()
    assert (await asyncio.wait_for(async_read_event(reader), TIMEOUT)).type == "info"
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_half_open_streams_end_after_the_idle_timeout(server_factory, tiny_model):
    """synthesize-start and then nothing: each such stream ends with a timeout error and the
    connection closes, so they cannot hold places for ever (describe keeps being answered)."""
    server = server_factory(
        "--model", str(tiny_model), "--idle-timeout", "2", "--max-connections", "10"
    )  # 8 usable by one address
    streams = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(header(type="synthesize-start"))
        await writer.drain()
        streams.append((reader, writer))
    started = time.monotonic()
    for reader, _ in streams:
        events = await closed_within(reader, 20)
        assert [e.data.get("code") for e in events] == ["timeout"], [e.type for e in events]
        assert "--idle-timeout" in events[0].data["text"]
    assert time.monotonic() - started < 20
    assert (await describe(server.uri)).type == "info", "their places are free again"
    for _, writer in streams:
        writer.close()
