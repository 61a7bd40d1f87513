"""Synthetic EchoNet-Dynamic: apical four-chamber echo videos, FileList.csv and VolumeTracings.csv.

The layout and CSV columns are those of EchoNet-Dynamic (Ouyang et al., Nature 2020), so the EchoNet readers and
the UniLVSeg / TVRL / DISCOVR bundles run on it unchanged. Every number a test or a model may learn from is
consistent: EDV / ESV in ``FileList.csv`` are the method-of-discs volumes (:func:`~medssl_monai.data.tracings.
disc_volume`) of the tracings written to ``VolumeTracings.csv`` at :func:`echonet_pixel_spacing`, and a tracing
rasterised with :func:`~medssl_monai.data.tracings.tracing_mask` matches the rendered blood pool of its frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_monai.data.synthetic._common import assign_splits, item_rng, parallel_map, write_dataset
from medssl_monai.data.synthetic.heart import (
    ABNORMALITIES,
    HeartParams,
    HeartRenderer,
    contraction_curve,
    lv_tracing,
    sample_heart,
)
from medssl_monai.data.tracings import disc_volume
from medssl_monai.data.video import write_video

__all__ = [
    "ECHONET_DEPTH_CM",
    "FILELIST_COLUMNS",
    "TRACING_COLUMNS",
    "TRUTH_COLUMNS",
    "EchoVideo",
    "echonet_pixel_spacing",
    "echonet_file_name",
    "systole_fraction",
    "synthesize_echo_video",
    "lv_volume_curve",
    "make_echonet",
    "save_montage",
]

logger = logging.getLogger(__name__)

ECHONET_DEPTH_CM = 18.0  # imaging depth the image height spans; 112 px -> 0.1607 cm / px
FILELIST_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
TRACING_COLUMNS = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
TRUTH_COLUMNS = [
    "FileName",
    "Abnormal",
    "Abnormality",
    "HeartRateBPM",
    "EDFrames",
    "ESFrames",
    "TracedED",
    "TracedES",
    "TargetEF",
    "PixelSpacingCm",
    "AkineticWall",
    "StartPhase",
    "Gain",
    "Index",
]
NUM_CHORDS = 20  # EchoNet-Dynamic tracings have 20 chords plus the long axis per frame


def echonet_pixel_spacing(image_size: int) -> float:
    """Isotropic pixel spacing in cm / pixel: the frame height spans :data:`ECHONET_DEPTH_CM`."""
    return ECHONET_DEPTH_CM / float(image_size)


def echonet_file_name(rng: np.random.Generator) -> str:
    """An EchoNet-like id: ``0X`` and 14 upper-case hex digits."""
    return "0X" + "".join("0123456789ABCDEF"[i] for i in rng.integers(0, 16, 14))


def systole_fraction(heart_rate_bpm: float) -> float:
    """Share of the cycle spent in systole: ejection lasts ~0.35 s at 60 bpm and shortens slowly with rate."""
    duration_s = 0.35 - 0.0016 * (heart_rate_bpm - 60.0)
    return float(np.clip(duration_s * heart_rate_bpm / 60.0, 0.3, 0.5))


@dataclass
class EchoVideo:
    """One synthetic echo video and its ground truth (``frames``/``labels`` are ``T x H x W`` ``uint8``)."""

    frames: np.ndarray
    labels: np.ndarray
    params: HeartParams
    contraction: np.ndarray
    heart_rate_bpm: float
    fps: float
    start_phase: float
    ed_frames: list[int]
    es_frames: list[int]
    traced_ed: int
    traced_es: int

    def tracing(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The EchoNet tracing ``(X1, Y1, X2, Y2)`` of a frame of this video."""
        return lv_tracing(self.params, float(self.contraction[frame]), NUM_CHORDS)


def _extremum_frames(times: np.ndarray, contraction: np.ndarray, num_frames: int, pick_max: bool) -> list[int]:
    """The frame nearest each continuous-time extremum that is the discrete extremum (min for ED, max for ES)."""
    out = []
    for t in times:
        if round(t) < 0 or round(t) > num_frames - 1:
            continue
        cands = [f for f in (math.floor(t), math.ceil(t)) if 0 <= f < num_frames]
        vals = [contraction[f] for f in cands]
        out.append(cands[int(np.argmax(vals) if pick_max else np.argmin(vals))])
    return sorted(set(out))


