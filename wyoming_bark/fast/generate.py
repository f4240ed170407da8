"""Bark generation on our core: semantic -> coarse -> fine -> EnCodec.

Every stage reproduces transformers' ``BarkModel.generate`` (same windows, histories, masks and
EOS rule; with greedy decoding the tokens are identical, see ``tests/test_fast.py``), but the
autoregressive stages decode one token per replayed CUDA graph into a static KV cache, the fine
model uses SDPA, and weights stay in half precision on CUDA.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CausalGPT, GraphedStep, fine_logits

NEG_INF = float("-inf")
STREAM_CHUNK_FRAMES = 30  # release audio at least this many frames (0.4 s) at a time ...
STREAM_HOLDBACK_FRAMES = 30  # ... but not the last 0.4 s, whose fine codes may still change


@dataclass(frozen=True)
class SamplingSettings:
    """Bark's sampling knobs; a temperature of 0 (or None) means greedy decoding."""

    text_temperature: float | None = 0.7
    waveform_temperature: float | None = 0.7
    fine_temperature: float | None = 0.5
    min_eos_p: float = 0.05
    max_semantic_tokens: int = 768
    allow_early_stop: bool = True  # False: never end before max_semantic_tokens (benchmarks)


class Cancelled(Exception):
    """Generation was stopped through the cancel event."""


