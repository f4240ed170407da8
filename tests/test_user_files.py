"""Files from a folder others can write to (the voices folder): opened once, read through that
descriptor, bounded; what cannot load is not listed; names are shown as they read."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import tracemalloc
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import eventually

from wyoming_bark import prompts as prompts_module
from wyoming_bark.errors import UnknownVoice, VoiceError
from wyoming_bark.prompts import MAX_VOICE_FILE_BYTES, VoiceGone, load_npz
from wyoming_bark.voice_reader import VoiceReader
from wyoming_bark.voices import VoiceLibrary


def in_thread(function, timeout: float = 5.0):
    """``function()`` on a thread; fails the test if it does not return within ``timeout``."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("ok", function()))
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(("raised", err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"blocked for over {timeout} s"
    return outcome[0]


@pytest.fixture
def prompt_file(tmp_path, real_prompts) -> Path:
    path = tmp_path / "source" / "valid.npz"
    path.parent.mkdir()
    np.savez(path, **real_prompts["v2/en_speaker_3"])
    return path


def test_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe.npz")
    kind, result = in_thread(lambda: load_npz(tmp_path / "pipe.npz"))
    assert kind == "raised" and isinstance(result, VoiceError), result
    assert "not a regular file" in str(result)


def test_a_device_is_refused_not_read(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(tmp_path / "zero.npz", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero
    kind, result = in_thread(lambda: load_npz(tmp_path / "zero.npz"))
    assert kind == "raised" and "not a regular file" in str(result)


def test_a_symlink_is_refused(tmp_path, prompt_file):
    (tmp_path / "link.npz").symlink_to(prompt_file)
    with pytest.raises(VoiceError, match="symbolic link"):
        load_npz(tmp_path / "link.npz")


def test_a_file_swapped_while_it_is_read_never_blocks_nor_grows_memory(tmp_path, prompt_file):
    """The name is replaced every moment by a FIFO or a 2 GiB sparse file: each load ends at once
    with the prompt or a voice error, and memory stays bounded (one open, bounded reads)."""
    racy, spare = tmp_path / "racy.npz", tmp_path / "spare"
    stop = threading.Event()

    def swap() -> None:
        turn = 0
        while not stop.is_set():
            spare.unlink(missing_ok=True)
            if turn % 3 == 0:
                os.link(prompt_file, spare)
            elif turn % 3 == 1:
                os.mkfifo(spare)
            else:
                with open(spare, "wb") as sparse:
                    sparse.truncate(2 << 30)
            os.replace(spare, racy)
            turn += 1
            time.sleep(0.001)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    tracemalloc.start()
    outcomes = {"ok": 0, "raised": 0}
    try:
        for _ in range(150):
            kind, result = in_thread(lambda: load_npz(racy), timeout=5.0)
            if kind == "raised":
                assert isinstance(result, VoiceError), repr(result)
            outcomes[kind] += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stop.set()
        swapper.join()
    assert outcomes["ok"] and outcomes["raised"], outcomes
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while reading a swapped file"


def test_an_oversized_file_says_so_once(tmp_path):
    with open(tmp_path / "big.npz", "wb") as big:
        big.truncate(MAX_VOICE_FILE_BYTES + 1)
    with pytest.raises(VoiceError) as raised:
        load_npz(tmp_path / "big.npz")
    assert str(raised.value) == "Voice file big.npz is larger than 1 MiB"


def test_an_npy_renamed_npz_is_a_voice_error(tmp_path):
    np.save(tmp_path / "array.npy", np.arange(10))
    shutil.move(tmp_path / "array.npy", tmp_path / "array.npz")
    with pytest.raises(VoiceError, match="not a readable .npz"):
        load_npz(tmp_path / "array.npz")


def test_an_array_header_claiming_gigabytes_is_refused_before_it_is_read(tmp_path, real_prompts):
    """numpy allocates what an .npy header claims before reading its data."""
    path = tmp_path / "liar.npz"
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000,), }"
    header += " " * (117 - len(header)) + "\n"
    liar = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(80)
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in real_prompts["v2/en_speaker_1"].items():
            if key != "semantic_prompt":
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, value)
        archive.writestr("semantic_prompt.npy", liar)
    tracemalloc.start()
    try:
        with pytest.raises(VoiceError, match="does not match its data"):
            load_npz(path)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_only_files_that_can_load_are_listed(tmp_path, prompt_file):
    """Links (to a 3 GiB file, /proc/self/environ, /proc/self/mem), empty and oversized files
    are left out of describe; the good file is listed."""
    shutil.copy(prompt_file, tmp_path / "good.npz")
    with open(tmp_path / "huge", "wb") as huge:
        huge.truncate(3 << 30)
    (tmp_path / "huge.npz").symlink_to(tmp_path / "huge")
    (tmp_path / "environ.npz").symlink_to("/proc/self/environ")
    (tmp_path / "mem.npz").symlink_to("/proc/self/mem")
    (tmp_path / "empty.npz").touch()
    with open(tmp_path / "sparse.npz", "wb") as sparse:
        sparse.truncate(MAX_VOICE_FILE_BYTES + 1)
    library = VoiceLibrary(tmp_path)
    assert [voice.name for voice in library.custom_voices()] == ["good"]
    for name in ("huge", "environ", "mem", "empty", "sparse"):
        with pytest.raises(UnknownVoice):
            library.resolve(name)


def test_names_are_listed_as_they_read(tmp_path, prompt_file, caplog):
    """NFC and NFD spellings are one voice; names with invisible or text-direction characters
    are not listed."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    shutil.copy(prompt_file, tmp_path / f"{nfc}.npz")
    shutil.copy(prompt_file, tmp_path / f"{nfd}.npz")
    for hidden in ("evil\u202eman", "zero\u200bwidth", "line\u2028break", "\u200b"):
        shutil.copy(prompt_file, tmp_path / f"{hidden}.npz")
    library = VoiceLibrary(tmp_path)
    names = [voice.name for voice in library.custom_voices()]
    assert names == [nfc], names
    assert library.resolve(nfd).name == nfc, "a request may spell it either way"
    with pytest.raises(UnknownVoice):
        library.resolve("zero\u200bwidth")
    assert any("text-direction" in record.getMessage() for record in caplog.records)


def test_a_voice_removed_after_lookup_is_gone_not_broken(tmp_path, prompt_file):
    shutil.copy(prompt_file, tmp_path / "brief.npz")
    library = VoiceLibrary(tmp_path)
    voice = library.resolve("brief")
    (tmp_path / "brief.npz").unlink()
    with pytest.raises(VoiceGone):
        library.load(voice, tmp_path)


async def test_a_stuck_read_fails_its_own_request_within_the_deadline(tmp_path, prompt_file, monkeypatch):
    """A read that hangs (a stalled network share) ends its request at the deadline; it is
    counted as stuck, and other voices' reads go on."""
    shutil.copy(prompt_file, tmp_path / "stuck.npz")
    shutil.copy(prompt_file, tmp_path / "fine.npz")
    release = threading.Event()
    real_read = prompts_module.read_user_file

    def read(path, limit):
        if path.name == "stuck.npz":
            release.wait(30)
        return real_read(path, limit)

    monkeypatch.setattr(prompts_module, "read_user_file", read)
    library = VoiceLibrary(tmp_path)
    reader = VoiceReader(library, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(VoiceError, match="could not be read within 0.5 s"):
            await reader.prompt(library.resolve("stuck"), tmp_path)
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.1)
        assert reader.stuck() == 1
        prompt = await reader.prompt(library.resolve("fine"), tmp_path)
        assert prompt["fine_prompt"].shape[0] == 8
    finally:
        release.set()
        reader.close()


async def test_the_engine_speaks_a_voice_removed_after_lookup_with_the_default(
    tiny_model, tmp_path, prompt_file, caplog
):
    from test_contract import collect, make_engine

    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copy(prompt_file, voices / "brief.npz")
    engine = make_engine(tiny_model, tmp_path, seed=3, voices_dir=voices)
    try:
        voice = engine.resolve_voice("brief")
        (voices / "brief.npz").unlink()
        audio = await collect(engine.speak("Still spoken.", voice))
    finally:
        engine.close()
    assert len(audio) > 0
    assert any("Speaking with v2/en_speaker_6 instead" in r.getMessage() for r in caplog.records)


async def test_a_sentence_stuck_in_preparation_makes_the_engine_unhealthy(tiny_model, tmp_path, monkeypatch):
    from test_contract import make_engine

    from wyoming_bark import engine as engine_module

    monkeypatch.setattr(engine_module, "STUCK_PREPARATION_S", 0.3)
    engine = make_engine(tiny_model, tmp_path, seed=3)
    release = threading.Event()
    prepare = engine._prepare

    def stuck(*args):
        release.wait(30)
        return prepare(*args)

    monkeypatch.setattr(engine, "_prepare", stuck)
    try:
        assert (await engine.health_check()).healthy
        speaking = asyncio.ensure_future(engine.speak_sentence("Stuck.").__anext__())

        async def unhealthy() -> bool:  # once loaded and in preparation for 0.3 s
            return not (await engine.health_check()).healthy

        await eventually(unhealthy, what="the stuck preparation reported")
        verdict = await engine.health_check()
        assert "in preparation" in verdict.message, verdict
        release.set()
        assert await asyncio.wait_for(speaking, 30)
        assert (await engine.health_check()).healthy
    finally:
        release.set()
        engine.close()
