"""Training the KV-Efficient gate and aggregator by distillation (the paper calls its gate "learned" but gives no
training objective; the one below is ours).

Teacher: the frozen policy with its full, uncompressed history (one LM forward over the whole episode).
Student: the same frozen policy whose history lives in a *soft* :class:`ChunkedGatedCache`: every chunk that
leaves the window is summarised by the MLP aggregator and stays, and ``log g`` (the LSTM gate's utility) is
added to the attention logits of its slots, so g -> 0 is exactly dropping it. Per-layer biases need per-layer
masks, so a forward pre-hook on every attention module replaces its ``attention_mask`` by a float mask
``[B, 1, q, N + q]`` (``slot_bias`` of the stored slots, causal over the new block); SDPA takes float masks.

Loss per episode (frames t = 1..F, cognition features z at the ``<cog>`` positions)::

    L = w_z  * mean_t |z_student(t) - z_teacher(t)|^2 / |z_teacher(t)|^2
      + w_a  * mean_{t,s,eps} |eps_head(x_s, s, z_student(t)) - eps_head(x_s, s, z_teacher(t))|^2
      + lambda * (mean g - rho)^2

The second term (``--action-weight``) distils what the policy does rather than what it represents: the action
head's noise prediction under the student's condition is matched to the teacher's at ``action_draws`` random
diffusion steps s, on x_s = the teacher's own action chunk (DDIM sample) noised to step s (CogACT's training
objective with the teacher's actions as data). Cognition directions the head ignores then cost nothing.

By default only the aggregator and the gate learn; the policy stays frozen. ``compensate`` (patterns over the
policy's parameter names) also trains those parameters of the policy, with the cache in place (the paper trains
the VLA with its module in place; it compensates with LoRA, we train the named parameters themselves): the
teacher is then a frozen copy of the policy as it was given, so the loss above asks the policy to act, through
its compressed history, as it acted with the full one. The gate belongs to the compensated weights (their
fingerprint is the one recorded). Two more terms serve compensation:

- ``full_history_weight`` (w_f) adds the same distillation for the trained policy with its full, uncompressed
  history (z_full(t) from one LM forward over the whole prefix, as the teacher's)::

      L += w_f * ( w_z * mean_t |z_full(t) - z_teacher(t)|^2 / |z_teacher(t)|^2
                 + w_a * mean_{t,s,eps} |eps_head(x_s, s, z_full(t)) - eps_head(x_s, s, z_teacher(t))|^2 )

  so the compensated weights keep acting as before when they are given every frame raw (without it they learn
  to read their history only through the gated summaries).
- ``teacher_tasks`` with a second teacher policy (``train_gate(task_teacher=...)``): the episodes of those tasks are
  distilled from that policy instead, e.g. the policy a memory-task fine-tune started from, for the tasks the
  fine-tune should not have changed.
Data: the simulator demos (``vlaccel.demo_files.load_demos``), whole-episode prefixes from frame 0 (memory tasks
show the goal only in the first frames), or random frames for smoke tests.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlaccel.errors import UsageError
from vlaccel.progress import progress_bar
from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate, save_gate
from vlaccel.token_layout import TokenLayout
from vlaccel.transformers_compat import forward_cache

__all__ = ["GateTrainConfig", "Episode", "train_gate", "episodes_from_demos", "synthetic_episodes",
           "soft_attention", "episode_loss", "action_distillation", "compensated_parameters"]


#: each numeric field's range: (low, high, kind), see ``vlaccel.config_cli.check_numbers``
GATE_TRAIN_RANGES = {
    "window": (1, None, "int"), "budget": (1, None, "int"), "sinks": (0, None, "int"), "chunk": (1, None, "int"),
    "summary_slots": (1, None, "int"), "max_frames": (1, None, "int"), "min_frames": (1, None, "int"),
    "steps": (1, None, "int"), "minutes": (0, None, "float>"), "lr": (0, None, "float>"),
    "target_retention": (0, 1, "float>"), "retention_weight": (0, None, "float"),
    "cognition_weight": (0, None, "float"), "action_weight": (0, None, "float"), "action_draws": (1, None, "int"),
    "agg_hidden": (1, None, "int"), "lstm_hidden": (1, None, "int"), "seed": (0, None, "int"),
    "compensate_lr": (0, None, "float>"), "full_history_weight": (0, None, "float"),
}


@dataclasses.dataclass
class GateTrainConfig:
    """Settings of ``vlaccel train-kv-gate`` (the cache settings are stored with the gate)."""

    window: int = 132
    """Recent tokens kept raw (inference setting)."""
    budget: int = 8
    """Retained summaries per layer (inference setting)."""
    sinks: int = 0
    """First tokens after the instruction kept raw, e.g. one frame (train with the sinks used at inference)."""
    chunk: int | None = None
    """Tokens per chunk (None: one observation)."""
    summary_slots: int = 1
    """KV slots each chunk summary occupies."""
    max_frames: int = 16
    """Episode prefix length for training (frames from the start of a demo)."""
    min_frames: int | None = None
    """Shortest prefix trained on (None: the first frame whose cache holds a summary, + 2)."""
    steps: int = 300
    """Optimizer steps (one episode prefix each)."""
    minutes: float | None = None
    """Stop training after this much wall time."""
    lr: float = 3e-3
    """Adam learning rate of the aggregator and the gate."""
    target_retention: float = 0.5
    """rho in lambda * (mean g - rho)^2."""
    retention_weight: float = 1.0
    """lambda in lambda * (mean g - rho)^2."""
    cognition_weight: float = 1.0
    """w_z: weight of the cognition-feature distillation term."""
    action_weight: float = 0.0
    """w_a: weight of the action-head distillation term (0 = off)."""
    action_draws: int = 2
    """Diffusion steps sampled per frame for the action term."""
    agg_hidden: int = 64
    """Hidden width of the MLP chunk aggregator."""
    lstm_hidden: int = 64
    """Hidden width of the LSTM gate."""
    seed: int = 0
    """Seed of the episode sampling, the initial weights and the random baseline."""
    compensate: tuple[str, ...] = ()
    """Policy parameters trained along with the gate (fnmatch patterns over its parameter names, e.g.
    'language_model.layers.*.self_attn.*'), distilled from a frozen copy of the policy with the full history;
    empty: the policy stays frozen."""
    compensate_lr: float = 1e-5
    """Adam learning rate of the compensated policy parameters."""
    full_history_weight: float = 0.0
    """w_f: with --compensate, the distillation again for the trained policy with its full, uncompressed history,
    so that the compensated weights keep their full-cache behaviour (0 = off)."""
    teacher: str | None = None
    """With --compensate: a second teacher ('reference' or a policy folder of the same architecture) for the episodes
    of --teacher-tasks (None: every episode is distilled from the policy as it was given)."""
    teacher_tasks: tuple[str, ...] = ()
    """The tasks whose episodes --teacher distils (e.g. the core suite, to undo what a fine-tune changed there)."""
    short_episodes: Literal["skip", "whole"] = "skip"
    """Episodes shorter than --min-frames: skipped, or trained whole (when they hold at least one summary), e.g.
    short core-suite demos mixed with a long task's whose prefixes must reach past its go signal."""

    def __post_init__(self) -> None:
        from vlaccel.config_cli import check

        check(self)

    def validate(self) -> None:
        """Refuse a field out of its range (``UsageError`` naming the flag), before any work."""
        from vlaccel.config_cli import check_numbers

        check_numbers(self, GATE_TRAIN_RANGES)
        if not 0 < self.target_retention < 1:  # the gate starts at g = rho and its loss reads log g
            raise UsageError(f"--target-retention must be a number > 0 and < 1, got {self.target_retention!r}")
        if self.cognition_weight + self.action_weight == 0:
            raise UsageError("--cognition-weight and --action-weight are both 0: the gate would learn nothing; "
                             "set one of them above 0")
        if not self.compensate:
            if self.full_history_weight > 0:
                raise UsageError("--full-history-weight trains the policy with its full history: it needs "
                                 "--compensate PATTERN (without it the policy is frozen); drop it or add --compensate")
            if self.teacher is not None or self.teacher_tasks:
                raise UsageError("--teacher/--teacher-tasks choose what the compensated policy is distilled from: "
                                 "they need --compensate PATTERN; drop them or add --compensate")
        if (self.teacher is None) != (not self.teacher_tasks):
            raise UsageError("--teacher and --teacher-tasks go together: name the second teacher policy and the "
                             "tasks whose episodes it distils")

    def kv_config(self) -> KVEfficientConfig:
        return KVEfficientConfig(window=self.window, chunk=self.chunk, summary_slots=self.summary_slots,
                                 budget=self.budget, sinks=self.sinks, gate=None, retention="gated")


