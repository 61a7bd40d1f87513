"""Evaluation and inference writers attached to MONAI evaluators (UniLVSeg evaluate / inference).

- :class:`TracedFrameReport`: per traced frame Dice, pooled Dice overall/ED/ES with bootstrap intervals, a
  per-frame CSV, a JSON summary, a Dice histogram and overlays of the worst and best frames.
- :class:`SequenceDiceReport`: pooled Dice of whole-sequence predictions on every frame with ground truth (the
  CAMUS half sequences), overall, ED, ES and the frames between.
- :class:`VideoEFReport`: EF from whole-video predicted masks against the true EF (MAE, RMSE, correlation with
  bootstrap intervals), per-video and per-frame CSVs, the worst videos' area curves, Bland-Altman and scatter plots.
- :class:`VideoMaskWriter`: whole-video inference outputs: a mask for every frame (NIfTI), an overlay video,
  the LV area curve (CSV and PNG) and the EF estimated from the masks (JSON).

All gather on the evaluator's process and write on :meth:`completed`; under DDP run evaluation on one rank. The
per-video tables (``per_video_ef.csv``, ``predictions.csv``) are appended and flushed as each batch ends, so a crash
keeps the finished videos. Inputs the loader left out because they could not be read
(``DataLoader(on_bad_sample="skip")``, :mod:`medssl_monai.data.robust`) are listed: ``summary.json["skipped"]``
(per report, each file with its reason) and rows with ``status`` ``skipped`` in the per-video tables; the metrics
are computed on the inputs that were read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from medssl_monai.data.robust import BadSample, SkipCursor, attach_skipped_samples, skipped_summary
from medssl_monai.engines.writers import StreamingCsv, sample_id
from medssl_monai.evaluation.bootstrap import bootstrap_ci, dice_summary
from medssl_monai.evaluation.ef import ef_from_masks, implausible_masks
from medssl_monai.evaluation.plots import (
    plot_area_curve,
    plot_bland_altman,
    plot_dice_histogram,
    plot_overlays,
    plot_scatter,
)
from medssl_monai.evaluation.segmentation import frame_dice, frame_overlap

__all__ = [
    "TracedFrameReport",
    "SequenceDiceReport",
    "VideoEFReport",
    "VideoMaskWriter",
    "update_json",
    "format_dice_table",
]

logger = logging.getLogger(__name__)


def update_json(path: str | Path, updates: dict) -> Path:
    """Merge ``updates`` into the JSON object at ``path`` and write it atomically (the old file survives a crash)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)
    return path


def _with_skipped(path: Path, section: str, samples: list[BadSample], unit: str) -> dict:
    """The ``skipped`` entry of ``summary.json`` with ``section``'s list of unreadable files replaced."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    skipped = dict(data.get("skipped") or {})
    skipped[section] = skipped_summary(samples, unit)
    return {"skipped": skipped}


def _output_name(vid: str) -> Path:
    """A relative output path for an input id (``a/1`` -> ``a/1``): no absolute part, no ``..``."""
    parts = [p for p in Path(str(vid).replace("\\", "/")).parts if p not in ("", ".", "..", "/") and ":" not in p]
    return Path(*parts) if parts else Path("unnamed")


def _list(value, n: int) -> list:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def format_dice_table(summary: dict) -> str:
    """Markdown rows of a ``dice`` summary: pooled Dice with the true 95% and the reference's 90% interval."""
    rows = [
        '| subset | frames | pooled Dice | 95% CI (2.5-97.5) | reference "95% CI" (5-95, a 90% interval) |',
        "| --- | ---: | ---: | --- | --- |",
    ]
    for name, r in summary.items():
        rows.append(
            f"| {name} | {r['frames']} | {100 * r['estimate']:.2f} | {100 * r['ci_low']:.2f}-{100 * r['ci_high']:.2f} "
            f"| {100 * r['reference_90_low']:.2f}-{100 * r['reference_90_high']:.2f} |"
        )
    return "\n".join(rows)


