"""What a new user meets first, through the real process: one clear line, an exit code, no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TIMEOUT, assert_stream, eventually, status, synthesize
from wyoming.event import async_read_event

from wyoming_bark.hub import progress_lines


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wyoming_bark", "--device", "cpu", "--data-dir", str(cwd / "data"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
    )


def test_a_port_in_use_is_one_line_and_a_failure(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        uri = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        done = _run("--uri", uri, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Serving" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 3, done.stderr
    assert f"cannot listen on {uri}" in lines[-1] and "--uri" in lines[-1]


async def test_a_normal_stop_after_the_load_says_nothing_of_an_unfinished_load(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--preload")

    async def loaded() -> bool:
        return "Loaded" in server.log_text()

    await eventually(loaded, what="the model loaded")
    server.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.process.wait, TIMEOUT) == 0
    log = server.log_text()
    assert "Stopped" in log
    assert "Leaving the model load unfinished" not in log


def _one_clear_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 3, done.stderr
    assert all(text in lines[-1] for text in expected), done.stderr


def test_a_language_s_default_must_speak_it(tmp_path, tiny_model):
    done = _run("--model", str(tiny_model), "--language-voices", "de=v2/fr_speaker_1", cwd=tmp_path)
    _one_clear_line(done, "v2/fr_speaker_1 is not a de voice")


def test_odd_config_files_and_environment_values_stop_with_one_line(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    duplicate = tmp_path / "duplicate.json"
    duplicate.write_text('{"tts": {"bark": {"voice": "a", "voice": "b"}}}', encoding="utf-8")
    smuggled = tmp_path / "smuggled.json"
    smuggled.write_text(
        json.dumps({"tts": {"bark": {"language_voices": {"de": "v2/de_speaker_1,fr=v2/de_speaker_2"}}}}),
        encoding="utf-8",
    )
    huge_seed = tmp_path / "huge_seed.json"
    huge_seed.write_text(
        json.dumps({"tts": {"bark": {"voice_seeds": {"announcer": 2**64}}}}), encoding="utf-8"
    )
    for path, expected in (
        (huge_seed, "each seed must be from 0 to 9223372036854775807"),
        ("/dev/zero", "is not a regular file"),
        (fifo, "is not a regular file"),
        (duplicate, "key 'voice' appears twice"),
        (smuggled, "no ',' or '='"),
    ):
        _one_clear_line(_run("--config", str(path), cwd=tmp_path), "wyoming-bark: error:", expected)
    monkeypatch.setenv("BARK_PRELOAD", "maybe")
    _one_clear_line(_run(cwd=tmp_path), "BARK_PRELOAD must be one of", "'maybe'")


def test_help_shows_each_default_once():
    done = subprocess.run(
        [sys.executable, "-m", "wyoming_bark", "--help"], capture_output=True, text=True, check=True
    )
    flags = " ".join(done.stdout.split()).split(" --")
    by_flag = {entry.split(" ", 1)[0]: entry for entry in flags}
    assert by_flag["voices-dir"].count("default") == 1
    assert by_flag["zeroconf-host"].count("default") == 1
    assert "(default: )" not in done.stdout
    assert "on the GPU" not in by_flag["max-batch"]
    assert "(default: v2/en_speaker_6)" in by_flag["voice"]


async def test_start_up_says_what_the_first_request_will_do(server_factory, tmp_path):
    """A hub model not yet downloaded, and a voices folder that does not exist, are mentioned."""
    server = server_factory("--model", "suno/bark-small", "--voices-dir", str(tmp_path / "no-such-folder"))

    async def said() -> bool:  # describe may be answered a moment before the start-up lines
        return "The first request downloads" in server.log_text()

    await eventually(said, what="the start-up lines")
    log = server.log_text()
    assert "The first request downloads suno/bark-small (about 1.7 GB)" in log
    assert f"No custom voices: {tmp_path / 'no-such-folder'} does not exist" in log


async def test_no_model_reachable_says_why_in_words(server_factory):
    server = server_factory("--model", "suno/bark-small")  # HF_HUB_OFFLINE=1 in the tests
    result = await synthesize(server.uri, "Hello.")
    error = result.error()
    assert error is not None
    assert "HF_HUB_OFFLINE is set" in error.data["text"] and "Error" not in error.data["text"]


async def test_status_shows_no_server_paths(bark_server, tiny_model):
    state = await status(bark_server.uri)
    assert str(tiny_model) not in state["model"] and state["model"].endswith(tiny_model.name)


async def test_a_ping_with_a_lone_surrogate_gets_its_pong(bark_server):
    """JSON can carry a lone surrogate (as an escape) that UTF-8 cannot: the pong echoes U+FFFD."""
    port = int(bark_server.uri.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"type": "ping", "data": {"text": "\\ud800 hi"}}\n')
    await writer.drain()
    pong = await asyncio.wait_for(async_read_event(reader), TIMEOUT)
    writer.close()
    assert pong.type == "pong" and pong.data["text"] == "\ufffd hi"


def test_a_download_without_a_terminal_logs_plain_progress_lines(tmp_path, caplog):
    """An add-on's log is no terminal: progress bars would arrive as one endless line."""
    from huggingface_hub.utils import are_progress_bars_disabled

    repo = tmp_path / "models--suno--bark-small"
    repo.mkdir()
    caplog.set_level(logging.INFO, logger="wyoming_bark.hub")
    with progress_lines("suno/bark-small", repo, every=0.05):
        assert are_progress_bars_disabled()
        for part in range(3):
            (repo / f"blob{part}.incomplete").write_bytes(b"x" * 2_000_000)
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Downloading")]
    assert lines and lines[-1] == "Downloading suno/bark-small: 6 MB so far (of about 1.7 GB)", lines
    assert not are_progress_bars_disabled(), "bars come back for a terminal"


