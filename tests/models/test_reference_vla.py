"""Reference VLA: history mode == full recompute, save/load round trip, determinism, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_reference, save_policy

HISTORY_ATOL = 1e-5  # incremental KV-cache decode vs one forward over the whole history (SDPA reductions differ)
INSTR = "reach the goal you saw at the start"


def test_tiny_preset_shapes(tiny_policy, frames):
    cfg = tiny_policy.config
    actions = tiny_policy.predict_action(frames[0], INSTR, [0, 0, 0, 0])
    assert actions.shape == (cfg.action_chunk, cfg.action_dim) and actions.dtype == np.float32
    assert np.isfinite(actions).all() and np.abs(actions).max() <= 1.0


def test_default_preset_meets_issue_sizes():
    cfg = ReferenceVLAConfig.default()
    assert cfg.visual_tokens >= 64 and cfg.lm_layers >= 8 and cfg.dit_depth >= 4
    assert cfg.action_chunk == 16 and cfg.inference_steps == 10 and cfg.cfg_scale == 1.5
    assert cfg.init_noise_scale == 0.0 and cfg.sampling_seed == 0


def test_history_mode_matches_full_recompute(tiny_policy, frames):
    """step-by-step KV cache == recomputing the whole history from scratch (cognition and actions)."""
    policy = tiny_policy
    proprio = np.random.default_rng(0).normal(size=(len(frames), 4)).astype(np.float32)
    policy.reset(INSTR)
    step_z, step_actions = [], []
    for f, p in zip(frames, proprio):
        step_actions.append(policy.step(f, p))
        step_z.append(policy.last_cognition)
    assert policy.cache.get_seq_length() == policy.instruction_ids(INSTR).shape[1] + len(frames) * policy.config.tokens_per_frame

    ids, mask = policy.batch_instruction_ids([INSTR])
    pixels = torch.stack([policy.pixels_from_images(f)[0] for f in frames]).unsqueeze(0)  # [1, F, cams, 3, H, W]
    with torch.no_grad():
        full_z = policy.history_cognition(ids, mask, pixels, torch.from_numpy(proprio).unsqueeze(0))[0]  # [F, D]
    for t in range(len(frames)):
        torch.testing.assert_close(step_z[t][0], full_z[t], atol=HISTORY_ATOL, rtol=0)
        recomputed = policy.sample_actions(full_z[t : t + 1])[0].numpy()
        np.testing.assert_allclose(step_actions[t], recomputed, atol=HISTORY_ATOL, rtol=0)
    # and history matters: the last frame's cognition differs from a no-history prediction of that frame
    policy.end_episode()  # predict_action refuses to run inside an episode
    policy.predict_action(frames[-1], INSTR, proprio[-1])
    assert not torch.allclose(policy.last_cognition, step_z[-1], atol=1e-3)


def test_left_padded_batch_matches_single(tiny_policy, frames):
    """Batched training forward with left-padded instructions == unpadded single sequences."""
    policy = tiny_policy
    instrs = ["go", INSTR]
    ids, mask = policy.batch_instruction_ids(instrs)
    pixels = torch.stack([policy.pixels_from_images(f)[0] for f in frames[:3]])  # [F, cams, 3, H, W]
    pixels = torch.stack([pixels, pixels.flip(0)])  # [2, F, ...]
    with torch.no_grad():
        batched = policy.history_cognition(ids, mask, pixels, None)
        for i, s in enumerate(instrs):
            one_ids, one_mask = policy.batch_instruction_ids([s])
            single = policy.history_cognition(one_ids, one_mask, pixels[i : i + 1], None)[0]
            torch.testing.assert_close(batched[i], single, atol=HISTORY_ATOL, rtol=0)


def test_same_seed_same_actions_and_seed_matters(tiny_policy, frames):
    a = tiny_policy.predict_action(frames[0], INSTR)
    b = tiny_policy.predict_action(frames[0], INSTR)
    np.testing.assert_array_equal(a, b)
    tiny_policy.noise_seed = 1
    assert not np.array_equal(tiny_policy.predict_action(frames[0], INSTR), a)


def _ddim_from(head, z, x):
    """DDIM + CFG written out from a given start ``x`` [1, chunk, A] (no scaling inside)."""
    cond = torch.cat([z, head.uncond.expand_as(z)])
    head.scheduler.set_timesteps(head.inference_steps)
    with torch.no_grad():
        for t in head.scheduler.timesteps:
            eps_c, eps_u = head.dit(torch.cat([x, x]), t.expand(2), cond).chunk(2)
            x = head.scheduler.step(eps_u + head.cfg_scale * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_init_noise_scale_scales_the_start_of_the_ddim_chain(tiny_policy, scale):
    head = tiny_policy.action_head
    head.init_noise_scale = scale
    z = torch.randn(1, tiny_policy.config.lm_hidden, generator=torch.Generator().manual_seed(3))
    start = torch.randn((1, head.chunk, head.action_dim), generator=torch.Generator().manual_seed(7))
    got = head.sample(z, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, _ddim_from(head, z, start * scale))
    other_seed = head.sample(z, generator=torch.Generator().manual_seed(8))
    assert torch.equal(got, other_seed) == (scale == 0.0)  # scale 0: the seed no longer matters


def test_decoding_settings_come_from_the_config(frames):
    cfg = ReferenceVLAConfig.tiny()
    cfg.init_noise_scale, cfg.sampling_seed = 0.0, 5
    policy = ReferenceVLA(cfg)
    assert policy.action_head.init_noise_scale == 0.0 and policy.noise_seed == 5
    with pytest.raises(ValueError, match="init_noise_scale must be >= 0"):
        ReferenceVLAConfig(init_noise_scale=-0.5)
    with pytest.raises(ValueError, match="init_noise_scale must be >= 0"):
        ReferenceVLAConfig(init_noise_scale=float("nan"))


@pytest.mark.parametrize("spacing, expected", [
    ("leading", [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]),
    ("trailing", [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
    ("linspace", [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]),
])
def test_sampling_visits_the_timesteps_of_the_configured_spacing(spacing, expected):
    """10 DDIM steps of 100 training timesteps: the DiT is evaluated at exactly these t, in this order."""
    cfg = ReferenceVLAConfig.tiny()
    cfg.timestep_spacing = spacing
    head = ReferenceVLA(cfg).action_head
    seen = []
    handle = head.dit.register_forward_pre_hook(lambda _m, args: seen.append(int(args[1][0])))
    try:
        head.sample(torch.zeros(1, cfg.lm_hidden))
    finally:
        handle.remove()
    assert seen == expected
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        ReferenceVLAConfig(timestep_spacing="uniform")


def test_save_load_round_trip_is_bit_identical(tiny_policy, frames, tmp_path):
    before = tiny_policy.predict_action(frames[0], INSTR)
    save_policy(tiny_policy, tmp_path / "p")
    loaded = vlaccel.load_policy(tmp_path / "p")
    for (k, v), (k2, v2) in zip(tiny_policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    np.testing.assert_array_equal(loaded.predict_action(frames[0], INSTR), before)
    assert vlaccel.fingerprint(loaded) == vlaccel.fingerprint(tiny_policy)


def test_bf16_storage_round_trip(tiny_policy, frames, tmp_path):
    save_policy(tiny_policy, tmp_path / "a", storage_dtype=torch.bfloat16)
    once = load_reference(tmp_path / "a")
    assert once.projector[0].weight.dtype == torch.float32
    torch.testing.assert_close(once.projector[0].weight, tiny_policy.projector[0].weight.bfloat16().float(), atol=0, rtol=0)
    save_policy(once, tmp_path / "b", storage_dtype=torch.bfloat16)  # bf16 values survive a second trip exactly
    twice = load_reference(tmp_path / "b")
    np.testing.assert_array_equal(once.predict_action(frames[0], INSTR), twice.predict_action(frames[0], INSTR))


def test_fingerprint_changes_with_weights(tiny_policy):
    fp = vlaccel.fingerprint(tiny_policy)
    with torch.no_grad():
        tiny_policy.projector[0].bias[0] += 1e-3
    assert vlaccel.fingerprint(tiny_policy) != fp


def test_fingerprint_is_hashed_once_per_state_of_the_weights(tiny_policy, frames, monkeypatch):
    import hashlib

    fp = vlaccel.fingerprint(tiny_policy)
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    tiny_policy.predict_action(frames[0], INSTR)  # running the policy does not change its weights
    assert vlaccel.fingerprint(tiny_policy) == fp and not hashed
    tiny_policy.load_state_dict({k: v + 1 for k, v in tiny_policy.state_dict().items() if k.endswith("bias")},
                                strict=False)
    changed = vlaccel.fingerprint(tiny_policy)
    assert changed != fp and len(hashed) == 1
    with torch.no_grad():
        tiny_policy.projector[0].bias.data[0] += 1.0  # through .data: invisible to the version counter
    assert vlaccel.fingerprint(tiny_policy) == changed
    assert vlaccel.fingerprint(tiny_policy, refresh=True) != changed


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((16, 16, 3), np.uint8), r"shape \(32, 32, 3\)"),
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), r"\(H, W, RGB\)"),
        ([np.zeros((32, 32, 3), np.uint8)] * 2, "expected 1 camera"),
    ],
)
def test_bad_image_gives_clear_error(tiny_policy, image, match):
    with pytest.raises(ValueError, match=match):
        tiny_policy.predict_action(image, INSTR)


@pytest.mark.parametrize("instruction", ["", "   ", None])
def test_empty_instruction_gives_clear_error(tiny_policy, frames, instruction):
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        tiny_policy.predict_action(frames[0], instruction)


def test_step_before_reset_and_bad_proprio(tiny_policy, frames):
    with pytest.raises(RuntimeError, match="reset"):
        tiny_policy.step(frames[0])
    with pytest.raises(ValueError, match=r"proprio must have shape \(4,\)"):
        tiny_policy.predict_action(frames[0], INSTR, [1.0, 2.0])


def test_unknown_policy_name_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown policy 'nope'"):
        vlaccel.load_policy("nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        vlaccel.load_policy(tmp_path / "x")


def test_any_cache_can_be_passed(tiny_policy, frames):
    from transformers import DynamicCache

    cache = DynamicCache(config=tiny_policy.language_model.config)
    tiny_policy.reset(INSTR, cache=cache)
    tiny_policy.step(frames[0])
    assert tiny_policy.cache is cache and cache.get_seq_length() > tiny_policy.config.tokens_per_frame


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ReferenceVLAConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="unknown reference preset"):
        ReferenceVLAConfig.preset("huge")
    cfg = ReferenceVLAConfig.tiny()
    assert ReferenceVLAConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(ReferenceVLA(cfg), ReferenceVLA)


def test_window_positions_match_full_history_positions(tiny_policy, frames):
    """A training window starting at frame s uses exactly the positions those frames have in the full history."""
    policy = tiny_policy
    ids, mask = policy.batch_instruction_ids([INSTR])
    pixels = torch.stack([policy.pixels_from_images(f)[0] for f in frames]).unsqueeze(0)
    seen = []
    hook = policy.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    with torch.no_grad():
        policy.history_cognition(ids, mask, pixels, None)
        policy.history_cognition(ids, mask, pixels[:, 2:4], None, frame_index=torch.tensor([[2, 3]]))
        policy.history_cognition(ids, mask, pixels[:, [0, 3]], None, frame_index=torch.tensor([[0, 3]]))
    hook.remove()
    full, window, anchored = seen
    n, L = policy.config.tokens_per_frame, ids.shape[1]
    torch.testing.assert_close(window[0, L:], full[0, L + 2 * n : L + 4 * n], atol=0, rtol=0)
    torch.testing.assert_close(anchored[0, :L + n], full[0, :L + n], atol=0, rtol=0)
    torch.testing.assert_close(anchored[0, L + n:], full[0, L + 3 * n : L + 4 * n], atol=0, rtol=0)


def test_building_or_loading_a_policy_leaves_the_callers_rng_alone(tmp_path):
    """The weights come from their own init_seed stream: the caller's global torch RNG goes on as if nothing ran."""
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    policy = ReferenceVLA(ReferenceVLAConfig.tiny())
    assert torch.equal(torch.rand(3), expected), "building a policy moved the caller's RNG"
    save_policy(policy, tmp_path / "p")
    torch.manual_seed(11)
    vlaccel.load_policy(tmp_path / "p")
    assert torch.equal(torch.rand(3), expected), "loading a policy moved the caller's RNG"
    torch.manual_seed(11)
    policy.add_visual_readout(2)
    assert torch.equal(torch.rand(3), expected), "adding a visual readout moved the caller's RNG"
    # the initial weights still depend on init_seed only, not on the caller's RNG
    torch.manual_seed(12)
    again = ReferenceVLA(ReferenceVLAConfig.tiny())
    again.add_visual_readout(2)
    for (name, value), (_, other) in zip(policy.state_dict().items(), again.state_dict().items()):
        assert torch.equal(value, other), name
