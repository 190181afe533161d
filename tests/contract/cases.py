"""The technique cases every transformation must pass through the shared contract suite.

Each technique issue appends its :class:`TechniqueCase` to :data:`CASES`. A case says how to build the
model under test, a neutral config (must be bit-identical to the baseline) and a lossy config (must
change the computation, stay finite and stay within the per-case SQNR bound in test_contract.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

@dataclasses.dataclass(frozen=True)
class TechniqueCase:
    id: str
    neutral: Callable[[Any], Any]  # model -> config that must not change outputs
    lossy: Callable[[Any], Any]  # model -> config that must change the computation
    history: bool = True  # also exercise history mode (reset/step with the KV cache)
    stateful: bool = False  # keeps per-episode state that reset() must clear
    prepare: Callable[[Any], None] | None = None  # e.g. calibrate; runs on the baseline model copy
    # the LM attention the technique runs on (H2O reads attention probabilities: "eager"); the neutral setting
    # is bit-identical to the baseline run with it
    attention: str | None = None
    cuts_flops: bool = True  # False: lowers the cost per FLOP (precision), not the count


def _denoise(steps: int):
    from vlaccel.techniques import DenoiseStepsConfig

    return DenoiseStepsConfig(steps=steps)


CASES: list[TechniqueCase] = [
    TechniqueCase("denoise_steps", neutral=lambda m: _denoise(m.config.inference_steps), lossy=lambda m: _denoise(5)),
]


# --- EfficientVLA (arXiv 2506.10100): layer pruning (+ MLP channels), visual-token selection, DiT feature cache
def _calibrate_on_random_frames(model) -> None:
    """Layer pruning calibrates on real observations; the contract's random tiny policy gets random frames."""
    from tests.conftest import random_frames
    from vlaccel.techniques.layer_prune import set_calibration_observations

    frames = random_frames(model.config, 4, seed=7)
    set_calibration_observations(model, [{"image": f, "instruction": "push the puck to the goal"} for f in frames])


def _layer_prune(keep: int, mlp: float = 0.0):
    from vlaccel.techniques import LayerPruneConfig

    return LayerPruneConfig(keep_layers=keep, mlp_prune_ratio=mlp)


def _token_prune(keep: int, method: str):
    from vlaccel.techniques import TokenPruneConfig

    return TokenPruneConfig(keep_tokens=keep, layer=1, method=method)


def _head_cache(interval: int):
    from vlaccel.techniques import HeadCacheConfig

    return HeadCacheConfig(interval=interval)


CASES += [
    TechniqueCase("layer_prune", neutral=lambda m: _layer_prune(m.config.lm_layers),
                  lossy=lambda m: _layer_prune(m.config.lm_layers - 1, mlp=0.25), prepare=_calibrate_on_random_frames),
    *[TechniqueCase(f"token_prune_{method}", neutral=lambda m, k=method: _token_prune(m.config.visual_tokens, k),
                    lossy=lambda m, k=method: _token_prune(6, k), stateful=True)
      for method in ("efficientvla", "fastv", "random", "diversity")],
    TechniqueCase("head_cache", neutral=lambda m: _head_cache(1), lossy=lambda m: _head_cache(5), stateful=True),
]


# --- KV-Efficient (arXiv 2509.21354): RNN-gated chunked KV cache (history mode); neutral = window covers every
# position the LM can address; lossy = one-frame window + 1 summary, gated by a gate trained for the tiny policy
def _kv_efficient(model, window: int, **kwargs):
    from tests.techniques.kv_efficient.helpers import tiny_gate
    from vlaccel.techniques import KVEfficientConfig

    if kwargs.get("retention", "gated") == "gated":
        kwargs["gate"] = tiny_gate(model)
    return KVEfficientConfig(window=window, **kwargs)


