#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything into it.
# Versions come from requirements.lock (the tested set; refresh with scripts/lock_requirements.sh).
# Idempotent: a stamp file records the hash of the requirement files; nothing is reinstalled unless they change.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for cand in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
      echo "$cand"; return 0
    fi
  done
  echo "error: Python 3.10+ is required (none found on PATH)" >&2; return 1
}

PY=${PYTHON:-$(pick_python)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.medssl-installed
want=$(cat requirements.txt requirements-dev.txt requirements.lock pyproject.toml | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing requirements (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  locked=1
  rm -f .venv/.unlocked
  .venv/bin/python -m pip install -q -r requirements-dev.txt -c requirements.lock >.venv/pip-install.log 2>&1 || locked=0
  grep -v "^WARNING: Location" .venv/pip-install.log || true
  if [ "$locked" = 0 ]; then
    # the lock was written on one Python (see its header); another may need other versions of some packages
    echo "[setup] WARNING: the locked versions do not install on $(.venv/bin/python --version); installing the" \
      "newest versions requirements-dev.txt allows (an untested combination: see requirements.lock)" >&2
    .venv/bin/python -m pip install -q -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
    touch .venv/.unlocked
  fi
  .venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import medssl_monai, monai, torch, ignite, cv2" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