@dataclass
class _VideoPlan:
    """Everything about one video that is drawn before rendering (the renderer draws from ``rng`` next)."""

    rng: np.random.Generator
    params: HeartParams
    contraction: np.ndarray
    heart_rate_bpm: float
    start_phase: float
    ed_frames: list[int]
    es_frames: list[int]
    traced_ed: int
    traced_es: int


def _plan_video(
    seed: int, index: int, abnormality: str, image_size: int, fps: float, min_frames: int, max_frames: int
) -> _VideoPlan:
    """Draw video ``index``'s heart, rate, length, phase and traced pair (no pixels): the first part of
    :func:`synthesize_echo_video`, shared with :func:`lv_volume_curve`."""
    rng = item_rng(seed, "echonet", index)
    params = sample_heart(rng, (image_size, image_size), abnormality)
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    heart_rate = float(rng.uniform(50.0, 110.0))
    min_rate = 60.0 * fps * 1.5 / max(max_frames - 2, 1)  # the slowest rate that still fits 1.5 cycles
    if heart_rate < min_rate:
        heart_rate = min_rate
    if min_rate > 180.0:
        raise ValueError(f"max_frames={max_frames} at fps={fps} cannot hold 1.5 cardiac cycles at <= 180 bpm")
    period = 60.0 * fps / heart_rate
    num_frames = int(min(max(num_frames, math.ceil(1.5 * period) + 2), max_frames))
    ts = systole_fraction(heart_rate)
    params = replace(params, systole_fraction=ts)
    start = float(rng.uniform(0.0, 1.0))
    contraction = contraction_curve(start + np.arange(num_frames) / period, ts)
    cycles = np.arange(-1, int(num_frames / period) + 3)
    ed_times = (cycles - start) * period
    ed_frames = _extremum_frames(ed_times, contraction, num_frames, pick_max=False)
    es_frames = _extremum_frames(ed_times + ts * period, contraction, num_frames, pick_max=True)
    pairs = []
    for t in ed_times:
        ed = [f for f in ed_frames if abs(f - t) < 1.0]
        es = [f for f in es_frames if abs(f - (t + ts * period)) < 1.0]
        if ed and es:
            pairs.append((ed[0], es[0]))
    if not pairs:  # cannot happen with >= 1.5 cycles; guard against parameter edge cases
        raise RuntimeError(f"synthetic video {index}: no complete ED-ES pair in {num_frames} frames")
    traced_ed, traced_es = pairs[int(rng.integers(len(pairs)))]
    return _VideoPlan(rng, params, contraction, heart_rate, start, ed_frames, es_frames, int(traced_ed), int(traced_es))


def synthesize_echo_video(
    seed: int,
    index: int,
    abnormality: str = "normal",
    image_size: int = 112,
    fps: float = 50.0,
    min_frames: int = 64,
    max_frames: int = 128,
) -> EchoVideo:
    """Render video ``index`` of the EchoNet generator with ``seed`` (what :func:`make_echonet` writes, before MJPG).

    Heart rate 50-110 bpm (raised where needed so that the video holds at least 1.5 cycles), random starting phase;
    the traced pair is one end-diastole and the end-systole of the same cycle.
    """
    plan = _plan_video(seed, index, abnormality, image_size, fps, min_frames, max_frames)
    renderer = HeartRenderer(plan.params, plan.rng)
    rendered = [renderer.render(float(c)) for c in plan.contraction]
    return EchoVideo(
        frames=np.stack([r[0] for r in rendered]),
        labels=np.stack([r[1] for r in rendered]),
        params=plan.params,
        contraction=plan.contraction,
        heart_rate_bpm=plan.heart_rate_bpm,
        fps=float(fps),
        start_phase=plan.start_phase,
        ed_frames=plan.ed_frames,
        es_frames=plan.es_frames,
        traced_ed=plan.traced_ed,
        traced_es=plan.traced_es,
    )


