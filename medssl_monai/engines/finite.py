"""Stop a diverging run before it writes NaN weights.

* :class:`NonFiniteGuard`: an ignite handler on the trainer. Every iteration it records, on the device, the first
  iteration whose loss is NaN or infinite (no host-device sync per step); it reads that record every
  ``check_every`` iterations, at every epoch end and at the end of the run, and whenever a checkpoint is about
  to be written. A non-finite loss stops the run with :class:`~medssl_monai.errors.NonFiniteLossError` naming
  the iteration and the checkpoints this run wrote before it (they are kept: nothing is written after it).
* :func:`first_nonfinite` / :func:`check_finite_state`: the weights (modules' parameters and buffers) and the
  optimizer state of objects to be saved are all finite, else
  :class:`~medssl_monai.errors.NonFiniteStateError` naming the file and the first bad tensor. One device sync per
  save. It also catches weights that diverged with a finite loss (an overflow in the backward pass).
* :func:`before_checkpoint_write`: what a checkpoint writer calls first (the guard of the engine, then the state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from medssl_monai.distributed import is_dist
from medssl_monai.errors import NonFiniteLossError, NonFiniteStateError

__all__ = ["NonFiniteGuard", "first_nonfinite", "check_finite_state", "before_checkpoint_write"]

_NEVER = torch.iinfo(torch.int64).max  # "no non-finite loss yet" in the device record
_ATTRIBUTE = "_medssl_nonfinite_guard"  # where an engine keeps its guard, for the checkpoint writers


def _loss_of(output: Any) -> Any:
    """The loss in a MONAI trainer's output (a dict with ``"loss"``; a decollated list of them)."""
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


class NonFiniteGuard:
    """Stop training at a NaN or infinite loss, before any checkpoint of diverged weights is written.

    List it first in a bundle's ``train#handlers``: its epoch-end check then runs before validation and before
    every writer attached to the same events. The checkpoint writers (``ResumeHandler``,
    :class:`~medssl_monai.engines.checkpoint.AtomicCheckpointSaver`) also consult it just before writing.

    Args:
        check_every: read the device record every this many iterations (each read syncs the device; the bundles
            use ``log_every``, where the loss is read for logging anyway); 0: only at epoch ends, the end of the
            run and before checkpoint writes.
        output_transform: the loss from ``engine.state.output``; default: its ``"loss"``.
    """

    def __init__(self, check_every: int = 10, output_transform: Callable[[Any], Any] | None = None) -> None:
        if int(check_every) < 0:
            raise ValueError(f"NonFiniteGuard: check_every must be >= 0, got {check_every}")
        self.check_every = int(check_every)
        self.output_transform = output_transform or _loss_of
        self._first_bad: torch.Tensor | None = None  # device scalar: the first non-finite iteration, or _NEVER
        self._checked_at = -1  # the iteration the record was last read at (all clean up to it)
        self.saved: dict[str, int] = {}  # checkpoint files this run wrote -> the iteration of their state

    @staticmethod
    def of(engine: Any) -> NonFiniteGuard | None:
        """The guard attached to ``engine`` (``None``: none)."""
        return getattr(engine, _ATTRIBUTE, None)

    def attach(self, engine: Engine) -> None:
        """Record every iteration's loss; check at ``check_every``, every epoch end and at the end of the run."""
        setattr(engine, _ATTRIBUTE, self)
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        if self.check_every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.check_every), self.check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)
        engine.add_event_handler(Events.COMPLETED, self.check)

    def _reset(self, engine: Engine) -> None:
        self._first_bad, self._checked_at, self.saved = None, -1, {}

    def record(self, engine: Engine) -> None:
        """Fold this iteration's loss into the device record (device ops only: no sync)."""
        loss = self.output_transform(engine.state.output)
        if loss is None:
            return
        loss = torch.as_tensor(loss).detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), _NEVER, dtype=torch.int64, device=loss.device)
        here = torch.where(torch.isfinite(loss).all(), _NEVER, int(engine.state.iteration))
        torch.minimum(self._first_bad, here, out=self._first_bad)

    def check(self, engine: Engine, collective: bool = True) -> None:
        """Read the record (one sync) and raise :class:`NonFiniteLossError` if a loss so far was not finite.

        Args:
            engine: the trainer.
            collective: under DDP, take the first bad iteration over all ranks (every rank must call it at the same
                point, as the guard's own checks and ``ResumeHandler.save`` do), so that every rank stops at the same
                check; ``False`` for a writer that runs on one rank only.
        """
        iteration = int(engine.state.iteration)
        if self._first_bad is None or self._checked_at == iteration:
            return
        record = self._first_bad
        if collective and is_dist():
            record = record.clone()
            dist.all_reduce(record, op=dist.ReduceOp.MIN)
        first = int(record.item())
        if first != _NEVER:
            raise NonFiniteLossError(self._message(engine, first), first)
        if collective or not is_dist():  # a one-rank read must not let that rank skip a later collective one
            self._checked_at = iteration

    def note_saved(self, path: str | Path, iteration: int) -> None:
        """Remember a checkpoint written from a clean state (named when the run stops)."""
        self.saved[str(path)] = int(iteration)

    def _message(self, engine: Engine, first: int) -> str:
        length = engine.state.epoch_length or 0
        epoch = f" (epoch {(first - 1) // length + 1})" if length else ""
        if self.saved:  # newest first; of equal iterations the first written (ResumeHandler's, attached first)
            (path, at), *others = sorted(self.saved.items(), key=lambda item: -item[1])
            last = f"the last good checkpoint is {path} (iteration {at})"
            last += "".join(f"; also kept: {p} (iteration {i})" for p, i in others)
        else:
            last = "this run wrote no checkpoint before it (files already in its checkpoint folder are kept)"
        return (
            f"training stopped: the loss is NaN or infinite at iteration {first}{epoch}. Nothing was written after "
            f"it; {last}. A learning rate too high for the data and batch size is the usual cause."
        )


