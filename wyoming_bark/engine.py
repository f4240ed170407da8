"""The Bark engine: one lazily loaded model shared by every connection.

All model work (loading and generation) runs on a single worker thread, so the event loop stays
free to answer ``describe`` while Bark loads or speaks, and two requests never race on the GPU:
they take turns sentence by sentence. Text is spoken one sentence at a time, each with the same
voice prompt, so the first sentence's audio goes out while later ones are still being generated.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fast import Cancelled, SamplingSettings
from .model import LoadedBark, ModelLoadError, load_bark
from .text import SentenceSplitter, split_sentences
from .voices import Prompt, Voice, VoiceLibrary

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
SAMPLE_WIDTH = 2
CHANNELS = 1


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings; the defaults are Bark's own."""

    max_semantic_tokens: int = 768  # ~15 s of speech: Bark's limit per generation
    min_eos_p: float = 0.05
    text_temperature: float = 0.7
    waveform_temperature: float = 0.7
    fine_temperature: float = 0.5
    seed: int | None = None

    def sampling(self) -> SamplingSettings:
        """The fast core's view of these settings."""
        return SamplingSettings(
            text_temperature=self.text_temperature,
            waveform_temperature=self.waveform_temperature,
            fine_temperature=self.fine_temperature,
            min_eos_p=self.min_eos_p,
            max_semantic_tokens=self.max_semantic_tokens,
        )


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory for one request; caches are freed and the next may succeed."""


class SynthesisCancelled(Exception):
    """The requester went away; the generation was stopped early and its output dropped."""


def _cancel_criteria(cancel: threading.Event):
    """A transformers stopping criterion that ends generation once ``cancel`` is set."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return StoppingCriteriaList([_Cancelled()])


