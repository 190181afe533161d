"""HeadCacheConfig (EfficientVLA B3): DiT branch outputs recomputed every `interval` denoising steps, reused in
between; checked bit-for-bit against a hand-written cached sampler, by call counts and by exact FLOPs."""

from __future__ import annotations

import pytest
import torch

import vlaccel
from tests.techniques.test_layer_prune import tiny_lm
from vlaccel.adapters import UnsupportedModelError
from vlaccel.bench.flops import count_flops
from vlaccel.techniques import HeadCacheConfig
from vlaccel.techniques.head_cache import CachedBranch


def _z(policy, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, policy.config.lm_hidden, generator=torch.Generator().manual_seed(seed))


def _sample(policy, z, seed: int = 0) -> torch.Tensor:
    return policy.action_head.sample(z, generator=torch.Generator().manual_seed(seed))


def _manual_cached_sample(head, z, interval: int, seed: int = 0) -> torch.Tensor:
    """DDIM + CFG written out, with paper Eqs. 8-11: branch outputs refreshed iff step % interval == 0."""
    dit, g = head.dit, torch.Generator().manual_seed(seed)
    x = torch.randn((1, head.chunk, head.action_dim), generator=g)
    cond = torch.cat([z, head.uncond.expand_as(z)])
    head.scheduler.set_timesteps(head.inference_steps)
    cache = {}
    with torch.no_grad():
        for step, t in enumerate(head.scheduler.timesteps):
            x_in = torch.cat([x, x])
            h = torch.cat([(dit.t_embed(t.expand(2)) + dit.cond_in(cond)).unsqueeze(1), dit.action_in(x_in)], 1) + dit.pos
            for i, block in enumerate(dit.blocks):
                if step % interval == 0:
                    cache[i, "attn"] = block.attn_branch(h)
                h = h + cache[i, "attn"]
                if step % interval == 0:
                    cache[i, "mlp"] = block.mlp_branch(h)
                h = h + cache[i, "mlp"]
            eps_c, eps_u = dit.action_out(dit.final_norm(h[:, 1:])).chunk(2)
            x = head.scheduler.step(eps_u + head.cfg_scale * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("interval", [1, 3, 5, 20])
def test_matches_hand_written_cached_sampler_exactly(tiny_policy, interval):
    z = _z(tiny_policy)
    want = _manual_cached_sample(tiny_policy.action_head, z, interval)
    base = _sample(tiny_policy, z)
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=interval)):
        got = _sample(tiny_policy, z)
    assert torch.equal(got, want)
    assert torch.equal(got, base) == (interval == 1)  # interval 1 is the uncached head, bit for bit


@pytest.mark.parametrize("interval, calls", [(1, 10), (3, 4), (5, 2), (20, 1)])
def test_branches_run_only_at_refresh_steps(tiny_policy, interval, calls):
    seen = []
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=interval)):
        for block in tiny_policy.action_head.dit.blocks:
            assert isinstance(block.attn_branch, CachedBranch) and isinstance(block.mlp_branch, CachedBranch)
            for wrapper in (block.attn_branch, block.mlp_branch):
                wrapper.inner.register_forward_hook(lambda m, a, o: seen.append(tiny_policy.action_head.dit.denoise_step))
        _sample(tiny_policy, _z(tiny_policy))
        for block in tiny_policy.action_head.dit.blocks:
            block.attn_branch.inner._forward_hooks.clear()
            block.mlp_branch.inner._forward_hooks.clear()
    n_branches = 2 * len(tiny_policy.action_head.dit.blocks)
    assert len(seen) == calls * n_branches
    assert sorted(set(seen)) == [s for s in range(10) if s % interval == 0]


def test_flops_drop_by_exactly_the_skipped_branches(tiny_policy):
    z, dit = _z(tiny_policy), tiny_policy.action_head.dit
    h = torch.zeros(2, tiny_policy.config.action_chunk + 1, tiny_policy.config.dit_width)
    with torch.no_grad():
        blocks, _ = count_flops(lambda: [block(h) for block in dit.blocks])
        base, _ = count_flops(lambda: _sample(tiny_policy, z))
        with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=5)):
            cached, _ = count_flops(lambda: _sample(tiny_policy, z))
    assert base - cached == 8 * blocks  # 10 steps, blocks run at 2 of them


def test_cache_is_cleared_per_episode_and_on_remove(tiny_policy, frames):
    blocks = tiny_policy.action_head.dit.blocks
    originals = [(b.attn_branch, b.mlp_branch) for b in blocks]
    handle = vlaccel.apply(tiny_policy, HeadCacheConfig(interval=5))
    tiny_policy.predict_action(frames[0], "open the drawer")
    wrappers = [w for b in blocks for w in (b.attn_branch, b.mlp_branch)]
    assert all(w.cached is not None for w in wrappers)
    tiny_policy.reset("open the drawer")  # new episode
    assert all(w.cached is None for w in wrappers)
    tiny_policy.predict_action(frames[0], "open the drawer")
    handle.remove()
    assert all(w.cached is None for w in wrappers)
    assert [(b.attn_branch, b.mlp_branch) for b in blocks] == originals


def test_training_mode_always_recomputes(tiny_policy):
    dit = tiny_policy.action_head.dit
    x = torch.randn(2, tiny_policy.config.action_chunk, tiny_policy.config.action_dim)
    t, z = torch.tensor([10, 50]), torch.randn(2, tiny_policy.config.lm_hidden)
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=5)):
        tiny_policy.train()
        dit.denoise_step = 3  # a cached step in eval mode
        first = dit(x, t, z)
        second = dit(x + 1, t, z)
        tiny_policy.eval()
    assert not torch.equal(first, second)
    with torch.no_grad():
        dit.denoise_step = 0
        assert torch.equal(dit(x + 1, t, z), second)


@pytest.mark.parametrize("interval", [0, -1, 2.5, True])
def test_bad_interval(interval):
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        HeadCacheConfig(interval=interval)


def test_models_without_a_diffusion_head_are_refused_untouched():
    linear = torch.nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError, match="Supported:"):
        vlaccel.apply(linear, HeadCacheConfig())
    model = tiny_lm("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="HeadCacheConfig needs a diffusion action head"):
        vlaccel.apply(model, HeadCacheConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert vlaccel.applied_configs(model) == []
