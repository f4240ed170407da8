"""Every setting, declared once: its default, help, kind and range (``options.setting``), from
which the command line, the ``BARK_*`` environment, the ``--config`` file's keys and the add-on's
option check are derived (``cli.py``, ``config.py``). Frozen, keyword-only, built once by
``Settings.from_args`` and handed down the tree. Torch-free, so ``--help`` starts at once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from platformdirs import user_cache_path

from . import length_cap
from .options import build, folder, language_voices, log_format, nested, networks, setting, uri
from .sampling import SamplingSettings

ENGINE_NAMES = ("bark",)  # --engine (contract.ENGINES holds the classes, registered by name)
CORES = ("fast", "transformers")  # --core: ours, or transformers' BarkModel.generate
COMPILE_MODES = ("auto", "on", "off")  # --compile
SELF_CHECK_MODES = ("on", "off", "strict")
PRECISIONS = ("auto", "fp32", "int8", "bf16")  # auto: by stage on a CPU (stage_precision), float16 on CUDA
ON_OFF_AUTO = ("auto", "on", "off")
DEFAULT_VOICE = "v2/en_speaker_6"
MAX_SEED = 2**63 - 1  # a seed must fit the sampler's 64-bit integers
LOOPBACK = networks("127.0.0.0/8,::1")  # the proxies trusted unless told otherwise
# The community's recipe for a voice from a recording (cloning.py): HuBERT base and the English
# quantizer (version 0) of the bark-voice-cloning project.
DEFAULT_HUBERT = "facebook/hubert-base-ls960"
DEFAULT_QUANTIZER = "GitMylo/bark-voice-cloning/quantifier_hubert_base_ls960_14.pth"


def _default_data_dir() -> str:
    return str(user_cache_path("wyoming-bark"))


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Which Bark to load, where, and how (``loader.load_bark``)."""

    model: str = setting("suno/bark-small", "Hub id (suno/bark-small, suno/bark) or a local model directory")
    data_dir: Path = setting(help="Where downloaded models are cached", parse=folder, start=_default_data_dir)
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda or cuda:N")
    core: str = setting(
        "fast", "fast (static KV cache, CUDA graphs) or transformers (BarkModel.generate)", kind="choice",
        choices=CORES,
    )  # fmt: skip
    self_check: str = setting(
        "on",
        "Check the fast core on its device at load and fall back (eager steps, then the transformers "
        "core) on a failure: on, off, or strict (fail the load instead)",
        kind="choice",
        choices=SELF_CHECK_MODES,
    )
    precision: str = setting(
        "auto",
        "auto (on a CPU each model in the precision measured fastest there, int8 or bfloat16; float16 "
        "on CUDA), fp32 (exact; slower), int8 or bf16 (CPU only)",
        kind="choice",
        choices=PRECISIONS,
    )
    compile: str = setting(
        "auto",
        "Compile the decode steps with torch.compile (fewer, fused kernels; minutes at the first "
        "start, cached in DATA_DIR/compile-cache): auto (on with CUDA), on, or off",
        kind="choice",
        choices=COMPILE_MODES,
    )
    threads: int | None = setting(
        None, "CPU threads for Bark: auto (one per physical core) or a number", kind="int", low=1, high=1024,
        auto=True,
    )  # fmt: skip
    max_batch: int = setting(
        8, "Sentences decoded together, across all clients (1: one at a time)", kind="int", low=1, high=64
    )


