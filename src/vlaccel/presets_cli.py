"""``vlaccel presets``: every preset, and what it resolves to for a given policy or transformers model."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import tyro

from vlaccel.config_cli import check, parse_config


@dataclasses.dataclass
class PresetsCommand:
    """Every preset, what it resolves to for a policy or a transformers model, and the parts it leaves out (why)."""

    policy: str = "reference"
    """'reference' (the bundled policy), 'tiny' or 'default' (a random reference VLA of that size), the folder of a saved policy, a folder / config.json of a transformers model, a LeRobot policy folder (config.json with "type": smolvla, pi0 or pi05), or a named flow-matching VLA of `vlaccel bench --model` (lerobot-smolvla, lerobot-pi05, pi0, ...); models other than the reference are built from their config on the meta device: sizes only, no weights."""
    preset: Annotated[tuple[str, ...] | None, tyro.conf.arg(metavar="[NAME ...]")] = None
    """Only these presets (None or no name: all)."""
    json: bool = False
    """Print one JSON object instead of a table."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse an unknown preset name (``UnknownNameError``) before any model is built."""
        check_preset_names(self.preset or ())


def check_preset_names(names: Iterable[str]) -> None:
    """Raise ``UnknownNameError`` listing the entries of ``names`` that are no registered preset."""
    import vlaccel
    from vlaccel.errors import UnknownNameError

    known = vlaccel.presets.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownNameError(f"unknown preset(s) {unknown}; known: {', '.join(known)}")


def parse_args(argv: list[str]) -> PresetsCommand:
    return parse_config(PresetsCommand, argv, "vlaccel presets", PresetsCommand.__doc__ or "")


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def build_target(spec: str) -> tuple[Any, str]:
    """The model ``--policy`` names, and how to say it."""
    from vlaccel.errors import MissingInputError
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_policy

    from vlaccel.bench.flow_subjects import MODELS, build_model

    if spec in ("tiny", "default"):
        return ReferenceVLA(getattr(ReferenceVLAConfig, spec)()), f"random '{spec}' ReferenceVLA"
    if spec in MODELS:
        return _on_meta(build_model, spec), f"{spec} (random-weight sizes)"
    path = Path(spec)
    config_file = path if path.suffix == ".json" else path / "config.json"
    if config_file.is_file():
        data = json.loads(config_file.read_text())
        if isinstance(data, dict) and data.get("type") in ("smolvla", "pi0", "pi05"):  # a LeRobot policy folder
            return _on_meta(build_model, str(config_file.parent)), f"LeRobot {data['type']} from {config_file}"
        if "model_type" in data:  # a transformers config, not a vlaccel policy
            return transformers_model(data), f"{data.get('architectures', ['?'])[0]} from {config_file}"
    if spec != "reference" and not path.exists():
        raise MissingInputError(f"--policy {spec!r} is not 'reference', 'tiny', 'default', a saved policy folder or a "
                                "transformers config.json")
    return load_policy(spec), ("bundled reference policy" if spec == "reference" else spec)


def _on_meta(build: Any, *args: Any) -> Any:
    import torch

    with torch.device("meta"):
        return build(*args)


def transformers_model(config: dict[str, Any]) -> Any:
    """A transformers model built from a config dict on the meta device (its class: ``architectures[0]``)."""
    import torch
    import transformers

    from vlaccel.errors import UsageError

    architectures = config.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise UsageError(f"the config names no transformers model class in 'architectures' (got {architectures}); "
                         "add e.g. \"architectures\": [\"PaliGemmaForConditionalGeneration\"]")
    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        return cls(cfg)


def resolutions(model: Any, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    import vlaccel

    names = list(names or ())
    check_preset_names(names)
    known = vlaccel.presets.names()
    descriptions = vlaccel.presets.describe()
    rows = []
    for name in names or known:
        r = vlaccel.presets.resolve(name, model, warn=False)  # the table says what is left out
        rows.append({"preset": name, "description": descriptions[name],
                     "resolves_to": [vlaccel.presets.short(c) for c in r.configs],
                     "left_out": {type(c).__name__: why for c, why in r.left_out}})
    return rows


def run(args: PresetsCommand) -> int:
    model, source = build_target(args.policy)
    rows = resolutions(model, args.preset)
    if args.json:
        print(json.dumps({"model": source, "presets": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vlaccel presets, resolved for {source}")
    for col in ("preset", "description", "resolves to", "left out"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row["preset"], row["description"], "\n".join(row["resolves_to"]) or "-",
                      "\n".join(f"{k}: {v}" for k, v in row["left_out"].items()) or "-")
    Console(width=200).print(table)
    return 0
