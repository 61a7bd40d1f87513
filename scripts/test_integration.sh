#!/usr/bin/env bash
# Integration tests against real clients, in their own virtual environment:
# a MONAI Label server on 127.0.0.1 serving and training the UniLVSeg segmentation bundle
# (tests/integration/test_monailabel.py; see docs/monailabel.md).
# Idempotent: a stamp file records the hash of the requirement files; nothing is reinstalled unless they change.
#   bash scripts/test_integration.sh            # set up (first run: several minutes) and run the tests
#   bash scripts/test_integration.sh -k infer   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# The environment is large (monailabel pulls a CUDA torch build, about 8 GB), so it lives outside the checkout
# and is reused by every clone on the machine; medssl_monai comes from this checkout through PYTHONPATH.
VENV=${MEDSSL_MONAILABEL_VENV:-$HOME/.cache/medssl_monai/venv-monailabel}

pick_python() {
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info < (3, 13) else 1)'; then
      echo "$cand"; return 0
    fi
  done
  echo "error: Python 3.10-3.12 is required for monailabel 0.8.5 (none found on PATH)" >&2; return 1
}

PY=${PYTHON:-$(pick_python)}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[integration] creating $VENV with $($PY --version)"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
stamp=$VENV/.medssl-installed
want=$(sha1sum < requirements-monailabel.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[integration] $VENV is up to date"
else
  echo "[integration] installing requirements-monailabel.txt (first run takes several minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -r requirements-monailabel.txt 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import monai, monailabel, torch, ignite, cv2, nibabel" \
    || { echo "[integration] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# this checkout's medssl_monai (not installed there: requirements.txt pins the project's own torch 2.13)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$VENV/bin:$PATH"

export MEDSSL_INTEGRATION=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integration "$@"
