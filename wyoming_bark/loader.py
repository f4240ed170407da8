"""Loading Bark: the weights (through transformers, from the folder ``hub.py`` finds), the
precision, the core and its self-check — and ``ModelLoader``, which loads once on a thread of its
own and backs off after a failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import precision as precisions
from .errors import ModelLoadError
from .fast import FastBark
from .fast.transformers_core import TransformersCore
from .hub import bark_classes, model_directory
from .int8_cache import Int8Cache
from .self_check import prepare
from .settings import ModelSettings
from .stage_precision import STAGE_NAMES, StageChoice, summary

_LOGGER = logging.getLogger(__name__)

COMPILE_CACHE = "compile-cache"  # under the data dir: inductor's kernels, keyed by inductor itself


def compiles(mode: str, device: torch.device) -> bool:
    """Whether --compile ``mode`` compiles on ``device`` (``auto``: on CUDA only; the CPU
    measurements are in docs/performance.md). The server and the bench ask here."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


# After a failed model load, no new attempt for this long (doubling while it keeps failing).
LOAD_BACKOFF_MIN, LOAD_BACKOFF_MAX = 2.0, 60.0
LOADER_THREAD = "bark-load"  # the model loads on a thread of this name (prefix)


@dataclass
class LoadedBark:
    """A ready Bark: model, processor (tokenizer) and where it came from."""

    model: object  # transformers.BarkModel
    processor: object  # transformers.BarkProcessor
    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    core: FastBark | TransformersCore  # ours, or transformers' (--core transformers, or a fallback)
    precision: str = "fp32"  # fp16, fp32, int8, bf16, or by GPT ("semantic int8, ...": stage_precision)
    self_check: str = "not run"  # the self-check's verdict, for status
    threads: int = 0  # torch's CPU threads for the decode thread (0: not set, a GPU)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ModelLoadError(f"Invalid --device '{spec}': use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            missing = (
                "this torch is a CUDA build, so the NVIDIA driver or a visible GPU is missing "
                "(check nvidia-smi; in Docker, the GPU reservation and the NVIDIA Container Toolkit)"
                if torch.version.cuda
                else "this torch is a CPU build: install a CUDA build of torch"
            )
            raise ModelLoadError(
                f"--device {spec} was requested but PyTorch sees no CUDA GPU (torch {torch.__version__}): "
                f"{missing}; or use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) found")
    elif device.type != "cpu":
        raise ModelLoadError(f"Unsupported --device '{spec}': use auto, cpu, cuda or cuda:N")
    return device


