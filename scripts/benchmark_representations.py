"""The representation benchmark: pretrain or take every encoder, probe it frozen, one table, one chart.

Usage::

    OMP_NUM_THREADS=1 python scripts/benchmark_representations.py --config scripts/benchmark_representations.yaml
    python scripts/benchmark_representations.py --config ... --skip-pretraining   # reuse the checkpoints

Steps (all settings in the YAML):

1. synthetic data (``make_all`` + a larger EchoNet set) under ``data_root``;
2. every ``pretrain: true`` encoder: its bundle's ``train.yaml`` + ``small.yaml`` (+ extra configs, overrides)
   through ``ConfigWorkflow``, checkpoints under ``output_dir/<name>/models``;
3. :func:`~medssl_monai.encoders.build_encoder` from those checkpoints (or random init), frozen features of the
   EchoNet clips (EF, ``Abnormal``) and of the timed series (progression label, visit times);
4. the probes of :mod:`medssl_monai.evaluation.benchmark` (fit on TRAIN only), few-label segmentation through the
   UniLVSeg segmentation bundle for encoders with a spatial decoder;
5. ``results.json``, ``benchmark.md`` (the table) and ``benchmark.png`` (the chart) in ``output_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from medssl_monai.demo import run_bundle
from medssl_monai.encoders import ENCODER_BUNDLES, build_encoder
from medssl_monai.evaluation.benchmark import NOT_APPLICABLE, benchmark_chart, benchmark_table, probe_task

logger = logging.getLogger("benchmark_representations")


def make_data(cfg: dict) -> dict[str, Path]:
    from medssl_monai.data.synthetic import make_all
    from medssl_monai.data.synthetic.echonet import make_echonet

    root = Path(cfg["data_root"])
    paths = {k: Path(v) for k, v in make_all(root, seed=cfg["data_seed"], size=cfg["data_size"]).items()}
    echo = root / f"echonet_{cfg['echonet_videos']}"
    if not (echo / "FileList.csv").is_file():
        make_echonet(echo, num_videos=cfg["echonet_videos"], seed=cfg["data_seed"])
    paths["echonet"] = echo
    return paths


def pretrain(name: str, spec: dict, data: dict[str, Path], out: Path) -> Path:
    """Run the encoder's pretraining bundle at small settings; returns ``models/model.pt``."""
    bundle, extra = ENCODER_BUNDLES[spec["kind"]]
    ckpt_dir = out / name / "models"
    ckpt = ckpt_dir / "model.pt"
    dataset = data["ultrasound"] if spec["kind"] == "ucl" else data["echonet"]  # UCL: its own domain (lung US)
    t0 = time.time()
    run_bundle(
        bundle,
        ["train.yaml", "small.yaml", *extra, *spec.get("configs", [])],
        dataset_dir=str(dataset),
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / name / "runs"),
        **spec.get("overrides", {}),
    )
    logger.info("pretrained %s in %.0f s", name, time.time() - t0)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{name}: pretraining wrote no {ckpt}")
    return ckpt


