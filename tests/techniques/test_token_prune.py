"""TokenPruneConfig (EfficientVLA B2): the pure selection rule against hand-computed cases, the relevance and
FastV scores against independent computations, and the in-LM dropping against a manual layer-by-layer forward
(single observation and history mode)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import vlaccel
from tests.conftest import random_frames
from tests.techniques.test_layer_prune import tiny_lm
from vlaccel.adapters import UnsupportedModelError
from vlaccel.techniques import LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques.token_prune import instruction_relevance, select_visual_tokens

# The pruned policy runs prefix + blocks through a KV cache; the reference runs one no-cache forward.
FP32_FORWARD_ATOL = 1e-5
INSTRUCTION = "push the puck to the goal"
N_VISUAL = 16  # ReferenceVLAConfig.tiny(): 4x4 patches, one camera

# Hand-computed case (see test_select_hand_computed): s ranks 5, 1, {2, 3}, 7, 4, 6, 0.
RELEVANCE = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.2, 1.0, 0.1, 0.3]])
FEATURES = torch.tensor([[[-1.0, 0.1], [0.0, 1.0], [1.0, 0.2], [0.2, 1.0], [1.0, -1.0], [1.0, 0.0], [-1.0, -1.0],
                          [1.0, 1.0]]])


# ---------------------------------------------------------------------------------------------- pure selection
def test_select_hand_computed():
    # keep 6, k_key 2, alpha .5: K_aug 4 -> K_task 2, K_div 2. Key = {5, 1}; task = {2, 3} (0.5 tie, both);
    # diversity 1 - max cos to v5=[1,0], v1=[0,1]: v6 1.707, v0 0.900, v4 0.293, v7 0.293 -> {6, 0}.
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=6, k_key=2, alpha=0.5).tolist() == [[0, 1, 2, 3, 5, 6]]
    # keep 7: K_task = floor(2.5) = 2, K_div = 3: v4 and v7 tie at 0.293, the lower index (4) wins.
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=7, k_key=2, alpha=0.5).tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    # alpha 1: pure relevance ranking; alpha 0: key tokens + diversity only (v6, v0, v4, then v2/v3 ~0.02).
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=6, k_key=2, alpha=1.0).tolist() == [[1, 2, 3, 4, 5, 7]]
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=5, k_key=2, alpha=0.0).tolist() == [[0, 1, 4, 5, 6]]


def test_select_keep_equals_k_key_and_k_key_plus_one():
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=2, k_key=2).tolist() == [[1, 5]]
    # keep = k_key + 1: K_task = floor(0.5 * 1) = 0, the single extra token is the most diverse one (v6).
    assert select_visual_tokens(RELEVANCE, FEATURES, keep=3, k_key=2).tolist() == [[1, 5, 6]]


def test_select_ties_go_to_the_lower_index_and_constant_relevance_is_safe():
    flat = torch.zeros(1, 8)
    same = torch.ones(1, 8, 2)  # every diversity is 0 too
    assert select_visual_tokens(flat, same, keep=6, k_key=2).tolist() == [[0, 1, 2, 3, 4, 5]]
    # Min-max normalisation makes the rule invariant to affine rescaling of r.
    assert torch.equal(select_visual_tokens(RELEVANCE * 3 + 2, FEATURES, 6, 2), select_visual_tokens(RELEVANCE, FEATURES, 6, 2))


def test_select_is_per_batch_row_and_validates_keep():
    rel = torch.cat([RELEVANCE, RELEVANCE.flip(-1)])
    feats = torch.cat([FEATURES, FEATURES.flip(1)])
    both = select_visual_tokens(rel, feats, keep=6, k_key=2)
    assert both[0].tolist() == [0, 1, 2, 3, 5, 6]
    assert both[1].tolist() == select_visual_tokens(rel[1:], feats[1:], keep=6, k_key=2)[0].tolist()
    with pytest.raises(ValueError, match="must be in \\[k_key=2, N=8\\]"):
        select_visual_tokens(RELEVANCE, FEATURES, keep=9, k_key=2)
    with pytest.raises(ValueError, match="must be in"):
        select_visual_tokens(RELEVANCE, FEATURES, keep=1, k_key=2)


def test_instruction_relevance_matches_a_loop_with_gqa():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8)  # 4 query heads share 2 KV heads
    want = torch.zeros(5)
    for h in range(4):
        for j in range(3):
            want += torch.softmax(q[0, h, j] @ k[0, h // 2].T * 0.125, dim=-1) / 4
    torch.testing.assert_close(instruction_relevance(q, k, 0.125)[0], want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- in the LM
def _full_sequence(policy, frames):
    with torch.no_grad():
        ids = policy.instruction_ids(INSTRUCTION)
        parts = [policy.language_model.embed_tokens(ids)]
        parts += [policy.embed_observation(policy.pixels_from_images(f), policy.proprio_tensor(None)) for f in frames]
    return torch.cat(parts, dim=1), ids.shape[1]


def _manual_pruned_cognition(policy, frames, k: int, kept_visual: list[torch.Tensor]) -> torch.Tensor:
    """[<s> instr][frame 0]..[frame F-1] in one no-cache forward: layers <= k see every token, layers > k only the
    prefix, each frame's kept visual tokens and its proprio/cognition tokens. Returns cognition features [F, D]."""
    lm, per = policy.language_model, policy.config.tokens_per_frame
    embeds, n_instr = _full_sequence(policy, frames)
    keep = [torch.arange(n_instr)]
    for f, sel in enumerate(kept_visual):
        start = n_instr + f * per
        keep.append(torch.cat([start + sel, torch.arange(start + N_VISUAL, start + per)]))
    keep = torch.cat(keep)
    pos = torch.arange(embeds.shape[1])[None]
    h = embeds
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            if i == k + 1:
                h, pos = h[:, keep], pos[:, keep]
            h = layer(h, attention_mask=None, position_embeddings=lm.rotary_emb(h, position_ids=pos), position_ids=pos)
        h = lm.norm(h)
    cog = n_instr + torch.arange(len(frames)) * (len(kept_visual[0]) + 2) + len(kept_visual[0]) + 1
    return h[0, cog]


