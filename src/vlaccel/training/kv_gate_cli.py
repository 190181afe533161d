"""``vlaccel train-kv-gate``: distil the KV-Efficient gate + aggregator for a policy, optionally compare at equal budget.

    vlaccel train-kv-gate --policy reference --data data/demos --steps 600 --out runs/kv_gate --eval-episodes 16

Writes ``gate.safetensors`` + ``gate.json`` (sizes, the policy fingerprint, cache settings, training stats)
into ``--out``; with ``--eval-episodes`` it then plays held-out demos with the trained gate and the gate-free
baselines at the same budget and prints the action error against the full history (``--json`` for one object).
The flags are generated from :class:`GateCommand` and :class:`GateTrainConfig` (``vlaccel.config_cli``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tyro

from vlaccel.config_cli import check, check_numbers, parse_config
from vlaccel.errors import UsageError
from vlaccel.training.kv_gate import GateTrainConfig

COMMAND = "train-kv-gate"


@dataclasses.dataclass
class GateCommand:
    """Train the KV-Efficient gate for a policy by distillation from its full history; optionally compare it with
    the gate-free retentions at equal budget on held-out episodes."""

    policy: str = "reference"
    """'reference' or the folder of a saved policy."""
    data: str = "data/demos"
    """Demo folder from `vlaccel collect`."""
    synthetic: int | None = None
    """Train on this many random-frame episodes instead of demos (smoke tests only)."""
    out: str | None = None
    """Output folder for gate.safetensors + gate.json (None: runs/kv_gate; with --compensate: POLICY_OUT/kv_gate)."""
    policy_out: str | None = None
    """With --compensate: the folder the compensated policy is saved to (its gate goes into its kv_gate/, where
    `vlaccel eval --policy POLICY_OUT --preset kv-efficient` finds it)."""
    holdout: float = 0.2
    """Fraction of each task's demos kept out of training (used with --eval-episodes)."""
    eval_episodes: int = 0
    """Held-out episodes for the equal-budget comparison (0: no comparison)."""
    eval_frames: int | None = None
    """Frames per evaluation episode (None: all)."""
    eval_data: str | None = None
    """Demo folder of held-out episodes (e.g. other seeds); None: the --holdout of --data."""
    eval_budgets: tuple[int, ...] | None = None
    """Budgets to compare at (None: --budget)."""
    eval_only: bool = False
    """Skip training; compare with the gate already in --out."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    json: bool = False
    """Print one JSON object at the end instead of tables."""
    train: tyro.conf.OmitArgPrefixes[GateTrainConfig] = dataclasses.field(default_factory=GateTrainConfig)
    """Gate training and cache settings (stored with the gate)."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse a number out of its range (``UsageError`` naming the flag), before anything is loaded."""
        check_numbers(self, {"synthetic": (1, None, "int"), "holdout": (0, 1, "float"),
                             "eval_episodes": (0, None, "int"), "eval_frames": (1, None, "int"),
                             "threads": (1, None, "int")})
        bad = [b for b in self.eval_budgets or () if isinstance(b, bool) or not isinstance(b, int) or b < 1]
        if bad:
            raise UsageError(f"--eval-budgets must be integers >= 1, got {list(self.eval_budgets or ())}")
        if self.train.compensate:
            if self.policy_out is None:
                raise UsageError("--compensate trains the policy too: pass --policy-out FOLDER for the compensated "
                                 "policy (its gate is written into FOLDER/kv_gate)")
            if self.out is not None:
                raise UsageError("with --compensate the gate belongs to the compensated policy and is written into "
                                 "--policy-out's kv_gate/; drop --out")
            if self.eval_only:
                raise UsageError("--eval-only compares a gate already trained; drop --compensate")
        elif self.policy_out is not None:
            raise UsageError("--policy-out is where --compensate saves the compensated policy; without "
                             "--compensate the policy is not changed: drop --policy-out")

    def gate_folder(self) -> str:
        """Where the gate is written (or read, with --eval-only)."""
        if self.policy_out is not None:
            return str(Path(self.policy_out) / "kv_gate")
        return self.out if self.out is not None else "runs/kv_gate"


def parse_args(argv: list[str]) -> GateCommand:
    return parse_config(GateCommand, argv, f"vlaccel {COMMAND}", GateCommand.__doc__ or "")


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def _episodes(args: GateCommand, policy, folder: str):
    from vlaccel.training.kv_gate import episodes_from_demos, synthetic_episodes

    if args.synthetic:
        return (synthetic_episodes(policy.config, args.synthetic, args.train.max_frames, args.train.seed),
                "synthetic random frames")
    from vlaccel.demo_files import load_demos

    demos = load_demos(folder)
    if not demos:
        raise FileNotFoundError(f"no demos under {folder}; collect some with `vlaccel collect --out {folder}`")
    size = policy.config.image_size
    if demos[0].images.shape[1:3] != (size, size):
        raise ValueError(f"demos in {folder} have {demos[0].images.shape[1:3]} px frames, the policy wants {size}")
    return episodes_from_demos(demos), f"demos from {folder}"


def _spread(episodes, n: int):
    """``n`` episodes spread evenly over the list (so every task is represented)."""
    if n >= len(episodes):
        return list(episodes)
    idx = [round(i * (len(episodes) - 1) / max(1, n - 1)) for i in range(n)]
    return [episodes[i] for i in idx]


