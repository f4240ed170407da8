"""Ordinary faults that must not stop the server speaking: a full or read-only cache disk, odd
cache entries, deeply nested JSON, odd voice files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_stream, describe, describe_latencies, eventually, synthesize
from wyoming.event import async_read_event
from wyoming.info import Info

from wyoming_bark.cache import AudioCache, Claim, SingleFlight
from wyoming_bark.errors import for_client
from wyoming_bark.voices import builtin_voices

pytestmark = pytest.mark.slow  # waits, builds or soaks: left out of the quick loop


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 96 KiB file system (tmpfs): room for about four sentences of the tiny model."""
    point = tmp_path / "disk"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


async def test_a_full_cache_disk_never_fails_a_sentence(server_factory, tiny_model, small_disk):
    server = server_factory(
        "--model", str(tiny_model), "--max-semantic-tokens", "20", "--cache", "--data-dir", str(small_disk)
    )
    for i in range(8):  # the disk is full after about four
        assert_stream(await synthesize(server.uri, f"Sentence number {i} is here."), sentences=1)
    assert not list((small_disk / "cache").glob("*.tmp")), "no partial files left to fill the disk"
    assert server.log_text().count("Sentence cache: cannot store an entry") == 1, "logged once"
    assert_stream(await synthesize(server.uri, "Sentence number 0 is here."), sentences=1)


async def test_a_read_only_cache_disk_still_serves_and_replays(server_factory, tiny_model, small_disk):
    server = server_factory(
        "--model", str(tiny_model), "--max-semantic-tokens", "20", "--cache", "--data-dir", str(small_disk)
    )
    first = await synthesize(server.uri, "The washing machine is done.")
    remount_read_only(small_disk)
    again = await synthesize(server.uri, "The washing machine is done.")
    assert_stream(again, sentences=1)
    assert again.audio == first.audio, "replayed from the read-only cache"
    assert_stream(await synthesize(server.uri, "Something new to say."), sentences=1)


def test_odd_entries_are_regenerated_and_leftovers_cleaned(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "old.123.tmp").write_bytes(b"half a file")
    cache = AudioCache(folder, 1 << 20)
    assert not list(folder.glob("*.tmp")), "partial files of an earlier run are removed"
    (folder / "key.pcm").mkdir()  # a directory where an entry should be
    assert cache.get("key") is None and cache.corrupt == 1
    cache.put("key", b"\x01\x00" * 100)
    assert cache.get("key") == b"\x01\x00" * 100, "the entry is written again and read back"


async def test_one_sentence_is_made_once_however_many_ask_and_a_failed_maker_hands_it_on(tmp_path):
    """Single flight: the first miss claims the sentence, the others wait for it and count as
    hits; a claim dropped (the maker failed or was cancelled) passes the work to one waiter."""
    flight = SingleFlight(AudioCache(tmp_path / "cache", 1 << 20))
    first = await flight.get_or_claim("key")
    assert isinstance(first, Claim)
    waiting = [asyncio.create_task(flight.get_or_claim("key")) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting), "they wait for the one being made"
    first.drop()
    await eventually(lambda: any(task.done() for task in waiting))
    await asyncio.sleep(0.05)
    done = [task for task in waiting if task.done()]
    assert len(done) == 1 and isinstance(done[0].result(), Claim), "one waiter makes it now"
    await done[0].result().keep(b"\x01\x00" * 10)
    rest = [await task for task in waiting if task is not done[0]]
    assert rest == [b"\x01\x00" * 10] * 2, "the others get what it made"
    assert (await flight.get_or_claim("key")) == b"\x01\x00" * 10, "kept on disk too"
    assert flight.cache.hits == 3 and flight.cache.misses == 2, "two made it: two misses"
    assert not flight.making, "nothing is left in flight"


