#!/usr/bin/env bash
# Create a virtual environment with the CPU torch wheel pinned, then install vlaccel with every extra
# (idempotent).
#
#   bash scripts/setup.sh           .venv: the locked, tested stack (requirements/lock.txt, exact versions)
#   bash scripts/setup.sh --newest  .venv-newest: the newest versions pyproject.toml allows (torch stays pinned)
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
case "${1:-}" in
  "") venv=.venv ;;
  --newest) venv=.venv-newest ;;
  *) echo "usage: bash scripts/setup.sh [--newest]" >&2; exit 2 ;;
esac
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip_install torch==2.13.0
if [ "$venv" = .venv ]; then
  pip_install -r requirements/lock.txt
  pip_install --no-deps -e .
else
  pip_install --upgrade --upgrade-strategy eager -c constraints.txt -e ".[all]"
fi