CASES += [
    TechniqueCase("kv_efficient", neutral=lambda m: _kv_efficient(m, m.config.max_positions, budget=1),
                  lossy=lambda m: _kv_efficient(m, m.config.tokens_per_frame, budget=1), stateful=True),
    *[TechniqueCase(f"kv_{r}", neutral=lambda m, r=r, b=b: _kv_efficient(m, m.config.max_positions, retention=r, **b),
                    lossy=lambda m, r=r, b=b: _kv_efficient(m, m.config.tokens_per_frame, retention=r, **b),
                    stateful=True, attention="eager" if r == "h2o" else None)
      for r, b in (("h2o", {"budget": 1}), ("streaming", {}))],  # threshold/mean/random: tests/techniques/kv_efficient
]


# --- precision (engine switch, composes with the above): neutral = float32, lossy = bfloat16 weights
def _precision(dtype: str):
    from vlaccel.techniques import PrecisionConfig

    return PrecisionConfig(dtype=dtype)


PRECISION_CASE = TechniqueCase("precision_bf16", neutral=lambda m: _precision("float32"),
                               lossy=lambda m: _precision("bfloat16"), cuts_flops=False)
CASES += [PRECISION_CASE]


# --- the models under test: the reference VLA, and tiny random transformers VLMs / decoder LMs (issue 7) ------
@dataclasses.dataclass(frozen=True)
class Subject:
    """A model family the contract runs on: how to build it and run it, and the technique cases that apply.

    ``run_single(model)`` -> outputs of independent calls; ``run_history(model, seed)`` -> outputs of one episode
    (reference VLA: reset + step over frames) or one sequence (transformers: ``generate()``'s per-step logits).
    """

    id: str
    build: Callable[[], Any]
    run_single: Callable[[Any], Any]
    run_history: Callable[[Any, int], Any]
    cases: tuple[TechniqueCase, ...]
    greedy_sequence: bool = False  # run_history returns greedy generate() logits (compared up to the first divergence)


def _hf_cases(visual_tokens: int | None) -> tuple[TechniqueCase, ...]:
    from vlaccel.techniques import KVEfficientConfig

    def calibrate(model) -> None:
        from tests.hf_models import hf_inputs
        from vlaccel.techniques.layer_prune import set_calibration_observations

        set_calibration_observations(model, [hf_inputs(model, seed=s) for s in (11, 12)])

    def kv(window: int, retention: str, **kwargs):
        return KVEfficientConfig(window=window, chunk=4, retention=retention, protect_prefix=False, **kwargs)

    cases = [
        TechniqueCase("layer_prune", neutral=lambda m: _layer_prune(m.config.get_text_config().num_hidden_layers),
                      lossy=lambda m: _layer_prune(3, mlp=0.25), prepare=calibrate),
        *[TechniqueCase(f"kv_{r}", neutral=lambda m, r=r, b=b: kv(m.config.get_text_config().max_position_embeddings,
                                                                   r, **b),
                        lossy=lambda m, r=r, b=b: kv(8, r, **b), stateful=True,
                        attention="eager" if r == "h2o" else None)
          for r, b in (("mean", {"budget": 1}), ("random", {"budget": 1}), ("h2o", {"budget": 1}), ("streaming", {}))],
    ]
    cases.append(PRECISION_CASE)
    if visual_tokens is not None:
        cases += [TechniqueCase(f"token_prune_{method}",
                                neutral=lambda m, k=method, n=visual_tokens: _token_prune(n, k),
                                lossy=lambda m, k=method: _token_prune(6, k), stateful=True)
                  for method in ("efficientvla", "fastv", "random", "diversity")]
    return tuple(cases)


def _reference_subject() -> Subject:
    from tests.contract import reference_runs as ref

    return Subject("reference", ref.build, ref.run_single, ref.run_history, tuple(CASES))


def _hf_subject(family: str) -> Subject:
    from tests import hf_models

    return Subject(family, lambda: hf_models.build(family), hf_models.last_logits, hf_models.generate_logits,
                   _hf_cases(hf_models.VISUAL_TOKENS.get(family)), greedy_sequence=True)


