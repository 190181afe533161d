"""The flags of ``vlaccel train-reference``, generated from ``TrainConfig`` (``vlaccel.config_cli``), and the
command line that states a config (recorded in every model card; parsing it gives the config back)."""

from __future__ import annotations

from vlaccel.config_cli import command_line as _command_line
from vlaccel.config_cli import parse_config
from vlaccel.training.train_config import TrainConfig, load_recipe

PROG = "vlaccel train-reference"
DESCRIPTION = ("Train the reference VLA on simulator demos (behaviour cloning; resumes from --run-dir). Every flag is "
               "a TrainConfig field (vlaccel.training.train_config).")


def parse_args(argv: list[str]) -> TrainConfig:
    """The ``TrainConfig`` that ``argv`` states (``--config RECIPE.toml`` first, then the flags over it)."""
    return parse_config(TrainConfig, argv, PROG, DESCRIPTION, load=load_recipe)


def command_line(cfg: TrainConfig) -> str:
    """``vlaccel train-reference ...`` with the flags that set ``cfg``'s non-default fields."""
    return _command_line(PROG, cfg)