@dataclasses.dataclass
class Episode:
    instruction: str
    images: np.ndarray  # uint8 [F, H, W, 3]
    states: np.ndarray | None  # float32 [F, P] or None
    source: str = ""
    task: str = ""


def episodes_from_demos(demos: Sequence[Any]) -> list[Episode]:
    return [Episode(d.instruction, d.images, getattr(d, "states", None), str(getattr(d, "path", d.task)), d.task)
            for d in demos]


def synthetic_episodes(policy_config: Any, n: int, frames: int, seed: int = 0) -> list[Episode]:
    """Random frames (for smoke tests and tiny policies; not meaningful training data)."""
    rng = np.random.default_rng(seed)
    size, p = policy_config.image_size, policy_config.proprio_dim
    words = ("push the puck to the goal", "reach the goal", "open the drawer", "press the button from the top")
    return [Episode(words[i % len(words)], rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                    rng.normal(size=(frames, p)).astype(np.float32) if p else None, f"synthetic-{i}", "synthetic")
            for i in range(n)]


@contextlib.contextmanager
def soft_attention(policy: Any) -> Iterator[None]:
    """Per-layer float attention masks carrying the soft cache's ``log g`` slot biases (removed on exit)."""
    from vlaccel.adapters import get_adapter

    adapter = get_adapter(policy)

    def pre_hook(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        cache = forward_cache(kwargs)
        if not isinstance(cache, ChunkedGatedCache) or not cache.soft:
            return args, kwargs
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        b, q = hidden.shape[:2]
        layer = cache.layers[module.layer_idx]
        low = torch.finfo(hidden.dtype).min
        causal = torch.full((q, q), low, dtype=hidden.dtype, device=hidden.device).triu(1)  # [q, q]
        past = layer.slot_bias().to(hidden.dtype) if layer.is_initialized else hidden.new_zeros(b, 0)  # [B, N]
        mask = torch.cat([past[:, None, None, :].expand(b, 1, q, past.shape[1]),
                          causal.expand(b, 1, q, q)], dim=-1)  # [B, 1, q, N + q]
        kwargs["attention_mask"] = mask
        return args, kwargs

    hooks = []
    for layer in adapter.decoder_layers(policy):
        attn = adapter.attention_module(policy, layer) if hasattr(adapter, "attention_module") else layer.self_attn
        hooks.append(attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _observations(policy: Any, ep: Episode, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen parts: instruction embeddings [1, L, D] and observation tokens [F, n, D]."""
    with torch.no_grad():
        ids = policy.instruction_ids(ep.instruction)
        instr = policy.language_model.embed_tokens(ids)
        imgs = torch.from_numpy(np.ascontiguousarray(ep.images[:frames])).to(policy.device)
        pixels = policy.normalize_pixels(imgs).unsqueeze(1)  # [F, cams=1, 3, H, W]
        proprio = None
        if policy.config.proprio_dim:
            states = ep.states[:frames] if ep.states is not None else np.zeros((frames, policy.config.proprio_dim))
            proprio = torch.as_tensor(np.asarray(states, np.float32), device=policy.device).to(policy.dtype)
        obs = policy.embed_observation(pixels, proprio)  # [F, n, D]
    return instr, obs


def full_history_cognition(policy: Any, instr: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Cognition features [F, D] with the full history: one LM forward over ``[instr][obs_1]..[obs_F]``."""
    f, n, d = obs.shape
    seq = torch.cat([instr, obs.reshape(1, f * n, d)], dim=1)
    pos = torch.arange(seq.shape[1], device=seq.device).unsqueeze(0)
    hidden = policy.language_model(inputs_embeds=seq, position_ids=pos, use_cache=False).last_hidden_state
    return policy.observation_feature(hidden[0, instr.shape[1]:].reshape(f, n, d), obs)  # [F, D]


def teacher_cognition(policy: Any, instr: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """:func:`full_history_cognition` without gradients (the teacher's targets)."""
    with torch.no_grad():
        return full_history_cognition(policy, instr, obs)


def student_cognition(policy: Any, cache: ChunkedGatedCache, instr: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Cognition features [F, D] of history mode on ``cache`` (gradients flow into the gate and aggregator)."""
    policy.run_language_model(instr, TokenLayout("prefix", instruction=slice(0, instr.shape[1]),
                                                 length=instr.shape[1]), cache)
    out = []
    for t in range(obs.shape[0]):
        hidden = policy.run_language_model(obs[t:t + 1], policy.observation_layout(), cache)
        out.append(policy.observation_feature(hidden, obs[t:t + 1])[0])
    return torch.stack(out)


def episode_loss(policy: Any, gate: KVGate, kv: KVEfficientConfig, chunk: int, ep: Episode, frames: int,
                 cfg: GateTrainConfig, teacher: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss above on the first ``frames`` of ``ep``; ``teacher`` (default: ``policy`` itself) gives the
    full-history targets."""
    teacher = policy if teacher is None else teacher
    instr, obs = _observations(policy, ep, frames)
    z_teacher = teacher_cognition(teacher, instr, obs)  # [F, D]; the observation tokens are frozen (no gradient)
    cache = ChunkedGatedCache.for_model(policy, kv, gate=gate, chunk=chunk, soft=True)
    with soft_attention(policy):
        z_student = student_cognition(policy, cache, instr, obs)
    distill, stats = _distillation(policy, teacher, z_student, z_teacher, cfg)
    if cfg.full_history_weight > 0:  # the trained policy with every frame raw, against the same targets
        full, full_stats = _distillation(policy, teacher, full_history_cognition(policy, instr, obs), z_teacher, cfg)
        distill = distill + cfg.full_history_weight * full
        stats["full_history"] = full_stats["distill"]
    stats["distill"] = float(distill.detach())
    g = torch.cat([layer.gate_g.flatten() for layer in cache.layers])
    if g.numel() == 0:
        return distill, {**stats, "mean_g": float("nan")}
    reg = (g.mean() - cfg.target_retention) ** 2
    return distill + cfg.retention_weight * reg, {**stats, "mean_g": float(g.detach().mean())}


def _distillation(policy: Any, teacher: Any, z_student: torch.Tensor, z_teacher: torch.Tensor,
                  cfg: GateTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """w_z * relative cognition error + w_a * action-head distillation of ``z_student`` [F, D] onto
    ``z_teacher`` [F, D]; and its parts as floats."""
    err = ((z_student - z_teacher) ** 2).sum(-1) / (z_teacher ** 2).sum(-1).clamp_min(1e-8)  # [F]
    distill = cfg.cognition_weight * err.mean()
    stats = {"cognition": float(err.mean().detach())}
    if cfg.action_weight > 0:
        action = action_distillation(policy.action_head, z_student, z_teacher, cfg.action_draws,
                                     teacher_head=teacher.action_head)
        distill = distill + cfg.action_weight * action
        stats["action"] = float(action.detach())
    stats["distill"] = float(distill.detach())
    return distill, stats


def action_distillation(head: Any, z_student: torch.Tensor, z_teacher: torch.Tensor, draws: int,
                        teacher_head: Any = None) -> torch.Tensor:
    """Mean |eps_S(x_s, s, z_student) - eps_T(x_s, s, z_teacher)|^2 over frames and ``draws`` diffusion steps s.

    z_*: [F, D]. x_s is the teacher's DDIM action chunk [F, chunk, A] noised to a uniformly drawn training
    step s; gradients flow only through the student's side (``z_student``, and ``head`` where it is trained).
    ``teacher_head`` defaults to ``head``; the loss is then zero exactly when the two conditions agree.
    """
    teacher_head = head if teacher_head is None else teacher_head
    with torch.no_grad():
        actions = teacher_head.sample(z_teacher.float()).repeat(draws, 1, 1)  # [draws*F, chunk, A]
        noise = torch.randn_like(actions)
        s = torch.randint(0, head.scheduler.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        x_s = head.scheduler.add_noise(actions, noise, s)
        eps_teacher = teacher_head.dit(x_s, s, z_teacher.float().repeat(draws, 1))
    eps_student = head.dit(x_s, s, z_student.float().repeat(draws, 1))
    return (eps_student - eps_teacher).pow(2).mean()


def compensated_parameters(policy: Any, patterns: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters of ``policy`` whose names match one of ``patterns`` (fnmatch), by name; a pattern that
    matches none is refused (naming it)."""
    named = dict(policy.named_parameters())
    chosen: dict[str, torch.nn.Parameter] = {}
    for pattern in patterns:
        hits = {n: p for n, p in named.items() if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            layers = sorted({n.rsplit(".", 1)[0] for n in named if n.startswith("language_model.layers.0.")})
            raise UsageError(f"--compensate {pattern!r} matches no parameter of {type(policy).__name__}; "
                             f"patterns are fnmatch patterns over named_parameters(), e.g. "
                             f"'language_model.layers.*.self_attn.*' "
                             f"(layer 0 holds {', '.join(layers) or 'no language_model.layers'})")
        chosen.update(hits)
    return chosen


def _check_gradients(compensated: dict[str, torch.nn.Parameter]) -> None:
    """Refuse compensated parameters that the loss does not reach (the vision encoder and the embeddings give
    frozen features here), rather than "training" them silently unchanged."""
    idle = [n for n, p in compensated.items() if p.grad is None]
    if idle:
        raise UsageError(f"--compensate names {len(idle)} parameters the gate's loss does not reach, e.g. "
                         f"{idle[:3]}: the observation tokens are computed without gradients here; compensate "
                         f"the language model, the visual readout or the action head")


def _first_summary_frame(cfg: GateTrainConfig, chunk: int, tokens_per_frame: int) -> int:
    """Frames after which the cache holds its first summary (raw >= sinks + window + chunk)."""
    return math.ceil((cfg.sinks + cfg.window + chunk) / tokens_per_frame)


def _check_task_teacher(policy: Any, task_teacher: Any, cfg: GateTrainConfig, episodes: Sequence[Episode]) -> None:
    """Refuse a second teacher that is missing, unused or of another architecture, before any step."""
    if (task_teacher is None) != (cfg.teacher is None):
        raise ValueError("train_gate: pass task_teacher exactly when cfg.teacher names one")
    if task_teacher is None:
        return
    missing = sorted(set(cfg.teacher_tasks) - {e.task for e in episodes})
    if missing:
        raise UsageError(f"--teacher-tasks names tasks with no training episode: {missing}; the episodes hold "
                         f"{sorted({e.task for e in episodes})}")
    ours, theirs = policy.state_dict(), task_teacher.state_dict()
    differ = sorted(k for k in ours.keys() | theirs.keys() if k not in ours or k not in theirs
                    or ours[k].shape != theirs[k].shape)
    if differ:
        raise UsageError(f"--teacher {cfg.teacher} is not the policy's architecture ({len(differ)} tensors differ in "
                         f"name or shape, e.g. {differ[:3]}); name a policy of the same configuration")


def _prefix_range(cfg: GateTrainConfig, episodes: Sequence[Episode], min_frames: int,
                  first: int) -> list[tuple[Episode, int, int]]:
    """(episode, shortest, longest prefix) of every episode trained on (``cfg.short_episodes`` decides those
    shorter than ``min_frames``: skipped, or trained whole when their cache holds a summary for at least two
    frames, i.e. from ``first + 2`` frames, as the default ``min_frames``)."""
    out = []
    for e in episodes:
        n = min(cfg.max_frames, len(e.images))
        if len(e.images) >= min_frames:
            out.append((e, min_frames, n))
        elif cfg.short_episodes == "whole" and n >= first + 2:
            out.append((e, n, n))
    return out


def train_gate(policy: Any, episodes: Sequence[Episode], cfg: GateTrainConfig, progress: bool = True,
               meta: dict[str, Any] | None = None, task_teacher: Any = None) -> tuple[KVGate, dict[str, Any]]:
    """Train a gate for ``policy`` on ``episodes``; returns the gate (meta filled) and training stats. The policy
    stays frozen, except the parameters ``cfg.compensate`` names, which are trained in place; ``task_teacher``
    (the policy ``cfg.teacher`` names, loaded) is the teacher of the episodes of ``cfg.teacher_tasks``."""
    from vlaccel.adapters import get_adapter
    from vlaccel.techniques.kv_efficient.resolve import resolve_chunk
    from vlaccel.weights import fingerprint

    if not episodes:
        raise ValueError("train_gate needs at least one episode")
    if cfg.action_weight > 0 and not hasattr(policy, "action_head"):
        raise ValueError(f"action_weight > 0 distils the action head, but {type(policy).__name__} has none; "
                         f"use cognition_weight only")
    adapter = get_adapter(policy)
    kv = cfg.kv_config()
    chunk = resolve_chunk(kv, policy, adapter)
    lm_cfg = adapter.lm_config(policy)
    head_dim = getattr(lm_cfg, "head_dim", None) or lm_cfg.hidden_size // lm_cfg.num_attention_heads
    compensated = compensated_parameters(policy, cfg.compensate)
    _check_task_teacher(policy, task_teacher, cfg, episodes)
    teacher = copy.deepcopy(policy).eval().requires_grad_(False) if compensated else None
    if task_teacher is not None:
        task_teacher = task_teacher.to(policy.device).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(cfg.seed)
        gate = KVGate(head_dim, lm_cfg.num_key_value_heads, cfg.summary_slots, cfg.agg_hidden, cfg.lstm_hidden,
                      init_utility=cfg.target_retention).to(policy.device)
    tokens = policy.config.tokens_per_frame
    first = _first_summary_frame(cfg, chunk, tokens)
    min_frames = cfg.min_frames or min(cfg.max_frames, first + 2)
    usable = _prefix_range(cfg, episodes, min_frames, first)
    if not usable:
        raise ValueError(f"no episode has the {min_frames} frames needed to fill the sinks ({cfg.sinks} tokens), "
                         f"the window ({cfg.window}) and a chunk ({chunk}); use a smaller --window or --sinks, or "
                         f"longer episodes")
    rng = np.random.default_rng(cfg.seed)
    groups = [{"params": list(gate.parameters()), "lr": cfg.lr}]
    if compensated:
        groups.append({"params": list(compensated.values()), "lr": cfg.compensate_lr})
    opt = torch.optim.Adam(groups)
    frozen = [(p, p.requires_grad) for p in policy.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in compensated.values():
        p.requires_grad_(True)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        with progress_bar("train-kv-gate", cfg.steps, enabled=progress) as bar:
            for step in range(cfg.steps):
                ep, shortest, longest = usable[int(rng.integers(len(usable)))]
                frames = int(rng.integers(shortest, longest + 1))
                by = task_teacher if task_teacher is not None and ep.task in cfg.teacher_tasks else teacher
                loss, stats = episode_loss(policy, gate, kv, chunk, ep, frames, cfg, teacher=by)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if step == 0:
                    _check_gradients(compensated)
                torch.nn.utils.clip_grad_norm_(gate.parameters(), 1.0)
                if compensated:
                    torch.nn.utils.clip_grad_norm_(list(compensated.values()), 1.0)
                opt.step()
                history.append({"step": step, "loss": float(loss.detach()), **stats})
                parts = {k: stats[k] for k in ("cognition", "action", "full_history") if k in stats}
                bar.advance(loss=float(loss.detach()), **parts, g=stats["mean_g"])
                if cfg.minutes is not None and time.perf_counter() - start > 60 * cfg.minutes:
                    break
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    gate.eval()
    k = max(1, len(history) // 10)
    stats_out = {
        "steps": len(history), "seconds": round(time.perf_counter() - start, 1), "episodes": len(usable),
        "whole_episodes": sum(lo == hi and lo < min_frames for _, lo, hi in usable),
        "frames": [min_frames, cfg.max_frames], "loss_first": float(np.mean([h["loss"] for h in history[:k]])),
        "loss_last": float(np.mean([h["loss"] for h in history[-k:]])),
        "distill_first": float(np.mean([h["distill"] for h in history[:k]])),
        "distill_last": float(np.mean([h["distill"] for h in history[-k:]])),
        "mean_g_last": float(np.nanmean([h["mean_g"] for h in history[-k:]])),
    }
    if compensated:
        stats_out["compensated_parameters"] = sum(p.numel() for p in compensated.values())
    gate.meta = {"fingerprint": fingerprint(policy),  # of the weights the gate was trained with (compensated ones)
                 "kv": {"window": cfg.window, "chunk": chunk, "budget": cfg.budget, "sinks": cfg.sinks,
                        "summary_slots": cfg.summary_slots},
                 "train": {**dataclasses.asdict(cfg), **stats_out}, **(meta or {})}
    return gate.cpu(), stats_out


def train_and_save(policy: Any, episodes: Sequence[Episode], cfg: GateTrainConfig, out: str | Path,
                   progress: bool = True, meta: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    gate, stats = train_gate(policy, episodes, cfg, progress=progress, meta=meta)
    return save_gate(gate, out), stats
