"""Experiment tracking handlers: learning rate and image summaries for TensorBoard, quiet progress bars.

The bundles already log losses and validation metrics with MONAI's ``TensorBoardStatsHandler``;
these handlers add what it does not: the learning rate of every optimizer parameter group
(:class:`LearningRateLogger`, ignite's ``OptimizerParamsHandler`` behind the bundles' arguments), a few frames of
the input clip / mask / prediction / reconstruction of the *last* batch of an epoch
(:class:`TensorBoardClipImageHandler`) and an ignite progress bar that stays silent when stderr is not a terminal
(:func:`progress_bar`, so CI logs are not spammed). ``--tracking mlflow`` is
MONAI's own (``monai.bundle.run(..., tracking="mlflow")`` appends ``MLFlowHandler`` to ``train#handlers`` and
``validate#handlers``), see ``docs/tracking.md``.

Image handlers read ``engine.state.output`` at ``EPOCH_COMPLETED`` only: the copy to the host happens once per
epoch, never inside the training step, so no host-device synchronisation is added to the hot loop.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, TensorboardLogger

__all__ = [
    "LearningRateLogger",
    "TensorBoardClipImageHandler",
    "clip_frames_to_images",
    "mlflow_settings",
    "progress_bar",
]

logger = logging.getLogger(__name__)


def _writer(log_dir: str | None, summary_writer: Any | None) -> tuple[Any, bool]:
    """Returns ``(writer, owned)``; an owned writer is closed by the handler when the run completes."""
    if summary_writer is not None:
        return summary_writer, False
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir), True


class _GivenWriterLogger(TensorboardLogger):
    """Ignite's ``TensorboardLogger`` around an existing writer (its constructor always opens a new one)."""

    def __init__(self, writer: Any) -> None:  # no super().__init__: that would open a second SummaryWriter
        self.writer = writer

    def close(self) -> None:
        """Flushes only: whoever made the writer closes it."""
        self.writer.flush()


