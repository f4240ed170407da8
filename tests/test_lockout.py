"""Nobody locks others out: only work keeps a connection, addresses cannot fill every slot,
a refusal is a clear busy, and a client that closes its side still gets its answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time

import pytest
from helpers import SEMANTIC_TOKENS, assert_stream, describe, status, synthesize
from wyoming.client import AsyncClient
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart

from wyoming_bark.connections import ConnectionLimits, client_key


def port_of(server) -> int:
    return int(server.uri.rsplit(":", 1)[1])


async def connect_from(server, address: str):
    return await asyncio.open_connection("127.0.0.1", port_of(server), local_addr=(address, 0))


async def closed_after(reader: asyncio.StreamReader, seconds: float) -> list[Event]:
    """Events until the server closes the connection; fails if still open after ``seconds``."""
    events = []
    async with asyncio.timeout(seconds):
        while (event := await async_read_event(reader)) is not None:
            events.append(event)
    return events


def test_addresses_are_counted_per_host():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key(None) is None


async def test_the_last_slots_are_kept_for_other_clients():
    """The policy alone: 4 addresses x 4 fill 12 of 16 slots; a new address, and one holding a
    single connection (Home Assistant's describe), still get in."""
    limits = ConnectionLimits(max_connections=16, max_per_address=4, idle_timeout=60)
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"):
        for _ in range(4):
            if limits.refusal(address) is None:
                assert await limits.admit(address) is None
    assert limits.connections == 14 and limits.by_address["10.0.0.5"] == 2
    assert "kept for other clients" in limits.refusal("10.0.0.5")
    assert "--max-connections-per-address" in limits.refusal("10.0.0.2")
    assert await limits.admit("10.0.0.9") is None, "a new address"
    assert await limits.admit("10.0.0.9") is None, "its second connection"
    assert "--max-connections)" in limits.refusal("10.0.0.8"), "full"
    limits.release("10.0.0.9")
    assert limits.by_address["10.0.0.9"] == 1 and limits.connections == 15


async def test_a_newcomer_waits_a_moment_for_a_slot_just_freed():
    """A connection that closed is counted until its task runs: the next one waits for it."""
    limits = ConnectionLimits(max_connections=1, max_per_address=1, idle_timeout=60)
    assert await limits.admit("10.0.0.2") is None
    asyncio.get_running_loop().call_later(0.2, limits.release, "10.0.0.2")
    assert await limits.admit("10.0.0.3") is None
    assert "--max-connections" in await limits.admit("10.0.0.4"), "refused after the wait"


@pytest.mark.slow
@pytest.mark.parametrize("keepalive", ["ping", "blank chunk", "unknown event"])
async def test_only_work_keeps_a_connection_open(server_factory, tiny_model, keepalive):
    server = server_factory("--model", str(tiny_model), "--idle-timeout", "2")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    if keepalive == "blank chunk":
        await async_write_event(SynthesizeStart().event(), writer)

    async def keep_alive() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                event = {
                    "ping": Ping().event(),
                    "blank chunk": SynthesizeChunk(" ").event(),
                    "unknown event": Event("keep-me"),
                }[keepalive]
                await async_write_event(event, writer)
                await asyncio.sleep(0.3)

    sender = asyncio.create_task(keep_alive())
    started = time.monotonic()
    try:
        await closed_after(reader, 8)
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - started >= 1.5, "not before the idle timeout"


@pytest.mark.slow
async def test_many_addresses_cannot_lock_out_a_newcomer(server_factory, tiny_model):
    """127.0.0.2-5 hold every slot they can; a client from a new address is still served, and
    so is a second connection of a client that holds one."""
    server = server_factory(
        "--model", str(tiny_model), "--max-connections", "16", "--max-connections-per-address", "4"
    )
    held = []
    for n in range(2, 6):
        for _ in range(6):
            held.append(await connect_from(server, f"127.0.0.{n}"))
    await asyncio.sleep(2)  # the refused ones are told and closed (after the admission wait)
    try:
        victim = await connect_from(server, "127.0.0.9")
        await async_write_event(Event("describe"), victim[1])
        assert (await asyncio.wait_for(async_read_event(victim[0]), 10)).type == "info"
        second = await connect_from(server, "127.0.0.9")
        await async_write_event(Event("describe"), second[1])
        assert (await asyncio.wait_for(async_read_event(second[0]), 10)).type == "info"
        for connection in (victim, second):
            connection[1].close()
    finally:
        for _, writer in held:
            writer.close()


@pytest.mark.slow
async def test_a_refusal_is_busy_and_the_health_check_says_so(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--max-connections", "1")
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    await asyncio.sleep(0.5)
    try:
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wyoming_bark.health", "--uri", server.uri],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        writer.close()
    assert check.stdout.startswith("busy: refuses new connections now: Too many connections"), check.stdout
    assert check.returncode == 0


@pytest.mark.slow
async def test_a_client_that_closes_its_side_still_gets_its_answer(bark_server):
    """``nc -N``: synthesize, then shutdown(SHUT_WR); and a streaming request left open."""
    for events in (
        [Synthesize("Half closed.").event()],
        [SynthesizeStart().event(), SynthesizeChunk("Never stopped.").event()],
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(bark_server))
        for event in events:
            await async_write_event(event, writer)
        writer.write_eof()
        types = [event.type for event in await closed_after(reader, 60)]
        writer.close()
        assert "audio-chunk" in types and "audio-stop" in types, types


@pytest.mark.slow
async def test_rapid_connect_and_close_does_not_refuse_the_next_client(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", str(SEMANTIC_TOKENS))

    def churn() -> None:
        for _ in range(2000):
            with socket.create_connection(("127.0.0.1", port_of(server))):
                pass

    await asyncio.to_thread(churn)
    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(Event("describe"))
        first = await asyncio.wait_for(client.read_event(), 10)
    assert first.type == "info", first
    assert (await describe(server.uri)).type == "info"
    assert_stream(await synthesize(server.uri, "Still here."), sentences=1)


@pytest.mark.slow
async def test_status_threads_are_the_engines(server_factory, tiny_model):
    """``threads`` in bark-status is torch's (--threads), not Python's thread count."""
    server = server_factory(
        "--model", str(tiny_model), "--threads", "1", "--max-semantic-tokens", str(SEMANTIC_TOKENS)
    )
    assert_stream(await synthesize(server.uri, "Load it."), sentences=1)
    state = await status(server.uri)
    assert state["threads"] == 1 and state["python_threads"] > 1, state
