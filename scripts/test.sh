#!/usr/bin/env bash
# Quick start, command 2: set up the environment and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check medssl_monai scripts tests
# Two pytest processes (MEDSSL_TEST_PROCESSES; 0 = one, in this process): most tests wait on a bundle run in a
# one-thread subprocess, so a second test process fills the other core of the 2-core CI machine. A file's tests
# stay in one process (their module fixtures are built once). Extra arguments go to pytest.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${MEDSSL_TEST_PROCESSES:-2}" --dist loadfile \
  --durations=25 "$@"
