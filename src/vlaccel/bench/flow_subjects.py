"""The flow-matching VLAs ``vlaccel bench --model`` measures: how to build each, feed it and split its time.

A :class:`FlowSubject` is one model with one fixed observation (noise included, so every call computes the same
thing), the call that produces one action chunk, calibration observations for layer pruning, and its *parts*:

* ``vision``: the vision encoder (+ projector), a module whose forward hooks fire;
* ``expert``: the flow steps of the action expert: a module (transformers pi0's ``dit``) or the policy's
  ``denoise_step`` method (LeRobot's policies call their expert through ``.forward()`` of a wrapper, which hooks do
  not see, so the method is wrapped as an instance attribute while the bench runs);
* ``prefix``: everything else in the call: the VLM's prefix pass over image, language (and state) tokens, plus
  embedding and sampling glue (for transformers pi0, the VLM module's forward, measured directly).

Named models (:data:`MODELS`) are built offline with random weights: speed and FLOPs do not depend on the weights.
A folder is loaded as the user saved it: a LeRobot policy folder (``config.json`` with ``"type"``: ``smolvla``,
``pi0`` or ``pi05``, and ``model.safetensors``), or a transformers pi0 checkpoint (``model_type: "pi0"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FlowSubject", "MODELS", "build_model", "build_subject", "model_names", "resolve_spec"]

#: --model name -> (family, size)
MODELS: dict[str, tuple[str, str]] = {
    "pi0": ("transformers-pi0", "full"), "pi0-small": ("transformers-pi0", "small"),
    "pi0-tiny": ("transformers-pi0", "tiny"),
    "lerobot-smolvla": ("lerobot-smolvla", "full"), "lerobot-smolvla-tiny": ("lerobot-smolvla", "tiny"),
    "lerobot-pi0": ("lerobot-pi0", "full"), "lerobot-pi0-tiny": ("lerobot-pi0", "tiny"),
    "lerobot-pi05": ("lerobot-pi05", "full"), "lerobot-pi05-tiny": ("lerobot-pi05", "tiny"),
    # the published sizes with a 1,024-token vocabulary (the same compute per chunk in 3 GB less memory)
    "lerobot-pi0-vocab1k": ("lerobot-pi0", "full-vocab1k"), "lerobot-pi05-vocab1k": ("lerobot-pi05", "full-vocab1k"),
}


def model_names() -> list[str]:
    return list(MODELS)


@dataclasses.dataclass
class FlowSubject:
    """One model, one fixed observation, and where its parts are (see the module doc)."""

    name: str
    model: nn.Module
    call: Callable[[], torch.Tensor]  # one action chunk on the fixed observation
    calibration: list[Any]  # observations for layer pruning, in the adapter's sample format
    vision: list[nn.Module]  # modules whose forward time and FLOPs are the vision part
    expert: tuple[Any, str]  # (module, "") for hooks, or (object, method name) wrapped while measuring
    prefix_module: nn.Module | None = None  # measured directly when its hooks fire (transformers pi0)
    prefix_cache: tuple[Any, str] | None = None  # (object, method) whose first call per chunk returns the prefix cache
    shape: dict[str, Any] = dataclasses.field(default_factory=dict)  # cameras, prompt tokens, ... for the report


def resolve_spec(spec: str) -> tuple[str, str | None, Path | None]:
    """``(family, size, folder)`` of ``spec``: a key of :data:`MODELS` (size set) or a saved model folder."""
    from vlaccel.errors import MissingInputError, UnknownNameError

    if spec in MODELS:
        family, size = MODELS[spec]
        return family, size, None
    path = Path(spec)
    config_file = path / "config.json"
    if not config_file.is_file():
        if path.exists() or "/" in spec or spec.startswith("."):
            raise MissingInputError(f"--model {spec}: no config.json there; pass a LeRobot policy folder or a "
                                    "transformers pi0 checkpoint folder, or one of " + ", ".join(MODELS))
        raise UnknownNameError(f"unknown --model {spec!r}; one of {', '.join(MODELS)}, or a model folder")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MissingInputError(f"{config_file}: not a JSON config ({err}); pass a folder saved by LeRobot's or "
                                "transformers' save_pretrained") from None
    if not isinstance(config, dict):
        raise MissingInputError(f"{config_file}: a config is a JSON object, got {type(config).__name__}")
    family = {"smolvla": "lerobot-smolvla", "pi0": "lerobot-pi0", "pi05": "lerobot-pi05"}.get(config.get("type"))
    if family is None and config.get("model_type") == "pi0":
        family = "transformers-pi0"
    if family is None:
        raise UnknownNameError(f"{config_file}: a flow-matching VLA vlaccel can bench has \"type\" smolvla / pi0 / "
                               f"pi05 (LeRobot) or \"model_type\" pi0 (transformers); got type={config.get('type')!r}, "
                               f"model_type={config.get('model_type')!r}")
    return family, None, path


def build_model(spec: str) -> nn.Module:
    """The model ``spec`` names, in eval mode (random weights for a name, the saved ones for a folder). Under
    ``torch.device("meta")`` it allocates nothing: sizes only, for ``vlaccel presets``. What the model's code prints
    while it is built (SmolVLA prints its layer count) goes to stderr: stdout carries a command's JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        return _build_model(spec)


def _build_model(spec: str) -> nn.Module:
    family, size, folder = resolve_spec(spec)
    if folder is not None:
        if family == "transformers-pi0":
            from transformers import PI0ForConditionalGeneration

            if torch.get_default_device().type == "meta":
                from transformers import PI0Config

                return PI0ForConditionalGeneration(PI0Config.from_pretrained(folder)).eval()
            return PI0ForConditionalGeneration.from_pretrained(folder).eval()
        return _lerobot_folder_policy(folder)
    if family == "transformers-pi0":
        from vlaccel.models.pi0_configs import build_pi0

        return build_pi0(size)
    if family == "lerobot-smolvla":
        from vlaccel.models.lerobot_smolvla import build_smolvla

        return build_smolvla(size)
    from vlaccel.models.lerobot_pi import build_lerobot_pi

    return build_lerobot_pi(family.removeprefix("lerobot-"), size)


def build_subject(spec: str, device: str = "cpu", calibration: int = 2) -> FlowSubject:
    """The subject ``spec`` names: a key of :data:`MODELS` or a saved model folder."""
    family, size, folder = resolve_spec(spec)
    model = build_model(spec).to(device)
    return _SUBJECTS[family](spec, model, size, folder is not None, device, calibration)


# --- transformers pi0 ------------------------------------------------------------------------------------------
def _transformers_pi0(name: str, model: Any, size: str | None, saved: bool, device: str,
                      calibration: int) -> FlowSubject:
    from vlaccel.models.pi0_configs import CAMERAS, PROMPT_TOKENS, pi0_inputs

    shape = {"cameras": 3, "prompt_tokens": 48} if saved else {"cameras": CAMERAS[size],
                                                                "prompt_tokens": PROMPT_TOKENS[size]}
    inputs = {k: v.to(device) for k, v in pi0_inputs(model, seed=0, **shape).items()}
    root = model.model
    return FlowSubject(
        name, model, lambda: model.sample_actions(**inputs),
        [pi0_inputs(model, seed=100 + i, **shape) for i in range(calibration)],
        vision=[root.vlm.vision_tower, root.vlm.multi_modal_projector], expert=(root.dit, ""),
        prefix_module=root.vlm, prefix_cache=None, shape=shape)


# --- LeRobot policies --------------------------------------------------------------------------------------------
def _lerobot_folder_policy(folder: Path) -> Any:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    config = PreTrainedConfig.from_pretrained(folder)
    config.device = "cpu"
    cls = get_policy_class(config.type)
    if torch.get_default_device().type == "meta":
        return cls(config).eval()
    return cls.from_pretrained(folder, config=config).eval()


def _cameras(policy: Any) -> int:
    return sum(1 for k in policy.config.input_features if k.startswith("observation.image"))


def _lerobot_smolvla(name: str, policy: Any, size: str | None, saved: bool, device: str,
                     calibration: int) -> FlowSubject:
    from vlaccel.models.lerobot_smolvla import smolvla_batch, smolvla_noise

    batch, noise = smolvla_batch(policy, seed=0), smolvla_noise(policy, seed=0).to(device)
    vlm = policy.model.vlm_with_expert.vlm.model
    return FlowSubject(
        name, policy, lambda: policy.predict_action_chunk(batch, noise=noise),
        [smolvla_batch(policy, seed=100 + i) for i in range(calibration)],
        vision=[vlm.vision_model, vlm.connector], expert=(policy.model, "denoise_step"),
        prefix_cache=(policy.model.vlm_with_expert, "forward"),
        shape={"cameras": _cameras(policy), "flow_steps": policy.config.num_steps, "chunk": policy.config.chunk_size})


def _lerobot_pi(name: str, policy: Any, size: str | None, saved: bool, device: str, calibration: int) -> FlowSubject:
    from vlaccel.models.lerobot_pi import action_noise, pi_batch

    batch, noise = pi_batch(policy, seed=0), action_noise(policy, seed=0).to(device)
    paligemma = policy.model.paligemma_with_expert.paligemma.model
    return FlowSubject(
        name, policy, lambda: policy.predict_action_chunk(batch, noise=noise),
        [pi_batch(policy, seed=100 + i) for i in range(calibration)],
        vision=[paligemma.vision_tower, paligemma.multi_modal_projector], expert=(policy.model, "denoise_step"),
        prefix_cache=(policy.model.paligemma_with_expert, "forward"),
        shape={"cameras": _cameras(policy), "flow_steps": policy.config.num_inference_steps,
               "chunk": policy.config.chunk_size})


_SUBJECTS: dict[str, Callable[..., FlowSubject]] = {
    "transformers-pi0": _transformers_pi0, "lerobot-smolvla": _lerobot_smolvla,
    "lerobot-pi0": _lerobot_pi, "lerobot-pi05": _lerobot_pi,
}
