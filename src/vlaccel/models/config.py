"""``ReferenceVLAConfig``: sizes of the CogACT-shaped reference policy, with ``tiny()`` and ``default()`` presets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from vlaccel.errors import UsageError

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VISUAL_READOUT_SOURCES = ("lm_output", "lm_input")
VISUAL_READOUT_POOLS = ("attention", "flatten")


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
    def from_dict(cls, data: dict[str, Any]) -> ReferenceVLAConfig:
        """A config from a saved ``config.json``: every field must be there. A missing one is an error, not the
        dataclass default: a default that differs from what the file was trained with changes the actions."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown ReferenceVLAConfig field(s) {unknown}")
        missing = sorted(known - set(data))
        if missing:
            raise UsageError(f"the policy config has no {', '.join(missing)}: every ReferenceVLAConfig field must be "
                             "given (a saved config.json lists them all; add the value the policy was trained with)")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
