"""The Bark engine: one lazily loaded model shared by every connection.

Model work never runs on the event loop, so ``describe`` is answered while Bark loads or speaks.
A sentence's way: ``start_sentence`` (on the event loop) starts a short task — the cache, the
model (loaded once: ``loader.py``), then ``prepare`` on the I/O thread (voice prompt read, text
tokenized, inputs copied to the device), then ``Scheduler.submit``, which returns the sentence's
``AudioStream`` at once. The scheduler thread (``fast/batch.py``) decodes the sentences of every
connection together; ``Sentence.play`` turns the stream's pieces into PCM chunks when the
sentence's turn comes, so the first sentence plays while later ones are made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any

import torch

from . import metrics
from .cache import AudioCache, SingleFlight, cache_key
from .contract import HealthCheckResult, TtsEngine, register
from .errors import BadModelOutput, ModelLoadError, OutOfMemory, SynthesisCancelled, TtsError
from .fast import Cancelled
from .fast.batch import Scheduler, SpeechRequest
from .fast.program import NonFiniteLogits
from .length_cap import SEMANTIC_RATE_HZ
from .loader import LoadedBark, ModelLoader
from .pcm import SAMPLE_RATE, SAMPLE_WIDTH, chunked, to_pcm
from .prepare import prepare
from .prompts import Prompt, VoiceGone
from .recorded_voices import RecordedVoices
from .sentences import Turn
from .settings import EngineSettings
from .synthesis import Sentence
from .voice_reader import VoiceReader
from .voices import Voice, VoiceLibrary

_LOGGER = logging.getLogger(__name__)

HEALTH_PHRASE = "Test."
# A sentence in preparation this long holds the I/O thread every sentence needs: unhealthy.
STUCK_PREPARATION_S = 30.0
# Part of every cache key: change it when the same settings start to give other audio.
GENERATION_RULES = "suno-0.1.5"


def voice_library(settings: EngineSettings, recorded: RecordedVoices | None = None) -> VoiceLibrary:
    """Voices with their per-language defaults: the default voice for its language(s), then
    ``language_voices``; raises ``UnknownVoice`` for a name that does not exist (a seed's too)."""
    library = VoiceLibrary(settings.voices_dir, recorded)
    voice = library.resolve(settings.voice)
    defaults = {language: voice.name for language in voice.languages}
    for language, name in {**defaults, **settings.language_voices}.items():
        library.set_default(language, name)
    for name in settings.generation.voice_seeds:  # a seed for a voice that does not exist is a typo
        library.resolve(name)
    return library


@register
class BarkEngine(TtsEngine):
    """Speaks text with Bark; front ends talk to it through the ``TtsEngine`` contract."""

    name = "bark"

    def __init__(self, settings: EngineSettings, *, loaded: LoadedBark | None = None) -> None:
        """``loaded``: an already loaded model (the benchmark's in-memory one) instead of loading."""
        self.settings = settings
        self.generation = settings.generation
        model = settings.model
        # Voices from recordings: those made before are listed now, new ones once made.
        self.recorded = RecordedVoices(settings.voices_dir, model.data_dir, model.model, settings.clone)
        self.recorded.start()
        try:
            self.voices = voice_library(settings, self.recorded)
        except BaseException:
            self.recorded.close()
            raise
        self.default_voice = self.voices.resolve(settings.voice)
        mb = settings.cache_size_mb if settings.cache else 0
        self.cache = AudioCache(settings.model.data_dir / "cache", int(mb * 2**20)) if mb else None
        self.loader = ModelLoader(settings.model, loaded)
        self.started = time.monotonic()
        self.sentences = 0  # generated since start (replays from the cache are the cache's hits)
        self.audio_seconds = 0.0
        self._speaking_error: str | None = None  # e.g. the GPU ran out of memory
        self._preparing: dict[int, float] = {}  # sentences being prepared -> since when
        self.voice_reader = VoiceReader(self.voices)
        self._scheduler: Scheduler | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bark-io")  # off the loop
        # The cache as requests see it: a repeat that misses it waits for the one being made.
        self.flight = SingleFlight(self.cache) if self.cache is not None else None
        self.samples_per_chunk = settings.samples_per_chunk  # synthesis.Synthesizer

    @property
    def _bark(self) -> LoadedBark | None:
        return self.loader.loaded

    @property
    def last_error(self) -> str | None:
        """The last load failure's message, else the last failure while speaking (for status)."""
        return self.loader.last_error or self._speaking_error

    async def load(self) -> LoadedBark:
        """The model, loaded once (``ModelLoader``: on its own thread, with a back-off)."""
        return await self.loader.load()

    # --- the contract -------------------------------------------------------------------

    async def warm_up(self) -> None:
        try:
            await self.load()
        except ModelLoadError:
            pass  # logged by the loader; requests retry and report it

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
        samples = round(self.generation.sentence_silence * SAMPLE_RATE)
        return list(chunked(bytes(samples * SAMPLE_WIDTH), self.settings.samples_per_chunk))

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel_all()

    def start_sentence(self, sentence: str, voice: Voice, turn: Turn) -> Sentence:
        return Sentence(self, sentence, voice, turn)

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
        stuck = min(self._preparing.values(), default=time.monotonic())  # the oldest
        if time.monotonic() - stuck > STUCK_PREPARATION_S:
            return HealthCheckResult(
                False,
                f"a sentence has been in preparation for {time.monotonic() - stuck:.0f} s: the I/O "
                "thread is stuck, no sentence can start",
                self.get_status(),
            )
        state = f"loaded on {self._bark.device}" if self._bark else "not loaded yet (loads on first request)"
        return HealthCheckResult(True, f"model {self.settings.model.model} {state}", self.get_status())

    def get_status(self) -> dict[str, Any]:
        """Model state and counters, for health checks and logs."""
        bark = self._bark
        status: dict[str, Any] = {
            "engine": self.name,
            "model": self.settings.model.model,
            "loaded": bark is not None,
            "core": self._core(),
            "device": str(bark.device) if bark else self.settings.model.device,
            "dtype": str(bark.dtype).replace("torch.", "") if bark else None,
            "precision": bark.precision if bark else self.settings.model.precision,
            "threads": bark.threads if bark and bark.threads else torch.get_num_threads(),
            "voices": len(self.voices.list(read_folder=False)),
            "custom_voices": len(self.voices.known_custom_voices()),
            "custom_voices_skipped": self.voices.skipped(),
            "model_state": self.loader.state,
            "load_seconds": round(self.loader.load_seconds, 2) if self.loader.load_seconds else None,
            "default_voice": self.default_voice.name,
            "sentences_pending": self._pending(),  # being prepared, waiting for a row or being made
            "voice_reads_stuck": self.voice_reader.stuck(),
            "recordings": self.recorded.status(),  # voices from recordings: made, failed, waiting
            "lookahead": self.lookahead,
            "batch": self._batch_status(),
            "sentences": self.sentences,
            "audio_seconds": round(self.audio_seconds, 2),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "last_error": self.last_error,
            "cache": self.cache is not None,
            "audio_streaming": self.audio_in_pieces() if bark else self.settings.audio_streaming,
        }
        if self.cache is not None:
            status.update(self.cache.stats())
        if bark is not None:
            status["decode"] = bark.core.decode_paths()
            status["self_check"] = bark.self_check
        if bark is not None and bark.device.type == "cuda":
            status["gpu_memory_mib"] = round(torch.cuda.memory_allocated(bark.device) / 2**20, 1)
            status["gpu_reserved_mib"] = round(torch.cuda.memory_reserved(bark.device) / 2**20, 1)
            status["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(bark.device) / 2**20, 1)
        return status

    def _pending(self) -> int:
        scheduler = self._scheduler
        return len(self._preparing) + (scheduler.running + scheduler.waiting if scheduler is not None else 0)

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
        self.voice_reader.close()
        self.recorded.close()
        self.loader.close()

    def _cache_key(self, sentence: str, voice: Voice) -> str:
        """Everything that shapes the audio; a custom voice file's change invalidates its entries."""
        source = voice.path.stat() if voice.path and voice.path.exists() else None
        fingerprint = (source.st_size, source.st_mtime_ns) if source else None
        generation = self.generation
        return cache_key(
            sentence,
            voice.name,
            fingerprint,
            self.settings.model.model,
            self._core(),
            self._bark.precision,
            self.audio_in_pieces(),  # sentences in pieces take their fine codes from partial context
            dataclasses.asdict(generation.sampling),
            generation.max_speech_ratio,
            GENERATION_RULES,
            generation.seed_for(voice.name),
        )

    @property
    def lookahead(self) -> int:
        """Sentences of one text made beside the one being played (``--lookahead``).

        With batching the next sentences ride along in the batch of the one playing; two at most
        by default, so one long text cannot take every row from other clients.
        """
        wanted = 2 if self.settings.lookahead is None else self.settings.lookahead
        return min(wanted, self._capacity() - 1)  # 0 where one sentence is decoded at a time

    def _core(self) -> str:
        """The core in use: the configured one until loaded; transformers' if ours fell back."""
        return self._bark.core.name if self._bark is not None else self.settings.model.core

    def _capacity(self) -> int:
        """Sentences decoded together: ``--max-batch``, or fewer where GPU memory held fewer."""
        return self._bark.core.max_batch if self._bark is not None else self.settings.model.max_batch

    def audio_in_pieces(self) -> bool:
        """Release audio inside a sentence? ``auto``: on a GPU, where generation outruns playback."""
        bark, wanted = self._bark, self.settings.audio_streaming
        if bark is None or not bark.core.releases_pieces or wanted == "off":
            return False
        return wanted == "on" or bark.device.type == "cuda"

    # --- a sentence's way ----------------------------------------------------------------

    async def begin(self, sentence: Sentence) -> bytes | None:
        """The cached audio of ``sentence``; else None, once it is submitted (``sentence.stream``)."""
        if self.flight is not None:
            await self.load()  # the key names what the load decided (precision, core, pieces)
            found = await self.flight.get_or_claim(self._cache_key(sentence.text, sentence.voice))
            if isinstance(found, bytes):
                return found
            sentence.claim = found
        bark = await self.load()
        token = id(sentence)
        self._preparing[token] = time.monotonic()
        try:
            prompt = await self._custom_prompt(sentence, bark)
            request = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._prepare, bark, sentence, prompt
            )
        finally:
            del self._preparing[token]
        if self._scheduler is None:
            self._scheduler = Scheduler(bark.core)
        sentence.limit = request.sampling.max_semantic_tokens  # the length cap prepare applied
        sentence.stream = self._scheduler.submit(request)
        return None

    async def _custom_prompt(self, sentence: Sentence, bark: LoadedBark) -> Prompt | None:
        """A custom voice's prompt, read off the I/O thread with a deadline (``voice_reader``);
        None for a built-in voice. A voice whose file went since it was resolved is spoken with
        the default voice, as an unknown one is."""
        if sentence.voice.path is None:
            return None
        try:
            return await self.voice_reader.prompt(sentence.voice, bark.model_dir)
        except VoiceGone as err:
            if sentence.voice == self.default_voice:
                raise
            _LOGGER.warning("%s Speaking with %s instead", err, self.default_voice.name)
            sentence.voice = self.default_voice
            return await self._custom_prompt(sentence, bark) if self.default_voice.path else None

    def _prepare(self, bark: LoadedBark, sentence: Sentence, prompt: Prompt | None) -> SpeechRequest:
        if prompt is None:
            prompt = self.voices.load(sentence.voice, bark.model_dir)
        seed = self.generation.seed_for(sentence.voice.name)
        return prepare(bark, sentence.text, prompt, self.generation.sampling, seed, sentence.turn,
                       max_speech_ratio=self.generation.max_speech_ratio,
                       in_pieces=self.audio_in_pieces())  # fmt: skip

    async def audio(self, sentence: Sentence) -> AsyncIterator[bytes]:
        """The sentence's PCM as the scheduler makes it; its failures as ``TtsError``s."""
        try:
            async with aclosing(aiter(sentence.stream)) as pieces:
                async for audio in pieces:
                    self.audio_seconds += len(audio) / SAMPLE_RATE
                    yield to_pcm(audio)
        except Cancelled as err:
            raise SynthesisCancelled("Synthesis was cancelled") from err
        except torch.cuda.OutOfMemoryError as err:
            raise await self._out_of_memory(err) from err
        except NonFiniteLogits as err:
            raise BadModelOutput(
                f"Bark produced invalid values for this sentence ({err}), so it was not spoken; "
                "the server log says more"
            ) from err

    def spoken(self, sentence: Sentence, samples: int, started: float) -> None:
        self.sentences += 1
        self._log_timing(sentence.text, samples, started)
        elapsed = time.monotonic() - started
        metrics.sentence_made(elapsed, samples / SAMPLE_RATE)
        if self.sentences == 1 and samples:  # what to expect of this machine, said once
            _LOGGER.info(
                "First sentence: %.1f s of speech in %.1f s, %.1f s of work per second of speech here%s",
                samples / SAMPLE_RATE,
                elapsed,
                elapsed * SAMPLE_RATE / samples,
                "" if elapsed * SAMPLE_RATE < samples else " (slower than real time: expect pauses)",
            )
        limit = sentence.limit
        if (
            limit < self.generation.sampling.max_semantic_tokens
            and samples >= (limit - 1) / SEMANTIC_RATE_HZ * SAMPLE_RATE * 0.99
        ):
            _LOGGER.debug(
                "Cut at %.1f s: Bark spoke on past the text's length (--max-speech-ratio) for %r",
                limit / SEMANTIC_RATE_HZ,
                sentence.text,
            )

    async def _out_of_memory(self, err: torch.cuda.OutOfMemoryError) -> OutOfMemory:
        """Free what the failed sentence held, so the next one starts clean; say what to do."""
        if self._bark is not None and self._bark.device.type == "cuda":
            device = self._bark.device

            def free() -> None:  # off the event loop, on the GPU that ran out
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()

            await asyncio.get_running_loop().run_in_executor(self._executor, free)
        self._speaking_error = f"GPU out of memory while speaking: {err}"
        _LOGGER.error("%s", self._speaking_error)
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