def test_a_seed_for_a_voice_that_does_not_exist_is_a_typo(tmp_path, tiny_model):
    config = tmp_path / "seeds.json"
    config.write_text(json.dumps({"tts": {"bark": {"voice_seeds": {"v2/en_speakr_6": 1}}}}), encoding="utf-8")
    done = _run("--model", str(tiny_model), "--config", str(config), cwd=tmp_path)
    _one_clear_line(done, "voice_seeds", "Unknown voice 'v2/en_speakr_6'")


async def test_debug_says_what_arrived_and_no_rtf_for_silence(server_factory, tiny_model):
    """A sentence Bark ends at once has no real-time factor; debug shows the events received."""
    server = server_factory("--model", str(tiny_model), "--min-eos-p", "1e-9", "--debug")
    result = await synthesize(server.uri, "Stop.")
    assert result.error() is None
    log = server.log_text()
    assert "No audio (Bark ended the sentence at once)" in log and "RTF" not in log
    assert "Received 'synthesize'" in log


def test_setup_installs_the_cpu_torch_and_nothing_when_nothing_changed():
    """script/test pins torch; on a machine without an NVIDIA GPU the pinned version comes from
    the CPU index too (not PyPI's CUDA build), and a second call with the same inputs is a no-op."""
    root = Path(__file__).resolve().parent.parent
    setup = (root / "script/setup").read_text()
    assert 'torch_spec="torch==${TORCH_VERSION}"' in setup
    assert '--index-url "${cpu_index}" "${torch_spec}"' in setup
    env = {**os.environ, "TORCH_VERSION": "2.13.0"}
    for _ in range(2):  # the first may install (the project file changed); the second must not
        done = subprocess.run(
            ["script/setup", ".[test]"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
    assert done.stdout == "" and done.stderr == "", "nothing changed: nothing to do"


async def test_the_log_says_what_the_model_takes_and_what_speed_to_expect(server_factory, tiny_model):
    """On a small board the first thing to know: memory after the load, and the speed measured on
    the first sentence (work per second of speech; slower than real time says so)."""
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", "20")
    assert_stream(await synthesize(server.uri, "The first sentence."), sentences=1)
    log = server.log_text()
    assert re.search(r"Loaded .* in [\d.]+ s \(peak memory \d+ MiB\)", log), log
    assert re.search(r"First sentence: [\d.]+ s of speech in [\d.]+ s, [\d.]+ s of work per second", log), log
    assert re.search(r"Precision by stage, measured here in [\d.]+ s .*: semantic \w+ \(", log), log


@pytest.mark.parametrize(
    "module, argv, says",
    [
        ("wyoming_bark", ["--help"], "--max-batch"),
        ("wyoming_bark", ["--max-batch", "0"], "must be an integer from 1 to 64"),
        ("wyoming_bark.health", ["--help"], "usage"),
    ],
)
def test_help_a_bad_flag_and_the_health_check_do_not_import_torch(module, argv, says):
    """--help and a wrong flag answer at once, and Docker runs the health check every minute (on a
    small board too): none of them may load torch."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, *{argv!r}]\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert says in done.stdout + done.stderr
