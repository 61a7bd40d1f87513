#!/usr/bin/env bash
# The GPU checks left open on the CPU, as one prepared script in parts that each fit one device call (< 10 min).
#   part ef     (~5 min)  UniLVSeg recipe: train 15 epochs on 240 synthetic videos, evaluate, diagnose the EF bias
#                         (scripts/device/ef_recipe_check.sh); BOUND_WEIGHT=0.5 trains with the untraced-frame bound,
#                         RETURN_MODEL=1 also brings the weights back (bf16, in 15 MiB parts)
#   part tests  (~2 min)  the CUDA-only tests: no host-device sync in the device augmentations and training steps,
#                         no active loss scaler under bf16, TVRL attention without a key-padding mask
#   part bench  (~8 min)  model steps at the recipe sizes with the reference-style anchors and per-bundle profiles
#   part pipeline (~8 min) writes the `bench` synthetic data with every core (timed), then the loader + step of every
#                         training bundle at its defaults: how long the GPU waits for data
# On the device machine (after scripts/device/fetch_wheels.sh here; carry: [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT bash scripts/device/gpu_session.sh ef
# Everything lands in $OUT (at most 8 files come back: keep to the summaries).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1 || true
case "${1:-}" in
  ef)  # everything in one archive (8 files come back at most); the tables on stdout
    tag=ef_bw${BOUND_WEIGHT:-0}
    OUT=/tmp/$tag bash scripts/device/ef_recipe_check.sh "${2:-240}" "${3:-15}"
    cat /tmp/$tag/diag.md /tmp/$tag/diag_cpu.md
    tar -czf "$OUT/$tag.tgz" -C /tmp "$tag"
    if [ "${RETURN_MODEL:-0}" = 1 ]; then  # the weights in bf16, in 15 MiB parts (16 MiB a file comes back at most)
      python3 -c "import sys, torch; from medssl_monai.bundle_tools import load_state_dict; torch.save({k: v.bfloat16() if v.is_floating_point() else v for k, v in load_state_dict(sys.argv[1]).items()}, sys.argv[2])" \
        "${WORK:-/tmp/ef_recipe_check}/bundle/models/model.pt" /tmp/$tag/model_bf16.pt
      split -b 15M -d /tmp/$tag/model_bf16.pt "$OUT/${tag}_model_bf16.pt.part"  # cat the parts to rebuild
    fi
    ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider -rs tests/engines/test_host_syncs.py tests/engines/test_amp.py \
      tests/transforms/test_device_augmentation.py tests/transforms/test_tvrl_device_augmentation.py \
      tests/transforms/test_ucl_device_augmentation.py tests/methods/test_tvrl_attention_masks.py 2>&1 \
      | tee "$OUT/cuda_tests.log" | tail -n 30
    ;;
  bench)
    python3 scripts/benchmark.py --device cuda --sizes recipe --modes model --anchors \
      --profile /tmp/profile --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.md" | tail -n 40
    tar -czf "$OUT/profiles.tar.gz" -C /tmp profile 2>/dev/null || true
    ;;
  pipeline)
    python3 - <<'PY' 2>&1 | tee "$OUT/bench_data.txt"
import os, time
from medssl_monai.data.defaults import default_data_root
from medssl_monai.data.synthetic import make_all
t = time.time()
make_all(default_data_root() / "bench-seed0", seed=0, size="bench", num_workers=os.cpu_count() or 1)
print(f"bench synthetic data: {time.time() - t:.0f} s on {os.cpu_count()} cores")
PY
    python3 scripts/benchmark.py --device cuda --sizes recipe --modes pipeline,model --out "$OUT/pipeline.json" 2>&1 \
      | tee "$OUT/pipeline.md" | tail -n 40
    ;;
  *)
    echo "usage: OUT=... bash scripts/device/gpu_session.sh ef|tests|bench|pipeline" >&2
    exit 2
    ;;
esac
