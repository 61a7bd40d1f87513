"""TVRL's linear probe: frozen encoder, re-initialised temporal CLS + linear head, dense test-time averaging.

Reference ``finetune.py`` of Shen et al., TVRL (MICCAI 2024):

- the backbone is frozen; the temporal CLS token is re-initialised (xavier) and trained together with a linear
  head on it. The reference's filter compares full parameter names with ``["cls_token",
  "downstream_cls_token"]``, so the per-frame ``spatio_encoder.cls_token`` stays frozen, as here (the trainable
  ``downstream_cls_token`` is never used in its forward pass); ``train_frame_cls=True`` trains it anyway;
- ``finetune=True`` trains the whole encoder instead (the reference's ``freeze_backbone=False``: its supervised
  baseline from random init, and fine-tuning a pretrained encoder), optionally at its own learning rate
  (:meth:`LinearProbe.param_groups`);
- AdamW (lr 1e-3 x bs/256, x5 for regression, wd 0.05), 10 warm-up epochs from lr/10, cosine, 100 epochs, early
  stopping (patience 15) on validation MAE / AUROC only;
- MSE for regression (reported as MAE, RMSE, R2), cross entropy for classification (AUROC, AP);
- test: dense sliding windows (the training clip: 8 frames, stride 2, step 1) over the whole video, logits
  averaged over windows;
- several seeds reported as mean +- std (the README says 5, the code runs 2; 5 here) at label
  fractions 1% and 100%.

The frozen encoder stays in eval mode (dropout off, BatchNorm statistics fixed), so neither its parameters nor
its buffers change; only ``requires_grad`` parameters reach the optimiser. The reference instead leaves the
frozen encoder in train mode (Lightning's ``model.train()``): its dropout (0.1) is on while the probe trains and
its conv-stem BatchNorm statistics keep moving with the probe's data.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.inferers import Inferer
from sklearn.metrics import average_precision_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from torch import nn
from torch.nn import functional as F

from medssl_monai.bundle_tools import load_state_dict
from medssl_monai.data.robust import BadSample, SkipCursor, attach_skipped_samples, skipped_summary
from medssl_monai.distributed import is_dist, world_size
from medssl_monai.engines.prepare import ClipPrepareBatch
from medssl_monai.engines.writers import StreamingCsv, sample_id

__all__ = [
    "LinearProbe",
    "load_encoder_weights",
    "TimedClipPrepareBatch",
    "ProbeLoss",
    "DenseClipInferer",
    "ProbeScore",
    "ProbeMetricsWriter",
    "probe_metrics",
    "probe_score",
    "summarize_runs",
    "format_mean_std",
    "label_mean",
    "run_linear_probe",
]

logger = logging.getLogger(__name__)
TASKS = ("regression", "classification")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a pretraining bundle's ``models/model.pt`` (a plain encoder state_dict) into ``encoder``.

    Also accepts a resumable checkpoint (``{"model": state_dict, ...}``) and method state_dicts whose keys start
    with ``encoder.`` (the :class:`~medssl_monai.methods.tvrl.TVRLPretraining` wrapper). Strict: a mismatch raises.
    """
    state = load_state_dict(path)
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    encoder.load_state_dict(state, strict=True)