def _random_subsets(seed: int, frames: int, keep: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, N_VISUAL, generator=g).argsort(-1)[0, :keep].sort().values for _ in range(frames)]


@pytest.mark.parametrize("k", [0, 2])
def test_history_mode_equals_manual_pruned_forward(tiny_policy, k):
    frames = random_frames(tiny_policy.config, 3, seed=5)
    cfg = TokenPruneConfig(keep_tokens=6, layer=k, method="random", seed=3)
    with vlaccel.applied(tiny_policy, cfg):
        tiny_policy.reset(INSTRUCTION)
        cognition = []
        for f in frames:
            tiny_policy.step(f)
            cognition.append(tiny_policy.last_cognition)
        lengths = [layer.keys.shape[2] for layer in tiny_policy.cache.layers]
    n_instr = tiny_policy.instruction_ids(INSTRUCTION).shape[1]
    # Dropped tokens stay in layers <= k's cache and never enter layers > k's.
    assert lengths == [n_instr + 3 * 18] * (k + 1) + [n_instr + 3 * (6 + 2)] * (3 - k)
    want = _manual_pruned_cognition(tiny_policy, frames, k, _random_subsets(3, 3, 6))
    torch.testing.assert_close(torch.cat(cognition), want, rtol=0, atol=FP32_FORWARD_ATOL)


def _layer_qk(policy, frames, k: int):
    """Post-RoPE q [H, S, d] and k [H_kv, S, d] and output hidden [S, D] of layer k in a no-cache forward."""
    lm = policy.language_model
    attn = lm.layers[k].self_attn
    got = {}
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: got.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, a, o: got.__setitem__("k", o)),
             lm.layers[k].register_forward_hook(lambda m, a, o: got.__setitem__("h", o))]
    embeds, n_instr = _full_sequence(policy, frames)
    try:
        with torch.no_grad():
            lm(inputs_embeds=embeds)
    finally:
        for h in hooks:
            h.remove()
    s, d = embeds.shape[1], attn.head_dim
    cos, sin = lm.rotary_emb(embeds, position_ids=torch.arange(s)[None])
    q = got["q"].view(1, s, -1, d).transpose(1, 2)
    key = got["k"].view(1, s, -1, d).transpose(1, 2)
    q, key = apply_rotary_pos_emb(q, key, cos, sin)
    return q[0], key[0], got["h"][0], n_instr


