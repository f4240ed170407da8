"""Every setting, defined once: frozen, keyword-only, built once from flags, environment and the
``--config`` file (``cli.py``) by ``Settings.from_args``, and handed down the tree.

The defaults here are the command line's (``cli.py`` reads them from these classes). Sampling
knobs are the core's own ``SamplingSettings`` (Bark's defaults).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .fast import SamplingSettings
from .length_cap import DEFAULT_RATIO
from .voices import DEFAULT_VOICE


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Which Bark to load, where, and how (``loader.load_bark``)."""

    model: str = "suno/bark-small"  # a hub id or a local model directory
    data_dir: Path  # downloads, the self-check's notes, the cache
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    core: str = "fast"  # fast | transformers (loader.CORES)
    self_check: str = "on"  # on | off | strict (self_check.MODES)
    precision: str = "auto"  # auto | fp32 | int8 (precision.PRECISIONS)
    threads: int | None = None  # CPU threads; None: one per physical core
    max_batch: int = 8  # sentences decoded together
    compile: str = "auto"  # auto | on | off: decode steps through torch.compile (auto: on CUDA)


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """What shapes a sentence's audio besides its text and voice."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = None
    voice_seeds: dict[str, int] = field(default_factory=dict)  # per-voice default seed
    sentence_silence: float = 0.0  # seconds of silence between sentences
    max_speech_ratio: float = DEFAULT_RATIO  # see length_cap; 0: no cap but Bark's own

    def seed_for(self, voice: str) -> int | None:
        return self.voice_seeds.get(voice, self.seed)


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """The engine: its model, its generation and what surrounds it (voices, cache, chunks)."""

    model: ModelSettings
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    voice: str = DEFAULT_VOICE  # for requests that name none; also its language's default
    language_voices: dict[str, str] = field(default_factory=dict)
    voices_dir: Path | None = None  # custom NAME.npz voices; None: none
    samples_per_chunk: int = 1024
    cache: bool = False  # keep spoken sentences on disk, replay repeats
    cache_size_mb: float = 200  # the cache's bound (least recently used go first)
    audio_streaming: str = "auto"  # auto | on | off
    lookahead: int | None = None  # None: auto


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The Wyoming server around the engine."""

    uri: str = "tcp://0.0.0.0:10200"
    streaming: bool = True  # announce synthesize-start/chunk/stop
    max_chars: int = 10_000
    max_connections: int = 64
    max_connections_per_address: int = 16
    idle_timeout: float = 120.0
    preload: bool = False
    zeroconf: str | None = None  # the service name to announce; None: not announced
    zeroconf_host: str | None = None
    zeroconf_port: int | None = None  # announce this port (a balancer's in front) instead of ours
    debug: bool = False
    log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, kw_only=True)
class Settings:
    engine_name: str = "bark"
    engine: EngineSettings
    server: ServerSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The one translation from the command line (``cli.parse_args``) to settings."""
        data_dir = Path(args.data_dir).expanduser()
        voices_dir = args.voices_dir
        model = ModelSettings(
            model=args.model,
            data_dir=data_dir,
            device=args.device,
            core=args.core,
            self_check=args.self_check,
            precision=args.precision,
            threads=args.threads,
            max_batch=args.max_batch,
            compile=args.compile,
        )
        generation = GenerationSettings(
            sampling=SamplingSettings(
                max_semantic_tokens=args.max_semantic_tokens,
                min_eos_p=args.min_eos_p,
                text_temperature=args.text_temp,
                waveform_temperature=args.waveform_temp,
            ),
            seed=args.seed,
            voice_seeds=dict(args.voice_seeds),
            sentence_silence=args.sentence_silence,
            max_speech_ratio=args.max_speech_ratio,
        )
        engine = EngineSettings(
            model=model,
            generation=generation,
            voice=args.voice,
            language_voices=dict(args.language_voices),
            voices_dir=Path(voices_dir).expanduser() if voices_dir else data_dir / "voices",
            samples_per_chunk=args.samples_per_chunk,
            cache=args.cache,
            cache_size_mb=args.cache_size_mb,
            audio_streaming=args.audio_streaming,
            lookahead=args.lookahead,
        )
        server = ServerSettings(
            uri=args.uri,
            streaming=not args.no_streaming,
            max_chars=args.max_chars,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
            idle_timeout=args.idle_timeout,
            preload=args.preload,
            zeroconf=args.zeroconf,
            zeroconf_host=args.zeroconf_host,
            zeroconf_port=args.zeroconf_port,
            debug=args.debug,
            log_format=args.log_format,
        )
        return cls(engine_name=args.engine, engine=engine, server=server)
