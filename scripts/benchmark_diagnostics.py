"""Diagnostics on a finished representation benchmark's saved features (no training, seconds).

``oneclass``: the one-class anomaly AUROC of SSL and random-init rows in the whole embedding (the benchmark's own
``anomaly`` score) and inside the first ``k`` EF-PLS directions fitted on TRAIN
(:func:`medssl_monai.evaluation.subspace.ef_subspace_anomaly`), with the paired bootstrap of SSL minus random on the
evaluation videos. It tells a representation that lacks the abnormal information from one whose whole-space
distances are dominated by other factors. Prints a Markdown table::

    python scripts/benchmark_diagnostics.py --output_dir runs/benchmark_representations --rows discovr tvrl
    python scripts/benchmark_diagnostics.py --output_dir ... --dataset_dir /data/EchoNet-Dynamic  # a --dataset_dir run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_representations import echo_arrays, echo_items  # noqa: E402

from medssl_monai.evaluation.bootstrap import paired_bootstrap_diff  # noqa: E402
from medssl_monai.evaluation.protocol import metric_auroc  # noqa: E402
from medssl_monai.evaluation.subspace import ef_subspace_anomaly  # noqa: E402


def oneclass_table(
    out: Path, echonet: Path, methods: list[str], components: list[int], eval_splits: list[str], n_res: int, seed: int
) -> list[dict]:
    """One dict per (method, subspace): ``method``, ``subspace``, ``ssl``, ``random``, ``diff``, ``diff_ci95``."""
    items = echo_items(echonet)
    arrays = echo_arrays(items)
    split, ef, abnormal, ids = arrays["split"], arrays["ef"], arrays["abnormal"], arrays["ids"]
    tr, ev = split == "TRAIN", np.isin(split, [s.upper() for s in eval_splits])
    rows = []
    for method in methods:
        feats = {}
        for arm in ("ssl", "random"):
            path = out / f"{method}_{arm}_features.npz"
            x = np.load(path)["echo"]
            if len(x) != len(items):
                raise SystemExit(f"{path}: {len(x)} videos, {echonet} has {len(items)} (another dataset?)")
            feats[arm] = x
        for k in [None, *components]:
            s = {a: ef_subspace_anomaly(x[tr], ef[tr], abnormal[tr], ids[tr], x[ev], k, seed) for a, x in feats.items()}
            r = paired_bootstrap_diff(metric_auroc, abnormal[ev], s["ssl"], s["random"], n_resamples=n_res, seed=seed)
            rows.append(
                {
                    "method": method,
                    "subspace": "whole embedding" if k is None else f"{k} EF-PLS directions",
                    "ssl": float(r.a),
                    "random": float(r.b),
                    "diff": float(r.diff),
                    "diff_ci95": [float(v) for v in r.diff_ci],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", required=True, help="a finished benchmark's output folder (results.json)")
    ap.add_argument("--rows", nargs="+", default=["discovr", "tvrl"], help="methods with <m>_ssl and <m>_random rows")
    ap.add_argument("--components", nargs="+", type=int, default=[2, 4, 8], help="EF-PLS directions (each >= 2)")
    ap.add_argument("--dataset_dir", help="the echo folder of a --dataset_dir run (default: the synthetic one)")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    cfg = json.loads((out / "results.json").read_text())["meta"]["config"]
    echonet = Path(args.dataset_dir or Path(cfg["data_root"]) / f"echonet_{cfg['data']['echonet_videos']}")
    rows = oneclass_table(
        out, echonet, args.rows, args.components, cfg["eval_splits"], int(cfg["n_resamples"]), int(cfg["seed"])
    )
    print("| method | subspace | SSL | random init | SSL - random [95 % CI] |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        lo, hi = r["diff_ci95"]
        print(
            f"| {r['method']} | {r['subspace']} | {r['ssl']:.3f} | {r['random']:.3f} | "
            f"{r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
        )
    return rows


if __name__ == "__main__":
    main()
