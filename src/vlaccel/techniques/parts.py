"""The adapter's named parts (``ModelAdapter.module_parts``) as the engine switches choose them: precision,
quantization and compilation each take ``parts`` (names, None = all) and validate them the same way."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["as_names", "choose_parts"]


def as_names(config: Any, field: str) -> None:
    """Check that ``config.<field>`` is None or a sequence of strings; store it as a tuple (lists from JSON)."""
    value = getattr(config, field)
    if value is None:
        return
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{type(config).__name__}.{field} must be a tuple of names, got {value!r}")
    object.__setattr__(config, field, tuple(value))  # frozen dataclass; tuples keep it hashable


def choose_parts(model: Any, adapter: Any, names: tuple[str, ...] | None, owner: str
                 ) -> tuple[dict[str, list[nn.Module]], dict[str, list[nn.Module]]]:
    """(the parts named, the other parts), each ``{name: modules}``; ``names=None`` chooses every part.
    ``owner`` (e.g. ``"PrecisionConfig"``) names the config in the error for an unknown part."""
    parts = adapter.module_parts(model)
    chosen = list(parts) if names is None else list(names)
    unknown = [p for p in chosen if p not in parts]
    if unknown:
        raise ValueError(f"{owner}.parts {unknown} are not parts of {type(model).__name__}; its parts are "
                         f"{sorted(parts)}")
    return {p: parts[p] for p in chosen}, {p: m for p, m in parts.items() if p not in chosen}
