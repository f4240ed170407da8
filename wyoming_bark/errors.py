"""Errors a client should see; ``code`` becomes the Wyoming ``error`` event's code.

Their messages name no absolute server paths, and client-supplied strings go in through
``quoted`` (escaped, so a newline cannot forge a log line; truncated, so a 100 kB name is not
logged whole).
"""

import re

MAX_QUOTED = 60
# An absolute path (two or more components) as it appears in a message.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"(),]+/)+([^\s/'\"(),]+)")


def quoted(text: object) -> str:
    """A client-supplied string as it may appear in errors and logs."""
    shown = repr(text)
    return shown if len(shown) <= MAX_QUOTED else shown[: MAX_QUOTED - 1] + "…"


class TtsError(Exception):
    code = "tts-error"


class VoiceError(TtsError, ValueError):
    """A voice whose prompt cannot be used (missing, unreadable or malformed file)."""

    code = "voice-error"


class UnknownVoice(VoiceError):
    code = "unknown-voice"


class ModelLoadError(TtsError, RuntimeError):
    """The model cannot be loaded; the message says what is missing and how to fix it."""

    code = "model-not-loaded"


class OutOfMemory(TtsError, RuntimeError):
    """The GPU ran out of memory for one request; caches are freed and the next may succeed."""

    code = "out-of-memory"


class BadModelOutput(TtsError, RuntimeError):
    """The model produced non-finite values for one sentence (a fault of the weights or the GPU)."""

    code = "bad-model-output"


class SynthesisCancelled(TtsError):
    """The requester went away or ``stop()`` was called; the generation ended early."""

    code = "cancelled"


def for_client(text: str) -> str:
    """A message as a client may see it: absolute server paths shortened to their last part
    (the server's log keeps the whole message)."""
    return _ABSOLUTE_PATH.sub(r".../\1", text)
