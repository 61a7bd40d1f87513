"""The representation benchmark: pretrain every encoder, probe it frozen beside positive controls, claim nothing
that a paired interval does not support.

Usage (from the repository root; the full protocol is one command, 72 minutes on a 2-core CPU)::

    python scripts/benchmark_representations.py --config scripts/benchmark_representations.yaml
    python scripts/benchmark_representations.py --config ... --dataset_dir /data/EchoNet-Dynamic
    python scripts/benchmark_representations.py --config ... --skip-pretraining      # keep changed ones too
    python scripts/benchmark_representations.py --config ... --publish docs/benchmark # copy the results there

Stages (all settings in the YAML; ``results.json`` records each stage's wall time):

1. ``data``: the synthetic EchoNet videos, ultrasound sweeps and timed series (or ``--dataset_dir``, any
   EchoNet-format folder, for the echo tasks), and the per-frame LV volumes of the oracle row;
2. ``cache``: every echo video decoded once (shared clip cache) and kept in memory, grey, at ``probe_size``;
3. ``train``: every encoder's pretraining bundle with ``train.yaml`` + ``cpu.yaml`` (+ ``overrides``), on TRAIN
   only, and UniLVSeg's few-label segmentation fine-tunings with their evaluations (``seg_<random|ssl>_<n>/`` and
   ``seg_<random|ssl>_<n>_eval/``), as the stages of one :class:`medssl_monai.reproduce.plan.Plan` (the
   orchestration of ``python -m medssl_monai reproduce``): each a ``python -m monai.bundle run`` in
   ``<output_dir>/<name>/`` (``models/model.pt``, ``runs/``, ``stage.json``, ``stage.log``), with progress lines
   and ETAs, ``jobs`` of them at a time (the YAML's ``jobs``, default 1; each with ``threads`` torch threads; a
   random-init fine-tuning needs no pretraining and runs beside them). Running the same command again skips
   a finished stage whose settings (its run record) are unchanged, re-runs a changed one, and continues an
   interrupted one from its ``resume.pt``; a failing stage stops the benchmark, naming its log.
   ``--skip-pretraining`` keeps every finished pretraining even when its settings changed (with a WARNING), and reuses
   the checkpoints of an earlier benchmark version (``<name>/pretrain.json``, no ``stage.json``) as they are.
   ``<name>/pretrain.json`` holds what the later stages use: the checkpoint, the trainer's steps, the batch size,
   the run's seconds and the representation monitor's rows (read from ``runs/monitor.json``) and time share;
4. ``supervised``: the same architectures trained on the TRAIN labels for the same steps and batch size (an
   entry's ``supervised_batch_size`` where the SSL batch counts other units: UCL's 32 videos put 128 frames
   through its trained encoder, the frames of 8 clips); from here on the script runs alone on the machine: the
   rows train side by side in ``jobs`` spawned processes of one torch thread each
   (:func:`~medssl_monai.evaluation.controls.train_supervised_rows`), the features below use
   ``inprocess_threads``;
5. ``features``: motion-keeping frozen features (:mod:`medssl_monai.evaluation.temporal`) of every row:
   random init, SSL, supervised, the oracle and pixel controls (:mod:`medssl_monai.evaluation.controls`), and
   the progression task's true lesion sizes with and without the visit times
   (:mod:`medssl_monai.evaluation.growth_oracle`);
6. ``probes``: cross-validated probes on TRAIN, bootstrap intervals on the evaluation videos
   (:mod:`medssl_monai.evaluation.protocol`), the label-efficiency curve and the paired claims;
7. ``write``: ``results.json``, ``benchmark.md`` (refused when the oracle row is below EF R2 0.9 or abnormal AUROC
   0.95, or the growth oracle below progression AUROC 0.95), ``benchmark.png``, ``claims.json`` and
   ``controls.json`` in ``output_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medssl_monai.encoders import ENCODER_BUNDLES, build_encoder
from medssl_monai.evaluation.benchmark import METRICS, benchmark_chart, benchmark_table, claims_chart, monitor_chart
from medssl_monai.evaluation.clips import embed_videos, layout_indices, load_frame_store, load_series
from medssl_monai.evaluation.controls import (
    dark_area_features,
    edv_esv_features,
    lv_volume_curves,
    oracle_features,
    std_map_features,
    train_supervised_rows,
    write_lv_volumes,
)
from medssl_monai.evaluation.growth_oracle import (
    MIN_GROWTH_ORACLE_AUROC,
    check_growth_oracle,
    growth_features,
    lesion_sizes,
)
from medssl_monai.evaluation.protocol import (
    ProbeData,
    headline_claims,
    make_claim,
    paired_claims,
    probe_rows,
    validate_claims,
    validate_controls,
    write_json,
)
from medssl_monai.evaluation.series import embed_series
from medssl_monai.evaluation.temporal import TemporalFeatures
from medssl_monai.reproduce.plan import STAGE_FILE, Estimate, Stage

logger = logging.getLogger("benchmark_representations")

ORACLE = "oracle_lv_volume"
GROWTH_ORACLE = "oracle_lesion_growth"  # the progression task's controls (evaluation.growth_oracle)
GROWTH_NO_TIME = "oracle_lesion_sizes_no_time"
PIXEL_ROWS = ("pixels_std_map", "pixels_dark_area")
COLUMNS = tuple(c for c in METRICS if c[0] != "segmentation")
METRIC_NAMES = {f"{t}_{m}" if t != "ef" else f"ef_{m}": h for t, m, h, _ in COLUMNS}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers, data-generation processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Stages:
    """Wall and CPU time per stage (summed over calls), for ``results.json`` and the time estimate.

    On a shared machine the wall time depends on the other jobs; the CPU time is what the stage costs, so a run
    measured there can still be extrapolated to an idle machine (wall >= CPU / cores).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 1)
            self.cpu_seconds[name] = round(self.cpu_seconds.get(name, 0.0) + _cpu_seconds() - c0, 1)
            logger.info("stage %s: %.0f s wall, %.0f s CPU so far", name, self.seconds[name], self.cpu_seconds[name])


