"""Transformers' core: its own ``BarkModel.generate``, behind the ``Core`` interface as ours.

``--core transformers`` picks it, and the self-check falls back to it when our core disagrees
with transformers on a device. A sentence is a program like ours, but it asks the models for
nothing: it generates the whole sentence when first advanced (on the scheduler thread) and yields
one ``Audio``. So the scheduler, the audio thread and the engine need not know which core runs.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .program import Audio, Cancelled, Program, SamplingSettings


def _stop_when(cancel: threading.Event | None):
    """A transformers stopping criterion that ends generation once ``cancel`` is set."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            stop = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])


def suno_coarse_suppressed(bark) -> list[int]:
    """Coarse ids transformers must never draw to follow Suno: pad, infer and unused ids above the
    second codebook, which transformers' own mask leaves open."""
    first_unused = bark.generation_config.semantic_config["semantic_vocab_size"] + 2 * (
        bark.generation_config.codebook_size
    )
    return list(range(first_unused, bark.coarse_acoustics.config.output_vocab_size))


class TransformersCore:
    """``BarkModel.generate`` one sentence at a time (a ``Core``)."""

    name = "transformers"
    releases_pieces = False  # a whole sentence at a time
    max_batch = 1

    def __init__(self, bark) -> None:
        self.bark = bark
        self.device = bark.device

    def decode_paths(self) -> dict[str, str]:
        return {"semantic": "transformers", "coarse": "transformers", "fine": "transformers"}

    def run(self, work):  # the scheduler's batched step: our programs never ask for one
        raise RuntimeError("the transformers core decodes inside its programs")

    def speech(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history: dict[str, torch.Tensor] | None,
        sampling: SamplingSettings,
        seed: int | None = None,
        *,
        in_pieces: bool = False,
        cancel: threading.Event | None = None,
    ) -> Program:
        """One sentence -> one ``Audio`` (``in_pieces`` is ignored: there are no pieces)."""
        stop = _stop_when(cancel)
        # Seeded on a generator state of its own: the process's (other sentences', the caller's)
        # random numbers are left as they were.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            audio = self.bark.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                history_prompt=history,
                do_sample=True,
                min_eos_p=sampling.min_eos_p,
                semantic_max_new_tokens=sampling.max_semantic_tokens,
                semantic_temperature=sampling.text_temperature,
                coarse_temperature=sampling.waveform_temperature,
                fine_temperature=sampling.fine_temperature,
                semantic_stopping_criteria=stop,
                coarse_stopping_criteria=stop,
                coarse_suppress_tokens=suno_coarse_suppressed(self.bark),
            )
        if cancel is not None and cancel.is_set():
            raise Cancelled
        samples: np.ndarray = audio[0].float().cpu().numpy()
        yield Audio(lambda: samples)
