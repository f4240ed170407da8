"""A voice recording made ready for the cloning models: decoded (``soundfile``: WAV, FLAC, OGG,
MP3), mixed to mono, cut to the part that is used, resampled (``soxr``) to HuBERT's 16 kHz and
EnCodec's 24 kHz. Torch-free; works on bytes already read (``userfiles``), never on a path.

Which part is used: Bark reads at most the last 256 semantic tokens (5.1 s), 630 coarse tokens
(4.2 s) and 512 fine frames (6.8 s) of a prompt, and all three must end together. So silence is
trimmed from both ends (the prompt ends where the speech does, as Bark's own prompts end at a
sentence end) and the last ``USED_S`` seconds of the speech are used, starting at the quietest
moment of their first second (a pause, not the middle of a word); the models hear those seconds
whole, so the tokens Bark reads come with context before them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
HUBERT_RATE = 16_000
CODEC_RATE = 24_000
MAX_RECORDING_BYTES = 64 << 20  # a minute of 48 kHz stereo float WAV is 23 MB
MAX_RECORDING_S = 120.0  # longer files are skipped: a voice needs 5-12 s
USED_S = 12.0  # the most of the speech that is used (the end of it)
SHORT_S = 2.0  # less speech than this: made, with a warning
_FRAME_S = 0.02
_SILENCE_DB = 40.0  # a frame this far below the loudest is silence
_SILENT_PEAK = 1e-3  # a file whose loudest sample is below this (-60 dBFS) holds no speech
_PAD_S = 0.1  # kept around the speech when trimming


class RecordingError(ValueError):
    """A recording that cannot make a voice; the message names the file and says why."""


@dataclass(frozen=True)
class Recording:
    """The used part of a recording at both models' rates, and what a log line tells of it."""

    at_16k: np.ndarray  # float32 mono, for HuBERT
    at_24k: np.ndarray  # float32 mono, for EnCodec
    seconds_in_file: float
    seconds_used: float
    warnings: list[str] = field(default_factory=list)


def prepare(data: bytes, name: str) -> Recording:
    """Decode, mix, choose and resample ``data`` (the content of file ``name``); raises
    ``RecordingError``."""
    samples, rate = decode(data, name)
    start, end = speech_span(samples, rate, name)
    if end - start > USED_S * rate:  # cut: begin in a pause
        start = _quiet_start(samples, rate, end - int(USED_S * rate))
    speech = samples[start:end]
    warnings = []
    if len(speech) < SHORT_S * rate:
        warnings.append(
            f"{name} holds only {len(speech) / rate:.1f} s of speech; 5 to 12 s of one clear voice "
            "make a better one"
        )
    return Recording(
        resample(speech, rate, HUBERT_RATE),
        resample(speech, rate, CODEC_RATE),
        len(samples) / rate,
        len(speech) / rate,
        warnings,
    )


def decode(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """``data`` as float32 mono samples and their rate; raises ``RecordingError``."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels = sound.samplerate, sound.channels
            if not 8_000 <= rate <= 384_000 or not 1 <= channels <= 32:
                raise RecordingError(f"{name} has {channels} channels at {rate} Hz; not a voice recording")
            most = int(MAX_RECORDING_S * rate)
            if sound.frames > most:
                raise RecordingError(f"{name} is longer than {MAX_RECORDING_S:g} s; use 5 to 12 s of speech")
            audio = sound.read(frames=most + 1, dtype="float32", always_2d=True)
    except RecordingError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError, MemoryError) as err:
        why = getattr(err, "error_string", None) or str(err)  # libsndfile's words, without our BytesIO
        raise RecordingError(f"{name} is not audio that can be read ({why.strip()})") from err
    if len(audio) > most:  # a header that understated the length
        raise RecordingError(f"{name} is longer than {MAX_RECORDING_S:g} s; use 5 to 12 s of speech")
    if len(audio) == 0:
        raise RecordingError(f"{name} holds no audio")
    mono = audio.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not np.isfinite(mono).all():
        raise RecordingError(f"{name} holds samples that are not numbers")
    return mono, rate


def speech_span(samples: np.ndarray, rate: int, name: str) -> tuple[int, int]:
    """Where the speech begins and ends (silence trimmed, ``_PAD_S`` kept); raises
    ``RecordingError`` for a silent recording."""
    if float(np.abs(samples).max()) < _SILENT_PEAK:
        raise RecordingError(f"{name} is silent")
    loud = _frame_rms(samples, rate)
    threshold = loud.max() * 10 ** (-_SILENCE_DB / 20)
    voiced = np.flatnonzero(loud >= threshold)
    frame, pad = int(_FRAME_S * rate), int(_PAD_S * rate)
    start = max(0, int(voiced[0]) * frame - pad)
    end = min(len(samples), (int(voiced[-1]) + 1) * frame + pad)
    return start, end


def _quiet_start(samples: np.ndarray, rate: int, start: int) -> int:
    """``start`` moved to the quietest frame of the second after it."""
    first = samples[start : start + rate]
    return start + int(np.argmin(_frame_rms(first, rate))) * int(_FRAME_S * rate)


def _frame_rms(samples: np.ndarray, rate: int) -> np.ndarray:
    frame = int(_FRAME_S * rate)
    count = max(1, len(samples) // frame)
    framed = samples[: count * frame].reshape(count, frame) if len(samples) >= frame else samples[None]
    return np.sqrt(np.mean(np.square(framed, dtype=np.float64), axis=1))


def resample(samples: np.ndarray, rate: int, to: int) -> np.ndarray:
    """``samples`` at rate ``to`` (``soxr``, high quality); the same array when the rate is ``to``."""
    if rate == to:
        return samples
    import soxr

    return soxr.resample(samples, rate, to, quality="HQ").astype(np.float32, copy=False)