class LinearProbe(nn.Module):
    """Frozen encoder -> re-initialised temporal CLS -> linear head (TVRL's linear probing), or fine-tuning.

    Args:
        encoder: a :class:`~medssl_monai.networks.spatiotemporal.SpatioTemporalEncoder` (anything with
            ``temporal.cls_token``, ``temporal.reset_cls_token()`` and ``out_features``).
        out_channels: 1 for regression, the number of classes for classification.
        pretrained_ckpt: encoder weights to load first (``None``: keep the encoder as built, e.g. random init).
        bias_init: initial head bias (e.g. the mean training label of a regression target, so the head does
            not spend its first epochs learning the offset).
        train_frame_cls: also train the per-frame CLS token (the reference keeps it frozen).
        reset_cls: re-initialise the temporal CLS (the reference does).
        finetune: train every encoder parameter, the encoder in train mode (dropout on, BatchNorm statistics
            updated): the reference's ``freeze_backbone=False``; with ``pretrained_ckpt=None`` the supervised
            baseline from random init.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int = 1,
        pretrained_ckpt: str | Path | None = None,
        bias_init: float | None = None,
        train_frame_cls: bool = False,
        reset_cls: bool = True,
        finetune: bool = False,
    ) -> None:
        super().__init__()
        if pretrained_ckpt:
            load_encoder_weights(encoder, pretrained_ckpt)
        if reset_cls:
            encoder.temporal.reset_cls_token()
        self.finetune = bool(finetune)
        for p in encoder.parameters():
            p.requires_grad_(self.finetune)
        encoder.temporal.cls_token.requires_grad_(True)
        if train_frame_cls:
            encoder.frame_encoder.cls_token.requires_grad_(True)
        self.encoder = encoder if self.finetune else encoder.eval()
        self.head = nn.Linear(encoder.out_features, out_channels)
        if bias_init is not None:
            nn.init.constant_(self.head.bias, float(bias_init))

    def train(self, mode: bool = True) -> LinearProbe:
        """Train the head; a frozen encoder always stays in eval mode (no dropout, fixed BatchNorm statistics)."""
        super().train(mode)
        if not self.finetune:
            self.encoder.eval()
        return self

    def param_groups(self, encoder_lr: float | None = None) -> list[dict[str, Any]]:
        """The trainable parameters as optimiser groups: the head and the temporal CLS (the optimiser's lr), then,
        when fine-tuning, the rest of the encoder (at ``encoder_lr`` if given, else the optimiser's lr)."""
        probe = [*self.head.parameters(), self.encoder.temporal.cls_token]
        ids = {id(p) for p in probe}
        rest = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": probe}]
        if rest:
            groups.append({"params": rest} if encoder_lr is None else {"params": rest, "lr": float(encoder_lr)})
        return groups

    def forward(
        self, x: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x C x T x H x W`` (+ times, frame mask) -> ``B x out_channels`` logits / values."""
        return self.head(self.encoder(x, times, frame_mask))


class TimedClipPrepareBatch(ClipPrepareBatch):
    """:class:`ClipPrepareBatch` that also passes ``times`` and ``frame_mask`` to the network when the batch has them.

    TVRL scales pixels to [0, 1] only: ``mean=0``, ``std=1`` by default. Labels come back ``float32``. With
    ``augment`` (e.g. :func:`~medssl_monai.transforms.tvrl.tvrl_probe_device_augmentation`) the ``uint8`` clips are
    augmented on the device, after the copy and before the scaling; the label is a value or a class, untouched.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        times_key: str = "times",
        mask_key: str = "frame_mask",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(image_key=image_key, label_key=label_key, mean=mean, std=std)
        self.times_key, self.mask_key = times_key, mask_key
        self.clip_augment = augment

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        if self.clip_augment is not None:
            image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
            batchdata = {**batchdata, self.image_key: self.clip_augment(image)}
        inputs, targets, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        if targets is not None:
            targets = targets.float()
        for name, key in (("times", self.times_key), ("frame_mask", self.mask_key)):
            if key in batchdata:
                extra[name] = torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking)
        return inputs, targets, args, extra


class ProbeLoss(nn.Module):
    """MSE on ``B x 1`` values (regression) or cross entropy on ``B x K`` logits (classification), as the reference."""

    def __init__(self, task: str = "regression") -> None:
        super().__init__()
        _check_task(task)
        self.task = task

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return F.mse_loss(pred.reshape(-1).float(), target.reshape(-1).float())
        return F.cross_entropy(pred.float(), target.reshape(-1).long())


class DenseClipInferer(Inferer):
    """TVRL's dense test: every window of ``num_frames`` frames at stride ``period`` (start step ``step``), outputs
    averaged over windows.

    Takes whole videos ``B x C x L x H x W`` (equal ``L`` in a batch; use batch size 1 for videos of different
    lengths). Window times are ``0, period, ...`` (relative, as in training); a video shorter than one window is
    zero-padded with ``frame_mask`` ``False`` on the padding. If ``times`` are passed (a timed series already cut
    to one window), the network is called once, as MONAI's ``SimpleInferer``.

    Args:
        num_frames: frames per window (8).
        period: stride inside a window (2).
        step: start-to-start step (1: every window, the reference; larger is faster).
        sw_batch_size: windows per network call.
    """

    def __init__(self, num_frames: int = 8, period: int = 2, step: int = 1, sw_batch_size: int = 32) -> None:
        super().__init__()
        if min(num_frames, period, step, sw_batch_size) < 1:
            raise ValueError("num_frames, period, step and sw_batch_size must be positive")
        self.num_frames, self.period, self.step, self.sw_batch_size = num_frames, period, step, sw_batch_size

    def window_starts(self, length: int) -> list[int]:
        span = (self.num_frames - 1) * self.period + 1
        return list(range(0, max(length - span, 0) + 1, self.step))

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if kwargs.get("times") is not None:
            return network(inputs, *args, **kwargs)
        b, c, length = inputs.shape[:3]
        span = (self.num_frames - 1) * self.period + 1
        valid = torch.ones(length, dtype=torch.bool, device=inputs.device)
        if length < span:  # zero frames past the end, masked out of the attention
            pad = span - length
            inputs = torch.cat([inputs, inputs.new_zeros((b, c, pad, *inputs.shape[3:]))], dim=2)
            valid = torch.cat([valid, torch.zeros(pad, dtype=torch.bool, device=inputs.device)])
        offsets = torch.arange(self.num_frames, device=inputs.device) * self.period
        times = offsets.float()
        starts = self.window_starts(inputs.shape[2])
        total = None
        for i in range(0, len(starts), self.sw_batch_size):
            chunk = starts[i : i + self.sw_batch_size]
            idx = torch.tensor(chunk, device=inputs.device)[:, None] + offsets  # W x T
            windows = inputs[:, :, idx]  # B x C x W x T x H x W
            windows = windows.permute(0, 2, 1, 3, 4, 5).reshape(b * len(chunk), c, self.num_frames, *inputs.shape[3:])
            mask = valid[idx].repeat(b, 1)
            out = network(windows, times.expand(b * len(chunk), -1), mask)
            out = out.reshape(b, len(chunk), -1).sum(1)
            total = out if total is None else total + out
        return total / len(starts)


def _probabilities(pred: np.ndarray) -> np.ndarray:
    """Positive-class probability from ``N x 2`` logits (softmax) or ``N``/``N x 1`` logits (sigmoid)."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 2 and pred.shape[1] == 2:
        z = pred - pred.max(1, keepdims=True)
        e = np.exp(z)
        return e[:, 1] / e.sum(1)
    if pred.ndim == 2 and pred.shape[1] > 2:
        raise ValueError("AUROC/AP here are binary; got more than 2 logits")
    return 1.0 / (1.0 + np.exp(-pred.reshape(-1)))


def probe_metrics(task: str, y_true: Sequence[float] | np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Regression: ``mae``, ``rmse``, ``r2``; classification (binary): ``auroc``, ``ap`` (NaN with one class)."""
    _check_task(task)
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    if task == "regression":
        p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
        r2 = float(r2_score(y, p)) if len(y) > 1 else float("nan")
        return {"mae": float(mean_absolute_error(y, p)), "rmse": math.sqrt(mean_squared_error(y, p)), "r2": r2}
    prob = _probabilities(y_pred)
    if len(np.unique(y)) < 2:
        return {"auroc": float("nan"), "ap": float("nan")}
    return {"auroc": float(roc_auc_score(y, prob)), "ap": float(average_precision_score(y, prob))}


def probe_score(task: str, y_true: Sequence[float] | np.ndarray, y_pred: np.ndarray) -> float:
    """One higher-is-better number for model selection and early stopping: ``-MAE`` or AUROC (0.5 if undefined)."""
    m = probe_metrics(task, y_true, y_pred)
    if task == "regression":
        return -m["mae"]
    return 0.5 if math.isnan(m["auroc"]) else m["auroc"]


class ProbeScore(Metric):
    """Ignite metric of :func:`probe_score` over an epoch (``output_transform`` gives ``(pred, label)`` batches)."""

    def __init__(self, task: str = "regression", output_transform: Callable = lambda x: x, device="cpu") -> None:
        _check_task(task)
        self.task = task
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._pred: list[np.ndarray] = []
        self._true: list[np.ndarray] = []

    def update(self, output: Sequence[torch.Tensor]) -> None:
        pred, label = output
        pred = torch.stack(list(pred)) if isinstance(pred, (list, tuple)) else pred
        label = torch.stack(list(label)) if isinstance(label, (list, tuple)) else label
        self._pred.append(pred.detach().float().cpu().reshape(len(pred), -1).numpy())
        self._true.append(label.detach().float().cpu().reshape(-1).numpy())

    def compute(self) -> float:
        pred, true = np.concatenate(self._pred), np.concatenate(self._true)
        if is_dist() and world_size() > 1:  # partitions may differ in size: gather as objects
            parts: list = [None] * world_size()
            torch.distributed.all_gather_object(parts, (pred, true))
            pred, true = np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])
        return probe_score(self.task, true, pred)


