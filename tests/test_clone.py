"""Voices from recordings: the recipe proven token for token against its reference (HuBERT's
``hidden_states[9]`` through the checkpoint's own weights; the ``encodec`` package at 6 kbps),
the audio formats, bad files, the drop-in through a running server and the command."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch
from helpers import SEMANTIC_TOKENS, TIMEOUT, AudioResult, describe, eventually, status
from suno_bark import suno_codec
from tiny_clone import (
    QUANTIZER_REPO,
    QUANTIZER_V0,
    QUANTIZER_V1,
)

from wyoming_bark import recorded_voices
from wyoming_bark.cloning import VoiceMaker, load_quantizer
from wyoming_bark.prompts import load_npz
from wyoming_bark.recorded_voices import RecordedVoices
from wyoming_bark.recording import MAX_RECORDING_BYTES, prepare
from wyoming_bark.settings import CloneSettings

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI")
    and subprocess.run(["which", "espeak-ng"], capture_output=True, check=False).returncode,
    reason="needs espeak-ng (Debian's espeak-ng; .ci/run installs it)",
)


def _wav(path: Path, samples: np.ndarray, rate: int, to: int | None = None, **kwargs) -> Path:
    if to is not None and to != rate:
        samples, rate = soxr.resample(samples, rate, to).astype(np.float32), to
    soundfile.write(path, samples, rate, **kwargs)
    return path


QUANTIZERS = {
    "v0, hub, no .info": f"{QUANTIZER_REPO}/{QUANTIZER_V0}",
    "v1, hub, .info": f"{QUANTIZER_REPO}/{QUANTIZER_V1}",
    "v0, file, .info": "v0-with-info.pth",
    "v1, file, no .info": "v1-without-info.pth",
}


def _quantizer_file(clone_data: Path, spec: str) -> Path:
    if spec.count("/") >= 2:
        return next((clone_data / "models").rglob(spec.rsplit("/", 1)[1]))
    return clone_data / spec


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_semantic_prompt_is_hubert_layer_9_through_the_quantizer(
    kind, clone_data, speech, tiny_model, tmp_path
):
    from transformers import HubertModel

    spec = QUANTIZERS[kind]
    if not spec.count("/"):
        spec = str(clone_data / spec)
    maker = VoiceMaker(CloneSettings(quantizer=spec), str(tiny_model), clone_data)
    wav = _wav(tmp_path / "speech.wav", *speech, to=16_000)
    decoded, _ = soundfile.read(wav, dtype="float32")
    recording = prepare(wav.read_bytes(), wav.name)
    start = _find(decoded, recording.at_16k)  # the part used is the input's own samples
    prompt = maker.make(recording)

    # The reference: the whole HuBERT's hidden_states[9], the checkpoint's tensors by hand.
    hubert_dir = next((clone_data / "models").glob("models--facebook--hubert-base-ls960/snapshots/*"))
    hubert = HubertModel.from_pretrained(str(hubert_dir)).eval()
    state = torch.load(_quantizer_file(clone_data, QUANTIZERS[kind]), weights_only=True)
    lstm = torch.nn.LSTM(
        state["lstm.weight_ih_l0"].shape[1], state["lstm.weight_hh_l0"].shape[1], 2, batch_first=True
    )
    lstm.load_state_dict({k.removeprefix("lstm."): v for k, v in state.items() if k.startswith("lstm.")})
    with torch.no_grad():
        features = hubert(torch.from_numpy(decoded[start : start + len(recording.at_16k)])[None],
                          output_hidden_states=True).hidden_states[9][0]  # fmt: skip
        hidden, _ = lstm(features)
        if "intermediate.weight" in state:
            hidden = hidden @ state["intermediate.weight"].T + state["intermediate.bias"]
        expected = (hidden @ state["fc.weight"].T + state["fc.bias"]).argmax(-1).numpy()
    assert np.array_equal(prompt["semantic_prompt"], expected)
    assert len(np.unique(expected)) > 3  # a reference that says something
    assert abs(len(expected) - 50 * recording.seconds_used) <= 2  # 50 tokens a second
    assert load_quantizer(_quantizer_file(clone_data, QUANTIZERS[kind])).shape.version == int(kind[1])


def _find(whole: np.ndarray, part: np.ndarray) -> int:
    """Where ``part`` lies in ``whole``, sample for sample (fails if it does not)."""
    for start in np.flatnonzero(whole == part[0]):
        if np.array_equal(whole[start : start + len(part)], part):
            return int(start)
    raise AssertionError("the used part is not a slice of the input")


def _codec_fitted_to(model: Path, samples: np.ndarray, folder: Path):
    """The tiny Bark with its codebooks drawn from ``samples``' own encoder frames and residuals
    (as k-means starts): a random encoder's frames differ too little for random codebooks."""
    from transformers import BarkModel

    bark = BarkModel.from_pretrained(str(model)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        residual = bark.codec_model.encoder(torch.from_numpy(samples)[None, None])[0].T
        for layer in bark.codec_model.quantizer.layers:
            size = layer.codebook.embed.shape[0]
            picks = residual[torch.randint(len(residual), (size,), generator=generator)]
            embed = picks + 0.01 * residual.std() * torch.randn(picks.shape, generator=generator)
            layer.codebook.embed.copy_(embed)
            layer.codebook.embed_avg.copy_(embed)
            residual = residual - embed[torch.cdist(residual, embed).argmin(-1)]
    bark.save_pretrained(str(folder))
    return bark


def test_fine_prompt_is_encodec_at_6_kbps(clone_data, speech, tiny_model, tmp_path):
    wav = _wav(tmp_path / "speech.wav", *speech, to=24_000)
    decoded, _ = soundfile.read(wav, dtype="float32")
    recording = prepare(wav.read_bytes(), wav.name)
    start = _find(decoded, recording.at_24k)
    bark = _codec_fitted_to(tiny_model, recording.at_24k, tmp_path / "bark")
    prompt = VoiceMaker(CloneSettings(), str(tmp_path / "bark"), clone_data).make(recording)

    codec = suno_codec(bark.codec_model)  # the encodec package's model, at 6 kbps
    with torch.no_grad():
        frames = codec.encode(torch.from_numpy(decoded[start : start + len(recording.at_24k)])[None, None])
    codes = torch.cat([frame[0] for frame in frames], dim=-1)[0].numpy()
    assert codes.shape[0] == 8
    assert all(len(np.unique(row)) > 20 for row in codes)  # a reference that says something
    assert np.array_equal(prompt["fine_prompt"], codes)
    assert np.array_equal(prompt["coarse_prompt"], codes[:2])
    assert abs(codes.shape[1] - 75 * recording.seconds_used) <= 2  # 75 frames a second


def test_every_format_gives_the_same_speech(speech, tmp_path):
    samples, rate = speech
    stereo = np.stack([samples, np.zeros_like(samples)], axis=1)  # one silent channel: mixed, halved
    files = {
        "44k-stereo.wav": _wav(tmp_path / "a.wav", stereo, rate, to=44_100),
        "16k.wav": _wav(tmp_path / "b.wav", samples, rate, to=16_000),
        "flac": _wav(tmp_path / "c.flac", samples, rate),
        "mp3": _wav(tmp_path / "d.mp3", samples, rate),
        "ogg": _wav(tmp_path / "e.ogg", samples, rate),
    }
    prepared = {kind: prepare(path.read_bytes(), path.name) for kind, path in files.items()}
    reference = prepared["flac"]
    for kind, recording in prepared.items():
        assert abs(recording.seconds_used - reference.seconds_used) < 0.15, kind
        assert len(recording.at_16k) == pytest.approx(recording.seconds_used * 16_000, abs=2), kind
        assert len(recording.at_24k) == pytest.approx(recording.seconds_used * 24_000, abs=2), kind
    peak = np.abs(prepared["44k-stereo.wav"].at_24k).max()
    assert peak == pytest.approx(np.abs(reference.at_24k).max() / 2, rel=0.05)


def test_a_long_recording_uses_its_last_12_seconds_and_a_short_one_warns(speech, tmp_path):
    samples, rate = speech
    long = np.concatenate([samples, np.zeros(rate // 2, np.float32)] * 4)  # ~21 s, ends in silence
    recording = prepare(_wav(tmp_path / "long.flac", long, rate).read_bytes(), "long.flac")
    assert 11.0 <= recording.seconds_used <= 12.0 and recording.seconds_in_file > 20
    assert not recording.warnings
    short = prepare(_wav(tmp_path / "short.flac", samples[:rate], rate).read_bytes(), "short.flac")
    assert short.warnings and "only" in short.warnings[0]


def _old(path: Path) -> Path:
    """As a file copied in a while ago (settled)."""
    stamp = time.time() - 60
    os.utime(path, (stamp, stamp), follow_symlinks=False)
    return path


def test_bad_recordings_are_skipped_with_one_line_each(clone_data, speech, tiny_model, tmp_path, caplog):
    voices = tmp_path / "voices"
    voices.mkdir()
    _wav(voices / "good.wav", *speech)
    (voices / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(2000))
    (voices / "empty.wav").write_bytes(b"")
    _wav(voices / "silent.wav", np.zeros(48_000, np.float32), 24_000)
    (voices / "text.mp3").write_text("this is not audio\n" * 100)
    with open(voices / "huge.flac", "wb") as file:
        file.truncate(MAX_RECORDING_BYTES + 1)
    (voices / "zero.wav").symlink_to("/dev/zero")
    os.mkfifo(voices / "fifo.ogg")
    for path in voices.iterdir():
        _old(path)
    whole = (voices / "good.wav").read_bytes()
    (voices / "copying.wav").write_bytes(whole[:5000])  # being copied: it grows between looks

    recorded = RecordedVoices(voices, clone_data, str(tiny_model), CloneSettings())
    caplog.set_level(logging.INFO, logger="wyoming_bark")
    began = time.monotonic()
    recorded.poll()
    with open(voices / "copying.wav", "ab") as file:
        file.write(whole[5000:20000])
    recorded.poll()  # a second look repeats nothing
    assert time.monotonic() - began < TIMEOUT
    assert [voice.name for voice in recorded.voices()] == ["good"]
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    for bad in ("corrupt.wav", "empty.wav", "silent.wav", "text.mp3", "huge.flac", "zero.wav", "fifo.ogg"):
        assert len([line for line in lines if bad in line]) == 1, (bad, lines)
    assert not [line for line in lines if "copying.wav" in line or "good.wav" in line]

    # Fixed: made at the next look once settled; the copy, once it stops changing.
    _wav(voices / "corrupt.wav", *speech, to=16_000)
    _old(voices / "corrupt.wav")
    with open(voices / "copying.wav", "ab") as file:
        file.write(whole[20000:])
    _old(voices / "copying.wav")
    recorded.poll()
    assert sorted(voice.name for voice in recorded.voices()) == ["copying", "corrupt", "good"]
    recorded.close()


def test_missing_models_offline_say_so_and_other_voices_work(speech, tiny_model, tmp_path, caplog):
    voices = tmp_path / "voices"
    voices.mkdir()
    _old(_wav(voices / "oma.wav", *speech))
    np.savez(voices / "opa.npz", **load_npz_like(speech))
    recorded = RecordedVoices(voices, tmp_path / "empty-data", str(tiny_model), CloneSettings())
    caplog.set_level(logging.INFO, logger="wyoming_bark")
    recorded.poll()
    recorded.close()
    lines = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "oma.wav" in r.getMessage()
    ]
    assert len(lines) == 1
    assert "HuBERT 'facebook/hubert-base-ls960' is not in the cache" in lines[0]
    assert "HF_HUB_OFFLINE is set" in lines[0] and "in a few minutes" in lines[0]
    assert recorded.voices() == []


def load_npz_like(speech) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "semantic_prompt": rng.integers(0, 10_000, 100),
        "coarse_prompt": rng.integers(0, 1024, (2, 150)),
        "fine_prompt": rng.integers(0, 1024, (8, 150)),
    }


async def _first_audio(uri: str, text: str, voice: str | None = None) -> tuple[float, bytes]:
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize, SynthesizeVoice

    began, first = time.monotonic(), None
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(
            Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event()
        )
        result = AudioResult()
        while not result.events or result.events[-1].type not in ("audio-stop", "error"):
            result.events.append(await asyncio.wait_for(client.read_event(), TIMEOUT))
            if first is None and result.events[-1].type == "audio-chunk":
                first = time.monotonic() - began
    assert result.error() is None, result.error()
    return first, result.audio


def test_drop_in_through_a_running_server(server_factory, clone_data, speech, tiny_model, tmp_path):
    voices, data = tmp_path / "voices", tmp_path / "data"
    voices.mkdir()
    data.mkdir()
    (data / "models").symlink_to(clone_data / "models")  # the cached models; made voices of its own
    server = server_factory(
        "--model", str(tiny_model), "--voices-dir", str(voices), "--data-dir", str(data),
        "--max-semantic-tokens", str(SEMANTIC_TOKENS), "--preload",
    )  # fmt: skip
    made = data / recorded_voices.MADE_DIR
    text = "Hello there."

    async def run() -> None:
        alone, audio = await _first_audio(server.uri, text)
        # A recording and a corrupt file copied in while another client's sentence is made.
        _wav(voices / "oma.wav", speech[0], speech[1], to=44_100)
        (voices / "bad.wav").write_bytes(b"RIFF" + os.urandom(5000))
        for _ in range(3):  # one after another, as alone: a batch of several rounds otherwise
            latency, same = await _first_audio(server.uri, text)
            assert same == audio  # unchanged
            assert latency < 2 * alone + 2.0, (latency, alone)  # not held up by the making

        async def listed(name: str, present: bool = True) -> bool:
            names = {
                voice["name"]
                for program in (await describe(server.uri)).data["tts"]
                for voice in program["voices"]
            }
            return (name in names) == present

        await eventually(lambda: listed("oma"), what="the recorded voice listed")
        _, spoken = await _first_audio(server.uri, text, "oma")
        assert spoken and spoken != audio  # its own voice
        log = server.log_text()
        assert "Unknown voice" not in log and "Made voice 'oma'" in log
        assert len([line for line in log.splitlines() if "bad.wav" in line]) == 1
        assert (await status(server.uri))["recordings"] == {"made": 1, "failed": 1, "waiting": 0}
        first = {path.name for path in made.glob("*.npz")}
        assert len(first) == 1

        # Changed: made again, the old one deleted; removed: gone from the list and the disk.
        _wav(voices / "oma.wav", speech[0][: len(speech[0]) * 2 // 3], speech[1])
        await eventually(lambda: server.log_text().count("Made voice 'oma'") == 2, what="made again")
        await eventually(
            lambda: (
                {p.name for p in made.glob("*.npz")} - first
                and not first & {p.name for p in made.glob("*.npz")}
            )
        )
        (voices / "oma.wav").unlink()
        await eventually(lambda: listed("oma", present=False), what="the removed voice unlisted")
        await eventually(lambda: not list(made.glob("*.npz")), what="its file deleted")

    asyncio.run(run())


def _clone(tmp_path: Path, data: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "wyoming_bark.clone", *args, "--data-dir", str(data), "--model", str(model),
           "--device", "cpu", "--voices-dir", str(tmp_path / "voices")]  # fmt: skip
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )


def test_the_command_writes_the_voice_and_speaks_with_it(clone_data, speech, tiny_model, tmp_path):
    recording = _wav(tmp_path / "grandma.flac", *speech)
    done = _clone(tmp_path, clone_data, tiny_model, str(recording), "--name", "oma", "--language", "de",
                  "--say", "Hallo.", "--out", str(tmp_path / "hallo.wav"), "--max-semantic-tokens", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    voice = tmp_path / "voices" / "oma.de.npz"
    assert f"Wrote {voice}: voice oma (German)" in done.stdout
    prompt = load_npz(voice)
    assert prompt["fine_prompt"].shape[0] == 8 and len(prompt["semantic_prompt"]) > 100
    audio, rate = soundfile.read(tmp_path / "hallo.wav")
    assert rate == 24_000 and len(audio) > 0
    assert "Spoke" in done.stdout


def test_the_command_offline_without_hubert_says_what_to_do(speech, tiny_model, tmp_path):
    recording = _wav(tmp_path / "oma.wav", *speech)
    done = _clone(tmp_path, tmp_path / "data", tiny_model, str(recording))
    assert done.returncode == 1
    assert "HuBERT 'facebook/hubert-base-ls960' is not in the cache" in done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "voices").exists()


def test_quantizer_checkpoints_are_data_never_code(clone_data, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"lstm.weight_ih_l0": Evil()}, path)
    with pytest.raises(Exception, match="not a readable checkpoint"):
        load_quantizer(path)
    assert not Path("pwned").exists()
    assert zipfile.is_zipfile(path)
