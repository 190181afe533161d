"""The method's retention (arXiv 2509.21354): an LSTM gate's utility g decides which chunk summaries stay.

Per layer, the gate's LSTM reads one feature vector per closed chunk (:func:`.gate.summary_features` of its
position-free summary) with (h, c) carried from that layer's previous chunk, and gives g in (0, 1). Budget mode
keeps the top M summaries per layer by batch-mean g; threshold mode keeps a chunk in every layer iff the
layer- and batch-mean g >= tau (one decision for the whole model, so one attention mask fits every layer; the
paper decides per layer). A ``soft`` cache (gate training) keeps every summary and reports g through
:meth:`GatedRetention.summary_gate`, which the cache turns into ``log g`` attention logits.
"""

from __future__ import annotations

import dataclasses

import torch

from vlaccel.techniques.kv_efficient.gate import summary_features
from vlaccel.techniques.kv_efficient.retention import (
    ClosedChunks,
    LayerView,
    Retention,
    RetentionState,
    top_budget,
)

__all__ = ["GatedRetention", "GatedState"]


@dataclasses.dataclass
class GatedState(RetentionState):
    g: torch.Tensor  # [B, k] gate output of each retained summary (carries gradients in a soft cache)
    lstm: tuple[torch.Tensor, torch.Tensor] | None = None  # (h, c) [B, hidden] after the layer's last chunk


class GatedRetention(Retention):
    """Utility g from the LSTM gate (see the module docstring); needs ``gate`` (a ``KVGate``)."""

    name = "gated"

    def new_state(self, layer: LayerView) -> GatedState:
        return GatedState(utility=torch.zeros(0, device=layer.device),
                          g=torch.zeros(layer.batch, 0, device=layer.device))

    def summary_gate(self, index: int) -> torch.Tensor | None:
        st = self._states.get(index)
        return None if st is None else st.g

    def gate_scores(self, chunks: ClosedChunks, states: list[GatedState]) -> torch.Tensor:
        """g [L, B, n] of the new summaries; advances every layer's LSTM by the n chunks (in order)."""
        n_layers, b = len(chunks.layers), chunks.keys.shape[1]
        feats = summary_features(chunks.keys.flatten(0, 1), chunks.values.flatten(0, 1))  # [L*B, n, H*2d]
        lstm = None
        if states[0].lstm is not None:  # every layer's (h, c) as one batch of L*B
            lstm = tuple(torch.cat([st.lstm[j] for st in states]) for j in (0, 1))
        g = []
        for m in range(chunks.n):  # sequential over the chunks closed in this forward (usually one)
            g_m, lstm = self.gate.lstm(feats[:, m], lstm)  # [L*B]
            g.append(g_m)
        for i, st in enumerate(states):
            st.lstm = (lstm[0][i * b:(i + 1) * b], lstm[1][i * b:(i + 1) * b])
        return torch.stack(g, dim=1).view(n_layers, b, chunks.n)  # [L, B, n]

    def on_chunks_closed(self, chunks: ClosedChunks) -> torch.Tensor | None:
        states = [self._states[layer.index] for layer in chunks.layers]
        g_new = self.gate_scores(chunks, states)  # [L, B, n]
        utility = torch.cat([torch.stack([st.utility for st in states]), g_new.detach().mean(1)], dim=1)  # [L, k+n]
        keep = self._keep(utility, g_new)
        for i, st in enumerate(states):
            g = torch.cat([st.g, g_new[i]], dim=1)  # [B, k+n]
            st.g = g if keep is None else g[:, keep[i]]
            st.utility = utility[i] if keep is None else utility[i][keep[i]]
        return keep

    def _keep(self, utility: torch.Tensor, g_new: torch.Tensor) -> torch.Tensor | None:
        """keep [L, k'] (ascending) from utility [L, k+n] and the new g [L, B, n], or None = keep all."""
        if self.soft:
            return None
        if self.config.threshold is None:
            return top_budget(utility, self.config.budget)
        n = g_new.shape[-1]
        k = utility.shape[1] - n
        keep_new = g_new.detach().mean(dim=(0, 1)) >= self.config.threshold  # [n]: one decision per chunk
        keep = torch.cat([torch.arange(k, device=utility.device), k + keep_new.nonzero().flatten()])
        return keep.expand(utility.shape[0], -1)