def lv_volume_curve(
    seed: int,
    index: int,
    abnormality: str = "normal",
    image_size: int = 112,
    fps: float = 50.0,
    min_frames: int = 64,
    max_frames: int = 128,
) -> np.ndarray:
    """The LV volume of every frame of video ``index`` (mL), without rendering it.

    Each frame's value is the method-of-discs volume of its tracing (:func:`lv_tracing` at that frame's
    contraction, :func:`~medssl_monai.data.tracings.disc_volume` at :func:`echonet_pixel_spacing`), so at the
    traced frames it equals the ``EDV`` / ``ESV`` written to ``FileList.csv``. A benchmark's positive control
    (the oracle row of ``docs/benchmark.md``) reads these curves; EchoNet-Dynamic itself has volumes at two
    frames only.
    """
    plan = _plan_video(seed, index, abnormality, image_size, fps, min_frames, max_frames)
    spacing = echonet_pixel_spacing(image_size)
    return np.array([disc_volume(*lv_tracing(plan.params, float(c), NUM_CHORDS), spacing) for c in plan.contraction])


def _abnormality_plan(rng: np.random.Generator, n: int, abnormal_fraction: float) -> list[str]:
    """Exactly ``round(fraction * n)`` abnormal videos, alternating reduced EF and akinetic segment."""
    n_abnormal = int(math.floor(abnormal_fraction * n + 0.5))
    plan = ["normal"] * n
    first = int(rng.integers(2))
    for k, i in enumerate(rng.permutation(n)[:n_abnormal]):
        plan[i] = ABNORMALITIES[1 + (k + first) % 2]
    return plan


def _write_echonet_video(
    index_and_item: tuple[int, tuple[str, str, str]],
    out: Path,
    seed: int,
    image_size: int,
    fps: float,
    min_frames: int,
    max_frames: int,
) -> tuple[list[pd.DataFrame], dict, dict]:
    """Render and write video ``i`` of :func:`make_echonet`; its tracing frames, ``FileList`` and truth rows."""
    i, (name, abnormality, split) = index_and_item
    spacing = echonet_pixel_spacing(image_size)
    video = synthesize_echo_video(seed, i, abnormality, image_size, fps, min_frames, max_frames)
    write_video(out / "Videos" / f"{name}.avi", video.frames, fps=fps)
    volumes, tracings = {}, []
    for key, frame in (("ES", video.traced_es), ("ED", video.traced_ed)):  # ES rows first, ED rows last
        x1, y1, x2, y2 = video.tracing(frame)
        volumes[key] = disc_volume(x1, y1, x2, y2, spacing)
        tracings.append(
            pd.DataFrame({"FileName": f"{name}.avi", "X1": x1, "Y1": y1, "X2": x2, "Y2": y2, "Frame": frame})
        )
    edv, esv = volumes["ED"], volumes["ES"]
    files = {
        "FileName": name,
        "EF": 100.0 * (edv - esv) / edv,
        "ESV": esv,
        "EDV": edv,
        "FrameHeight": image_size,
        "FrameWidth": image_size,
        "FPS": int(fps) if float(fps).is_integer() else fps,
        "NumberOfFrames": len(video.frames),
        "Split": split,
    }
    p = video.params
    truth = {
        "FileName": name,
        "Abnormal": int(abnormality != "normal"),
        "Abnormality": abnormality,
        "HeartRateBPM": video.heart_rate_bpm,
        "EDFrames": " ".join(map(str, video.ed_frames)),
        "ESFrames": " ".join(map(str, video.es_frames)),
        "TracedED": video.traced_ed,
        "TracedES": video.traced_es,
        "TargetEF": p.target_ef,
        "PixelSpacingCm": spacing,
        "AkineticWall": p.akinetic_wall,
        "StartPhase": video.start_phase,
        "Gain": p.gain,
        "Index": i,
    }
    return tracings, files, truth


