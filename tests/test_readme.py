"""The README's quick start runs as written, from an empty directory, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python block"
    return blocks[0]


@pytest.mark.slow
def test_quick_start_runs_verbatim_from_an_empty_directory(tmp_path):
    check = ("\nassert actions.shape == (16, 4), actions.shape\n"
             "assert handle.removed and vlaccel.applied_configs(policy) == []\n"
             "print('kept layers', len(policy.language_model.layers))\n")
    done = subprocess.run([sys.executable, "-c", quick_start() + check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # it wrote nothing where it ran