# ---- 1. data ----------------------------------------------------------------------------------------------


def make_data(cfg: dict, dataset_dir: str | None) -> dict[str, Path]:
    """The echo set (``--dataset_dir`` or synthetic), the ultrasound sweeps and the timed series."""
    from medssl_monai.data.synthetic import make_echonet, make_frame_folders, make_timed_series

    root, seed, d, workers = Path(cfg["data_root"]), cfg["data_seed"], cfg["data"], cfg.get("num_workers", 1)
    paths = {
        "echonet": Path(dataset_dir)
        if dataset_dir
        else make_echonet(root / f"echonet_{d['echonet_videos']}", d["echonet_videos"], seed, num_workers=workers),
        "ultrasound": make_frame_folders(
            root / f"ultrasound_{d['ultrasound_videos']}", d["ultrasound_videos"], seed, num_workers=workers
        ),
        "timed_series": make_timed_series(
            root / f"timed_series_{d['series_subjects']}", d["series_subjects"], seed, num_workers=workers
        ),
    }
    return paths


def echo_items(root: Path) -> list[dict]:
    """Every labelled video with ``abnormal``: the synthetic ``Abnormal`` column, else EF < 50 (reduced EF)."""
    from medssl_monai.data.echonet import load_echonet_datalist

    truth = root / "SyntheticTruth.csv"
    items = load_echonet_datalist(root, labels_csv=truth.name if truth.is_file() else None)
    for it in items:
        it["abnormal"] = int(it["Abnormal"]) if "Abnormal" in it else int(float(it["ef"]) < 50.0)
    return [it for it in items if np.isfinite(float(it["ef"]))]


def growth_controls(results: dict[str, Any]) -> dict[str, Any]:
    """controls.json's progression part: the growth oracle rows' AUROC and interval (none without the truth)."""
    out: dict[str, Any] = {}
    for key, row in (("progression", GROWTH_ORACLE), ("progression_no_time", GROWTH_NO_TIME)):
        cell = results.get(row, {}).get("progression")
        if isinstance(cell, dict):
            a = cell["auroc"]
            out[f"{key}_row"] = row
            out[f"{key}_auroc"] = a["estimate"]
            out[f"{key}_auroc_ci95"] = [a["ci_low"], a["ci_high"]]
    return out


def echo_arrays(items: list[dict]) -> dict[str, np.ndarray]:
    """Per-video arrays of :func:`echo_items`: ``ids``, ``split`` (upper case), ``ef`` and ``abnormal``."""
    return {
        "ids": np.array([str(it["video_id"]) for it in items]),
        "split": np.array([str(it["split"]).upper() for it in items]),
        "ef": np.array([float(it["ef"]) for it in items]),
        "abnormal": np.array([int(it["abnormal"]) for it in items]),
    }


# ---- 3. pretraining ---------------------------------------------------------------------------------------


