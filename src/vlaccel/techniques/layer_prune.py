"""``LayerPruneConfig``: EfficientVLA's training-free, non-contiguous decoder-layer pruning (arXiv 2506.10100, Sec. 3.2).

Importance of layer l (paper Eq. 1): ``I_l = 1 - mean_{samples, tokens} cos(x_l, x_{l+1})`` with x_l the layer's
input and x_{l+1} its output hidden state (before the final norm). A layer that barely rotates its residual
stream is cheap to remove; the n layers with the lowest I go, wherever they sit (see :func:`layer_importance`).

Calibration (real observations of the target tasks). Sources, in this order:
  1. ``LayerPruneConfig(calibration_data=PATH)``: a demo folder (``vlaccel collect`` output), one demo ``.npz``,
     or an ``.npz`` of per-sample arrays named like the sample fields (``image`` [N, H, W, 3], ``instruction``
     [N] or one string, optional ``proprio`` [N, P]; ``input_ids`` [N, T] for plain LMs);
  2. observations recorded on the model with :func:`set_calibration_observations`; a policy loaded from a folder
     holding ``calibration.npz`` (the bundled reference policy ships 32 frames of its tasks' scripted demos) has
     that file's observations recorded at load time.
Otherwise apply raises and says how to provide them: there is no fallback to random inputs or to files found
relative to the working directory. Reading and recording them: :mod:`vlaccel.calibration`.
``calibration`` samples are taken, evenly spaced, from the source. One calibration pass (LM forwards only, via
the adapter) collects both the layer importances and, when ``mlp_prune_ratio > 0``, the MLP channel statistics
of :mod:`vlaccel.techniques.mlp_prune`; both are measured on the unpruned model.

Surgery: ``owner.layers = ModuleList(kept)``, ``num_hidden_layers``, subset ``layer_types`` and renumber each
kept layer's ``self_attn.layer_idx``, so transformers' KV caches get exactly one slot per kept layer and
``generate()`` keeps working.

Coupled stacks (``ModelAdapter.coupled_decoders``; pi0's action expert, whose layer i attends to the KV that the
VLM's layer i cached): layers go in pairs. The same indices are removed from both stacks and both are
renumbered alike, so expert layer j keeps reading the VLM layer it was trained against. A pair's importance is
the sum of its two layers' Eq. 1 scores, each measured on its own stack during the same calibration runs (the
VLM over the prefix, the expert over every flow step's [state][action chunk] block); MLP channels are pruned in
the VLM's kept layers only. Layers an adapter groups (``ModelAdapter.layer_groups``: SmolVLA's aligned
(self-attn, cross-attn) pairs) go only together, a group's importance being the sum of its layers'; a model whose
own loop calls the layers' parts names where Eq. 1's hidden states are read (``hidden_state_taps``) and updates its
own layer counts (``layers_changed``). ``remove()`` restores the list, the config values
and every ``layer_idx``. Structural, so it is applied before the hook-based techniques (``order = 10``);
token pruning's ``layer`` then counts kept layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlaccel.calibration import (
    CALIBRATION_FILE,
    demo_folder_observations,
    evenly_spaced,
    load_calibration_observations,
    recorded_observations,
    set_calibration_observations,
)
from vlaccel.config import TechniqueConfig
from vlaccel.errors import MissingInputError
from vlaccel.techniques import mlp_prune

__all__ = [
    "LayerPruneConfig", "layer_importance", "calibrate", "Calibration", "set_calibration_observations",
    "load_calibration_observations", "CALIBRATION_FILE",
]

METHODS = ("efficientvla", "last")


@dataclasses.dataclass(frozen=True)
class LayerPruneConfig(TechniqueConfig):
    """Keep ``keep_layers`` (or drop ``drop_layers``) decoder layers; optionally prune MLP channels of the kept ones.

    ``method="efficientvla"`` drops the lowest-importance layers (Eq. 1, calibrated); ``"last"`` drops the last
    ones (a baseline needing no calibration). ``mlp_prune_ratio``: fraction of FFN channels removed per kept
    layer (a stand-in for PruneNet, see :mod:`vlaccel.techniques.mlp_prune`). Neutral when every layer is kept
    and the ratio is 0. ``keep_fraction`` states the kept share instead (the paper keeps 22 of 32 layers):
    resolved against the model at apply time to ``keep_layers = max(1, round_half_up(L * keep_fraction))``.
    """

    keep_layers: int | None = None
    drop_layers: int | None = None
    keep_fraction: float | None = None
    calibration: int = 64
    mlp_prune_ratio: float = 0.0
    method: str = "efficientvla"
    calibration_data: str | None = None

    name = "layer_prune"
    handler = "vlaccel.techniques.layer_prune:LayerPruneHandler"
    order = 10
    requires = ("decoder_layers",)
    apply_before: ClassVar[dict[str, str]] = {"token_prune": "token pruning hooks index the decoder layers"}
    changes_state_dict = True  # removes layers (and MLP channels): a saved file would not match the config

    def __post_init__(self) -> None:
        given = [n for n in ("keep_layers", "drop_layers", "keep_fraction") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("LayerPruneConfig needs exactly one of keep_layers=N, drop_layers=N or keep_fraction=F, "
                             f"got {given or 'none'}")
        if self.keep_fraction is not None and (isinstance(self.keep_fraction, bool) or not isinstance(
                self.keep_fraction, (int, float)) or not 0 < self.keep_fraction <= 1):
            raise ValueError(f"keep_fraction must be in (0, 1] (the share of decoder layers kept), got "
                             f"{self.keep_fraction!r}")
        if self.keep_layers is not None and (not isinstance(self.keep_layers, int) or isinstance(self.keep_layers, bool)
                                             or self.keep_layers < 1):
            raise ValueError(f"keep_layers must be an integer >= 1, got {self.keep_layers!r}")
        if self.drop_layers is not None and (not isinstance(self.drop_layers, int) or isinstance(self.drop_layers, bool)
                                             or self.drop_layers < 0):
            raise ValueError(f"drop_layers must be an integer >= 0, got {self.drop_layers!r}")
        if not isinstance(self.calibration, int) or isinstance(self.calibration, bool) or self.calibration < 1:
            raise ValueError(f"calibration (number of calibration samples) must be an integer >= 1, got {self.calibration!r}")
        if not 0.0 <= self.mlp_prune_ratio < 1.0:
            raise ValueError(f"mlp_prune_ratio must be in [0, 1), got {self.mlp_prune_ratio!r} (0.25 = PruneNet's 25%)")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def kept_count(self, total: int) -> int:
        if self.keep_fraction is not None:
            return max(1, int(total * self.keep_fraction + 0.5))
        return self.keep_layers if self.keep_layers is not None else total - self.drop_layers

    def resolve(self, model: Any, adapter: Any, pending: tuple = ()) -> LayerPruneConfig:
        if self.keep_fraction is None:
            return self
        total = planned_layers(model, adapter, pending)
        keep = self.kept_count(total)
        size = len(adapter.layer_groups(model)[0]) if total == len(adapter.decoder_layers(model)) else 1
        if size > 1:  # whole groups only: the nearest multiple of the group size, at least one group
            keep = min(total, max(size, size * int(keep / size + 0.5)))
        return dataclasses.replace(self, keep_layers=keep, keep_fraction=None)

    def layers_after(self, layers: int) -> int:
        return self.kept_count(layers)

    def needs_calibration(self, total: int) -> bool:
        return (self.method == "efficientvla" and self.kept_count(total) < total) or self.mlp_prune_ratio > 0

    def is_neutral(self, model: Any, adapter: Any) -> bool:
        total = len(adapter.decoder_layers(model))
        return self.kept_count(total) == total and self.mlp_prune_ratio == 0


def planned_layers(model: Any, adapter: Any, pending: Sequence[TechniqueConfig]) -> int:
    """Decoder layers ``model`` will have once the ``pending`` configs (earlier in one apply call) are applied."""
    total = len(adapter.decoder_layers(model))
    for cfg in pending:
        total = cfg.layers_after(total)
    return total


# ---------------------------------------------------------------------------------------------- importance
def layer_importance(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Paper Eq. 1: ``I_l = 1 - mean_{b, t} cos(x_l[b, t], x_{l+1}[b, t])``.

    hidden_states: L + 1 tensors [B, T, D] - the input of layer 0, then each layer's output (pre final norm).
    Returns float32 [L]. Averaging per sample first and then over samples (as Eq. 1 does) is the caller's
    choice: :func:`calibrate` calls this once per sample.
    """
    if len(hidden_states) < 2:
        raise ValueError("layer_importance needs L + 1 >= 2 hidden states (input of layer 0, then every layer's output)")
    x = torch.stack([h.float() for h in hidden_states])  # [L+1, B, T, D]
    cos = F.cosine_similarity(x[:-1], x[1:], dim=-1)  # [L, B, T]
    return 1.0 - cos.flatten(1).mean(dim=1)  # [L]


