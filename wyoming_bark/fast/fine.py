"""Bark's fine stage: the six codebooks the coarse stage leaves out, over 1024-frame windows.

As Suno does it: the coarse codes (after the voice prompt's fine codes) are padded to
1024 frames, and for each later codebook the non-causal fine model predicts every frame after the
window's history. A window's pass — six forward passes over 1024 frames and their sampling — has
fixed shapes, so on CUDA it is captured once as a graph: the audio thread launches one graph per
window instead of ~1,700 kernels, which matters when the decode loop wants the GIL back every
couple of milliseconds.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .model import capture_graph, fine_logits
from .program import FINE_DRAWS, SamplingSettings, temperature
from .sample import race_noise


class FineStage:
    """Coarse codes -> all eight codebooks; one window at a time through static buffers."""

    def __init__(self, bark, cfg, n_coarse: int, codebook_size: int, device: torch.device) -> None:
        self.model = bark.fine_acoustics
        self.cfg, self.n_coarse, self.size, self.device = cfg, n_coarse, codebook_size, device
        self.window = cfg.max_fine_input_length
        shape = (1, self.window, cfg.n_fine_codebooks)
        self.codes = torch.full(shape, codebook_size, dtype=torch.long, device=device)
        self.rel = torch.zeros((), dtype=torch.long, device=device)  # first frame to predict
        self.key = torch.zeros(1, 1, dtype=torch.long, device=device)  # the sentence's seed
        self.counter = torch.zeros(1, 1, dtype=torch.long, device=device)  # draw base of the window
        self.temperature = torch.zeros(1, 1, dtype=torch.float32, device=device)
        self.positions = torch.arange(self.window, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_reason: str | None = None
        self.capture_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._lock = threading.Lock()  # one window at a time through the static buffers

    @property
    def path(self) -> str:
        return "cuda graphs" if self.graph is not None else "eager"

    def run_eager(self) -> None:
        """Predict the later codebooks of ``codes`` at frames from ``rel`` on, in place."""
        codes, size = self.codes, self.size
        later = self.positions >= self.rel
        offset = -self.rel * size  # draws numbered from frame ``rel``, as if the rest were not there
        for book in range(self.n_coarse, self.cfg.n_fine_codebooks):
            logits = fine_logits(self.model, book, codes)[0, :, :size].float()
            noise = race_noise(self.key, self.counter + book, logits.numel(), offset).view(logits.shape)
            sampled = (F.softmax(logits / self.temperature.clamp_min(1e-5), dim=-1) / noise).argmax(-1)
            preds = torch.where(self.temperature[0, 0] > 0, sampled, logits.argmax(-1))
            codes[0, :, book] = torch.where(later, preds, codes[0, :, book])

    def capture(self) -> None:
        """Record the window pass as one graph (CUDA only); raises ``GraphCaptureError``."""
        if self.capture_stream is None or self.graph is not None:
            return
        with torch.cuda.device(self.device):
            self.graph, _ = capture_graph(self.run_eager, self.capture_stream, None, "fine pass")

    def use_eager(self, reason: str) -> None:
        self.graph, self.eager_reason = None, reason

    def _pass(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run_eager()

    def tokens(
        self, coarse: torch.Tensor, fine_prompt: torch.Tensor | None, temperature: float, seed: int, draw: int
    ) -> torch.Tensor:
        """Two coarse codebooks -> all eight, shape (8, frames), in windows as Suno."""
        cfg, size, window, hop = self.cfg, self.size, self.window, self.cfg.max_fine_history_length
        n_coarse, frames = coarse.shape[0], coarse.shape[1]
        if n_coarse != self.n_coarse:
            raise ValueError(f"expected {self.n_coarse} coarse codebooks, got {n_coarse}")
        codes = F.pad(coarse.T.long(), (0, cfg.n_fine_codebooks - n_coarse), value=size)
        n_history = 0
        if fine_prompt is not None:
            past = fine_prompt.to(self.device).long().T[-hop:]
            codes, n_history = torch.cat([past, codes]), len(past)
        codes = F.pad(codes, (0, 0, 0, max(0, window - len(codes))), value=size)[None]
        n_loops = max(0, math.ceil((frames - (window - n_history)) / hop)) + 1
        with self._lock, torch.inference_mode():
            self.key.fill_(seed)
            self.temperature.fill_(temperature)
            for n in range(n_loops):
                start = min(n * hop, codes.shape[1] - window)
                fill = min(n_history + n * hop, codes.shape[1] - hop)
                self.codes.copy_(codes[:, start : start + window])
                self.rel.fill_(fill - start)
                self.counter.fill_((draw * 64 + n) * 8)
                self._pass()
                codes[:, start : start + window] = self.codes
        return codes[0, n_history : n_history + frames].T


class FinePieces:
    """A sentence's audio released in pieces: each piece's fine codes are kept, so the next piece
    continues exactly the audio already sent (EnCodec's decoder is causal)."""

    def __init__(
        self,
        fine: FineStage,
        decode: Callable[[torch.Tensor], np.ndarray],
        hop: int,
        history: dict[str, torch.Tensor] | None,
        sampling: SamplingSettings,
        seed: int,
    ) -> None:
        self.fine, self.decode, self.hop, self.seed = fine, decode, hop, seed
        self.prompt = history["fine_prompt"] if history is not None else None
        self.temperature = temperature(sampling.fine_temperature)
        self.draws = itertools.count(FINE_DRAWS)
        self.kept: torch.Tensor | None = None
        self.emitted = 0  # frames

    def release(self, codes: torch.Tensor, upto: int) -> Callable[[], np.ndarray]:
        """How to make the audio of frames ``emitted..upto`` of the coarse ``codes`` so far.

        Pieces must be made in order (each continues the fine codes of the one before).
        """
        start, draw = self.emitted, next(self.draws)
        self.emitted = upto

        def make() -> np.ndarray:
            fine = self.fine.tokens(codes, self.prompt, self.temperature, self.seed, draw).clone()
            if self.kept is not None:
                fine[:, :start] = self.kept[:, :start]
            self.kept = fine
            return self.decode(fine[:, :upto])[start * self.hop :]

        return make
