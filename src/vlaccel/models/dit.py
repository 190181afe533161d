"""CogACT-style DiT action head (arXiv 2411.19650, `action_model/models.py`), written from its description.

The condition token ``c = t_embed(t) + W z`` (z = the LM's cognition feature) is *prepended* to the
embedded noisy action chunk, learned positional embeddings are added, then plain pre-LN transformer
blocks run: ``x += Attn(LN(x)); x += MLP(LN(x))`` (no adaLN). The output at the action positions is the
predicted noise epsilon. Each block exposes its two residual branches as submodules (``attn_branch`` and
``mlp_branch``) so EfficientVLA's feature cache (arXiv 2506.10100, Eqs. 6-11) can wrap them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features -> MLP (as in DiT)."""

    def __init__(self, width: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # t: [B] -> [B, width]
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class PreNormAttention(nn.Module):
    """Residual branch 1 of a DiT block: ``Attn(LN(x))`` (paper B Eq. 6)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, W] -> [B, S, W]
        b, s, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, S, W/H]
        return self.proj(out.transpose(1, 2).reshape(b, s, w))


class PreNormMLP(nn.Module):
    """Residual branch 2 of a DiT block: ``MLP(LN(x))`` (paper B Eq. 7)."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x)), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn_branch = PreNormAttention(width, heads)
        self.mlp_branch = PreNormMLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_branch(x)
        return x + self.mlp_branch(x)


class DiT(nn.Module):
    """Noise predictor eps(x_t, t, z) for an action chunk x_t: [B, chunk, action_dim]."""

    def __init__(self, action_dim: int, chunk: int, cond_dim: int, width: int, depth: int, heads: int,
                 mlp_ratio: float):
        super().__init__()
        self.action_in = nn.Linear(action_dim, width)
        self.cond_in = nn.Linear(cond_dim, width)
        self.t_embed = TimestepEmbedder(width)
        self.pos = nn.Parameter(torch.zeros(1, chunk + 1, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)
        self.action_out = nn.Linear(width, action_dim)
        # Index of the denoising step being run (0..S-1), set by the sampler; read by step-aware caches.
        self.denoise_step = 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # x_t: [B, chunk, A], t: [B], z: [B, cond_dim] -> eps: [B, chunk, A]
        cond = (self.t_embed(t) + self.cond_in(z)).unsqueeze(1)  # [B, 1, W]
        h = torch.cat([cond, self.action_in(x_t)], dim=1) + self.pos  # [B, chunk+1, W]
        for block in self.blocks:
            h = block(h)
        return self.action_out(self.final_norm(h[:, 1:]))


class DiffusionActionHead(nn.Module):
    """DiT + diffusers ``DDIMScheduler`` sampling with classifier-free guidance (learned uncond embedding)."""

    def __init__(self, action_dim: int, chunk: int, cond_dim: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, train_timesteps: int, inference_steps: int, cfg_scale: float,
                 init_noise_scale: float = 1.0, timestep_spacing: str = "leading"):
        super().__init__()
        from diffusers import DDIMScheduler

        self.dit = DiT(action_dim, chunk, cond_dim, width, depth, heads, mlp_ratio)
        self.uncond = nn.Parameter(torch.zeros(cond_dim))
        nn.init.normal_(self.uncond, std=0.02)
        self.action_dim, self.chunk = action_dim, chunk
        self.inference_steps, self.cfg_scale = inference_steps, cfg_scale
        self.init_noise_scale = init_noise_scale
        # squaredcos_cap_v2 + epsilon prediction as CogACT; actions live in [-1, 1].
        self.scheduler = DDIMScheduler(
            num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
            clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
            timestep_spacing=timestep_spacing,
        )

    def training_loss(self, z: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None,
                      cfg_dropout: float = 0.0) -> torch.Tensor:
        """Epsilon-MSE (CogACT) on ``actions`` [B, chunk, A] given cognition features ``z`` [B, D].

        ``mask`` [B, chunk] marks valid action steps (chunks that run past the episode end are padded).
        """
        b = actions.shape[0]
        if cfg_dropout > 0:
            drop = torch.rand(b, device=z.device) < cfg_dropout
            z = torch.where(drop[:, None], self.uncond.expand_as(z), z)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=actions.device)
        x_t = self.scheduler.add_noise(actions, noise, t)
        err = (self.dit(x_t, t, z) - noise).pow(2).mean(-1)  # [B, chunk]
        if mask is None:
            return err.mean()
        return (err * mask).sum() / mask.sum().clamp(min=1)

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Classifier-free-guided noise estimate ``eps_u + s (eps_c - eps_u)`` (s = ``cfg_scale``; one batched DiT
        call for both). x: [B, chunk, A], t: [B] timesteps, z: [B, D] -> eps [B, chunk, A]."""
        if self.cfg_scale == 1.0:
            return self.dit(x, t, z)
        eps_c, eps_u = self.dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([z, self.uncond.expand_as(z)])).chunk(2)
        return eps_u + self.cfg_scale * (eps_c - eps_u)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM (eta = 0) with CFG: eps = eps_u + s (eps_c - eps_u). z: [B, D] -> actions [B, chunk, A].

        The chain starts from ``x_T = init_noise_scale * N(0, I)``: scale 1 is standard DDIM, a smaller scale is
        low-temperature sampling (the deterministic DDIM map taken from a point nearer the prior's mode).
        """
        return self.ddim_path(z, generator)[0][-1]

    @torch.no_grad()
    def ddim_path(self, z: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole DDIM chain of :meth:`sample`: ``(xs, eps, timesteps)`` with xs [S+1, B, chunk, A] (xs[0] =
        x_T, xs[-1] = the actions), eps [S, B, chunk, A] the guided noise estimate taken at xs[k], timesteps [S].

        Distillation (``training.distillation``) matches a student's noise estimate to these along the path."""
        b = z.shape[0]
        x = torch.randn((b, self.chunk, self.action_dim), generator=generator, device=z.device, dtype=torch.float32)
        x = (x * self.init_noise_scale).to(z.dtype)  # [B, chunk, A]
        self.scheduler.set_timesteps(self.inference_steps)
        xs, epss = [x], []
        for step, t in enumerate(self.scheduler.timesteps):
            self.dit.denoise_step = step
            eps = self.guided_eps(x, t.expand(b).to(z.device), z)
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
            xs.append(x)
            epss.append(eps)
        return torch.stack(xs), torch.stack(epss), self.scheduler.timesteps.clone()
