"""LeRobot's ``SmolVLAPolicy`` (lerobot 0.6.1) built offline at two sizes, and its observations.

``SmolVLMWithExpertModel`` reads its VLM config and processor with ``AutoConfig`` / ``AutoProcessor`` from
``config.vlm_model_name`` (with ``load_vlm_weights=False`` no weights are read), and LeRobot's preprocessor
tokenizes the task with ``AutoTokenizer`` from the same name. So :func:`vlm_folder` writes a local folder holding a
``SmolVLMConfig`` ``config.json`` and a ``SmolVLMProcessor`` whose tokenizer is a small ``tokenizers`` WordLevel
vocabulary with the special tokens the model reads (``<fake_token_around_image>``, ``<image>``, ``<global-img>``),
and the policy is built from it with random weights. Sizes:

* ``full``: the published SmolVLA: SmolVLM2-500M's text decoder (hidden 960, 15 heads / 5 KV heads of 64, FFN 2560,
  vocabulary 49280) cut to its first 16 layers, an action expert of width 0.75 (720) and 16 layers, SigLIP
  (hidden 768, 12 layers, patch 16) at 512 px with a x4 pixel shuffle: 64 tokens per camera; 50-action chunks,
  10 flow steps. About 450 M parameters.
* ``tiny``: the test suite's: 4 + 4 layers of width 64 / 48, one SigLIP layer of width 32 at 64 px (x2 shuffle:
  16 tokens per camera), 8-action chunks, 10 flow steps. Builds in seconds.

Observations (:func:`smolvla_observation`) are raw LeRobot observations (images in [0, 1], state, task string);
:func:`smolvla_batch` runs them through LeRobot's own ``make_pre_post_processors`` (batch axis, newline, tokenizer,
device), which is the dict ``predict_action_chunk`` / ``select_action`` take; :func:`smolvla_noise` is a fixed
noise chunk so that a call is deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["SIZES", "CAMERAS", "vlm_folder", "build_smolvla", "smolvla_observation", "smolvla_batch",
           "smolvla_noise", "smolvla_preprocessor"]

_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
            "<global-img>"]
_WORDS = ["pick", "place", "push", "the", "a", "red", "green", "blue", "cube", "cup", "bowl", "block", "into", "on",
          "to", "left", "right", "up", "open", "close", "drawer", "gripper", "and", "then", "move", "grasp", "lift"]
_FORMAT = 1  # bumped when the folder's contents change: an older folder is rewritten

#: size -> (SmolVLMConfig keyword arguments, SmolVLAConfig keyword arguments)
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "full": (
        {"text_config": {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560,
                         "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5,
                         "head_dim": 64, "vocab_size": 49280, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                         "max_position_embeddings": 8192},
         "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "patch_size": 16, "image_size": 512},
         "scale_factor": 4, "image_token_id": 5},
        {"num_vlm_layers": 16, "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32,
         "resize_imgs_with_padding": (512, 512), "tokenizer_max_length": 48},
    ),
    "tiny": (
        {"text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 64,
                         "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 512},
         "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "patch_size": 8, "image_size": 64},
         "scale_factor": 2, "image_token_id": 5},
        {"num_vlm_layers": 4, "chunk_size": 8, "n_action_steps": 8, "max_state_dim": 8, "max_action_dim": 8,
         "resize_imgs_with_padding": (64, 64), "tokenizer_max_length": 16},
    ),
}
CAMERAS = {"full": 1, "tiny": 2}  # the tests use two cameras; the published-size figures one
STATE_DIM, ACTION_DIM = 6, 6  # an SO-100 arm: 5 joints + gripper
_PREPROCESSORS: dict[tuple, Any] = {}  # preprocessors by (tokenizer folder, length, features): no statistics


def _cache_root() -> Path:
    return Path(os.environ.get("VLACCEL_CACHE", Path.home() / ".cache" / "vlaccel")) / "lerobot"


def _valid(folder: Path, size: str) -> bool:
    try:
        stamp = json.loads((folder / "vlaccel.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json")
    return stamp == {"size": size, "format": _FORMAT} and all((folder / f).is_file() for f in files)


def vlm_folder(size: str = "tiny", path: str | Path | None = None) -> Path:
    """The local ``vlm_model_name`` folder of ``size``: ``path``, by default
    ``$VLACCEL_CACHE/lerobot/smolvla-<size>`` (``~/.cache/vlaccel/lerobot/...``); written once, atomically (a
    temporary sibling renamed into place), and reused while its stamp and files are there."""
    if size not in SIZES:
        raise ValueError(f"unknown SmolVLA size {size!r}; one of {sorted(SIZES)}")
    folder = Path(path) if path is not None else _cache_root() / f"smolvla-{size}"
    if _valid(folder, size):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _write_folder(tmp, size)
        if folder.exists():  # an invalid or older folder: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first
            if not _valid(folder, size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_folder(folder: Path, size: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)

    vlm_kwargs, _ = SIZES[size]
    vocab = {t: i for i, t in enumerate(_SPECIAL + _WORDS)}
    assert vocab["<image>"] == vlm_kwargs["image_token_id"]
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    vision = vlm_kwargs["vision_config"]
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 // vlm_kwargs["scale_factor"] ** 2
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(), tokenizer=tokenizer,
                                 video_processor=SmolVLMVideoProcessor(), image_seq_len=tokens)
    processor.save_pretrained(folder)
    SmolVLMConfig(**vlm_kwargs).save_pretrained(folder)
    (folder / "vlaccel.json").write_text(json.dumps({"size": size, "format": _FORMAT}))


def _features(size: str, cameras: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    side = SIZES[size][1]["resize_imgs_with_padding"][0]
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))}
    inputs.update({f"observation.images.camera{i}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, side, side))
                   for i in range(cameras)})
    return inputs, {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}


def build_smolvla(size: str = "tiny", seed: int = 0, cameras: int | None = None, path: str | Path | None = None,
                  **overrides: Any) -> Any:
    """A random-weight LeRobot ``SmolVLAPolicy`` of ``size`` (:data:`SIZES`) with ``cameras`` cameras, in eval mode
    on the CPU, its VLM folder at ``path`` (:func:`vlm_folder`). ``overrides``: further ``SmolVLAConfig`` fields
    (e.g. ``num_steps=5``)."""
    from lerobot.policies.factory import make_policy_config
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    folder = vlm_folder(size, path)
    cameras = CAMERAS[size] if cameras is None else cameras
    inputs, outputs = _features(size, cameras)
    config = make_policy_config("smolvla", vlm_model_name=str(folder), load_vlm_weights=False, device="cpu",
                                input_features=inputs, output_features=outputs, push_to_hub=False,
                                **{**SIZES[size][1], **overrides})
    torch.manual_seed(seed)
    return SmolVLAPolicy(config).eval()


def smolvla_observation(policy: Any, seed: int = 0, task: str = "pick the red cube and place it into the bowl"
                        ) -> dict[str, Any]:
    """One raw LeRobot observation (no batch axis): each camera's image [3, H, W] in [0, 1], the state [S] and
    the task string, random but fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    obs: dict[str, Any] = {}
    for key, feature in policy.config.input_features.items():
        obs[key] = torch.rand(*feature.shape, generator=g) if key.startswith("observation.images.") \
            else torch.randn(*feature.shape, generator=g)
    obs["task"] = task
    return obs


def smolvla_preprocessor(policy: Any) -> Any:
    """LeRobot's own preprocessor for ``policy`` (``make_pre_post_processors``, no dataset statistics: the state is
    passed as given), made once per tokenizer folder and features."""
    key = (policy.config.vlm_model_name, policy.config.tokenizer_max_length, tuple(policy.config.input_features))
    if key not in _PREPROCESSORS:
        from lerobot.policies.factory import make_pre_post_processors

        _PREPROCESSORS[key], _ = make_pre_post_processors(policy.config)
    return _PREPROCESSORS[key]


def smolvla_batch(policy: Any, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The dict ``predict_action_chunk`` takes: :func:`smolvla_observation` run through LeRobot's preprocessor."""
    return smolvla_preprocessor(policy)(smolvla_observation(policy, seed, **kwargs))


def smolvla_noise(policy: Any, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """A fixed noise chunk [batch, chunk_size, max_action_dim] for ``predict_action_chunk(batch, noise=...)``."""
    cfg = policy.config
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=g)