def _compensated_card(policy, args: GateCommand, stats: dict) -> dict:
    """The source policy's model card, plus what the compensation changed and how."""
    from vlaccel.models.io import read_card

    source = getattr(policy, "source_dir", None)
    card = read_card(source) if source is not None else {}
    card["kv_compensation"] = {"from": str(args.policy), "parameters": list(args.train.compensate),
                               "lr": args.train.compensate_lr, "steps": stats["steps"],
                               "compensated_parameters": stats["compensated_parameters"],
                               "full_history_weight": args.train.full_history_weight,
                               "teacher": {"policy": args.train.teacher, "tasks": list(args.train.teacher_tasks)}
                               if args.train.teacher is not None else None,
                               "gate": "kv_gate/ (use them together: the gate is matched to these weights)",
                               "run_with": _run_with(args.train.full_history_weight)}
    return card


def _run_with(full_history_weight: float) -> str:
    """The model card's advice on which cache the compensated weights go with."""
    gated = "the kv-efficient preset (KVEfficientConfig, gate=None finds kv_gate/)"
    if full_history_weight > 0:
        return (f"{gated}, or the full cache: these weights were trained to act through the gated cache and, with "
                f"--full-history-weight {full_history_weight}, with every frame raw as well (docs/long_horizon.md)")
    return (f"{gated}: these weights were trained to read their history through the gated cache and may act worse "
            f"with the full cache than the policy they came from (docs/long_horizon.md)")


def run(args: GateCommand) -> int:
    import torch

    import vlaccel
    from vlaccel import atomic
    from vlaccel.bench.kv_retention import compare_retentions, format_table, split_holdout
    from vlaccel.techniques.kv_efficient import KVEfficientConfig
    from vlaccel.techniques.kv_efficient.gate import save_gate
    from vlaccel.training.kv_gate import train_and_save, train_gate

    cfg = args.train
    gate_folder = args.gate_folder()
    if args.policy_out is not None:
        atomic.check_writable(args.policy_out, "--policy-out", folder=True)
    elif not args.eval_only:
        atomic.check_writable(gate_folder, "--out", folder=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = vlaccel.load_policy(args.policy)
    episodes, source = _episodes(args, policy, args.data)
    if args.eval_data:
        train_eps, (held, _) = episodes, _episodes(args, policy, args.eval_data)
    else:
        train_eps, held = split_holdout(episodes, args.holdout if args.eval_episodes else 0.0)
    result: dict = {"data": source}
    if args.eval_only:
        out = Path(gate_folder)
    else:
        meta = {"policy": str(args.policy), "data": source}
        if args.policy_out is not None:  # the compensated policy and its gate in one folder, written together
            task_teacher = vlaccel.load_policy(cfg.teacher) if cfg.teacher is not None else None
            gate, stats = train_gate(policy, train_eps, cfg, progress=not args.json, meta=meta,
                                     task_teacher=task_teacher)
            with atomic.folder(args.policy_out) as tmp:
                vlaccel.save_policy(policy, tmp, card=_compensated_card(policy, args, stats))
                save_gate(gate, tmp / "kv_gate")
            out = Path(gate_folder)
            result["policy"] = str(args.policy_out)
        else:
            out, stats = train_and_save(policy, train_eps, cfg, gate_folder, progress=not args.json, meta=meta)
        result["training"] = stats
        if not args.json:
            print(f"gate written to {out}: {stats['steps']} steps in {stats['seconds']} s, distillation loss "
                  f"{stats['distill_first']:.4f} -> {stats['distill_last']:.4f}, mean g {stats['mean_g_last']:.2f}")
    result["gate"] = str(out)
    if args.eval_episodes:
        if not held:
            raise ValueError("--eval-episodes needs held-out episodes: raise --holdout, pass --eval-data, or collect "
                             "more demos")
        held = _spread(held, args.eval_episodes)
        common = {"window": cfg.window, "chunk": cfg.chunk, "sinks": cfg.sinks, "summary_slots": cfg.summary_slots}
        result["comparison"] = {}
        for budget in args.eval_budgets or [cfg.budget]:
            settings = {
                "gated (trained)": KVEfficientConfig(**common, budget=budget, gate=str(out)),
                "mean, most recent": KVEfficientConfig(**common, budget=budget, retention="mean"),
                "random": KVEfficientConfig(**common, budget=budget, retention="random", seed=cfg.seed),
                "h2o-like": KVEfficientConfig(**common, budget=budget, retention="h2o"),
                "streaming (no summaries)": KVEfficientConfig(window=cfg.window, chunk=cfg.chunk, sinks=cfg.sinks,
                                                              retention="streaming"),
            }
            comparison = compare_retentions(policy, held, settings, args.eval_frames, progress=not args.json)
            comparison["budget"] = budget
            result["comparison"][f"budget={budget}"] = comparison
            if not args.json:
                from rich.console import Console

                Console().print(f"window {cfg.window} tokens, budget {budget} summaries per layer")
                Console().print(format_table(comparison))
                Console().print(format_table(comparison, by_task=True))
        atomic.write_json(Path(out) / "comparison.json", result["comparison"], indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0
