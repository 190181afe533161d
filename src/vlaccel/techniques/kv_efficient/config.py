"""``KVEfficientConfig``: the RNN-gated chunked KV cache of KV-Efficient VLA (arXiv 2509.21354) and its baselines.

Cache layout per decoder layer, oldest to newest::

    [protected prefix P][retained chunk summaries][raw tail (< chunk)][recent window W, raw]

``retention`` picks what happens to a chunk of ``chunk`` tokens once it has left the recent window:

* ``"gated"`` (the method): an MLP aggregator summarises the chunk into ``summary_slots`` KV slots and an
  LSTM gate scores it, g in (0, 1). ``threshold`` mode keeps the summary iff g >= tau; ``budget`` mode keeps
  at most ``budget`` summaries per layer and evicts the lowest-utility one.
* ``"full"``: never evict (the ``DynamicCache`` baseline inside the same class).
* ``"streaming"``: attention sinks + recent window, chunks are dropped (StreamingLLM, arXiv 2309.17453).
* ``"mean"``: mean-pooled summaries without a gate; all kept, or the ``budget`` most recent ones.
* ``"random"``: mean summaries, a seeded random one evicted when over ``budget``.
* ``"h2o"``: mean summaries, the one that received the least attention evicted (H2O-like, arXiv 2306.14048).

What each retention implies (summaries, budget, gate, attention) is stated once, in
:data:`~vlaccel.techniques.kv_efficient.retentions.RETENTION_TABLE`; the checks below read it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from vlaccel.config import TechniqueConfig
from vlaccel.techniques.kv_efficient.retentions import RETENTION_TABLE, RetentionSpec

__all__ = ["KVEfficientConfig", "RETENTIONS", "POSITIONS"]

RETENTIONS = tuple(RETENTION_TABLE)  # ("gated", "full", "streaming", "mean", "random", "h2o")
POSITIONS = ("logical", "reindexed")
#: why token pruning and the chunked cache are never on one model (declared on both configs)
TOKEN_PRUNE_CONFLICT = ("token pruning stores fewer tokens per frame in later layers, but the chunked cache needs every "
                        "layer to store the same tokens")


@dataclasses.dataclass(frozen=True)
class KVEfficientConfig(TechniqueConfig):
    """Bounded KV memory for a policy that keeps its history in the LM's KV cache.

    window:        recent tokens kept raw (>= 1).
    chunk:         tokens per chunk; ``None`` = the tokens of one observation (frame-aligned chunks), read
                   from the model adapter. Required for models without observations (plain LMs).
    summary_slots: KV slots one retained chunk occupies (s; 1 <= s <= chunk).
    budget:        hard cap M on retained summaries per layer (budget mode). KV memory is then bounded by
                   ``P + M*s + chunk + window`` tokens per layer at every step.
    threshold:     tau in (0, 1): keep a chunk iff its gate utility g >= tau (threshold mode, gated only).
    protect_prefix: the first update (the instruction prefill in history mode) is never evicted.
    sinks:         additional first tokens after the prefix that are never evicted (StreamingLLM's sinks).
    gate:          path of a trained gate (``vlaccel train-kv-gate``) for ``retention="gated"``; ``None`` =
                   the gate shipped for the bundled reference policy, used only if its policy fingerprint
                   matches the model (otherwise a clear error says how to train one or pick a baseline).
    retention:     one of ``RETENTIONS`` (see the module docstring).
    seed:          seed of the ``"random"`` policy's generator (reseeded at every episode).
    positions:     "logical" (every token the episode saw counts: the new frame sits where it would in the full
                   history, as in training) or "reindexed" (the stored slots get positions 0 .. N-1 and are
                   re-rotated after every eviction, as StreamingLLM does: positions stay bounded, episodes can
                   run past the model's max_position_embeddings). Needs a RoPE model.
    window_frames, sinks_frames: ``window`` / ``sinks`` in observations of the model instead of tokens
                   (exactly one of ``window`` and ``window_frames``); resolved at apply time from the adapter's
                   tokens per frame, so a preset fits every policy's observation size.
    """

    window: int | None = None
    chunk: int | None = None
    summary_slots: int = 1
    budget: int | None = None
    threshold: float | None = None
    protect_prefix: bool = True
    sinks: int = 0
    gate: str | None = None
    retention: str = "gated"
    seed: int = 0
    positions: str = "logical"
    window_frames: int | None = None
    sinks_frames: int | None = None

    name: ClassVar[str] = "kv_efficient"
    handler: ClassVar[str] = "vlaccel.techniques.kv_efficient.handler:KVEfficientHandler"
    order: ClassVar[int] = 90  # caches go last (after layer surgery and token hooks)
    requires: ClassVar[tuple[str, ...]] = ("decoder_layers", "history")
    conflicts: ClassVar[dict[str, str]] = {"token_prune": TOKEN_PRUNE_CONFLICT}
    history_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        if (self.window is None) == (self.window_frames is None):
            raise ValueError("KVEfficientConfig needs exactly one of window=N (recent tokens kept raw) or "
                             "window_frames=N (recent observations kept raw)")
        for name in ("window", "window_frames"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"KVEfficientConfig.{name} must be an integer >= 1 (kept raw), got {value!r}")
        if self.sinks_frames is not None and (not is_int(self.sinks_frames) or self.sinks_frames < 0
                                              or self.sinks != 0):
            raise ValueError(f"KVEfficientConfig.sinks_frames must be an integer >= 0 and replaces sinks (leave "
                             f"sinks=0), got sinks_frames={self.sinks_frames!r}, sinks={self.sinks!r}")
        if self.chunk is not None and (not is_int(self.chunk) or self.chunk < 1):
            raise ValueError(
                f"KVEfficientConfig.chunk must be an integer >= 1 or None (= tokens of one observation), got {self.chunk!r}"
            )
        if self.retention not in RETENTIONS:
            raise ValueError(f"KVEfficientConfig.retention must be one of {RETENTIONS}, got {self.retention!r}")
        if not is_int(self.summary_slots) or self.summary_slots < 1:
            raise ValueError(f"KVEfficientConfig.summary_slots must be an integer >= 1, got {self.summary_slots!r}")
        if self.chunk is not None and self.summary_slots > self.chunk:
            raise ValueError(
                f"summary_slots={self.summary_slots} > chunk={self.chunk}: a summary must be smaller than its chunk"
            )
        if self.budget is not None and (not is_int(self.budget) or self.budget < 0):
            raise ValueError(f"KVEfficientConfig.budget must be an integer >= 0 (retained summaries per layer), got {self.budget!r}")
        if self.threshold is not None:
            if (not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool)
                    or not math.isfinite(self.threshold) or not 0.0 < self.threshold < 1.0):
                raise ValueError(
                    f"KVEfficientConfig.threshold must be in the open interval (0, 1), got {self.threshold!r} "
                    "(the paper code uses 0.5)"
                )
        if not is_int(self.sinks) or self.sinks < 0:
            raise ValueError(f"KVEfficientConfig.sinks must be an integer >= 0, got {self.sinks!r}")
        if not isinstance(self.protect_prefix, bool):
            raise ValueError(f"KVEfficientConfig.protect_prefix must be True or False, got {self.protect_prefix!r}")
        if self.gate is not None and not isinstance(self.gate, str):
            raise ValueError(f"KVEfficientConfig.gate must be a path string or None, got {type(self.gate).__name__}")
        if self.positions not in POSITIONS:
            raise ValueError(f"KVEfficientConfig.positions must be one of {POSITIONS}, got {self.positions!r}")
        if not is_int(self.seed):
            raise ValueError(f"KVEfficientConfig.seed must be an integer, got {self.seed!r}")
        self._check_retention_fields()

    def _check_retention_fields(self) -> None:
        """budget / threshold / gate against what the retention does (its row of the retention table)."""
        r, spec = self.retention, self.retention_spec
        gated = " or ".join(f"retention={name!r}" for name, s in RETENTION_TABLE.items() if s.needs_gate)
        if spec.needs_gate:
            if (self.budget is None) == (self.threshold is None):
                raise ValueError(
                    f"retention={r!r} needs exactly one of budget=M (hard cap on retained summaries, the default "
                    "for control) or threshold=tau (keep a chunk iff its gate utility g >= tau)"
                )
        elif self.threshold is not None:
            raise ValueError(f"threshold is only used by {gated}, not {r!r}; use budget=M instead")
        if spec.needs_budget and self.budget is None:
            raise ValueError(f"retention={r!r} evicts summaries only over a budget: pass budget=M (e.g. the gated run's)")
        if not spec.summarises and self.budget is not None:
            raise ValueError(f"retention={r!r} keeps no summaries, so budget does not apply; leave it None")
        if not spec.needs_gate and self.gate is not None:
            raise ValueError(f"gate=... is only used by {gated}, not {r!r}")

    def required_capabilities(self) -> tuple[str, ...]:
        frames = self.window_frames is not None or self.sinks_frames is not None
        return (*type(self).requires, "frames") if frames else type(self).requires

    def resolve(self, model: Any, adapter: Any, pending: tuple = ()) -> KVEfficientConfig:
        """``window_frames`` / ``sinks_frames`` in the model's tokens per observation."""
        if self.window_frames is None and self.sinks_frames is None:
            return self
        q = int(adapter.tokens_per_frame(model))  # the "frames" capability (required_capabilities) guarantees it
        window = self.window if self.window_frames is None else self.window_frames * q
        sinks = self.sinks if self.sinks_frames is None else self.sinks_frames * q
        return dataclasses.replace(self, window=window, sinks=sinks, window_frames=None, sinks_frames=None)

    # ------------------------------------------------------------------ derived
    @property
    def retention_spec(self) -> RetentionSpec:
        """The retention's row of the retention table."""
        return RETENTION_TABLE[self.retention]

    @property
    def summarises(self) -> bool:
        """True when chunks leaving the window become summaries (keys are de-/re-rotated: needs RoPE)."""
        return self.retention_spec.summarises

    def weight_files(self, model: Any = None) -> list[str]:
        """The gate's weights file for ``retention="gated"`` (``gate=None``: the one stored with ``model``'s
        folder, else the shipped one)."""
        if not self.retention_spec.needs_gate:
            return []
        from vlaccel.techniques.kv_efficient.gate import gate_files, policy_gate_dir, shipped_gate_dir

        folder = self.gate if self.gate is not None else (policy_gate_dir(model) or shipped_gate_dir())
        return [str(gate_files(folder)[0])]

    def max_tokens(self, prefix: int, chunk: int) -> int | None:
        """Hard cap on stored tokens per layer (``P + M*s + C + W``), or ``None`` when unbounded."""
        if not self.retention_spec.evicts:
            return None
        if not self.retention_spec.summarises:
            return prefix + self.sinks + chunk + self.window
        if self.budget is None:
            return None
        return prefix + self.sinks + self.budget * self.summary_slots + chunk + self.window

    def is_neutral(self, model: Any, adapter: Any) -> bool:
        """Neutral when nothing can ever be evicted: ``retention="full"`` or a window covering every position
        the LM can address (``window >= max_position_embeddings``)."""
        if not self.retention_spec.evicts:
            return True
        limit = getattr(adapter.lm_config(model), "max_position_embeddings", None)
        return limit is not None and self.window >= int(limit)