# --- pi0 (transformers PI0ForConditionalGeneration, tiny random config): a "sequence" is one sample_actions call
def _pi0_cases() -> tuple[TechniqueCase, ...]:
    def calibrate(model) -> None:
        from vlaccel.models.pi0_configs import pi0_inputs
        from vlaccel.techniques.layer_prune import set_calibration_observations

        set_calibration_observations(model, [pi0_inputs(model, seed=s) for s in (11, 12)])

    layers = lambda m: m.config.vlm_config.text_config.num_hidden_layers  # noqa: E731
    per_image = lambda m: (m.config.vlm_config.vision_config.image_size  # noqa: E731
                           // m.config.vlm_config.vision_config.patch_size) ** 2
    return (
        TechniqueCase("denoise_steps", neutral=lambda m: _denoise(m.config.num_inference_steps),
                      lossy=lambda m: _denoise(4)),
        TechniqueCase("layer_prune", neutral=lambda m: _layer_prune(layers(m)),
                      lossy=lambda m: _layer_prune(layers(m) - 1, mlp=0.25), prepare=calibrate),
        *[TechniqueCase(f"token_prune_{method}", neutral=lambda m, k=method: _token_prune(per_image(m), k),
                        lossy=lambda m, k=method: _token_prune(6, k), stateful=True)
          for method in ("efficientvla", "fastv", "random", "diversity")],
        TechniqueCase("head_cache", neutral=lambda m: _head_cache(1), lossy=lambda m: _head_cache(5), stateful=True),
        PRECISION_CASE,
    )


def _pi0_subject() -> Subject:
    from vlaccel.models.pi0_configs import build_pi0

    return Subject("pi0", build_pi0, pi0_single_actions, pi0_actions, _pi0_cases())


def pi0_actions(model, seed: int = 0) -> Any:
    """The action chunk [1, chunk, action_dim] of one ``sample_actions`` call on observation ``seed`` (fixed noise)."""
    import torch

    from vlaccel.models.pi0_configs import pi0_inputs

    with torch.no_grad():
        return model.sample_actions(**pi0_inputs(model, seed)).float().numpy()


def pi0_single_actions(model) -> Any:
    import numpy as np

    return np.concatenate([pi0_actions(model, s) for s in (0, 1)])


# --- LeRobot pi0 / pi0.5 (PI0Policy, PI05Policy, tiny random builds): a "sequence" is one predict_action_chunk call
def _lerobot_pi_cases() -> tuple[TechniqueCase, ...]:
    def calibrate(policy) -> None:
        from vlaccel.models.lerobot_pi import action_noise, pi_batch
        from vlaccel.techniques.layer_prune import set_calibration_observations

        samples = [{**pi_batch(policy, s), "noise": action_noise(policy, s)} for s in (11, 12)]
        set_calibration_observations(policy, samples)

    layers = lambda p: p.model.paligemma_with_expert.paligemma.config.text_config.num_hidden_layers  # noqa: E731

    def per_image(policy) -> int:
        from vlaccel.adapters import get_adapter

        return get_adapter(policy).visual_tokens(policy)

    return (
        TechniqueCase("denoise_steps", neutral=lambda p: _denoise(p.config.num_inference_steps),
                      lossy=lambda p: _denoise(4)),
        TechniqueCase("layer_prune", neutral=lambda p: _layer_prune(layers(p)),
                      lossy=lambda p: _layer_prune(layers(p) - 1, mlp=0.25), prepare=calibrate),
        *[TechniqueCase(f"token_prune_{method}", neutral=lambda p, k=method: _token_prune(per_image(p), k),
                        lossy=lambda p, k=method: _token_prune(6, k), stateful=True)
          for method in ("efficientvla", "fastv", "random", "diversity")],
        TechniqueCase("head_cache", neutral=lambda p: _head_cache(1), lossy=lambda p: _head_cache(5), stateful=True),
        PRECISION_CASE,
    )


_BUILT: dict[str, Any] = {}  # LeRobot's tiny policies, built once per session (seconds each); tests get deep copies


def _built_once(key: str, build: Callable[[], Any]) -> Any:
    import copy

    if key not in _BUILT:
        _BUILT[key] = build()
    return copy.deepcopy(_BUILT[key])


def _lerobot_pi_subject(kind: str) -> Subject:
    from vlaccel.models.lerobot_pi import build_lerobot_pi

    return Subject(f"lerobot-{kind}", lambda: _built_once(kind, lambda: build_lerobot_pi(kind, "tiny")),
                   lerobot_pi_single_chunks, lerobot_pi_chunk, _lerobot_pi_cases())


def lerobot_pi_chunk(policy, seed: int = 0) -> Any:
    """The action chunk [1, chunk, action_dim] of one ``predict_action_chunk`` on observation ``seed`` (fixed noise)."""
    from vlaccel.models.lerobot_pi import predict_chunk

    return predict_chunk(policy, seed).float().numpy()


def lerobot_pi_single_chunks(policy) -> Any:
    import numpy as np

    return np.concatenate([lerobot_pi_chunk(policy, s) for s in (0, 1)])


# --- LeRobot SmolVLA (tiny random SmolVLAPolicy): a "sequence" is one predict_action_chunk with fixed noise; its
# token pruning acts before the VLM (layer=0: SmolVLA's own layer loop has no hookable layer output)
def _smolvla_cases() -> tuple[TechniqueCase, ...]:
    from vlaccel.techniques import TokenPruneConfig

    def calibrate(policy) -> None:
        from vlaccel.models.lerobot_smolvla import smolvla_batch
        from vlaccel.techniques.layer_prune import set_calibration_observations

        set_calibration_observations(policy, [smolvla_batch(policy, s) for s in (11, 12)])

    layers, per_image = 4, 16  # the tiny build's layer pairs x 2 and image tokens per camera
    return (
        TechniqueCase("denoise_steps", neutral=lambda p: _denoise(p.config.num_steps), lossy=lambda p: _denoise(4)),
        TechniqueCase("layer_prune", neutral=lambda p: _layer_prune(layers),
                      lossy=lambda p: _layer_prune(layers - 2, mlp=0.25), prepare=calibrate),
        *[TechniqueCase(f"token_prune_{method}",
                        neutral=lambda p, k=method: TokenPruneConfig(keep_tokens=per_image, layer=0, method=k),
                        lossy=lambda p, k=method: TokenPruneConfig(keep_tokens=6, layer=0, method=k), stateful=True)
          for method in ("efficientvla", "fastv", "random", "diversity")],
        TechniqueCase("head_cache", neutral=lambda p: _head_cache(1), lossy=lambda p: _head_cache(5), stateful=True),
        PRECISION_CASE,
    )


def _build_smolvla() -> Any:
    from vlaccel.models.lerobot_smolvla import build_smolvla

    return _built_once("smolvla", lambda: build_smolvla("tiny"))


def smolvla_chunk(policy, seed: int = 0) -> Any:
    """The action chunk [1, chunk, action_dim] of one ``predict_action_chunk`` on observation ``seed`` (fixed noise)."""
    from vlaccel.models.lerobot_smolvla import smolvla_batch, smolvla_noise

    return policy.predict_action_chunk(smolvla_batch(policy, seed), noise=smolvla_noise(policy, seed)).float().numpy()


def smolvla_single_chunks(policy) -> Any:
    import numpy as np

    return np.concatenate([smolvla_chunk(policy, s) for s in (0, 1)])


def _smolvla_subject() -> Subject:
    return Subject("lerobot-smolvla", _build_smolvla, smolvla_single_chunks, smolvla_chunk, _smolvla_cases())


def subjects() -> list[Subject]:
    import importlib.util

    from tests.hf_models import FAMILIES

    lerobot = [_lerobot_pi_subject(k) for k in ("pi0", "pi05")] if importlib.util.find_spec("lerobot") else []
    if importlib.util.find_spec("lerobot"):
        lerobot.append(_smolvla_subject())
    return [_reference_subject(), *[_hf_subject(f) for f in FAMILIES], _pi0_subject(), *lerobot]
