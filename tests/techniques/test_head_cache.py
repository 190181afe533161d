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
from vlaccel.techniques.head_cache import BranchCache


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
    branches = [b for block in tiny_policy.action_head.dit.blocks for b in (block.attn_branch, block.mlp_branch)]
    # a hook on each branch's first submodule fires only when the branch is computed, not when its output is reused
    dit = tiny_policy.action_head.dit
    hooks = [next(b.children()).register_forward_hook(lambda m, a, o: seen.append(dit.denoise_step)) for b in branches]
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=interval)):
        assert all(isinstance(b.forward.__self__, BranchCache) for b in branches)
        _sample(tiny_policy, _z(tiny_policy))
    for h in hooks:
        h.remove()
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
    wrappers = [b.forward.__self__ for blk in blocks for b in (blk.attn_branch, blk.mlp_branch)]
    assert all(w.cached is not None for w in wrappers)
    tiny_policy.reset("open the drawer")  # new episode
    assert all(w.cached is None for w in wrappers)
    tiny_policy.step(frames[0])
    assert all(w.cached is not None for w in wrappers)
    handle.remove()
    assert all(w.cached is None for w in wrappers)
    assert [(b.attn_branch, b.mlp_branch) for b in blocks] == originals
    assert all("forward" not in b.__dict__ for blk in blocks for b in (blk.attn_branch, blk.mlp_branch))


def test_state_dict_keys_and_values_unchanged_while_applied(tiny_policy, frames, tmp_path):
    """Saving an accelerated policy writes the plain policy's file: it loads, and gives the plain actions."""
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    base = tiny_policy.predict_action(frames[0], "open the drawer")
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=5)):
        during = tiny_policy.state_dict()
        assert during.keys() == before.keys()
        assert all(torch.equal(during[k], before[k]) for k in before)
        vlaccel.save_policy(tiny_policy, tmp_path / "saved")
    loaded = vlaccel.load_policy(tmp_path / "saved")
    assert (loaded.predict_action(frames[0], "open the drawer") == base).all()


def test_a_stale_cache_never_reaches_the_output(tiny_policy, frames):
    """Step 0 recomputes every branch, so a stale cache from an earlier call never reaches the output: the cache
    is cleared at reset for memory, not for correctness. Shown by leaving the stale features in place."""
    with vlaccel.applied(tiny_policy, HeadCacheConfig(interval=5)) as handle:
        fresh = tiny_policy.predict_action(frames[1], "open the drawer")
        tiny_policy.predict_action(frames[0], "close the drawer")  # leaves features of another observation
        state = handle._entries[0][1]
        state.reset_handle.remove()  # no reset at the next episode
        state.reset_handle = None
        assert tiny_policy.predict_action(frames[1], "open the drawer").tolist() == fresh.tolist()


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
    with pytest.raises(ValueError, match="HeadCacheConfig needs a diffusion or flow-matching action head"):
        vlaccel.apply(model, HeadCacheConfig())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert vlaccel.applied_configs(model) == []
