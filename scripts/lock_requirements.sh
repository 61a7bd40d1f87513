#!/usr/bin/env bash
# Refresh requirements.lock: install requirements-dev.txt without the lock into a scratch environment (the newest
# versions its ranges allow) and write what was installed as the new constraints. Then run `bash scripts/test.sh`
# (setup_env.sh reinstalls .venv from the new lock) and commit requirements.lock only if the whole suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PY" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip
"$scratch/venv/bin/python" -m pip install -q -r requirements-dev.txt
{
  sed -n '1,/^# Written/p' requirements.lock | sed '$d'
  echo "# Written $(date +%F) on $("$scratch/venv/bin/python" --version | cut -d' ' -f2), $(uname -s) $(uname -m) (torch: a CPU or CUDA build of"
  echo "# the pinned version satisfies the pin)."
  # local version labels (+cpu, +cu121) are left out: the pin then accepts either build of that version
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$//'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
git --no-pager diff --stat -- requirements.lock || true
echo "[lock] requirements.lock refreshed; now run: bash scripts/test.sh"
