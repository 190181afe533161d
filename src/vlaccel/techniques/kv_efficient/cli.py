"""``vlaccel train-kv-gate``: distil the KV-Efficient gate + aggregator for a policy, optionally compare at equal budget.

    vlaccel train-kv-gate --policy reference --data data/demos --steps 600 --out runs/kv_gate --eval-episodes 16

Writes ``gate.safetensors`` + ``gate.json`` (sizes, the policy fingerprint, cache settings, training stats)
into ``--out``; with ``--eval-episodes`` it then plays held-out demos with the trained gate and the gate-free
baselines at the same budget and prints the action error against the full history (``--json`` for one object).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from vlaccel.techniques.kv_efficient.train import GateTrainConfig

    d = GateTrainConfig()
    p = sub.add_parser("train-kv-gate", help="train the KV-Efficient gate for a policy (distillation from full history)")
    p.add_argument("--policy", default="reference", help="'reference' or the folder of a saved policy")
    p.add_argument("--data", default="data/demos", help="demo folder from `vlaccel collect`")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="train on N random-frame episodes instead of demos (smoke tests only)")
    p.add_argument("--out", default="runs/kv_gate", help="output folder for gate.safetensors + gate.json")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--minutes", type=float, default=None, help="stop training after this much wall time")
    p.add_argument("--window", type=int, default=d.window, help="recent tokens kept raw")
    p.add_argument("--budget", type=int, default=d.budget, help="retained summaries per layer (inference setting)")
    p.add_argument("--sinks", type=int, default=d.sinks,
                   help="first tokens after the instruction kept raw, e.g. one frame (inference setting)")
    p.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: one observation)")
    p.add_argument("--summary-slots", type=int, default=d.summary_slots)
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="episode prefix length for training")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--target-retention", type=float, default=d.target_retention, help="rho in lambda*(mean g - rho)^2")
    p.add_argument("--retention-weight", type=float, default=d.retention_weight, help="lambda")
    p.add_argument("--cognition-weight", type=float, default=d.cognition_weight,
                   help="weight of the cognition-feature distillation term")
    p.add_argument("--action-weight", type=float, default=d.action_weight,
                   help="weight of the action-head distillation term (noise prediction under the student's vs the "
                        "teacher's condition; 0 = off)")
    p.add_argument("--action-draws", type=int, default=d.action_draws,
                   help="diffusion steps sampled per frame for the action term")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of each task's demos kept out of training")
    p.add_argument("--eval-episodes", type=int, default=0, help="held-out episodes for the equal-budget comparison")
    p.add_argument("--eval-frames", type=int, default=None, help="frames per evaluation episode (default: all)")
    p.add_argument("--eval-data", default=None,
                   help="demo folder of held-out episodes (e.g. other seeds); default: --holdout of --data")
    p.add_argument("--eval-budgets", type=int, nargs="*", default=None,
                   help="budgets to compare at (default: --budget)")
    p.add_argument("--eval-only", action="store_true", help="skip training; compare with the gate already in --out")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=run)


def _episodes(args: argparse.Namespace, policy, folder: str):
    from vlaccel.techniques.kv_efficient.train import episodes_from_demos, synthetic_episodes

    if args.synthetic:
        return synthetic_episodes(policy.config, args.synthetic, args.max_frames, args.seed), "synthetic random frames"
    from vlaccel.sim.data import load_demos

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


def run(args: argparse.Namespace) -> int:
    import torch

    import vlaccel
    from vlaccel.techniques.kv_efficient import KVEfficientConfig
    from vlaccel.techniques.kv_efficient.evaluate import compare_retentions, format_table, split_holdout
    from vlaccel.techniques.kv_efficient.train import GateTrainConfig, train_and_save

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = vlaccel.load_policy(args.policy)
    episodes, source = _episodes(args, policy, args.data)
    if args.eval_data:
        train_eps, (held, _) = episodes, _episodes(args, policy, args.eval_data)
    else:
        train_eps, held = split_holdout(episodes, args.holdout if args.eval_episodes else 0.0)
    fields = {f.name for f in dataclasses.fields(GateTrainConfig)}
    cfg = GateTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    result: dict = {"data": source}
    if args.eval_only:
        out = Path(args.out)
    else:
        out, stats = train_and_save(policy, train_eps, cfg, args.out, progress=not args.json,
                                    meta={"policy": str(args.policy), "data": source})
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
                "random": KVEfficientConfig(**common, budget=budget, retention="random", seed=args.seed),
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
        (Path(out) / "comparison.json").write_text(json.dumps(result["comparison"], indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0