def load_bark(settings: ModelSettings) -> LoadedBark:
    """Load Bark (float16 on CUDA; on a CPU by default each GPT in the precision measured fastest
    there, ``stage_precision.py``), set up the chosen core and check it (``self_check.py``).
    Slow: run it off the event loop."""
    BarkConfig, BarkModel, BarkProcessor = bark_classes()

    model, data_dir = settings.model, settings.data_dir
    device = resolve_device(settings.device)
    resolved = precisions.resolve(settings.precision, device)
    threads = 0
    if device.type == "cpu":  # threads started from now on (the decode thread) use this many
        threads = precisions.use_threads(settings.threads)
        precisions.check_onednn(data_dir)
    model_dir = model_directory(model, data_dir)
    dtype = precisions.dtype(resolved)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():

        def weights():
            return (
                BarkModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
                .to(device)
                .eval()
            )

        cpu = device.type == "cpu"
        engine = precisions.int8_engine(data_dir) if cpu and resolved in ("int8", "auto") else None
        if engine is not None:  # before anything quantizes, times or packs int8 weights
            torch.backends.quantized.engine = engine
        try:
            processor = BarkProcessor.from_pretrained(str(model_dir), local_files_only=True)
            stages = (
                StageChoice(data_dir, BarkConfig.from_pretrained(str(model_dir)), engine) if cpu else None
            )
            choice = _choice(resolved, engine, stages) if cpu else None
            kept = (
                Int8Cache(data_dir, model_dir, engine, choice)
                if choice and "int8" in choice.values()
                else None
            )
            from_cache = kept.load() if kept is not None else None
            bark = from_cache[0] if from_cache else weights()
        except torch.cuda.OutOfMemoryError as err:
            raise ModelLoadError(
                f"Not enough GPU memory to load {model} on {device}. "
                "Use --model suno/bark-small, free the GPU, or use --device cpu."
            ) from err
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"Cannot load a Bark model from {model_dir}: {err}") from err
        if not hasattr(bark.generation_config, "semantic_config"):
            raise ModelLoadError(f"{model_dir} has no Bark generation_config.json; copy it from the hub repo")
        if from_cache:
            choice = from_cache[2]
            _LOGGER.info("int8 weights loaded from %s (%s kernels; top-1 agreement with float32 when "
                         "they were made: %s)", kept.folder, engine, _agreement(from_cache[1]))  # fmt: skip
        elif cpu:
            asked = choice or stages.measure(bark)
            choice, agreement = _convert(bark, asked, engine)
            if "int8" in choice.values():
                (kept or Int8Cache(data_dir, model_dir, engine, asked)).save(bark, agreement, choice)
        if cpu:
            resolved = summary(choice)
        loaded = LoadedBark(
            bark, processor, model_dir, device, dtype, TransformersCore(bark), resolved, threads=threads
        )
        if settings.core == "fast":  # the one place that picks the core
            started = time.monotonic()
            fast = _fast_core(bark, settings.max_batch, model)
            compile = compiles(settings.compile, device)
            if compile:  # a restart finds the kernels it compiled before
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir / COMPILE_CACHE))
            outcome = prepare(fast, settings.self_check, data_dir / "self-check", model, compile=compile)
            loaded.core = outcome.fast or loaded.core
            loaded.self_check = outcome.summary
            _LOGGER.info("Core set up and checked in %.1f s", time.monotonic() - started)
    _LOGGER.info("Bark runs on %s with the %s core", device_summary(device, resolved), loaded.core.name)
    return loaded


def _choice(resolved: str, engine: str | None, stages: StageChoice) -> dict[str, str] | None:
    """What each GPT runs in on this CPU: ``resolved`` for all (int8 only where its kernels run),
    or for ``auto`` the choice an earlier start measured here (None: measure it now)."""
    if resolved == "auto":
        return stages.kept()
    if resolved == "int8" and engine is None:
        _LOGGER.warning("No int8 kernels run on this machine; running in float32")
        resolved = "fp32"
    return dict.fromkeys(precisions.QUANTIZED, resolved)


def _convert(bark, choice: dict[str, str], engine: str | None) -> tuple[dict[str, str], dict[str, float]]:
    """The GPTs in their precisions (``precision.convert``), each gated against float32 on this
    machine: where a copy raises or gives other numbers, that GPT runs in float32 (one line)."""
    if set(choice.values()) == {"fp32"}:
        return choice, {}
    started = time.monotonic()
    done, agreement, problems = precisions.convert(bark, choice)
    for problem in problems:
        name = problem.split(":", 1)[0]
        _LOGGER.warning("%s weights disagree with float32 on this machine (%s); the %s GPT is running in "
                        "float32", choice[name], problem, name)  # fmt: skip
    passed = {name: share for name, share in agreement.items() if done[name] != "fp32"}
    if passed:
        kinds = sorted({done[name] for name in passed})
        _LOGGER.info(
            "%s quality gate passed in %.1f s (%stop-1 agreement with float32: %s)",
            "/".join(kinds),
            time.monotonic() - started,
            f"int8 on the {engine} kernels; " if "int8" in kinds else "",
            _agreement(passed),
        )
    return done, passed


def _agreement(agreement: dict[str, float]) -> str:
    return ", ".join(f"{STAGE_NAMES[name]} {share:.0%}" for name, share in agreement.items())