@torch.no_grad()
def features(encoder, datalist: list[dict], transform, keys: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    from monai.data import DataLoader, Dataset

    loader = DataLoader(Dataset(datalist, transform), batch_size=batch_size, num_workers=0)
    out: dict[str, list] = {"features": [], **{k: [] for k in keys}}
    for batch in loader:
        kwargs = {k: batch[k] for k in ("times", "frame_mask") if k in batch}
        out["features"].append(encoder(batch["image"], **kwargs).float().numpy())
        for k in keys:
            v = batch[k]
            out[k].extend(v.tolist() if isinstance(v, torch.Tensor) else list(v))
    return {k: np.concatenate(v) if k == "features" else np.asarray(v) for k, v in out.items()}


def probe_all(feats: dict, series: dict, cfg: dict) -> dict:
    """Every probe task on one encoder's features: TRAIN fits, ``eval_splits`` scores."""
    evals = {s.upper() for s in cfg["eval_splits"]}
    kw = {"seeds": cfg["probe_seeds"], "n_resamples": cfg["n_resamples"], **cfg.get("probe", {})}
    res = {}
    split = np.char.upper(feats["split"].astype(str))
    tr, ev = split == "TRAIN", np.isin(split, list(evals))
    x = feats["features"]
    for task, key in (
        ("ef", "ef"),
        ("abnormal_knn", "Abnormal"),
        ("abnormal_lin", "Abnormal"),
        ("anomaly", "Abnormal"),
    ):
        y = feats[key].astype(float)
        res[task] = probe_task(task, x[tr], y[tr], x[ev], y[ev], **kw)
    split = np.char.upper(series["split"].astype(str))
    tr, ev = split == "TRAIN", np.isin(split, list(evals))
    y = series["label"].astype(int)
    res["progression"] = probe_task("progression", series["features"][tr], y[tr], series["features"][ev], y[ev], **kw)
    return res


def segmentation(name: str, spec: dict, ckpt: Path | None, data: dict[str, Path], cfg: dict, out: Path) -> dict:
    """Few-label segmentation with the UniLVSeg segmentation bundle (pooled Dice on TEST), one run per seed."""
    from monai.utils import set_determinism

    seg = cfg["segmentation"]
    values = []
    for seed in seg["seeds"]:
        run_dir = out / name / f"segmentation_seed{seed}"
        common = {
            "dataset_dir": str(data["echonet"]),
            "ckpt_dir": str(run_dir / "models"),
            "output_dir": str(run_dir / "runs"),
            "pretrained_ckpt": str(ckpt) if ckpt else None,
            "label_fraction": seg["label_fraction"],
            **seg.get("overrides", {}),
        }
        set_determinism(seed=seed)
        run_bundle("unilvseg_echo_lv_segmentation", ["train.yaml", "small.yaml"], **common)
        run_bundle(
            "unilvseg_echo_lv_segmentation",
            ["train.yaml", "small.yaml", "evaluate.yaml"],
            workflow_type="eval",
            eval_dir=str(run_dir / "eval"),
            n_resamples=cfg["n_resamples"],
            **common,
        )
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())
        values.append(summary["dice"]["overall"])
    est = [v["estimate"] for v in values]
    return {
        "dice": {
            "values": est,
            "mean": float(np.mean(est)),
            "std": float(np.std(est, ddof=1)) if len(est) > 1 else 0.0,
            "ci_low": values[0]["ci_low"],
            "ci_high": values[0]["ci_high"],
        }
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="scripts/benchmark_representations.yaml")
    ap.add_argument("--skip-pretraining", action="store_true", help="reuse output_dir/<name>/models/model.pt")
    ap.add_argument("--only", nargs="*", help="encoder names to run (default: all)")
    ap.add_argument("--resume", action="store_true", help="keep the encoders already in output_dir/results.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    from medssl_monai.data.echonet import load_echonet_datalist
    from medssl_monai.data.timed_series import load_timed_series_datalist
    from medssl_monai.transforms.io import LoadClipd, LoadSeriesd

    data = make_data(cfg)
    clips = load_echonet_datalist(data["echonet"], labels_csv="SyntheticTruth.csv")
    series_list = load_timed_series_datalist(data["timed_series"] / "series.csv")
    c = cfg["clip"]
    clip_tf = LoadClipd(keys="image", num_frames=c["num_frames"], period=c["period"], mode="start")
    series_tf = LoadSeriesd(keys="image", num_frames=cfg["series_frames"])

    results, timings = {}, {}
    if args.resume and (out / "results.json").is_file():
        previous = json.loads((out / "results.json").read_text())
        results = previous["results"]
        timings = previous.get("timings_s") or previous.get("meta", {}).get("timings_s", {})
    names = args.only or list(cfg["encoders"])
    for name in names:
        if name in results:
            logger.info("%s: kept from results.json", name)
            continue
        spec = cfg["encoders"][name]
        t0 = time.time()
        ckpt = None
        if spec.get("pretrain"):
            ckpt = out / name / "models" / "model.pt"
            if not (args.skip_pretraining and ckpt.is_file()):
                ckpt = pretrain(name, spec, data, out)
        torch.manual_seed(0)
        enc = build_encoder(
            spec["kind"],
            ckpt,
            configs=("train.yaml", "small.yaml", *spec.get("configs", [])),
            seed=0,
            **{k: v for k, v in spec.get("overrides", {}).items() if k not in ("epochs", "num_workers")},
        )
        f = features(enc, clips, clip_tf, ("ef", "Abnormal", "split", "video_id"), cfg["batch_size"])
        s = features(enc, series_list, series_tf, ("label", "split"), cfg["batch_size"])
        np.savez(out / f"{name}_features.npz", clips=f["features"], series=s["features"])
        res = probe_all(f, s, cfg)
        if spec["kind"] in cfg["segmentation"]["kinds"]:
            res["segmentation"] = segmentation(name, spec, ckpt, data, cfg, out)
        else:
            res["segmentation"] = NOT_APPLICABLE  # no spatial decoder to fine-tune
        results[name] = res
        timings[name] = round(time.time() - t0, 1)
        logger.info("%s done in %.0f s", name, timings[name])
        (out / "results.json").write_text(json.dumps({"results": results, "timings_s": timings}, indent=1))

    missing = [n for n in names if n not in results]
    if missing:
        raise RuntimeError(f"encoders without results: {missing}")
    results = {n: results[n] for n in names}
    table = benchmark_table(results)
    (out / "benchmark.md").write_text(table)
    benchmark_chart(results, out / "benchmark.png")
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch threads".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "total_s": round(time.time() - t_start, 1),
        "timings_s": timings,
        "config": cfg,
    }
    (out / "results.json").write_text(json.dumps({"results": results, "meta": meta}, indent=1))
    print(table)
    print(json.dumps({k: meta[k] for k in ("machine", "total_s", "timings_s")}, indent=1))


if __name__ == "__main__":
    main()
