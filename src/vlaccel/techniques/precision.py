"""``PrecisionConfig``: run parts of the policy in bfloat16 or float16 (weights cast; lossless-first engine switch).

Not a method of either paper: lower precision is the first thing a user reaches for, and it composes with the
structural techniques. Each floating parameter and buffer of the chosen parts is replaced by a cast copy
(``tensor.data = tensor.data.to(dtype)``); the float32 originals are kept by the handle, by module and attribute
name, so ``remove()`` puts the very same values back (bit-identical outputs after), also after ``model.float()``
or ``model.to(device)`` replaced a buffer (a later ``.to(device)`` or ``.half()`` applies to the originals too), and ``vlaccel.save_policy`` saves them (the plain policy)
while the cast is applied. Memory while applied: the cast copies *plus* the originals, the price of an exact
``remove()``.

Parts come from the adapter (``module_parts``): for the reference VLA ``vision`` (encoder + projector),
``language_model`` (+ the proprio projection) and ``action_head`` (DiT + the visual readout that conditions it);
for transformers models the whole ``model``. ``keep_float32`` names modules (dotted paths from the model, e.g.
``"action_head.dit.action_out"``) computed in float32 inside a cast part: their inputs are cast to float32 and
their outputs back to the part's dtype.

Dtype boundaries: every part's modules get a forward pre-hook casting floating inputs to their own dtype, so
a bf16 vision encoder feeds a float32 LM (or the reverse) without the caller casting anything. The DDIM chain
(sample ``x`` and the scheduler's update) runs in the dtype of the action head's condition: bf16 when the
language model is cast, float32 when only the head is (the DiT's pre-hook then casts ``x`` for the network
alone and the scheduler's update stays float32). Where float32 is kept on purpose, and why:
  * KV-Efficient's summaries and its gate: summaries are pooled in float32 from the cached keys/values and cast
    back to the cache's dtype (``ChunkedGatedCache``); the gate (0.37 MB) stays float32 because its LSTM state
    runs over a whole episode.
The KV cache itself follows the LM: a bf16 LM stores bf16 keys and values (half the bytes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlaccel.config import TechniqueConfig
from vlaccel.techniques.parts import as_names, choose_parts

__all__ = ["PrecisionConfig", "DTYPES", "native_bfloat16"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class PrecisionConfig(TechniqueConfig):
    """Cast the weights of ``parts`` (None = every part the adapter names) to ``dtype``; ``keep_float32``
    modules stay float32. ``dtype="float32"`` is neutral (the policy's own precision). ``dtype="auto"`` resolves,
    when applied, to ``"bfloat16"`` where the model's device computes bf16 natively (:func:`native_bfloat16`)
    and to ``"float32"`` elsewhere: on a CPU without AVX512-BF16 or AMX, bf16 matmuls are emulated and
    measured 3x *slower* than float32 on the bundled policy (docs/benchmarks.md)."""

    dtype: str = "bfloat16"
    parts: tuple[str, ...] | None = None
    keep_float32: tuple[str, ...] = ()

    name = "precision"
    handler = "vlaccel.techniques.precision:PrecisionHandler"
    order = 90  # after the structural techniques: calibration and surgery see the float32 model

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES and self.dtype != "auto":
            raise ValueError(f"PrecisionConfig.dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        as_names(self, "parts")
        as_names(self, "keep_float32")

    def resolve(self, model: Any, adapter: Any, pending: tuple = ()) -> PrecisionConfig:  # noqa: ARG002
        if self.dtype != "auto":
            return self
        device = next(model.parameters()).device
        return dataclasses.replace(self, dtype="bfloat16" if native_bfloat16(device) else "float32")

    def is_neutral(self, model: Any, adapter: Any) -> bool:  # noqa: ARG002
        return self.dtype == "float32"


#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX512-BF16 and AMX on x86, the BF16 extension on Arm
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def native_bfloat16(device: torch.device | str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated through float32).

    CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and newer). CPU: one of the CPU
    flags above in ``cpuinfo`` (Linux); False where that file does not exist (other systems: pass
    ``PrecisionConfig(dtype="bfloat16")`` explicitly after measuring).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        with open(cpuinfo) as f:
            flags = {flag for line in f if line.startswith(("flags", "Features")) for flag in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & _BF16_CPU_FLAGS)


class _CastInputs:
    """Forward pre-hook: floating tensor arguments to ``dtype`` (an object, so deep copies get their own)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def cast(self, x: Any) -> Any:
        return x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(self.cast(a) for a in args), {k: self.cast(v) for k, v in kwargs.items()}


class _CastOutput:
    """Forward hook of a ``keep_float32`` module: its float32 output back to the surrounding part's dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return output.to(self.dtype) if isinstance(output, torch.Tensor) and output.is_floating_point() else output


class _Original:
    """One cast parameter or buffer, tracked by its module and attribute name: ``model.float()`` or ``.to()`` after
    ``apply`` replaces a buffer by a new tensor, so the tensor object alone would lose track of it."""

    def __init__(self, owner: nn.Module, name: str, tensor: torch.Tensor, cast_to: torch.dtype):
        self.owner, self.name, self.tensor, self.data, self.cast_to = owner, name, tensor, tensor.data, cast_to
        self.table = "_parameters" if isinstance(tensor, nn.Parameter) else "_buffers"

    def current(self) -> torch.Tensor | None:
        """The tensor the module holds under this name now (None: removed since)."""
        return getattr(self.owner, self.table).get(self.name)

    def plain(self, current: torch.Tensor) -> torch.Tensor:
        """The original data as the model would hold it now: on ``current``'s device, and in ``current``'s dtype
        where the model was cast since ``apply`` (``model.half()``); after ``model.float()``, the exact original."""
        dtype = self.data.dtype if current.dtype == self.cast_to else current.dtype
        return self.data.to(device=current.device, dtype=dtype)


class _Applied:
    def __init__(self) -> None:
        self.originals: list[_Original] = []
        self.hooks: list[Any] = []

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for original in self.originals:
            current = original.current()
            if current is not None:
                current.data = original.plain(current)
            if current is not original.tensor:  # other references to the tensor cast at apply
                original.tensor.data = original.data

    def plain_tensors(self) -> dict[int, torch.Tensor]:
        """For saving the plain policy: ``id(cast parameter or buffer)`` -> the float32 data ``remove()`` restores."""
        plain = {id(o.tensor): o.data for o in self.originals}
        for o in self.originals:  # a tensor the model replaced since (``model.float()`` makes new buffers)
            current = o.current()
            if current is not None and current is not o.tensor and type(current) in (torch.Tensor, nn.Parameter):
                plain[id(current)] = o.plain(current)
        return plain


def _named_tensors(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """``(owning module, attribute name, tensor)`` for every parameter and buffer under ``module``."""
    found = []
    for table in ("named_parameters", "named_buffers"):
        for path, tensor in getattr(module, table)():
            head, _, name = path.rpartition(".")
            found.append((module.get_submodule(head) if head else module, name, tensor))
    return found


def _own_dtype(module: nn.Module) -> torch.dtype | None:
    return next((t.dtype for t in module.parameters() if t.is_floating_point()), None)


def _kept_modules(model: Any, names: Sequence[str]) -> list[nn.Module]:
    kept = []
    for name in names:
        try:
            kept.append(model.get_submodule(name))
        except AttributeError:
            raise ValueError(f"PrecisionConfig.keep_float32: {type(model).__name__} has no module {name!r} "
                             "(a dotted path from the model, as in model.named_modules())") from None
    return kept


class PrecisionHandler:
    def validate(self, model: Any, config: PrecisionConfig, adapter: Any, pending: tuple = ()) -> None:
        choose_parts(model, adapter, config.parts, "PrecisionConfig")
        _kept_modules(model, config.keep_float32)
        if config.dtype != "float32":
            probe = torch.ones(2, 2, dtype=DTYPES[config.dtype], device=next(model.parameters()).device)
            try:
                probe @ probe
            except RuntimeError as err:
                raise ValueError(f"{config.dtype} matmul is not supported on {probe.device}: {err}") from None

    def apply(self, model: Any, config: PrecisionConfig, adapter: Any, prepared: None = None) -> _Applied:
        dtype = DTYPES[config.dtype]
        state = _Applied()
        kept = _kept_modules(model, config.keep_float32)
        kept_tensors = {id(t) for m in kept for t in [*m.parameters(), *m.buffers()]}
        cast, others = choose_parts(model, adapter, config.parts, "PrecisionConfig")
        try:
            for modules in cast.values():
                for module in modules:
                    for owner, name, tensor in _named_tensors(module):
                        if tensor.is_floating_point() and id(tensor) not in kept_tensors and tensor.dtype != dtype:
                            state.originals.append(_Original(owner, name, tensor, dtype))
                            tensor.data = tensor.data.to(dtype)
                    state.hooks.append(module.register_forward_pre_hook(_CastInputs(dtype), with_kwargs=True))
            for modules in others.values():  # the parts left as they are take their own dtype at their inputs
                for module in modules:
                    own = _own_dtype(module)
                    if own is not None:
                        state.hooks.append(module.register_forward_pre_hook(_CastInputs(own), with_kwargs=True))
            for module in kept:
                state.hooks.append(module.register_forward_pre_hook(_CastInputs(torch.float32), with_kwargs=True))
                state.hooks.append(module.register_forward_hook(_CastOutput(dtype)))
        except BaseException:
            state.remove()
            raise
        return state