class LearningRateLogger:
    """Writes every optimizer parameter group's learning rate to TensorBoard (ignite's ``OptimizerParamsHandler``).

    Logged at every ``EPOCH_COMPLETED`` against the epoch (tags ``lr/group_{k}``) and, when
    ``iteration_interval > 0``, every ``iteration_interval`` iterations against the iteration (tags
    ``iteration/lr/group_{k}``, so the two x-axes stay apart); reading ``param_groups`` is a host-side float, so it
    costs no device sync. This class only keeps the bundle-facing arguments (a log folder or a given writer).

    Args:
        optimizer: the optimizer whose ``param_groups[k]["lr"]`` is logged (after ``LrScheduleHandler`` ran).
        log_dir: TensorBoard folder (ignored when ``summary_writer`` is given).
        summary_writer: an existing ``SummaryWriter``-like object (``add_scalar``).
        tag_name: optional tag prefix (``{tag_name}/lr/group_{k}``).
        iteration_interval: log every N iterations as well; 0 disables iteration logging.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        log_dir: str | None = "./runs",
        summary_writer: Any | None = None,
        tag_name: str | None = None,
        iteration_interval: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.log_dir = log_dir
        self._given_writer = summary_writer
        self.tag_name = tag_name
        self.iteration_interval = int(iteration_interval)
        self.writer: Any | None = None
        self._owned = False

    def attach(self, engine: Engine) -> None:
        """Attaches ``OptimizerParamsHandler`` at the epoch (and iteration) events; flushes every epoch."""
        self.writer, self._owned = _writer(self.log_dir, self._given_writer)
        tb = _GivenWriterLogger(self.writer)
        tb.attach(engine, OptimizerParamsHandler(self.optimizer, "lr", self.tag_name), Events.EPOCH_COMPLETED)
        if self.iteration_interval > 0:
            tag = f"{self.tag_name}/iteration" if self.tag_name else "iteration"
            tb.attach(
                engine,
                OptimizerParamsHandler(self.optimizer, "lr", tag),
                Events.ITERATION_COMPLETED(every=self.iteration_interval),
            )
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.writer.flush())  # visible while training
        engine.add_event_handler(Events.COMPLETED, self.close)

    def close(self, engine: Engine | None = None) -> None:
        """Flushes; closes the writer when this handler created it."""
        if self.writer is not None:
            self.writer.flush()
            if self._owned:
                self.writer.close()


def clip_frames_to_images(x: torch.Tensor, max_frames: int = 4, normalize: bool = True) -> torch.Tensor:
    """Picks up to ``max_frames`` evenly spaced frames of one sample as an ``N x C x H x W`` image batch in [0, 1].

    Accepted layouts of ``x`` (one sample, no batch axis): ``C x T x H x W`` (a clip), ``C x H x W`` (a frame or a
    2D super-image), ``H x W``. Channels other than 1 or 3 are reduced to the first one (TensorBoard shows grey
    or RGB only). With ``normalize`` every frame set is min-max scaled jointly (one scale for the whole clip, so
    frame-to-frame brightness and masked (zeroed) frames stay visible as such).

    Args:
        x: one sample.
        max_frames: the most frames to keep; frames ``round(linspace(0, T - 1, n))``.
        normalize: min-max scale to [0, 1] (otherwise values are clamped to [0, 1]).
    """
    x = x.detach().float().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]  # C x 1 x H x W
    if x.ndim != 4:
        raise ValueError(f"expected C x T x H x W, C x H x W or H x W, got shape {tuple(x.shape)}")
    if x.shape[0] not in (1, 3):
        x = x[:1]
    t = x.shape[1]
    n = max(1, min(int(max_frames), t))
    idx = torch.linspace(0, t - 1, n).round().long()
    frames = x[:, idx].permute(1, 0, 2, 3).contiguous()  # N x C x H x W
    if normalize:
        lo, hi = frames.min(), frames.max()
        frames = (frames - lo) / (hi - lo) if hi > lo else torch.zeros_like(frames)
    return frames.clamp(0.0, 1.0)


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor of a tensor / sequence / dict (TVRL two-view batches carry tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, Sequence) and not isinstance(value, str):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


class TensorBoardClipImageHandler:
    """Writes a few frames of the last batch of every epoch (or every ``interval`` epochs) to TensorBoard.

    At ``EPOCH_COMPLETED`` the handler reads ``engine.state.output`` (or ``engine.state.batch`` when
    ``from_batch``): for each ``key`` it takes sample 0, picks ``max_frames`` evenly spaced frames
    (:func:`clip_frames_to_images`) and calls ``add_images(f"{tag_prefix}/{key}", ...)`` with the engine epoch as
    step (for an evaluator run by ``ValidationHandler`` that is the trainer's epoch). ``activation`` maps a
    network output to an image (``"sigmoid"`` for segmentation logits). Keys that are missing, or values that are
    not image-like, are skipped with one debug log: a tracking summary must never stop a training run.

    Not MONAI's ``TensorBoardImageHandler``: it logs one batch image, one batch label and one output under fixed tags
    (``input_0``, ``input_1``, ``output``), with no per-key activation and not from decollated or two-view outputs,
    so it cannot show the reconstructions, targets and predictions the bundles log.

    Only attach it on rank 0 (``_disabled_: "@is_not_rank0"``).

    Args:
        keys: output (or batch) keys to show, e.g. ``["image", "label", "pred"]``.
        log_dir: TensorBoard folder (ignored when ``summary_writer`` is given).
        summary_writer: an existing ``SummaryWriter``-like object (``add_images``).
        tag_prefix: tag prefix (``"val"``, ``"train"``).
        max_frames: frames per clip.
        activations: per-key ``"sigmoid"``, ``"softmax"`` (first foreground channel) or ``None``.
        from_batch: read ``engine.state.batch`` (the raw uint8 loader output) instead of ``engine.state.output``.
        interval: log every N epochs.
        output_transform: optional callable mapping ``engine.state.output`` to the dict the keys index.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image",),
        log_dir: str | None = "./runs",
        summary_writer: Any | None = None,
        tag_prefix: str = "val",
        max_frames: int = 4,
        activations: dict[str, str | None] | None = None,
        from_batch: bool = False,
        interval: int = 1,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.keys = list(keys)
        self.log_dir = log_dir
        self._given_writer = summary_writer
        self.tag_prefix = tag_prefix
        self.max_frames = int(max_frames)
        self.activations = dict(activations or {})
        self.from_batch = bool(from_batch)
        self.interval = max(1, int(interval))
        self.output_transform = output_transform
        self.writer: Any | None = None
        self._owned = False
        self._warned: set[str] = set()

    def attach(self, engine: Engine) -> None:
        """Registers ``EPOCH_COMPLETED`` and closes an owned writer at ``COMPLETED``."""
        self.writer, self._owned = _writer(self.log_dir, self._given_writer)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _skip(self, key: str, why: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.debug("TensorBoardClipImageHandler: skipping %r (%s)", key, why)

    def _activate(self, key: str, x: torch.Tensor) -> torch.Tensor:
        act = self.activations.get(key)
        if act == "sigmoid":
            return torch.sigmoid(x)
        if act == "softmax":  # x: C x ...; show the first foreground class
            p = torch.softmax(x, dim=0)
            return p[1:2] if p.shape[0] > 1 else p
        return x

    def __call__(self, engine: Engine) -> None:
        """Logs the configured keys of sample 0 of the last batch."""
        if engine.state.epoch % self.interval:
            return
        source = engine.state.batch if self.from_batch else engine.state.output
        if self.output_transform is not None:
            source = self.output_transform(source)
        if isinstance(source, list) and source and isinstance(source[0], dict):  # decollated output
            source = source[0]
            take_first = False
        else:
            take_first = True
        if not isinstance(source, dict):
            self._skip("*", f"output is {type(source).__name__}, not a dict")
            return
        for key in self.keys:
            value = _first_tensor(source.get(key))
            if value is None:
                self._skip(key, "missing or not a tensor")
                continue
            sample = value[0] if take_first and value.ndim >= 3 else value
            try:
                images = clip_frames_to_images(self._activate(key, sample.detach().float()), self.max_frames)
            except ValueError as err:
                self._skip(key, str(err))
                continue
            self.writer.add_images(f"{self.tag_prefix}/{key}", images, engine.state.epoch, dataformats="NCHW")
        self.writer.flush()

    def close(self, engine: Engine | None = None) -> None:
        """Flushes; closes the writer when this handler created it."""
        if self.writer is not None:
            self.writer.flush()
            if self._owned:
                self.writer.close()


def progress_bar(persist: bool = False, disable: bool | None = None, **tqdm_kwargs: Any):
    """Ignite's ``ProgressBar`` (tqdm) for a trainer, silent when stderr is not a terminal.

    ``disable=None`` is tqdm's "auto": the bar is drawn on a TTY only, so CI logs and pytest stay clean. No
    ``output_transform`` is given on purpose: showing the loss would call ``.item()`` on every iteration
    (a host-device sync). Attach on rank 0 only.

    Args:
        persist: keep the finished bar on screen.
        disable: ``None`` = auto (TTY only), ``True`` = never, ``False`` = always.
        tqdm_kwargs: passed to ``tqdm``.
    """
    from ignite.handlers import ProgressBar

    return ProgressBar(persist=persist, disable=disable, **tqdm_kwargs)


def mlflow_settings(**configs: Any) -> dict:
    """MONAI's default MLflow tracking settings, fixed for trainers that do not decollate.

    ``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS`` logs the training loss with
    ``from_engine(['loss'], first=True)``, which returns a 1-tuple for a non-decollated output dict (our
    bundles use ``decollate: false``) and MLflow then fails with ``float() argument ... not 'tuple'``. This copy
    reads ``out['loss']`` instead; everything else (handler ids, SQLite store under ``output_dir``, config
    artifact) is MONAI's. Pass the result as ``monai.bundle.run(..., tracking=mlflow_settings())`` or write it
    to a file for the command line (``python -m medssl_monai.engines.tracking mlflow.json`` then
    ``--tracking mlflow.json``).

    Args:
        configs: overrides of the top-level ``configs`` entries (``tracking_uri``, ``experiment_name``, ...).
    """
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["trainer"]["output_transform"] = "$lambda out: out['loss']"
    settings["configs"].update(configs)
    return settings


if __name__ == "__main__":  # python -m medssl_monai.engines.tracking mlflow.json
    with open(sys.argv[1] if len(sys.argv) > 1 else "mlflow.json", "w") as f:
        json.dump(mlflow_settings(), f, indent=2)
