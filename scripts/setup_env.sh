#!/usr/bin/env bash
# Create .venv with Python >= 3.12 (jax 0.11.2 needs it) and install pflash_jax with its dev extras.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
works() { "$1" -c 'import sys; sys.exit(not (3, 12) <= sys.version_info[:2] < (3, 14))' 2>/dev/null; }
find_python() {
  # Prefer 3.12: the GPU machine runs jax 0.11.2 on Python 3.12.
  if command -v python3.12 >/dev/null && works python3.12; then command -v python3.12; return; fi
  if command -v pyenv >/dev/null; then
    for v in $(pyenv versions --bare | grep -E '^3\.1[23]\.' | sort -V); do
      p=$(PYENV_VERSION=$v pyenv which python3 2>/dev/null) && works "$p" && { echo "$p"; return; }
    done
  fi
  for c in python3.13 python3; do
    if command -v "$c" >/dev/null && works "$c"; then command -v "$c"; return; fi
  done
  echo "setup_env.sh: no Python 3.12 or 3.13 found (install one, e.g. pyenv install 3.12)" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
