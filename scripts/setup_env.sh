#!/usr/bin/env bash
# Create .venv with Python >= 3.12 (jax 0.11.2 needs it) and install pflash_jax with its dev extras.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {
  for c in python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  if command -v pyenv >/dev/null; then
    for v in $(pyenv versions --bare | grep -E '^3\.1[2-9]' | sort -V -r); do
      PYENV_VERSION=$v pyenv which python3 2>/dev/null && return
    done
  fi
  echo "setup_env.sh: no Python >= 3.12 found (install one, or pyenv install 3.12)" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
