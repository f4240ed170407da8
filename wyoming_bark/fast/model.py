"""Bark's transformers, re-run gpt-fast style over transformers' own weights.

``CausalGPT`` is the semantic or coarse model with a preallocated KV cache written in place
(``index_copy_`` at ``input_pos``), so a one-token decode step has fixed shapes and can be
captured once as a CUDA graph and replayed for every token. ``fine_logits`` is the non-causal fine
model with scaled-dot-product attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class KVCache(nn.Module):
    """Keys and values of every position, preallocated for ``max_seq`` positions."""

    def __init__(self, batch: int, heads: int, max_seq: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def _attention(
    block: nn.Module, x: torch.Tensor, heads: int, mask: torch.Tensor | None, cache=None, pos=None
):
    """Bark self-attention (fused qkv projection) through SDPA, optionally via a KV cache."""
    batch, length, width = x.shape
    q, k, v = block.attn.att_proj(x).split(width, dim=2)
    q, k, v = (t.view(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if cache is not None:
        k, v = cache.update(pos, k, v)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return block.attn.out_proj(y.transpose(1, 2).reshape(batch, length, width))


def _block(block: nn.Module, x: torch.Tensor, heads: int, mask, cache=None, pos=None) -> torch.Tensor:
    """Pre-LayerNorm transformer block, as in Bark."""
    x = x + _attention(block, block.layernorm_1(x), heads, mask, cache, pos)
    return x + block.mlp(block.layernorm_2(x))


class CausalGPT(nn.Module):
    """Bark's semantic or coarse GPT with a static KV cache.

    Holds transformers' ``BarkCausalModel`` and uses its embeddings, blocks and head directly, so
    no weights are duplicated and the checkpoint loader stays transformers'.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.heads = hf_model.config.num_heads
        self.block_size = hf_model.config.block_size
        self.caches = nn.ModuleList()
        self.register_buffer("causal", torch.empty(0, dtype=torch.bool), persistent=False)

    @property
    def embed(self) -> nn.Embedding:
        return self.hf.input_embeds_layer

    def setup_cache(self, batch: int = 1, max_seq: int | None = None) -> None:
        """Allocate the KV cache once; its size never changes afterwards."""
        max_seq = max_seq or self.block_size
        weight = self.embed.weight
        head_dim = weight.shape[1] // self.heads
        self.caches = nn.ModuleList(
            KVCache(batch, self.heads, max_seq, head_dim, weight.dtype, weight.device) for _ in self.hf.layers
        )
        self.causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool, device=weight.device))

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits for ``embeds`` (batch, T, C) placed at positions ``input_pos`` (T,)."""
        x = embeds + self.hf.position_embeds_layer(input_pos)
        mask = self.causal[input_pos][None, None]  # each position sees itself and the past
        for block, cache in zip(self.hf.layers, self.caches):
            x = _block(block, x, self.heads, mask, cache, input_pos)
        return self.hf.lm_head(self.hf.layernorm_final(x))


def fine_logits(hf_fine: nn.Module, codebook: int, codes: torch.Tensor) -> torch.Tensor:
    """Logits of the fine model for ``codebook`` given ``codes`` (batch, T, 8); non-causal."""
    embeds = sum(layer(codes[:, :, i]) for i, layer in enumerate(hf_fine.input_embeds_layers[: codebook + 1]))
    positions = torch.arange(codes.shape[1], device=codes.device)
    x = embeds + hf_fine.position_embeds_layer(positions)
    heads = hf_fine.config.num_heads
    for block in hf_fine.layers:
        x = _block(block, x, heads, None)
    x = hf_fine.layernorm_final(x)
    return hf_fine.lm_heads[codebook - hf_fine.config.n_codes_given](x)


class GraphedStep:
    """One decode step, embedding -> ``CausalGPT`` -> ``head`` -> next token, as a CUDA graph.

    ``head(logits, **inputs)`` turns the last logits into the next token (masks, EOS rule,
    sampling) so that it is captured too. Call it with the previous token, its position and the
    step's other inputs; they are copied into static tensors and, on CUDA, the captured kernels
    are replayed: one launch instead of hundreds, which is what turns a 24-layer decode step from
    8 ms into 1.5 ms. On the CPU the same code runs eagerly.
    """

    def __init__(self, gpt: CausalGPT, head: Callable[..., torch.Tensor], **inputs: torch.Tensor) -> None:
        self.gpt = gpt
        self.head = head
        device = gpt.embed.weight.device
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.inputs = {name: value.to(device).clone() for name, value in inputs.items()}
        self.next: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def _run(self) -> torch.Tensor:
        logits = self.gpt(self.gpt.embed(self.token), self.pos)[:, -1]
        return self.head(logits, **self.inputs).view(1, 1)

    def capture(self) -> None:
        """Record the step (CUDA only); it writes one junk entry to the KV cache at ``pos``."""
        if self.token.device.type != "cuda" or self.graph is not None:
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up the allocator and kernels outside the graph
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.next = self._run()

    def __call__(self, token: torch.Tensor, pos: int, **inputs: torch.Tensor | float) -> torch.Tensor:
        self.token.copy_(token.view(1, 1))
        self.pos.fill_(pos)
        for name, value in inputs.items():
            self.inputs[name].fill_(value) if isinstance(value, (int, float)) else self.inputs[name].copy_(
                value
            )
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.next.clone()
