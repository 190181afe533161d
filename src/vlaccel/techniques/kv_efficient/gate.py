"""Chunk aggregators (MLP and mean) and the LSTM utility gate of KV-Efficient VLA (arXiv 2509.21354), and their files.

Aggregator (paper: "an MLP aggregates each chunk"; the official code mean-pools). Ours, per KV head and
vectorised over batch, heads and chunks: an MLP scores each of the chunk's C tokens from its de-rotated key
and its value, a softmax over the chunk turns the scores into ``s`` pooling distributions, and the ``s``
summary slots are those weighted means of the keys and of the values::

    w[j, c] = softmax_c( MLP([k_c ; v_c])_j + prior[j, c] )      j < s, c < C
    k_sum[j] = sum_c w[j, c] k_c,   v_sum[j] = sum_c w[j, c] v_c

Keys and values share the weights, so a slot pools the same tokens in K and in V. The last MLP layer starts at
zero and ``prior`` assigns slot j to the j-th contiguous part of the chunk, so an untrained aggregator is
exactly the mean baseline; training moves it away. Convex weights keep a summary inside its chunk's span and
make the RoPE bookkeeping exact (a chunk of identical de-rotated keys summarises to that key).

Gate (paper: "LSTM gating ... learned utility scores"). Per layer, the LSTM reads one feature vector per
completed chunk (the chunk summary: for every KV head, the slot-mean of the de-rotated summary key and of the
summary value, concatenated, layer-normed), with (h, c) carried from that layer's previous chunk:
``h_m, c_m = LSTMCell(x_m, (h_{m-1}, c_{m-1}))``, ``g_m = sigmoid(w^T h_m + b)``. One set of weights serves every
layer (as in the official code); each layer keeps its own state in the cache. Differences from the official
code: the LSTM reads the summary of the chunk it decides on (not the newest tokens), K and V
get one decision, and the weights are trained (:mod:`vlaccel.training.kv_gate`).

Files: ``gate.safetensors`` + ``gate.json`` (sizes, the fingerprint of the policy it was trained for, the
cache settings and training statistics). :func:`load_gate` refuses a gate trained for another policy.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaccel.errors import MissingInputError, UsageError

__all__ = ["ChunkAggregator", "MeanAggregator", "LSTMGate", "KVGate", "load_gate", "save_gate", "gate_files",
           "GateMismatchError", "GateFingerprintError", "GATE_WEIGHTS", "GATE_META", "POLICY_GATE_DIR", "policy_gate_dir", "shipped_gate_dir"]

GATE_WEIGHTS, GATE_META = "gate.safetensors", "gate.json"
PRIOR_OUTSIDE = -30.0  # logit prior for tokens outside a slot's segment: exp(-30) ~ 1e-13, i.e. not pooled


class GateMismatchError(UsageError):
    """A gate file does not fit the policy (trained for another policy, or other head sizes) or is malformed."""


class GateFingerprintError(GateMismatchError):
    """A well-formed gate trained for other weights than the policy's (its ``gate.json`` fingerprint differs)."""


#: the fields of ``gate.json``'s ``sizes``: integer sizes, and the untrained gate's utility
_SIZE_FIELDS = ("head_dim", "kv_heads", "slots", "agg_hidden", "lstm_hidden")
_MAX_SIZE = 1 << 16


def shipped_gate_dir() -> Path:
    """Where the gate trained for the bundled reference policy lives (``vlaccel/assets/kv_gate``)."""
    return Path(str(resources.files("vlaccel") / "assets" / "kv_gate"))


POLICY_GATE_DIR = "kv_gate"
"""A gate stored with a saved policy (``<policy folder>/kv_gate``, e.g. ``vlaccel train-kv-gate --out
POLICY/kv_gate``) is the one ``gate=None`` uses for that policy; the bundled policy's is the shipped gate."""