@dataclass(frozen=True, kw_only=True)
class CloneSettings:
    """The models that make a voice from a recording (``cloning.py``), loaded only to make one."""

    hubert: str = setting(
        DEFAULT_HUBERT, "HuBERT for voices made from recordings: a hub id or a folder (its layer 9 is used)"
    )
    quantizer: str = setting(
        DEFAULT_QUANTIZER,
        "HuBERT quantizer for voices made from recordings: OWNER/REPO/FILE on the hub, or a file",
    )


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """What shapes a sentence's audio besides its text and voice."""

    sampling: SamplingSettings = nested(SamplingSettings)
    seed: int | None = setting(
        None, "Seed each sentence's sampling for reproducible audio", kind="int", low=0, high=MAX_SEED
    )
    voice_seeds: dict[str, int] = setting({}, "Per-voice default seed", kind="file-only")
    sentence_silence: float = setting(
        0.0, "Seconds of silence between sentences", kind="number", low=0, high=10
    )
    max_speech_ratio: float = setting(
        length_cap.DEFAULT_RATIO,
        f"Cut a sentence's speech at this many times its expected length (at least "
        f"{length_cap.FLOOR_S:g} s; not for music or singing), so Bark does not speak on past "
        "the text; 0: off",
        kind="number",
        low=0,
        high=100,
    )

    def seed_for(self, voice: str) -> int | None:
        return self.voice_seeds.get(voice, self.seed)


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """The engine: its model, its generation and what surrounds it (voices, cache, chunks)."""

    model: ModelSettings = nested(ModelSettings, required=True)
    generation: GenerationSettings = nested(GenerationSettings)
    clone: CloneSettings = nested(CloneSettings)
    voice: str = setting(DEFAULT_VOICE, "Voice used when a request names none; also its language's default")
    language_voices: dict[str, str] = setting(
        {},
        "Default voice per language for requests that name only a language, and the voice Home "
        "Assistant lists first, e.g. de=v2/de_speaker_3,fr=v2/fr_speaker_1",
        parse=language_voices,
        start="",
    )
    voices_dir: Path | None = setting(
        None,
        "Folder of custom voices: NAME.npz prompts and NAME.wav recordings (default: DATA_DIR/voices)",
        parse=folder,
    )  # None: none (Settings.from_args makes it DATA_DIR/voices)
    samples_per_chunk: int = setting(
        1024, "Audio samples per audio-chunk event", kind="int", low=1, high=240_000
    )
    cache: bool = setting(False, "Keep spoken sentences on disk and replay repeats from there", kind="switch")
    cache_size_mb: float = setting(
        200, "Size bound of the sentence cache (least recently used go first)", kind="number", low=0,
        high=1_000_000,
    )  # fmt: skip
    audio_streaming: str = setting(
        "auto",
        "Release audio inside a sentence as it is generated: on, off, or auto (on with a GPU)",
        kind="choice",
        choices=ON_OFF_AUTO,
    )
    lookahead: int | None = setting(
        None,
        "Sentences of a text made while an earlier one plays: auto (2, within --max-batch) or 0-7",
        kind="int",
        low=0,
        high=7,
        auto=True,
    )


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The Wyoming server around the engine."""

    uri: str = setting("tcp://0.0.0.0:10200", "Where to listen: tcp://HOST:PORT, unix://PATH or stdio://",
                       parse=uri)  # fmt: skip
    streaming: bool = setting(
        True, "Do not announce streaming synthesis (synthesize-start/chunk/stop)", flag="no-streaming",
        kind="switch", invert=True,
    )  # fmt: skip
    max_chars: int = setting(
        10_000, "Longest text one request may send (characters)", kind="int", low=1, high=1_000_000
    )
    max_connections: int = setting(
        64, "Connections served at once; more are refused with a busy error", kind="int", low=1, high=10_000
    )
    max_connections_per_address: int = setting(
        16,
        "Connections one client address may hold at once; more are refused with a busy error",
        kind="int",
        low=1,
        high=10_000,
    )
    idle_timeout: float = setting(
        120.0,
        "Seconds a connection may stay open with no request in flight, or a streaming request "
        "with no text and nothing left to say",
        kind="number",
        low=1,
        high=86_400,
    )
    preload: bool = setting(False, "Load the model at start instead of on the first request", kind="switch")
    metrics_port: int | None = setting(
        None, "Serve Prometheus metrics at http://HOST:PORT/metrics (off by default)", kind="int", low=1,
        high=65_535,
    )  # fmt: skip
    proxy_protocol: bool = setting(
        False,
        "Read the PROXY protocol header (v1 or v2, HAProxy's send-proxy-v2) on connections from a "
        "trusted proxy: limits, fair turns and logs then see the client's own address",
        kind="switch",
    )
    trusted_proxies: tuple = setting(
        LOOPBACK,
        "Addresses (CIDR, comma-separated) whose PROXY header is believed (without one: served as themselves)",
        parse=networks,
        start=",".join(str(network) for network in LOOPBACK),
    )
    zeroconf: str | None = setting(
        None, "Announce NAME._wyoming._tcp.local. over mDNS", kind="name-or-switch"
    )  # the service name to announce; None: not announced
    zeroconf_host: str | None = setting(
        None, "Address to announce (default: the bound address, else the outgoing one)"
    )
    zeroconf_port: int | None = setting(
        None,
        "Port to announce instead of the bound one: a balancer's, with servers behind it (announced "
        "from the outgoing address unless a zeroconf host is given)",
        kind="int",
        low=1,
        high=65_535,
    )
    debug: bool = setting(False, "Log at DEBUG level", kind="switch")
    log_format: str = setting(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "Python logging format", parse=log_format
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    engine_name: str = setting("bark", "TTS engine", flag="engine", kind="choice", choices=ENGINE_NAMES)
    engine: EngineSettings = nested(EngineSettings, required=True)
    server: ServerSettings = nested(ServerSettings, required=True)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The one translation from the command line (``cli.parse_args``) to settings."""
        settings = build(cls, args)
        if settings.engine.voices_dir is None:
            voices_dir = settings.engine.model.data_dir / "voices"
            settings = replace(settings, engine=replace(settings.engine, voices_dir=voices_dir))
        return settings
