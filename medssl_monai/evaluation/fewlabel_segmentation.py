"""Few-label LV segmentation: UniLVSeg's headline claim for its self-supervised pretraining.

UniLVSeg (Maani et al., arXiv 2310.00454) reports that its masked-frame reconstruction pretraining helps most when
few videos are labelled. One arm of the comparison fine-tunes the segmentation bundle
(``bundles/unilvseg_echo_lv_segmentation``, by default ``train.yaml`` + ``cpu.yaml``) on ``n_videos`` traced TRAIN
videos, from random init or from a pretraining checkpoint, for the preset's fixed number of optimizer steps (the
same budget whatever ``n_videos`` and whatever the init; the videos are drawn from ``seed`` alone, so both inits see
the same ones), then scores the trained network with the bundle's own traced-frame evaluation (``evaluate.yaml``)
on the evaluation videos. It yields per-video overlap counts, so two arms can be compared by
:func:`~medssl_monai.evaluation.bootstrap.paired_bootstrap_pooled_dice` on the same videos.

An arm is two stages of a :class:`~medssl_monai.reproduce.plan.Plan` (:func:`fewlabel_segmentation_stages`), each
a ``python -m monai.bundle run``, so that a caller can put the arms in the plan of its other trainings and run them
side by side (the representation benchmark runs them with its pretraining stages), skip the finished ones on the
next run and continue an interrupted one:

* ``<name>``, training: ``label_videos=n_videos``; the in-training validation is switched off (its single VAL pass
  would pick nothing among one candidate, and VAL is evaluated next anyway), the final weights are
  ``models/checkpoint_final.pt``;
* ``<name>_eval``, evaluation: ``evaluate.yaml`` with ``eval_split`` = the evaluation splits and ``model_path`` =
  that checkpoint, only its traced-frame part (one clip centred on each traced ED / ES frame; per-frame counts in
  ``eval/per_frame_dice.csv``), not the whole-video EF part.

:func:`read_fewlabel_segmentation` reads a finished arm; :func:`fewlabel_segmentation` runs and reads one arm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl_monai.evaluation.segmentation import pooled_dice
from medssl_monai.reproduce.plan import STAGE_FILE, Estimate, Plan, Stage

__all__ = [
    "SEGMENTATION_BUNDLE",
    "fewlabel_segmentation",
    "fewlabel_segmentation_stages",
    "read_fewlabel_segmentation",
]

logger = logging.getLogger(__name__)

SEGMENTATION_BUNDLE = "unilvseg_echo_lv_segmentation"
_NO_VALIDATION = 10**9  # val_interval: no epoch of the run reaches it
_FINAL = "models/checkpoint_final.pt"
_FRAMES = "eval/per_frame_dice.csv"


def fewlabel_segmentation_stages(
    plan_out: str | Path,
    name: str,
    dataset_dir: str | Path,
    n_videos: int,
    pretrained_ckpt: str | Path | None,
    *,
    cache_dir: str | Path | None = None,
    configs: Sequence[str] = ("train.yaml", "cpu.yaml"),
    seed: int = 0,
    eval_splits: Sequence[str] = ("VAL", "TEST"),
    overrides: Mapping[str, Any] | None = None,
    n_resamples: int = 1000,
    depends_on: Sequence[str] = (),
    estimate: Estimate | None = None,
) -> tuple[Stage, Stage]:
    """The two plan stages of one arm: fine-tuning (``name``) and its traced-frame evaluation (``name + "_eval"``).

    Args:
        plan_out: the output folder of the plan the stages will run in.
        name: the training stage's name (its folder under ``plan_out``).
        dataset_dir: an EchoNet-Dynamic-format folder (``FileList.csv``, ``VolumeTracings.csv``, ``Videos/``).
        n_videos: labelled TRAIN videos (the bundle's ``label_videos``: the first ``n_videos`` of one permutation
            drawn from ``seed``, so 5 videos lie within 10 and the choice does not depend on the init).
        pretrained_ckpt: a UniLVSeg pretraining ``models/model.pt`` (a plain state_dict, pretrained in the same
            layout, e.g. ``unilvseg_echo_ssl_pretraining`` with ``train.yaml`` + ``cpu.yaml``), which may not exist
            yet when a stage of the same plan writes it (``depends_on``); ``None``: random init.
        cache_dir: the decoded-clip cache (``None``: the bundle's default).
        configs: the segmentation bundle's training config files, merged in order (``evaluate.yaml`` is added for
            the evaluation).
        seed: the run's seed (video choice, initialisation, sampling, augmentation).
        eval_splits: the ``Split`` values of the evaluation videos.
        overrides: more config overrides for both runs (e.g. ``{"epoch_length": 10, "batch_size": 2}``).
        n_resamples: bootstrap resamples of the evaluation's own ``summary.json`` (not used by the comparison).
        depends_on: the plan stages the training reads (the one writing ``pretrained_ckpt``).
        estimate: the training's work for the plan's first ETA (default: none).

    Raises:
        ValueError: ``n_videos`` is not positive.
    """
    if int(n_videos) < 1:
        raise ValueError(f"n_videos must be a positive number of labelled videos, got {n_videos}")
    common: dict[str, Any] = {"dataset_dir": str(Path(dataset_dir).resolve()), "seed": int(seed)}
    if cache_dir is not None:
        common["cache_dir"] = str(Path(cache_dir).resolve())
    common.update(dict(overrides or {}))
    init = "random" if pretrained_ckpt is None else "pretrained"
    train = Stage(
        name,
        SEGMENTATION_BUNDLE,
        list(configs),
        {
            **common,
            "label_videos": int(n_videos),
            "pretrained_ckpt": None if pretrained_ckpt is None else str(Path(pretrained_ckpt).resolve()),
            "val_interval": _NO_VALIDATION,
        },
        depends_on=tuple(depends_on),
        outputs=(_FINAL,),
        estimate=estimate or Estimate(),
        label=f"few-label segmentation, {n_videos} labelled videos, {init} init",
    )
    evaluation = Stage(
        f"{name}_eval",
        SEGMENTATION_BUNDLE,
        [*configs, "evaluate.yaml"],
        {
            **common,
            "eval_split": list(eval_splits),
            "model_path": str(Path(plan_out).resolve() / name / _FINAL),
            "n_resamples": int(n_resamples),
            "run": ["$@evaluate#evaluator.run()"],  # the traced frames only, not the whole-video EF part
        },
        depends_on=(name,),
        outputs=(_FRAMES,),
        trains=False,
        estimate=Estimate(),
        label=f"pooled Dice of {name} on {'+'.join(eval_splits)}",
    )
    return train, evaluation


def read_fewlabel_segmentation(plan_out: str | Path, train: Stage, evaluation: Stage) -> dict[str, Any]:
    """The result of one finished arm (its two stages ran in a plan over ``plan_out``).

    Returns:
        ``{"video_ids": list[str], "inter", "pred_sum", "true_sum"`` (``int64`` arrays, one entry per evaluated
        video in the evaluation's order, summed over its traced frames), ``"dice"`` (their pooled Dice),
        ``"n_frames"`` (traced frames evaluated per video), ``"train_videos"`` (sorted ids of the labelled videos),
        ``"steps"`` (optimizer steps taken), ``"batch_size"``, ``"pretrained_ckpt"`` (str or None), ``"seconds"``
        (wall time of both runs), ``"train_seconds"``, ``"eval_seconds"}``. Evaluation videos that could not be
        read are left out of the arrays (and listed in the evaluation's ``eval/summary.json``).

    Raises:
        FileNotFoundError: the training wrote no final checkpoint, or the evaluation no per-frame counts.
    """
    import pandas as pd
    import torch

    out = Path(plan_out).resolve()
    model_path, csv = train.folder(out) / _FINAL, evaluation.folder(out) / _FRAMES
    if not model_path.is_file():
        raise FileNotFoundError(f"few-label fine-tuning {train.name!r} wrote no {model_path}")
    if not csv.is_file():
        raise FileNotFoundError(f"the evaluation {evaluation.name!r} wrote no {csv} (no evaluation video read?)")
    state = torch.load(model_path, map_location="cpu", weights_only=True)["trainer"]
    train_videos, batch_size = _training_choice(train, out)

    frames = pd.read_csv(csv, dtype={"video_id": str})
    per_video = frames.groupby("video_id", sort=False)[["inter", "pred_sum", "true_sum"]].sum()
    counts = frames.groupby("video_id", sort=False).size()
    inter, pred_sum, true_sum = (per_video[k].to_numpy(dtype=np.int64) for k in ("inter", "pred_sum", "true_sum"))
    train_s, eval_s = (_seconds(s.folder(out)) for s in (train, evaluation))
    ckpt = train.overrides.get("pretrained_ckpt")
    return {
        "video_ids": [str(v) for v in per_video.index],
        "inter": inter,
        "pred_sum": pred_sum,
        "true_sum": true_sum,
        "dice": float(pooled_dice(inter, pred_sum, true_sum)),
        "n_frames": counts.loc[per_video.index].to_numpy(dtype=np.int64),
        "train_videos": train_videos,
        "steps": int(state["iteration"]),
        "batch_size": batch_size,
        "pretrained_ckpt": None if ckpt is None else str(ckpt),
        "seconds": round(train_s + eval_s, 2),
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
    }


def fewlabel_segmentation(
    dataset_dir: str | Path,
    n_videos: int,
    pretrained_ckpt: str | Path | None,
    out_dir: str | Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune and evaluate one arm (:func:`fewlabel_segmentation_stages`) in a plan over ``out_dir``.

    The training runs in ``out_dir/train/`` (``models/``, ``runs/``, ``stage.log``), the evaluation in
    ``out_dir/train_eval/`` (``eval/``: ``per_frame_dice.csv``, ``summary.json``, plots); a finished arm with the
    same settings is not run again. ``kwargs`` are those of :func:`fewlabel_segmentation_stages`; the result is
    :func:`read_fewlabel_segmentation`'s.

    Raises:
        medssl_monai.reproduce.plan.StageFailed: a run failed (its ``stage.log`` is named).
    """
    import io

    stages = fewlabel_segmentation_stages(out_dir, "train", dataset_dir, n_videos, pretrained_ckpt, **kwargs)
    plan = Plan(stages, out_dir, stream=io.StringIO())
    plan.run()
    return read_fewlabel_segmentation(out_dir, *stages)


def _training_choice(train: Stage, out: Path) -> tuple[list[str], int]:
    """The labelled videos and the batch size of a training stage, from its configs (the datalist is cheap)."""
    parser = train.parser(out)
    videos = sorted({str(d["video_id"]) for d in parser.get_parsed_content("train#datalist")})
    return videos, int(parser.get_parsed_content("batch_size"))


def _seconds(folder: Path) -> float:
    try:
        return float(json.loads((folder / STAGE_FILE).read_text()).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0