def policy_gate_dir(model: Any) -> Path | None:
    """``<folder>/kv_gate`` of a policy loaded from a folder that holds a gate there (either of its files: a gate
    missing the other is refused when loaded, naming it), else None."""
    folder = getattr(model, "source_dir", None)
    if folder is None or not any((Path(folder) / POLICY_GATE_DIR / f).exists() for f in (GATE_WEIGHTS, GATE_META)):
        return None
    return Path(folder) / POLICY_GATE_DIR


def segment_prior(slots: int, chunk: int, device: torch.device) -> torch.Tensor:
    """[s, C] log-prior: 0 where token c belongs to slot j's contiguous segment, ``PRIOR_OUTSIDE`` elsewhere."""
    seg = torch.div(torch.arange(chunk, device=device) * slots, chunk, rounding_mode="floor")  # [C] slot of token
    inside = seg.unsqueeze(0) == torch.arange(slots, device=device).unsqueeze(1)  # [s, C]
    return torch.where(inside, 0.0, PRIOR_OUTSIDE)


class MeanAggregator(nn.Module):
    """Mean of each of ``s`` contiguous segments of the chunk (the official code's ``aggregate_mean`` for s = 1)."""

    def __init__(self, slots: int = 1):
        super().__init__()
        self.slots = slots

    def weights(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """keys/values [..., C, d] -> pooling weights [..., s, C] (each row sums to 1)."""
        c = keys.shape[-2]
        inside = segment_prior(self.slots, c, keys.device) == 0  # [s, C]
        w = inside.to(keys.dtype) / inside.sum(-1, keepdim=True).to(keys.dtype)
        return w.expand(*keys.shape[:-2], self.slots, c)


class ChunkAggregator(nn.Module):
    """MLP aggregator: per KV head, C x d_h keys and values -> s summary slots (see the module docstring)."""

    def __init__(self, head_dim: int, slots: int = 1, hidden: int = 64):
        super().__init__()
        self.slots = slots
        self.norm = nn.LayerNorm(2 * head_dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(2 * head_dim, hidden), nn.GELU(), nn.Linear(hidden, slots))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def weights(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """keys (de-rotated)/values [..., C, d] -> pooling weights [..., s, C]."""
        c = keys.shape[-2]
        logits = self.mlp(self.norm(torch.cat([keys, values], dim=-1)))  # [..., C, s]
        logits = logits.transpose(-1, -2) + segment_prior(self.slots, c, keys.device)  # [..., s, C]
        return torch.softmax(logits, dim=-1)


class LSTMGate(nn.Module):
    """Utility g in (0, 1) of a chunk, from its summary features and the layer's recurrent state."""

    def __init__(self, in_dim: int, hidden: int = 64, init_utility: float = 0.5):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.cell = nn.LSTMCell(in_dim, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(init_utility / (1 - init_utility)))

    def forward(self, features: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """features [B, in] -> g [B], new (h, c) [B, hidden] each."""
        h, c = self.cell(self.norm(features), state)
        return torch.sigmoid(self.head(h)).squeeze(-1), (h, c)


def summary_features(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """De-rotated summary keys / values [B, H, n, s, d] -> gate inputs [B, n, H*2*d] (slot means per head)."""
    b, h, n, _, d = keys.shape
    x = torch.cat([keys.mean(-2), values.mean(-2)], dim=-1)  # [B, H, n, 2d]
    return x.permute(0, 2, 1, 3).reshape(b, n, h * 2 * d)


class KVGate(nn.Module):
    """The trainable part of KV-Efficient: MLP chunk aggregator + LSTM gate, and what they were trained for."""

    def __init__(self, head_dim: int, kv_heads: int, slots: int = 1, agg_hidden: int = 64, lstm_hidden: int = 64,
                 init_utility: float = 0.5, meta: dict[str, Any] | None = None):
        super().__init__()
        self.sizes = {"head_dim": head_dim, "kv_heads": kv_heads, "slots": slots, "agg_hidden": agg_hidden,
                      "lstm_hidden": lstm_hidden, "init_utility": init_utility}
        self.aggregator = ChunkAggregator(head_dim, slots, agg_hidden)
        self.lstm = LSTMGate(kv_heads * 2 * head_dim, lstm_hidden, init_utility)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    def check_fits(self, head_dim: int, kv_heads: int, slots: int) -> None:
        want = {"head_dim": head_dim, "kv_heads": kv_heads, "slots": slots}
        got = {k: self.sizes[k] for k in want}
        if got != want:
            raise GateMismatchError(f"this gate was built for {got} but the cache needs {want}; train a gate for "
                                    "these settings with `vlaccel train-kv-gate`")


def gate_files(path: str | Path) -> tuple[Path, Path]:
    """A gate folder (or its ``gate.safetensors``) -> (weights path, JSON path)."""
    path = Path(path)
    folder = path if path.suffix != ".safetensors" else path.parent
    weights = path if path.suffix == ".safetensors" else folder / GATE_WEIGHTS
    return weights, weights.with_suffix(".json") if path.suffix == ".safetensors" else folder / GATE_META


def save_gate(gate: KVGate, folder: str | Path) -> Path:
    """Write ``gate.safetensors`` + ``gate.json`` into ``folder`` (through a temp folder: a failed save leaves
    no half-written gate); returns the folder."""
    from safetensors.torch import save_file

    from vlaccel import atomic

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in gate.state_dict().items()}
    meta = json.dumps({"sizes": gate.sizes, **gate.meta}, indent=2, sort_keys=True) + "\n"
    with atomic.folder(folder) as tmp:
        save_file(state, str(tmp / GATE_WEIGHTS), metadata={"format": "pt", "fingerprint": str(gate.fingerprint)})
        (tmp / GATE_META).write_text(meta)
    return folder


def load_gate(path: str | Path, fingerprint: str | None = None) -> KVGate:
    """Load a gate; with ``fingerprint`` (``vlaccel.fingerprint(policy)``) refuse one trained for another policy.
    A malformed gate (sizes, tensors, non-finite weights) is refused with ``GateMismatchError`` naming the file."""
    weights, meta_path = gate_files(path)
    for p in (weights, meta_path):
        if not p.exists():
            raise MissingInputError(f"{p} not found: {path} is not a KV-Efficient gate (train one with "
                                    "`vlaccel train-kv-gate`)")
        if not p.is_file():
            raise GateMismatchError(f"{p} is a folder, not a file: {path} is not a KV-Efficient gate (train one with "
                                    "`vlaccel train-kv-gate`)")
    meta = _read_meta(meta_path)
    sizes = _check_sizes(meta_path, meta.pop("sizes", None))
    if "kv" in meta:
        _check_kv(meta_path, meta["kv"])
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise GateFingerprintError(
            f"the gate at {path} was trained for policy fingerprint {meta.get('fingerprint')!r}, but this policy's "
            f"fingerprint is {fingerprint!r}: a gate only fits the exact weights it was trained with. Train one for "
            "this policy (`vlaccel train-kv-gate --policy PATH`), or use a gate-free baseline "
            "(retention='mean', 'streaming', 'random' or 'h2o'). If the policy was pruned by another technique, "
            "apply KVEfficientConfig in the same vlaccel.apply call (validation sees the unmodified policy)."
        )
    gate = KVGate(**sizes, meta=meta)
    gate.load_state_dict(_read_weights(weights, gate))
    return gate.eval()



def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``gate.json`` as a dict, or a ``GateMismatchError`` naming the file."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise GateMismatchError(f"{meta_path} is not valid JSON ({str(err).splitlines()[0]}); retrain the gate with "
                                "`vlaccel train-kv-gate`") from None
    if not isinstance(meta, dict):
        raise GateMismatchError(f"{meta_path} must be a JSON object, got {type(meta).__name__}; retrain the gate "
                                "with `vlaccel train-kv-gate`")
    return meta


def _check_sizes(meta_path: Path, sizes: Any) -> dict[str, Any]:
    """``gate.json``'s ``sizes``: every field present, integers in range, ``init_utility`` in (0, 1)."""
    if not isinstance(sizes, dict):
        raise GateMismatchError(f"{meta_path} has no 'sizes' (head_dim, kv_heads, slots, ...): it is not a gate file "
                                "written by vlaccel (save_gate / vlaccel train-kv-gate)")
    known = (*_SIZE_FIELDS, "init_utility")
    missing, unknown = [k for k in _SIZE_FIELDS if k not in sizes], sorted(set(sizes) - set(known))
    if missing or unknown:
        raise GateMismatchError(f"{meta_path}: 'sizes' must hold {list(known)} (missing: {missing or 'none'}; "
                                f"unknown: {unknown or 'none'}); retrain the gate with `vlaccel train-kv-gate`")
    for name in _SIZE_FIELDS:
        value = sizes[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_SIZE:
            raise GateMismatchError(f"{meta_path}: sizes.{name} must be an integer in [1, {_MAX_SIZE}], got "
                                    f"{value!r}; retrain the gate with `vlaccel train-kv-gate`")
    utility = sizes.get("init_utility", 0.5)
    if isinstance(utility, bool) or not isinstance(utility, (int, float)) or not 0 < utility < 1:
        raise GateMismatchError(f"{meta_path}: sizes.init_utility must be a number in (0, 1), got {utility!r}; "
                                "retrain the gate with `vlaccel train-kv-gate`")
    return dict(sizes)


_KV_FIELDS = ("window", "chunk", "sinks", "summary_slots", "budget")


def _check_kv(meta_path: Path, kv: Any) -> None:
    """``gate.json``'s optional ``kv`` (the cache settings the gate was trained for): an object of integers."""
    if not isinstance(kv, dict):
        raise GateMismatchError(f"{meta_path}: 'kv' must be an object of the cache settings the gate was trained "
                                f"for ({', '.join(_KV_FIELDS)}), got {kv!r}; retrain the gate with `vlaccel train-kv-gate`")
    for name in _KV_FIELDS:
        value = kv.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise GateMismatchError(f"{meta_path}: kv.{name} must be an integer >= 0, got {value!r}; retrain the "
                                    "gate with `vlaccel train-kv-gate`")


def _read_weights(weights: Path, gate: KVGate) -> dict[str, torch.Tensor]:
    """``gate.safetensors``'s tensors, checked against ``gate``'s: the same names and shapes, finite values."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for a torn or foreign file
        raise GateMismatchError(f"{weights} is not a readable safetensors file ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}); retrain the gate with "
                                "`vlaccel train-kv-gate`") from None
    want = {name: tuple(t.shape) for name, t in gate.state_dict().items()}
    floating = {name: t.is_floating_point() for name, t in gate.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise GateMismatchError(f"{weights} does not hold the tensors its gate.json sizes imply (missing: "
                                f"{missing or 'none'}; unexpected: {unexpected or 'none'}); retrain the gate")
    for name, tensor in state.items():
        if tuple(tensor.shape) != want[name]:
            raise GateMismatchError(f"{weights}: {name} is {list(tensor.shape)} but gate.json's sizes imply "
                                    f"{list(want[name])}; retrain the gate")
        if tensor.is_floating_point() != floating[name]:
            raise GateMismatchError(f"{weights}: {name} is stored as {tensor.dtype}, but a gate's weights are floating "
                                    "point; retrain the gate with `vlaccel train-kv-gate`")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GateMismatchError(f"{weights}: {name} has non-finite values (NaN or inf); the gate's training "
                                    "diverged: retrain it with `vlaccel train-kv-gate` (a lower --lr)")
    return state