class ProbeMetricsWriter:
    """Evaluator handler: collect every prediction, then compute :func:`probe_metrics` and write them as JSON.

    ``predictions.csv`` (next to the JSON: id, label, prediction, status, reason) is appended and flushed as each
    batch ends. Samples the loader left out because they could not be read (:mod:`medssl_monai.data.robust`) are
    rows with ``status`` ``skipped`` and the ``reason``, and are listed under ``skipped`` in the JSON; the metrics
    are computed on the samples that were read.

    Args:
        task: ``"regression"`` or ``"classification"``.
        output_file: the JSON file (also ``predictions.csv`` next to it, and ``roc.png`` for classification or
            ``scatter.png`` + ``bland_altman.png`` for regression).
        id_key: batch key of the sample ids written to the CSV.
    """

    def __init__(self, task: str, output_file: str | Path, id_key: str = "video_id") -> None:
        _check_task(task)
        self.task, self.output_file, self.id_key = task, Path(output_file), id_key
        self._skips = SkipCursor()
        self._csv: StreamingCsv | None = None

    def attach(self, engine: Engine) -> None:
        attach_skipped_samples(engine)  # the epoch ends where the data does when samples were left out
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        # COMPLETED: also after a pass in which nothing could be read (no EPOCH_COMPLETED then), to list the files
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine | None) -> None:
        self._pred, self._true, self._ids = [], [], []
        self.skipped: list[BadSample] = []
        self._skips.reset()
        if self._csv is not None and self._csv.opened:
            self._csv.close()
        self._csv = StreamingCsv(
            self.output_file.with_name("predictions.csv"), ["id", "label", "prediction", "status", "reason"]
        )

    def _value(self, pred: np.ndarray) -> np.ndarray:
        return pred[:, 0] if self.task == "regression" or pred.shape[1] == 1 else _probabilities(pred)

    def _append_skipped(self, engine: Engine | None) -> None:
        new = self._skips.take(engine)
        self.skipped += new
        if new:
            rows = [{"id": sample_id(s, self.id_key), "status": "skipped", "reason": s.reason} for s in new]
            self._csv.write(rows)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        pred, label = out["pred"], out["label"]
        self._pred.append(pred.detach().float().cpu().reshape(len(pred), -1).numpy())
        self._true.append(label.detach().float().cpu().reshape(-1).numpy())
        ids = engine.state.batch.get(self.id_key) if isinstance(engine.state.batch, Mapping) else None
        ids = [str(i) for i in ids] if ids is not None else [""] * len(pred)
        self._ids += ids
        self._append_skipped(engine)  # left out before this batch arrived (or within it): listed first
        rows = zip(ids, self._true[-1], self._value(self._pred[-1]))
        self._csv.write([{"id": i, "label": f"{t:.6g}", "prediction": f"{v:.6g}", "status": "ok"} for i, t, v in rows])

    def _write(self, engine: Engine) -> None:
        self._append_skipped(engine)
        self._csv.close()
        skipped = skipped_summary(self.skipped)
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        if not self._pred:
            self.output_file.write_text(json.dumps({"n": 0, "skipped": skipped}, indent=2))
            logger.warning("probe test: no sample could be read (%d skipped)", len(self.skipped))
            return
        pred, true = np.concatenate(self._pred), np.concatenate(self._true)
        metrics = probe_metrics(self.task, true, pred)
        metrics["n"] = len(true)
        metrics["skipped"] = len(self.skipped)  # could not be read: not in the metrics
        self.output_file.write_text(json.dumps({**metrics, "skipped_files": skipped["files"]}, indent=2))
        self._plot(true, self._value(pred))
        engine.state.metrics.update({f"test_{k}": v for k, v in metrics.items()})
        logger.info("probe test metrics: %s", metrics)

    def _plot(self, true: np.ndarray, value: np.ndarray) -> None:
        """``roc.png`` (classification) or ``scatter.png`` + ``bland_altman.png`` (regression) next to the JSON."""
        from medssl_monai.evaluation.plots import plot_bland_altman, plot_roc, plot_scatter

        out = self.output_file.parent
        if self.task == "classification":
            plot_roc({"linear probe": (true.astype(int), value)}, out / "roc.png", title="Linear probe, test")
        else:
            plot_scatter(true, value, out / "scatter.png", title="Linear probe, test")
            plot_bland_altman(true, value, out / "bland_altman.png", title="Linear probe, test")


