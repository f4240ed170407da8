"""The Bark engine: one lazily loaded model shared by every connection.

Model work never runs on the event loop, so ``describe`` is answered while Bark loads or speaks:
loading runs on a worker thread, generation on the scheduler thread of ``fast.batch``, which
decodes the sentences of every connection together, up to ``max_batch`` at a time. Text is spoken
one sentence at a time, each with the same voice prompt, so the first sentence's audio goes out
while later ones are still being generated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import AudioCache, cache_key
from .contract import SENTENCE_TURN, HealthCheckResult, TtsEngine
from .errors import BadModelOutput, ModelLoadError, OutOfMemory, SynthesisCancelled, TtsError
from .fast import Cancelled, SamplingSettings
from .fast.batch import Scheduler
from .fast.program import NonFiniteLogits, Program, random_seed
from .hub import LoadedBark, load_bark
from .length_cap import DEFAULT_RATIO, SEMANTIC_RATE_HZ, max_semantic_tokens
from .voices import Prompt, Voice, VoiceLibrary

_LOGGER = logging.getLogger(__name__)

# After a failed model load, no new attempt for this long (doubling while it keeps failing).
LOAD_BACKOFF_MIN, LOAD_BACKOFF_MAX = 2.0, 60.0

SAMPLE_RATE = TtsEngine.sample_rate
SAMPLE_WIDTH = TtsEngine.sample_width
HEALTH_PHRASE = "Test."
LOADER_THREAD = "bark-load"  # the model loads on a thread of this name (prefix)
# Part of every cache key: change it when the same settings start to give other audio.
GENERATION_RULES = "suno-0.1.5"
_WHITESPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class GenerationSettings:
    """What shapes a sentence's audio besides its text and voice: Bark's sampling knobs
    (``sampling``, Bark's own defaults), the seeds, and the silence between sentences."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = None
    voice_seeds: dict[str, int] = field(default_factory=dict)  # per-voice default seed
    sentence_silence: float = 0.0  # seconds of silence between sentences
    max_speech_ratio: float = DEFAULT_RATIO  # see length_cap; 0: no cap but Bark's own

    def seed_for(self, voice: str) -> int | None:
        return self.voice_seeds.get(voice, self.seed)


def tokenize(tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Text -> (input ids, attention mask), each (1, 256), as Suno's ``generate_text_semantic``
    reads it: whitespace collapsed, no special tokens, cut at 256 tokens."""
    inputs = tokenizer(
        _WHITESPACE_RE.sub(" ", text).strip(),
        return_tensors="pt",
        padding="max_length",
        max_length=256,
        truncation=True,
        add_special_tokens=False,
        return_attention_mask=True,
        return_token_type_ids=False,
    )
    return inputs.input_ids, inputs.attention_mask


def to_pcm(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] -> 16-bit little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def chunked(pcm: bytes, samples_per_chunk: int) -> Iterator[bytes]:
    step = samples_per_chunk * SAMPLE_WIDTH
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]


class BarkEngine(TtsEngine):
    """Speaks text with Bark; front ends talk to it through the ``TtsEngine`` contract."""

    name = "bark"

    def __init__(
        self,
        model: str,
        data_dir: Path,
        device: str,
        voices: VoiceLibrary,
        default_voice: str,
        settings: GenerationSettings | None = None,
        samples_per_chunk: int = 1024,
        core: str = "fast",
        cache_size_mb: float | None = None,
        audio_streaming: str = "auto",
        max_batch: int = 8,
        lookahead: int | None = None,
        self_check: str = "on",
        loaded: LoadedBark | None = None,
        precision: str = "auto",
        threads: int | None = None,
    ) -> None:
        """``loaded``: an already loaded model (the benchmark's in-memory one) instead of ``model``."""
        self.model = model
        self.core = core
        self.self_check = self_check  # on | off | strict
        self.precision = precision  # auto | fp32 | int8 (precision.py)
        self.threads = threads  # CPU threads; None: one per physical core
        self.audio_streaming = audio_streaming  # auto | on | off
        self.max_batch = max_batch  # sentences decoded together (fast core)
        self._lookahead = lookahead  # None: auto
        self.data_dir = data_dir
        self.device = device
        self.voices = voices
        self.default_voice = voices.resolve(default_voice)
        self.settings = settings or GenerationSettings()
        self.samples_per_chunk = samples_per_chunk
        self.cache = AudioCache(data_dir / "cache", int(cache_size_mb * 2**20)) if cache_size_mb else None
        self.last_error: str | None = None
        self.started = time.monotonic()
        self.sentences = 0  # generated since start (replays from the cache are the cache's hits)
        self.audio_seconds = 0.0
        self.pending = 0  # sentences queued for or running on the scheduler
        self._active: set[threading.Event] = set()  # cancel flags of running generations
        self._bark: LoadedBark | None = loaded
        self._scheduler: Scheduler | None = None
        self._load_lock = asyncio.Lock()
        self._load_failure: ModelLoadError | None = None  # the last attempt's, during the back-off
        self._retry_at = 0.0  # monotonic time before which no new attempt is made
        self._backoff = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bark-io")  # voice files
        self._loader: ThreadPoolExecutor | None = None  # the load attempt's thread
        # Cache keys of sentences being made now: a repeat that misses the cache waits for them.
        self._making: dict[str, asyncio.Future[bytes | None]] = {}

    async def load(self) -> LoadedBark:
        """Load the model once. After a failure, calls within a back-off (2 s, doubling up to
        60 s while it keeps failing) get the same error: requests that arrived together cause one
        attempt, not one each."""
        async with self._load_lock:
            if self._bark is None:
                if self._load_failure is not None and time.monotonic() < self._retry_at:
                    raise ModelLoadError(str(self._load_failure))
                try:
                    self._bark = await self._load_now()
                except ModelLoadError as err:
                    self._backoff = min(LOAD_BACKOFF_MAX, max(LOAD_BACKOFF_MIN, 2 * self._backoff))
                    self._load_failure, self._retry_at = err, time.monotonic() + self._backoff
                    raise
                self._load_failure, self._backoff = None, 0.0
            return self._bark

    async def _load_now(self) -> LoadedBark:
        """One attempt, on a thread that ends with it; failures become ``ModelLoadError`` (logged).

        On a CPU the OpenMP workers a thread starts live as long as the thread, and a second set
        of them alive slows every decode step (see ``fast.batch._Releaser``)."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=LOADER_THREAD)
        try:
            bark = await loop.run_in_executor(
                self._loader,
                load_bark,
                self.model,
                self.data_dir,
                self.device,
                self.core,
                self.max_batch,
                self.self_check,
                self.precision,
                self.threads,
            )
        except ModelLoadError as err:
            self.last_error = str(err)
            _LOGGER.error("Model not loaded: %s", err)
            raise
        except Exception as err:
            self.last_error = f"Loading Bark model '{self.model}' failed: {err}"
            _LOGGER.exception("Model not loaded")
            raise ModelLoadError(self.last_error) from err
        finally:
            self._loader.shutdown(wait=False)
        self.last_error = None
        _LOGGER.info("Loaded %s in %.1f s", self.model, time.monotonic() - started)
        return bark

    # --- the contract -------------------------------------------------------------------

    async def warm_up(self) -> None:
        try:
            await self.load()
        except ModelLoadError:
            pass  # logged by load(); requests retry and report it

    def resolve_voice(self, name: str | None, language: str | None = None) -> Voice:
        if name:
            return self.voices.resolve(name)
        return (self.voices.for_language(language) if language else None) or self.default_voice

    def get_available_voices(self) -> list[Voice]:
        return self.voices.list()

    def set_voice(self, name: str) -> bool:
        try:
            self.default_voice = self.voices.resolve(name)
        except TtsError:
            return False
        return True

    def silence(self) -> list[bytes]:
        samples = round(self.settings.sentence_silence * SAMPLE_RATE)
        return list(chunked(bytes(samples * SAMPLE_WIDTH), self.samples_per_chunk))

    def stop(self) -> None:
        for cancel in list(self._active):
            cancel.set()

    async def speak_sentence(self, sentence: str, voice: str | None = None) -> AsyncIterator[bytes]:
        """PCM chunks for one sentence: from the cache, or as the worker thread generates them."""
        chosen = self.resolve_voice(voice)
        if self.cache:
            await self.load()  # the key names what the load decided (precision, core, streaming)
        key = self._cache_key(sentence, chosen) if self.cache else None
        cached = await asyncio.to_thread(self.cache.get, key) if key else None
        if cached is None and key in self._making:  # the same sentence is being made: wait for it
            cached = await asyncio.shield(self._making[key])
        if cached is not None:
            for chunk in chunked(cached, self.samples_per_chunk):
                yield chunk
            return
        made: asyncio.Future[bytes | None] | None = None
        if key and key not in self._making:
            made = self._making[key] = asyncio.get_running_loop().create_future()
        pieces: list[bytes] = []
        try:
            async for audio in self._generate_async(sentence, chosen):
                pcm = to_pcm(audio)
                pieces.append(pcm)
                for chunk in chunked(pcm, self.samples_per_chunk):
                    yield chunk
            whole = b"".join(pieces)
            if made is not None:
                made.set_result(whole)
            if key:
                await asyncio.to_thread(self.cache.put, key, whole)
        finally:
            if made is not None:
                if not made.done():  # failed or abandoned: those waiting make it themselves
                    made.set_result(None)
                del self._making[key]

    async def health_check(self, synthesize: bool = False) -> HealthCheckResult:
        if synthesize:
            try:
                pcm = b"".join([chunk async for chunk in self.speak_sentence(HEALTH_PHRASE)])
            except TtsError as err:
                return HealthCheckResult(False, str(err), self.get_status())
            seconds = len(pcm) / SAMPLE_WIDTH / SAMPLE_RATE
            return HealthCheckResult(True, f"spoke {seconds:.2f} s of audio", self.get_status())
        if self._bark is None and self.last_error:
            return HealthCheckResult(False, self.last_error, self.get_status())
        state = f"loaded on {self._bark.device}" if self._bark else "not loaded yet (loads on first request)"
        return HealthCheckResult(True, f"model {self.model} {state}", self.get_status())

    def get_status(self) -> dict[str, Any]:
        """Model state and counters, for health checks and logs."""
        bark = self._bark
        status: dict[str, Any] = {
            "engine": self.name,
            "model": self.model,
            "loaded": bark is not None,
            "core": self._core(),
            "device": str(bark.device) if bark else self.device,
            "dtype": str(bark.dtype).replace("torch.", "") if bark else None,
            "precision": bark.precision if bark else self.precision,
            "threads": torch.get_num_threads(),
            "voices": len(self.voices.list(read_folder=False)),
            "default_voice": self.default_voice.name,
            "sentences_pending": self.pending,  # waiting for a row or being made
            "lookahead": self.lookahead,
            "batch": self._batch_status(),
            "sentences": self.sentences,
            "audio_seconds": round(self.audio_seconds, 2),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "last_error": self.last_error,
            "cache": self.cache is not None,
            "audio_streaming": self.streams_audio() if bark else self.audio_streaming,
        }
        if self.cache is not None:
            status.update(self.cache.stats())
        if bark is not None:
            status["decode"] = bark.core.decode_paths()
            status["self_check"] = bark.self_check
        if bark is not None and bark.device.type == "cuda":
            status["gpu_memory_mib"] = round(torch.cuda.memory_allocated(bark.device) / 2**20, 1)
            status["gpu_reserved_mib"] = round(torch.cuda.memory_reserved(bark.device) / 2**20, 1)
        return status

    def _batch_status(self) -> dict[str, Any]:
        """Rows in use and how full the batched decode steps have been."""
        scheduler = self._scheduler
        if scheduler is None:
            return {"max": self._capacity(), "running": 0, "waiting": 0}
        return {
            "max": scheduler.capacity,
            "running": scheduler.running,
            "waiting": scheduler.waiting,
            **scheduler.classes(),  # waited for now, or made ahead
            "preempted": scheduler.preempted,
            "steps": scheduler.steps,
            "mean_size": round(scheduler.batched_tokens / max(scheduler.steps, 1), 2),
            "ms_per_step": round(1000 * scheduler.busy_s / max(scheduler.steps, 1), 2),
        }

    def close(self) -> None:
        self.stop()
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler.join(timeout=10)  # torch must not be mid-kernel when the process exits
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)

    # --- generation ---------------------------------------------------------------------

    def _cache_key(self, sentence: str, voice: Voice) -> str:
        """Everything that shapes the audio; a custom voice file's change invalidates its entries."""
        source = voice.path.stat() if voice.path and voice.path.exists() else None
        fingerprint = (source.st_size, source.st_mtime_ns) if source else None
        s = self.settings
        return cache_key(
            sentence,
            voice.name,
            fingerprint,
            self.model,
            self._core(),
            self._bark.precision,
            self.streams_audio(),  # streamed sentences take their fine codes from partial context
            dataclasses.asdict(s.sampling),
            s.max_speech_ratio,
            GENERATION_RULES,
            s.seed_for(voice.name),
        )

    @property
    def lookahead(self) -> int:
        """Sentences of one text made beside the one being played (``--lookahead``).

        With batching the next sentences ride along in the batch of the one playing; two at most
        by default, so one long text cannot take every row from other clients.
        """
        wanted = 2 if self._lookahead is None else self._lookahead
        return min(wanted, self._capacity() - 1)  # 0 where one sentence is decoded at a time

    def _core(self) -> str:
        """The core in use: the configured one until loaded; transformers' if ours fell back."""
        return self._bark.core.name if self._bark is not None else self.core

    def _capacity(self) -> int:
        """Sentences decoded together: ``--max-batch``, or fewer where GPU memory held fewer."""
        return self._bark.core.max_batch if self._bark is not None else self.max_batch

    def streams_audio(self) -> bool:
        """Release audio inside a sentence? ``auto``: on a GPU, where generation outruns playback."""
        bark = self._bark
        if bark is None or not bark.core.streams_audio or self.audio_streaming == "off":
            return False
        return self.audio_streaming == "on" or bark.device.type == "cuda"

    async def _generate_async(self, sentence: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        """Float audio pieces for one sentence, as the scheduler thread makes them."""
        bark = await self.load()
        # Off the event loop: a voice file is read from disk (and a custom one may be large or odd).
        prompt = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.voices.load, voice, bark.model_dir
        )
        cancel = threading.Event()
        seed = self.settings.seed_for(voice.name)
        if seed is None:  # drawn now, so that the sentence can start again exactly (a preemption)
            seed = random_seed()
        sampling = self.settings.sampling
        limit = max_semantic_tokens(sentence, self.settings.max_speech_ratio, sampling.max_semantic_tokens)
        sampling = dataclasses.replace(sampling, max_semantic_tokens=limit)

        def program() -> Program:
            return self._program(bark, sentence, prompt, sampling, seed, cancel)

        if self._scheduler is None:
            self._scheduler = Scheduler(bark.core)
        started, samples = time.monotonic(), 0
        self._active.add(cancel)
        self.pending += 1
        try:
            turn = SENTENCE_TURN.get()
            urgent, client = (turn.now, turn.client) if turn is not None else (None, None)
            async for audio in self._scheduler.stream(program(), cancel, urgent, client, restart=program):
                samples += len(audio)
                self.audio_seconds += len(audio) / SAMPLE_RATE
                yield audio
            if cancel.is_set():  # stop() came after the scheduler was done with it: still stopped
                raise SynthesisCancelled("Synthesis was cancelled")
            self.sentences += 1
            self._log_timing(sentence, samples, started)
            if limit < self.settings.sampling.max_semantic_tokens and samples >= (
                (limit - 1) / SEMANTIC_RATE_HZ * SAMPLE_RATE * 0.99
            ):
                _LOGGER.debug(
                    "Cut at %.1f s: Bark spoke on past the text's length (--max-speech-ratio) for %r",
                    limit / SEMANTIC_RATE_HZ,
                    sentence,
                )
        except Cancelled as err:
            raise SynthesisCancelled("Synthesis was cancelled") from err
        except torch.cuda.OutOfMemoryError as err:
            raise await self._out_of_memory(err) from err
        except NonFiniteLogits as err:
            raise BadModelOutput(
                f"Bark produced invalid values for this sentence ({err}), so it was not spoken; "
                "the server log says more"
            ) from err
        finally:  # also when the listener goes away: the scheduler drops the job
            cancel.set()
            self.pending -= 1
            self._active.discard(cancel)

    def _program(
        self,
        bark: LoadedBark,
        text: str,
        prompt: Prompt,
        s: SamplingSettings,
        seed: int | None,
        cancel: threading.Event,
    ) -> Program:
        """Text -> ``Audio`` at 24 kHz, in one piece or several (runs on the scheduler thread)."""
        ids, mask = (tensor.to(bark.device) for tensor in tokenize(bark.processor.tokenizer, text))
        history = {key: torch.from_numpy(value).to(bark.device) for key, value in prompt.items()}
        stream = self.streams_audio()
        yield from bark.core.speech(ids, mask, history, s, seed, stream, cancel=cancel)

    async def _out_of_memory(self, err: torch.cuda.OutOfMemoryError) -> OutOfMemory:
        """Free what the failed sentence held, so the next one starts clean; say what to do."""
        if self._bark is not None and self._bark.device.type == "cuda":
            device = self._bark.device

            def free() -> None:  # off the event loop, on the GPU that ran out
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()

            await asyncio.get_running_loop().run_in_executor(self._executor, free)
        self.last_error = f"GPU out of memory while speaking: {err}"
        _LOGGER.error("%s", self.last_error)
        return OutOfMemory(
            "The GPU ran out of memory for this request; try shorter sentences, a smaller "
            "--max-batch, --model suno/bark-small, or free the GPU"
        )

    @staticmethod
    def _log_timing(text: str, samples: int, started: float) -> None:
        elapsed, seconds = time.monotonic() - started, samples / SAMPLE_RATE
        if samples == 0:  # Bark ended at once: there is no real-time factor
            _LOGGER.debug("No audio (Bark ended the sentence at once) in %.2f s for %r", elapsed, text)
            return
        _LOGGER.debug(
            "%.2f s of audio in %.2f s (RTF %.2f) for %r",
            seconds,
            elapsed,
            elapsed / max(seconds, 1e-9),
            text,
        )