def make_echonet(
    root: str | Path,
    num_videos: int = 40,
    seed: int = 0,
    image_size: int = 112,
    fps: float = 50.0,
    abnormal_fraction: float = 0.3,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    min_frames: int = 64,
    max_frames: int = 128,
    num_workers: int = 1,
) -> Path:
    """Write a synthetic EchoNet-Dynamic dataset to ``root`` (skipped if it is already there with these parameters).

    Files: ``Videos/<FileName>.avi`` (3-channel grey MJPG), ``FileList.csv``, ``VolumeTracings.csv`` (per video
    the ES frame's 21 rows first, the ED frame's last, as the EchoNet reference expects), ``SyntheticTruth.csv``
    (abnormality class, heart rate, every ED/ES frame) and the ``.synthetic.json`` marker.

    ``num_workers`` processes render the videos; the files are the same for any number of them.

    Returns:
        ``root``.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if not 0.0 <= abnormal_fraction <= 1.0:
        raise ValueError(f"abnormal_fraction must be in [0, 1], got {abnormal_fraction}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    params = {
        "num_videos": num_videos,
        "seed": seed,
        "image_size": image_size,
        "fps": fps,
        "abnormal_fraction": abnormal_fraction,
        "split_fractions": list(split_fractions),
        "min_frames": min_frames,
        "max_frames": max_frames,
    }

    def writer(out: Path) -> None:
        meta_rng = item_rng(seed, "echonet-meta", 0)
        names: list[str] = []
        while len(names) < num_videos:
            name = echonet_file_name(meta_rng)
            if name not in names:
                names.append(name)
        plan = _abnormality_plan(meta_rng, num_videos, abnormal_fraction)
        splits = assign_splits(meta_rng, num_videos, split_fractions)
        item = partial(
            _write_echonet_video,
            out=out,
            seed=seed,
            image_size=image_size,
            fps=fps,
            min_frames=min_frames,
            max_frames=max_frames,
        )
        rows = parallel_map(item, list(enumerate(zip(names, plan, splits))), len(names), "echonet", num_workers)
        tracings = [t for r in rows for t in r[0]]
        files = [r[1] for r in rows]
        truth = [r[2] for r in rows]
        pd.DataFrame(files, columns=FILELIST_COLUMNS).to_csv(out / "FileList.csv", index=False)
        pd.concat(tracings, ignore_index=True)[TRACING_COLUMNS].to_csv(out / "VolumeTracings.csv", index=False)
        pd.DataFrame(truth, columns=TRUTH_COLUMNS).to_csv(out / "SyntheticTruth.csv", index=False)

    return write_dataset(root, "echonet", params, writer)


def save_montage(echonet_root: str | Path, out_png: str | Path, num_videos: int = 4) -> Path:
    """A PNG montage of the traced ED (top row) and ES (bottom row) frames of the first ``num_videos`` videos.

    The mask rasterised from each tracing (:func:`~medssl_monai.data.tracings.tracing_mask`) is outlined, with the
    long axis, so a reader sees what the segmentation bundles learn from. Works on any EchoNet-layout folder.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medssl_monai.data.tracings import tracing_mask
    from medssl_monai.data.video import read_video

    root = Path(echonet_root)
    files = pd.read_csv(root / "FileList.csv").head(num_videos)
    tracings = pd.read_csv(root / "VolumeTracings.csv")
    fig = Figure(figsize=(1.9 * len(files), 4.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(files), squeeze=False)
    for col, row in enumerate(files.itertuples()):
        video = read_video(root / "Videos" / f"{row.FileName}.avi")
        rows = tracings[tracings["FileName"] == f"{row.FileName}.avi"]
        frames = list(dict.fromkeys(rows["Frame"]))  # first traced frame ES, last ED (EchoNet convention)
        for r, (phase, frame) in enumerate((("ED", frames[-1]), ("ES", frames[0]))):
            t = rows[rows["Frame"] == frame]
            x1, y1, x2, y2 = (t[k].to_numpy() for k in ("X1", "Y1", "X2", "Y2"))
            mask = tracing_mask(x1, y1, x2, y2, video.shape[1:3])
            ax = axes[r, col]
            ax.imshow(video[frame], interpolation="nearest")
            ax.contour(mask, levels=[0.5], colors=["#ff3b30"], linewidths=0.9)
            ax.plot([x1[0], x2[0]], [y1[0], y2[0]], color="#ffd60a", linewidth=0.7)
            ax.set_title(f"{phase} frame {frame}" + (f", EF {row.EF:.0f}%" if r == 0 else ""), fontsize=7, pad=2)
            ax.axis("off")
    fig.tight_layout(pad=0.3, h_pad=0.8)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
