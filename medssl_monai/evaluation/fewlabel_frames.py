"""Few-label frame classification on a labelled ultrasound set: UCL's headline claim in the representation benchmark.

UCL (Basu et al., MICCAI 2022, Sec. 3) pretrains a frame encoder contrastively on unlabelled ultrasound videos and
reports frame classification on a *different*, labelled dataset of the same domain (GBUSV -> GBCU). The benchmark
mirrors that: the encoder is pretrained on one set of synthetic sweeps and probed on a second, independently drawn
labelled set, split by video into TRAIN and evaluation halves (stratified by class). A frozen-feature linear probe
is fitted on the frames of a few labelled TRAIN videos per class (several draws) and scored by frame accuracy on
every evaluation frame.

Frame accuracy is a ratio of sums over videos (correct frames / frames), so the paired bootstrap resamples videos
once per resample and scores both rows, every draw, on that same resample (:func:`paired_frame_accuracy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medssl_monai.evaluation.protocol import LOGISTIC_CS

__all__ = [
    "stratified_video_split",
    "load_video_frames",
    "embed_frames",
    "thumbnail_features",
    "labelled_draws",
    "fit_predict_frames",
    "frame_accuracy",
    "paired_frame_accuracy",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def stratified_video_split(labels: Sequence[int], eval_fraction: float, seed: int) -> np.ndarray:
    """``"TRAIN"`` / ``"TEST"`` per video: ``eval_fraction`` of each class's videos (rounded) go to TEST."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    split = np.full(len(y), "TRAIN", dtype=object)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        split[idx[: int(round(eval_fraction * len(idx)))]] = "TEST"
    return split.astype(str)


def load_video_frames(folder: str | Path, frames_per_video: int, size: int) -> np.ndarray:
    """``frames_per_video x size x size`` grey ``uint8``: evenly spaced frames of one frame folder, area-resized.

    Only the chosen frames are decoded (a few per video, not the whole sweep).

    Raises:
        ValueError: the folder holds fewer images than ``frames_per_video`` (names the folder).
    """
    from medssl_monai.opencv import import_cv2

    cv2 = import_cv2()
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(files) < frames_per_video:
        raise ValueError(f"{folder}: {len(files)} frames, need at least {frames_per_video}")
    picks = np.linspace(0, len(files) - 1, frames_per_video).round().astype(int)
    out = []
    for i in picks:
        img = cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{files[i]}: not a readable image")
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


