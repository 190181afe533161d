"""LeRobot's pi0 / pi0.5 (``PI0Policy``, ``PI05Policy``) built offline with random weights, and their inputs.

Checked on LeRobot 0.6.1 (:data:`LEROBOT_CHECKED`). The policies are built through LeRobot's own config classes
(``make_policy_config("pi0" | "pi05", ...)``); nothing is read from the hub.

Sizes:

* ``full``: the published shapes, PaliGemma (SigLIP So400m/14 at 224 px, 256 tokens per camera; Gemma 2B, 18
  layers) with the Gemma 300M action expert (18 layers), 3.5 B parameters (the 257,152-token vocabulary included),
  50-action chunks, 10 flow steps. About 14 GB in float32 with both unused ``lm_head``s; over a minute to build.
* ``tiny``: the test suite's, about 0.2 M parameters, a few seconds to build. LeRobot hard-codes the shapes
  (``get_gemma_config`` knows only ``gemma_2b`` / ``gemma_300m``; ``PaliGemmaWithExpertModel.__init__`` sets the
  257,152 vocabulary and the SigLIP widths right before it instantiates ``PaliGemmaForConditionalGenerationWithPiGemma``
  and ``PiGemmaForCausalLM``), so :func:`shrunk` replaces those three module attributes of the modeling module
  while the policy is built and puts the originals back afterwards: the shrinking never outlives the build.

Inputs (:func:`pi_batch`) are what LeRobot's preprocessor hands the policy: one image per camera
(``observation.images.<camera>`` [B, 3, H, W] in [0, 1]), the normalised state (``observation.state`` [B, S]),
and the tokenized prompt (``observation.language.tokens`` [B, L], ``observation.language.attention_mask`` [B, L],
right-padded to ``tokenizer_max_length``; pi0.5's prompt carries the discretised state as text). The tokens are
random ids (no tokenizer offline). :func:`action_noise` gives the flow's starting noise for a seed, so
``predict_action_chunk(batch, noise=...)`` (:func:`predict_chunk`) is deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["LEROBOT_CHECKED", "SIZES", "CAMERAS", "PROMPT_TOKENS", "TinyShapes", "shrunk", "build_lerobot_pi",
           "pi_batch", "action_noise", "predict_chunk"]

LEROBOT_CHECKED = "0.6.1"  # the LeRobot release whose construction code the shrinking below was checked against
_MODELING = {"pi0": "lerobot.policies.pi0.modeling_pi0", "pi05": "lerobot.policies.pi05.modeling_pi05"}


@dataclasses.dataclass(frozen=True)
class TinyShapes:
    """The shapes a shrunk pi0 / pi0.5 gets (everything else as LeRobot builds it)."""

    vocab: int = 300
    vlm_width: int = 64
    vlm_mlp: int = 128
    expert_width: int = 32
    expert_mlp: int = 64
    depth: int = 4  # VLM and expert alike (LeRobot pairs them layer by layer)
    heads: int = 8  # LeRobot's joint training forward reshapes to 8 heads
    head_dim: int = 16
    vision_width: int = 32
    vision_mlp: int = 64
    vision_layers: int = 1
    vision_heads: int = 2
    patch: int = 8
    image: int = 32  # 16 tokens per camera


#: size -> (policy-config keyword arguments, shapes to shrink to or None for LeRobot's own)
SIZES: dict[str, tuple[dict[str, Any], TinyShapes | None]] = {
    "full": ({}, None),
    "tiny": ({"chunk_size": 8, "n_action_steps": 8, "max_state_dim": 8, "max_action_dim": 8,
              "image_resolution": (32, 32), "tokenizer_max_length": 12}, TinyShapes()),
}
CAMERAS = {"full": 3, "tiny": 2}  # pi0's base + two wrist cameras; the tests use two
PROMPT_TOKENS = {"full": 24, "tiny": 8}  # valid tokens of the right-padded prompt
STATE_DIM = {"full": 8, "tiny": 6}  # the robot's state / action size before LeRobot pads it to max_*_dim


@contextlib.contextmanager
def shrunk(kind: str, shapes: TinyShapes) -> Iterator[None]:
    """While open, policies of ``kind`` ("pi0" / "pi05") build at ``shapes``: ``get_gemma_config``,
    ``PaliGemmaForConditionalGenerationWithPiGemma`` and ``PiGemmaForCausalLM`` of its modeling module are replaced
    by wrappers that edit the config LeRobot prepared, then call the original. Restored on exit."""
    module = importlib.import_module(_MODELING[kind])
    names = ("get_gemma_config", "PaliGemmaForConditionalGenerationWithPiGemma", "PiGemmaForCausalLM")
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise RuntimeError(f"{module.__name__} has no {missing}: the tiny build was checked on LeRobot "
                           f"{LEROBOT_CHECKED}; install lerobot=={LEROBOT_CHECKED} or build size='full'")
    originals = {n: getattr(module, n) for n in names}
    gemma_config, vlm_class, expert_class = (originals[n] for n in names)

    def tiny_gemma_config(variant: str) -> Any:
        cfg = gemma_config(variant)  # validates the variant name as LeRobot does
        wide = variant == "gemma_2b"
        return type(cfg)(width=shapes.vlm_width if wide else shapes.expert_width,
                         depth=shapes.depth, mlp_dim=shapes.vlm_mlp if wide else shapes.expert_mlp,
                         num_heads=shapes.heads, num_kv_heads=1, head_dim=shapes.head_dim)

    def tiny_vlm(config: Any) -> Any:
        config._vocab_size = shapes.vocab  # noqa: SLF001 - where LeRobot itself sets it
        config.text_config.vocab_size = shapes.vocab
        config.image_token_index = shapes.vocab  # unused by pi0 (images are embedded apart), kept out of the vocab
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size = shapes.vision_width, shapes.vision_mlp
        vision.num_hidden_layers, vision.num_attention_heads = shapes.vision_layers, shapes.vision_heads
        vision.patch_size = shapes.patch
        vision.projection_dim = config.text_config.hidden_size
        return vlm_class(config=config)

    def tiny_expert(config: Any) -> Any:
        config.vocab_size = shapes.vocab
        return expert_class(config=config)

    replacements = {"get_gemma_config": tiny_gemma_config,
                    "PaliGemmaForConditionalGenerationWithPiGemma": tiny_vlm, "PiGemmaForCausalLM": tiny_expert}
    try:
        for name, value in replacements.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in originals.items():
            setattr(module, name, value)


def _features(size: str, cameras: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

    res = SIZES[size][0].get("image_resolution", (224, 224))
    inputs = {f"{OBS_IMAGES}.camera{i}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, *res))
              for i in range(cameras)}
    inputs[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM[size],))
    return inputs, {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(STATE_DIM[size],))}


def build_lerobot_pi(kind: str = "pi0", size: str = "tiny", seed: int = 0, cameras: int | None = None,
                     **config_kwargs: Any) -> Any:
    """A random-weight LeRobot ``PI0Policy`` (``kind="pi0"``) or ``PI05Policy`` (``"pi05"``) of ``size`` (a key of
    :data:`SIZES`), float32, on the CPU, in eval mode; ``cameras`` image inputs (default :data:`CAMERAS`).
    ``config_kwargs`` go to the policy config (e.g. ``num_inference_steps``)."""
    from lerobot.policies.factory import get_policy_class, make_policy_config

    if kind not in _MODELING:
        raise ValueError(f"unknown LeRobot pi policy {kind!r}; one of {sorted(_MODELING)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {sorted(SIZES)}")
    base, shapes = SIZES[size]
    inputs, outputs = _features(size, CAMERAS[size] if cameras is None else cameras)
    config = make_policy_config(kind, **{"dtype": "float32", "device": "cpu", **base, **config_kwargs},
                                input_features=inputs, output_features=outputs)
    torch.manual_seed(seed)
    with shrunk(kind, shapes) if shapes is not None else contextlib.nullcontext():
        policy = get_policy_class(kind)(config)
    return policy.eval()


def pi_batch(policy: Any, seed: int = 0, batch: int = 1, prompt_tokens: int | None = None) -> dict[str, Any]:
    """A LeRobot observation batch as the preprocessor gives it to ``policy`` (see the module docstring): every
    camera of ``policy.config.image_features``, the state, and ``prompt_tokens`` valid tokens (BOS first) of a
    prompt right-padded to ``tokenizer_max_length``."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

    cfg = policy.config
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {key: torch.rand(batch, *feature.shape, generator=g)  # [B, 3, H, W] in [0, 1]
                           for key, feature in cfg.image_features.items()}
    out[OBS_STATE] = torch.rand(batch, *cfg.input_features[OBS_STATE].shape, generator=g) * 2 - 1  # [B, S]
    length = cfg.tokenizer_max_length
    valid = min(length, prompt_tokens or (PROMPT_TOKENS["tiny"] if length < 48 else PROMPT_TOKENS["full"]))
    vocab = policy.model.paligemma_with_expert.paligemma.config.text_config.vocab_size
    tokens = torch.zeros(batch, length, dtype=torch.long)  # [B, L], pad id 0
    tokens[:, :valid] = torch.randint(3, vocab, (batch, valid), generator=g)
    tokens[:, 0] = 2  # Gemma's BOS
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :valid] = True
    out[OBS_LANGUAGE_TOKENS], out[OBS_LANGUAGE_ATTENTION_MASK] = tokens, mask
    return out


def action_noise(policy: Any, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """The flow's starting noise [B, chunk, max_action_dim] for ``seed`` (``sample_actions``' ``noise``)."""
    cfg = policy.config
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=g)


def predict_chunk(policy: Any, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """``policy.predict_action_chunk`` [B, chunk, action_dim] on observation ``seed`` with fixed noise."""
    with torch.no_grad():
        return policy.predict_action_chunk(pi_batch(policy, seed, batch), noise=action_noise(policy, seed, batch))