def pretraining_stage(name: str, spec: dict, data: dict[str, Path], cache_dir: Path) -> Stage:
    """The encoder entry's pretraining as a stage of :mod:`medssl_monai.reproduce.plan` (the orchestration that
    ``python -m medssl_monai reproduce`` runs too): one ``python -m monai.bundle run`` of the entry's pretraining
    bundle (:data:`~medssl_monai.encoders.ENCODER_BUNDLES`) with ``train.yaml`` + its ``configs``, on its pretraining
    set (TRAIN only), the shared clip cache and its ``overrides``, in ``<output_dir>/<name>/`` (``bundle_root``:
    the bundles write ``models/model.pt`` and ``runs/`` there)."""
    from medssl_monai.config_checks import check_overrides

    bundle, extra = ENCODER_BUNDLES[spec["kind"]]
    configs = ["train.yaml", *spec.get("configs", []), *extra]
    dataset = Path(data[_pretraining_set(spec)]).resolve()  # absolute: the stage runs in its own folder
    own = dict(spec.get("overrides", {}))
    moved = sorted({"bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "cache_dir"} & set(own))
    if moved:
        raise SystemExit(f"{name}: overrides {moved} are set by the benchmark (the stage folder, the data, the cache)")
    overrides = {"dataset_dir": str(dataset), "cache_dir": str(Path(cache_dir).resolve()), **own}
    stage = Stage(
        name,
        bundle,
        configs,
        overrides,
        outputs=("models/model.pt",),
        estimate=_pretraining_estimate(spec, bundle, configs, overrides, dataset),
        label=f"{spec['kind']} pretraining on {dataset.name} ({', '.join(configs)})",
    )
    check_overrides(stage.config_files(), overrides)  # a typo in an entry's overrides names the closest key
    return stage


def _pretraining_estimate(spec: dict, bundle: str, configs: list[str], overrides: dict, dataset: Path) -> Estimate:
    """The stage's work for the plan's first ETA (the reproduce modules' FLOPs per clip at the CPU preset); once
    a stage of the same bundle and configs has finished, its measured time per sample replaces it."""
    from medssl_monai.reproduce import discovr, tvrl, ucl, unilvseg
    from medssl_monai.reproduce.common import config_values, count_echonet, count_frame_folders, count_series

    epochs = int(overrides.get("epochs") or config_values(bundle, configs, ["epochs"]).get("epochs") or 1)
    kind = _pretraining_set(spec)
    if kind == "timed_series":
        n = count_series(dataset)
    elif kind == "ultrasound":
        n = count_frame_folders(dataset)[0]
    else:
        n = count_echonet(dataset, "TRAIN")
    gflop = {
        "unilvseg": unilvseg.GFLOP_PER_CLIP["cpu"],
        "tvrl": tvrl.GFLOP_PER_CLIP["cpu"],
        "discovr": discovr.GFLOP_PER_CLIP["cpu"],
        "videomae": discovr.GFLOP_PER_CLIP["cpu"],
        "ucl": ucl.GFLOP_PER_VIDEO["cpu"],
    }.get(spec["kind"], 0.0)
    samples = float(epochs * max(n, 1))
    return Estimate(flop=samples * gflop * 1e9, samples=samples)


def pretrain_all(
    entries: dict[str, dict],
    data: dict[str, Path],
    out: Path,
    cache_dir: Path,
    skip: bool,
    threads: int,
    jobs: int = 1,
    more: Sequence[Stage] = (),
    gflops: float = 1.0,
) -> dict[str, dict]:
    """Every entry's pretraining stage, run by one :class:`~medssl_monai.reproduce.plan.Plan` over ``out``.

    The plan skips a stage that finished with the settings it would use now (its ``stage.json`` and
    ``models/model.pt.json`` run records), runs a changed one again, prints the progress lines with ETAs and stops
    on a failing stage, naming it and its ``stage.log``. ``skip`` (``--skip-pretraining``) keeps every finished
    stage even when its settings changed (a WARNING names the change), and reuses a checkpoint of the earlier
    layout (``<name>/pretrain.json`` + ``models/model.pt`` without ``stage.json``) as it is. ``jobs`` (the config's
    ``jobs``, default 1): stages run at the same time, each its own process with ``threads`` torch threads.
    ``more``: other stages of the same plan after the pretrainings (the few-label segmentation arms), which may
    depend on them; ``skip`` keeps only the pretrainings it would not re-run, the others are decided as usual.
    ``gflops`` (the config's ``gflops``): the sustained GFLOP/s per stage that turns the FLOP estimates into the
    first ETAs, before a stage of the same kind has been timed in ``out``.

    Returns ``name -> {"checkpoint", "steps", "batch_size", "seconds", "monitor", "monitor_share"}`` (also
    written to ``<out>/<name>/pretrain.json``).
    """
    from medssl_monai.reproduce.plan import Plan, StageFailed

    stages = [pretraining_stage(name, spec, data, cache_dir) for name, spec in entries.items()]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}  # the config's threads
    plan = Plan([*stages, *more], out, env=env, gflops=gflops)
    if skip:
        kept = []
        for d in plan.decisions():
            if d.stage.name in entries and d.run and _finished(d.stage.folder(plan.out)):
                logger.warning("--skip-pretraining: reusing %s though it would run again (%s)", d.stage.name, d.reason)
            else:
                kept.append(d.stage)
        names = {s.name for s in kept}  # a kept stage no longer waits for a reused pretraining
        kept = [dataclasses.replace(s, depends_on=tuple(x for x in s.depends_on if x in names)) for s in kept]
        plan = Plan(kept, out, env=env, gflops=gflops)
    try:
        plan.run(jobs=jobs)
    except StageFailed as err:
        raise SystemExit(f"pretraining: {err}") from err
    return {name: pretrain_info(name, spec, plan.out / name) for name, spec in entries.items()}


def _finished(folder: Path) -> bool:
    """A finished pretraining in ``folder``: a done ``stage.json``, or the earlier layout's ``pretrain.json``."""
    if not (folder / "models" / "model.pt").is_file():
        return False
    saved = _read_json(folder / STAGE_FILE)
    return saved.get("status") == "done" if saved is not None else (folder / "pretrain.json").is_file()


def pretrain_info(name: str, spec: dict, folder: Path) -> dict:
    """The finished stage's ``{"checkpoint", "steps", "batch_size", "seconds", "monitor", "monitor_share"}``:
    the trainer's iteration from its run record (``stage.json``), the bundle run's wall time, the representation
    monitor's rows from ``runs/monitor.json`` and their share of that time; written to ``<folder>/pretrain.json``."""
    from medssl_monai.engines.monitor import HISTORY_FILE, read_history

    ckpt = folder / "models" / "model.pt"
    record = folder / "pretrain.json"
    saved = _read_json(folder / STAGE_FILE)
    if saved is None and _finished(folder):  # the earlier layout, reused with --skip-pretraining
        logger.warning("%s: reusing %s of an earlier benchmark version (no run record)", name, ckpt)
        return json.loads(record.read_text())
    if saved is None or saved.get("status") != "done" or not ckpt.is_file():
        raise SystemExit(f"{name}: no finished pretraining in {folder}")
    trainer = saved.get("trainer") or (_read_json(folder / "models" / "model.pt.json") or {}).get("trainer")
    if not trainer:
        raise SystemExit(f"{name}: {folder / STAGE_FILE} records no trainer iteration (the supervised row's budget)")
    info = {
        "checkpoint": str(ckpt),
        "steps": int(trainer["iteration"]),
        "batch_size": int(_bundle_parser(spec).get_parsed_content("batch_size")),
        "seconds": round(float(saved.get("seconds", 0.0)), 1),
        "monitor": read_history(folder / "runs" / HISTORY_FILE),
    }
    mon_s = sum(r.get("seconds", 0.0) for r in info["monitor"])
    info["monitor_share"] = round(mon_s / max(info["seconds"], 1e-9), 4)  # the monitor's cost in the run
    record.write_text(json.dumps(info, indent=1))
    logger.info("pretrained %s: %d steps in %.0f s (%s)", name, info["steps"], info["seconds"], folder)
    return info


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pretraining_set(spec: dict) -> str:
    """The data an encoder is pretrained on: ``spec["dataset"]``, else UCL its own domain and the rest echo."""
    return str(spec.get("dataset", "ultrasound" if spec["kind"] == "ucl" else "echonet"))


def _bundle_parser(spec: dict):
    from medssl_monai.encoders import encoder_config

    return encoder_config(spec["kind"], configs=("train.yaml", *spec.get("configs", [])), **_arch(spec))


def _arch(spec: dict) -> dict:
    """The overrides that shape the network (not the training length or the loader)."""
    skip = {"epochs", "num_workers", "warmup_epochs", "curriculum_start_epoch", "mlm_start_epoch", "val_interval"}
    return {k: v for k, v in spec.get("overrides", {}).items() if k not in skip and "#" not in k}


def _encoder_factory(spec: dict, ckpt: str | None) -> Callable[[], torch.nn.Module]:
    """A picklable builder of the entry's encoder (random init from seed 0, then ``ckpt`` if given)."""
    configs = ("train.yaml", *spec.get("configs", []))
    return functools.partial(build_encoder, spec["kind"], ckpt, configs=configs, seed=0, **_arch(spec))


def _encoder(spec: dict, ckpt: str | None):
    return _encoder_factory(spec, ckpt)().eval()


# ---- 5. features ------------------------------------------------------------------------------------------


def echo_features(
    fn: Callable[[torch.Tensor], torch.Tensor], ids, store, layout: dict, clips: int, batch_size: int
) -> np.ndarray:
    return embed_videos(fn, store, ids, layout["num_frames"], layout["period"], clips, batch_size)


def train_clips(ids, store, layout: dict, clips: int) -> torch.Tensor:
    """Every TRAIN video's probe clips, ``N clips x 1 x T x S x S`` uint8 (the supervised row's data)."""
    arr = [store[i][layout_indices(len(store[i]), layout["num_frames"], layout["period"], clips)] for i in ids]
    return torch.from_numpy(np.concatenate(arr))[:, None]


# ---- per-paper claims ---------------------------------------------------------------------------------------


def fewlabel_frames_stage(cfg: dict, variants: dict[str, str | None], spec: dict, n_res: int, seed: int):
    """UCL's claim: few-label frame classification on a second, independently drawn labelled set of sweeps.

    Returns ``(results, claims)``: every row's frame accuracy per labelled-video setting (mean over draws, and
    each draw) and the paired comparisons SSL - random init and SSL - pixel thumbnail per setting.
    """
    from medssl_monai.data.frame_folders import load_frame_folder_datalist
    from medssl_monai.data.synthetic import make_frame_folders
    from medssl_monai.evaluation.fewlabel_frames import (
        embed_frames,
        fewlabel_rows,
        load_video_frames,
        paired_frame_accuracy,
        stratified_video_split,
        thumbnail_features,
    )

    u = cfg["ultrasound_labelled"]
    root = make_frame_folders(
        Path(cfg["data_root"]) / f"ultrasound_labelled_{u['videos']}",
        u["videos"],
        cfg["data_seed"] + 1,  # another draw than the pretraining sweeps: the GBUSV -> GBCU setting
        num_workers=cfg.get("num_workers", 1),
    )
    items = load_frame_folder_datalist(root, labels_csv="labels.csv")
    vids = [str(it["video_id"]) for it in items]
    v_labels = np.array([int(it["label"]) for it in items])
    v_split = stratified_video_split(v_labels, u["eval_fraction"], seed)
    f = int(u["frames_per_video"])
    frames = np.concatenate([load_video_frames(it["image"], f, int(u["size"])) for it in items])
    frame_video = np.repeat(vids, f)
    frame_labels = np.repeat(v_labels, f)
    feats = {"pixels_thumbnail": thumbnail_features(frames, int(u.get("thumbnail_grid", 8)))}
    for row, ckpt in variants.items():
        if ckpt == "supervised":
            continue
        feats[row] = embed_frames(_encoder(spec, ckpt), frames, cfg["batch_size"] * 4)
    settings = {str(k): (None if v is None else int(v)) for k, v in u["settings"].items()}
    results, correct = fewlabel_rows(
        feats, frame_labels, frame_video, dict(zip(vids, v_split)), settings, int(u["draws"]), seed
    )
    ev_video = frame_video[np.isin(frame_video, np.array(vids)[v_split == "TEST"])]
    claims = []
    for name in settings:
        for base in ("ucl_random", "pixels_thumbnail"):
            r = paired_frame_accuracy(correct["ucl_ssl"][name], correct[base][name], ev_video, n_res, seed)
            claims.append(
                make_claim(
                    "ucl",
                    "ucl_ssl",
                    base,
                    f"frame_accuracy_{name}",
                    True,
                    r["a"],
                    r["b"],
                    r["diff"],
                    r["diff_ci95"],
                    r["a_ci95"],
                    r["b_ci95"],
                    r["n_videos"],
                    f"frame accuracy ({name} labels)",
                )
            )
    meta = {
        "videos": len(vids),
        "eval_videos": int((v_split == "TEST").sum()),
        "frames_per_video": f,
        "settings": settings,
        "draws": int(u["draws"]),
    }
    return {"rows": results, "meta": meta}, claims


SEG_ARMS = ("unilvseg_random", "unilvseg_ssl")


def segmentation_stages(
    cfg: dict, echonet: Path, pretraining: str, out: Path, cache_dir: Path, seed: int
) -> dict[tuple[int, str], tuple[Stage, Stage]]:
    """UniLVSeg's claim as plan stages: for every number of labelled TRAIN videos, the segmentation bundle
    fine-tuned from random init and from the ``pretraining`` stage's checkpoint (the same videos and budget), each
    with its evaluation (:func:`~medssl_monai.evaluation.fewlabel_segmentation.fewlabel_segmentation_stages`), in
    ``<out>/seg_<arm>_<n>/`` and ``<out>/seg_<arm>_<n>_eval/``. They join the pretraining plan: the random-init
    arms need nothing and run beside the pretrainings, the SSL arms after ``pretraining``."""
    from medssl_monai.evaluation.fewlabel_segmentation import SEGMENTATION_BUNDLE, fewlabel_segmentation_stages
    from medssl_monai.reproduce import unilvseg
    from medssl_monai.reproduce.common import config_values

    sc = cfg["segmentation"]
    configs = tuple(sc.get("configs", ("train.yaml", "cpu.yaml")))
    ckpt = out / pretraining / "models" / "model.pt"
    budget = {**config_values(SEGMENTATION_BUNDLE, configs, ["epoch_length", "batch_size"]), **sc.get("overrides", {})}
    clips = float((budget.get("epoch_length") or 1) * budget.get("batch_size", 1))
    work = Estimate(flop=clips * unilvseg.GFLOP_PER_CLIP["cpu"] * 1e9, samples=clips)
    arms = {}
    for n in sc["label_videos"]:
        for row in SEG_ARMS:
            ssl = row.endswith("_ssl")
            arms[(int(n), row)] = fewlabel_segmentation_stages(
                out,
                f"seg_{row.split('_')[-1]}_{int(n)}",
                echonet,
                int(n),
                ckpt if ssl else None,
                cache_dir=cache_dir,
                configs=configs,
                seed=seed,
                eval_splits=tuple(cfg["eval_splits"]),
                overrides=sc.get("overrides"),
                depends_on=(pretraining,) if ssl else (),
                estimate=work,
            )
    return arms


def fewlabel_segmentation_results(
    arms: dict[tuple[int, str], tuple[Stage, Stage]], out: Path, n_res: int, seed: int
) -> tuple[dict[str, Any], list[dict]]:
    """The finished segmentation arms of :func:`segmentation_stages` compared: pooled Dice of SSL minus random
    init per number of labelled videos, paired over the evaluation videos; ``(results, claims)``."""
    from medssl_monai.evaluation.bootstrap import paired_bootstrap_pooled_dice
    from medssl_monai.evaluation.fewlabel_segmentation import read_fewlabel_segmentation

    results: dict[str, Any] = {}
    claims = []
    for n in sorted({k[0] for k in arms}):
        got = {row: read_fewlabel_segmentation(out, *arms[(n, row)]) for row in SEG_ARMS}
        r = paired_bootstrap_pooled_dice(got["unilvseg_ssl"], got["unilvseg_random"], n_res, seed)
        claims.append(
            make_claim(
                "unilvseg",
                "unilvseg_ssl",
                "unilvseg_random",
                f"pooled_dice_{n}",
                True,
                r["a"],
                r["b"],
                r["diff"],
                r["diff_ci95"],
                r["a_ci95"],
                r["b_ci95"],
                r["n"],
                f"pooled Dice ({n} labelled videos)",
            )
        )
        results[str(n)] = {
            row: {"pooled_dice": a["dice"]} | {k: a[k] for k in ("steps", "seconds", "train_videos")}
            for row, a in got.items()
        }
    return results, claims


# ---- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="scripts/benchmark_representations.yaml")
    ap.add_argument("--dataset_dir", help="an EchoNet-format folder for the echo tasks (default: synthetic)")
    ap.add_argument("--output_dir", help="overrides the config's output_dir")
    ap.add_argument(
        "--skip-pretraining",
        action="store_true",
        help="never re-run a finished pretraining stage, even when its settings changed (a WARNING names the "
        "change); also reuses <output_dir>/<name>/models/model.pt of an earlier benchmark version. Without it a "
        "finished stage with unchanged settings is skipped anyway",
    )
    ap.add_argument("--only", nargs="*", help="encoder names to run (default: all); controls always run")
    ap.add_argument("--publish", help="copy claims.json, controls.json, benchmark.md and benchmark.png there")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.output_dir or cfg["output_dir"])
    if args.output_dir:
        cfg["data_root"] = str(out / "data")
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    torch.set_num_threads(int(cfg.get("threads", 2)))
    stages = Stages()
    t_start = time.time()
    n_res, seed, evals = cfg["n_resamples"], cfg["seed"], cfg["eval_splits"]

    with stages("data"):
        data = make_data(cfg, args.dataset_dir)
        items = echo_items(data["echonet"])
        arrays = echo_arrays(items)
        ids = [str(i) for i in arrays["ids"]]
        split, ef, abnormal = arrays["split"], arrays["ef"], arrays["abnormal"]
        curves = lv_volume_curves(data["echonet"])
        if curves is not None:
            write_lv_volumes({i: curves[i] for i in ids}, out / "LVVolumes.csv")  # the oracle's sidecar
        from medssl_monai.data.timed_series import load_timed_series_datalist

        series_items = load_timed_series_datalist(data["timed_series"] / "series.csv")
        series = load_series(series_items, cfg["series_frames"])
    with stages("cache"):
        from medssl_monai.data.cache import ClipCache

        ClipCache(cache_dir).build([it["image"] for it in items], num_workers=cfg.get("num_workers", 0))
        store = load_frame_store(items, cfg["probe_size"], cache_dir)

    echo_labels = {"ef": ef, "abnormal": abnormal}
    s_split = np.array([str(it["split"]).upper() for it in series_items])
    s_groups = np.array([str(it.get("subject_id", i)) for i, it in enumerate(series_items)])
    s_labels = {"progression": np.array([int(it["label"]) for it in series_items])}
    groups = np.array(ids)
    rows: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # row -> (echo features, series features)
    meta_rows: dict[str, dict] = {}

    # controls: the oracle and the pixel rows
    with stages("features"):
        pix = cfg["controls"]["pixels"]
        lay = pix["layout"]
        if curves is not None:
            n_clips = cfg["clips_per_video"]
            idx = {i: layout_indices(len(store[i]), lay["num_frames"], lay["period"], n_clips) for i in ids}
            x = np.stack([oracle_features(curves[i], idx[i]).mean(axis=0) for i in ids])
            meta_rows[ORACLE] = {"source": "per-frame LV volumes (method of discs of every frame's tracing)"}
        else:
            x = edv_esv_features(items)
            meta_rows[ORACLE] = {"source": "EDV, ESV, ESV/EDV from FileList.csv (no per-frame volumes)"}
        rows[ORACLE] = (x, None)  # no LV in the timed series: progression n/a
        sizes = lesion_sizes(data["timed_series"] / "series.csv", series_items)
        if sizes is not None:  # the true lesion sizes, with and without the visit times (progression only)
            visit_times = [it["times"] for it in series_items]
            for row, use_time in ((GROWTH_ORACLE, True), (GROWTH_NO_TIME, False)):
                rows[row] = (None, growth_features(visit_times, sizes, cfg["series_frames"], use_time))
            meta_rows[GROWTH_ORACLE] = {"source": "true lesion sizes (SyntheticTruth.csv) and visit times"}
            meta_rows[GROWTH_NO_TIME] = {"source": "true lesion sizes (SyntheticTruth.csv), visit index for time"}
        fns = {
            "pixels_std_map": lambda v: std_map_features(v, pix["grid"]),
            "pixels_dark_area": lambda v: dark_area_features(v, pix["dark_thresholds"]),
        }
        for name, fn in fns.items():
            rows[name] = (
                echo_features(fn, ids, store, lay, cfg["clips_per_video"], cfg["batch_size"]),
                embed_series(fn, series, cfg["batch_size"], inputs=()),
            )
            meta_rows[name] = {"layout": lay}

    # an entry is named after its SSL row (``tvrl_ssl``); its other rows share the method name (``tvrl_random``)
    names = args.only or [n for n, e in cfg["encoders"].items() if e.get("enabled", True)]
    unknown = [n for n in names if n not in cfg["encoders"] or not n.endswith("_ssl")]
    if unknown:
        raise SystemExit(f"--only / encoders: unknown or not named <method>_ssl: {unknown}")
    tr_mask = split == "TRAIN"
    seg_arms: dict[tuple[int, str], tuple[Stage, Stage]] = {}
    if "unilvseg_ssl" in names and cfg.get("segmentation"):
        seg_arms = segmentation_stages(cfg, data["echonet"], "unilvseg", out, cache_dir, seed)
    with stages("train"):  # every pretraining and fine-tuning first: one plan, one ETA, `jobs` at a time
        entries = {n[: -len("_ssl")]: cfg["encoders"][n] for n in names}
        pretrained = pretrain_all(
            entries,
            data,
            out,
            cache_dir,
            args.skip_pretraining,
            int(cfg.get("threads", 2)),
            jobs=int(cfg.get("jobs", 1)),
            more=[s for arm in seg_arms.values() for s in arm],
            gflops=float(cfg.get("gflops", 1.0)),
        )
    # what follows runs alone on the machine (no plan stage beside it): the features may use every core
    torch.set_num_threads(int(cfg.get("inprocess_threads", cfg.get("threads", 2))))
    # the supervised rows first, `jobs` at a time (independent of each other and of the features below)
    train_ids = [i for i, m in zip(ids, tr_mask) if m]
    supervised_tasks = {}
    for entry in names:
        spec = cfg["encoders"][entry]
        if not spec.get("supervised"):
            continue
        name = entry[: -len("_ssl")]
        info = pretrained[name]
        n_clips = int(spec.get("clips_per_video", cfg["clips_per_video"]))
        rep = np.repeat(np.flatnonzero(tr_mask), n_clips)
        train_args = {
            "clips": train_clips(train_ids, store, spec.get("layout", {}), n_clips),
            "ef": ef[rep],
            "abnormal": abnormal[rep],
            "steps": info["steps"],
            "batch_size": int(spec.get("supervised_batch_size", info["batch_size"])),
            "learning_rate": cfg["supervised"]["learning_rate"],
            "weight_decay": cfg["supervised"]["weight_decay"],
            "seed": seed,
        }
        supervised_tasks[f"{name}_supervised"] = (_encoder_factory(spec, None), train_args)
    with stages("supervised"):
        supervised = train_supervised_rows(supervised_tasks, jobs=int(cfg.get("jobs", 1)))
    for row, (_, losses, seconds) in supervised.items():
        train_args = supervised_tasks[row][1]
        meta_rows[row] = {
            "steps": train_args["steps"],
            "batch_size": train_args["batch_size"],
            "ssl_batch_size": pretrained[row[: -len("_supervised")]]["batch_size"],
            "loss_first_last": [losses[0], losses[-1]],
            "seconds": round(seconds, 1),
        }
    del supervised_tasks
    comparisons: list[tuple[str, str, str]] = []
    extra_results: dict[str, Any] = {}
    extra_claims: list[dict] = []  # paired comparisons of the per-paper stages (few-label frames, segmentation)
    for entry in names:
        spec = cfg["encoders"][entry]
        name = entry[: -len("_ssl")]
        lay = spec.get("layout", {})
        n_clips = int(spec.get("clips_per_video", cfg["clips_per_video"]))
        series_only = spec.get("probe", "echo") == "series"  # pretrained on the timed series: probed on them only
        info = pretrained[name]
        variants = {f"{name}_random": None, f"{name}_ssl": info["checkpoint"]}
        if spec.get("supervised"):
            variants[f"{name}_supervised"] = "supervised"
        for row, ckpt in variants.items():
            enc = supervised[row][0] if ckpt == "supervised" else _encoder(spec, ckpt)
            with stages("features"):
                t0 = time.time()
                feat = TemporalFeatures(enc).eval()
                x = echo_features(feat, ids, store, lay, n_clips, cfg["batch_size"]) if series_only is False else None
                s = embed_series(feat, series, cfg["batch_size"])  # times relative to the first visit, as trained
            rows[row] = (x, s)
            meta_rows.setdefault(row, {}).update(
                {
                    "layout": lay,
                    "clips_per_video": n_clips,
                    "dim": int((s if x is None else x).shape[1]),
                    "feature_s": time.time() - t0,
                    "pretraining_set": _pretraining_set(spec),
                }
            )
            if ckpt and ckpt != "supervised":
                meta_rows[row].update({k: info[k] for k in ("steps", "batch_size", "seconds")})
                meta_rows[row].update({k: info.get(k) for k in ("monitor", "monitor_share")})
            np.savez_compressed(
                out / f"{row}_features.npz", **{k: v for k, v in (("echo", x), ("series", s)) if v is not None}
            )
        comparisons.append((name, f"{name}_ssl", f"{name}_random"))
        if spec.get("supervised"):
            comparisons.append((name, f"{name}_ssl", f"{name}_supervised"))
        comparisons.extend((name, f"{name}_ssl", p) for p in PIXEL_ROWS)
        comparisons.extend((name, f"{name}_ssl", other) for other in spec.get("compare_with", []) if other in names)
        if entry == "ucl_ssl" and cfg.get("ultrasound_labelled"):
            with stages("fewlabel_frames"):
                extra_results["fewlabel_frames"], c = fewlabel_frames_stage(cfg, variants, spec, n_res, seed)
                extra_claims.extend(c)
        if entry == "unilvseg_ssl" and seg_arms:
            with stages("fewlabel_segmentation"):
                extra_results["fewlabel_segmentation"], c = fewlabel_segmentation_results(seg_arms, out, n_res, seed)
                extra_claims.extend(c)

    results: dict[str, Any] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    efficiency: dict[str, Any] = {}
    with stages("probes"):  # rows in `jobs` processes, one BLAS thread each (the probes gain nothing from two)
        probe_data = {
            row: (
                None if x is None else ProbeData(x, echo_labels, split, groups),
                None if s is None else ProbeData(s, s_labels, s_split, s_groups),
            )
            for row, (x, s) in rows.items()
        }
        probed = probe_rows(
            probe_data, evals, n_res, seed, cfg["label_fractions"], cfg["label_seeds"], jobs=int(cfg.get("jobs", 1))
        )
        for row, (res, sc, eff) in probed.items():
            results[row], scores[row] = res, sc
            if eff is not None:
                efficiency[row] = eff
        ev = np.isin(split, [e.upper() for e in evals])
        s_ev = np.isin(s_split, [e.upper() for e in evals])
        task_labels = {
            "ef": ef[ev],
            "abnormal_lin": abnormal[ev],
            "abnormal_knn": abnormal[ev],
            "anomaly": abnormal[ev],
            "progression": s_labels["progression"][s_ev],
        }
        everything = paired_claims(comparisons, scores, task_labels, n_resamples=n_res, seed=seed, names=METRIC_NAMES)
        everything += extra_claims
        claims = headline_claims(everything, cfg.get("headline_claims", []))

    with stages("write"):
        table_rows = {r: {k: v for k, v in res.items() if k != "_probe"} for r, res in results.items()}
        table = benchmark_table(table_rows, COLUMNS, oracle_row=ORACLE)  # refuses a broken protocol
        growth = results.get(GROWTH_ORACLE, {}).get("progression")
        if growth is not None:
            check_growth_oracle(growth["auroc"]["estimate"])
        benchmark_chart(table_rows, out / "benchmark.png", COLUMNS)
        figures = ["benchmark.png"]
        if claims:
            claims_chart(claims, out / "claims.png", "Headline claims: SSL minus baseline (paired, 95 % interval)")
            figures.append("claims.png")
        histories = {r: m["monitor"] for r, m in meta_rows.items() if m.get("monitor")}
        if histories:
            monitor_chart(histories, out / "monitor.png")
            figures.append("monitor.png")
        oracle = results[ORACLE]
        controls = {
            "oracle_row": ORACLE,
            "source": meta_rows[ORACLE]["source"],
            "ef_r2": oracle["ef"]["r2"]["estimate"],
            "ef_r2_ci95": [oracle["ef"]["r2"]["ci_low"], oracle["ef"]["r2"]["ci_high"]],
            "abnormal_auroc": oracle["abnormal_lin"]["auroc"]["estimate"],
            "abnormal_auroc_ci95": [oracle["abnormal_lin"]["auroc"][k] for k in ("ci_low", "ci_high")],
            "thresholds": {"ef_r2": 0.9, "abnormal_auroc": 0.95, "progression_auroc": MIN_GROWTH_ORACLE_AUROC},
            "pixel_rows": {
                r: {
                    "ef_r2": results[r]["ef"]["r2"]["estimate"],
                    "abnormal_auroc": results[r]["abnormal_lin"]["auroc"]["estimate"],
                }
                for r in PIXEL_ROWS
            },
            **growth_controls(results),
            "protocol": cfg.get("protocol", "custom"),
            "n_eval_videos": int(ev.sum()),
            "n_eval_abnormal": int(abnormal[ev].sum()),
        }
        write_json(out / "claims.json", claims, validate_claims)
        write_json(out / "comparisons.json", everything, validate_claims)
        write_json(out / "controls.json", controls, validate_controls)
        markdown = render_markdown(table, claims, everything, efficiency, extra_results, cfg, controls)
        (out / "benchmark.md").write_text(markdown)
        meta = {
            "protocol": cfg.get("protocol", "custom"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch_threads": int(cfg.get("threads", 2)),  # each training stage's
            "inprocess_threads": torch.get_num_threads(),  # the features (supervised rows, probes: `jobs` processes)
            "python": platform.python_version(),
            "torch": torch.__version__,
            "stages_s": stages.seconds,
            "stages_cpu_s": stages.cpu_seconds,
            "total_s": round(time.time() - t_start, 1),
            "counts": {
                "videos": len(ids),
                "train": int(tr_mask.sum()),
                "eval": int(ev.sum()),
                "eval_abnormal": int(abnormal[ev].sum()),
                "series_eval": int(s_ev.sum()),
            },
            "rows": meta_rows,
            "config": cfg,
        }
        payload = {
            "results": results,
            "label_efficiency": efficiency,
            **extra_results,
            "claims": claims,
            "comparisons": everything,
            "controls": controls,
            "meta": meta,
        }
    meta["total_s"] = round(time.time() - t_start, 1)  # after the write stage, so that it is counted too
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_jsonable))
    if args.publish:
        dest = Path(args.publish)
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("claims.json", "comparisons.json", "controls.json", "benchmark.md", *figures):
            shutil.copy2(out / f, dest / f)
    print(markdown)
    print(json.dumps({k: meta[k] for k in ("total_s", "stages_s", "stages_cpu_s", "counts")}, indent=1))
    return payload


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fmt(v: float) -> str:
    return f"{v:+.3f}" if np.isfinite(v) else "nan"