def _state_tensors(objects: Mapping[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the floating weights and optimizer state among ``objects`` (other objects, e.g. a
    monitor's history with NaN for "no value", are not weights and are skipped)."""
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            items: Iterator[tuple[str, Any]] = iter(obj.state_dict(keep_vars=True).items())
        elif isinstance(obj, torch.optim.Optimizer):
            items = ((f"state.{i}.{k}", v) for i, s in obj.state_dict()["state"].items() for k, v in s.items())
        else:
            continue
        for key, value in items:
            if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                yield f"{name}.{key}", value.detach()


def first_nonfinite(objects: Mapping[str, Any]) -> str | None:
    """The name of the first weight / optimizer-state tensor of ``objects`` holding NaN or inf (``None``: all finite).

    One device sync per device in the common all-finite case.
    """
    tensors = list(_state_tensors(objects))
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return None
    return next(name for name, t in tensors if not bool(torch.isfinite(t).all()))


def check_finite_state(objects: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`NonFiniteStateError` naming ``path`` and the first bad tensor if ``objects`` are not finite."""
    bad = first_nonfinite(objects)
    if bad is not None:
        raise NonFiniteStateError(path, bad)


def before_checkpoint_write(
    engine: Any, path: str | Path, objects: Mapping[str, Any] | None = None, collective: bool = True
) -> None:
    """What a checkpoint writer calls before writing ``path``: the engine's guard (if any) checks the losses so far
    and notes the file, then the weights and optimizer state in ``objects`` must be finite.

    Args:
        engine: the engine the writer is attached to (the trainer; a validator has no guard).
        path: the file about to be written.
        objects: name -> object saved in it (modules and optimizers are checked).
        collective: see :meth:`NonFiniteGuard.check` (``True`` where every DDP rank calls this).
    """
    guard = NonFiniteGuard.of(engine)
    if guard is not None:
        guard.check(engine, collective=collective)
    if objects is not None:
        check_finite_state(objects, path)
    if guard is not None:
        guard.note_saved(path, engine.state.iteration)