@dataclasses.dataclass
class Calibration:
    """What one calibration pass measured on the unpruned model."""

    layer_importance: torch.Tensor  # [L], mean over samples of Eq. 1 (coupled stacks: summed over the pair)
    mlp_activation: list[torch.Tensor] | None  # per layer [I]: mean |act_fn(gate(x)) * up(x)| per channel
    samples: int
    per_stack: list[torch.Tensor] | None = None  # [L] each: the LM's scores, then each coupled stack's


def calibrate(model: Any, observations: Sequence[dict[str, Any]], mlp: bool = False, adapter: Any = None) -> Calibration:
    """Run ``observations`` through the model's LM (via its adapter) and measure layer importance (Eq. 1).

    Hooks capture the input of layer 0 and every layer's output for each forward; a sample may span several
    forwards (the reference VLA: instruction prefix, then the observation block; pi0's expert: one per flow step),
    which are concatenated along the token axis before Eq. 1. Coupled stacks are measured the same way and their
    scores added layer by layer (pairs). With ``mlp=True`` the mean |input of down_proj| per channel of the LM is
    collected too.
    """
    from vlaccel.adapters import get_adapter

    adapter = adapter or get_adapter(model)
    layers = adapter.decoder_layers(model)
    if not observations:
        raise ValueError("calibrate() needs at least one observation")
    owners = [adapter.decoder_owner(model), *adapter.coupled_decoders(model)]
    stacks = [_StackCapture(adapter.hidden_state_taps(model, owner)) for owner in owners]
    act_sum = [None] * len(layers) if mlp else None
    act_count = [0] * len(layers)

    def grab_mlp(i):
        def hook(_mod, args):
            a = args[0].detach().abs().flatten(0, -2)  # [B*T, I]
            act_sum[i] = a.sum(0) if act_sum[i] is None else act_sum[i] + a.sum(0)
            act_count[i] += a.shape[0]
        return hook

    handles = []
    if mlp:
        handles += [mlp_prune.mlp_parts(adapter.mlp_module(model, layer))[2].register_forward_pre_hook(grab_mlp(i))
                    for i, layer in enumerate(layers)]
    per_sample = []
    try:
        for stack in stacks:
            stack.install()
        for sample in observations:
            for stack in stacks:
                stack.clear()
            adapter.run_calibration_sample(model, sample)
            per_sample.append(torch.stack([stack.importance() for stack in stacks]))  # [stacks, L]
    finally:
        for stack in stacks:
            stack.remove()
        for h in handles:
            h.remove()
    acts = [s / max(n, 1) for s, n in zip(act_sum, act_count)] if mlp else None
    per_stack = torch.stack(per_sample).mean(0)  # [stacks, L]
    return Calibration(per_stack.sum(0), acts, len(per_sample), list(per_stack))