def pcm_chunks(audio: np.ndarray, samples_per_chunk: int) -> Iterator[bytes]:
    """Float audio in [-1, 1] -> 16-bit little-endian PCM, ``samples_per_chunk`` samples at a time."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    for start in range(0, len(pcm), samples_per_chunk):
        yield pcm[start : start + samples_per_chunk].tobytes()


class StreamingSession:
    """Buffers streamed text and releases whole sentences as soon as they are complete."""

    def __init__(self, voice: Voice) -> None:
        self.voice = voice
        self._splitter = SentenceSplitter()

    def add(self, chunk: str) -> list[str]:
        return self._splitter.add(chunk)

    def flush(self) -> list[str]:
        return self._splitter.finish()


class BarkEngine:
    """Speaks text with Bark; the Wyoming handler talks to nothing else."""

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
    ) -> None:
        self.model = model
        self.core = core
        self.data_dir = data_dir
        self.device = device
        self.voices = voices
        self.default_voice = voices.resolve(default_voice)
        self.settings = settings or GenerationSettings()
        self.samples_per_chunk = samples_per_chunk
        self.last_error: str | None = None
        self.started = time.monotonic()
        self.sentences = 0  # generated since start
        self.audio_seconds = 0.0
        self.pending = 0  # sentences queued for or running on the worker thread
        self._bark: LoadedBark | None = None
        self._load_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bark")

    @property
    def loaded(self) -> bool:
        return self._bark is not None

    async def load(self) -> LoadedBark:
        """Load the model once; after a failure the next call tries again."""
        async with self._load_lock:
            if self._bark is None:
                started = time.monotonic()
                loop = asyncio.get_running_loop()
                try:
                    self._bark = await loop.run_in_executor(
                        self._executor, load_bark, self.model, self.data_dir, self.device, self.core
                    )
                except ModelLoadError as err:
                    self.last_error = str(err)
                    _LOGGER.error("Model not loaded: %s", err)
                    raise
                except Exception as err:
                    self.last_error = f"Loading Bark model '{self.model}' failed: {err}"
                    _LOGGER.exception("Model not loaded")
                    raise ModelLoadError(self.last_error) from err
                self.last_error = None
                _LOGGER.info("Loaded %s in %.1f s", self.model, time.monotonic() - started)
            return self._bark

    def voice(self, name: str | None) -> Voice:
        """The named voice, or the default one (raises VoiceError for an unknown name)."""
        return self.default_voice if not name else self.voices.resolve(name)

    def session(self, voice: Voice) -> StreamingSession:
        return StreamingSession(voice)

    async def speak(self, text: str, voice: Voice) -> AsyncIterator[bytes]:
        """PCM chunks for ``text``, sentence by sentence."""
        for sentence in split_sentences(text):
            async for chunk in self.speak_sentence(sentence, voice):
                yield chunk

    async def speak_sentence(self, sentence: str, voice: Voice) -> AsyncIterator[bytes]:
        """PCM chunks for one sentence, generated on the worker thread."""
        bark = await self.load()
        prompt = self.voices.load(voice, bark.model_dir)
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._generate, bark, sentence, prompt, cancel
        )
        self.pending += 1
        try:
            audio = await future
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            self.pending -= 1
        self.sentences += 1
        self.audio_seconds += len(audio) / SAMPLE_RATE
        for chunk in pcm_chunks(audio, self.samples_per_chunk):
            yield chunk

    def _generate(self, bark: LoadedBark, text: str, prompt: Prompt, cancel: threading.Event) -> np.ndarray:
        """Text -> float audio at 24 kHz (runs on the worker thread)."""
        if cancel.is_set():
            raise SynthesisCancelled
        started = time.monotonic()
        inputs = bark.processor.tokenizer(
            text,
            return_tensors="pt",
            padding="max_length",
            max_length=256,
            truncation=True,
            add_special_tokens=False,
            return_attention_mask=True,
            return_token_type_ids=False,
        ).to(bark.device)
        history = {key: torch.from_numpy(value).to(bark.device) for key, value in prompt.items()}
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        try:
            if bark.fast is not None:
                audio = bark.fast.generate(
                    inputs.input_ids, inputs.attention_mask, history, self.settings.sampling(), cancel
                )
            else:
                audio = self._generate_transformers(bark, inputs, history, cancel)
        except Cancelled as err:
            raise SynthesisCancelled from err
        except torch.cuda.OutOfMemoryError as err:
            # Free what this request held so the next one starts clean.
            torch.cuda.empty_cache()
            self.last_error = f"GPU out of memory while speaking: {err}"
            _LOGGER.error("%s", self.last_error)
            raise OutOfMemory(
                "The GPU ran out of memory for this request; try shorter sentences, "
                "--model suno/bark-small, or free the GPU"
            ) from err
        elapsed = time.monotonic() - started
        seconds = len(audio) / SAMPLE_RATE
        _LOGGER.debug(
            "%.2f s of audio in %.2f s (RTF %.2f) for %r",
            seconds,
            elapsed,
            elapsed / max(seconds, 1e-9),
            text,
        )
        return audio

    def _generate_transformers(
        self, bark: LoadedBark, inputs, history, cancel: threading.Event
    ) -> np.ndarray:
        """The reference path: transformers' own ``BarkModel.generate``."""
        s = self.settings
        stop = _cancel_criteria(cancel)
        with torch.inference_mode():
            audio = bark.model.generate(
                **inputs,
                history_prompt=history,
                do_sample=True,
                min_eos_p=s.min_eos_p,
                semantic_max_new_tokens=s.max_semantic_tokens,
                semantic_temperature=s.text_temperature,
                coarse_temperature=s.waveform_temperature,
                fine_temperature=s.fine_temperature,
                semantic_stopping_criteria=stop,
                coarse_stopping_criteria=stop,
            )
        if cancel.is_set():
            raise SynthesisCancelled
        return audio[0].float().cpu().numpy()

    def status(self) -> dict:
        """Model state and counters, for health checks and logs."""
        bark = self._bark
        status = {
            "model": self.model,
            "loaded": bark is not None,
            "core": self.core,
            "device": str(bark.device) if bark else self.device,
            "dtype": str(bark.dtype).replace("torch.", "") if bark else None,
            "voices": len(self.voices.list()),
            "queue_depth": self.pending,
            "sentences": self.sentences,
            "audio_seconds": round(self.audio_seconds, 2),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "last_error": self.last_error,
        }
        if bark is not None and bark.device.type == "cuda":
            status["gpu_memory_mib"] = round(torch.cuda.memory_allocated(bark.device) / 2**20, 1)
            status["gpu_reserved_mib"] = round(torch.cuda.memory_reserved(bark.device) / 2**20, 1)
        return status

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
