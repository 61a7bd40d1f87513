"""Exact resume after a crash (SIGKILL mid-epoch): iteration-level atomic checkpoints and a data fast-forward.

:class:`ResumeHandler` is attached to a bundle's trainer in ``run`` (config keys ``resume`` and
``checkpoint_every``). It

1. reseeds python / numpy / torch and the dataset's random transforms (``monai.data.utils.set_rnd``) at every
   ``EPOCH_STARTED`` from ``(seed, epoch)``, before ignite creates the epoch's DataLoader iterator, so an epoch's
   sampler order and augmentation draws depend on the seed and the epoch only, not on what ran before;
2. writes ``<save_dir>/<filename>`` every ``checkpoint_every`` iterations and at every epoch end with
   :func:`~medssl_monai.engines.checkpoint.atomic_torch_save`: the ``state_dict`` of every object in
   ``save_dict`` (the network or whole SSL method module with its EMA teacher, queues and prototypes; the
   optimizer; the LR scheduler; ...), ``trainer.state_dict()`` (iteration, epoch length, max epochs), the global
   RNG states as tensors (under DDP every rank's, gathered into the one file, and the world size), and the
   validator's best metric;
3. on ``attach`` with ``resume=True`` loads that file with ``torch.load(weights_only=True)``, restores the
   trainer counters (``Engine.load_state_dict``), at ``STARTED`` every object (ignite ``Checkpoint.load_objects``,
   after any ``pretrained_ckpt`` loader so the resumed weights win), and, if
   the crash was mid-epoch, replays that epoch's first batches (same seed -> same sampler order and transform
   draws, batches discarded without a training step) and then restores the saved RNG states, so the next batch,
   masks and dropout are the ones the uninterrupted run used.

The checkpoint also holds the run record (:mod:`~medssl_monai.engines.run_record`: the resolved settings that
define the run); a file of a run with other settings stops the run before training (exit status 2 on a command
line) naming each difference. The previous checkpoint is kept as ``<filename>.prev``: a damaged file (empty,
truncated, not a checkpoint) is named with what is wrong and that one is resumed instead
(:mod:`~medssl_monai.engines.resume_files`). Temporary files of interrupted writes in ``save_dir`` are removed at
start, and every model file the run writes there gets its record as ``<model file>.json``.

Exactness holds on the CPU with ``num_workers=0`` or non-persistent workers (workers are re-seeded per epoch
from the reseeded torch RNG). With ``persistent_workers=True`` the workers' transform RNGs carry over epochs and
are not in the checkpoint: the data order is still exact, augmentation draws after a resume are not, unless the
workers hold no such state: per-sample seeded windows (:class:`~medssl_monai.data.seeded.SeededSamples`) and the
augmentation on the device (:class:`~medssl_monai.transforms.device.DeviceAugmentation` in ``save_dict``), as
the UniLVSeg bundles do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from medssl_monai.distributed import all_gather_object, check_resume_world_size, check_same_resume_iteration
from medssl_monai.distributed import rank as dist_rank
from medssl_monai.distributed import world_size as dist_world_size
from medssl_monai.engines.checkpoint import atomic_torch_save, load_rng_state_dict, rng_state_dict
from medssl_monai.engines.finite import before_checkpoint_write
from medssl_monai.engines.resume_files import (
    DamagedCheckpointError,
    keep_previous,
    read_resume_file,
    remove_stale_temp_files,
)
from medssl_monai.engines.run_record import ModelRecordWriter, check_resume_record, current_run_record, stop_run

__all__ = ["ResumeHandler", "EarlyStopState", "epoch_seed", "seed_everything"]

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 31-bit seed for ``epoch`` of a run seeded with ``seed`` (numpy ``SeedSequence``).

    ``rank`` enters the mix so that, under DDP, ranks draw different augmentations and masks.
    """
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int, dataset: Any = None) -> None:
    """Seed python, numpy and torch (CPU and CUDA) and the random transforms reachable from ``dataset``."""
    import random

    from monai.data.utils import set_rnd

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if dataset is not None:
        set_rnd(dataset, seed)


class _FastForward:
    """Iterable over ``loader`` that skips its first ``skip`` batches, then restores the saved RNG states."""

    def __init__(self, loader: Any, skip: int, rng: Mapping[str, Any] | None) -> None:
        self.loader, self.skip, self.rng = loader, skip, rng

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        for _ in range(self.skip):  # loads and discards: consumes the same sampler / transform draws
            next(it)
        if self.rng is not None:
            load_rng_state_dict(self.rng)
        return it


