#!/usr/bin/env bash
# Quick start, command 1: set up the environment, write the synthetic data and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m medssl_monai demo "$@"
