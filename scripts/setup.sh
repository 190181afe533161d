#!/usr/bin/env bash
# Create a virtual environment and install vlaccel with its extras (idempotent).
#
#   bash scripts/setup.sh           .venv: the locked, tested stack (requirements/lock.txt, exact versions; the
#                                   local CPU torch 2.13.0 on Python 3.11)
#   bash scripts/setup.sh --newest  .venv-newest: the newest versions pyproject.toml allows (torch stays pinned)
#   bash scripts/setup.sh --lerobot .venv-lerobot: LeRobot 0.6.1's own stack on Python 3.12
#                                   (requirements/lerobot-stack.txt), then vlaccel installed into it with no flag,
#                                   and its LeRobot plugin; fails if that changed any package of LeRobot's stack
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
case "${1:-}" in
  "") venv=.venv ;;
  --newest) venv=.venv-newest ;;
  --lerobot) venv=.venv-lerobot ;;
  *) echo "usage: bash scripts/setup.sh [--newest | --lerobot]" >&2; exit 2 ;;
esac
if [ "$venv" = .venv-lerobot ]; then
  # LeRobot 0.6.1 needs Python >= 3.12; pyenv's 3.12 where plain python3.12 is not on the PATH
  if [ ! -x "$venv/bin/python" ]; then
    if PYENV_VERSION=3.12.1 python3.12 -c "" 2>/dev/null; then PYENV_VERSION=3.12.1 python3.12 -m venv "$venv"
    else python3.12 -m venv "$venv"; fi
  fi
  pip_install -r requirements/lerobot-stack.txt
  "$venv/bin/pip" freeze --exclude-editable > "$venv/lerobot-before.txt"
  pip_install -e ".[dev,sim,plot]"  # no --no-deps, no constraints: what a LeRobot user would type
  pip_install -e plugins/lerobot_policy_vlaccel  # the LeRobot plugin (lerobot-eval imports lerobot_policy_*)
  "$venv/bin/pip" check
  # nothing LeRobot's resolution chose may have moved
  # (grep exits 1 when it selects nothing, which is the good case here)
  moved=$("$venv/bin/pip" freeze --exclude-editable | { grep -F -x -v -f - "$venv/lerobot-before.txt" || true; })
  if [ -n "$moved" ]; then
    echo "installing vlaccel changed LeRobot's stack (before -> now differs for): $(echo $moved)" >&2; exit 1
  fi
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip_install torch==2.13.0
if [ "$venv" = .venv ]; then
  pip_install -r requirements/lock.txt
  pip_install --no-deps -e .
else
  pip_install --upgrade --upgrade-strategy eager -c constraints.txt -e ".[all]"
fi
