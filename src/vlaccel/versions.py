"""The versions of the stack vlaccel runs on, as recorded by ``bench``, ``info`` and CI.

``python -m vlaccel.versions`` prints them one per line. Read from the installed distributions' metadata, so
nothing heavy is imported; a package that is not installed reads ``None``.
"""

from __future__ import annotations

import platform
from importlib import metadata

#: the packages whose releases change vlaccel's behaviour or results (pyproject.toml's dependencies and extras)
STACK = ("vlaccel", "torch", "transformers", "diffusers", "safetensors", "numpy", "metaworld", "mujoco", "gymnasium",
         "ray")


def versions(packages: tuple[str, ...] = STACK) -> dict[str, str | None]:
    """``{"python": ..., package: version or None}``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> int:
    for name, version in versions().items():
        print(f"{name:<13}{version or 'not installed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