@torch.no_grad()
def embed_frames(fn: Callable[[torch.Tensor], torch.Tensor], frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``N x D`` features of ``N x S x S`` grey ``uint8`` frames, each passed to ``fn`` as a one-frame clip
    (``B x 1 x 1 x S x S``, the :class:`~medssl_monai.encoders.ClipEncoder` layout)."""
    out = [
        fn(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size]))[:, None, None]).float().cpu().numpy()
        for i in range(0, len(frames), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def thumbnail_features(frames: np.ndarray, grid: int = 8) -> np.ndarray:
    """The pixel control: every frame area-averaged to ``grid x grid`` grey levels in ``[0, 1]`` (nothing learnt)."""
    n, h, w = frames.shape
    if h % grid or w % grid:
        raise ValueError(f"frame size {h} x {w} is not a multiple of grid {grid}")
    x = frames.astype(np.float32).reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4))
    return x.reshape(n, grid * grid) / 255.0


def labelled_draws(
    labels: Sequence[int], split: Sequence[str], videos_per_class: int | None, draws: int, seed: int
) -> list[np.ndarray]:
    """Indices of the labelled TRAIN videos of each draw: ``videos_per_class`` per class (``None``: every TRAIN
    video, one draw). The draws are the same for every row (they depend on ``seed`` only)."""
    y = np.asarray(labels, dtype=np.int64)
    train = np.flatnonzero(np.asarray(split) == "TRAIN")
    if videos_per_class is None:
        return [train]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        pick = []
        for c in np.unique(y[train]):
            pool = train[y[train] == c]
            if len(pool) < videos_per_class:
                raise ValueError(f"class {c}: {len(pool)} TRAIN videos, fewer than videos_per_class={videos_per_class}")
            pick.append(rng.choice(pool, videos_per_class, replace=False))
        out.append(np.sort(np.concatenate(pick)))
    return out


def fit_predict_frames(
    x: np.ndarray,
    frame_labels: np.ndarray,
    frame_video: np.ndarray,
    train_videos: np.ndarray,
    eval_videos: np.ndarray,
    seed: int = 0,
    n_splits: int = 5,
) -> tuple[np.ndarray, dict]:
    """Fit a standardised multinomial logistic regression on the frames of ``train_videos`` (``C`` by CV with
    folds grouped by video and stratified by class) and predict the class of every frame of ``eval_videos``.

    Returns:
        the predicted classes of the evaluation frames (in frame order) and ``{"C", "cv_accuracy"}``.
    """
    tr = np.isin(frame_video, train_videos)
    ev = np.isin(frame_video, eval_videos)
    y = np.asarray(frame_labels, dtype=np.int64)
    per_class = min(len(np.unique(frame_video[tr & (y == c)])) for c in np.unique(y[tr]))
    folds = min(n_splits, per_class)
    if folds < 2:
        raise ValueError(f"need at least 2 labelled videos per class, got {per_class}")
    model = Pipeline([("scale", StandardScaler()), ("m", LogisticRegression(max_iter=5000, random_state=seed))])
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(model, {"m__C": list(LOGISTIC_CS)}, scoring="accuracy", cv=cv, error_score=np.nan)
    search.fit(np.asarray(x[tr], dtype=np.float64), y[tr], groups=frame_video[tr])
    pred = search.best_estimator_.predict(np.asarray(x[ev], dtype=np.float64))
    return pred, {"C": float(search.best_params_["m__C"]), "cv_accuracy": float(search.best_score_)}


def _per_video_sums(correct: np.ndarray, frame_video: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(D x V correct frames, V frames)`` of each evaluation video (``correct``: ``D draws x N frames``)."""
    pos = {v: i for i, v in enumerate(videos.tolist())}
    col = np.array([pos[v] for v in frame_video.tolist()])
    hits = np.zeros((correct.shape[0], len(videos)))
    for d in range(correct.shape[0]):
        hits[d] = np.bincount(col, weights=correct[d].astype(np.float64), minlength=len(videos))
    return hits, np.bincount(col, minlength=len(videos)).astype(np.float64)


def frame_accuracy(correct: np.ndarray) -> float:
    """Frame accuracy averaged over draws (``correct``: ``D x N`` booleans)."""
    return float(np.asarray(correct, dtype=np.float64).mean())


def paired_frame_accuracy(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    frame_video: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict:
    """Frame accuracy of rows ``a`` and ``b`` (mean over their draws) and the paired bootstrap interval of ``a - b``.

    Every resample draws the evaluation videos with replacement once; both rows and all their draws are scored on
    it (accuracy = correct frames / frames of the resampled videos).

    Args:
        correct_a, correct_b: ``D x N`` booleans, draw ``d`` of row ``a`` right on frame ``n`` (same frame order).
        frame_video: ``N`` video ids of the frames.
    """
    a = np.atleast_2d(np.asarray(correct_a))
    b = np.atleast_2d(np.asarray(correct_b))
    if a.shape[1] != b.shape[1] or a.shape[1] != len(frame_video):
        raise ValueError(f"need aligned frames, got {a.shape}, {b.shape}, {len(frame_video)}")
    videos = np.unique(frame_video)
    hits_a, frames = _per_video_sums(a, frame_video, videos)
    hits_b, _ = _per_video_sums(b, frame_video, videos)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(videos), size=(n_resamples, len(videos)))
    n = frames[idx].sum(axis=1)  # R
    acc_a = hits_a[:, idx].sum(axis=2).mean(axis=0) / n
    acc_b = hits_b[:, idx].sum(axis=2).mean(axis=0) / n
    q = [(1 - confidence_level) / 2 * 100, (1 + confidence_level) / 2 * 100]

    def ci(v: np.ndarray) -> list[float]:
        return [float(x) for x in np.percentile(v, q)]

    est_a, est_b = frame_accuracy(a), frame_accuracy(b)
    return {
        "a": est_a,
        "b": est_b,
        "diff": est_a - est_b,
        "diff_ci95": ci(acc_a - acc_b),
        "a_ci95": ci(acc_a),
        "b_ci95": ci(acc_b),
        "n_videos": int(len(videos)),
        "n_frames": int(len(frame_video)),
    }


def fewlabel_rows(
    features: Mapping[str, np.ndarray],
    frame_labels: np.ndarray,
    frame_video: np.ndarray,
    split_by_video: Mapping[str, str],
    settings: Mapping[str, int | None],
    draws: int,
    seed: int = 0,
) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """Every row under every labelled-video setting: ``({row: {setting: {"accuracy", "draws": [...]}}}, {row:
    {setting: D x N_eval correct}})``.

    Args:
        features: row -> ``N x D`` frame features (the same frames in the same order for every row).
        split_by_video: video id -> ``TRAIN`` / ``TEST``.
        settings: name -> labelled TRAIN videos per class (``None``: all TRAIN videos).
    """
    videos = np.array(sorted(split_by_video))
    v_label = {}
    for v, y in zip(frame_video.tolist(), np.asarray(frame_labels).tolist()):
        v_label.setdefault(v, y)
    v_split = np.array([split_by_video[v] for v in videos])
    v_y = np.array([v_label[v] for v in videos])
    eval_videos = videos[v_split == "TEST"]
    ev = np.isin(frame_video, eval_videos)
    results: dict[str, dict] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name, per_class in settings.items():
        picks = labelled_draws(v_y, v_split, per_class, draws, seed)
        for row, x in features.items():
            hits, info = [], []
            for p in picks:
                pred, meta = fit_predict_frames(x, frame_labels, frame_video, videos[p], eval_videos, seed=seed)
                hits.append(pred == np.asarray(frame_labels)[ev])
                info.append({**meta, "accuracy": float(hits[-1].mean()), "train_videos": int(len(p))})
            c = np.stack(hits)
            correct.setdefault(row, {})[name] = c
            results.setdefault(row, {})[name] = {"accuracy": frame_accuracy(c), "draws": info}
    return results, correct
