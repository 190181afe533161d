"""Token pruning on LeRobot's SmolVLA (checked on lerobot 0.6.1): the image tokens are pruned *before* the VLM.

Why before: ``SmolVLMWithExpertModel.forward`` runs its own loop over the layers and keeps the hidden states in a
local list, so no hook can shorten them after a layer K (EfficientVLA's place, arXiv 2506.10100 Sec. 3.3). So
``TokenPruneConfig`` acts in ``VLAFlowMatching.embed_prefix`` (wrapped as an instance attribute while applied): its
output ``[N image tokens per camera][language][state]`` (+ padding) loses all but ``keep_tokens x cameras`` image
tokens, chosen jointly over the cameras; nothing after it changes, so every VLM layer and every flow step of the
expert reads the shorter prefix. LeRobot numbers the positions of the prefix it is given, so the kept tokens get
consecutive positions (as if the camera had produced fewer tokens). Only ``layer=0`` is accepted: the scores use
layer 0's projections of the prefix embeddings, the only layer whose input exists before the VLM runs.

Scores, all from the prefix embeddings x [B, P, D] with layer 0's ``input_layernorm``, ``q_proj`` and ``k_proj`` and
LeRobot's RoPE at the prefix positions:
  ``"efficientvla"`` (Eqs. 2-5): relevance ``r_i = sum_j mean_h softmax_i(q_j . k_i / sqrt(d))`` over the image keys
  i, j the (unpadded) language tokens; then :func:`~vlaccel.techniques.token_prune.select_visual_tokens` (key
  tokens, task tokens, cosine diversity of the image embeddings);
  ``"diversity"``: the same with ``alpha = 0``; ``"fastv"``: the attention the state token (the prefix's last
  token, which sees every other) gives each image token, top ``keep``; ``"random"``: a generator seeded with
  ``seed`` at apply and before every prefix (so each call prunes the same way).
Refused: ``add_image_special_tokens=True`` (image tokens interleaved with special tokens) and ``layer != 0``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaccel.techniques.token_prune import _descending, select_visual_tokens

__all__ = ["PrefixTokenPruneHandler", "image_relevance"]


def _layer0_qk(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-RoPE queries [B, H, P, d] and keys [B, H_kv, P, d] of SmolVLA's VLM layer 0 for embeddings x [B, P, D]
    (the module forwards are called through their classes: no hook of another technique fires)."""
    from lerobot.policies.smolvla.smolvlm_with_expert import apply_rope

    norm, attn = layer.input_layernorm, layer.self_attn
    h = type(norm).forward(norm, x).to(attn.q_proj.weight.dtype)  # [B, P, D]
    shape = (*h.shape[:2], -1, attn.head_dim)
    q = apply_rope(F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(shape), positions)  # [B, P, H, d]
    k = apply_rope(F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(shape), positions)  # [B, P, H_kv, d]
    return q.transpose(1, 2), k.transpose(1, 2)


def image_relevance(q: torch.Tensor, k: torch.Tensor, queries: torch.Tensor, weights: torch.Tensor,
                    vis: slice) -> torch.Tensor:
    """EfficientVLA's task relevance at layer 0: ``r_i = sum_j w_j mean_h softmax_i(q_j . k_i / sqrt(d))``.

    q [B, H, P, d], k [B, H_kv, P, d]; queries: LongTensor [Lq] (positions of the language tokens), weights [B, Lq]
    (1 for real tokens, 0 for padding); the softmax runs over the image keys ``vis``. Returns [B, N]."""
    keys = k[:, :, vis].repeat_interleave(q.shape[1] // k.shape[1], dim=1).float()  # [B, H, N, d]
    logits = q[:, :, queries].float() @ keys.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, Lq, N]
    probs = torch.softmax(logits, dim=-1).mean(1)  # [B, Lq, N]
    return (probs * weights[:, :, None].float()).sum(1)  # [B, N]