@pytest.mark.parametrize("where", ["header", "data"])
async def test_deeply_nested_json_is_a_bad_event(bark_server, where):
    nested = "[" * 5000 + "]" * 5000
    port = int(bark_server.uri.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if where == "header":
        line = b'{"type": "synthesize", "data": {"text": "x", "deep": ' + nested.encode() + b"}}\n"
        writer.write(line)
    else:
        data = ('{"text": "x", "deep": ' + nested + "}").encode()
        writer.write(json.dumps({"type": "synthesize", "data_length": len(data)}).encode() + b"\n" + data)
    await writer.drain()
    event = await asyncio.wait_for(async_read_event(reader), 10)
    writer.close()
    assert event is not None and event.type == "error" and event.data["code"] == "bad-event"
    assert "nested too deeply" in event.data["text"]
    assert_stream(await synthesize(bark_server.uri, "Still here."), sentences=1)


@pytest.fixture
def odd_voices(tmp_path, real_prompts) -> Path:
    """A voices folder with every kind of odd file beside one good voice."""
    folder = tmp_path / "voices"
    folder.mkdir()
    np.savez(folder / "good.npz", **real_prompts["v2/en_speaker_8"])
    (folder / os.fsdecode(b"caf\xe9-latin1.npz")).write_bytes((folder / "good.npz").read_bytes())
    os.mkfifo(folder / "fifo.npz")
    np.savez(folder / "en_speaker_3.npz", **real_prompts["v2/en_speaker_8"])  # a built-in's short name
    np.save(folder / "plain.npy", np.arange(10))
    (folder / "plain.npy").rename(folder / "plain.npz")
    big = np.zeros((8, 1_000_000), dtype=np.int64)  # 64 MB of arrays, a few hundred KB on disk
    np.savez_compressed(folder / "bomb.npz", semantic_prompt=big[0], coarse_prompt=big[:2], fine_prompt=big)
    return folder


async def test_odd_voice_files_never_stop_describe(server_factory, tiny_model, odd_voices):
    server = server_factory(
        "--model", str(tiny_model), "--max-semantic-tokens", "20", "--voices-dir", str(odd_voices)
    )
    for _ in range(3):
        started = time.monotonic()
        info = Info.from_event(await describe(server.uri))
        assert time.monotonic() - started < 2
    custom = {voice.name for voice in info.tts[0].voices} - {v.name for v in builtin_voices()}
    assert custom == {"good", "plain", "bomb"}, "no FIFO, no undecodable name, no shadow of a built-in"
    log = server.log_text()
    assert log.count("en_speaker_3.npz' ignored") == 1 and log.count("latin1.npz' ignored") == 1, "said once"
    assert_stream(await synthesize(server.uri, "Good voice.", "good"), sentences=1)
    for name, reason in (("plain", "not a readable .npz"), ("bomb", "expands beyond")):
        result = await synthesize(server.uri, "Bad voice.", name)
        error = result.error()
        assert error is not None and error.data["code"] == "voice-error", result.types
        assert f"{name}.npz" in error.data["text"] and reason in error.data["text"]
        assert str(odd_voices) not in error.data["text"], "no server paths to clients"
    assert "Traceback" not in server.log_text()


async def test_client_strings_are_quoted_and_truncated(bark_server):
    """A voice name with a newline cannot forge a log line, and a 100 kB one is not logged whole
    (an unknown voice is logged, and spoken with the default)."""
    name = "evil\n2026-01-01 00:00:00 ERROR forged: line" + "x" * 100_000
    result = await synthesize(bark_server.uri, "Hello.", name)
    assert result.error() is None and result.samples > 0
    log = bark_server.log_text()
    assert "Unknown voice 'evil\\n2026" in log
    assert "\nforged" not in log and "ERROR forged" not in log.replace(
        "\\n2026-01-01 00:00:00 ERROR forged", ""
    )
    assert "x" * 1000 not in log


async def test_soak_with_hostile_clients_beside_home_assistant_traffic(
    server_factory, tiny_model, small_disk
):
    """Idle sockets, a slow header and a full cache disk beside normal traffic: every normal request
    is answered and describe stays fast (a margin relative to an unloaded describe in this run)."""
    server = server_factory(
        "--model", str(tiny_model), "--max-semantic-tokens", "20", "--cache", "--data-dir", str(small_disk),
        "--idle-timeout", "5", "--max-connections-per-address", "64",  # every client is on loopback
    )  # fmt: skip
    port = int(server.uri.rsplit(":", 1)[1])
    assert_stream(await synthesize(server.uri, "Warm up."), sentences=1)  # the model loads first
    unloaded = []
    for _ in range(10):
        started = time.monotonic()
        await describe(server.uri)
        unloaded.append(time.monotonic() - started)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
    _slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
    done = asyncio.Event()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b'{"type": "describe"' * 10:
                slow.write(bytes([byte]))
                await slow.drain()
                await asyncio.sleep(0.5)

    trickler = asyncio.create_task(trickle())
    prober = asyncio.create_task(describe_latencies(server.uri, done.is_set))
    for i in range(12):  # fills the 96 KiB cache disk after a few sentences
        assert_stream(await synthesize(server.uri, f"Announcement number {i}."), sentences=1)
    done.set()
    latencies = sorted(await prober)
    trickler.cancel()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    assert p99 < max(0.1, 40 * statistics.median(unloaded)), (
        f"describe p99 {p99 * 1000:.0f} ms, median {statistics.median(latencies) * 1000:.0f} ms"
    )
    for _, writer in [*idle, (None, slow)]:
        writer.close()


def test_messages_for_clients_hold_no_server_paths():
    assert for_client("Model directory /srv/models/bark-small has no config.json") == (
        "Model directory .../bark-small has no config.json"
    )
    assert for_client("not in the cache (/data/models) yet") == "not in the cache (.../models) yet"
    kept = "see https://github.com/suno-ai/bark, tcp://127.0.0.1:10200, suno/bark-small"
    assert for_client(kept) == kept, "URLs, addresses and hub ids are not paths"


def test_a_file_where_the_cache_folder_should_be_is_no_cache(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_bytes(b"not a folder")
    cache = AudioCache(blocker, 1 << 20)  # no traceback at start
    cache.put("key", b"\x00\x01" * 10)
    assert cache.get("key") is None and cache.stats()["cache_files"] == 0
    assert "Sentence cache: cannot" in caplog.text