class _StackCapture:
    """Hooks capturing one decoder stack's layer-0 input and every layer's output during calibration runs, at the
    adapter's ``hidden_state_taps`` (L + 1 ``(module, "input" | "output")``: by default the layers themselves)."""

    def __init__(self, taps: Sequence[tuple[nn.Module, str]]):
        self.taps = list(taps)
        self.captured: list[list[torch.Tensor]] = [[] for _ in self.taps]
        self.handles: list[Any] = []

    def install(self) -> None:
        for i, (module, kind) in enumerate(self.taps):
            self.handles.append(module.register_forward_pre_hook(self._grab_input(i), with_kwargs=True)
                                if kind == "input" else module.register_forward_hook(self._grab_output(i)))

    def _grab_input(self, i):
        def hook(_mod, args, kwargs):
            self.captured[i].append((args[0] if args else kwargs["hidden_states"]).detach())
        return hook

    def _grab_output(self, i):
        def hook(_mod, _args, output):
            self.captured[i].append((output[0] if isinstance(output, tuple) else output).detach())
        return hook

    def clear(self) -> None:
        for c in self.captured:
            c.clear()

    def importance(self) -> torch.Tensor:
        if not self.captured[0]:
            raise RuntimeError(f"a calibration sample never ran this stack's {type(self.taps[0][0]).__name__}; "
                               "layer importance needs each stack's forwards (for pi0: sample_actions' keyword "
                               "arguments)")
        return layer_importance([torch.cat(c, dim=1) for c in self.captured])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


