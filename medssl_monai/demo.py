"""The README's main job: synthetic data, the clip cache, a batch from every reader, then UniLVSeg end to end.

``python -m medssl_monai demo`` (what ``scripts/demo.sh`` runs). Small CPU settings (each bundle's
``configs/small.yaml``: a 4x narrower UNet on 16-frame 64 x 64 clips) with a demo schedule for the segmentation
(:data:`DEMO_SEGMENTATION`: AdamW 1e-3 instead of the recipe's 3e-4, so that a few CPU minutes reach a usable
model, and a step down for the last quarter); every step is a real bundle run through ``monai.bundle``'s
``ConfigWorkflow``.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_demo", "print_reader_batches", "run_bundle", "BUNDLES_DIR", "DEMO_SEGMENTATION", "demo_schedule"]

logger = logging.getLogger("medssl_monai.demo")
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"

#: the demo's segmentation schedule on top of small.yaml (epochs: see :func:`demo_schedule`)
DEMO_SEGMENTATION = {"epochs": 28, "learning_rate": 1e-3}


def demo_schedule(epochs: int, learning_rate: float) -> dict:
    """Segmentation overrides for ``epochs`` at ``learning_rate``, stepped down 10x for the last quarter."""
    return {"epochs": epochs, "learning_rate": learning_rate, "lr_milestones": [max(1, (3 * epochs) // 4), epochs]}


def _describe(batch: dict) -> str:
    parts = []
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}")
        elif isinstance(v, list) and v and not isinstance(v[0], (list, dict)):
            parts.append(f"{k}: {v[:2]}{'...' if len(v) > 2 else ''}")
    return "; ".join(parts)


def print_reader_batches(data: dict[str, Path], cache_dir: str | Path | None = None, batch_size: int = 2) -> None:
    """Load and print one batch from every reader through the library's transforms."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    from medssl_monai.cli import load_datalist
    from medssl_monai.transforms.io import LoadClipd, LoadSeriesd, LoadTracingMaskd
    from medssl_monai.transforms.presets import unilvseg_train_transforms

    keep = ("image", "label", "target_index", "times", "frame_mask", "video_id", "subject_id", "phase", "ef")
    pipelines = {
        "echonet (traced, UniLVSeg training clip)": (
            load_datalist(data["echonet"], samples="traced"),
            unilvseg_train_transforms(num_frames=32, cache_dir=cache_dir),
        ),
        "camus (traced, NIfTI)": (
            load_datalist(data["camus"], samples="traced"),
            Compose(
                [
                    LoadClipd(
                        keys="image",
                        num_frames=16,
                        mode="center",
                        frame_key="frame_index",
                        cache_dir=cache_dir,
                        channels=1,
                    ),
                    LoadTracingMaskd(keys="label", ref_key="image"),
                ]
            ),
        ),
        "ultrasound frame folders (UCL)": (
            load_datalist(data["ultrasound"]),
            LoadClipd(keys="image", num_frames=8, period=2, cache_dir=cache_dir, channels=1),
        ),
        "timed series (TVRL)": (load_datalist(data["timed_series"]), LoadSeriesd(keys="image", num_frames=6)),
    }
    for name, (datalist, transform) in pipelines.items():
        loader = DataLoader(Dataset(datalist, transform), batch_size=batch_size, num_workers=0)
        batch = next(iter(loader))
        print(f"  {name}: {len(datalist)} items; batch -> {_describe({k: batch[k] for k in keep if k in batch})}")


def run_bundle(
    bundle: str,
    configs: list[str],
    workflow_type: str = "train",
    inspect: Callable[[Any], Any] | None = None,
    check_properties: bool = True,
    **overrides,
) -> Any:
    """Run one bundle config through ``ConfigWorkflow`` (initialize, check properties, run, finalize).

    ``inspect(workflow)``, when given, is called after the run and before ``finalize`` (to read parsed content
    such as the trainer's state); its result is returned. ``check_properties=False`` skips MONAI's property check
    (a workflow that runs a custom ``run`` list rather than the bundle's standard one)."""
    from monai.bundle import ConfigWorkflow

    from medssl_monai.config_checks import check_overrides

    root = BUNDLES_DIR / bundle
    files = [str(root / "configs" / c) for c in configs]
    check_overrides(files, overrides)
    wf = ConfigWorkflow(
        config_file=files,
        workflow_type=workflow_type,
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=False,
        bundle_root=str(root),
        **overrides,
    )
    wf.initialize()
    missing = wf.check_properties() if check_properties else None
    if missing:
        raise RuntimeError(f"{bundle}: missing bundle properties {missing}")
    wf.run()
    result = inspect(wf) if inspect is not None else None
    wf.finalize()
    # A finished run's persistent DataLoader workers sit in reference cycles (engine state). Collect them here, in
    # the process that started them: left to a later collection inside the next run's forked workers, their
    # shutdown fails there with "can only test a child process".
    del wf
    gc.collect()
    return result


