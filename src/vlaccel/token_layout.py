"""``TokenLayout``: where each segment sits in the block of tokens a model's LM is processing right now.

A model records one before each LM forward and its adapter returns it (``ModelAdapter.token_layout``);
token pruning and the KV cache read it. It lives on its own so that models, adapters and techniques can share it
without importing one another.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TokenLayout"]


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where each segment sits inside the block of tokens the LM is processing *right now*.

    Slices index the sequence dimension of that block (not the whole cache). ``kind`` is ``"prefix"``
    for the instruction prefill and ``"observation"`` for an observation block.
    """

    kind: str
    instruction: slice | None = None
    visual: slice | None = None
    cognition: int | None = None
    length: int = 0
