"""Voice catalogue, prompt validation, the hub layout and custom voice files."""

import time

import numpy as np
import pytest
from helpers import describe
from wyoming.info import Info

from wyoming_bark.prompts import load_npz, validate_prompt
from wyoming_bark.voices import (
    LANGUAGES,
    MAX_CUSTOM_VOICES,
    RESCAN_S,
    VoiceError,
    VoiceLibrary,
    builtin_voices,
)


def test_builtin_catalogue():
    voices = builtin_voices()
    names = [voice.name for voice in voices]
    assert len(voices) == 131 and len(set(names)) == 131
    assert len(LANGUAGES) == 13
    six = next(voice for voice in voices if voice.name == "v2/en_speaker_6")
    assert six.languages == ("en",) and six.description == "English speaker 6"
    assert (
        next(voice for voice in voices if voice.name == "v2/zh_speaker_9").description == "Chinese speaker 9"
    )
    assert "announcer" in names


def test_real_suno_prompts_validate(real_prompts):
    """All 130 v2 presets shipped by suno (and announcer) pass our checks unchanged."""
    assert len(real_prompts) == 131
    for name, prompt in real_prompts.items():
        checked = validate_prompt(prompt, name)
        assert checked["fine_prompt"].shape[0] == 8
        assert all(np.array_equal(checked[key], prompt[key]) for key in prompt)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"semantic_prompt": np.zeros((2, 5), dtype=np.int64)}, "semantic_prompt must be 1-D"),
        ({"coarse_prompt": np.zeros((3, 5), dtype=np.int64)}, "coarse_prompt must be 2 x N"),
        ({"fine_prompt": np.zeros((8, 0), dtype=np.int64)}, "fine_prompt must be 8 x N"),
        ({"fine_prompt": np.full((8, 5), 1024)}, "fine_prompt tokens must lie in"),
        ({"semantic_prompt": np.full(5, -1)}, "semantic_prompt tokens must lie in"),
        ({"coarse_prompt": np.zeros((2, 5), dtype=np.float32)}, "integer tokens"),
    ],
)
def test_bad_prompts_are_rejected(real_prompts, change, message):
    prompt = {**real_prompts["v2/en_speaker_1"], **change}
    with pytest.raises(VoiceError, match=message):
        validate_prompt(prompt, "test")


def test_custom_voice_files(tmp_path, real_prompts):
    library = VoiceLibrary(tmp_path)
    assert [voice.name for voice in library.custom_voices()] == []
    np.savez(tmp_path / "robot.npz", **real_prompts["v2/fr_speaker_2"])
    np.savez(tmp_path / "announcer.npz", **real_prompts["v2/fr_speaker_2"])  # shadows a built-in: ignored
    (tmp_path / "partial.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(tmp_path / "nofine.npz", semantic_prompt=np.arange(5))
    assert library.resolve("robot").path == tmp_path / "robot.npz", "a new file is found at once by name"
    time.sleep(RESCAN_S)  # the folder is re-read at most once a second
    custom = {voice.name: voice for voice in library.custom_voices()}
    assert set(custom) == {"robot", "partial", "nofine"}, "re-read once it changed"
    assert custom["robot"].languages == tuple(LANGUAGES)
    prompt = library.load(library.resolve("robot"), tmp_path)
    assert prompt["coarse_prompt"].shape == real_prompts["v2/fr_speaker_2"]["coarse_prompt"].shape
    with pytest.raises(VoiceError, match="partial.npz"):
        load_npz(tmp_path / "partial.npz")
    with pytest.raises(VoiceError, match="nofine.npz lacks coarse_prompt, fine_prompt"):
        load_npz(tmp_path / "nofine.npz")


def test_builtin_prompts_load_from_hub_layout(tiny_model, real_prompts):
    library = VoiceLibrary(None)
    for name in ("v2/en_speaker_6", "v2/ja_speaker_0", "announcer"):
        prompt = library.load(library.resolve(name), tiny_model)
        assert all(np.array_equal(prompt[key], real_prompts[name][key]) for key in prompt)
    assert library.resolve("en_speaker_6").name == "v2/en_speaker_6"
    with pytest.raises(VoiceError, match="Unknown voice 'v3/xx'"):
        library.resolve("v3/xx")


def test_embeddings_index_cannot_escape_the_model_dir(tmp_path, tiny_model):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    index = json.loads((model / "speaker_embeddings_path.json").read_text())
    index["v2/en_speaker_0"]["fine_prompt"] = "../../etc/passwd"
    (model / "speaker_embeddings_path.json").write_text(json.dumps(index))
    library = VoiceLibrary(None)
    with pytest.raises(VoiceError, match="bad path"):
        library.load(library.resolve("v2/en_speaker_0"), model)


@pytest.fixture(scope="module")
def crowded_voices(tmp_path_factory):
    """10,000 custom voice files and a few odd names."""
    folder = tmp_path_factory.mktemp("crowded")
    for i in range(10_000):
        (folder / f"voice{i:05d}.npz").write_bytes(b"PK")  # listed (not empty); never loaded here
    for odd in ("..npz", "...npz", "-rf.npz", "bell\x07.npz", "x" * 120 + ".npz"):
        (folder / odd).write_bytes(b"PK")
    return folder


def test_a_crowded_voices_folder_is_read_once_bounded_and_odd_names_skipped(crowded_voices, caplog):
    library = VoiceLibrary(crowded_voices)
    custom = library.custom_voices()
    assert len(custom) == MAX_CUSTOM_VOICES, "the list is bounded"
    names = {voice.name for voice in custom}
    assert not names & {".", "..", "-rf", "bell\x07", "x" * 120}
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert any("-rf" in w for w in warnings) and any("bell\\x07" in w for w in warnings)
    assert any(f"only the first {MAX_CUSTOM_VOICES}" in w for w in warnings)
    assert library.custom_voices() is custom, "unchanged folder: not read again"
    assert library.resolve("voice09999").path == crowded_voices / "voice09999.npz", "found beyond the list"


async def test_describe_stays_fast_with_a_crowded_voices_folder(server_factory, tiny_model, crowded_voices):
    server = server_factory("--model", str(tiny_model), "--voices-dir", str(crowded_voices))
    latencies = []
    for _ in range(20):
        started = time.monotonic()
        info = Info.from_event(await describe(server.uri))
        latencies.append(time.monotonic() - started)
    assert len(info.tts[0].voices) == 131 + MAX_CUSTOM_VOICES
    assert sorted(latencies)[-2] < 0.1, latencies  # p95 of 20; the folder is read once, off the loop
