"""Diagnostics on a finished representation benchmark's saved features (no training, seconds).

``oneclass``: the one-class anomaly AUROC of SSL and random-init rows in the whole embedding (the benchmark's own
``anomaly`` score) and inside the first ``k`` EF-PLS directions fitted on TRAIN
(:func:`medssl_monai.evaluation.subspace.ef_subspace_anomaly`), with the paired bootstrap of SSL minus random on the
evaluation videos. It tells a representation that lacks the abnormal information from one whose whole-space
distances are dominated by other factors. Prints a Markdown table::

    python scripts/benchmark_diagnostics.py --output_dir runs/benchmark_representations --rows discovr tvrl
    python scripts/benchmark_diagnostics.py --output_dir ... --dataset_dir /data/EchoNet-Dynamic  # a --dataset_dir run

``--series``: what the timed-series rows read (synthetic series only: the truth file holds the lesion sizes). Per
row the progression AUROC, the R2 of a ridge probe (the EF probe's) for the true lesion size at the last visit and
for the true growth (mm per year, :func:`medssl_monai.evaluation.growth_oracle.growth_features`), and the paired
difference to the time-blind oracle (true sizes, visit index for time). A row below that oracle has not read the
sizes well enough for the visit times to matter; growth R2 says whether the times reached the features::

    python scripts/benchmark_diagnostics.py --output_dir runs/benchmark_representations \
        --series tvrl_series_ssl tvrl_te_series_ssl tvrl_series_random tvrl_te_series_random
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


def series_table(
    out: Path, series_csv: Path, rows: list[str], num_visits: int, eval_splits: list[str], n_res: int, seed: int
) -> list[dict]:
    """One dict per row (the two growth oracles first): ``row``, ``auroc``, ``size_r2``, ``growth_r2`` and
    ``minus_no_time`` / ``minus_no_time_ci95`` (AUROC minus the time-blind oracle's, paired)."""
    from medssl_monai.data.timed_series import load_timed_series_datalist
    from medssl_monai.evaluation.growth_oracle import growth_features, lesion_sizes
    from medssl_monai.evaluation.protocol import fit_predict, metric_r2

    items = load_timed_series_datalist(series_csv)
    sizes = lesion_sizes(series_csv, items)
    if sizes is None:
        raise SystemExit(
            f"{series_csv.parent}: no SyntheticTruth.csv with lesion sizes: --series needs the synthetic truth"
        )
    times = [it["times"] for it in items]
    y = np.array([int(it["label"]) for it in items])
    split = np.array([str(it["split"]).upper() for it in items])
    groups = np.array([str(it["subject_id"]) for it in items])
    tr, ev = split == "TRAIN", np.isin(split, [s.upper() for s in eval_splits])
    truth = growth_features(times, sizes, num_visits)  # [last size, last-interval growth, LS growth]
    feats = {
        "oracle_lesion_growth": truth,
        "oracle_lesion_sizes_no_time": growth_features(times, sizes, num_visits, use_time=False),
    }
    for row in rows:
        path = out / f"{row}_features.npz"
        x = np.load(path)["series"]
        if len(x) != len(items):
            raise SystemExit(f"{path}: {len(x)} series, {series_csv} has {len(items)} (another dataset?)")
        feats[row] = x
    scores = {r: fit_predict("progression", x[tr], y[tr], groups[tr], x[ev], seed=seed)[0] for r, x in feats.items()}
    blind = scores["oracle_lesion_sizes_no_time"]
    table = []
    for r, x in feats.items():
        read = {}
        for key, target in (("size_r2", truth[:, 0]), ("growth_r2", truth[:, 2])):
            pred, _ = fit_predict("ef", x[tr], target[tr], groups[tr], x[ev], seed=seed)
            read[key] = float(metric_r2(target[ev], pred))
        d = paired_bootstrap_diff(metric_auroc, y[ev], scores[r], blind, n_resamples=n_res, seed=seed)
        table.append(
            {
                "row": r,
                "auroc": float(d.a),
                **read,
                "minus_no_time": float(d.diff),
                "minus_no_time_ci95": [float(v) for v in d.diff_ci],
            }
        )
    return table


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", required=True, help="a finished benchmark's output folder (results.json)")
    ap.add_argument("--rows", nargs="+", default=["discovr", "tvrl"], help="methods with <m>_ssl and <m>_random rows")
    ap.add_argument("--components", nargs="+", type=int, default=[2, 4, 8], help="EF-PLS directions (each >= 2)")
    ap.add_argument("--dataset_dir", help="the echo folder of a --dataset_dir run (default: the synthetic one)")
    ap.add_argument("--series", nargs="+", help="timed-series rows: what they read of the lesion sizes and growth")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    cfg = json.loads((out / "results.json").read_text())["meta"]["config"]
    if args.series:
        csv = Path(cfg["data_root"]) / f"timed_series_{cfg['data']['series_subjects']}" / "series.csv"
        table = series_table(
            out,
            csv,
            args.series,
            int(cfg["series_frames"]),
            cfg["eval_splits"],
            int(cfg["n_resamples"]),
            int(cfg["seed"]),
        )
        print("| row | progression AUROC | last lesion size R2 | growth R2 | minus the time-blind oracle [95 % CI] |")
        print("| --- | --- | --- | --- | --- |")
        for r in table:
            lo, hi = r["minus_no_time_ci95"]
            print(
                f"| {r['row']} | {r['auroc']:.3f} | {r['size_r2']:.3f} | {r['growth_r2']:.3f} | "
                f"{r['minus_no_time']:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
            )
        return table
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
