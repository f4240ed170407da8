"""Bark's transformers, re-run gpt-fast style over transformers' own weights.

``CausalGPT`` is the semantic or coarse model with a preallocated KV cache of ``batch`` rows, one
per stream being decoded. A prefill writes a prompt into chosen rows; a decode step advances the
first ``b`` rows by one token each, every row at its own position. Shapes depend only on ``b``,
so ``BatchedStep`` captures one CUDA graph per batch-size bucket and replays it for every token.
``fine_logits`` is the non-causal fine model with scaled-dot-product attention.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BUCKETS = (1, 2, 4, 8, 16, 32)  # batch sizes with a captured decode graph (CUDA)
# --compile: inductor's fused kernels (its default mode: fusion is what cuts a step's kernel count;
# "max-autotune-no-cudagraphs" also tunes each matmul, minutes more per batch size at the first
# start, its gain unmeasured). Never its own CUDA graphs: ours are captured over the compiled step.
COMPILE_MODE = "default"
SPAN = 128  # eager steps attend to cache positions up to the batch's highest, in steps of this


class KVCache(nn.Module):
    """Keys and values of ``batch`` rows, preallocated for ``max_seq`` positions plus a scratch one.

    Rows padded into a bucket write to the scratch position, which no real position attends to.
    """

    def __init__(self, batch: int, heads: int, max_seq: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, max_seq + 1, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("rows", torch.arange(batch, device=device), persistent=False)

    def write_prefix(self, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a prompt's keys and values (n, heads, T, dim) at positions 0..T-1 of ``rows``."""
        length = k.shape[2]
        self.k[rows, :, :length] = k
        self.v[rows, :, :length] = v

    def write_step(
        self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one token per row (the first ``b`` rows, row i at ``pos[i]``); return those rows'
        first ``span`` positions (all, with the scratch one, by default)."""
        b = k.shape[0]
        rows = self.rows[:b]
        self.k[rows, :, pos] = k[:, :, 0]
        self.v[rows, :, pos] = v[:, :, 0]
        return self.k[:b, :, :span], self.v[:b, :, :span]


def _attention(block: nn.Module, x: torch.Tensor, heads: int, store: Callable | None, mask, causal: bool):
    """Bark self-attention (fused qkv projection) through SDPA; ``store`` handles the KV cache."""
    batch, length, width = x.shape
    q, k, v = block.attn.att_proj(x).split(width, dim=2)
    q, k, v = (t.view(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if store is not None:
        cached = store(k, v)
        if cached is not None:
            k, v = cached
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return block.attn.out_proj(y.transpose(1, 2).reshape(batch, length, width))


def _block(block: nn.Module, x: torch.Tensor, heads: int, store=None, mask=None, causal=False):
    """Pre-LayerNorm transformer block, as in Bark."""
    x = x + _attention(block, block.layernorm_1(x), heads, store, mask, causal)
    return x + block.mlp(block.layernorm_2(x))


class CausalGPT(nn.Module):
    """Bark's semantic or coarse GPT with a static, batched KV cache.

    Holds transformers' ``BarkCausalModel`` and uses its embeddings, blocks and head directly, so
    no weights are duplicated and the checkpoint loader stays transformers'.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.heads = hf_model.config.num_heads
        self.block_size = hf_model.config.block_size
        self.max_seq = self.block_size
        self.batch = 0
        self.caches = nn.ModuleList()
        self.register_buffer("causal", torch.empty(0, dtype=torch.bool), persistent=False)

    @property
    def embed(self) -> nn.Embedding:
        return self.hf.input_embeds_layer

    @property
    def scratch(self) -> int:
        """The cache position that padding rows write to."""
        return self.max_seq

    def setup_cache(self, batch: int = 1, max_seq: int | None = None) -> None:
        """Allocate the KV cache once; its size never changes afterwards."""
        self.max_seq = max_seq or self.block_size
        self.batch = batch
        weight = self.embed.weight
        head_dim = weight.shape[1] // self.heads
        self.caches = nn.ModuleList(
            KVCache(batch, self.heads, self.max_seq, head_dim, weight.dtype, weight.device)
            for _ in self.hf.layers
        )
        size = self.max_seq + 1
        self.causal = torch.tril(torch.ones(size, size, dtype=torch.bool, device=weight.device))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(self.hf.layernorm_final(x))

    def prefill(self, embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Run prompts ``embeds`` (n, T, C) at positions 0..T-1 into cache ``rows``; last logits (n, V)."""
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        x = embeds + self.hf.position_embeds_layer(positions)
        for block, cache in zip(self.hf.layers, self.caches):

            def store(k, v, cache=cache):
                cache.write_prefix(rows, k, v)

            x = _block(block, x, self.heads, store, causal=True)
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """One token for each of the first ``b`` rows: ``tokens`` (b, 1) at ``pos`` (b,); logits (b, V).

        ``span`` limits attention to the first positions of the cache (it must exceed every real
        row's position; padding rows, at the scratch position, then see only masked-in garbage)."""
        x = self.embed(tokens) + self.hf.position_embeds_layer(pos.clamp_max(self.block_size - 1))[:, None]
        mask = self.causal[pos][:, None, None, :span]  # each row sees its own past and itself
        for block, cache in zip(self.hf.layers, self.caches):
            store = lambda k, v, cache=cache: cache.write_step(pos, k, v, span)
            x = _block(block, x, self.heads, store, mask)
        return self._logits(x[:, -1])


def fine_logits(hf_fine: nn.Module, codebook: int, codes: torch.Tensor) -> torch.Tensor:
    """Logits of the fine model for ``codebook`` given ``codes`` (batch, T, 8); non-causal."""
    # Stacked and summed as Suno's FineGPT does: added one by one, near-ties can flip.
    layers = hf_fine.input_embeds_layers[: codebook + 1]
    embeds = torch.stack([layer(codes[:, :, i]) for i, layer in enumerate(layers)], dim=-1).sum(-1)
    positions = torch.arange(codes.shape[1], device=codes.device)
    x = embeds + hf_fine.position_embeds_layer(positions)
    heads = hf_fine.config.num_heads
    for block in hf_fine.layers:
        x = _block(block, x, heads)
    x = hf_fine.layernorm_final(x)
    return hf_fine.lm_heads[codebook - hf_fine.config.n_codes_given](x)


Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

EMPTY_GRAPH_WARNING = "CUDA Graph is empty"  # PyTorch's warning for a capture on the wrong device


class GraphCaptureError(RuntimeError):
    """A decode graph could not be captured, or captured nothing."""


def capture_graph(fn: Callable, stream: torch.cuda.Stream, pool, what: str):
    """Capture ``fn()`` as a CUDA graph on ``stream``: ``(graph, its static output)``.

    PyTorch only warns when a capture records nothing (work issued to another device or stream):
    that is an error here, since replaying such a graph would silently return stale outputs."""
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            out = fn()
    for warning in caught:
        if EMPTY_GRAPH_WARNING in str(warning.message):
            raise GraphCaptureError(f"the {what} graph captured nothing ({warning.message})")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return graph, out


class BatchedStep:
    """One decode step for many streams, embedding -> ``CausalGPT`` -> ``head`` -> next tokens.

    Each row's inputs live in two static tensors: ``ints`` (token, position, then the head's own
    integers such as seed and draw counter) and ``floats`` (temperature, ...). ``head(logits, ints,
    floats)`` turns the last logits into the next tokens (masks, EOS rule, sampling) so that it is
    captured too. On CUDA one graph per bucket of ``BUCKETS`` is captured over the first ``b``
    rows: a 24-layer step is one launch instead of hundreds, and eight streams cost little more
    than one (docs/performance.md). On the CPU the same code runs eagerly.

    A step's output is ``(packed, logits)``: ``packed`` (2, b) holds each row's next token and
    whether its logits were all finite (the guard costs one small kernel inside the graph), and
    ``logits`` (b, V) stays for the self-check to compare.
    """

    def __init__(self, gpt: CausalGPT, head: Head, n_ints: int, n_floats: int) -> None:
        self.gpt = gpt
        self.head = head
        self.device = device = gpt.embed.weight.device
        self.ints = torch.zeros(gpt.batch, 2 + n_ints, dtype=torch.long, device=device)
        self.floats = torch.zeros(gpt.batch, n_floats, dtype=torch.float32, device=device)
        self.padding = [0, gpt.scratch] + [0] * n_ints, [0.0] * n_floats
        cuda = device.type == "cuda"
        if cuda:
            # A single row would take cuBLAS's matrix-vector kernels, which round differently from
            # the matrix-matrix kernels of every larger bucket (an H200: logits 2e-6 apart, enough
            # to flip a sampled token now and then), so a sentence alone would not say exactly
            # what it says in a batch. The smallest bucket is two rows: a step reads the weights
            # once anyway.
            smallest = 2 if gpt.batch >= 2 else 1
            self.buckets = [b for b in BUCKETS if smallest <= b < gpt.batch] + [gpt.batch]
        else:
            # No graphs to share: exactly the rows up to the last one in use (on a 2-core CPU,
            # 3 rows padded to a 4-row step took 17 % longer).
            self.buckets = list(range(1, gpt.batch + 1))
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.eager_reason: str | None = None  # why this model decodes eagerly on CUDA
        self.compiled: Callable | None = None  # the step through torch.compile (``compile``)
        # Its own high-priority CUDA stream, so the semantic and the coarse step of one iteration
        # overlap (a replayed step leaves the GPU mostly idle between its small kernels) and the
        # audio thread's fine passes do not delay them. Capture gets a stream of its own too: the
        # kernels captured on a stream use that stream's cuBLAS workspace, so two models captured
        # on one stream would share a workspace while replaying concurrently.
        self.stream = torch.cuda.Stream(device, priority=-1) if cuda else None
        self.capture_stream = torch.cuda.Stream(device) if cuda else None
        self.staging = (
            torch.zeros(self.ints.shape, dtype=torch.long, pin_memory=cuda),
            torch.zeros(self.floats.shape, dtype=torch.float32, pin_memory=cuda),
        )

    @property
    def path(self) -> str:
        """How steps run: ``compiled``, ``cuda graphs``, both, or ``eager``."""
        graphs = "cuda graphs" if self.graphs else "eager"
        return ("compiled + " + graphs if self.graphs else "compiled") if self.compiled else graphs

    def compile(self) -> None:
        """Run the step through ``torch.compile`` (inductor: fused kernels, fewer launches) from now
        on, compiling each bucket now; on CUDA the graphs are then captured over the compiled step.
        Raises what compiling raised (and stays uncompiled)."""
        cuda = self.device.type == "cuda"
        # On CUDA one compile per bucket (static shapes, as the graphs are); on a CPU the row count
        # and the attention span change every step: one compile with symbolic sizes.
        self.compiled = torch.compile(self.run_eager, mode=COMPILE_MODE if cuda else None, dynamic=not cuda)
        try:
            with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
                for b in self.buckets if cuda else self.buckets[-1:]:
                    self.ints[:b].copy_(torch.tensor([self.padding[0]] * b))
                    self.compiled(b, None if cuda else SPAN)
        except Exception:
            self.compiled = None
            raise

    def uncompile(self) -> None:
        """Back to the plain step (graphs, if any, are captured again by ``capture``)."""
        self.compiled = None
        self.graphs.clear()

    def _step(self, b: int, span: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.compiled(b, span) if self.compiled is not None else self.run_eager(b, span)

    def run_eager(self, b: int, span: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step over the first ``b`` rows' current inputs, without graphs: ``(packed, logits)``;
        attention over the first ``span`` cache positions (all by default)."""
        ints, floats = self.ints[:b], self.floats[:b]
        logits = self.gpt.step(ints[:, :1], ints[:, 1], span)
        tokens = self.head(logits, ints[:, 2:], floats)
        return torch.stack([tokens, torch.isfinite(logits).all(-1).long()]), logits

    def capture(self) -> None:
        """Record one graph per bucket (CUDA only); every row writes only its scratch position.

        Raises ``GraphCaptureError`` (graphs left empty) if a bucket cannot be captured."""
        if self.capture_stream is None or self.graphs:
            return
        try:
            with torch.cuda.device(self.device):
                self._capture(self.capture_stream)
        except GraphCaptureError:
            self.graphs.clear()
            raise
        except Exception as err:  # e.g. an op this torch build cannot capture
            self.graphs.clear()
            raise GraphCaptureError(f"{type(err).__name__}: {err}") from err

    def _capture(self, stream: torch.cuda.Stream) -> None:
        self.ints.copy_(torch.tensor([self.padding[0]] * len(self.ints)))
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for b in self.buckets:  # warm up the allocator and kernels outside the graphs
                for _ in range(2):
                    self._step(b)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        pool = None
        for b in reversed(self.buckets):  # largest first, so the smaller ones reuse its memory
            graph, out = capture_graph(lambda b=b: self._step(b), stream, pool, f"batch-{b} step")
            pool = graph.pool()
            self.graphs[b] = graph, out

    def use_eager(self, reason: str) -> None:
        """Stop replaying graphs for this model (after a failed check or a non-finite step)."""
        self.graphs.clear()
        self.eager_reason = reason

    def launch(
        self, rows: Sequence[int], ints: Sequence[Sequence[int]], floats: Sequence[Sequence[float]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start advancing cache ``rows`` by one token each; ``ints[i]`` starts with row i's token
        and position. Returns the bucket's output: pass it to ``read``."""
        b = next(size for size in self.buckets if size > max(rows))
        host_ints = [self.padding[0]] * b
        host_floats = [self.padding[1]] * b
        for row, row_ints, row_floats in zip(rows, ints, floats):
            host_ints[row], host_floats[row] = row_ints, row_floats
        # Through pinned buffers on CUDA, so the copies queue behind running work without a sync.
        self.staging[0][:b] = torch.tensor(host_ints)
        self.staging[1][:b] = torch.tensor(host_floats)
        if self.stream is None:
            # On the CPU a step attends only as far as the furthest row has got: at the start of
            # a sentence, half the attention work or less. (CUDA graphs cover the whole cache.)
            furthest = max(row_ints[1] for row_ints in ints)
            return self._launch(b, min(-(-(furthest + 1) // SPAN) * SPAN, self.gpt.scratch + 1))
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # after prefills into the cache
        with torch.cuda.stream(self.stream):
            return self._launch(b, None)

    def _launch(self, b: int, span: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        self.ints[:b].copy_(self.staging[0][:b], non_blocking=True)
        self.floats[:b].copy_(self.staging[1][:b], non_blocking=True)
        if b in self.graphs:
            graph, out = self.graphs[b]
            graph.replay()
            return out
        return self._step(b, span)

    def read(self, out: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[int], list[int]]:
        """Tokens and finite-flags of the step ``launch`` started, once it is done (valid until
        the next launch)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        tokens, finite = out[0].tolist()
        return tokens, finite
