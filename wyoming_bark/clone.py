"""``python -m wyoming_bark.clone RECORDING`` (``wyoming-bark-clone``): a Bark voice from a
recording, written as ``NAME.npz`` (``NAME.LANG.npz``) into the voices folder; with ``--say`` it
also speaks a sentence with it into a WAV file, to listen before using it. Takes the server's
flags (model, data and voices folders, ``--hubert``, ``--quantizer``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from .cli import parse_args
from .settings import Settings
from .voices import LANGUAGES, custom_name

_LOGGER = logging.getLogger(__name__)
PROG = "wyoming-bark-clone"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", type=Path, help="WAV, FLAC, OGG or MP3: 5 to 12 s of one clear voice")
    parser.add_argument("--name", help="The voice's name (default: the recording's file name)")
    parser.add_argument(
        "--language", choices=sorted(LANGUAGES), help="List the voice under this language only"
    )
    parser.add_argument("--say", metavar="TEXT", help="Also speak TEXT with the new voice (needs --out)")
    parser.add_argument("--out", type=Path, metavar="FILE.wav", help="Where --say writes its audio")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv, PROG, "Make a Bark voice from a recording of someone who agreed to it.", extend=_arguments
    )
    if args.say and not args.out:
        raise SystemExit(f"{PROG}: --say needs --out FILE.wav")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    settings = Settings.from_args(args)
    try:
        name = make(args, settings)
        if args.say:
            seconds = asyncio.run(say(settings, name, args.say, args.out))
            print(f"Spoke {seconds:.1f} s with voice {name} into {args.out}")
    except (ValueError, RuntimeError, OSError) as err:  # ours say what to do; torch's are rare
        raise SystemExit(f"{PROG}: {err}") from None


def make(args: argparse.Namespace, settings: Settings) -> str:
    """Write the voice; return its name."""
    from .cloning import VoiceMaker, save_prompt
    from .recording import MAX_RECORDING_BYTES, prepare
    from .userfiles import read_user_file

    recording: Path = args.recording
    parsed = custom_name(args.name or recording.name[: recording.name.rfind(".")] or recording.name)
    if isinstance(parsed, str):
        raise SystemExit(f"{PROG}: cannot name the voice so: {parsed} (pass --name)")
    name, languages = parsed
    language = args.language or (languages[0] if len(languages) == 1 else None)
    voices_dir: Path = settings.engine.voices_dir
    out = voices_dir / (f"{name}.{language}.npz" if language else f"{name}.npz")
    model = settings.engine.model
    started = time.monotonic()
    data = read_user_file(recording, MAX_RECORDING_BYTES)
    prepared = prepare(data, recording.name)
    for warning in prepared.warnings:
        _LOGGER.warning("%s", warning)
    maker = VoiceMaker(settings.engine.clone, model.model, model.data_dir)
    prompt = maker.make(prepared)
    maker.close()
    voices_dir.mkdir(parents=True, exist_ok=True)
    save_prompt(prompt, out)
    print(
        f"Wrote {out}: voice {name}"
        f"{f' ({LANGUAGES[language]})' if language else ''}, {len(prompt['semantic_prompt'])} semantic "
        f"tokens and {prompt['fine_prompt'].shape[1]} codec frames from {prepared.seconds_used:.1f} s of "
        f"speech (of {prepared.seconds_in_file:.1f} s in {recording.name}), made in "
        f"{time.monotonic() - started:.1f} s"
    )
    return name


async def say(settings: Settings, name: str, text: str, out: Path) -> float:
    """Speak ``text`` with voice ``name`` into WAV file ``out``; the seconds spoken."""
    import numpy as np
    import soundfile

    from .contract import create_engine
    from .pcm import SAMPLE_RATE

    engine = create_engine(settings.engine_name, settings=settings.engine)
    try:
        pcm = b"".join([chunk async for chunk in engine.speak(text, engine.resolve_voice(name))])
    finally:
        engine.close()
    samples = np.frombuffer(pcm, dtype="<i2")
    soundfile.write(out, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(samples) / SAMPLE_RATE


if __name__ == "__main__":
    sys.exit(main())
