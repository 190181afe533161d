"""What the LeRobot adapter tests share."""

from __future__ import annotations

#: instance attributes a technique may set on a module (an instance forward, a wrapped method)
INSTANCE_ATTRIBUTES = ("embed_prefix", "forward", "forward_cross_attn_layer", "sample_actions")


def leftovers(model) -> dict[str, object]:
    """Every hook and vlaccel instance attribute on ``model``'s modules: equal before apply and after remove."""
    found: dict[str, object] = {}
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks"):
            found.update({f"{name}.{kind}.{k}": v for k, v in getattr(module, kind).items()})
        found.update({f"{name}.{a}": v for a, v in module.__dict__.items()
                      if a.startswith("_vlaccel_") or a in INSTANCE_ATTRIBUTES})
    return found
