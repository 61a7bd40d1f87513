"""Few-label LV segmentation: UniLVSeg's headline claim for its self-supervised pretraining.

UniLVSeg (Maani et al., arXiv 2310.00454) reports that its masked-frame reconstruction pretraining helps most when
few videos are labelled. :func:`fewlabel_segmentation` fine-tunes the segmentation bundle
(``bundles/unilvseg_echo_lv_segmentation``, by default ``train.yaml`` + ``cpu.yaml``) on ``n_videos`` traced TRAIN
videos, from random init or from a pretraining checkpoint, for the preset's fixed number of optimizer steps (the
same budget whatever ``n_videos`` and whatever the init; the videos are drawn from ``seed`` alone, so both inits see
the same ones), then scores the trained network with the bundle's own traced-frame evaluation (``evaluate.yaml``)
on the evaluation videos. It returns per-video overlap counts, so two arms can be compared by
:func:`~medssl_monai.evaluation.bootstrap.paired_bootstrap_pooled_dice` on the same videos.

Both runs go through ``monai.bundle.ConfigWorkflow`` in this process, as ``python -m monai.bundle run`` would:

* training: ``label_videos=n_videos``; the in-training validation is switched off (its single VAL pass would pick
  nothing among one candidate, and VAL is evaluated next anyway), the final weights are ``models/checkpoint_final.pt``;
* evaluation: ``evaluate.yaml`` with ``eval_split`` = the evaluation splits and ``model_path`` = that checkpoint,
  only its traced-frame part (one clip centred on each traced ED / ES frame; per-frame counts in
  ``eval/per_frame_dice.csv``), not the whole-video EF part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl_monai.evaluation.segmentation import pooled_dice

__all__ = ["SEGMENTATION_BUNDLE", "fewlabel_segmentation"]

logger = logging.getLogger(__name__)

SEGMENTATION_BUNDLE = "unilvseg_echo_lv_segmentation"
_NO_VALIDATION = 10**9  # val_interval: no epoch of the run reaches it


def fewlabel_segmentation(
    dataset_dir: str | Path,
    n_videos: int,
    pretrained_ckpt: str | Path | None,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    configs: Sequence[str] = ("train.yaml", "cpu.yaml"),
    seed: int = 0,
    eval_splits: Sequence[str] = ("VAL", "TEST"),
    overrides: Mapping[str, Any] | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Fine-tune the UniLVSeg segmentation bundle on ``n_videos`` labelled TRAIN videos and score it per video.

    Args:
        dataset_dir: an EchoNet-Dynamic-format folder (``FileList.csv``, ``VolumeTracings.csv``, ``Videos/``).
        n_videos: labelled TRAIN videos (the bundle's ``label_videos``: the first ``n_videos`` of one permutation
            drawn from ``seed``, so 5 videos lie within 10 and the choice does not depend on the init).
        pretrained_ckpt: a UniLVSeg pretraining ``models/model.pt`` (a plain state_dict, pretrained in the same
            layout, e.g. ``unilvseg_echo_ssl_pretraining`` with ``train.yaml`` + ``cpu.yaml``); ``None``: random init.
        out_dir: the run's folder: ``models/`` (checkpoints, run record), ``runs/`` (TensorBoard), ``eval/`` (the
            evaluation report: ``per_frame_dice.csv``, ``summary.json``, plots). A finished run with the same
            settings already there is resumed (nothing to train); different settings raise.
        cache_dir: the decoded-clip cache (``None``: the bundle's default).
        configs: the segmentation bundle's training config files, merged in order (``evaluate.yaml`` is added for
            the evaluation).
        seed: the run's seed (video choice, initialisation, sampling, augmentation).
        eval_splits: the ``Split`` values of the evaluation videos.
        overrides: more config overrides for both runs (e.g. ``{"epoch_length": 10, "batch_size": 2}``).
        n_resamples: bootstrap resamples of the report's own ``summary.json`` (not used in the returned values).

    Returns:
        ``{"video_ids": list[str], "inter", "pred_sum", "true_sum"`` (``int64`` arrays, one entry per evaluation
        video in datalist order, summed over its traced frames), ``"dice"`` (their pooled Dice), ``"n_frames"``
        (traced frames evaluated per video), ``"train_videos"`` (sorted ids of the labelled videos), ``"steps"``
        (optimizer steps taken), ``"batch_size"``, ``"pretrained_ckpt"`` (str or None), ``"seconds"`` (wall
        time of both runs), ``"train_seconds"``, ``"eval_seconds"}``. Evaluation videos that could not be read are
        left out of the arrays (and listed in ``eval/summary.json``).

    Raises:
        ValueError: ``n_videos`` is not positive.
        FileNotFoundError: the training wrote no final checkpoint, or the evaluation no per-frame counts.
    """
    import pandas as pd

    from medssl_monai.demo import run_bundle

    if int(n_videos) < 1:
        raise ValueError(f"n_videos must be a positive number of labelled videos, got {n_videos}")
    out = Path(out_dir).resolve()
    ckpt_dir, eval_dir = out / "models", out / "eval"
    common: dict[str, Any] = {"dataset_dir": str(Path(dataset_dir).resolve()), "seed": int(seed)}
    if cache_dir is not None:
        common["cache_dir"] = str(cache_dir)
    common.update(dict(overrides or {}))

    t0 = time.perf_counter()

    def read_training(wf) -> tuple[int, int, list[str]]:
        p = wf.parser
        videos = sorted({str(d["video_id"]) for d in p.get_parsed_content("train#datalist")})
        return (
            int(p.get_parsed_content("train#trainer").state.iteration),
            int(p.get_parsed_content("train#dataloader#batch_size")),
            videos,
        )

    steps, batch_size, train_videos = run_bundle(
        SEGMENTATION_BUNDLE,
        list(configs),
        "train",
        inspect=read_training,
        check_properties=False,
        **common,
        label_videos=int(n_videos),
        pretrained_ckpt=None if pretrained_ckpt is None else str(Path(pretrained_ckpt).resolve()),
        val_interval=_NO_VALIDATION,
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / "runs"),
    )
    train_seconds = time.perf_counter() - t0
    model_path = ckpt_dir / "checkpoint_final.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"few-label fine-tuning wrote no {model_path}")
    logger.info(
        "few-label segmentation: %d videos, %s init: %d steps in %.0f s",
        n_videos,
        "random" if pretrained_ckpt is None else "pretrained",
        steps,
        train_seconds,
    )

    t1 = time.perf_counter()
    csv = eval_dir / "per_frame_dice.csv"
    csv.unlink(missing_ok=True)  # never read a report left by an earlier evaluation
    order = run_bundle(
        SEGMENTATION_BUNDLE,
        [*configs, "evaluate.yaml"],
        "infer",
        inspect=lambda wf: list(
            dict.fromkeys(str(d["video_id"]) for d in wf.parser.get_parsed_content("evaluate#datalist"))
        ),
        check_properties=False,
        **common,
        eval_split=list(eval_splits),
        model_path=str(model_path),
        eval_dir=str(eval_dir),
        n_resamples=int(n_resamples),
        ckpt_dir=str(ckpt_dir),
        output_dir=str(out / "runs"),
        run=["$@evaluate#evaluator.run()"],  # the traced frames only, not the whole-video EF part
    )
    eval_seconds = time.perf_counter() - t1
    if not csv.is_file():
        raise FileNotFoundError(f"the evaluation wrote no {csv} (no evaluation video could be read?)")

    frames = pd.read_csv(csv, dtype={"video_id": str})
    per_video = frames.groupby("video_id", sort=False)[["inter", "pred_sum", "true_sum"]].sum()
    counts = frames.groupby("video_id", sort=False).size()
    video_ids = [v for v in order if v in per_video.index]
    if len(video_ids) < len(order):
        logger.warning("few-label segmentation: %d evaluation videos were not evaluated", len(order) - len(video_ids))
    per_video = per_video.loc[video_ids]
    inter, pred_sum, true_sum = (per_video[k].to_numpy(dtype=np.int64) for k in ("inter", "pred_sum", "true_sum"))
    return {
        "video_ids": video_ids,
        "inter": inter,
        "pred_sum": pred_sum,
        "true_sum": true_sum,
        "dice": float(pooled_dice(inter, pred_sum, true_sum)),
        "n_frames": counts.loc[video_ids].to_numpy(dtype=np.int64),
        "train_videos": train_videos,
        "steps": steps,
        "batch_size": batch_size,
        "pretrained_ckpt": None if pretrained_ckpt is None else str(pretrained_ckpt),
        "seconds": round(train_seconds + eval_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
    }
