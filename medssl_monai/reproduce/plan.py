"""Stages and the plan that runs them: one bundle run per stage, each in its own folder, skipped when done.

A :class:`Stage` is one plain ``python -m monai.bundle run`` (or ``torchrun --nproc_per_node N -m monai.bundle run``)
of a bundle's config files with overrides, its outputs redirected to ``<out>/<stage>/`` by ``--bundle_root`` (every
bundle derives ``ckpt_dir``, ``output_dir`` and ``eval_dir`` from it; the config files stay in the bundle). A
:class:`Plan` runs its stages in order (or, with ``Plan.run(jobs=N)``, up to N at a time, each stage once every
stage it depends on has finished) and decides which to skip from *run records*
(:func:`medssl_monai.engines.run_record.build_run_record`, the record ``resume.pt`` and ``model.pt.json`` hold),
not from file times:

* a finished stage writes ``<out>/<stage>/stage.json`` with the record's settings, its epochs and its measured
  times; a later run skips it when the settings it would use now compare equal
  (:func:`~medssl_monai.engines.run_record.compare_settings`), its epochs are the same and its outputs are there;
  a training stage's ``models/model.pt.json`` (written by the bundle itself) must agree too;
* a stage whose settings changed runs again (from scratch: ``--resume False``, since its ``resume.pt`` is of another
  run), and so does every stage that depends on it (the downstream ``pretrained_ckpt`` is compared by SHA-256 in the
  record as well, so a changed upstream model is caught either way);
* a stage that failed or was interrupted runs again with the same settings: the bundle resumes from its
  ``resume.pt``; a failure stops the plan with :class:`StageFailed`, naming the stage and its ``stage.log`` (no
  stage starts after it; with several jobs, the stages already running finish first).

Progress: one line per stage start and end (``[k/N]``, elapsed time, the stage's and the whole plan's ETA, the latter
list-scheduled over the ``jobs`` slots) and the bundles' own per-epoch lines, each printed whole; the estimates come
from the measured epoch times of finished stages of the same bundle (``stage.json``) or, before any was measured, from
FLOP counts (:class:`Estimate`), marked as estimates.
"""

from __future__ import annotations

import datetime
import heapq
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from medssl_monai.demo import BUNDLES_DIR

__all__ = [
    "Stage",
    "Plan",
    "StageFailed",
    "StageDecision",
    "Estimate",
    "PlanError",
    "stage_settings",
    "format_duration",
    "STAGE_FILE",
    "LOG_FILE",
]

STAGE_FILE = "stage.json"
LOG_FILE = "stage.log"
#: ignite's end-of-epoch line, e.g. "Epoch[3] Complete. Time taken: 00:00:01.228"
_EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):(\d+(?:\.\d+)?)")
#: lines of a bundle's log that the console shows besides the epoch ends (metrics and errors)
_SHOWN = re.compile(r"Epoch\[\d+\] Complete|Key metric|Best|error|Error|Traceback")
#: settings compared besides the run record's: ``epochs`` is a run-control key there (a resume may extend a run),
#: but a stage run for other epochs is another stage result
_PLAN_KEYS = ("epochs",)
_PLAN_PREFIX = "plan:"


class PlanError(ValueError):
    """A plan cannot be built or run as asked (bad input); the message names the stage or file and the problem."""


class StageFailed(RuntimeError):
    """A stage's command exited with an error; ``stage`` and ``log`` name it and its log file."""

    def __init__(self, stage: str, log: Path, returncode: int) -> None:
        super().__init__(
            f"stage {stage!r} failed (exit status {returncode}); its log: {log}\n"
            "Fix the cause and run the same command again: finished stages are skipped and this one continues."
        )
        self.stage, self.log, self.returncode = stage, log, returncode


