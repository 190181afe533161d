"""``vlaccel info``: parameters per module, tokens per frame and FLOPs per call of the reference policy."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from vlaccel.config_cli import check, parse_config
from vlaccel.errors import UsageError

SIZES = ("tiny", "default")


@dataclasses.dataclass
class InfoCommand:
    """Parameters per module, tokens per frame and FLOPs per call of a policy (the bundled reference policy if it
    exists, else a random 'default'-size one), with its release names and the torch / transformers / diffusers
    versions."""

    preset: Literal["tiny", "default"] | None = None
    """Describe a randomly initialised reference VLA of this size (None: the bundled policy if it exists, else the 'default' size)."""
    policy: str | None = None
    """'reference' or the folder of a saved policy."""
    json: bool = False
    """Print one JSON object instead of a table."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse a size that is not one of :data:`SIZES` (``UsageError`` naming the flag)."""
        if self.preset is not None and self.preset not in SIZES:
            raise UsageError(f"--preset must be one of {', '.join(SIZES)}, got {self.preset!r}")


def parse_args(argv: list[str]) -> InfoCommand:
    return parse_config(InfoCommand, argv, "vlaccel info", InfoCommand.__doc__ or "")


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def describe(policy) -> dict:
    import numpy as np

    from vlaccel.bench.flops import count_flops

    cfg = policy.config
    modules = {"vision": policy.vision, "projector": policy.projector, "language_model": policy.language_model,
               "action_head": policy.action_head}
    if policy.proprio_proj is not None:
        modules["proprio"] = policy.proprio_proj
    if policy.visual_readout is not None:
        modules["visual_readout"] = policy.visual_readout
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
    image = np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)
    images = image if cfg.num_cameras == 1 else [image] * cfg.num_cameras
    total, per_module = count_flops(lambda: policy.predict_action(images, "push the puck to the goal"))
    # FlopCounterMode names a module called outside any parent forward by its class name.
    roots = {**{k: type(m).__name__ for k, m in modules.items()}, "action_head": type(policy.action_head.dit).__name__}
    flops = {k: per_module.get(root, 0) for k, root in roots.items()}
    return {
        "parameters": {**params, "total": sum(params.values())},
        "visual_tokens_per_frame": cfg.visual_tokens,
        "tokens_per_frame": cfg.tokens_per_frame,
        "lm": {"layers": cfg.lm_layers, "hidden": cfg.lm_hidden, "heads": cfg.lm_heads, "kv_heads": cfg.lm_kv_heads},
        "visual_readout_heads": cfg.visual_readout_heads,
        "visual_readout_source": cfg.visual_readout_source if cfg.visual_readout_heads else None,
        "visual_readout_pool": cfg.visual_readout_pool if cfg.visual_readout_heads else None,
        "action_head": {"dit_blocks": cfg.dit_depth, "width": cfg.dit_width, "ddim_steps": cfg.inference_steps,
                        "timestep_spacing": cfg.timestep_spacing, "cfg_scale": cfg.cfg_scale, "chunk": [cfg.action_chunk, cfg.action_dim]},
        "flops_per_predict_action": {**flops, "total": total},
    }


def release(policy) -> dict:
    """The release names of the policy (its model card's ``version``) and of the gate ``kv-efficient`` would use
    (``gate.json``'s ``version``); None where a card or gate has none, e.g. a policy trained here."""
    from vlaccel.models.io import CARD
    from vlaccel.techniques.kv_efficient.gate import gate_files, policy_gate_dir, shipped_gate_dir
    from vlaccel.weights import fingerprint

    def read(path) -> dict:
        return json.loads(path.read_text()) if path is not None and path.exists() else {}

    folder = getattr(policy, "source_dir", None)
    card = read(folder / CARD) if folder is not None else {}
    gate_dir = policy_gate_dir(policy)
    if gate_dir is None and read(gate_files(shipped_gate_dir())[1]).get("fingerprint") == fingerprint(policy):
        gate_dir = shipped_gate_dir()
    gate = read(gate_files(gate_dir)[1]) if gate_dir is not None else {}
    return {"policy": card.get("version"), "kv_gate": gate.get("version")}


def run(args: InfoCommand) -> int:
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_policy
    from vlaccel.models.io import WEIGHTS, bundled_dir
    from vlaccel.versions import versions

    if args.policy:
        policy, source = load_policy(args.policy), args.policy
    elif args.preset is None and (bundled_dir("reference") / WEIGHTS).exists():
        policy, source = load_policy("reference"), "bundled reference policy"
    else:
        name = args.preset or "default"
        policy, source = ReferenceVLA(ReferenceVLAConfig.preset(name)), f"random '{name}' preset"
    info = {"source": source, "release": release(policy), **describe(policy),
            "versions": versions(("torch", "transformers", "diffusers"))}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vlaccel info: {source}")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs / predict_action", justify="right")
    for k, n in info["parameters"].items():
        table.add_row(k, f"{n / 1e6:.2f} M", f"{info['flops_per_predict_action'].get(k, 0) / 1e9:.3f}")
    console = Console()
    console.print(table)
    console.print(f"release: policy {info['release']['policy']}, KV-Efficient gate {info['release']['kv_gate']}")
    console.print(f"tokens per frame: {info['tokens_per_frame']} ({info['visual_tokens_per_frame']} visual + "
                  f"proprio + cognition); LM {info['lm']}; action head {info['action_head']}")
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info["visual_readout_heads"]:
        console.print(f"visual readout: {info['visual_readout_pool']} pool (width {info['visual_readout_heads']}) of "
                      f"the {info['visual_readout_source']} visual tokens")
    return 0
