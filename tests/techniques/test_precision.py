"""PrecisionConfig: weights cast per part, float32 islands, exact restore, dtype boundaries, KV caches in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlaccel
from tests.techniques.kv_efficient.helpers import tiny_gate
from vlaccel.techniques import KVEfficientConfig, PrecisionConfig

INSTR = "open the drawer"
MIN_BF16_EPISODE_SQNR_DB = 27  # tiny random policy, gated KV cache, 4 steps: measured 30.4 dB


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))


def test_remove_puts_the_very_same_tensors_back(tiny_policy):
    before = {n: (t, t.data_ptr()) for n, t in tiny_policy.state_dict(keep_vars=True).items()}
    with vlaccel.applied(tiny_policy, PrecisionConfig()):
        assert {t.dtype for t in tiny_policy.parameters()} == {torch.bfloat16}
    after = tiny_policy.state_dict(keep_vars=True)
    assert all(after[n] is t and after[n].data_ptr() == ptr and t.dtype == torch.float32
               for n, (t, ptr) in before.items() if t.is_floating_point())


def test_parts_and_float32_islands(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], INSTR)
    cfg = PrecisionConfig(parts=("language_model", "action_head"), keep_float32=("action_head.dit.action_out",))
    with vlaccel.applied(tiny_policy, cfg):
        assert tiny_policy.vision.embeddings.patch_embedding.weight.dtype == torch.float32  # vision not chosen
        assert tiny_policy.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert tiny_policy.action_head.dit.action_out.weight.dtype == torch.float32  # kept
        assert tiny_policy.action_head.dit.blocks[0].mlp_branch.fc1.weight.dtype == torch.bfloat16
        out = tiny_policy.predict_action(frames[0], INSTR)  # fp32 vision -> bf16 LM -> bf16 head, no casts by hand
    assert np.isfinite(out).all() and not np.array_equal(out, base)
    assert _sqnr(base, out) > 20


def test_kv_efficient_cache_follows_the_lm_dtype(tiny_policy, frames):
    kv = KVEfficientConfig(window=tiny_policy.config.tokens_per_frame, budget=1, gate=tiny_gate(tiny_policy))

    def episode():
        tiny_policy.reset(INSTR)
        out = np.stack([tiny_policy.step(f) for f in frames[:4]])
        cache = tiny_policy.cache
        tiny_policy.end_episode()
        return out, cache

    with vlaccel.applied(tiny_policy, kv):
        ref, _ = episode()
    with vlaccel.applied(tiny_policy, kv, PrecisionConfig()):
        out, cache = episode()
    assert {layer.keys.dtype for layer in cache.layers} == {torch.bfloat16}
    assert cache.layers[0].n_summaries > 0  # the gate ran on bf16 keys and values
    assert cache.gate is not None and {p.dtype for p in cache.gate.parameters()} == {torch.float32}
    assert np.isfinite(out).all()
    assert _sqnr(ref, out) >= MIN_BF16_EPISODE_SQNR_DB


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "int8"}, "dtype must be 'auto' or one of"),
    ({"parts": "vision"}, "must be a tuple of names"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrecisionConfig(**kwargs)


@pytest.mark.parametrize("cfg, match", [
    (PrecisionConfig(parts=("decoder",)), r"not parts of ReferenceVLA; its parts are \['action_head'"),
    (PrecisionConfig(keep_float32=("action_head.nope",)), "has no module 'action_head.nope'"),
])
def test_bad_names_are_refused_before_anything_changes(tiny_policy, cfg, match):
    with pytest.raises(ValueError, match=match):
        vlaccel.apply(tiny_policy, cfg)
    assert {t.dtype for t in tiny_policy.parameters()} == {torch.float32} and not vlaccel.applied_configs(tiny_policy)


@pytest.mark.parametrize("flags, native", [("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                                           ("fpu amx_bf16 amx_tile", True)])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, flags, native):
    from vlaccel.techniques.precision import native_bfloat16

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert native_bfloat16("cpu", str(info)) is native
    assert native_bfloat16("cpu", str(tmp_path / "missing")) is False


def test_auto_resolves_to_bf16_only_where_native(tiny_policy, monkeypatch):
    from vlaccel.techniques import precision

    for native, dtype in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(precision, "native_bfloat16", lambda device, native=native: native)
        with vlaccel.applied(tiny_policy, PrecisionConfig(dtype="auto")) as handle:
            assert [c.dtype for c in handle.configs] == [dtype]
            assert tiny_policy.language_model.layers[0].mlp.up_proj.weight.dtype == precision.DTYPES[dtype]