@dataclass(frozen=True)
class Estimate:
    """What a stage's time is estimated from before it was measured: its work in FLOPs.

    Attributes:
        flop: floating-point operations of the whole stage (forward + backward where it trains).
        samples: samples the stage processes (epochs x samples per epoch, plus its evaluation).
        overhead_s: fixed cost (process start, imports, data checks).
    """

    flop: float = 0.0
    samples: float = 0.0
    overhead_s: float = 10.0


@dataclass
class Stage:
    """One bundle run of a plan.

    Attributes:
        name: the stage's folder name under the plan's output folder (``[A-Za-z0-9_.-]``).
        bundle: the bundle folder name under ``bundles/`` (or an absolute folder).
        configs: config file names in the bundle's ``configs/`` (later ones override earlier ones).
        overrides: ``--key value`` pairs (``bundle_root`` is set by the plan).
        depends_on: names of stages whose outputs this one reads (they run first; re-running one re-runs this).
        outputs: files under the stage folder that exist when it has finished (e.g. ``models/model.pt``).
        trains: a training run (``torchrun`` with ``multi_gpu_train.yaml`` when the plan has several processes;
            its ``models/model.pt.json`` record is checked).
        estimate: the FLOP-based estimate of its time.
        label: a short description for the plan listing.
    """

    name: str
    bundle: str
    configs: Sequence[str]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    depends_on: Sequence[str] = ()
    outputs: Sequence[str] = ()
    trains: bool = True
    estimate: Estimate = field(default_factory=Estimate)
    label: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise PlanError(f"stage name {self.name!r}: use letters, digits, '_', '.', '-' only (it is a folder)")
        if "bundle_root" in self.overrides:
            raise PlanError(f"stage {self.name!r}: bundle_root is set by the plan (the stage's folder)")

    @property
    def bundle_dir(self) -> Path:
        """The bundle's folder."""
        p = Path(self.bundle)
        return p if p.is_absolute() else BUNDLES_DIR / self.bundle

    def config_files(self, nproc: int = 1) -> list[str]:
        """Absolute config file paths; a training stage on several processes adds ``multi_gpu_train.yaml``."""
        names = list(self.configs)
        if nproc > 1 and self.trains:
            names.append("multi_gpu_train.yaml")
        files = [self.bundle_dir / "configs" / n for n in names]
        for f in files:
            if not f.is_file():
                raise PlanError(f"stage {self.name!r}: config file {f} does not exist")
        return [str(f) for f in files]

    def folder(self, out: Path) -> Path:
        """The stage's output folder (its ``bundle_root``)."""
        return Path(out) / self.name

    def parser(self, out: Path, nproc: int = 1) -> Any:
        """A ``monai.bundle.ConfigParser`` holding the stage's configs as its run in ``out`` would see them.

        ``bundle_root`` is the stage's folder and the stage's overrides are applied, as on its command line.
        """
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(self.config_files(nproc))
        parser.update({"bundle_root": str(self.folder(out)), **dict(self.overrides)})
        return parser

    def command(self, out: Path, nproc: int = 1, fresh: bool = False, python: str | None = None) -> list[str]:
        """The exact command line of the stage.

        Args:
            out: the plan's output folder.
            nproc: processes; above 1 a training stage runs under ``torchrun --nproc_per_node``.
            fresh: add ``--resume False`` (the stage's earlier files are of another run).
            python: the interpreter (default: this one).
        """
        python = python or sys.executable
        if nproc > 1 and self.trains:
            head = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        else:
            head = [python]
        # JSON list syntax: fire reads it as a Python literal, and it needs no quotes inside the shell's quotes
        cmd = [*head, "-m", "monai.bundle", "run", "--config_file", json.dumps(self.config_files(nproc))]
        cmd += ["--bundle_root", str(self.folder(out))]
        for key, value in self.overrides.items():
            cmd += [f"--{key}", _cli_value(value)]
        if fresh:
            cmd += ["--resume", "False"]
        return cmd


