"""``CrossKVReuseConfig``: project an action expert's cross-attention keys/values once per action chunk (lossless).

Not a method of either paper: an exact saving. In a VLA whose action expert cross-attends to the VLM's cached prefix
through its own key/value projections (LeRobot's SmolVLA: the odd expert layers apply ``k_proj`` / ``v_proj`` to the
cached VLM keys and values), every flow step re-projects the same prefix, ``K_e = K_vlm W_k^T + b_k`` and
``V_e = V_vlm W_v^T + b_v``, [B, S, H_kv * d] each. Computing them at the first step and reusing them at the others
gives the very same tensors, so the actions are bit-identical; it saves 2 x (steps - 1) projections of the
prefix per cross layer. The adapter installs it (``install_cross_kv_reuse``, returning a handle with ``remove()``);
models without such layers refuse it. ``enabled=False`` is neutral (nothing is installed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlaccel.config import TechniqueConfig

__all__ = ["CrossKVReuseConfig"]


@dataclasses.dataclass(frozen=True)
class CrossKVReuseConfig(TechniqueConfig):
    """Reuse the expert's projections of the cached prefix across the flow steps of a chunk (exact)."""

    enabled: bool = True

    name = "cross_kv_reuse"
    handler = "vlaccel.techniques.cross_kv_reuse:CrossKVReuseHandler"
    order = 75  # after the head cache, before precision and compile
    requires = ("cross_kv",)

    def __post_init__(self) -> None:
        if self.enabled not in (True, False):
            raise ValueError(f"CrossKVReuseConfig.enabled must be True or False, got {self.enabled!r}")

    def is_neutral(self, model: Any, adapter: Any) -> bool:  # noqa: ARG002
        return not self.enabled


class _Nothing:
    def remove(self) -> None:
        pass


class CrossKVReuseHandler:
    def validate(self, model: Any, config: CrossKVReuseConfig, adapter: Any, pending: tuple = ()) -> None:
        if getattr(adapter, "install_cross_kv_reuse", None) is None:
            raise NotImplementedError(f"CrossKVReuseConfig: {type(model).__name__} has no action expert that "
                                      "re-projects a cached prefix in cross-attention (LeRobot SmolVLA has); "
                                      "leave it out for this model")

    def apply(self, model: Any, config: CrossKVReuseConfig, adapter: Any, prepared: None = None) -> Any:
        return adapter.install_cross_kv_reuse(model) if config.enabled else _Nothing()
