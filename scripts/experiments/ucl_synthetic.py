"""UCL on the synthetic ultrasound frame folders: UCL pretraining vs random init vs the loss without hard negatives.

Arms (all with the bundles' CPU ``small.yaml`` settings, ResNet-18 at a quarter width, 64 px):

- ``random``: ``ucl_us_classification`` from random init;
- ``ucl``: ``ucl_us_ssl_pretraining`` (intra-video hard negatives + curriculum + cross-video mixed negative),
  then fine-tuning from its ``model.pt``;
- ``no_hard_negatives``: the same pretraining with ``intra_negatives=false, mixed_negative=false,
  cross_negatives=true`` (a plain MoCo-style ``[positive, other videos' frames]`` loss), then fine-tuning.

As in the paper (pretraining on GBUSV videos, evaluation on GBCU images), pretraining uses a *separate* unlabelled
synthetic video set (another seed), so no test video is seen during pretraining. The labelled set is split by
video with ``num_folds``-fold cross-validation; every video is a test video exactly once, and the pooled test
predictions give frame- and video-level metrics with 95% cluster-bootstrap CIs over test videos.

Usage::

    nice python scripts/experiments/ucl_synthetic.py --out runs/ucl_synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.reproduce.ucl import PRETRAINING_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "bundles" / "ucl_us_ssl_pretraining"
CLASSIFY = ROOT / "bundles" / "ucl_us_classification"
# the arms' pretraining overrides: the library's (medssl_monai.reproduce.ucl, what `reproduce ucl` runs)
ARMS = PRETRAINING_OVERRIDES
METRICS = ("accuracy", "binary_accuracy", "sensitivity", "specificity", "auroc")


def _run(bundle: Path, configs: list[str], overrides: dict, log: Path) -> float:
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(files)]
    for k, v in overrides.items():
        cmd += [f"--{k}", repr(v) if isinstance(v, (list, bool)) else str(v)]
    t = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ucl_synthetic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_videos", type=int, default=24, help="labelled videos (8 per class by default)")
    ap.add_argument("--pretrain_videos", type=int, default=24, help="unlabelled pretraining videos (another seed)")
    ap.add_argument("--num_folds", type=int, default=2)
    ap.add_argument("--pretrain_epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--frame_stride", type=int, default=3)
    ap.add_argument("--n_resamples", type=int, default=1000)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--overwrite", action="store_true", help="re-run finished runs instead of reusing them")
    args = ap.parse_args()

    from medssl_monai.data.synthetic.ultrasound import make_frame_folders
    from medssl_monai.evaluation.classification import aggregate_by_video, classification_metrics, video_bootstrap

    out = Path(args.out).resolve()
    labelled = make_frame_folders(out / "data" / "labelled", num_videos=args.num_videos, seed=args.seed)
    unlabelled = make_frame_folders(out / "data" / "pretrain", num_videos=args.pretrain_videos, seed=args.seed + 1000)
    # the published tables: persistent workers (the default before 0.3.0)
    common = {"cache_dir": str(out / "cache"), "seed": args.seed, "persistent_workers": True}
    timings: dict[str, float] = {}
    rows, results = [], {}
    for arm in args.arms:
        ckpt = None
        if ARMS[arm] is not None:
            root = out / arm / "pretrain"
            ov = {"bundle_root": str(root), "dataset_dir": str(unlabelled), "epochs": args.pretrain_epochs, **common}
            ov.update(ARMS[arm])  # no_hard_negatives: also warmup_epochs 0 (the warm-up logits need n^)
            ckpt = str(root / "models" / "model.pt")
            if not Path(ckpt).is_file() or args.overwrite:  # finished runs are reused (resume after interruption)
                timings[f"{arm}/pretrain"] = _run(PRETRAIN, ["train.yaml", "small.yaml"], ov, root / "log.txt")
        preds = []
        for fold in range(args.num_folds):
            root = out / arm / f"fold{fold}"
            ov = {
                "bundle_root": str(root),
                "dataset_dir": str(labelled),
                "fold": fold,
                "num_folds": args.num_folds,
                "epochs": args.epochs,
                "cosine_t_max": args.epochs,
                "frame_stride": args.frame_stride,
                **common,
            }
            if ckpt:
                ov["pretrained_ckpt"] = ckpt
            if not (root / "eval" / "frame_predictions.csv").is_file() or args.overwrite:
                timings[f"{arm}/fold{fold}/train"] = _run(
                    CLASSIFY, ["train.yaml", "small.yaml"], ov, root / "train_log.txt"
                )
                # n_resamples is an evaluate.yaml key (the train config rejects keys it does not define)
                timings[f"{arm}/fold{fold}/eval"] = _run(
                    CLASSIFY,
                    ["train.yaml", "small.yaml", "evaluate.yaml"],
                    {**ov, "n_resamples": 0},
                    root / "eval_log.txt",
                )
            df = pd.read_csv(root / "eval" / "frame_predictions.csv")
            df["fold"] = fold
            preds.append(df)
        df = pd.concat(preds, ignore_index=True)
        df.to_csv(out / arm / "test_frame_predictions.csv", index=False)
        prob = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()
        ids, y = df["video_id"].astype(str).to_numpy(), df["label"].to_numpy()
        vids, vprob, vy = aggregate_by_video(ids, prob, y)
        res: dict = {"frames": int(len(y)), "videos": len(vids)}
        for level, (lid, ly, lp) in {"frame": (ids, y, prob), "video": (vids, vy, vprob)}.items():
            m = classification_metrics(ly, lp, (1,), prob.shape[1])
            res[f"{level}_confusion_matrix"] = m["confusion_matrix"]
            for name in METRICS:
                ci = video_bootstrap(name, lid, ly, lp, (1,), args.n_resamples, args.seed)
                res[f"{level}_{name}"] = ci
        results[arm] = res
        for level in ("frame", "video"):
            row = {"arm": arm, "level": level}
            for name in METRICS:
                r = res[f"{level}_{name}"]
                row[name] = f"{r['estimate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            rows.append(row)
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results, "timings_s": timings}, indent=2)
    )
    table = pd.DataFrame(rows)
    md = "| " + " | ".join(table.columns) + " |\n| " + " | ".join("---" for _ in table.columns) + " |\n"
    md += "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in table.itertuples(index=False))
    (out / "results.md").write_text(md)
    print(md)
    print(json.dumps(timings, indent=1))
    print("cpu:", os.cpu_count(), "numpy", np.__version__)


if __name__ == "__main__":
    main()