def _fast_core(bark, max_batch: int, model: str) -> FastBark:
    """Our core with KV-cache rows for ``max_batch`` sentences, or as many as GPU memory holds."""
    while True:
        try:
            return FastBark(bark, max_batch)
        except torch.cuda.OutOfMemoryError as err:
            if max_batch == 1:
                raise ModelLoadError(
                    f"Not enough GPU memory for {model}'s decode cache even for one sentence; "
                    "use --model suno/bark-small, free the GPU, or use --device cpu"
                ) from err
            torch.cuda.empty_cache()
            _LOGGER.warning(
                "Not enough GPU memory for --max-batch %d (each row holds a KV cache); using %d",
                max_batch,
                max_batch // 2,
            )
            max_batch //= 2


def device_summary(device: torch.device, precision: str | None = None) -> str:
    """What a user checks to know the GPU is really used: its name and memory; and the precision."""
    names = {"fp16": "float16", "fp32": "float32", "int8": "int8 weights", "bf16": "bfloat16",
             "auto": "precision by stage, chosen at load"}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device}: {props.name}, {props.total_memory / 2**30:.1f} GiB, {names[precision or 'fp16']}"
    return f"the CPU ({torch.get_num_threads()} threads), {names.get(precision or 'fp32', precision)}"


class ModelLoader:
    """Loads the model once, on a thread that ends with the attempt (on a CPU, the OpenMP workers
    a thread starts live as long as the thread, and a second set alive slows every decode step:
    see ``fast.release.Releaser``). After a failure, calls within a back-off (2 s, doubling up to
    60 s while it keeps failing) get the same error: requests that arrived together cause one
    attempt, not one each."""

    def __init__(self, settings: ModelSettings, loaded: LoadedBark | None = None) -> None:
        self.settings = settings
        self.loaded = loaded  # the benchmark hands an in-memory model in
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._failure: ModelLoadError | None = None  # the last attempt's, during the back-off
        self._retry_at = 0.0  # monotonic time before which no new attempt is made
        self._backoff = 0.0
        self._thread: ThreadPoolExecutor | None = None
        self.load_seconds: float | None = None

    @property
    def state(self) -> str:
        """loaded, loading, failed (the last attempt), or idle (not asked yet)."""
        if self.loaded is not None:
            return "loaded"
        if self._lock.locked():
            return "loading"
        return "failed" if self.last_error else "idle"

    async def load(self) -> LoadedBark:
        async with self._lock:
            if self.loaded is None:
                if self._failure is not None and time.monotonic() < self._retry_at:
                    raise ModelLoadError(str(self._failure))
                try:
                    self.loaded = await self._attempt()
                except ModelLoadError as err:
                    self._backoff = min(LOAD_BACKOFF_MAX, max(LOAD_BACKOFF_MIN, 2 * self._backoff))
                    self._failure, self._retry_at = err, time.monotonic() + self._backoff
                    raise
                self._failure, self._backoff = None, 0.0
            return self.loaded

    async def _attempt(self) -> LoadedBark:
        """One attempt; failures become ``ModelLoadError`` (logged)."""
        model, started = self.settings.model, time.monotonic()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=LOADER_THREAD)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(self._thread, load_bark, self.settings)
        except ModelLoadError as err:
            self.last_error = str(err)
            _LOGGER.error("Model not loaded: %s", err)
            raise
        except Exception as err:
            self.last_error = f"Loading Bark model '{model}' failed: {err}"
            _LOGGER.exception("Model not loaded")
            raise ModelLoadError(self.last_error) from err
        finally:
            self._thread.shutdown(wait=False)
        self.last_error = None
        self.load_seconds = time.monotonic() - started
        _LOGGER.info("Loaded %s in %.1f s (%s)", model, self.load_seconds, _memory(loaded))
        return loaded

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)


def _memory(loaded: LoadedBark) -> str:
    """What the model takes: the process's peak resident memory (what a small board must hold),
    and on CUDA the GPU memory allocated."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = f"peak memory {peak:.0f} MiB"
    if loaded.device.type == "cuda":
        text += f", GPU {torch.cuda.memory_allocated(loaded.device) / 2**20:.0f} MiB"
    return text
