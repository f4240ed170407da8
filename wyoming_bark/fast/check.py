"""The fast core checks itself on the device it runs on, at load.

Three checks, each returning what it found wrong by part (an empty dict is a pass):

- ``check_graphs``: every captured decode graph against the eager step on the same inputs and
  cache state, rows at staggered positions, both models launched together through the real
  ``launch``/``read`` path, and the fine pass's graph against the eager pass. Catches a graph
  captured on the wrong device (it replays nothing), a shared workspace, a frozen output.
- ``check_against_transformers``: our networks against transformers' own modules on the same
  weights, teacher-forced (same inputs at every position), so the comparison is of logits, not of
  free-running tokens that fp16 rounding may send elsewhere at a near tie.
- ``check_sentence``: one short sentence as a real scheduler job, audio made by the audio thread
  on its own stream, the way requests are served.

Tolerances are relative to the largest reference logit: tight in float32 (where our core is exact
up to summation order), loose enough in half precision for kernels that sum in another order.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .model import fine_logits
from .program import SamplingSettings

# int8: activations are quantized per call over the whole input, so a token run alone and the same
# token among forty get different scales (about 5 % of the largest logit on the tiny model).
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2, "int8": 0.1}
CHECK_SEED = 1234


def compare_logits(ours: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype | str) -> str | None:
    """None if ``ours`` matches ``reference`` within the tolerance of ``dtype``, else why not."""
    ours, reference = ours.float(), reference.float()
    if not torch.isfinite(ours).all():
        return "non-finite logits"
    if not torch.isfinite(reference).all():
        return "non-finite logits in the reference too (the weights themselves?)"
    scale = max(float(reference.abs().max()), 1.0)
    diff = float((ours - reference).abs().max())
    allowed = TOLERANCE.get(dtype, TOLERANCE[torch.float16]) * scale
    if diff > allowed:
        agree = float((ours.argmax(-1) == reference.argmax(-1)).float().mean())
        return f"logits differ by up to {diff:.3g} (allowed {allowed:.3g}); top-1 agreement {agree:.0%}"
    return None


def precision_of(gpt: torch.nn.Module) -> torch.dtype | str:
    """The precision one GPT's tolerance is for (``--precision auto`` may run each GPT in its own):
    ``int8`` if its linear layers are quantized, else its weights' dtype."""
    from ..int8_kernels import is_int8

    if any(is_int8(module) for module in gpt.modules()):
        return "int8"
    return next(gpt.parameters()).dtype


def precisions_of(fast) -> str:
    """Each GPT's precision (what the self-check's verdict depends on)."""
    from ..precision import QUANTIZED

    return ", ".join(str(precision_of(getattr(fast.bark, name))) for name in QUANTIZED)


def check_graphs(fast, only: str | None = None) -> dict[str, str]:
    """Replayed graphs (and compiled steps) against eager steps, every bucket, both models
    launched together; ``only``: that part alone."""
    steps = {
        name: step
        for name, step in fast.steps.items()
        if (step.graphs or step.compiled is not None) and only in (None, name)
    }
    fine = fast.fine.graph is not None and only in (None, "fine")
    if not steps and not fine:
        return {}
    problems: dict[str, str] = {}
    generator = torch.Generator().manual_seed(CHECK_SEED)
    with fast.on_device(), torch.inference_mode():
        on_device = torch.Generator(fast.device).manual_seed(CHECK_SEED)  # GBs of cache: fill in place
        for step in steps.values():  # a cache state no real sentence would leave behind
            for cache in step.gpt.caches:
                cache.k.normal_(generator=on_device)
                cache.v.normal_(generator=on_device)
        buckets = sorted(set().union(*(step.graphs or step.buckets for step in steps.values())))
        for b in buckets:
            rows = list(range(b))
            outputs = {}
            for name, step in steps.items():  # launch both, then read: they overlap as in serving
                ints = [_row_ints(step, row, generator) for row in rows]
                floats = [[0.7] + [0.05] * (step.floats.shape[1] - 1) for _ in rows]
                outputs[name] = step.launch(rows, ints, floats)
            for name, step in steps.items():
                if name in problems:
                    continue
                tokens, _ = step.read(outputs[name])
                replayed = outputs[name][1][:b].clone()
                eager_packed, eager_logits = step.run_eager(b)  # same inputs, same cache state
                problem = compare_logits(replayed, eager_logits, precision_of(step.gpt.hf))
                if problem is None:
                    exact = (replayed == eager_logits).all(-1).tolist()
                    eager_tokens = eager_packed[0].tolist()
                    if any(same and t != e for same, t, e in zip(exact, tokens, eager_tokens)):
                        problem = "tokens differ from the eager step's on equal logits"
                if problem is not None:
                    problems[name] = f"batch-{b} graph: {problem}"
        if fine and (problem := _check_fine_graph(fast.fine, generator)):
            problems["fine"] = problem
    return problems


