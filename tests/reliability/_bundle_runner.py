"""Run one bundle's train workflow in this process (used as a subprocess by the reliability tests).

Usage: ``python _bundle_runner.py CONFIGS_JSON OVERRIDES_JSON [FAULT [SNAPSHOT_JSON]]`` (``CONFIGS_JSON``: the list
of config files, merged in order). ``FAULT`` is ``KIND:K`` (a bare ``K`` means ``kill:K``; ``K`` is an iteration,
or ``epochE``: the first iteration of epoch ``E``); at the start of iteration ``K`` (after the previous iteration's
checkpoints were written):

* ``kill``: the process SIGKILLs itself: no handler, ``finally`` or atexit runs, as with the OOM killer or a
  cluster pre-emption;
* ``nan``: iteration ``K``'s loss is multiplied by NaN (a diverging step: NaN gradients, then NaN weights);
* ``raise``: a ``RuntimeError`` is raised (a crash in training);
* ``interrupt``: a ``KeyboardInterrupt`` is raised (Ctrl-C).

With ``SNAPSHOT_JSON`` ``{"iteration": K, "files": {name: SHA-256}}`` of every file in the checkpoint folder
(``ckpt_dir``) at that moment is written there, so the test can tell which files the run wrote after the fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow


def folder_hashes(folder: str | Path) -> dict[str, str]:
    """File name -> SHA-256 of every file directly in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*")) if p.is_file()}


class NanLossAt:
    """The trainer's loss function, multiplied by NaN at iteration ``at`` (ignite counts from 1; 0: never)."""

    def __init__(self, loss_function: Any, trainer: Engine, at: int = 0) -> None:
        self.loss_function, self.trainer, self.at = loss_function, trainer, at

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        loss = self.loss_function(*args, **kwargs)
        return loss * float("nan") if self.trainer.state.iteration == self.at else loss


def inject(trainer: Engine, kind: str, where: str, ckpt_dir: str, snapshot: str | None) -> None:
    """Add the fault ``kind`` at the start of iteration ``where`` (``K`` or ``epochE``) to ``trainer``."""
    nan_loss = NanLossAt(trainer.loss_function, trainer)

    def fault(engine: Engine) -> None:
        if snapshot:
            state = {"iteration": engine.state.iteration, "files": folder_hashes(ckpt_dir)}
            Path(snapshot).write_text(json.dumps(state))
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            raise RuntimeError(f"fault injected at iteration {engine.state.iteration}")
        elif kind == "interrupt":
            raise KeyboardInterrupt

    def schedule(engine: Engine) -> None:  # the epoch length is known once the run starts
        epoch = where.removeprefix("epoch")
        at = (int(epoch) - 1) * engine.state.epoch_length + 1 if epoch != where else int(where)
        nan_loss.at = at
        engine.add_event_handler(Events.ITERATION_STARTED(once=at), fault)

    if kind == "nan":
        trainer.loss_function = nan_loss
    elif kind not in ("kill", "raise", "interrupt"):
        raise ValueError(f"unknown fault {kind!r}")
    trainer.add_event_handler(Events.STARTED, schedule)


def main() -> None:
    configs, overrides = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    fault = sys.argv[3] if len(sys.argv) > 3 else ""
    snapshot = sys.argv[4] if len(sys.argv) > 4 else None
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", **overrides)
    workflow.initialize()
    if fault:
        kind, _, where = fault.rpartition(":")
        trainer = workflow.parser.get_parsed_content("train#trainer")
        inject(trainer, kind or "kill", where, workflow.parser.get_parsed_content("ckpt_dir"), snapshot)
    workflow.run()
    workflow.finalize()


if __name__ == "__main__":
    main()
