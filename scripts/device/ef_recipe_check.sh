#!/usr/bin/env bash
# On one GPU: train UniLVSeg's recipe briefly on a synthetic EchoNet set, evaluate it (traced-frame Dice and EF from
# whole-video masks), then diagnose the whole-video masks frame by frame in every precision / memory-format variant
# (scripts/diagnose_video_ef.py). About 5 minutes on one H100 with the defaults (240 videos, 15 epochs).
#
#   OUT=runs/ef_check bash scripts/device/ef_recipe_check.sh [num_videos] [epochs]
#   BOUND_WEIGHT=0.5 OUT=... bash ...   # with the untraced-frame bound term (train.yaml's bound_weight; default 0)
#
# Needs the project's Python packages importable (the repository on PYTHONPATH, MONAI, Ignite, nibabel, ...).
# Writes to $OUT: train.log and eval.log (the last lines), summary.json (Dice and EF), per_video_ef.csv,
# diag_summary.csv and diag_per_video.csv, diag_cpu.md (3 videos on the CPU), and the area curves of the worst videos as one PNG montage.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/ef_recipe_check}
N=${1:-240}
EPOCHS=${2:-15}
WORK=${WORK:-/tmp/ef_recipe_check}
B=bundles/unilvseg_echo_lv_segmentation
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

python - "$WORK/echonet" "$N" <<'PY'
import os, sys, time
from medssl_monai.data.synthetic.echonet import make_echonet
t = time.time()
# the recipe check's setting: 80-160 frames at 50 fps; seed 1 so that it is not the tests' or the demo's data
make_echonet(sys.argv[1], num_videos=int(sys.argv[2]), seed=1, min_frames=80, max_frames=160,
             num_workers=os.cpu_count() or 1)
print(f"synthetic EchoNet: {sys.argv[2]} videos in {time.time() - t:.0f} s")
PY

common=(--bundle_root "$WORK/bundle" --dataset_dir "$WORK/echonet" --cache_dir "$WORK/cache")
start=$(date +%s)
python -m monai.bundle run --config_file "['$B/configs/train.yaml']" "${common[@]}" \
  --epochs "$EPOCHS" --lr_milestones "[$((EPOCHS * 3 / 4)),$EPOCHS]" --num_workers 12 --bound_weight "${BOUND_WEIGHT:-0}" 2>&1 | tail -n 40 > "$OUT/train.log"
echo "training: $(( $(date +%s) - start )) s" | tee -a "$OUT/train.log"
python -m monai.bundle run --config_file "['$B/configs/train.yaml','$B/configs/evaluate.yaml']" "${common[@]}" \
  --num_workers 12 2>&1 | tail -n 40 > "$OUT/eval.log"
cp "$WORK/bundle/eval/summary.json" "$WORK/bundle/eval/per_video_ef.csv" "$OUT/"
cp "$WORK/bundle/eval/per_frame_area.csv" "$OUT/" 2>/dev/null || true
python scripts/diagnose_video_ef.py --bundle_root "$B" --configs train.yaml \
  --model_path "$WORK/bundle/models/model.pt" --dataset_dir "$WORK/echonet" --out "$WORK/diag" | tee "$OUT/diag.md"
cp "$WORK/diag/summary.csv" "$OUT/diag_summary.csv"
# the same model on the CPU (3 videos, fp32): tells a CUDA-only inference problem from the model's own masks
python scripts/diagnose_video_ef.py --bundle_root "$B" --configs train.yaml --device cpu --max_videos 3 \
  --variants fp32 --model_path "$WORK/bundle/models/model.pt" --dataset_dir "$WORK/echonet" --out "$WORK/diag_cpu" \
  | tee "$OUT/diag_cpu.md"
cp "$WORK/diag/per_video.csv" "$OUT/diag_per_video.csv"
python - "$WORK/bundle/eval/area_curves" "$OUT/area_curves.png" <<'PY'
import sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
pngs = sorted(Path(sys.argv[1]).glob("*.png"))[:8]
if pngs:
    fig, axes = plt.subplots(len(pngs), 1, figsize=(6, 3 * len(pngs)))
    for ax, p in zip(list(getattr(axes, "flat", [axes])), pngs):
        ax.imshow(plt.imread(p)); ax.axis("off")
    fig.savefig(sys.argv[2], dpi=80, bbox_inches="tight")
PY
