"""Errors a client should see; ``code`` becomes the Wyoming ``error`` event's code."""


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


class SynthesisCancelled(TtsError):
    """The requester went away or ``stop()`` was called; the generation ended early."""

    code = "cancelled"