def _cli_value(value: Any) -> str:
    """A value as fire (``monai.bundle run``) parses it back: literals as Python ``repr``, strings as they are."""
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        # fire would turn "1e-3" or "True" into a number or a bool; quote such strings so they stay strings
        try:
            import ast

            ast.literal_eval(text)
            return repr(text)
        except (ValueError, SyntaxError):
            return text
    return repr(value)


def stage_settings(stage: Stage, out: Path, nproc: int = 1) -> dict[str, Any]:
    """The run record settings the stage's bundle run would record now (the settings ``resume.pt`` holds)."""
    from medssl_monai.engines.run_record import build_run_record

    files = stage.config_files(nproc)
    try:
        parser = stage.parser(out, nproc)
        record = build_run_record(parser, files)
    except Exception as e:
        raise PlanError(
            f"stage {stage.name!r}: cannot read its configs {files} with {dict(stage.overrides)}: {e}"
        ) from e
    settings = dict(record["settings"])
    # an evaluation reads its model from ckpt_dir, a run-control key of the record (where a run writes)
    keys = _PLAN_KEYS if stage.trains else (*_PLAN_KEYS, "ckpt_dir")
    for key in keys:
        if key in parser.get():
            try:
                settings[_PLAN_PREFIX + key] = parser.get_parsed_content(key)
            except Exception:  # noqa: S110 - a key that needs the run to resolve is left out of the comparison
                pass
    return settings


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s`` (``?`` for unknown)."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class StageDecision:
    """Whether a stage runs and why."""

    stage: Stage
    run: bool
    reason: str
    fresh: bool = False  # start over (--resume False): the folder holds another run's files
    estimate_s: float | None = None
    estimate_kind: str = "estimate"  # "measured" (from finished stages) or "estimate" (FLOPs)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _show(value: Any) -> str:
    if isinstance(value, Mapping) and "sha256" in value:
        return f"{value.get('path')} (sha256 {str(value['sha256'])[:12]})"
    if isinstance(value, Mapping) and value.get("missing"):
        return f"{value.get('path')} (missing)"
    try:
        text = json.dumps(value) if not isinstance(value, str) else value
    except TypeError:  # compare_settings' marker of a key one side does not have
        return "<not set>"
    return text if len(text) <= 80 else text[:77] + "..."