def _check_fine_graph(fine, generator: torch.Generator) -> str | None:
    """The fine pass replayed against the eager pass on the same random window."""
    codes = torch.randint(0, fine.size, fine.codes.shape, generator=generator).to(fine.codes)
    fine.rel.fill_(fine.window // 4)
    fine.key.fill_(CHECK_SEED)
    fine.counter.fill_(8)
    fine.temperature.fill_(0.5)
    fine.codes.copy_(codes)
    fine.graph.replay()
    replayed = fine.codes.clone()
    fine.codes.copy_(codes)
    fine.run_eager()
    agree = float((replayed == fine.codes).float().mean())
    return None if agree >= 0.99 else f"{agree:.1%} of the replayed codes equal the eager pass's"


def _row_ints(step, row: int, generator: torch.Generator) -> list[int]:
    """Token, a staggered position, then the head's integers (seed, draw, flag)."""
    vocab = min(step.gpt.embed.num_embeddings, 10_000)
    token = int(torch.randint(0, vocab, (), generator=generator))
    position = (17 + 131 * row) % (step.gpt.max_seq - 1)
    head = [CHECK_SEED + row, row, row % 2][: step.ints.shape[1] - 2]
    return [token, position, *head]


def check_against_transformers(fast, prefix: int = 40, steps: int = 8, frames: int = 96) -> dict[str, str]:
    """Our semantic, coarse and fine networks against transformers' modules, teacher-forced;
    EnCodec's output must be finite."""
    problems: dict[str, str] = {}
    generator = torch.Generator().manual_seed(CHECK_SEED)
    with fast.on_device(), torch.inference_mode():
        for name, gpt in (("semantic", fast.semantic), ("coarse", fast.coarse)):
            ids = torch.randint(0, gpt.embed.num_embeddings, (1, prefix + steps), generator=generator)
            ids = ids.to(fast.device)
            reference = gpt.hf(input_ids=ids).logits[0, prefix - 1 :]
            row = torch.zeros(1, dtype=torch.long, device=fast.device)
            ours = [gpt.prefill(gpt.embed(ids[:, :prefix]), row)[0]]
            for i in range(steps - 1):
                position = torch.full((1,), prefix + i, dtype=torch.long, device=fast.device)
                ours.append(gpt.step(ids[:, prefix + i : prefix + i + 1], position)[0])
            problem = compare_logits(torch.stack(ours), reference[:steps], precision_of(gpt.hf))
            if problem:
                problems[name] = problem
        hf_fine = fast.bark.fine_acoustics
        codes = torch.randint(0, fast.shapes.codebook_size, (1, frames, 8), generator=generator).to(
            fast.device
        )
        for book in (hf_fine.config.n_codes_given, hf_fine.config.n_codes_total - 1):
            reference = hf_fine(codebook_idx=book, input_ids=codes).logits
            problem = compare_logits(fine_logits(hf_fine, book, codes), reference, precision_of(hf_fine))
            if problem:
                problems["fine"] = f"codebook {book}: {problem}"
                break
        audio = fast.decode(codes[0, :16].T)
        if not np.isfinite(audio).all() or not len(audio):
            problems["codec"] = "EnCodec made no or non-finite audio"
    return problems


def check_sentence(fast, timeout: float = 120.0) -> dict[str, str]:
    """One short sentence as a scheduler job, its audio made in pieces by the audio thread."""
    from .batch import DONE, Job, Scheduler

    pieces: list[np.ndarray] = []
    outcome: list[object] = []
    finished = threading.Event()

    def emit(item) -> None:
        if isinstance(item, np.ndarray):
            pieces.append(item)
        else:
            outcome.append(item)
            finished.set()

    ids = torch.zeros(1, 8, dtype=torch.long, device=fast.device)
    settings = SamplingSettings(max_semantic_tokens=16)
    program = fast.speech(ids, torch.ones_like(ids), None, settings, seed=CHECK_SEED, in_pieces=True)
    scheduler = Scheduler(fast, name="bark-check")
    try:
        scheduler.enqueue(Job(program, emit))
        if not finished.wait(timeout):
            return {"sentence": f"no audio within {timeout:.0f} s"}
    finally:
        scheduler.close()
        scheduler.join(timeout)
    if outcome[0] is not DONE:
        return {"sentence": f"{type(outcome[0]).__name__}: {outcome[0]}"}
    audio = np.concatenate(pieces) if pieces else np.zeros(0)
    if not len(audio) or not np.isfinite(audio).all():
        return {"sentence": "no or non-finite audio"}
    return {}


def compare_models(reference, other, length: int = 64, frames: int = 96) -> dict[str, dict[str, float]]:
    """Two cores on the same weights (e.g. float32 and int8), teacher-forced: for each of the
    semantic, coarse and fine models, top-1 agreement and the max and median logit difference
    relative to the reference's largest logit; for the fine stage run whole (greedy, same coarse
    codes), the share of equal codes and the RMS difference of the decoded audio relative to the
    reference's. On random weights logits are flat, so these rank variants; real weights should
    be checked by ear (and speech recognition)."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    report: dict[str, dict[str, float]] = {}

    def measure(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
        ours, theirs = ours.float(), theirs.float()
        diff = (ours - theirs).abs()
        scale = max(float(theirs.abs().max()), 1e-6)
        report[name] = {
            "top1_agreement": round(float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()), 4),
            "max_diff": round(float(diff.max()) / scale, 5),
            "median_diff": round(float(diff.median()) / scale, 5),
        }

    with torch.inference_mode():
        for name in ("semantic", "coarse"):
            vocab = getattr(reference, name).embed.num_embeddings
            ids = torch.randint(0, vocab, (1, length), generator=generator).to(reference.device)
            measure(
                name,
                getattr(other, name).hf(input_ids=ids).logits[0],
                getattr(reference, name).hf(input_ids=ids).logits[0],
            )
        codes = torch.randint(0, reference.shapes.codebook_size, (1, frames, 8), generator=generator)
        codes = codes.to(reference.device)
        fine = reference.bark.fine_acoustics.config
        books = range(fine.n_codes_given, fine.n_codes_total)
        measure(
            "fine",
            torch.cat([fine_logits(other.bark.fine_acoustics, book, codes)[0] for book in books]),
            torch.cat([fine_logits(reference.bark.fine_acoustics, book, codes)[0] for book in books]),
        )
        # The whole fine stage, greedy, from the same coarse codes, and the audio EnCodec makes of
        # each result: how far the difference in logits carries into what is heard.
        coarse = codes[0, :, :2].T
        ours = other.fine.tokens(coarse, None, 0.0, CHECK_SEED, 0)
        theirs = reference.fine.tokens(coarse, None, 0.0, CHECK_SEED, 0)
        report["fine"]["codes_agreement"] = round(float((ours == theirs).float().mean()), 4)
        heard, expected = other.decode(ours), reference.decode(theirs)
        rms = max(float(np.sqrt(np.mean(expected**2))), 1e-9)
        report["audio"] = {"rms_difference": round(float(np.sqrt(np.mean((heard - expected) ** 2))) / rms, 4)}
    return report