class EarlyStopState:
    """``state_dict`` / ``load_state_dict`` of a MONAI ``EarlyStopHandler`` (for a ``ResumeHandler`` save_dict).

    The handler's ignite ``EarlyStopping`` (made by ``set_trainer``) counts validations without improvement; without
    this a resumed run restarts that count and can train for more epochs than the uninterrupted run. The state is
    saved as plain numbers (a numpy score would not load with ``weights_only=True``).

    Args:
        handler: the ``EarlyStopHandler``; its ``set_trainer`` must run before the trainer starts (bundles call it
            in ``run``), the state is restored at ``STARTED``.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def _stopper(self) -> Any:
        stopper = getattr(self.handler, "_handler", None)  # MONAI keeps the ignite handler here
        if stopper is None:
            raise RuntimeError("EarlyStopState: call the EarlyStopHandler's set_trainer() before the trainer starts")
        return stopper

    def state_dict(self) -> dict[str, Any]:
        """``counter`` and ``best_score`` (NaN: no validation yet)."""
        stopper = self._stopper()
        best = stopper.best_score
        return {"counter": int(stopper.counter), "best_score": float("nan") if best is None else float(best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counter and best score written by :meth:`state_dict`."""
        stopper = self._stopper()
        best = float(state["best_score"])
        stopper.counter = int(state["counter"])
        stopper.best_score = None if np.isnan(best) else best


