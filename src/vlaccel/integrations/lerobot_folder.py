"""A LeRobot policy folder for one of LeRobot's environments, written offline: what ``lerobot-eval --policy.path``
loads (``config.json`` + ``model.safetensors`` + the pre/post-processor pipelines), with random weights.

This is how the LeRobot plugin is exercised end to end on a machine without a model hub: a SmolVLA of the given
size (:mod:`vlaccel.models.lerobot_smolvla`; its tokenizer is the local VLM folder, so LeRobot's preprocessor runs
offline) whose input and output features are the environment's (``env_to_policy_features``), saved with LeRobot's
own ``save_pretrained``. Normalisation statistics are the identity (mean 0, std 1): the weights are random, so
success is not the point; that LeRobot's commands load, run and report the policy is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_smolvla_folder"]


def write_smolvla_folder(folder: str | Path, env: Any, size: str = "tiny", seed: int = 0, **overrides: Any) -> Path:
    """Write a random-weight SmolVLA for LeRobot env config ``env`` (e.g. ``MetaworldEnv(task="push-v3")``) into
    ``folder`` (replaced whole, atomically); ``overrides`` are further ``SmolVLAConfig`` fields."""
    import torch
    from lerobot.configs.types import FeatureType
    from lerobot.envs.utils import env_to_policy_features
    from lerobot.policies.factory import make_policy_config, make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from vlaccel.models.lerobot_smolvla import SIZES, vlm_folder

    features = env_to_policy_features(env)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs}
    config = make_policy_config("smolvla", vlm_model_name=str(vlm_folder(size)), load_vlm_weights=False,
                                device="cpu", input_features=inputs, output_features=outputs, push_to_hub=False,
                                **{**SIZES[size][1], **overrides})
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(config).eval()
    stats = {key: {"mean": torch.zeros(f.shape), "std": torch.ones(f.shape)}
             for key, f in features.items() if f.type in (FeatureType.STATE, FeatureType.ACTION)}
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        policy.save_pretrained(tmp)
        preprocessor.save_pretrained(tmp)
        postprocessor.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
