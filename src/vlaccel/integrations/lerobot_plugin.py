"""vlaccel inside LeRobot's own commands (``lerobot-eval``, ``lerobot-rollout``, ``lerobot-record``).

LeRobot imports every installed distribution whose name starts with ``lerobot_policy_`` before it builds a policy
(``lerobot.utils.import_utils.register_third_party_plugins``, LeRobot 0.6.1). vlaccel's, ``lerobot_policy_vlaccel``
(``plugins/lerobot_policy_vlaccel`` in this repository), calls :func:`install_from_environment`. The user chooses
what to apply with environment variables, so LeRobot's command lines stay exactly as LeRobot documents them:

``VLACCEL_PRESET``
    comma-separated preset names (``vlaccel presets`` lists them), e.g. ``head-cache`` or ``cross-kv,bf16``; each is
    resolved against the loaded policy (sizes from its config; a technique the policy cannot take is left out and
    named in the log). Unset or empty: the plugin does nothing at all.
``VLACCEL_REPORT``
    optional path of a JSON report written when the process exits: the policy class, each preset's resolution (what
    was applied, what was left out and why) and the wall time of every inference call.

What happens: :func:`install` wraps LeRobot's ``get_policy_class`` (in ``lerobot.policies.factory`` and wherever a
loaded LeRobot module imported it by name) so that the class it returns has its ``from_pretrained`` wrapped once: the
loaded policy gets an :class:`Accelerator` on its ``select_action`` and ``predict_action_chunk`` (instance attributes,
the class's methods untouched otherwise). The presets are applied at the first inference call made in eval mode, so
training (which never calls them, and runs in train mode) is never changed, and the process running
``lerobot-train`` is skipped outright. Every step is logged on the ``vlaccel.lerobot`` logger, which LeRobot's
logging setup prints.

Presets that need calibration observations (layer pruning) are refused here with the reason: LeRobot's commands
have no observations before the first step. Apply those from Python with calibration batches instead.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import statistics
import sys
import time
from typing import Any

__all__ = ["install", "uninstall", "install_from_environment", "Accelerator", "PRESET_ENV", "REPORT_ENV"]

PRESET_ENV, REPORT_ENV = "VLACCEL_PRESET", "VLACCEL_REPORT"
_TRAINING_MODULE = "lerobot.scripts.lerobot_train"
_WRAPPED = "_vlaccel_from_pretrained_wrapped"
log = logging.getLogger("vlaccel.lerobot")
#: what install() changed, for uninstall(): (module, its get_policy_class before) and the classes it wrapped
_INSTALLED: dict[str, list[Any]] = {"modules": [], "classes": []}


def install_from_environment() -> bool:
    """Install the plugin with the presets named in ``VLACCEL_PRESET``; does nothing (returns False) when it is unset
    or empty, or in a ``lerobot-train`` process."""
    names = [n.strip() for n in os.environ.get(PRESET_ENV, "").split(",") if n.strip()]
    if not names:
        return False
    if _TRAINING_MODULE in sys.modules:
        log.info("vlaccel: %s=%s ignored: this is a training run", PRESET_ENV, ",".join(names))
        return False
    install(names, report=os.environ.get(REPORT_ENV) or None)
    return True


def install(presets: list[str], report: str | None = None) -> None:
    """Apply ``presets`` to every policy LeRobot loads with ``from_pretrained`` from now on (see the module doc)."""
    from lerobot.policies import factory

    from vlaccel import presets as registry
    from vlaccel.errors import check_names

    check_names("preset", presets, registry.names())
    uninstall()  # a second install replaces the first
    original = factory.get_policy_class
    wrapped = _wrap_get_policy_class(original, list(presets), report)
    for name, module in list(sys.modules.items()):  # factory, and modules that did `from ... import` it
        if (name == "lerobot" or name.startswith("lerobot.")) and getattr(module, "get_policy_class", None) is original:
            _INSTALLED["modules"].append((module, original))
            module.get_policy_class = wrapped
    log.info("vlaccel: presets %s will be applied to policies LeRobot loads", ",".join(presets))


def uninstall() -> None:
    """Undo :func:`install`: LeRobot's ``get_policy_class`` and the wrapped classes' ``from_pretrained`` as they
    were (policies already loaded keep their accelerator until they are dropped)."""
    for module, original in reversed(_INSTALLED["modules"]):
        module.get_policy_class = original
    for cls, had_own, own in reversed(_INSTALLED["classes"]):
        if had_own:
            cls.from_pretrained = own
        else:
            del cls.from_pretrained
        delattr(cls, _WRAPPED)
    _INSTALLED["modules"].clear()
    _INSTALLED["classes"].clear()


def _wrap_get_policy_class(original: Any, presets: list[str], report: str | None) -> Any:
    @functools.wraps(original)
    def get_policy_class(name: str) -> Any:
        cls = original(name)
        if not cls.__dict__.get(_WRAPPED):
            _INSTALLED["classes"].append((cls, "from_pretrained" in cls.__dict__, cls.__dict__.get("from_pretrained")))
            cls.from_pretrained = classmethod(_LoadThenAttach(cls.from_pretrained.__func__, presets, report))
            setattr(cls, _WRAPPED, True)
        return cls

    return get_policy_class


class _LoadThenAttach:
    """``cls.from_pretrained`` that attaches an :class:`Accelerator` to the policy it returns."""

    def __init__(self, load: Any, presets: list[str], report: str | None):
        self.load, self.presets, self.report = load, presets, report  # load: the function under the classmethod

    def __call__(self, klass: type, *args: Any, **kwargs: Any) -> Any:
        policy = self.load(klass, *args, **kwargs)
        Accelerator(policy, self.presets, self.report).attach()
        return policy


class Accelerator:
    """Applies the presets at ``policy``'s first inference call in eval mode, then times every call.

    Installed as the policy's instance ``select_action`` and ``predict_action_chunk``; the class's methods run
    unchanged underneath. Raises at that first call, with the reason, if a preset cannot be applied: an eval that
    silently ran the plain policy would report the wrong thing.
    """

    def __init__(self, policy: Any, presets: list[str], report: str | None = None):
        self.policy, self.presets, self.report = policy, presets, report
        self.handle: Any = None
        self.resolutions: list[dict[str, Any]] = []
        self.calls: dict[str, list[float]] = {"select_action": [], "predict_action_chunk": []}

    def attach(self) -> None:
        for name in self.calls:
            if hasattr(type(self.policy), name):
                setattr(self.policy, name, functools.partial(self._call, name))
        if self.report:
            atexit.register(self.write_report)
        log.info("vlaccel: %s loaded; presets %s apply at its first inference call",
                 type(self.policy).__name__, ",".join(self.presets))

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.handle is None and not self.policy.training:
            self.apply()
        method = getattr(type(self.policy), name).__get__(self.policy)
        start = time.perf_counter()
        out = method(*args, **kwargs)
        self.calls[name].append(time.perf_counter() - start)
        return out

    def apply(self) -> None:
        import vlaccel
        from vlaccel import presets as registry

        configs = []
        for name in self.presets:
            resolution = registry.resolve(name, self.policy, warn=False)
            self.resolutions.append({"preset": name, "applied": [registry.short(c) for c in resolution.configs],
                                     "left_out": [f"{type(c).__name__}: {why}" for c, why in resolution.left_out]})
            log.info("vlaccel: %s", resolution.description())
            configs += resolution.configs
        self.handle = vlaccel.apply(self.policy, *configs)
        log.info("vlaccel: applied %s to %s", ", ".join(registry.short(c) for c in self.handle.configs) or "nothing",
                 type(self.policy).__name__)

    def summary(self) -> dict[str, Any]:
        timing = {name: {"calls": len(s), "median_ms": 1000 * statistics.median(s), "total_s": sum(s)}
                  for name, s in self.calls.items() if s}
        return {"policy": type(self.policy).__name__, "presets": self.presets, "resolutions": self.resolutions,
                "applied": self.handle is not None, "timing": timing}

    def write_report(self) -> None:
        summary = self.summary()
        for name, t in summary["timing"].items():
            log.info("vlaccel: %s %d calls, median %.1f ms", name, t["calls"], t["median_ms"])
        from vlaccel import atomic  # imported here: LeRobot imports this plugin in every command

        atomic.write_json(self.report, summary, indent=2)  # a reader never sees half a report
