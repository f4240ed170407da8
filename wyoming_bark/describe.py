"""What ``describe`` answers: the program and every built-in and custom voice."""

from __future__ import annotations

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

from . import __version__
from .contract import TtsEngine

BARK_ATTRIBUTION = Attribution(name="Suno / Bark", url="https://github.com/suno-ai/bark")


def build_info(engine: TtsEngine, streaming: bool) -> Info:
    """``info`` for describe: every built-in and custom voice; never touches the model."""
    voices = [
        TtsVoice(
            name=voice.name,
            description=voice.description,
            attribution=BARK_ATTRIBUTION,
            installed=True,
            version=None,
            languages=list(voice.languages),
        )
        for voice in engine.get_available_voices()
    ]
    program = TtsProgram(
        name="bark",
        description="Bark text-to-audio by Suno: expressive speech in 13 languages",
        attribution=BARK_ATTRIBUTION,
        installed=True,
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=streaming,
    )
    return Info(tts=[program])