def _dice_table(df: pd.DataFrame, n_resamples: int, seed: int, bootstrap_unit: str = "frame") -> dict[str, dict]:
    """Pooled Dice with intervals overall and per ``phase`` of per-frame ``inter``/``pred_sum``/``true_sum`` rows,
    each entry with its frame count (what :func:`format_dice_table` prints). ``bootstrap_unit="video"`` resamples
    the frames of a ``video_id`` together."""
    if bootstrap_unit not in ("frame", "video"):
        raise ValueError(f"bootstrap_unit must be 'frame' or 'video', got {bootstrap_unit!r}")
    groups = df["video_id"].astype(str).to_numpy() if bootstrap_unit == "video" else None
    results = dice_summary(df["inter"], df["pred_sum"], df["true_sum"], df["phase"], n_resamples, seed, groups=groups)
    return {
        name: {**r.as_dict(), "frames": len(df) if name == "overall" else int((df["phase"] == name).sum())}
        for name, r in results.items()
    }


class _Report:
    """An evaluator handler that collects rows per iteration and writes files when the evaluator completes."""

    def __init__(self, output_dir: str | Path, n_resamples: int = 10000, seed: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.n_resamples = n_resamples
        self.seed = seed
        self.summary: dict = {}
        self._skips = SkipCursor()
        self.skipped: list[BadSample] = []

    def attach(self, engine: Engine) -> None:
        attach_skipped_samples(engine)  # the epoch ends where the data does when inputs were left out
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows: list[dict] = []
        self.skipped = []
        self._skips.reset()

    def _take_skipped(self, engine: Engine | None) -> list[BadSample]:
        new = self._skips.take(engine)
        self.skipped += new
        return new

    def iteration_completed(self, engine: Engine) -> None:
        raise NotImplementedError

    def completed(self, engine: Engine) -> None:
        raise NotImplementedError


class TracedFrameReport(_Report):
    """Collect the traced-frame predictions of an evaluator and write the UniLVSeg Dice report.

    Expects ``engine.state.output`` with ``pred`` (``B x 1 x H x W`` logits at the traced frame, from
    :class:`~medssl_monai.engines.inferers.TracedFrameInferer`) and ``label`` (``B x 1 x H x W``), and the batch
    with ``video_id``, ``phase``, ``frame_index``, ``image`` (the uint8 clip) and ``target_index``.

    Args:
        output_dir: where ``per_frame_dice.csv``, ``summary.json`` and the PNGs go.
        n_resamples: bootstrap resamples (the reference: 10,000).
        num_overlays: frames in each of the worst and best overlay montages.
        seed: bootstrap seed.
        bootstrap_unit: ``"frame"`` resamples traced frames independently (the reference); ``"video"`` resamples
            videos, a video's ED and ES frames together.
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_resamples: int = 10000,
        num_overlays: int = 8,
        seed: int = 0,
        bootstrap_unit: str = "frame",
    ) -> None:
        super().__init__(output_dir, n_resamples, seed)
        self.num_overlays = num_overlays
        self.bootstrap_unit = bootstrap_unit

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self.frames: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def iteration_completed(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        pred = out["pred"].detach().float().cpu()[:, 0]
        label = out["label"].detach().cpu()[:, 0]
        inter, psum, tsum = frame_overlap(pred.numpy(), label.numpy() > 0.5)
        n = pred.shape[0]
        image = torch.as_tensor(batch["image"])
        idx = torch.as_tensor(batch["target_index"]).long().reshape(-1)
        frames = image[torch.arange(n), 0, idx].cpu().numpy()
        ids, phases, fidx = (_list(batch.get(k), n) for k in ("video_id", "phase", "frame_index"))
        for b in range(n):
            self.rows.append(
                {
                    "video_id": ids[b],
                    "phase": phases[b],
                    "frame_index": fidx[b],
                    "inter": int(inter[b]),
                    "pred_sum": int(psum[b]),
                    "true_sum": int(tsum[b]),
                }
            )
        self.frames.extend(frames)
        self.preds.extend((pred > 0).numpy().astype(np.uint8))
        self.labels.extend((label > 0.5).numpy().astype(np.uint8))

    def completed(self, engine: Engine) -> None:
        self._take_skipped(engine)
        path = self.output_dir / "summary.json"
        if not self.rows:
            logger.warning("TracedFrameReport: no frames were evaluated (%d could not be read)", len(self.skipped))
            update_json(path, _with_skipped(path, "dice", self.skipped, "frames"))
            return
        df = pd.DataFrame(self.rows)
        df["dice"] = frame_dice(df["inter"], df["pred_sum"], df["true_sum"])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.output_dir / "per_frame_dice.csv", index=False)
        self.summary = _dice_table(df, self.n_resamples, self.seed, self.bootstrap_unit)
        update_json(path, {"dice": self.summary, **_with_skipped(path, "dice", self.skipped, "frames")})
        if self.skipped:
            logger.warning(
                "TracedFrameReport: %d traced frames of %d files could not be read and are not in the Dice "
                "(listed in %s under 'skipped')",
                len(self.skipped),
                len({s.file for s in self.skipped}),
                path,
            )
        plot_dice_histogram(df["dice"].to_numpy(), self.output_dir / "dice_histogram.png")
        order = np.argsort(df["dice"].to_numpy(), kind="stable")
        k = min(self.num_overlays, len(order))
        for name, sel in (("worst", order[:k]), ("best", order[::-1][:k])):
            titles = [f"{df.video_id[i]} {df.phase[i]} f{df.frame_index[i]} Dice {df.dice[i]:.3f}" for i in sel]
            plot_overlays(
                [self.frames[i] for i in sel],
                [self.preds[i] for i in sel],
                [self.labels[i] for i in sel],
                titles,
                self.output_dir / f"overlays_{name}.png",
            )
        logger.info("Pooled Dice (traced frames):\n%s", format_dice_table(self.summary))


class SequenceDiceReport(_Report):
    """Dice of whole-sequence predictions on every frame with ground truth (SimLVSeg's CAMUS evaluation).

    Expects ``engine.state.output`` ``pred`` (``B x 1 x T x H x W`` logits, e.g. from
    :class:`~medssl_monai.engines.inferers.VideoSlidingWindowInferer`) and ``label`` (``B x 1 x T x H x W``), and the
    batch with ``label_valid`` (``B x T``: frames with ground truth), ``phase_code`` (``B x T``, codes of
    :data:`~medssl_monai.transforms.camus.PHASE_CODES`) and ``video_id``. Pooled Dice (``2 sum(inter) / (sum(pred) +
    sum(true))``, the reference's formula) overall, ED, ES and the frames between, with bootstrap intervals over
    frames; ``per_frame_dice.csv``; key ``summary_key`` of ``summary.json``.
    """

    def __init__(
        self, output_dir: str | Path, n_resamples: int = 10000, seed: int = 0, summary_key: str = "camus_dice"
    ) -> None:
        super().__init__(output_dir, n_resamples, seed)
        self.summary_key = summary_key

    def iteration_completed(self, engine: Engine) -> None:
        from medssl_monai.transforms.camus import PHASE_CODES

        names = {v: k for k, v in PHASE_CODES.items()}
        out, batch = engine.state.output, engine.state.batch
        pred = out["pred"].detach().float().cpu() > 0
        label = out["label"].detach().cpu() > 0
        valid = torch.as_tensor(batch["label_valid"]).cpu().bool()
        phase = torch.as_tensor(batch["phase_code"]).cpu()
        ids = _list(batch.get("video_id"), pred.shape[0])
        inter = (pred & label).sum(dim=(-1, -2))[:, 0]  # B x T
        psum, tsum = pred.sum(dim=(-1, -2))[:, 0], label.sum(dim=(-1, -2))[:, 0]
        for b in range(pred.shape[0]):
            for f in torch.nonzero(valid[b]).flatten().tolist():
                i, ps, ts = int(inter[b, f]), int(psum[b, f]), int(tsum[b, f])
                self.rows.append(
                    {
                        "video_id": ids[b],
                        "frame": f,
                        "phase": names[int(phase[b, f])],
                        "inter": i,
                        "pred_sum": ps,
                        "true_sum": ts,
                    }
                )

    def completed(self, engine: Engine) -> None:
        self._take_skipped(engine)
        path = self.output_dir / "summary.json"
        skipped = _with_skipped(path, self.summary_key, self.skipped, "sequences")
        if not self.rows:
            logger.warning("SequenceDiceReport: no frame with ground truth was evaluated")
            update_json(path, skipped)
            return
        df = pd.DataFrame(self.rows)
        df["dice"] = frame_dice(df["inter"], df["pred_sum"], df["true_sum"])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.output_dir / "per_frame_dice.csv", index=False)
        self.summary = _dice_table(df, self.n_resamples, self.seed)
        update_json(path, {self.summary_key: self.summary, **skipped})
        logger.info(
            "Sequence Dice over %d frames of %d videos%s:\n%s",
            len(df),
            df["video_id"].nunique(),
            f" ({len(self.skipped)} sequences could not be read, listed in {path})" if self.skipped else "",
            format_dice_table(self.summary),
        )


class VideoEFReport(_Report):
    """EF from the predicted masks of whole videos against the true EF (batch size 1, ``pred`` ``1 x 1 x T x H x W``).

    Writes, besides the summary (key ``ef`` of ``summary.json``) and the Bland-Altman and scatter plots:

    - ``per_video_ef.csv``: per video the true and estimated EF, the error, and for every beat found its ED and ES
      frames, areas (pixels), volumes and EF (space-separated, one entry per beat), ``mask_check`` (why the masks
      cannot be a left ventricle, :func:`~medssl_monai.evaluation.ef.implausible_masks`; empty when they can; the
      count is ``videos_with_implausible_masks`` in the summary), then ``status`` (``ok``, or ``skipped`` for a
      video that could not be read) and ``reason``; appended and flushed as each video ends;
    - ``per_frame_area.csv``: per video and frame the LV area of the cleaned mask, the smoothed area the frames were
      picked on, the volume, and whether the frame was taken as ED or ES;
    - ``area_curves/<video>.png`` for the ``num_curves`` videos with the largest absolute EF error: the area curve,
      the chosen ED/ES frames and, where the data has them, the traced (true) ED/ES frames.

    Args:
        output_dir: where the files go.
        ef_key: batch key of the true EF.
        method: volume method of :func:`~medssl_monai.evaluation.ef.ef_from_masks` (``area_length`` or ``discs``).
        min_distance: minimum frames between beats (EchoNet: 20 at 50 fps).
        n_resamples: bootstrap resamples for the intervals.
        num_curves: area-curve PNGs written for the worst videos.
    """

    def __init__(
        self,
        output_dir: str | Path,
        ef_key: str = "ef",
        method: str = "area_length",
        min_distance: int = 20,
        n_resamples: int = 10000,
        seed: int = 0,
        num_curves: int = 8,
    ) -> None:
        super().__init__(output_dir, n_resamples, seed)
        self.ef_key = ef_key
        self.method = method
        self.min_distance = min_distance
        self.num_curves = num_curves
        self.frames: list[pd.DataFrame] = []
        self.curves: dict[str, dict] = {}
        self._csv: StreamingCsv | None = None

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self.frames, self.curves = [], {}
        if getattr(self, "_csv", None) is not None and self._csv.opened:
            self._csv.close()
        self._csv = StreamingCsv(self.output_dir / "per_video_ef.csv", EF_COLUMNS)

    def _stream(self) -> StreamingCsv:
        if getattr(self, "_csv", None) is None:
            self._csv = StreamingCsv(self.output_dir / "per_video_ef.csv", EF_COLUMNS)
        return self._csv

    def _append(self, engine: Engine | None, first: int) -> None:
        """Write the videos left out since the last call (they came before this batch), then the rows from ``first``."""
        rows = [
            {
                "video_id": sample_id(s, "video_id"),
                "ef_true": s.item.get(self.ef_key, ""),
                "status": "skipped",
                "reason": s.reason,
            }
            for s in self._take_skipped(engine)
        ]
        rows += [{**r, "status": "ok", "reason": ""} for r in self.rows[first:]]
        if rows:
            self._stream().write(rows)

    @staticmethod
    def _traced(batch: dict, b: int) -> dict[str, int]:
        traced = batch.get("traced_frames")
        if not isinstance(traced, dict):
            return {}
        out = {}
        for phase in ("ED", "ES"):
            v = traced.get(phase)
            if v is not None:
                out[f"traced {phase}"] = int(_list(v, b + 1)[b])
        return out

    def iteration_completed(self, engine: Engine) -> None:
        first = len(self.rows)
        try:
            self._iteration(engine)
        finally:  # the videos done so far are on disk whatever the next one does
            self._append(engine, first)

    def _iteration(self, engine: Engine) -> None:
        pred, batch = engine.state.output["pred"].detach().float().cpu(), engine.state.batch
        n = pred.shape[0]
        ids, efs = _list(batch.get("video_id"), n), _list(batch.get(self.ef_key), n)
        for b in range(n):
            vid = str(ids[b])
            masks = (pred[b, 0] > 0).numpy()
            try:
                res = ef_from_masks(masks, method=self.method, min_distance=self.min_distance)
            except ValueError as e:  # an empty prediction: reported, not fatal
                logger.warning("VideoEFReport: %s: %s", vid, e)
                self.rows.append({"video_id": vid, "ef_true": efs[b], "ef_pred": float("nan"), "beats": 0})
                continue

            def join(values, fmt="{:.6g}"):
                return " ".join(fmt.format(v) for v in values)

            self.rows.append(
                {
                    "video_id": vid,
                    "ef_true": float(efs[b]),
                    "ef_pred": res.ef,
                    "error": res.ef - float(efs[b]),
                    "frames": int(masks.shape[0]),
                    "beats": len(res.beats),
                    "ed_frames": join(res.ed_frames, "{}"),
                    "es_frames": join(res.es_frames, "{}"),
                    "ed_areas": join(bt.ed_area for bt in res.beats),
                    "es_areas": join(bt.es_area for bt in res.beats),
                    "edv": join(bt.edv for bt in res.beats),
                    "esv": join(bt.esv for bt in res.beats),
                    "beat_ef": join(bt.ef for bt in res.beats),
                    "mask_check": implausible_masks(res, int(masks.shape[1] * masks.shape[2])),
                }
            )
            t = np.arange(masks.shape[0])
            self.frames.append(
                pd.DataFrame(
                    {
                        "video_id": vid,
                        "frame": t,
                        "area": res.area,
                        "area_smoothed": res.curve if res.curve is not None else res.area,
                        "volume": res.volume,
                        "ed": np.isin(t, res.ed_frames),
                        "es": np.isin(t, res.es_frames),
                    }
                )
            )
            self.curves[vid] = {"res": res, "traced": self._traced(batch, b)}

    def _write_curves(self, df: pd.DataFrame) -> None:
        ok = df.dropna(subset=["ef_pred", "ef_true"])
        worst = ok.assign(abs_error=(ok["ef_pred"] - ok["ef_true"]).abs()).nlargest(self.num_curves, "abs_error")
        for row in worst.itertuples():
            entry = self.curves.get(str(row.video_id))
            if entry is None:
                continue
            res = entry["res"]
            plot_area_curve(
                res.area,
                res.ed_frames,
                res.es_frames,
                self.output_dir / "area_curves" / f"{row.video_id}.png",
                title=f"{row.video_id}: EF {row.ef_pred:.1f} (true {row.ef_true:.1f})",
                ylabel="LV area (pixels)",
                smoothed=res.curve,
                reference=entry["traced"],
            )

    def completed(self, engine: Engine) -> None:
        self._append(engine, len(self.rows))
        self._stream().close()
        self._csv = None
        path = self.output_dir / "summary.json"
        skipped = _with_skipped(path, "ef", self.skipped, "videos")
        if not self.rows:
            self.summary = {"videos": 0, "videos_without_mask": 0, "videos_skipped": len(self.skipped)}
            update_json(path, {"ef": self.summary, **skipped})
            return
        df = pd.DataFrame(self.rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.frames:
            pd.concat(self.frames, ignore_index=True).to_csv(self.output_dir / "per_frame_area.csv", index=False)
        if self.num_curves > 0:
            self._write_curves(df)
        ok = df.dropna(subset=["ef_pred", "ef_true"])
        t, p = ok["ef_true"].to_numpy(float), ok["ef_pred"].to_numpy(float)
        self.summary = {
            "videos": len(df),
            "videos_without_mask": int(len(df) - len(ok)),
            "videos_skipped": len(self.skipped),  # could not be read: not in the metrics
        }
        checked = df["mask_check"].fillna("") if "mask_check" in df else pd.Series([""] * len(df))
        self.summary["videos_with_implausible_masks"] = int((checked != "").sum())
        if self.summary["videos_with_implausible_masks"]:
            logger.warning(
                "EF from masks: %d of %d videos have masks that cannot be a left ventricle (column mask_check of "
                "%s, e.g. %s: %s); their EF is not meaningful",
                self.summary["videos_with_implausible_masks"],
                len(df),
                self.output_dir / "per_video_ef.csv",
                df.loc[checked != "", "video_id"].iloc[0],
                checked[checked != ""].iloc[0],
            )
        if len(ok) >= 1:
            self.summary["bias"] = float(np.mean(p - t))
        if len(ok) >= 2:
            stats = {
                "mae": lambda a, b: np.mean(np.abs(a - b), axis=-1),
                "rmse": lambda a, b: np.sqrt(np.mean((a - b) ** 2, axis=-1)),
                "pearson_r": _pearson,
            }
            for name, fn in stats.items():
                r = bootstrap_ci(fn, t, p, n_resamples=self.n_resamples, seed=self.seed)
                self.summary[name] = r.as_dict()
            plot_bland_altman(t, p, self.output_dir / "ef_bland_altman.png", title="EF from masks vs true EF")
            plot_scatter(t, p, self.output_dir / "ef_scatter.png", title="EF from masks", unit="%")
            logger.info(
                "EF from masks: MAE %.2f, RMSE %.2f, r %.3f, bias %+.2f over %d videos%s; area curves of the worst "
                "in %s",
                self.summary["mae"]["estimate"],
                self.summary["rmse"]["estimate"],
                self.summary["pearson_r"]["estimate"],
                self.summary["bias"],
                len(ok),
                f" ({len(self.skipped)} could not be read, listed in {path})" if self.skipped else "",
                self.output_dir / "area_curves",
            )
        update_json(path, {"ef": self.summary, **skipped})


#: the columns of ``per_video_ef.csv``
EF_COLUMNS = (
    "video_id",
    "ef_true",
    "ef_pred",
    "error",
    "frames",
    "beats",
    "ed_frames",
    "es_frames",
    "ed_areas",
    "es_areas",
    "edv",
    "esv",
    "beat_ef",
    "mask_check",
    "status",
    "reason",
)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=-1) * (b**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=-1) / den


class VideoMaskWriter:
    """Write whole-video inference outputs per video (batch size 1 or more, ``pred`` ``B x 1 x T x H x W`` logits).

    Per video ``<id>``: ``<id>_mask.nii.gz`` (uint8 {0, 1}, stored ``W x H x T`` like CAMUS sequences, so
    :func:`medssl_monai.data.sources.decode_frames` reads it back as ``T x H x W``), ``<id>_overlay.avi`` (the video
    with the mask outline in red), ``<id>_area.csv`` and ``<id>_area.png`` (LV area per frame with ED/ES marked),
    and ``<id>_ef.json`` (EF from the masks, beats). An id that is a relative path (``a/1`` for ``a/1.avi``, see
    :func:`medssl_monai.data.inputs.inference_datalist`) writes into that subfolder, so ``a/1.avi`` and ``b/1.avi``
    do not overwrite each other. ``predictions.csv`` lists every video as it is written (appended and flushed),
    with ``mask_check`` (why its masks cannot be a left ventricle, empty when they can; a WARNING too), and
    ``status`` ``ok``, or ``skipped`` and the ``reason`` for a video that could not be read.

    Args:
        output_dir: the output folder.
        write_video: write the overlay AVI.
        method, min_distance: EF estimation (see :class:`VideoEFReport`).
        fps: overlay frame rate when the batch gives none.
    """

    COLUMNS = ("video_id", "frames", "mask_pixels_mean", "ef", "beats", "mask_check", "status", "reason")

    def __init__(
        self,
        output_dir: str | Path,
        write_video: bool = True,
        method: str = "area_length",
        min_distance: int = 20,
        fps: float = 50.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.write_video = write_video
        self.method = method
        self.min_distance = min_distance
        self.fps = fps
        self._skips = SkipCursor()
        self._csv: StreamingCsv | None = None
        self.reset()

    def attach(self, engine: Engine) -> None:
        attach_skipped_samples(engine)  # the epoch ends where the data does when videos were left out
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows: list[dict] = []
        self.skipped: list[BadSample] = []
        self._skips.reset()
        if self._csv is not None and self._csv.opened:
            self._csv.close()
        self._csv = StreamingCsv(self.output_dir / "predictions.csv", self.COLUMNS)

    def _append(self, engine: Engine | None, rows: list[dict]) -> None:
        new = self._skips.take(engine)  # left out before this batch arrived (or within it): listed first
        self.skipped += new
        listed = [{"video_id": sample_id(s, "video_id"), "status": "skipped", "reason": s.reason} for s in new]
        rows = listed + [{**r, "status": "ok", "reason": ""} for r in rows]
        if rows:
            if self._csv is None:
                self._csv = StreamingCsv(self.output_dir / "predictions.csv", self.COLUMNS)
            self._csv.write(rows)

    def iteration_completed(self, engine: Engine) -> None:
        first = len(self.rows)
        try:
            self._iteration(engine)
        finally:  # the videos written so far are listed whatever the next one does
            self._append(engine, self.rows[first:])

    def _iteration(self, engine: Engine) -> None:
        import nibabel as nib

        from medssl_monai.data.video import write_video

        pred, batch = engine.state.output["pred"].detach().float().cpu(), engine.state.batch
        n = pred.shape[0]
        if batch.get("video_id") is not None:
            ids = [str(v) for v in _list(batch["video_id"], n)]
        else:  # no id: the file name without its extension
            ids = [Path(str(f)).name.split(".")[0] for f in _list(batch["image_meta_dict"]["filename_or_obj"], n)]
        fps = _list(batch.get("fps", self.fps), n)
        image = torch.as_tensor(batch["image"]).cpu()
        for b in range(n):
            vid = ids[b]
            stem = self.output_dir / _output_name(vid)  # a/1 -> output_dir/a/1_mask.nii.gz
            stem.parent.mkdir(parents=True, exist_ok=True)
            masks = (pred[b, 0] > 0).numpy().astype(np.uint8)  # T x H x W
            nib.save(
                nib.Nifti1Image(np.ascontiguousarray(masks.transpose(2, 1, 0)), np.eye(4)),
                f"{stem}_mask.nii.gz",
            )
            row = {"video_id": vid, "frames": int(masks.shape[0]), "mask_pixels_mean": float(masks.sum((1, 2)).mean())}
            raw_area = masks.sum(axis=(1, 2)).astype(float)
            area = raw_area  # replaced by the cleaned masks' area (largest component, holes filled) when EF works
            try:
                res = ef_from_masks(masks, method=self.method, min_distance=self.min_distance)
                area = res.area
                check = implausible_masks(res, int(masks.shape[1] * masks.shape[2]))
                row.update(ef=res.ef, beats=len(res.beats), mask_check=check)
                if check:
                    logger.warning(
                        "VideoMaskWriter: %s: EF %.1f%% from masks that cannot be a left ventricle: %s",
                        vid,
                        res.ef,
                        check,
                    )
                Path(f"{stem}_ef.json").write_text(
                    json.dumps(
                        {"video_id": vid, "ef": res.ef, "method": res.method, "beats": [vars(bt) for bt in res.beats]},
                        indent=2,
                        default=float,
                    )
                )
                plot_area_curve(
                    area,
                    res.ed_frames,
                    res.es_frames,
                    Path(f"{stem}_area.png"),
                    title=f"{vid}: LV area (EF {res.ef:.1f}%)",
                    smoothed=res.curve,
                )
            except ValueError as e:
                logger.warning("VideoMaskWriter: %s: no EF (%s)", vid, e)
                row.update(ef=float("nan"), beats=0)
            pd.DataFrame({"frame": np.arange(len(area)), "lv_area_pixels": area, "raw_mask_pixels": raw_area}).to_csv(
                f"{stem}_area.csv", index=False
            )
            if self.write_video:
                write_video(Path(f"{stem}_overlay.avi"), _overlay(image[b], masks), fps=float(fps[b]))
            self.rows.append(row)

    def completed(self, engine: Engine) -> None:
        self._append(engine, [])
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        logger.info(
            "VideoMaskWriter: wrote masks for %d videos to %s%s",
            len(self.rows),
            self.output_dir,
            f"; {len(self.skipped)} could not be read (predictions.csv, status 'skipped')" if self.skipped else "",
        )


def _overlay(clip: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """``C x T x H x W`` uint8 clip and ``T x H x W`` masks -> ``T x H x W x 3`` RGB frames with a red outline."""
    from scipy.ndimage import binary_erosion

    frames = clip.numpy()
    if frames.dtype != np.uint8:
        frames = np.clip(frames, 0, 255).astype(np.uint8)
    rgb = np.repeat(frames[:1], 3, axis=0) if frames.shape[0] == 1 else frames[:3]
    rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))  # T x H x W x 3
    m = masks.astype(bool)
    edge = m & ~binary_erosion(m, structure=np.ones((1, 3, 3), bool))
    rgb[edge] = (255, 0, 0)
    return rgb