def _format(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    """``key: old -> new; ...`` of :func:`~medssl_monai.engines.run_record.compare_settings`' differences."""
    return "; ".join(f"{k.removeprefix(_PLAN_PREFIX)}: {_show(a)} -> {_show(b)}" for k, a, b in diffs)


class Plan:
    """Stages of one experiment, run in order (or ``jobs`` at a time, see :meth:`run`) into ``out`` (see the module
    docstring).

    Args:
        stages: in an order where every stage comes after those it depends on.
        out: the output folder (``out/<stage>/`` per stage).
        nproc: processes per training stage (``torchrun --nproc_per_node``).
        gflops: assumed sustained throughput for the FLOP estimates, GFLOP/s per process.
        stream: where progress lines go.
        env: environment of the stage processes (default: this one's).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        out: str | Path,
        nproc: int = 1,
        gflops: float = 1.0,
        stream: TextIO | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.stages = list(stages)
        self.out = Path(out).resolve()
        self.nproc = int(nproc)
        self.gflops = float(gflops)
        self.stream = stream or sys.stdout
        self.env = dict(env) if env is not None else None
        self._lock = threading.Lock()  # progress lines and the running processes
        self._procs: dict[str, tuple[subprocess.Popen, bool]] = {}  # stage -> (process, in its own session)
        if self.nproc < 1:
            raise PlanError(f"nproc_per_node must be at least 1, got {nproc}")
        names: set[str] = set()
        for s in self.stages:
            if s.name in names:
                raise PlanError(f"stage {s.name!r} appears twice in the plan")
            for d in s.depends_on:
                if d not in names:
                    raise PlanError(f"stage {s.name!r} depends on {d!r}, which does not come before it in the plan")
            names.add(s.name)

    # ---- decisions ----------------------------------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise PlanError(f"no stage {name!r} in the plan (stages: {[s.name for s in self.stages]})")

    def decide(self, stage: Stage, will_run: set[str]) -> StageDecision:
        """Whether ``stage`` must run, given the stages already known to run before it."""
        from medssl_monai.engines.run_record import compare_settings

        folder = stage.folder(self.out)
        saved = _read_json(folder / STAGE_FILE)
        now = stage_settings(stage, self.out, self.nproc)
        diffs = compare_settings(saved.get("settings", {}), now) if saved is not None else []
        # the run record proper differs: the folder's resume.pt is of another run, start over; when only the plan
        # keys differ (more epochs) the bundle resumes and continues
        record_changed = any(not key.startswith(_PLAN_PREFIX) for key, _, _ in diffs)
        has_files = saved is not None or (folder / "models" / "resume.pt").is_file()
        upstream = [d for d in stage.depends_on if d in will_run]
        if upstream:
            # its inputs change: what its folder holds (a resume.pt too) is of another run
            which = "which runs" if len(upstream) == 1 else "which run"
            return StageDecision(stage, True, f"depends on {', '.join(upstream)}, {which}", fresh=has_files)
        if saved is None:
            return StageDecision(stage, True, "not run yet", fresh=has_files)
        if diffs:
            return StageDecision(stage, True, "settings changed: " + _format(diffs), fresh=record_changed)
        if saved.get("status") != "done":
            return StageDecision(stage, True, f"did not finish last time ({saved.get('status')}): continues")
        missing = [o for o in stage.outputs if not (folder / o).exists()]
        if missing:
            return StageDecision(stage, True, f"outputs missing: {', '.join(missing)}", fresh=True)
        if stage.trains:
            sidecar = _read_json(folder / "models" / "model.pt.json")
            if sidecar is not None:
                record = {k: v for k, v in now.items() if not k.startswith(_PLAN_PREFIX)}
                record_diffs = compare_settings(sidecar.get("settings", {}), record)
                if record_diffs:
                    return StageDecision(
                        stage, True, "models/model.pt.json is of another run: " + _format(record_diffs), fresh=True
                    )
        return StageDecision(stage, False, "done, settings unchanged")

    def decisions(self) -> list[StageDecision]:
        """The decision for every stage, dependencies propagated (what a run would do now)."""
        will_run: set[str] = set()
        out = []
        for s in self.stages:
            d = self.decide(s, will_run)
            if d.run:
                will_run.add(s.name)
            out.append(d)
        for d in out:
            d.estimate_s, d.estimate_kind = self.estimate(d.stage)
        return out

    # ---- estimates ----------------------------------------------------------------------------------------------

    def _measured(self) -> dict[tuple, float]:
        """Seconds per sample of finished stages, by (bundle, configs, trains), from their ``stage.json``."""
        rates: dict[tuple, list[float]] = {}
        for s in self.stages:
            saved = _read_json(s.folder(self.out) / STAGE_FILE)
            if not saved or saved.get("status") != "done" or not s.estimate.samples:
                continue
            work = saved.get("seconds", 0.0) - s.estimate.overhead_s
            rates.setdefault(_kind(s), []).append(max(work, 0.0) / s.estimate.samples)
        return {k: sum(v) / len(v) for k, v in rates.items()}

    def estimate(self, stage: Stage, measured: Mapping[tuple, float] | None = None) -> tuple[float, str]:
        """Seconds the stage should take: from measured stages of the same kind, else from its FLOPs."""
        measured = self._measured() if measured is None else measured
        rate = measured.get(_kind(stage))
        if rate is not None:
            return stage.estimate.overhead_s + rate * stage.estimate.samples, "measured"
        compute = stage.estimate.flop / (self.gflops * 1e9 * (self.nproc if stage.trains else 1))
        return stage.estimate.overhead_s + compute, "estimate"

    # ---- output -------------------------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        # one write per line under a lock: stages running side by side never interleave partial lines
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def describe(self, decisions: Sequence[StageDecision] | None = None) -> str:
        """The plan as text: every stage, its command, why it runs or is skipped, and its estimated time."""
        decisions = self.decisions() if decisions is None else decisions
        lines = []
        total = 0.0
        for k, d in enumerate(decisions, 1):
            s = d.stage
            action = "RUN " if d.run else "skip"
            time_text = f"{format_duration(d.estimate_s)} ({d.estimate_kind})"
            if d.run:
                total += d.estimate_s or 0.0
            lines.append(f"[{k}/{len(decisions)}] {action} {s.name}: {s.label or s.bundle}  -- {d.reason}")
            lines.append(f"      time: {time_text}; folder: {s.folder(self.out)}")
            lines.append("      $ " + _quote(s.command(self.out, self.nproc, fresh=d.fresh and d.run)))
        n_run = sum(d.run for d in decisions)
        lines.append(f"{n_run} of {len(decisions)} stages to run, about {format_duration(total)} in all")
        return "\n".join(lines)

    # ---- running ------------------------------------------------------------------------------------------------

    def run(
        self,
        dry_run: bool = False,
        on_stage_done: Callable[[Stage], None] | None = None,
        jobs: int = 1,
    ) -> list[StageDecision]:
        """Run every stage that needs it; with ``dry_run`` only print the plan.

        Args:
            dry_run: print the plan (:meth:`describe`) and run nothing.
            on_stage_done: called (in this thread) with each stage that finished successfully.
            jobs: stages run at the same time, each its own process. The next stage to start is the first one in
                plan order whose dependencies have all finished successfully; with ``jobs=1`` that is plan order,
                one stage after another. The plan ETA is a list-scheduling estimate: the running stages' remaining
                estimated time and the stages still to run, in plan order, each put on the first of ``jobs`` slots
                to become free after its dependencies end (with ``jobs=1``: the sum of the estimates).

        On a failure no new stage starts; the stages already running are left to finish (their run records are
        written as usual, so the next run skips them), then :class:`StageFailed` is raised for the first failure.
        With ``jobs > 1`` every stage process runs in its own session: when this process is interrupted (Ctrl-C,
        which then reaches only this process) or fails itself, the running stages are terminated as whole process
        groups (SIGTERM, then SIGKILL), so none is left behind; their ``stage.json`` says ``failed`` and the next
        run continues them from their ``resume.pt``.

        Raises:
            StageFailed: a stage's command failed (no stage starts after it).
        """
        jobs = int(jobs)
        if jobs < 1:
            raise PlanError(f"jobs must be at least 1, got {jobs}")
        decisions = self.decisions()
        if dry_run:
            self._print(self.describe(decisions))
            return decisions
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        # estimated seconds of every stage that runs (improved as stages start and finish)
        remaining = {d.stage.name: d.estimate_s or 0.0 for d in decisions if d.run}
        will_run: set[str] = set()
        n = len(decisions)
        pending = list(enumerate(decisions, 1))  # (k, decision), plan order
        finished: set[str] = set()  # done or skipped
        running: dict[str, tuple[int, float, threading.Thread | None]] = {}  # name -> (k, start time, thread)
        results: queue.Queue[tuple[str, Any]] = queue.Queue()
        failure: BaseException | None = None

        def finish(name: str, k: int, outcome: Any) -> None:
            nonlocal failure
            running.pop(name)
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                remaining.pop(name, None)
                return
            seconds, _ = outcome
            finished.add(name)
            remaining.pop(name)
            # the estimates of the stages still to run improve with this measurement
            measured = self._measured()
            for other in remaining:
                if other not in running:
                    remaining[other] = self.estimate(self.stage(other), measured)[0]
            self._print(
                f"[{k}/{n}] {name}: done in {format_duration(seconds)}; elapsed {format_duration(time.time() - t0)}, "
                f"plan ETA {format_duration(self._plan_eta(remaining, running, pending, jobs))}"
            )
            if on_stage_done is not None:
                on_stage_done(self.stage(name))

        try:
            while pending or running:
                while failure is None and len(running) < jobs:
                    item = next((p for p in pending if all(x in finished for x in p[1].stage.depends_on)), None)
                    if item is None:
                        break
                    pending.remove(item)
                    k, d = item
                    s = d.stage
                    if not d.run:
                        self._print(f"[{k}/{n}] {s.name}: skipped ({d.reason})")
                        finished.add(s.name)
                        continue
                    # decide again now that the stages before it ran: a changed upstream model changes its record
                    d = self.decide(s, will_run)
                    will_run.add(s.name)
                    est, kind = self.estimate(s)
                    remaining[s.name] = est
                    start = time.time()
                    running[s.name] = (k, start, None)
                    eta = self._plan_eta(remaining, running, pending, jobs, now=start)
                    self._print(
                        f"[{k}/{n}] {s.name}: start ({d.reason}); stage ETA {format_duration(est)} ({kind}), "
                        f"plan ETA {format_duration(eta)}, elapsed {format_duration(start - t0)}"
                    )
                    if jobs == 1:  # in this thread, as a plain sequence of stages
                        finish(s.name, k, self._run_stage(s, d.fresh, k, n, est))
                        continue
                    thread = threading.Thread(
                        target=self._run_stage_thread,
                        args=(s, d.fresh, k, n, est, results),
                        name=f"stage-{s.name}",
                        daemon=True,
                    )
                    running[s.name] = (k, start, thread)
                    thread.start()
                if not running:
                    break
                name, outcome = results.get()
                k, _, thread = running[name]
                if thread is not None:
                    thread.join()
                finish(name, k, outcome)
        except BaseException:
            if jobs > 1:  # with jobs=1 the stage shares this process group, as a plain command would
                self._terminate_running()
            for _, _, thread in list(running.values()):
                if thread is not None:
                    thread.join(timeout=60)
            raise
        if failure is not None:
            raise failure
        if pending:  # cannot happen: every dependency comes before its stage in the plan
            raise PlanError(f"stages never became ready: {[p[1].stage.name for p in pending]}")
        return decisions

    def _plan_eta(
        self,
        remaining: Mapping[str, float],
        running: Mapping[str, tuple[int, float, Any]],
        pending: Sequence[tuple[int, StageDecision]],
        jobs: int,
        now: float | None = None,
    ) -> float:
        """Seconds until the plan ends, by list scheduling: each of the ``jobs`` slots is free when its running stage
        ends (its estimate minus the time it has run); the stages still to run take, in plan order, the first slot
        to become free after their dependencies end. With ``jobs=1`` this is the sum of the estimates."""
        now = time.time() if now is None else now
        ends: dict[str, float] = {}
        slots = []
        for name, (_, start, _) in running.items():
            ends[name] = max(remaining.get(name, 0.0) - (now - start), 0.0)
            slots.append(ends[name])
        slots += [0.0] * max(jobs - len(slots), 0)
        heapq.heapify(slots)
        for _, d in pending:
            name = d.stage.name
            if name not in remaining:  # skipped: takes no time
                continue
            free = heapq.heappop(slots)
            begin = max([free, *(ends[x] for x in d.stage.depends_on if x in ends)])
            ends[name] = begin + remaining[name]
            heapq.heappush(slots, ends[name])
        return max(ends.values(), default=0.0)

    def _run_stage_thread(self, stage: Stage, fresh: bool, k: int, n: int, est: float, results: queue.Queue) -> None:
        try:
            outcome: Any = self._run_stage(stage, fresh, k, n, est, own_session=True)
        except BaseException as e:  # noqa: BLE001 - handed to the plan's thread, which raises it
            outcome = e
        results.put((stage.name, outcome))

    def _terminate_running(self, grace_s: float = 20.0) -> None:
        """Terminate the stage processes still running in their own sessions, each as a whole process group (the
        bundle run, torchrun's workers, data loaders): SIGTERM, then SIGKILL after ``grace_s``."""
        import signal

        with self._lock:
            groups = [proc for proc, own_session in self._procs.values() if own_session]
        for proc in groups:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:  # already gone
                pass
        deadline = time.time() + grace_s
        for proc in groups:
            try:
                proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group
            except OSError:
                pass

    def _run_stage(
        self, stage: Stage, fresh: bool, k: int, n: int, est: float, own_session: bool = False
    ) -> tuple[float, list[float]]:
        folder = stage.folder(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        settings = stage_settings(stage, self.out, self.nproc)
        cmd = stage.command(self.out, self.nproc, fresh=fresh)
        record = {
            "stage": stage.name,
            "bundle": stage.bundle,
            "configs": list(stage.configs),
            "overrides": {k2: _jsonable(v) for k2, v in stage.overrides.items()},
            "command": cmd,
            "settings": settings,
            "status": "running",
            "started": _now(),
        }
        _write_json(folder / STAGE_FILE, record)
        log = folder / LOG_FILE
        epochs = stage.overrides.get("epochs") or settings.get(_PLAN_PREFIX + "epochs")
        t = time.time()
        epoch_s: list[float] = []
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
        with open(log, "a") as f:
            f.write(f"# {_now()} $ {_quote(cmd)}\n")
            f.flush()
            # cwd: the stage folder, so that a relative path a config writes to stays in it
            # own_session (stages run side by side): its own process group, which the plan can terminate whole
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=str(folder),
                start_new_session=own_session,
            )
            with self._lock:
                self._procs[stage.name] = (proc, own_session)
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                m = _EPOCH_LINE.search(line)
                if m and stage.trains and "Evaluator" in line:
                    continue  # a training stage's validation pass: its epoch is the trainer's
                if m:
                    epoch_s.append(int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4)))
                    done = int(m.group(1))
                    eta = ""
                    if isinstance(epochs, int) and epochs >= done:
                        eta = f", stage ETA {format_duration((epochs - done) * sum(epoch_s) / len(epoch_s))}"
                    self._print(f"    {stage.name}: epoch {done}/{epochs or '?'} in {epoch_s[-1]:.1f} s{eta}")
                elif _SHOWN.search(line) and "Epoch[" not in line:
                    text = line.rstrip().split(" - INFO - ", 1)[-1]  # the message without the logger's prefix
                    self._print(f"    {stage.name}: {text[-200:]}")
            rc = proc.wait()
        with self._lock:
            self._procs.pop(stage.name, None)
        seconds = time.time() - t
        record.update({"seconds": round(seconds, 2), "epoch_seconds": epoch_s, "finished": _now(), "returncode": rc})
        if rc != 0:
            record["status"] = "failed"
            _write_json(folder / STAGE_FILE, record)
            raise StageFailed(stage.name, log, rc)
        missing = [o for o in stage.outputs if not (folder / o).exists()]
        if missing:
            record["status"] = "failed"
            _write_json(folder / STAGE_FILE, record)
            with open(log, "a") as f:
                f.write(f"# the run finished but did not write {missing}\n")
            raise StageFailed(stage.name, log, rc)
        sidecar = _read_json(folder / "models" / "model.pt.json") if stage.trains else None
        if sidecar and "trainer" in sidecar:  # the trainer's epoch and iteration when model.pt was written
            record["trainer"] = sidecar["trainer"]
        record["status"] = "done"
        _write_json(folder / STAGE_FILE, record)
        return seconds, epoch_s


def _kind(stage: Stage) -> tuple:
    return (stage.bundle, tuple(stage.configs), stage.trains)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    from medssl_monai.engines.run_record import write_json_atomic

    write_json_atomic(data, path)


def _quote(cmd: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)