def _comparison_lines(claims: list[dict]) -> list[str]:
    lines = [
        "| method | SSL row | baseline row | metric | SSL | baseline | difference [95% CI] | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        lo, hi = c["diff_ci95"]
        lines.append(
            f"| {c['method']} | {c['ssl_row']} | {c['baseline_row']} | {METRIC_NAMES.get(c['metric'], c['metric'])} | "
            f"{c['ssl']:.3f} | {c['baseline']:.3f} | {_fmt(c['diff'])} [{_fmt(lo)}, {_fmt(hi)}] | {c['verdict']} |"
        )
    return lines


def render_markdown(
    table: str,
    claims: list[dict],
    everything: list[dict],
    efficiency: dict,
    extra: dict,
    cfg: dict,
    controls: dict,
) -> str:
    """The headline claims, the main table, the label-efficiency table, the per-paper stages and every paired
    comparison, as markdown."""
    lines = [
        f"Protocol: {cfg.get('protocol', 'custom')}; {controls['n_eval_videos']} evaluation videos "
        f"({controls['n_eval_abnormal']} abnormal).",
        "",
        "Headline claims (one per paper claim, declared in the configuration before the run; SSL minus baseline "
        "on the same evaluation units, 95% paired bootstrap interval):",
        "",
        "| method | claim | metric | SSL | baseline | difference [95% CI] | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        lo, hi = c["diff_ci95"]
        lines.append(
            f"| {c['method']} | {c['claim']} | {c['metric']} ({c['ssl_row']} - {c['baseline_row']}) | "
            f"{c['ssl']:.3f} | {c['baseline']:.3f} | {_fmt(c['diff'])} [{_fmt(lo)}, {_fmt(hi)}] | {c['verdict']} |"
        )
    lines += ["", "Cells: estimate [95% bootstrap interval over evaluation videos].", "", table]
    if efficiency:
        lines += ["EF R2 by share of TRAIN labels (ridge, alpha by CV inside the share; mean +- std over draws):", ""]
        first = next(iter(efficiency.values()))
        lines.append("| row | " + " | ".join(f"{float(f):.0%} ({first[f]['n_train']} videos)" for f in first) + " |")
        lines.append("| --- |" + " --- |" * len(first))
        for row, eff in efficiency.items():
            cells = [f"{eff[f]['r2_mean']:.3f} +- {eff[f]['r2_std']:.3f}" for f in first]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if "fewlabel_frames" in extra:
        fr = extra["fewlabel_frames"]
        m = fr["meta"]
        lines += [
            f"Few-label frame classification on the labelled ultrasound set ({m['videos']} videos, "
            f"{m['eval_videos']} evaluation videos, {m['frames_per_video']} frames each; labelled TRAIN videos per "
            f"class: {m['settings']}, {m['draws']} draws; frame accuracy, mean over draws):",
            "",
            "| row | " + " | ".join(m["settings"]) + " |",
            "| --- |" + " --- |" * len(m["settings"]),
        ]
        for row, res in fr["rows"].items():
            lines.append(f"| {row} | " + " | ".join(f"{res[k]['accuracy']:.3f}" for k in m["settings"]) + " |")
        lines.append("")
    if "fewlabel_segmentation" in extra:
        lines += ["Few-label segmentation (pooled Dice on the evaluation videos' traced frames):", ""]
        lines += ["| labelled TRAIN videos | row | pooled Dice | fine-tuning steps |", "| --- | --- | --- | --- |"]
        for n, arms in extra["fewlabel_segmentation"].items():
            for row, a in arms.items():
                lines.append(f"| {n} | {row} | {a['pooled_dice']:.4f} | {a['steps']} |")
        lines.append("")
    lines += ["Every paired comparison (SSL minus baseline on the same evaluation units; 95% paired interval):", ""]
    lines += _comparison_lines(everything)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