class ResumeHandler:
    """Iteration-level atomic checkpoint + exact resume for an ignite / MONAI trainer (see module docstring).

    Args:
        save_dir: folder of the resume checkpoint (the bundle's ``ckpt_dir``).
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network or method, optimizer,
            lr_scheduler, ...). The trainer itself is added by :meth:`attach`; do not list it.
        seed: the run's seed; epoch ``e`` is seeded with :func:`epoch_seed` ``(seed, e)``.
        resume: load ``save_dir/filename`` on attach when it exists.
        checkpoint_every: also checkpoint every this many iterations (0: only at epoch ends).
        filename: checkpoint file name.
        save: write checkpoints (``False`` on non-zero DDP ranks); resume loading happens regardless. Under DDP
            every rank attaches the handler: saving gathers the ranks' RNG states and loading checks that all
            ranks resume from the same iteration (collectives).
        evaluator: optional validator whose ``best_metric``/``best_metric_epoch`` are saved and restored.
        reseed_each_epoch: reseed at each ``EPOCH_STARTED`` (required for an exact mid-epoch resume).
        run_record: what defines the run (:func:`~medssl_monai.engines.run_record.build_run_record`), saved in the
            checkpoint and compared on resume; ``"auto"``: from the bundle config that builds this handler
            (``None`` outside one); ``None``: none (not checked).
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        seed: int = 0,
        resume: bool = True,
        checkpoint_every: int = 0,
        filename: str = "resume.pt",
        save: bool = True,
        evaluator: Any = None,
        reseed_each_epoch: bool = True,
        run_record: Mapping[str, Any] | str | None = "auto",
    ) -> None:
        if "trainer" in save_dict:
            raise ValueError("ResumeHandler: save_dict must not contain 'trainer' (the attached engine is added)")
        if int(checkpoint_every) < 0:
            raise ValueError(f"ResumeHandler: checkpoint_every must be >= 0, got {checkpoint_every}")
        self.path = Path(save_dir) / filename
        self.prev_path = self.path.with_name(self.path.name + ".prev")  # the checkpoint before the last one
        if isinstance(run_record, str):
            if run_record != "auto":
                raise ValueError(f"ResumeHandler: run_record must be a mapping, 'auto' or None, got {run_record!r}")
            run_record = current_run_record()
        self.run_record: dict[str, Any] | None = None if run_record is None else dict(run_record)
        self._keep_previous = True  # False after resuming from .prev: the damaged file is not kept as previous
        self.save_dict = dict(save_dict)
        self.seed = int(seed)
        self.resume = bool(resume)
        self.checkpoint_every = int(checkpoint_every)
        self.save_enabled = bool(save)
        self._model_records = (
            ModelRecordWriter(save_dir, self.run_record) if self.run_record is not None and self.save_enabled else None
        )
        self.evaluator = evaluator
        self.reseed_each_epoch = bool(reseed_each_epoch)
        self.resumed_from: int | None = None  # iteration the run resumed from (None: fresh start)
        self._pending: tuple[int, Mapping[str, Any]] | None = None  # (batches to skip, RNG states)
        self._done_state: dict[str, int] | None = None
        self._loader: Any = None
        self._objects: Mapping[str, Any] | None = None

    # ---- attach / events -------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Load the checkpoint (if ``resume`` and present), then register the seeding and saving handlers."""
        if self.save_enabled:  # only the writing rank: another rank's live temporary file looks the same
            remove_stale_temp_files(self.path.parent)
        if self.resume and self.path.is_file():
            self.load(engine)
        elif self.resume and self.prev_path.is_file():
            logger.warning(
                f"resume: no {self.path.name} but {self.prev_path} exists: starting over (to resume from it, rename "
                f"it to {self.path.name})"
            )
        # every rank, also a fresh start: a rank that read another file (or none) would train from another point
        check_same_resume_iteration(self.resumed_from, self.path)
        if self._model_records is not None:
            self._model_records.snapshot()  # model files already there are an earlier run's until rewritten
            engine.add_event_handler(Events.COMPLETED, self._model_records.update)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.checkpoint_every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.checkpoint_every), self._iteration_completed)

    def _started(self, engine: Engine) -> None:
        if self._objects is not None:
            Checkpoint.load_objects(to_load=self.save_dict, checkpoint=self._objects)
            self._objects = None
        if self._done_state is not None:  # the checkpoint is of a finished run: nothing left to train
            engine.state.iteration = self._done_state["iteration"]
            engine.state.epoch = self._done_state["epoch"]
            logger.info(f"resume: {self.path} is of a finished run (epoch {engine.state.epoch}); nothing to do")
            engine.terminate()

    def _epoch_started(self, engine: Engine) -> None:
        if self._loader is None:
            self._loader = engine.state.dataloader
        if self.reseed_each_epoch:
            seed = epoch_seed(self.seed, engine.state.epoch, dist_rank())
            seed_everything(seed, getattr(self._loader, "dataset", None))
        if self._pending is not None:
            skip, rng = self._pending
            self._pending = None
            if skip > 0:
                # ignite starts this epoch's counter at `skip` (Engine.load_state_dict) but from a fresh
                # iterator: feed it one that first replays the `skip` batches the crashed run consumed
                engine.state.dataloader = _FastForward(self._loader, skip, rng)

    def _epoch_completed(self, engine: Engine) -> None:
        if engine.state.dataloader is not self._loader and self._loader is not None:
            engine.state.dataloader = self._loader  # the next epoch's iterator comes from the real loader
        self.save(engine)

    def _iteration_completed(self, engine: Engine) -> None:
        if engine.state.epoch_length and engine.state.iteration % engine.state.epoch_length == 0:
            return  # the epoch-end checkpoint (after validation) follows
        self.save(engine)

    # ---- save / load -----------------------------------------------------------------------------------
    def state_dict(self, engine: Engine, rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue: objects' state_dicts, trainer counters, RNG states, best metric.

        ``rng_ranks``: every rank's RNG states, in rank order (:meth:`save` gathers them under DDP); stored when
        there are several, so that each rank resumes its own random streams.
        """
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "objects": {k: v.state_dict() for k, v in self.save_dict.items()},
            "trainer": {k: int(v) for k, v in engine.state_dict().items() if v is not None},
            "rng": rng_state_dict(),
            "seed": self.seed,
            "world_size": dist_world_size(),
        }
        if rng_ranks is not None and len(rng_ranks) > 1:
            state["rng_ranks"] = rng_ranks
        if self.run_record is not None:
            state["run_record"] = self.run_record
        if self.evaluator is not None:
            best = getattr(self.evaluator.state, "best_metric", None)
            state["evaluator"] = {
                "best_metric": float(best) if best is not None else float("nan"),
                "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
            }
        return state

    def save(self, engine: Engine) -> None:
        """Write the checkpoint atomically (a crash while writing keeps the previous one), keep the one it
        replaces as ``<filename>.prev``, and write the record of any model file written since the last save.

        Under DDP every rank calls it (a collective gathers the ranks' RNG states into the one file, so all of them
        are of the same iteration however a crash interleaves with the write); only ``save=True`` writes.

        A diverged run (a NaN loss so far, NaN weights) raises first: the file keeps the last finite state."""
        before_checkpoint_write(engine, self.path, self.save_dict)  # every rank: all of them stop together
        rng_ranks = all_gather_object(rng_state_dict())
        if self.save_enabled:
            if self._keep_previous:
                keep_previous(self.path, self.prev_path)
            self._keep_previous = True
            atomic_torch_save(self.state_dict(engine, rng_ranks), self.path)
            if self._model_records is not None:
                self._model_records.update(engine)

    def _read(self) -> dict[str, Any]:
        """The checkpoint in ``self.path`` or, when that file is damaged, in ``self.prev_path`` (with a warning).

        Stops the run (exit status 2 on a command line, else :class:`DamagedCheckpointError`) naming both files
        and what is wrong when neither can be used.
        """
        try:
            return read_resume_file(self.path)
        except DamagedCheckpointError as e:
            damaged = e
        if not self.prev_path.is_file():
            previous = f"{self.prev_path} does not exist"
        else:
            try:
                ckpt = read_resume_file(self.prev_path)
            except DamagedCheckpointError as e:
                previous = str(e)
            else:
                logger.warning(f"resume: {damaged}; resuming from the previous checkpoint {self.prev_path} instead")
                self._keep_previous = False
                return ckpt
        stop_run(
            DamagedCheckpointError(
                self.path,
                f"{damaged.problem}, and there is no usable previous checkpoint ({previous}); cannot resume. "
                f"Delete {self.path} or add --resume False to start over.",
            )
        )
        raise AssertionError("unreachable")  # stop_run always raises

    def load(self, engine: Engine) -> None:
        """Restore objects, counters and RNG from ``self.path`` (``weights_only=True``: no code runs)."""
        ckpt = self._read()
        if ckpt.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: unknown resume checkpoint format {ckpt.get('format_version')!r}")
        # first: another world size also changes the epoch length, whose check would hide the real cause
        check_resume_world_size(ckpt.get("world_size"), self.path)
        # this rank's RNG states (files from before per-rank states hold rank 0's only)
        rng = ckpt["rng_ranks"][dist_rank()] if "rng_ranks" in ckpt else ckpt["rng"]
        check_resume_record(self.path, ckpt.get("run_record"), self.run_record)  # before anything is restored
        missing = sorted(set(self.save_dict) - set(ckpt["objects"]))
        if missing:
            raise KeyError(f"{self.path}: checkpoint lacks {missing} (it has {sorted(ckpt['objects'])})")
        # objects are restored at STARTED, after handlers attached earlier (e.g. a `pretrained_ckpt`
        # CheckpointLoader, which would otherwise overwrite the resumed weights with the initial ones)
        self._objects = ckpt["objects"]
        if int(ckpt.get("seed", self.seed)) != self.seed:
            logger.warning(f"resume: checkpoint seed {ckpt['seed']} != configured seed {self.seed}; using {self.seed}")
        max_epochs = engine.state.max_epochs
        trainer_state = {k: int(v) for k, v in ckpt["trainer"].items() if k in ("iteration", "epoch_length")}
        iteration, epoch_length = trainer_state["iteration"], trainer_state["epoch_length"]
        # the configured max_epochs wins (a finished run can be extended); ignite needs max_epochs >= epoch
        trainer_state["max_epochs"] = max(int(max_epochs or 0), iteration // epoch_length)
        engine.load_state_dict(trainer_state)
        loader = getattr(engine, "data_loader", None)
        if loader is not None and hasattr(loader, "__len__") and len(loader) != epoch_length:
            raise ValueError(
                f"{self.path}: saved epoch length {epoch_length} != current DataLoader length {len(loader)} "
                "(dataset, batch size or drop_last changed); delete the file to start over"
            )
        if self.evaluator is not None and "evaluator" in ckpt:
            best = float(ckpt["evaluator"]["best_metric"])
            if not np.isnan(best):
                self.evaluator.state.best_metric = best
                self.evaluator.state.best_metric_epoch = int(ckpt["evaluator"]["best_metric_epoch"])
        self.resumed_from = iteration
        if max_epochs is not None and iteration >= max_epochs * epoch_length:
            self._done_state = {"iteration": iteration, "epoch": iteration // epoch_length}
        self._pending = (iteration % epoch_length, rng)
        if iteration % epoch_length == 0:  # saved at an epoch end: the state any EPOCH_STARTED handler sees
            load_rng_state_dict(rng)
        logger.info(f"resume: {self.path} -> iteration {iteration} (epoch {iteration // epoch_length + 1} continues)")
