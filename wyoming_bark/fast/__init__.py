"""Our own Bark inference core: batched static KV cache, SDPA, CUDA-graph decode steps.

It runs the weights of an already loaded transformers ``BarkModel`` (shared, not copied) and
reproduces transformers' generation stage by stage; see ``model.py`` (the networks),
``generate.py`` (a sentence as a program), ``batch.py`` (many sentences in one batch).
"""

from .generate import FastBark
from .program import Cancelled, SamplingSettings

__all__ = ["Cancelled", "FastBark", "SamplingSettings"]