def run_demo(
    root: str = "data",
    seed: int = 0,
    size: str = "small",
    out_dir: str = "runs/demo",
    ssl_epochs: int | None = None,
    seg_epochs: int | None = None,
    seg_lr: float | None = None,
    compare_random_init: bool = False,
) -> dict:
    """Synthetic data -> cache -> reader batches -> UniLVSeg pretraining, segmentation, evaluation, inference.

    Args:
        root: where the synthetic datasets are written.
        seed: seed of the data and the runs.
        size: synthetic dataset size (``tiny``, ``small``, ``bench``).
        out_dir: the runs, evaluations and pictures.
        ssl_epochs: temporal-masking pretraining epochs (default: small.yaml's).
        seg_epochs, seg_lr: the segmentation schedule (default :data:`DEMO_SEGMENTATION`).
        compare_random_init: also train from random initialisation, to compare with the pretrained start.

    Returns:
        ``{run name: the evaluation's summary.json}``.
    """
    from medssl_monai.data.cache import ClipCache
    from medssl_monai.data.synthetic import make_all
    from medssl_monai.engines.reports import format_dice_table

    t0 = time.time()
    out = Path(out_dir).resolve()
    cache_dir = out / "cache"
    print(f"[1/5] synthetic datasets ({size}, seed {seed}) under {root}/")
    data = {k: Path(v).resolve() for k, v in make_all(root, seed=seed, size=size).items()}
    for k, v in data.items():
        print(f"  {k}: {v}")

    print("[2/5] decoded-clip cache (each video decoded once)")
    from medssl_monai.cli import load_datalist

    cache = ClipCache(cache_dir)
    for k in ("echonet", "camus", "ultrasound"):
        sources = sorted({it["image"] for it in load_datalist(data[k])})
        report = cache.build(sources, num_workers=0, progress=False)
        print(f"  {k}: built {report['built']}, already cached {report['cached']}, failed {len(report['failed'])}")

    print("[3/5] one batch from every reader")
    print_reader_batches(data, cache_dir)

    common = {"dataset_dir": str(data["echonet"]), "cache_dir": str(cache_dir), "seed": seed}
    ssl_dir, scratch_dir, pre_dir = out / "ssl", out / "seg_scratch", out / "seg_pretrained"
    extra_ssl = {"epochs": ssl_epochs} if ssl_epochs else {}
    schedule = demo_schedule(
        seg_epochs or DEMO_SEGMENTATION["epochs"], seg_lr if seg_lr is not None else DEMO_SEGMENTATION["learning_rate"]
    )
    runs = [("SSL pretrained", pre_dir, str(ssl_dir / "models" / "model.pt"))]
    if compare_random_init:
        runs.insert(0, ("random init", scratch_dir, None))
    print(
        "[4/5] UniLVSeg: temporal-masking pretraining, then segmentation"
        + (" without and with it" if compare_random_init else " from it")
        + f" (small.yaml; {schedule['epochs']} epochs, AdamW {schedule['learning_rate']:g},"
        f" x0.1 from epoch {schedule['lr_milestones'][0]})"
    )
    if (ssl_dir / "models" / "resume.pt").is_file():  # the bundles resume by default: say why this is quick
        print(f"  {out} holds earlier runs: they resume where they stopped (done ones at once); delete it to retrain")
    run_bundle(
        "unilvseg_echo_ssl_pretraining",
        ["train.yaml", "small.yaml"],
        ckpt_dir=str(ssl_dir / "models"),
        output_dir=str(ssl_dir / "runs"),
        **common,
        **extra_ssl,
    )
    summaries = {}
    for name, run_dir, ckpt in runs:
        seg = {
            **common,
            "ckpt_dir": str(run_dir / "models"),
            "output_dir": str(run_dir / "runs"),
            "pretrained_ckpt": ckpt,
        }
        run_bundle("unilvseg_echo_lv_segmentation", ["train.yaml", "small.yaml"], **seg, **schedule)
        run_bundle(
            "unilvseg_echo_lv_segmentation",
            ["train.yaml", "small.yaml", "evaluate.yaml"],
            "eval",
            eval_dir=str(run_dir / "eval"),
            **seg,
        )
        summaries[name] = json.loads((run_dir / "eval" / "summary.json").read_text())

    print("[5/5] whole-video inference (masks, overlay videos, area curves, EF)")
    run_bundle(
        "unilvseg_echo_lv_segmentation",
        ["inference.yaml", "small_inference.yaml"],
        "infer",
        dataset_dir=str(data["echonet"]),
        cache_dir=str(cache_dir),
        ckpt_dir=str(pre_dir / "models"),
        output_dir=str(out / "inference"),
    )

    print(f"\nUniLVSeg on the synthetic EchoNet test split (small CPU settings, {time.time() - t0:.0f} s in all):")
    for name, s in summaries.items():
        ef = s.get("ef", {})
        mae = ef.get("mae", {}).get("estimate", float("nan"))
        print(
            f"\n{name}: EF from masks MAE {mae:.1f} points, bias {ef.get('bias', float('nan')):+.1f}, over "
            f"{ef.get('videos', 0)} videos"
        )
        print(format_dice_table(s["dice"]))
    print(f"\nOutputs: {out}")
    print("Pictures:")
    for name, run_dir, _ in runs:
        print(f"  {name}: {run_dir / 'eval'}/  overlays_worst.png, overlays_best.png, dice_histogram.png,")
        print("      ef_scatter.png, ef_bland_altman.png, area_curves/*.png (the worst videos' LV area curves)")
    print(f"  inference: {out / 'inference'}/  <video>_overlay.avi, <video>_area.png, <video>_mask.nii.gz")
    print(f"  TensorBoard: tensorboard --logdir {out}")
    return summaries
