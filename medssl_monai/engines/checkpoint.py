"""Crash-safe checkpoint writing and RNG states as plain tensors (loadable with ``weights_only=True``).

* :func:`atomic_torch_save`: ``torch.save`` to a temporary file in the target folder, ``fsync``, then
  ``os.replace``: a crash or a full disk while writing leaves the previous file intact.
* :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` (which writes in place, ``atomic=False``) with
  every file written by :func:`atomic_torch_save`, never of NaN weights, and final files only for a run that
  ended (not one that raised or was interrupted).
* :func:`rng_state_dict` / :func:`load_rng_state_dict`: the python, numpy and torch (CPU and CUDA) generator
  states as tensors and numbers only, so a checkpoint never needs pickled objects.
"""

from __future__ import annotations

import math
import os
import random
import re
import stat
import tempfile
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

from medssl_monai.engines.finite import before_checkpoint_write

__all__ = ["atomic_write", "atomic_torch_save", "AtomicCheckpointSaver", "rng_state_dict", "load_rng_state_dict"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write`` fills a temp file in the same folder, then ``fsync`` + ``os.replace``.

    Readers see the old file or the complete new one, never a partial one; on any error (disk full, kill)
    the temporary file (``.<name>.<random>.tmp``) is removed and the previous ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the usual umask-based permissions like a plain open()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not supported on every platform / file system)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_save_func(saver: AtomicCheckpointSaver, objects: Mapping[str, Any], pending: list[str]) -> Callable:
    """Replacement for ignite ``DiskSaver._save_func`` writing via ``atomic_torch_save``.

    Before writing, the trainer's :class:`~medssl_monai.engines.finite.NonFiniteGuard` (if any) and the
    finiteness of the weights in ``objects`` are checked (a diverged run raises, and the file keeps its previous
    content); after writing, the files the rotation dropped (``pending``) are deleted.
    """

    def save(handler: Any, checkpoint: Mapping, path: Path, func: Any) -> None:
        # this writer runs on one DDP rank only: no collective in the guard's check
        before_checkpoint_write(saver.engine, path, objects, collective=False)
        if func is torch.save:
            atomic_torch_save(checkpoint, path)
            os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)
        else:  # e.g. xla's save: keep ignite's behaviour
            func(checkpoint, path, **handler.kwargs)
        for name in pending:
            if name != Path(path).name:
                (Path(handler.dirname) / name).unlink(missing_ok=True)
        pending.clear()

    return save


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose final, key-metric and interval files are written atomically and never hold
    NaN weights; the final file only when the run ended.

    MONAI builds its ignite ``DiskSaver`` with ``atomic=False`` (to keep group read permission), so a kill
    during ``torch.save`` leaves a truncated ``model.pt``. This subclass keeps every argument of
    ``CheckpointSaver`` and

    * swaps the savers' write for :func:`atomic_torch_save` (permissions kept); a file the rotation drops
      (``n_saved``) is deleted after the new one is written, not before;
    * before every write consults the trainer's :class:`~medssl_monai.engines.finite.NonFiniteGuard` and checks
      that the modules' weights and the optimizer state are finite
      (:class:`~medssl_monai.errors.NonFiniteStateError` otherwise; the file keeps its previous content);
    * writes the final file (``save_final``) at ``COMPLETED`` only: when the run reached ``max_epochs`` or was
      stopped by ``terminate()`` (early stopping, the resume of a finished run). MONAI's saver also writes it on
      ``EXCEPTION_RAISED``: half-trained weights named like a finished model after a crash or Ctrl-C;
    * after a resume keeps the best-model file unless a validation beats the restored best score.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine: Engine | None = None  # set by attach (its guard is consulted before each write)
        self._key_metric_sign = -1.0 if kwargs.get("key_metric_negative_sign", False) else 1.0
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                handler = ckpt.save_handler
                pending: list[str] = []
                handler._save_func = types.MethodType(_atomic_save_func(self, ckpt.to_save, pending), handler)
                if getattr(handler, "filename", None) is not None:
                    # a fixed name (model.pt) is replaced atomically: ignite's remove-then-write would leave
                    # no file at all if killed in between
                    handler.remove = lambda filename: None
                else:  # deleted once the next file is written: a refused or failed write keeps the last one
                    handler.remove = pending.append

    def attach(self, engine: Engine) -> None:
        """``CheckpointSaver.attach`` plus, for the key-metric file, remembering a resumed run's best score."""
        self.engine = engine
        super().attach(engine)
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._remember_best)
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._remember_interval_files)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """Re-raise ``e`` without saving: weights of a run that failed are not a final model.

        It stays registered for ``EXCEPTION_RAISED`` (``CheckpointSaver.attach``): removing it would leave ignite an
        empty handler list for that event, and ignite then swallows the exception instead of raising it.
        """
        raise e

    def _remember_interval_files(self, engine: Engine) -> None:
        """After a resume, count the interval files the killed run left (``checkpoint_epoch=K.pt``) towards
        ``n_saved``, so the rotation deletes them as the uninterrupted run would (a fresh saver forgets them and
        one stale file would stay on disk for good). The newest ``n_saved`` are taken; a fresh start
        (iteration 0) adopts nothing, so files of an unrelated earlier run are never deleted."""
        ckpt = self._interval_checkpoint
        if ckpt._saved or not engine.state.iteration:
            return
        name = "checkpoint" if len(ckpt.to_save) > 1 else next(iter(ckpt.to_save))
        prefix = f"{ckpt.filename_prefix}_" if ckpt.filename_prefix else ""
        pattern = re.compile(re.escape(f"{prefix}{name}_{ckpt.score_name}=") + r"(\d+)\.pt")
        found = sorted(
            (int(m.group(1)), f.name)
            for f in Path(self.save_dir).glob("*.pt")
            if (m := pattern.fullmatch(f.name)) and int(m.group(1)) <= self._interval_step(engine)
        )
        for step, filename in found if ckpt.n_saved is None else found[-ckpt.n_saved :]:
            ckpt._saved.append(Checkpoint.Item(step, filename))

    def _interval_step(self, engine: Engine) -> int:
        return engine.state.epoch if self.epoch_level else engine.state.iteration

    def _remember_best(self, engine: Engine) -> None:
        """After a resume (``ResumeHandler`` restores the validator's ``best_metric``), seed the key-metric
        saver with that score so a worse validation does not overwrite the existing best-model file."""
        ckpt = self._key_metric_checkpoint
        filename = getattr(ckpt.save_handler, "filename", None)
        if ckpt._saved or filename is None or getattr(engine.state, "best_metric_epoch", -1) in (-1, None):
            return
        if (Path(self.save_dir) / filename).is_file():
            ckpt._saved.append(Checkpoint.Item(self._key_metric_sign * float(engine.state.best_metric), filename))


def rng_state_dict() -> dict[str, Any]:
    """The global python / numpy / torch RNG states as tensors and numbers (``weights_only``-loadable)."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": float("nan") if gauss is None else float(gauss),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def load_rng_state_dict(state: Mapping[str, Any]) -> None:
    """Restore the states written by :func:`rng_state_dict` (CUDA states only if the device count matches)."""
    gauss = state["python_gauss"]
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((int(state["python_version"]), py_state, None if math.isnan(gauss) else float(gauss)))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, int(state["numpy_pos"]), int(state["numpy_has_gauss"]), float(state["numpy_gauss"]))
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])