# ---------------------------------------------------------------------------------------------- calibration data
def _check_calibration_source(model: Any, config: LayerPruneConfig) -> None:
    if config.calibration_data is not None:
        if not Path(config.calibration_data).exists():
            raise FileNotFoundError(f"LayerPruneConfig.calibration_data {config.calibration_data!r} does not exist")
    elif recorded_observations(model) is None:
        raise MissingInputError(
            "LayerPruneConfig needs calibration observations and found none on this model. Provide them with "
            "LayerPruneConfig(..., calibration_data='path/to/demos_or_file.npz') (a `vlaccel collect` folder or an "
            "npz of per-sample arrays), or "
            "vlaccel.techniques.layer_prune.set_calibration_observations(policy, [{'image': ..., 'instruction': ...}, ...]), "
            f"or save them as {CALIBRATION_FILE} in the policy's folder. "
            "method='last' needs no calibration (unless mlp_prune_ratio > 0)."
        )


def calibration_observations(model: Any, config: LayerPruneConfig) -> list[dict[str, Any]]:
    """The ``config.calibration`` samples used for ``model`` (sources in the module docstring, in order)."""
    _check_calibration_source(model, config)
    source = config.calibration_data
    if source is not None and Path(source).is_dir():
        pool = demo_folder_observations(Path(source), config.calibration)
    elif source is not None:
        pool = load_calibration_observations(source)
    else:
        pool = recorded_observations(model)
    return evenly_spaced(pool, config.calibration)


# ---------------------------------------------------------------------------------------------- handler
def layers_to_keep(importance: torch.Tensor | None, total: int, keep: int, method: str,
                   groups: Sequence[Sequence[int]] | None = None) -> list[int]:
    """Indices (ascending) of the kept layers: drop the ``total - keep`` lowest-importance ones
    (ties: the lower index is dropped first), or the last ones for ``method="last"``. With ``groups`` (the
    adapter's ``layer_groups``, all of one size g) whole groups go: the (total - keep) / g groups of lowest summed
    importance, or the last ones."""
    if groups is None or all(len(g) == 1 for g in groups):
        if method == "last" or keep == total:
            return list(range(keep))
        order = torch.sort(importance, stable=True).indices  # ascending importance
        return sorted(order[total - keep:].tolist())
    size = len(groups[0])
    drop_groups = (total - keep) // size
    if method == "last" or drop_groups == 0:
        kept_groups = list(range(len(groups) - drop_groups))
    else:
        score = torch.stack([importance[list(g)].sum() for g in groups])  # [G]
        kept_groups = sorted(torch.sort(score, stable=True).indices[drop_groups:].tolist())
    return [i for g in kept_groups for i in groups[g]]


def _group_size(groups: Sequence[Sequence[int]]) -> int:
    """The common size of the adapter's layer groups (1 for singletons); unequal groups are refused."""
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise NotImplementedError(f"layer pruning needs layer groups of one size; this model's have sizes "
                                  f"{sorted(sizes)} (a depth that is not a multiple of the group size)")
    return sizes.pop()


