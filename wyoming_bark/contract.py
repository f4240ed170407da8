"""The engine contract: what a front end (the Wyoming handler) may ask of a TTS engine.

An engine implements a few primitives — resolve a voice, start a sentence, stop, report status
and health — and inherits the rest: a buffered text stream (``open_stream``, the pipeline in
``sentences.py``) and whole texts (``speak``). An engine class is registered by name with
``@register``; ``create_engine("bark", ...)`` imports its module (``ENGINE_MODULES``) and finds it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .pcm import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH
from .sentences import Client, SentenceAudio, TextStream, Turn
from .voices import Voice

ENGINES: dict[str, type[TtsEngine]] = {}
# Where each engine named in settings.ENGINE_NAMES is defined (imported on first use: torch).
ENGINE_MODULES = {"bark": "wyoming_bark.engine"}


def register(cls: type[TtsEngine]) -> type[TtsEngine]:
    """Class decorator: ``cls`` is the engine ``--engine cls.name`` selects."""
    if not cls.name or ENGINES.setdefault(cls.name, cls) is not cls:
        raise ValueError(f"engine {cls.__name__} needs a name of its own, got {cls.name!r}")
    return cls


@dataclass
class HealthCheckResult:
    healthy: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class TtsEngine(ABC):
    """A text-to-speech engine producing 16-bit mono PCM at ``sample_rate``."""

    name: ClassVar[str] = ""
    sample_rate: ClassVar[int] = SAMPLE_RATE
    sample_width: ClassVar[int] = SAMPLE_WIDTH
    channels: ClassVar[int] = CHANNELS
    lookahead: int = 0  # sentences of one text made ahead of the one playing

    # --- primitives ---------------------------------------------------------------------

    @abstractmethod
    def resolve_voice(self, name: str | None, language: str | None = None) -> Voice:
        """The named voice, else the default of ``language``, else the default; raises ``UnknownVoice``."""

    @abstractmethod
    def start_sentence(self, sentence: str, voice: Voice, turn: Turn) -> SentenceAudio:
        """Start making one sentence now (called on the event loop); play it when its turn comes."""

    @abstractmethod
    def stop(self) -> None:
        """Cancel whatever is being synthesized now."""

    @abstractmethod
    async def health_check(self, synthesize: bool = False) -> HealthCheckResult:
        """Is the engine usable? With ``synthesize``, prove it by speaking a short phrase."""

    @abstractmethod
    def get_status(self) -> dict[str, Any]:
        """Model state and counters."""

    @abstractmethod
    def get_available_voices(self) -> list[Voice]:
        """Every voice a request may name."""

    @abstractmethod
    def set_voice(self, name: str) -> bool:
        """Make ``name`` the default voice; False (and no change) if it is unknown."""

    async def warm_up(self) -> None:
        """Get ready now (load models) instead of on the first request; failures are logged."""

    def silence(self) -> list[bytes]:
        """PCM chunks put between two sentences of one stream (none by default)."""
        return []

    # --- built on the primitives --------------------------------------------------------

    def open_stream(
        self, voice: Voice | None = None, quick_start: bool = False, client: Client | None = None
    ) -> TextStream:
        """A buffered streaming synthesis with ``voice`` (None: the default voice).

        ``quick_start`` speaks a long first sentence up to its first clause boundary, so the first
        audio of a stream (text still arriving, e.g. from an LLM) comes sooner. ``client``: whose
        request (a connection; None: a client of its own), for fair turns.
        """
        return TextStream(self, voice or self.resolve_voice(None), quick_start, client)

    async def speak(
        self, text: str, voice: Voice | None = None, client: Client | None = None
    ) -> AsyncIterator[bytes]:
        """PCM chunks for a whole text, sentence by sentence."""
        stream = self.open_stream(voice, client=client)
        stream.add(text)
        stream.close()
        async with aclosing(stream.audio()) as audio:  # closed now, not when collected
            async for pcm in audio:
                yield pcm

    async def speak_sentence(self, sentence: str, voice: Voice | None = None) -> AsyncIterator[bytes]:
        """PCM chunks for one sentence, spoken as it is (not split), a listener waiting for it."""
        turn = Turn(client=Client())
        turn.now.set()
        audio = self.start_sentence(sentence, voice or self.resolve_voice(None), turn)
        try:
            async with aclosing(audio.play()) as chunks:
                async for pcm in chunks:
                    yield pcm
        finally:
            audio.cancel()


def create_engine(name: str, **kwargs: Any) -> TtsEngine:
    """An engine by its registered name (``bark``)."""
    if name in ENGINE_MODULES:
        importlib.import_module(ENGINE_MODULES[name])
    try:
        return ENGINES[name](**kwargs)
    except KeyError:
        raise ValueError(f"Unknown engine '{name}'; available: {', '.join(sorted(ENGINES))}") from None
