"""``QuantizeConfig``: int8 weights of the linear layers of chosen parts, through torchao's ``quantize_``.

Not a method of either paper; a measured option (``pip install 'vlaccel[quant]'``, torchao is never a core
dependency). Schemes: ``int8_weight_only`` (torchao ``Int8WeightOnlyConfig``: int8 weights with per-channel
scales, activations stay float) and ``int8_dynamic`` (``Int8DynamicActivationInt8WeightConfig``: activations
quantized per token at run time, int8 x int8 matmuls). torchao swaps each chosen ``nn.Linear``'s weight for a
quantized tensor subclass (and sets an instance ``extra_repr`` naming it); the original float ``Parameter``
objects are kept, and ``remove()`` puts them back and takes the ``extra_repr`` away (bit-identical outputs
after). Linear layers narrower than ``min_features`` on either side stay float (torchao's int8 kernels want at
least 16; the reference policy's 4-wide action projection would gain nothing).

Measured on the bundled policy (``scripts/bench_quantize.py``, docs/benchmarks.md): on a 2-core AVX2 CPU both
schemes are *slower* than float32, eager and compiled; it is here so a user on hardware with int8 kernels can
measure it with the same API, not as a recommendation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from vlaccel.config import TechniqueConfig
from vlaccel.techniques.parts import as_names, choose_parts

__all__ = ["QuantizeConfig", "SCHEMES"]

#: scheme -> torchao config class name (torchao.quantization)
SCHEMES = {"int8_weight_only": "Int8WeightOnlyConfig", "int8_dynamic": "Int8DynamicActivationInt8WeightConfig"}


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    """Quantize the ``nn.Linear`` layers of ``parts`` (None = every part the adapter names) with ``scheme``."""

    scheme: str = "int8_weight_only"
    parts: tuple[str, ...] | None = None
    min_features: int = 16

    name = "quantize"
    handler = "vlaccel.techniques.quantize:QuantizeHandler"
    order = 92  # after the structural techniques and precision (bf16 weights get bf16 scales), before compile
    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"QuantizeConfig.scheme must be one of {sorted(SCHEMES)}, got {self.scheme!r}")
        if not isinstance(self.min_features, int) or isinstance(self.min_features, bool) or self.min_features < 1:
            raise ValueError(f"QuantizeConfig.min_features must be an integer >= 1, got {self.min_features!r}")
        as_names(self, "parts")


def _torchao():
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise ImportError("QuantizeConfig needs torchao: pip install 'vlaccel[quant]' (or pip install torchao)") from None
    return quantization


#: instance attributes torchao's ``quantize_`` sets on a linear layer (its ``extra_repr`` names the scheme)
_INSTANCE_ATTRIBUTES = ("extra_repr",)


class _Applied:
    def __init__(self) -> None:
        self.originals: list[tuple[nn.Linear, nn.Parameter]] = []
        self.attributes: list[tuple[nn.Linear, dict[str, Any]]] = []  # the instance attributes each layer had

    def remember(self, linear: nn.Linear) -> None:
        self.originals.append((linear, linear.weight))
        self.attributes.append((linear, {a: linear.__dict__[a] for a in _INSTANCE_ATTRIBUTES if a in linear.__dict__}))

    def remove(self) -> None:
        for linear, weight in self.originals:
            current = linear.weight
            if current is not None and current.device != weight.device:  # the model was moved since apply
                weight.data = weight.data.to(current.device)
            linear.weight = weight
        for linear, attributes in self.attributes:
            for name in _INSTANCE_ATTRIBUTES:
                linear.__dict__.pop(name, None)
            linear.__dict__.update(attributes)

    def plain_tensors(self) -> dict[int, nn.Parameter]:
        """For saving the plain policy: ``id(quantized weight)`` -> the float ``Parameter`` ``remove()`` restores."""
        return {id(linear.weight): weight for linear, weight in self.originals}


def _linears(model: Any, config: QuantizeConfig, adapter: Any) -> list[nn.Linear]:
    chosen, _ = choose_parts(model, adapter, config.parts, "QuantizeConfig")
    found: dict[int, nn.Linear] = {}
    for part in chosen.values():
        for root in part:
            for m in root.modules():
                if type(m) is nn.Linear and min(m.in_features, m.out_features) >= config.min_features:
                    found.setdefault(id(m), m)
    return list(found.values())


class QuantizeHandler:
    def validate(self, model: Any, config: QuantizeConfig, adapter: Any, pending: tuple = ()) -> None:
        _torchao()
        if not _linears(model, config, adapter):
            raise ValueError(f"QuantizeConfig: no nn.Linear of at least {config.min_features} features in the chosen "
                             "parts; lower min_features or choose other parts")

    def apply(self, model: Any, config: QuantizeConfig, adapter: Any, prepared: None = None) -> _Applied:
        quantization = _torchao()
        scheme = getattr(quantization, SCHEMES[config.scheme])()
        state = _Applied()
        try:
            for linear in _linears(model, config, adapter):
                state.remember(linear)
                quantization.quantize_(linear, scheme, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        except BaseException:
            state.remove()
            raise
        return state
