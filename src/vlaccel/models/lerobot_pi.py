"""LeRobot's pi0 / pi0.5 (``PI0Policy``, ``PI05Policy``) built offline with random weights, and their inputs.

Checked on LeRobot 0.6.1 (:data:`LEROBOT_CHECKED`). The policies are built through LeRobot's own config classes
(``make_policy_config("pi0" | "pi05", ...)``); nothing is read from the hub.

Sizes:

* ``full``: the published shapes, PaliGemma (SigLIP So400m/14 at 224 px, 256 tokens per camera; Gemma 2B, 18
  layers) with the Gemma 300M action expert (18 layers), 50-action chunks, 10 flow steps. 4.14 B parameters as
  LeRobot 0.6.1 builds it (17 GB in float32), 1.32 B of them the 257,152-token vocabulary: the VLM's embeddings
  (0.53 B), its ``lm_head`` (0.53 B, not tied to the embeddings in this build) and the expert's ``lm_head``
  (0.26 B); inference never calls the two heads, and ``vocab=`` cuts all three. Minutes to build on a 2-core CPU.
* ``tiny``: the test suite's, about 0.3 M parameters, a few seconds to build. LeRobot hard-codes the shapes
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

__all__ = ["LEROBOT_CHECKED", "SIZES", "CAMERAS", "PROMPT_TOKENS", "Shapes", "TINY", "shrunk", "build_lerobot_pi",
           "pi_batch", "action_noise", "predict_chunk"]

LEROBOT_CHECKED = "0.6.1"  # the LeRobot release whose construction code the shrinking below was checked against
_MODELING = {"pi0": "lerobot.policies.pi0.modeling_pi0", "pi05": "lerobot.policies.pi05.modeling_pi05"}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The shapes a shrunk pi0 / pi0.5 gets; ``None`` keeps LeRobot's own (``vocab`` alone: the published widths
    and depths with a smaller vocabulary, whose size the compute of a chunk does not depend on)."""

    vocab: int | None = None
    vlm_width: int | None = None
    vlm_mlp: int | None = None
    expert_width: int | None = None
    expert_mlp: int | None = None
    depth: int | None = None  # VLM and expert alike (LeRobot pairs them layer by layer)
    heads: int | None = None  # LeRobot's joint training forward reshapes to 8 heads
    head_dim: int | None = None
    vision_width: int | None = None
    vision_mlp: int | None = None
    vision_layers: int | None = None
    vision_heads: int | None = None
    patch: int | None = None


TINY = Shapes(vocab=300, vlm_width=64, vlm_mlp=128, expert_width=32, expert_mlp=64, depth=4, heads=8, head_dim=16,
              vision_width=32, vision_mlp=64, vision_layers=1, vision_heads=2, patch=8)


#: size -> (policy-config keyword arguments, shapes to shrink to or None for LeRobot's own)
SIZES: dict[str, tuple[dict[str, Any], Shapes | None]] = {
    "full": ({}, None),
    # the published widths and depths with a 1,024-token vocabulary: a chunk's compute is the same, 1.31 B parameters
    # (5 GB in float32) fewer (2.83 B in all), so that a bench with compile fits a 24 GB machine
    "full-vocab1k": ({}, Shapes(vocab=1024)),
    "tiny": ({"chunk_size": 8, "n_action_steps": 8, "max_state_dim": 8, "max_action_dim": 8,
              "image_resolution": (32, 32), "tokenizer_max_length": 12}, TINY),  # 16 tokens per camera
}
CAMERAS = {"full": 3, "full-vocab1k": 3, "tiny": 2}  # pi0's base + two wrist cameras; the tests use two
PROMPT_TOKENS = {"full": 24, "full-vocab1k": 24, "tiny": 8}  # valid tokens of the right-padded prompt
STATE_DIM = {"full": 8, "full-vocab1k": 8, "tiny": 6}  # the robot's state / action size before LeRobot pads it


@contextlib.contextmanager
def shrunk(kind: str, shapes: Shapes) -> Iterator[None]:
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

    def given(obj: Any, **values: Any) -> None:
        for name, value in values.items():
            if value is not None:
                setattr(obj, name, value)

    def tiny_gemma_config(variant: str) -> Any:
        cfg = gemma_config(variant)  # validates the variant name as LeRobot does
        wide = variant == "gemma_2b"
        given(cfg, width=shapes.vlm_width if wide else shapes.expert_width, depth=shapes.depth,
              mlp_dim=shapes.vlm_mlp if wide else shapes.expert_mlp, num_heads=shapes.heads, head_dim=shapes.head_dim)
        return cfg

    def tiny_vlm(config: Any) -> Any:
        # where LeRobot sets the vocabulary; the image token id is unused by pi (images are embedded apart)
        given(config, _vocab_size=shapes.vocab, image_token_index=shapes.vocab)
        given(config.text_config, vocab_size=shapes.vocab)
        given(config.vision_config, hidden_size=shapes.vision_width, intermediate_size=shapes.vision_mlp,
              num_hidden_layers=shapes.vision_layers, num_attention_heads=shapes.vision_heads,
              patch_size=shapes.patch, projection_dim=config.text_config.hidden_size)
        return vlm_class(config=config)

    def tiny_expert(config: Any) -> Any:
        given(config, vocab_size=shapes.vocab)
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
                     vocab: int | None = None, **config_kwargs: Any) -> Any:
    """A random-weight LeRobot ``PI0Policy`` (``kind="pi0"``) or ``PI05Policy`` (``"pi05"``) of ``size`` (a key of
    :data:`SIZES`), float32, on the CPU, in eval mode; ``cameras`` image inputs (default :data:`CAMERAS`).
    ``vocab`` replaces the vocabulary size (``full``: 257,152, 1.32 B parameters in the VLM's embeddings and the two
    unused ``lm_head``s; a bench on a machine short of memory can cut it, a chunk's compute is the same).
    ``config_kwargs`` go to the policy config (e.g. ``num_inference_steps``)."""
    from lerobot.policies.factory import get_policy_class, make_policy_config

    if kind not in _MODELING:
        raise ValueError(f"unknown LeRobot pi policy {kind!r}; one of {sorted(_MODELING)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {sorted(SIZES)}")
    base, shapes = SIZES[size]
    if vocab is not None:
        shapes = dataclasses.replace(shapes or Shapes(), vocab=vocab)
    inputs, outputs = _features(size, CAMERAS[size] if cameras is None else cameras)
    config = make_policy_config(kind, **{"dtype": "float32", "device": "cpu", **base, **config_kwargs},
                                input_features=inputs, output_features=outputs)
    if torch.get_default_device().type == "meta":  # sizes only (vlaccel presets): __init__ moves to config.device
        config.device = "meta"
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
