"""``ReferenceVLAConfig``: sizes of the CogACT-shaped reference policy, with ``tiny()`` and ``default()`` presets."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from vlaccel.errors import UsageError

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VISUAL_READOUT_SOURCES = ("lm_output", "lm_input")
VISUAL_READOUT_POOLS = ("attention", "flatten")

_WIDTH = 1 << 20  # any width, count or length: far past a model that fits in memory
_LAYERS = 1024
_SEED = 2**63 - 1
#: the range a saved config.json may give each integer field (inclusive)
INT_RANGES: dict[str, tuple[int, int]] = {
    "image_size": (1, 1 << 14), "patch_size": (1, 1 << 14), "num_cameras": (1, 64),
    "vision_hidden": (1, _WIDTH), "vision_layers": (1, _LAYERS), "vision_heads": (1, _WIDTH),
    "vision_intermediate": (1, _WIDTH), "lm_hidden": (1, _WIDTH), "lm_layers": (1, _LAYERS), "lm_heads": (1, _WIDTH),
    "lm_kv_heads": (1, _WIDTH), "lm_intermediate": (1, _WIDTH), "max_positions": (1, 1 << 24),
    "vocab_size": (1, _WIDTH), "proprio_dim": (0, _WIDTH), "action_dim": (1, _WIDTH), "action_chunk": (1, _WIDTH),
    "dit_width": (1, _WIDTH), "dit_depth": (1, _LAYERS), "dit_heads": (1, _WIDTH), "train_timesteps": (1, 1 << 20),
    "inference_steps": (1, 1 << 20), "sampling_seed": (0, _SEED), "visual_readout_heads": (0, _WIDTH),
    "init_seed": (0, _SEED),
}
#: the range a saved config.json may give each float field: (low, high, low included); always finite
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "rope_theta": (0.0, math.inf, False), "dit_mlp_ratio": (0.0, 1024.0, False), "cfg_scale": (0.0, math.inf, True),
    "init_noise_scale": (0.0, math.inf, True), "cfg_dropout": (0.0, 1.0, True),
}


@dataclasses.dataclass
class ReferenceVLAConfig:
    """Every size of the reference VLA. JSON-serialisable; saved next to the weights.

    Token layout of one observation (appended to the LM's KV cache each control step):
    ``[visual tokens of camera 0 .. camera C-1][proprio token (if proprio_dim > 0)][cognition token]``.
    """

    # vision (transformers SiglipVisionModel)
    image_size: int = 128
    patch_size: int = 16
    num_cameras: int = 1
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_intermediate: int = 768
    # language model (transformers LlamaModel)
    lm_hidden: int = 256
    lm_layers: int = 8
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_intermediate: int = 768
    rope_theta: float = 10000.0
    max_positions: int = 32768
    vocab_size: int = 400  # the shipped tokenizer's size
    # proprioception
    proprio_dim: int = 4
    # DiT action head (CogACT-style: condition token prepended, pre-LN blocks, epsilon prediction)
    action_dim: int = 4
    action_chunk: int = 16
    dit_width: int = 256
    dit_depth: int = 4
    dit_heads: int = 4
    dit_mlp_ratio: float = 4.0
    train_timesteps: int = 100
    inference_steps: int = 10  # DDIM
    timestep_spacing: str = "leading"  # which DDIM timesteps: diffusers' "leading", "trailing" or "linspace"
    cfg_scale: float = 1.5
    init_noise_scale: float = 1.0  # DDIM starts from init_noise_scale * N(0, I); < 1 = low-temperature sampling
    sampling_seed: int = 0  # seed of the initial noise of every call (a fixed seed = a deterministic policy)
    cfg_dropout: float = 0.1  # training: probability of using the learned unconditional embedding
    # visual readout (models.visual_readout): reads the current frame's visual tokens into the condition vector;
    # heads 0 = off (CogACT: the cognition token alone). Source: the LM's last-layer outputs at those tokens
    # ("lm_output") or the projector's tokens the LM reads ("lm_input"). Pool: "attention" (`heads` learned queries,
    # a pool over a set) or "flatten" (`heads` channels per token, concatenated in patch order so each token's place
    # is kept; needs "lm_input", whose token count token pruning never changes)
    visual_readout_heads: int = 0
    visual_readout_source: str = "lm_output"
    visual_readout_pool: str = "attention"
    # misc
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise UsageError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.lm_heads % self.lm_kv_heads:
            raise UsageError(f"lm_heads {self.lm_heads} must be a multiple of lm_kv_heads {self.lm_kv_heads}")
        if not self.init_noise_scale >= 0:
            raise UsageError(f"init_noise_scale must be >= 0 (1 = standard DDIM, 0 = start from the zero action), "
                             f"got {self.init_noise_scale!r}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise UsageError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS} (diffusers DDIMScheduler), "
                             f"got {self.timestep_spacing!r}")
        if self.visual_readout_source not in VISUAL_READOUT_SOURCES:
            raise UsageError(f"visual_readout_source must be one of {VISUAL_READOUT_SOURCES}, "
                             f"got {self.visual_readout_source!r}")
        if self.visual_readout_pool not in VISUAL_READOUT_POOLS:
            raise UsageError(f"visual_readout_pool must be one of {VISUAL_READOUT_POOLS}, got {self.visual_readout_pool!r}")
        heads, attention = self.visual_readout_heads, self.visual_readout_pool == "attention"
        if heads < 0 or (attention and heads and self.lm_hidden % heads):
            want = f"a divisor of lm_hidden={self.lm_hidden}" if attention else "positive (channels per token)"
            raise UsageError(f"visual_readout_heads must be 0 (off) or {want}, got {heads}")
        if not attention and self.visual_readout_source != "lm_input":
            raise UsageError("visual_readout_pool='flatten' needs a fixed number of tokens: use "
                             "visual_readout_source='lm_input' (token pruning drops LM outputs, never LM inputs)")
        if self.lm_hidden % self.lm_heads:
            raise UsageError(f"lm_hidden {self.lm_hidden} must be a multiple of lm_heads {self.lm_heads}")

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def visual_tokens_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def visual_tokens(self) -> int:
        return self.visual_tokens_per_camera * self.num_cameras

    @property
    def tokens_per_frame(self) -> int:
        """Tokens one observation appends to the KV cache: visual + proprio + cognition."""
        return self.visual_tokens + (1 if self.proprio_dim else 0) + 1

    @property
    def head_dim(self) -> int:
        return self.lm_hidden // self.lm_heads

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> ReferenceVLAConfig:
        """For tests: builds and runs in milliseconds (16 visual tokens, 2-layer LM, 2 DiT blocks)."""
        return cls(
            image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
            lm_hidden=64, lm_layers=4, lm_heads=4, lm_kv_heads=2, lm_intermediate=128, max_positions=8192,
            dit_width=32, dit_depth=2, dit_heads=2, train_timesteps=100, inference_steps=10,
        )

    @classmethod
    def default(cls) -> ReferenceVLAConfig:
        """The size trained on the Meta-World suite: 64 visual tokens/frame, 8 LM layers, 4 DiT blocks.

        Decodes from ``x_T = 0`` (``init_noise_scale=0``), as the bundled policy does: with a fixed noise draw,
        which tasks succeed depended on the seed of that draw (docs/reference_policy.md, "What we tried").
        """
        return cls(init_noise_scale=0.0)

    @classmethod
    def preset(cls, name: str) -> ReferenceVLAConfig:
        presets = {"tiny": cls.tiny, "default": cls.default}
        if name not in presets:
            raise UsageError(f"unknown reference preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the policy config") -> ReferenceVLAConfig:
        """A config from a saved ``config.json`` (``source`` names it in errors): every field must be there, each of
        its type and in its range (:data:`INT_RANGES`, :data:`FLOAT_RANGES`; floats finite). A missing field is an
        error, not the dataclass default: a default that differs from what the file was trained with changes the
        actions."""
        if not isinstance(data, dict):
            raise UsageError(f"{source} must be a JSON object of ReferenceVLAConfig fields, got {type(data).__name__}; "
                             "save the policy again with vlaccel.save_policy")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{source}: unknown ReferenceVLAConfig field(s) {unknown}; remove them (the known fields "
                             "are those vlaccel.save_policy writes)")
        missing = [name for name in known if name not in data]
        if missing:
            raise UsageError(f"{source} has no {', '.join(missing)}: every ReferenceVLAConfig field must be "
                             "given (a saved config.json lists them all; add the value the policy was trained with)")
        for name in known:
            _check_field(name, data[name], source)
        try:
            return cls(**data)
        except UsageError as err:
            raise UsageError(f"{source}: {err}; set the fields to the values the policy was trained with") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check_field(name: str, value: Any, source: str) -> None:
    """Refuse a saved field of the wrong JSON type or out of its range, naming the file, the field and the fix."""
    fix = "set it to the value the policy was trained with (vlaccel.save_policy writes a valid file)"
    if name in INT_RANGES:
        low, high = INT_RANGES[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UsageError(f"{source}: {name} must be an integer in [{low}, {high}], got {value!r}; {fix}")
    elif name in FLOAT_RANGES:
        low, high, closed = FLOAT_RANGES[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not (low <= value if closed else low < value) or value > high:
            bound = f"{'>=' if closed else '>'} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise UsageError(f"{source}: {name} must be a finite number {bound}, got {value!r}; {fix}")
    elif not isinstance(value, str):
        raise UsageError(f"{source}: {name} must be a string, got {value!r}; {fix}")