class _StackSurgery:
    """One decoder stack's layers cut to ``keep`` (original indices), undone exactly by :meth:`remove`."""

    def __init__(self, adapter: Any, model: Any, owner: nn.Module, config: Any, keep: list[int]):
        self.owner, self.config = owner, config
        self.old_layers = owner.layers
        self.old_num = config.num_hidden_layers
        self.old_types = getattr(config, "layer_types", None)
        self.attns = [adapter.attention_module(model, layer) for layer in self.old_layers]
        self.old_idx = [a.layer_idx for a in self.attns]
        owner.layers = nn.ModuleList([self.old_layers[i] for i in keep])
        config.num_hidden_layers = len(keep)
        if self.old_types is not None:
            config.layer_types = [self.old_types[i] for i in keep]
        for j, i in enumerate(keep):
            self.attns[i].layer_idx = j

    def remove(self) -> None:
        self.owner.layers = self.old_layers
        self.config.num_hidden_layers = self.old_num
        if self.old_types is not None:
            self.config.layer_types = self.old_types
        for attn, idx in zip(self.attns, self.old_idx):
            attn.layer_idx = idx


class _Applied:
    def __init__(self, adapter: Any, model: Any, keep: list[int]):
        self.kept = keep  # original indices of the kept layers
        self.importance: torch.Tensor | None = None  # [L] Eq. 1 scores, when calibrated
        self.mlp: mlp_prune.MLPPruned | None = None
        self.stacks = [_StackSurgery(adapter, model, adapter.decoder_owner(model), adapter.lm_config(model), keep)]
        self.stacks += [_StackSurgery(adapter, model, stack, stack.config, keep)
                        for stack in adapter.coupled_decoders(model)]
        self.adapter, self.model = adapter, model
        adapter.layers_changed(model)

    def remove(self) -> None:
        if self.mlp is not None:
            self.mlp.remove()
        for stack in reversed(self.stacks):
            stack.remove()
        self.adapter.layers_changed(self.model)


class LayerPruneHandler:
    def validate(self, model: Any, config: LayerPruneConfig, adapter: Any, pending: tuple = ()) -> None:
        total = len(adapter.decoder_layers(model))
        for stack in adapter.coupled_decoders(model):
            if len(stack.layers) != total:
                raise NotImplementedError(f"layer pruning removes layers in pairs from {type(model).__name__}'s "
                                          f"decoder ({total} layers) and its coupled {type(stack).__name__} "
                                          f"({len(stack.layers)} layers); stacks of unequal depth are not supported")
        if config.keep_layers is not None and not 1 <= config.keep_layers <= total:
            raise ValueError(f"keep_layers={config.keep_layers} is outside [1, {total}] for this {total}-layer decoder "
                             f"({total} keeps every layer)")
        if config.drop_layers is not None and not 0 <= config.drop_layers <= total - 1:
            raise ValueError(f"drop_layers={config.drop_layers} is outside [0, {total - 1}] for this {total}-layer decoder")
        size = _group_size(adapter.layer_groups(model))
        if (total - config.kept_count(total)) % size:
            raise ValueError(f"{type(model).__name__} removes layers in aligned groups of {size} "
                             f"({adapter.layer_groups(model)[0]}, ...): keep a multiple of {size} layers, e.g. "
                             f"keep_layers={total - size * max(1, round((total - config.kept_count(total)) / size))}")
        if config.mlp_prune_ratio > 0:
            for layer in adapter.decoder_layers(model):
                mlp_prune.mlp_parts(adapter.mlp_module(model, layer))
        if config.needs_calibration(total):
            _check_calibration_source(model, config)

    def apply(self, model: Any, config: LayerPruneConfig, adapter: Any, prepared: None = None) -> _Applied:
        total = len(adapter.decoder_layers(model))
        keep_n = config.kept_count(total)
        calib = None
        if config.needs_calibration(total):
            calib = calibrate(model, calibration_observations(model, config), mlp=config.mlp_prune_ratio > 0,
                              adapter=adapter)
        keep = layers_to_keep(None if calib is None else calib.layer_importance, total, keep_n, config.method,
                              adapter.layer_groups(model))
        state = _Applied(adapter, model, keep)
        if config.mlp_prune_ratio > 0:
            try:
                mlps = [adapter.mlp_module(model, layer) for layer in adapter.decoder_layers(model)]
                state.mlp = mlp_prune.prune(mlps, [calib.mlp_activation[i] for i in keep], config.mlp_prune_ratio)
            except BaseException:
                state.remove()
                raise
        state.importance = None if calib is None else calib.layer_importance
        return state