@pytest.mark.parametrize("method", ["efficientvla", "diversity"])
def test_relevance_selection_matches_independent_computation(tiny_policy, method):
    frame = random_frames(tiny_policy.config, 1, seed=9)
    k, keep = 1, 7
    q, key, hidden, n_instr = _layer_qk(tiny_policy, frame, k)
    vis = slice(n_instr, n_instr + N_VISUAL)
    scale = tiny_policy.language_model.layers[k].self_attn.scaling
    heads, groups = q.shape[0], q.shape[0] // key.shape[0]
    rel = sum(torch.softmax(q[h, :n_instr] @ key[h // groups, vis].T * scale, dim=-1).sum(0) for h in range(heads)) / heads
    want = select_visual_tokens(rel[None], hidden[None, vis], keep, 4, 0.5 if method == "efficientvla" else 0.0)
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=keep, layer=k, method=method)) as handle:
        tiny_policy.predict_action(frame[0], INSTRUCTION)
        got = handle._entries[0][1].fwd["keep"][:, :keep]
    assert got.tolist() == want.tolist()


def test_fastv_selection_matches_eager_attention_of_the_cognition_token(tiny_policy):
    frame = random_frames(tiny_policy.config, 1, seed=4)
    k, keep = 2, 5
    eager = copy.deepcopy(tiny_policy)
    eager.language_model.set_attn_implementation("eager")
    embeds, n_instr = _full_sequence(eager, frame)
    with torch.no_grad():
        attn = eager.language_model(inputs_embeds=embeds, output_attentions=True).attentions[k]  # [1, H, S, S]
    score = attn[0, :, -1, n_instr:n_instr + N_VISUAL].mean(0)
    want = torch.sort(score, descending=True, stable=True).indices[:keep].sort().values
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=keep, layer=k, method="fastv")) as handle:
        tiny_policy.predict_action(frame[0], INSTRUCTION)
        got = handle._entries[0][1].fwd["keep"][0, :keep]
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("method", ["efficientvla", "fastv", "random", "diversity"])
def test_every_method_runs_in_history_mode_and_cuts_the_cache(tiny_policy, method):
    frames = random_frames(tiny_policy.config, 4, seed=2)
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=5, layer=1, method=method)):
        tiny_policy.reset(INSTRUCTION)
        actions = np.stack([tiny_policy.step(f) for f in frames])
        lengths = [layer.keys.shape[2] for layer in tiny_policy.cache.layers]
    assert np.isfinite(actions).all()
    assert lengths[2] == lengths[1] - 4 * (N_VISUAL - 5)


def test_instruction_queries_are_required(tiny_policy, frames):
    tiny_policy.reset(INSTRUCTION)  # prefix ran before the technique existed
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1)):
        with pytest.raises(RuntimeError, match="call policy.reset\\(instruction\\)"):
            tiny_policy.step(frames[0])


def test_with_layer_pruning_in_the_same_apply(tiny_policy, frames):
    layers = list(tiny_policy.language_model.layers)
    with pytest.raises(ValueError, match="layer=1 is outside \\[0, 0\\]"):
        vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1), LayerPruneConfig(keep_layers=2, method="last"))
    assert list(tiny_policy.language_model.layers) == layers  # layer pruning was rolled back
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1), LayerPruneConfig(keep_layers=3, method="last")):
        tiny_policy.reset(INSTRUCTION)
        for f in frames[:2]:
            assert np.isfinite(tiny_policy.step(f)).all()
        lengths = [layer.keys.shape[2] for layer in tiny_policy.cache.layers]
    assert len(lengths) == 3 and lengths[2] == lengths[1] - 2 * (N_VISUAL - 6)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(keep_tokens=4), "keep_tokens >= 5 \\(> k_key\\)"),
    (dict(keep_tokens=0, method="random"), "keep_tokens >= 1"),
    (dict(keep_tokens=8, layer=-1), "layer must be >= 0"),
    (dict(keep_tokens=8, alpha=1.5), "alpha must be in \\[0, 1\\]"),
    (dict(keep_tokens=8, alpha=-0.1), "alpha must be in \\[0, 1\\]"),
    (dict(keep_tokens=8, k_key=0), "k_key must be >= 1"),
    (dict(keep_tokens=8, method="h2o"), "method must be one of"),
    (dict(keep_tokens=8.5), "must be an integer"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenPruneConfig(**kwargs)


def test_out_of_range_for_the_model_leaves_it_untouched(tiny_policy, frames):
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    base = tiny_policy.predict_action(frames[0], INSTRUCTION)
    with pytest.raises(ValueError, match="keep_tokens=17 is outside \\[5, 16\\].*N=16 visual tokens"):
        vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=17))
    with pytest.raises(ValueError, match="outside \\[1, 16\\]"):
        vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=17, method="fastv"))
    with pytest.raises(ValueError, match="layer=3 is outside \\[0, 2\\].*4 layers"):
        vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=8, layer=3))
    after = tiny_policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in tiny_policy.language_model.layers)
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTRUCTION), base)


def test_models_without_visual_tokens_are_refused():
    with pytest.raises(UnsupportedModelError, match="Supported:"):
        vlaccel.apply(torch.nn.Linear(2, 2), TokenPruneConfig(keep_tokens=8))
    with pytest.raises(ValueError, match="TokenPruneConfig needs visual tokens in its LM input"):
        vlaccel.apply(tiny_lm("llama"), TokenPruneConfig(keep_tokens=8))
