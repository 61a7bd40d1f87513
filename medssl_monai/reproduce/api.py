"""``python -m medssl_monai reproduce PAPER``: a paper's main experiment as a plan of bundle runs, then its table."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from medssl_monai.reproduce.common import PRESETS, Context, synthetic_data
from medssl_monai.reproduce.plan import Plan, PlanError, Stage, format_duration
from medssl_monai.reproduce.table import write_table

__all__ = ["PAPERS", "reproduce", "build_plan", "apply_settings", "paper_module", "default_preset"]

#: paper name -> module with ``DESCRIPTION``, ``build_stages(ctx)``, ``build_table(ctx, stages)`` and optionally
#: ``prepare(ctx)`` (derived labels) and ``DATA`` (which folder each command-line option names)
PAPERS = ("unilvseg", "tvrl", "discovr", "ucl")


def paper_module(paper: str) -> ModuleType:
    """The module of ``paper``."""
    import importlib

    if paper not in PAPERS:
        raise PlanError(f"unknown paper {paper!r}; expected one of {', '.join(PAPERS)}")
    return importlib.import_module(f"medssl_monai.reproduce.{paper}")


def default_preset() -> str:
    """``recipe`` on a machine with a GPU, else ``cpu``."""
    import torch

    return "recipe" if torch.cuda.is_available() else "cpu"


def _folder(path: str | Path | None, option: str) -> Path | None:
    if path is None or path == "":
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise PlanError(f"--{option} {path}: not a folder")
    return p


def _data(
    paper: str, preset: str, out: Path, stream: TextIO, folders: dict[str, Path | None], write: bool
) -> tuple[dict, bool]:
    """The data folders of a paper: the given ones, or the built-in synthetic data when ``--dataset_dir`` is absent."""
    dataset_dir = folders.pop("dataset_dir")
    main_kind = {"unilvseg": "echonet", "tvrl": "echonet", "discovr": "echonet", "ucl": "ultrasound"}[paper]
    if dataset_dir is None:
        given = [k for k, v in folders.items() if v is not None]
        if given:
            raise PlanError(f"--{given[0]} needs --dataset_dir too (without it the whole plan runs on synthetic data)")
        synth = synthetic_data(out, PRESETS[preset].synthetic_size, stream, write=write)
        return synth, True
    data: dict[str, Path] = {main_kind: dataset_dir}
    extra = {"camus_dir": "camus", "series_dir": "timed_series", "pretrain_dir": "pretrain_videos"}
    for option, path in folders.items():
        if path is not None:
            data[extra[option]] = path
    return data, False


def apply_settings(stages: list[Stage], settings: Mapping[str, Mapping[str, Any]] | None) -> list[Stage]:
    """Override bundle keys of the stages whose names match a pattern: ``{"pretrain*": {"learning_rate": 2e-4}}``.

    Raises:
        PlanError: a pattern matches no stage, or a key is not defined by a matched stage's configs.
    """
    import fnmatch

    from medssl_monai.reproduce.common import defined

    for pattern, values in (settings or {}).items():
        if not isinstance(values, Mapping):
            raise PlanError(f"--set {pattern!r}: expected a mapping of bundle keys to values, got {values!r}")
        matched = [s for s in stages if fnmatch.fnmatchcase(s.name, str(pattern))]
        if not matched:
            raise PlanError(f"--set {pattern!r} matches no stage (stages: {', '.join(s.name for s in stages)})")
        for s in matched:
            keys = defined(s.bundle, tuple(s.configs))
            unknown = [k for k in values if k not in keys]
            if unknown:
                raise PlanError(f"--set {pattern!r}: stage {s.name!r} ({s.bundle}) defines no key {unknown}")
            s.overrides = {**s.overrides, **values}
    return stages


def build_plan(
    paper: str,
    dataset_dir: str | None = None,
    preset: str | None = None,
    out: str | None = None,
    nproc_per_node: int = 1,
    stream: TextIO | None = None,
    camus_dir: str | None = None,
    series_dir: str | None = None,
    pretrain_dir: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    dry_run: bool = False,
    **options: Any,
) -> tuple[Plan, Context, ModuleType]:
    """The plan of ``paper`` (see :func:`reproduce` for the arguments; ``dry_run`` writes no data)."""
    module = paper_module(paper)
    stream = stream or sys.stdout
    preset = preset or default_preset()
    if preset not in PRESETS:
        raise PlanError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    out_dir = Path(out or f"runs/reproduce/{paper}-{preset}").expanduser().resolve()
    folders = {
        "dataset_dir": _folder(dataset_dir, "dataset_dir"),
        "camus_dir": _folder(camus_dir, "camus_dir"),
        "series_dir": _folder(series_dir, "series_dir"),
        "pretrain_dir": _folder(pretrain_dir, "pretrain_dir"),
    }
    accepted = getattr(module, "FOLDER_OPTIONS", ())
    for option in ("camus_dir", "series_dir", "pretrain_dir"):
        if folders[option] is not None and option not in accepted:
            raise PlanError(f"--{option} is not an input of {paper} (its folder options: dataset_dir, {accepted})")
    data, synthetic = _data(paper, preset, out_dir, stream, folders, write=not dry_run)
    ctx = Context(paper, PRESETS[preset], out_dir, data, synthetic, int(nproc_per_node), dict(options), stream, dry_run)
    if hasattr(module, "prepare"):
        module.prepare(ctx)
    stages = apply_settings(module.build_stages(ctx), settings)
    plan = Plan(stages, out_dir, nproc=ctx.nproc, gflops=ctx.preset.gflops, stream=stream)
    return plan, ctx, module


def reproduce(
    paper: str,
    dataset_dir: str | None = None,
    preset: str | None = None,
    out: str | None = None,
    nproc_per_node: int = 1,
    dry_run: bool = False,
    stream: TextIO | None = None,
    camus_dir: str | None = None,
    series_dir: str | None = None,
    pretrain_dir: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    jobs: int = 1,
    **options: Any,
) -> dict[str, str] | None:
    """Run (or with ``dry_run`` list) the stages of ``paper``'s main experiment, then write its table.

    Args:
        paper: ``unilvseg``, ``tvrl``, ``discovr`` or ``ucl``.
        dataset_dir: the dataset (EchoNet-Dynamic layout; UCL: frame folders with ``labels.csv``); ``None``: the
            built-in synthetic data, said so.
        preset: ``tiny``, ``cpu`` or ``recipe`` (default: ``recipe`` with a GPU, else ``cpu``).
        out: the output folder (default ``runs/reproduce/<paper>-<preset>``).
        nproc_per_node: processes per training stage (``torchrun``).
        dry_run: print the plan (every stage, its command and estimated time) and run nothing.
        stream: where progress goes (default stdout).
        camus_dir: UniLVSeg's out-of-distribution CAMUS folder.
        series_dir: TVRL's timed image series (``series.csv``) for the progression task.
        pretrain_dir: UCL's unlabelled pretraining videos (default: the ``dataset_dir`` videos, labels unused).
        settings: bundle keys per stage-name pattern, ``{"pretrain*": {"learning_rate": 2e-4}}``; a stage whose
            settings change runs again, and the stages after it that depend on it.
        jobs: stages run at the same time, each its own process, a stage once those it depends on have finished
            (:meth:`~medssl_monai.reproduce.plan.Plan.run`; e.g. 2 for single-threaded CPU stages on 2 cores).
        options: the paper's own options (``seeds``, ``fractions``, ``arms``, ``frameworks``, ``tasks``,
            ``labels_csv``, ``folds``, see each paper module).

    Returns:
        The written table files (``None`` for a dry run).

    Raises:
        PlanError: bad input (the message names the option, file or stage).
        StageFailed: a stage failed (its name and log); the next run continues from it.
    """
    from medssl_monai.engines.run_record import is_synthetic_dataset

    stream = stream or sys.stdout
    plan, ctx, module = build_plan(
        paper,
        dataset_dir,
        preset,
        out,
        nproc_per_node,
        stream,
        camus_dir,
        series_dir,
        pretrain_dir,
        settings,
        dry_run,
        **options,
    )
    if dry_run and ctx.synthetic and not is_synthetic_dataset(next(iter(ctx.data.values()))):
        print("(the synthetic data is not written yet: the time estimates leave its samples out)", file=stream)
    print(
        f"{paper}: {module.DESCRIPTION}\npreset {ctx.preset.name}, {len(plan.stages)} stages into {ctx.out}"
        + (f", {ctx.nproc} processes per training stage" if ctx.nproc > 1 else "")
        + (f", up to {jobs} stages at a time" if int(jobs) > 1 else ""),
        file=stream,
        flush=True,
    )
    t0 = time.time()
    plan.run(dry_run=dry_run, jobs=int(jobs))
    if dry_run:
        return None
    table = module.build_table(ctx, plan.stages)
    if ctx.synthetic:
        table.notes.insert(0, "Data: the built-in synthetic data (a demonstration, not the paper's dataset).")
    files = write_table(table, ctx.out)
    print(table.markdown(), file=stream, flush=True)
    print(
        f"{paper}: finished in {format_duration(time.time() - t0)}; table: "
        + ", ".join(str(p) for p in files.values()),
        file=stream,
        flush=True,
    )
    return {k: str(v) for k, v in files.items()}
