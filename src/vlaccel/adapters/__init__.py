"""Model adapters (where the decoder layers, token spans and action-head blocks of a model are)."""

from vlaccel.adapters.base import (
    ModelAdapter,
    UnsupportedModelError,
    get_adapter,
    register_adapter,
    supported_models,
)

__all__ = ["ModelAdapter", "UnsupportedModelError", "get_adapter", "register_adapter", "supported_models"]
