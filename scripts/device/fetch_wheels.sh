#!/usr/bin/env bash
# Download (on a machine with network) the wheels the GPU machine lacks into .whl/ (git-ignored through
# .git/info/exclude): its image has torch, numpy, scipy, scikit-learn/-image, pandas, matplotlib, opencv, tensorboard,
# tqdm and pyyaml, but not MONAI, Ignite, nibabel or fire. ITK is left out (only the MetaImage CAMUS reader imports it).
#   bash scripts/device/fetch_wheels.sh
# On the GPU machine each command then starts with (carry: [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.3.2 fire==0.7.1 termcolor==3.1.0
ls -la .whl