def label_mean(datalist: Sequence[Mapping], key: str = "label") -> float:
    """Mean of ``item[key]`` over a datalist (the regression head's initial bias)."""
    values = [float(d[key]) for d in datalist]
    if not values:
        raise ValueError("empty datalist")
    return float(np.mean(values))


def summarize_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over runs (seeds); ``std`` is the sample std (ddof 1; 0 for one run)."""
    keys = [k for k in runs[0] if k != "n"] if runs else []
    out = {}
    for k in keys:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        v = v[~np.isnan(v)]
        out[k] = {
            "mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v)),
        }
    return out


def format_mean_std(stats: Mapping[str, float], digits: int = 3) -> str:
    """``"mean ± std"`` of one :func:`summarize_runs` entry."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def run_linear_probe(
    bundle_dir: str | Path,
    work_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    label_fractions: Sequence[float] = (0.01, 1.0),
    config_files: Sequence[str] = ("train.yaml",),
    eval_config: str = "evaluate.yaml",
    **overrides: Any,
) -> dict[float, dict[str, Any]]:
    """Train and test the probe bundle once per seed and label fraction; mean +- std over seeds.

    Each run is a ``ConfigWorkflow`` of ``configs/<config_files>`` (train) then ``+ eval_config`` (test) with
    ``seed``, ``label_fraction``, ``bundle_root`` (``work_dir/frac<f>_seed<s>``) and ``overrides`` (e.g.
    ``pretrained_ckpt``, ``dataset_dir``); its test metrics are read from ``<bundle_root>/eval/metrics.json``.

    Returns:
        ``{fraction: {"runs": [metrics per seed], "summary": summarize_runs(runs)}}``.
    """
    from monai.bundle import ConfigWorkflow

    configs = [str(Path(bundle_dir) / "configs" / c) for c in config_files]
    evaluate = str(Path(bundle_dir) / "configs" / eval_config)
    results: dict[float, dict[str, Any]] = {}
    for fraction in label_fractions:
        runs = []
        for seed in seeds:
            root = Path(work_dir) / f"frac{fraction:g}_seed{seed}"
            root.mkdir(parents=True, exist_ok=True)
            kw = {"bundle_root": str(root), "seed": seed, "label_fraction": fraction, **overrides}
            for files, kind in ((configs, "train"), ([*configs, evaluate], "eval")):
                wf = ConfigWorkflow(config_file=files, workflow_type=kind, **kw)
                wf.initialize()
                wf.run()
                wf.finalize()
            runs.append(json.loads((root / "eval" / "metrics.json").read_text()))
        results[fraction] = {"runs": runs, "summary": summarize_runs(runs)}
    return results