def pick(scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Sample from ``softmax(scores / temperature)``, or argmax when ``temperature`` is 0.

    Sampling uses the exponential-race trick (argmax of p / Exp(1)), which draws from the same
    distribution as ``multinomial`` without a host sync, so it can live inside a CUDA graph.
    """
    greedy = scores.argmax(-1)
    probs = F.softmax(scores / temperature.clamp_min(1e-5), dim=-1)
    sampled = (probs / torch.empty_like(probs).exponential_(1)).argmax(-1)
    return torch.where(temperature > 0, sampled, greedy)


def semantic_head(logits, suppress, eos_only, min_eos_p, temperature) -> torch.Tensor:
    """Mask non-semantic tokens; force EOS once it is likely enough (transformers' rule); sample."""
    scores = logits.float() + suppress
    eos_p = (F.softmax(scores, dim=-1) * (eos_only == 0)).sum(-1, keepdim=True)
    scores = torch.where(eos_p > min_eos_p, scores + eos_only, scores)
    return pick(scores, temperature)


def coarse_head(logits, codebook_masks, parity, temperature) -> torch.Tensor:
    """Allow only the tokens of the codebook whose turn it is (they alternate); sample."""
    return pick(logits.float() + codebook_masks[parity], temperature)


def _temperature(value: float | None) -> float:
    return float(value or 0.0)


class FastBark:
    """Bark generation over a loaded transformers ``BarkModel``'s weights."""

    def __init__(self, bark) -> None:
        from transformers.models.bark.generation_configuration_bark import (
            BarkCoarseGenerationConfig,
            BarkFineGenerationConfig,
            BarkSemanticGenerationConfig,
        )

        self.bark = bark
        config = bark.generation_config
        self.sem = BarkSemanticGenerationConfig(**config.semantic_config)
        self.coarse_cfg = BarkCoarseGenerationConfig(**config.coarse_acoustics_config)
        self.fine_cfg = BarkFineGenerationConfig(**config.fine_acoustics_config)
        self.codebook_size = config.codebook_size
        self.device = bark.semantic.input_embeds_layer.weight.device

        self.semantic = CausalGPT(bark.semantic)
        self.coarse = CausalGPT(bark.coarse_acoustics)
        self.semantic.setup_cache()
        self.coarse.setup_cache()

        sem_vocab = bark.semantic.config.output_vocab_size
        eos = self.sem.eos_token_id
        suppress = torch.zeros(1, sem_vocab)
        suppress[:, self.sem.semantic_vocab_size : self.sem.semantic_pad_token] = NEG_INF
        suppress[:, self.sem.semantic_pad_token + 1 :] = NEG_INF
        eos_only = torch.full((1, sem_vocab), NEG_INF)
        eos_only[:, eos] = 0.0
        no_stop = suppress.clone()
        no_stop[:, eos] = NEG_INF
        self._suppress = {True: suppress.to(self.device), False: no_stop.to(self.device)}
        self.semantic_step = GraphedStep(
            self.semantic,
            semantic_head,
            suppress=suppress,
            eos_only=eos_only,
            min_eos_p=torch.tensor(0.05),
            temperature=torch.tensor(0.7),
        )

        offset, size = self.sem.semantic_vocab_size, self.codebook_size
        masks = torch.full((2, bark.coarse_acoustics.config.output_vocab_size), NEG_INF)
        masks[0, offset : offset + size] = 0.0  # first codebook
        masks[1, offset + size :] = 0.0  # second codebook (and, as in transformers, the rest)
        self.coarse_step = GraphedStep(
            self.coarse,
            coarse_head,
            codebook_masks=masks,
            parity=torch.tensor(0),
            temperature=torch.tensor(0.7),
        )
        self.ratio = (
            self.coarse_cfg.coarse_rate_hz / self.sem.semantic_rate_hz * self.coarse_cfg.n_coarse_codebooks
        )
        self.hop = int(np.prod(bark.codec_model.config.upsampling_ratios))  # samples per frame

    # --- set-up -------------------------------------------------------------------------

    def warmup(self) -> None:
        """Capture the decode graphs and run one short generation, so the first request is fast."""
        with torch.inference_mode():
            self.semantic_step.capture()
            self.coarse_step.capture()
            ids = torch.zeros(1, 8, dtype=torch.long, device=self.device)
            self.generate(ids, torch.ones_like(ids), None, SamplingSettings(max_semantic_tokens=8))

    # --- stages -------------------------------------------------------------------------

    @torch.inference_mode()
    def semantic_tokens(
        self, input_ids, attention_mask, history, s: SamplingSettings, cancel=None
    ) -> torch.Tensor:
        """Text -> semantic tokens (1-D, without the EOS token)."""
        sem = self.sem
        length = sem.max_input_semantic_length
        ids = (input_ids[:, :length] + sem.text_encoding_offset).masked_fill(
            attention_mask[:, :length] == 0, sem.text_pad_token
        )
        ids = F.pad(ids, (0, length - ids.shape[1]), value=sem.text_pad_token)
        hist = torch.full((1, length), sem.semantic_pad_token, dtype=torch.long, device=self.device)
        if history is not None:
            prompt = history["semantic_prompt"][-length:].to(self.device)
            hist[0, : len(prompt)] = prompt
        embed = self.semantic.embed
        infer = torch.tensor([[sem.semantic_infer_token]], device=self.device)
        embeds = torch.cat([embed(ids) + embed(hist), embed(infer)], dim=1)
        prefix = embeds.shape[1]
        step = self.semantic_step
        step.inputs["suppress"].copy_(self._suppress[s.allow_early_stop])
        step.inputs["min_eos_p"].fill_(s.min_eos_p if s.allow_early_stop else 2.0)
        step.inputs["temperature"].fill_(_temperature(s.text_temperature))
        logits = self.semantic(embeds, torch.arange(prefix, device=self.device))[:, -1]
        token = semantic_head(logits, **step.inputs).view(1, 1)
        # Token k is predicted at position prefix + k - 2: positions end at the block size.
        limit = min(s.max_semantic_tokens, self.semantic.block_size - prefix + 1)
        out = []
        for i in range(limit):
            if int(token) == sem.eos_token_id:
                break
            out.append(token)
            if i + 1 < limit:
                _check(cancel)
                token = step(token, prefix + i)
        return torch.cat(out, dim=1)[0] if out else torch.zeros(0, dtype=torch.long, device=self.device)

    def _coarse_histories(self, history) -> tuple[torch.Tensor, torch.Tensor]:
        """Voice prompt -> aligned semantic and flattened coarse histories, as transformers trims them."""
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        if history is None:
            return empty, empty
        semantic = history["semantic_prompt"].to(self.device).long()
        coarse = history["coarse_prompt"].to(self.device).long().clone()
        for n in range(1, coarse.shape[0]):
            coarse[n] += self.codebook_size * n
        coarse = coarse.T.reshape(-1) + self.sem.semantic_vocab_size
        max_semantic_history = math.floor(self.coarse_cfg.max_coarse_history / self.ratio)
        n_semantic = min(
            max_semantic_history, len(semantic) - len(semantic) % 2, math.floor(len(coarse) / self.ratio)
        )
        n_coarse = round(n_semantic * self.ratio)
        return semantic[len(semantic) - n_semantic :], coarse[len(coarse) - n_coarse :][:-2]

    @torch.inference_mode()
    def coarse_tokens(
        self, semantic: torch.Tensor, history, s: SamplingSettings, cancel=None
    ) -> torch.Tensor:
        """Semantic tokens -> the first two EnCodec codebooks, shape (2, frames), values 0..1023."""
        codes = torch.zeros(2, 0, dtype=torch.long, device=self.device)
        for codes in self.coarse_windows(semantic, history, s, cancel):
            pass
        return codes

    @torch.inference_mode()
    def coarse_windows(
        self, semantic: torch.Tensor, history, s: SamplingSettings, cancel=None
    ) -> Iterator[torch.Tensor]:
        """Like ``coarse_tokens``, yielding the codes so far, shape (2, frames), after every window."""
        cfg = self.coarse_cfg
        n_out = round(
            math.floor(len(semantic) * self.ratio / cfg.n_coarse_codebooks) * cfg.n_coarse_codebooks
        )
        semantic_history, coarse = self._coarse_histories(history)
        n_history = len(coarse)
        base = len(semantic_history)
        semantic_all = torch.cat([semantic_history, semantic.long()])
        max_semantic_history = math.floor(cfg.max_coarse_history / self.ratio)
        infer = torch.tensor([cfg.coarse_infer_token], device=self.device)
        step = self.coarse_step
        step.inputs["temperature"].fill_(_temperature(s.waveform_temperature))
        generated = 0
        while generated < n_out:
            _check(cancel)
            index = base + round(generated / self.ratio)
            window = semantic_all[max(0, index - max_semantic_history) :][: cfg.max_coarse_input_length]
            window = F.pad(
                window, (0, cfg.max_coarse_input_length - len(window)), value=cfg.coarse_semantic_pad_token
            )
            prompt = torch.cat(
                [window, infer, coarse[len(coarse) - min(len(coarse), cfg.max_coarse_history) :]]
            )
            n_new = min(cfg.sliding_window_len, n_out - generated)
            # Each window re-reads a shifted semantic context, so its prefix is new: one prefill.
            logits = self.coarse(
                self.coarse.embed(prompt[None]), torch.arange(len(prompt), device=self.device)
            )
            token = coarse_head(
                logits[:, -1], step.inputs["codebook_masks"], torch.tensor(0), step.inputs["temperature"]
            )
            tokens = [token.view(1, 1)]
            for i in range(1, n_new):
                tokens.append(step(tokens[-1], len(prompt) + i - 1, parity=i % 2))
            coarse = torch.cat([coarse, torch.cat(tokens, dim=1)[0]])
            generated += n_new
            flat = coarse[n_history:]
            yield torch.remainder(
                flat.view(-1, cfg.n_coarse_codebooks) - self.sem.semantic_vocab_size, self.codebook_size
            ).T

    @torch.inference_mode()
    def fine_tokens(self, coarse: torch.Tensor, history, s: SamplingSettings) -> torch.Tensor:
        """Two coarse codebooks -> all eight, shape (8, frames), in 1024-frame windows as transformers."""
        cfg, size = self.fine_cfg, self.codebook_size
        fine_model = self.bark.fine_acoustics
        n_coarse, frames = coarse.shape[0], coarse.shape[1]
        codes = F.pad(coarse.T.long(), (0, cfg.n_fine_codebooks - n_coarse), value=size)
        n_history = 0
        if history is not None:
            past = history["fine_prompt"].to(self.device).long().T[-cfg.max_fine_history_length :]
            codes, n_history = torch.cat([past, codes]), len(past)
        n_pad = max(0, cfg.max_fine_input_length - len(codes))
        codes = F.pad(codes, (0, 0, 0, n_pad), value=size)[None]
        window, hop = cfg.max_fine_input_length, cfg.max_fine_history_length
        n_loops = max(0, math.ceil((frames - (window - n_history)) / hop)) + 1
        temperature = s.fine_temperature
        for n in range(n_loops):
            start = min(n * hop, codes.shape[1] - window)
            fill = min(n_history + n * hop, codes.shape[1] - hop)
            rel = fill - start
            buffer = codes[:, start : start + window]  # a view: predictions land in codes
            for book in range(n_coarse, cfg.n_fine_codebooks):
                logits = fine_logits(fine_model, book, buffer)[:, :, :size].float()
                if not temperature:
                    preds = logits[:, rel:].argmax(-1)
                else:
                    probs = F.softmax(logits / temperature, dim=-1)[:, rel:window]
                    preds = torch.multinomial(probs.reshape(-1, size), 1).view(1, -1)
                buffer[:, rel:, book] = preds
        return codes[0, n_history : n_history + frames].T

    @torch.inference_mode()
    def decode(self, fine: torch.Tensor) -> np.ndarray:
        """EnCodec (transformers') codes -> float audio at 24 kHz."""
        if fine.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.bark.codec_decode(fine[None]).float().cpu().numpy().reshape(-1)

    @torch.inference_mode()
    def generate_stream(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history: dict[str, torch.Tensor] | None,
        s: SamplingSettings,
        cancel: threading.Event | None = None,
        chunk_frames: int = STREAM_CHUNK_FRAMES,
        holdback: int = STREAM_HOLDBACK_FRAMES,
    ) -> Iterator[np.ndarray]:
        """Audio in pieces while the coarse stage is still running, instead of all at the end.

        After each coarse window the fine stage runs over the codes so far (as Bark would for a
        sentence that ended there) and the audio of all but the last ``holdback`` frames is
        released; those frames' codes are then kept, so the pieces join into exactly the audio of
        the final codes (EnCodec's 24 kHz decoder is causal: a prefix decodes to a prefix).
        Only the fine codebooks of early frames can differ from a whole-sentence run — and Bark
        samples those anyway.
        """
        semantic = self.semantic_tokens(input_ids, attention_mask, history, s, cancel)
        total = round(math.floor(len(semantic) * self.ratio / 2) * 2) // 2
        kept: torch.Tensor | None = None
        emitted = 0
        for coarse in self.coarse_windows(semantic, history, s, cancel):
            frames = coarse.shape[1]
            stable = frames if frames == total else frames - holdback
            if frames < total and stable - emitted < chunk_frames:
                continue
            _check(cancel)
            fine = self.fine_tokens(coarse, history, s).clone()
            if kept is not None:
                fine[:, :emitted] = kept[:, :emitted]
            kept = fine
            yield self.decode(fine[:, :stable])[emitted * self.hop :]
            emitted = stable

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history: dict[str, torch.Tensor] | None,
        s: SamplingSettings,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """Tokenized text (1, T) and a voice prompt -> float audio."""
        semantic = self.semantic_tokens(input_ids, attention_mask, history, s, cancel)
        coarse = self.coarse_tokens(semantic, history, s, cancel)
        _check(cancel)
        return self.decode(self.fine_tokens(coarse, history, s))


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled
