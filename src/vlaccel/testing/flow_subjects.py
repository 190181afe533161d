"""Flow-matching VLAs as contract subjects: transformers pi0 and LeRobot's pi0, pi0.5 and SmolVLA (tiny random
builds). They keep no history across calls: a "sequence" is one action chunk with fixed noise."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from vlaccel.testing.case import IDENTICAL, Subject, TechniqueCase
from vlaccel.testing.technique_cases import (
    PRECISION_CASE,
    TOKEN_PRUNE_METHODS,
    denoise,
    head_cache,
    layer_prune,
    token_prune,
)
from vlaccel.testing.transformers_subjects import NOT_SAVED

__all__ = ["pi0_subject", "lerobot_pi_subject", "smolvla_subject", "pi0_actions", "lerobot_pi_chunk",
           "smolvla_chunk"]

NOT_SAVED_LEROBOT = ("a LeRobot policy is saved with LeRobot's save_pretrained; vlaccel.save_policy writes vlaccel's "
                     "reference policies")


def _token_prune_cases(per_image: Callable[[Any], int], layer: int = 1) -> list[TechniqueCase]:
    return [TechniqueCase(f"token_prune_{method}", "token_prune",
                          accelerated=lambda m, k=method: token_prune(6, k, layer),
                          neutral=lambda m, k=method: token_prune(per_image(m), k, layer))
            for method in TOKEN_PRUNE_METHODS]


def _flow_cases(steps: Callable[[Any], int], layers: Callable[[Any], int], per_image: Callable[[Any], int],
                calibrate: Callable[[Any], None], pruned_layers: int = 1, token_layer: int = 1,
                ) -> tuple[TechniqueCase, ...]:
    """Denoising steps (4), layer pruning (``pruned_layers`` fewer, MLP channels -25 %), token pruning (6 per
    image at ``token_layer``), the expert's head cache (interval 5) and bfloat16 weights."""
    return (
        TechniqueCase("denoise_steps", "denoise_steps", accelerated=lambda m: denoise(4),
                      neutral=lambda m: denoise(steps(m))),
        TechniqueCase("layer_prune", "layer_prune",
                      accelerated=lambda m: layer_prune(layers(m) - pruned_layers, mlp=0.25),
                      neutral=lambda m: layer_prune(layers(m)), prepare=calibrate),
        *_token_prune_cases(per_image, token_layer),
        TechniqueCase("head_cache", "head_cache", accelerated=lambda m: head_cache(5), neutral=lambda m: head_cache(1)),
        PRECISION_CASE,
    )


# --- transformers pi0 (PI0ForConditionalGeneration): a "sequence" is one sample_actions call --------------------
def _pi0_calibrate(model: Any) -> None:
    from vlaccel.models.pi0_configs import pi0_inputs
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(model, [pi0_inputs(model, seed=s) for s in (11, 12)])


def _pi0_per_image(model: Any) -> int:
    vision = model.config.vlm_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def pi0_actions(model: Any, seed: int = 0) -> np.ndarray:
    """The action chunk [1, chunk, action_dim] of one ``sample_actions`` call on observation ``seed`` (fixed noise)."""
    import torch

    from vlaccel.models.pi0_configs import pi0_inputs

    with torch.no_grad():
        return model.sample_actions(**pi0_inputs(model, seed)).float().numpy()


def _pi0_single_actions(model: Any) -> np.ndarray:
    return np.concatenate([pi0_actions(model, s) for s in (0, 1)])


def _build_pi0() -> Any:
    from vlaccel.models.pi0_configs import build_pi0

    return build_pi0()


def pi0_subject() -> Subject:
    from vlaccel.testing.bounds import bounds_for

    cases = _flow_cases(steps=lambda m: m.config.num_inference_steps,
                        layers=lambda m: m.config.vlm_config.text_config.num_hidden_layers,
                        per_image=_pi0_per_image, calibrate=_pi0_calibrate)
    return Subject("pi0", _build_pi0, _pi0_single_actions, pi0_actions, cases, min_sqnr_db=bounds_for("pi0"),
                   not_saved_because=NOT_SAVED)


# --- LeRobot's policies: built once per process (seconds each); each subject build is a deep copy -------------
_BUILT: dict[str, Any] = {}


def _built_once(key: str, build: Callable[[], Any]) -> Any:
    if key not in _BUILT:
        _BUILT[key] = build()
    return copy.deepcopy(_BUILT[key])


# --- LeRobot pi0 / pi0.5 (PI0Policy, PI05Policy): a "sequence" is one predict_action_chunk call
def _lerobot_pi_calibrate(policy: Any) -> None:
    from vlaccel.models.lerobot_pi import action_noise, pi_batch
    from vlaccel.techniques.layer_prune import set_calibration_observations

    samples = [{**pi_batch(policy, s), "noise": action_noise(policy, s)} for s in (11, 12)]
    set_calibration_observations(policy, samples)


def _lerobot_pi_per_image(policy: Any) -> int:
    from vlaccel.adapters import get_adapter

    return get_adapter(policy).visual_tokens(policy)


def lerobot_pi_chunk(policy: Any, seed: int = 0) -> np.ndarray:
    """The action chunk [1, chunk, action_dim] of one ``predict_action_chunk`` on observation ``seed`` (fixed noise)."""
    from vlaccel.models.lerobot_pi import predict_chunk

    return predict_chunk(policy, seed).float().numpy()


def _lerobot_pi_single_chunks(policy: Any) -> np.ndarray:
    return np.concatenate([lerobot_pi_chunk(policy, s) for s in (0, 1)])


def _build_lerobot_pi(kind: str) -> Any:
    from vlaccel.models.lerobot_pi import build_lerobot_pi

    return build_lerobot_pi(kind, "tiny")


def lerobot_pi_subject(kind: str) -> Subject:
    """LeRobot's ``PI0Policy`` (``kind="pi0"``) or ``PI05Policy`` (``"pi05"``); needs lerobot to build."""
    from vlaccel.testing.bounds import bounds_for

    subject_id = f"lerobot-{kind}"
    cases = _flow_cases(
        steps=lambda p: p.config.num_inference_steps,
        layers=lambda p: p.model.paligemma_with_expert.paligemma.config.text_config.num_hidden_layers,
        per_image=_lerobot_pi_per_image, calibrate=_lerobot_pi_calibrate)
    return Subject(subject_id, lambda: _built_once(kind, lambda: _build_lerobot_pi(kind)), _lerobot_pi_single_chunks,
                   lerobot_pi_chunk, cases, min_sqnr_db=bounds_for(subject_id), not_saved_because=NOT_SAVED_LEROBOT)


# --- LeRobot SmolVLA (SmolVLAPolicy): token pruning acts before the VLM (layer=0: SmolVLA's own layer loop has no
# hookable layer output); the expert's cross-attention projections of the prefix are reused within a chunk
_SMOLVLA_LAYERS, _SMOLVLA_PER_IMAGE = 4, 16  # the tiny build's layer pairs x 2, and image tokens per camera


def _smolvla_calibrate(policy: Any) -> None:
    from vlaccel.models.lerobot_smolvla import smolvla_batch
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(policy, [smolvla_batch(policy, s) for s in (11, 12)])


def _cross_kv_reuse(enabled: bool) -> Any:
    from vlaccel.techniques.cross_kv_reuse import CrossKVReuseConfig

    return CrossKVReuseConfig(enabled=enabled)


def smolvla_chunk(policy: Any, seed: int = 0) -> np.ndarray:
    """The action chunk [1, chunk, action_dim] of one ``predict_action_chunk`` on observation ``seed`` (fixed noise)."""
    from vlaccel.models.lerobot_smolvla import smolvla_batch, smolvla_noise

    return policy.predict_action_chunk(smolvla_batch(policy, seed), noise=smolvla_noise(policy, seed)).float().numpy()


def _smolvla_single_chunks(policy: Any) -> np.ndarray:
    return np.concatenate([smolvla_chunk(policy, s) for s in (0, 1)])


def _build_smolvla() -> Any:
    from vlaccel.models.lerobot_smolvla import build_smolvla

    return _built_once("smolvla", lambda: build_smolvla("tiny"))


def smolvla_subject() -> Subject:
    """LeRobot's ``SmolVLAPolicy``, with the exact cross-KV reuse besides the flow cases; needs lerobot to build."""
    from vlaccel.testing.bounds import bounds_for

    cases = _flow_cases(steps=lambda p: p.config.num_steps, layers=lambda p: _SMOLVLA_LAYERS,
                        per_image=lambda p: _SMOLVLA_PER_IMAGE, calibrate=_smolvla_calibrate, pruned_layers=2,
                        token_layer=0)
    cross_kv = TechniqueCase("cross_kv_reuse", "cross_kv_reuse", accelerated=lambda p: _cross_kv_reuse(True),
                             neutral=lambda p: _cross_kv_reuse(False), outputs=IDENTICAL)
    return Subject("lerobot-smolvla", _build_smolvla, _smolvla_single_chunks, smolvla_chunk, (*cases, cross_kv),
                   min_sqnr_db=bounds_for("lerobot-smolvla"), not_saved_because=NOT_SAVED_LEROBOT)
