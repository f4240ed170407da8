"""Bark generation on our core: semantic -> coarse -> fine -> EnCodec.

Every stage reproduces Suno's ``bark/generation.py`` (same windows, histories, masks and
end-of-speech rule; with greedy decoding the tokens are identical, see ``tests/test_suno.py``),
but the autoregressive stages decode into a static KV cache, one replayed CUDA graph per token,
the fine model uses SDPA, and weights stay in half precision on CUDA.

A sentence is a program (see ``program.py``): ``batch.Scheduler`` runs many, answering all their
steps with one batched decode; ``FastBark.solo`` runs one alone (the self-check, ``stages.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch

from .coarse import CoarseStage
from .fine import FinePieces, FineStage
from .model import BatchedStep, CausalGPT
from .program import (
    Audio,
    Cancelled,
    NonFiniteLogits,
    Prefill,
    Program,
    SamplingSettings,
    Step,
    random_seed,
    reply,
    requests,
)
from .sample import CoarseHead, SemanticHead
from .semantic import SemanticStage
from .shapes import BarkShapes

_LOGGER = logging.getLogger(__name__)

STREAM_CHUNK_FRAMES = 30  # release audio at least this many frames (0.4 s; later pieces grow) ...
STREAM_HOLDBACK_FRAMES = 30  # ... but not the last 0.4 s, whose fine codes may still change


class FastBark:
    """Bark generation over a loaded transformers ``BarkModel``'s weights.

    ``max_batch`` is how many sentences can be decoded together (one KV-cache row each). A
    ``Core`` (``core.py``), as ``TransformersCore`` is.
    """

    name = "fast"
    releases_pieces = True  # can release audio inside a sentence

    def __init__(self, bark, max_batch: int = 1) -> None:
        from transformers.models.bark.generation_configuration_bark import (
            BarkCoarseGenerationConfig,
            BarkFineGenerationConfig,
            BarkSemanticGenerationConfig,
        )

        self.bark = bark
        self.max_batch = max_batch
        config = bark.generation_config
        sem = BarkSemanticGenerationConfig(**config.semantic_config)
        coarse_cfg = BarkCoarseGenerationConfig(**config.coarse_acoustics_config)
        fine_cfg = BarkFineGenerationConfig(**config.fine_acoustics_config)
        codebook_size = config.codebook_size
        self.device = bark.semantic.input_embeds_layer.weight.device

        self.semantic = CausalGPT(bark.semantic)
        self.coarse = CausalGPT(bark.coarse_acoustics)
        self.semantic.setup_cache(max_batch)
        self.coarse.setup_cache(max_batch)
        semantic_head = SemanticHead(
            bark.semantic.config.output_vocab_size,
            sem.semantic_vocab_size,
            sem.semantic_pad_token,
            sem.eos_token_id,
            self.device,
        )
        coarse_head = CoarseHead(
            bark.coarse_acoustics.config.output_vocab_size,
            sem.semantic_vocab_size,
            codebook_size,
            self.device,
        )
        self.steps = {
            "semantic": BatchedStep(self.semantic, semantic_head, n_ints=3, n_floats=2),
            "coarse": BatchedStep(self.coarse, coarse_head, n_ints=3, n_floats=1),
        }
        self.hop = int(np.prod(bark.codec_model.config.upsampling_ratios))  # samples per frame
        self.shapes = BarkShapes(  # what the stages read: the configs above, kept only here
            sem,
            coarse_cfg,
            fine_cfg,
            codebook_size,
            coarse_cfg.coarse_rate_hz / sem.semantic_rate_hz * coarse_cfg.n_coarse_codebooks,
            self.device,
            self.semantic.block_size,
            self.semantic.embed,
            self.coarse.embed,
        )
        self.fine = FineStage(bark, fine_cfg, coarse_cfg.n_coarse_codebooks, codebook_size, self.device)

    # --- set-up -------------------------------------------------------------------------

    def on_device(self) -> contextlib.AbstractContextManager:
        """Make this core's GPU current for the calling thread (streams, events and graphs are
        per device: without it, work for ``cuda:1`` lands on ``cuda:0``)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def capture(self) -> dict[str, str]:
        """Capture each model's decode graphs (CUDA); a model whose capture fails decodes eagerly.

        Returns what failed, by model."""
        failed = {}
        with self.on_device(), torch.inference_mode():
            for name, part in self.graphed().items():
                try:
                    part.capture()
                except Exception as err:  # noqa: BLE001 - any capture failure: run this part eagerly
                    failed[name] = str(err)
                    part.use_eager(f"capture failed: {err}")
        return failed

    def compile(self) -> dict[str, str]:
        """Compile each model's decode step (``BatchedStep.compile``), before ``capture``; a model
        whose compile fails stays uncompiled. Returns what failed, by model."""
        failed = {}
        with self.on_device(), torch.inference_mode():
            for name, step in self.steps.items():
                try:
                    step.compile()
                except Exception as err:  # noqa: BLE001 - inductor, a compiler, a kernel: run uncompiled
                    failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return failed

    def graphed(self) -> dict[str, BatchedStep | FineStage]:
        """The parts that replay CUDA graphs, by name: the two decode steps and the fine pass."""
        return {**self.steps, "fine": self.fine}

    def decode_paths(self) -> dict[str, str]:
        """How each part runs (for status): ``compiled``, ``cuda graphs``, both, or ``eager``."""
        return {name: part.path for name, part in self.graphed().items()}

    # --- answering programs -------------------------------------------------------------

    @torch.inference_mode()
    def run(self, work: Sequence[tuple[int, Prefill | Step]]) -> list[int | NonFiniteLogits]:
        """Answer (cache row, op) pairs: steps of one model in one batched step, equal prefills together.

        Every group is launched before any result is read, so the GPU runs them back to back. A
        row whose logits were not finite gets a ``NonFiniteLogits`` instead of a token, and that
        model stops replaying graphs (the guard is an output of every step).
        """
        groups: dict[tuple[str, int], list[int]] = {}
        for i, (_, op) in enumerate(work):
            length = -1 if isinstance(op, Step) else op.embeds.shape[1]
            groups.setdefault((op.gpt, length), []).append(i)
        launched = []
        for (name, length), members in groups.items():
            rows = [work[i][0] for i in members]
            ops = [work[i][1] for i in members]
            step = self.steps[name]
            if length < 0:
                out = step.launch(
                    rows, [(op.token, op.pos, *op.ints) for op in ops], [op.floats for op in ops]
                )
                launched.append((name, members, step.read, out, rows))
                continue
            logits = step.gpt.prefill(torch.cat([op.embeds for op in ops]), self.shapes.to_device(rows))
            ints = self.shapes.to_device([op.ints for op in ops])
            floats = self.shapes.to_device([op.floats for op in ops], torch.float32)
            packed = torch.stack([step.head(logits, ints, floats), torch.isfinite(logits).all(-1).long()])
            launched.append((name, members, torch.Tensor.tolist, packed, range(len(members))))
        answers: list[int | NonFiniteLogits] = [0] * len(work)
        for name, members, read, out, picks in launched:
            tokens, finite = read(out)
            for i, pick in zip(members, picks):
                answers[i] = (
                    tokens[pick]
                    if finite[pick]
                    else NonFiniteLogits(f"the {name} model produced non-finite logits")
                )
            if not all(finite[pick] for pick in picks):
                self._non_finite(name)
        return answers

    def _non_finite(self, name: str) -> None:
        step = self.steps[name]
        if step.graphs:
            step.use_eager("a replayed step produced non-finite logits")
            _LOGGER.error(
                "The %s model produced non-finite logits in a replayed CUDA graph: that sentence "
                "fails, and %s steps run eagerly from now on",
                name,
                name,
            )
        else:
            _LOGGER.error("The %s model produced non-finite logits: that sentence fails", name)

    def solo(
        self, program: Program, cancel: threading.Event | None = None
    ) -> Generator[np.ndarray, None, Any]:
        """Drive one program alone in cache row 0: yield its audio, return its value."""
        answer = None
        while True:
            _check(cancel)
            with torch.inference_mode():
                try:
                    op = program.send(answer)
                except StopIteration as done:
                    return done.value
                if not isinstance(op, Audio):
                    answer = reply(op, self.run([(0, one) for one in requests(op)]))
                    continue
            answer = None
            yield op.make()

    # --- programs -----------------------------------------------------------------------

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
        chunk_frames: int = STREAM_CHUNK_FRAMES,
        holdback: int = STREAM_HOLDBACK_FRAMES,
    ) -> Program:
        """One sentence, tokenized text (1, T) and a voice prompt -> ``Audio``.

        (``cancel`` is for the interface: whoever drives the program stops it between requests.)

        With ``in_pieces``, audio comes in pieces while the coarse stage is still running: after each
        coarse window the fine stage runs over the codes so far (as Bark would for a sentence that
        ended there) and the audio of all but the last ``holdback`` frames is released; those
        frames' codes are then kept, so the pieces join into exactly the audio of the final codes
        (EnCodec's 24 kHz decoder is causal: a prefix decodes to a prefix). Only the fine codebooks
        of early frames can differ from a whole-sentence run — and Bark samples those anyway.
        Each piece is at least as long as all audio before it: the first comes quickly, and the
        fine stage (a full 1024-frame pass each time) runs a few times per sentence, not per window.
        """
        seed = random_seed() if seed is None else seed
        semantic = SemanticStage(self.shapes, input_ids, attention_mask, history, sampling, seed)
        coarse = CoarseStage(self.shapes, semantic, history, sampling, seed)
        pieces = FinePieces(self.fine, self.decode, self.hop, history, sampling, seed)
        # Two sub-programs run side by side: the semantic stage, and the coarse window running now
        # (None between windows, and before the first can start). Each is waiting for the answer
        # to the request it last yielded; a finished one has no request.
        semantic_program: Program | None = semantic.program()
        window: Program | None = None
        semantic_request: Any = next(semantic_program)
        window_request: Any = None
        codes = torch.zeros(2, 0, dtype=torch.long, device=self.device)  # coarse codes so far
        while True:
            if window is None and coarse.ready():
                window = coarse.window()
                window_request = next(window)
            # One yield asks for both requests at once, so a driver can batch them; the answers
            # come back as a tuple in the same order.
            asked = [request for request in (semantic_request, window_request) if request is not None]
            if not asked:
                break
            answers = iter((yield tuple(asked)))
            window_done = False
            if semantic_request is not None:
                try:
                    semantic_request = semantic_program.send(next(answers))
                except StopIteration:
                    semantic_request = semantic_program = None
            if window_request is not None:
                try:
                    window_request = window.send(next(answers))
                except StopIteration as finished:  # the window's value: all coarse codes so far
                    window_request = window = None
                    codes, window_done = finished.value, True
            if in_pieces and window_done and not coarse.done:  # the last piece goes out below
                stable = codes.shape[1] - holdback
                if stable - pieces.emitted >= max(chunk_frames, pieces.emitted):
                    yield Audio(pieces.release(codes, stable))
        if not in_pieces or codes.shape[1] > pieces.emitted:
            yield Audio(pieces.release(codes, codes.shape[1]))

    @torch.inference_mode()
    def decode(self, fine: torch.Tensor) -> np.ndarray:
        """EnCodec (transformers') codes -> float audio at 24 kHz."""
        if fine.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.bark.codec_decode(fine[None]).float().cpu().numpy().reshape(-1)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled
