"""Our own Bark inference core: static KV cache, SDPA, CUDA-graph decode steps.

It runs the weights of an already loaded transformers ``BarkModel`` (shared, not copied) and
reproduces transformers' generation stage by stage; see ``model.py`` and ``generate.py``.
"""

from .generate import Cancelled, FastBark, SamplingSettings

__all__ = ["Cancelled", "FastBark", "SamplingSettings"]
