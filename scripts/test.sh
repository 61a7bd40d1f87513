#!/usr/bin/env bash
# Quick start, command 2: set up the environment and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check medssl_monai scripts tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