def last_token_attention(q: torch.Tensor, k: torch.Tensor, last: torch.Tensor, visible: torch.Tensor,
                         vis: slice) -> torch.Tensor:
    """FastV's score at layer 0: the attention the row ``last`` [B] gives each image key, softmax over the keys it
    sees (``visible`` [B, P] bool), heads averaged. Returns [B, N]."""
    b = q.shape[0]
    rows = q[torch.arange(b), :, last]  # [B, H, d]
    keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).float()  # [B, H, P, d]
    logits = (rows.float()[:, :, None] @ keys.transpose(-1, -2))[:, :, 0] * q.shape[-1] ** -0.5  # [B, H, P]
    logits = logits.masked_fill(~visible[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(1)[:, vis]  # [B, N]


class _PrefixPruner:
    """``VLAFlowMatching.embed_prefix`` as an instance attribute: embeds, then keeps the chosen image tokens."""

    def __init__(self, policy: Any, adapter: Any, config: Any):
        self.policy, self.adapter, self.config = policy, adapter, config
        self.flow = policy.model
        self.per_image = adapter.visual_tokens(policy)
        self.previous = self.flow.__dict__.get("embed_prefix")
        self.generator: torch.Generator | None = None
        self.reset()
        self.reset_handle = adapter.register_reset_hook(policy, self.reset)
        self.flow.embed_prefix = self

    def reset(self) -> None:
        if self.config.method == "random":
            self.generator = torch.Generator().manual_seed(self.config.seed)

    def __call__(self, images: list[torch.Tensor], img_masks: list[torch.Tensor], lang_tokens: torch.Tensor,
                 lang_masks: torch.Tensor, state: torch.Tensor = None) -> tuple[torch.Tensor, ...]:
        embed = self.previous if self.previous is not None else type(self.flow).embed_prefix.__get__(self.flow)
        embs, pad, att = embed(images, img_masks, lang_tokens, lang_masks, state=state)  # [B, P, D], [B, P] x2
        cams = len(images)
        vis = slice(0, cams * self.per_image)
        keep = self.config.keep_tokens * cams
        if keep >= vis.stop:
            return embs, pad, att
        chosen = self._select(embs, pad, att, vis, lang_masks, keep)  # [B, keep], ascending
        b, p = pad.shape
        rest = torch.arange(vis.stop, p, device=embs.device).expand(b, -1)
        index = torch.cat([chosen.to(embs.device), rest], dim=1)  # [B, P']
        return (embs.gather(1, index[..., None].expand(-1, -1, embs.shape[-1])), pad.gather(1, index),
                att.gather(1, index))

    def _select(self, embs, pad, att, vis, lang_masks, keep) -> torch.Tensor:
        cfg, b, n = self.config, embs.shape[0], vis.stop
        if cfg.method == "random":
            return torch.rand(b, n, generator=self.generator).argsort(-1)[:, :keep].sort(-1).values
        positions = torch.cumsum(pad, dim=1) - 1  # [B, P]: LeRobot's prefix positions
        layer0 = self.adapter.decoder_layers(self.policy)[0]
        with torch.no_grad():
            q, k = _layer0_qk(layer0, embs, positions)
            if cfg.method == "fastv":
                last = pad.long().cumsum(1).argmax(1)  # [B]: the last real token (the state)
                score = last_token_attention(q, k, last, pad.bool(), vis)  # [B, N]
                return _descending(score)[:, :keep].sort(-1).values
            lang = torch.arange(vis.stop, vis.stop + lang_masks.shape[1], device=embs.device)
            relevance = image_relevance(q, k, lang, lang_masks, vis)  # [B, N]
        alpha = cfg.alpha if cfg.method == "efficientvla" else 0.0
        return select_visual_tokens(relevance, embs[:, vis], keep, cfg.k_key, alpha)

    def remove(self) -> None:
        self.reset_handle.remove()
        if self.flow.__dict__.get("embed_prefix") is not self:
            raise RuntimeError("SmolVLA's embed_prefix was replaced after token pruning was applied; remove that "
                               "change first (undo in reverse order)")
        if self.previous is None:
            del self.flow.__dict__["embed_prefix"]
        else:
            self.flow.embed_prefix = self.previous


class PrefixTokenPruneHandler:
    """``TokenPruneConfig`` on SmolVLA (``ModelAdapter.token_prune_handler``)."""

    DEFAULT_LAYER = 0  # what ``TokenPruneConfig(layer=None)`` resolves to: before the VLM

    def validate(self, model: Any, config: Any, adapter: Any, pending: tuple = ()) -> None:
        if config.layer != 0:
            raise ValueError(f"TokenPruneConfig(layer={config.layer}): SmolVLA runs its own layer loop, so vlaccel "
                             "prunes its image tokens before the VLM, scored with layer 0's projections: use layer=0")
        if model.config.add_image_special_tokens:
            raise NotImplementedError("token pruning on SmolVLA needs add_image_special_tokens=False (image tokens "
                                      "in one run per camera); set it to False or remove the TokenPruneConfig")
        n = adapter.visual_tokens(model)
        lo = config.min_keep()
        if not lo <= config.keep_tokens <= n:
            raise ValueError(f"keep_tokens={config.keep_tokens} is outside [{lo}, {n}] for method {config.method!r}: "
                             f"this SmolVLA has {n} image tokens per camera")

    def apply(self, model: Any, config: Any, adapter: Any, prepared: None = None) -> _PrefixPruner:
        return _PrefixPruner(model, adapter, config)
