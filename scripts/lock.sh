#!/usr/bin/env bash
# Regenerate requirements/lock.txt: exact versions of every package `scripts/setup.sh` installs.
#
# The direct dependencies are resolved to their *lowest* allowed versions (pyproject.toml's lower bounds, uv's
# `--resolution lowest-direct`), their own dependencies to the newest that fit. So the locked stack is the oldest
# one vlaccel claims to support, and `.ci/run` tests it beside the newest stack the same ranges allow.
# Raise a lower bound in pyproject.toml, run this, then `.ci/run`; tests/test_lock.py checks the two agree.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
if ! command -v "$UV" >/dev/null; then  # a throwaway uv, from PyPI
  tools=$(mktemp -d)
  python3 -m venv "$tools" && "$tools/bin/pip" install -q --disable-pip-version-check uv
  UV="$tools/bin/uv"
fi
torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
if [ -n "${PIP_FIND_LINKS:-}" ] && ls "$PIP_FIND_LINKS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  torch_source=(--find-links "$PIP_FIND_LINKS")
fi
"$UV" pip compile pyproject.toml --extra all --resolution lowest-direct --python-version 3.11 \
  --override requirements/torch-cpu.txt "${torch_source[@]}" --no-annotate --no-emit-find-links \
  --custom-compile-command "bash scripts/lock.sh" --upgrade -o requirements/lock.txt
