"""Training throughput of every training bundle: the real data pipeline, the model step alone, the loader's CPU cost.

For each bundle, ``train#trainer`` is built from the bundle's own configs and stepped ``--warmup`` times
untimed, then ``--steps`` times timed (see :mod:`medssl_monai.benchmarking`). Reported per bundle and mode:
samples/s (the image's batch dimension), ms/step, the share of the step spent waiting for data, peak memory
(CUDA ``max_memory_allocated`` on a GPU, peak RSS of the main process on a CPU) and achieved TFLOP/s (FLOPs
of one step counted with ``torch.utils.flop_counter.FlopCounterMode``).

The ``loader`` mode times ``train#dataset[i]`` in the main process on one core (what one ``DataLoader`` worker
spends per sample) and each transform of ``train#preprocessing``; it needs no trainer and no GPU.

Usage::

    # CPU, the small.yaml sizes (what docs/performance.md reports)
    OMP_NUM_THREADS=2 python scripts/benchmark.py --sizes small --steps 10 --warmup 3 --out runs/bench_cpu.json
    # one GPU, the recipe sizes, the bundles' defaults (bf16 autocast, pinned memory, 4-8 workers)
    python scripts/benchmark.py --device cuda --sizes recipe --out runs/bench_h100.json
    # the same with torch.compile, and the reference-style anchors for ratios on the same GPU
    python scripts/benchmark.py --device cuda --sizes recipe --compile --anchors --out runs/bench_h100_compile.json
    # CPU, the representation benchmark's presets (cpu.yaml), one core, with and without channels-last
    python scripts/benchmark.py --sizes cpu --modes model --threads 1 --channels_last false --out runs/cpu0.json
    # only the anchors
    python scripts/benchmark.py --device cuda --anchors --bundles none
    # CPU cost per sample and per transform, one core, recipe sizes (docs/performance.md)
    python scripts/benchmark.py --modes loader --sizes recipe --samples 32 --out runs/bench_loader.json
    # torch.profiler of each bundle's model step (op and module tables, precision census, Chrome trace)
    python scripts/benchmark.py --device cuda --sizes recipe --modes none --profile runs/profile_h100

Prints a markdown table and writes every number, the options and the machine to ``--out`` as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from medssl_monai.benchmarking import (  # noqa: E402
    ANCHORS,
    TABLE_COLUMNS,
    BenchResult,
    LoaderResult,
    benchmark_anchor,
    benchmark_bundle,
    benchmark_loader,
    format_anchor_table,
    format_loader_tables,
    format_table,
    machine_info,
    training_bundles,
)
from medssl_monai.bundle_tools import config_path  # noqa: E402
from medssl_monai.config_checks import parse_overrides  # noqa: E402
from medssl_monai.profiling import profile_bundle  # noqa: E402

__all__ = ["main"]


def _as_list(value: str | list | tuple | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _error_row(name: str, mode: str, sizes: str, device: str | None, err: BaseException) -> BenchResult:
    return BenchResult(
        bundle=name,
        mode=mode,
        sizes=sizes,
        device=str(device),
        batch_size=0,
        batch_shape=[],
        steps=0,
        warmup=0,
        total_s=0.0,
        step_ms=0.0,
        samples_per_s=0.0,
        data_wait_s=0.0,
        data_wait_pct=0.0,
        peak_mem_gib=0.0,
        peak_mem_kind="",
        flop_per_step=0.0,
        gflop_per_step=0.0,
        tflops=0.0,
        amp=False,
        compile=False,
        channels_last=None,
        num_workers=None,
        error=f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")[:200],
    )


def _loader_error_row(name: str, sizes: str, err: BaseException) -> LoaderResult:
    return LoaderResult(
        bundle=name,
        sizes=sizes,
        samples=0,
        passes=0,
        sample_shape=[],
        sample_dtype="",
        ms_per_sample=0.0,
        cpu_ms_per_sample=0.0,
        samples_per_s_per_worker=0.0,
        target_ms=None,
        meets_target=None,
        error=f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")[:200],
    )


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def main(
    device: str | None = None,
    sizes: str = "small",
    bundles: str | list | None = None,
    steps: int = 10,
    warmup: int = 3,
    amp: bool | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    num_workers: int | None = None,
    out: str | None = None,
    modes: str | list = "pipeline,model",
    anchors: bool | str | list = False,
    anchor_scale: float = 1.0,
    root: str = str(ROOT / "bundles"),
    threads: int | None = None,
    overrides: str | dict | None = None,
    samples: int = 32,
    passes: int = 1,
    data_size: str | None = None,
    profile: str | None = None,
    profile_steps: int = 3,
    profile_depth: int = 2,
    cudnn_benchmark: bool | None = None,
    matmul_precision: str | None = None,
) -> None:
    """Benchmark the training bundles (and optionally the reference-style anchors); print a table, write JSON.

    Args:
        device: ``cpu``/``cuda``/``cuda:1``; default: each bundle's (CUDA if available).
        sizes: ``small`` (``train.yaml`` + ``small.yaml``), ``recipe`` (``train.yaml``, the paper sizes) or ``cpu``
            (``train.yaml`` + ``cpu.yaml``: the representation benchmark's presets; default: the bundles that have one).
        bundles: comma-separated bundle names; default every training bundle; ``none`` for anchors only.
        steps: timed steps per mode.
        warmup: untimed steps before (cuDNN autotuning, compilation, worker start-up, cache build).
        amp: force AMP on/off (bf16 autocast on CUDA; MONAI's trainer does not autocast on a CPU).
        compile: ``torch.compile`` the network (``SupervisedTrainer(compile=True)``).
        channels_last: force the ``channels_last`` key of bundles that have one (UniLVSeg).
        num_workers: DataLoader workers; default: each bundle's.
        out: JSON output path.
        modes: ``pipeline`` (files -> cache -> transforms -> device -> step), ``model`` (random inputs of the
            same shape, already on the device, the same step) and/or ``loader`` (``train#dataset[i]`` on one core,
            per transform).
        anchors: ``True`` for all of :data:`~medssl_monai.benchmarking.ANCHORS`, or comma-separated names.
        anchor_scale: shrink the anchor batches (for a CPU smoke run; 1 on a GPU).
        root: the bundles folder.
        threads: ``torch.set_num_threads`` (default: torch's, i.e. ``OMP_NUM_THREADS``).
        overrides: further config overrides for every bundle: a YAML or JSON mapping or ``key=value`` pairs,
            e.g. ``--overrides '{dataset_dir: /data/EchoNet-Dynamic, batch_size: 8}'``.
        samples: ``loader`` mode: samples timed per bundle.
        passes: ``loader`` mode: untimed passes over them first (builds the clip cache, warms the page cache).
        data_size: size of the built-in synthetic data (``tiny``/``small``/``bench``); default ``bench`` for the
            ``pipeline`` mode at the recipe sizes (an epoch then spans many steps), else the bundles' default.
        profile: a folder: also run ``torch.profiler`` over each bundle's model step (``--warmup`` steps first,
            then ``--profile_steps``) and write its op, module and precision tables and a Chrome trace there
            (:mod:`medssl_monai.profiling`); ``--modes none`` profiles only.
        profile_steps: profiled steps per bundle.
        profile_depth: module depth of the module table (1: the method's parts; 2: their blocks).
        cudnn_benchmark: set ``torch.backends.cudnn.benchmark`` (cuDNN autotuning of the 3D convolutions; the
            warm-up steps absorb the search); default: torch's (off).
        matmul_precision: ``torch.set_float32_matmul_precision`` (``high``: TF32 for the fp32 matmuls left under
            autocast, e.g. DISCOVR's prototype scores and DINO last layers); default: torch's (``highest``).
    """
    try:  # fire leaves '{dataset_dir: /data/x}' a string (a path is no python literal)
        overrides = parse_overrides(overrides)
    except ValueError as err:
        sys.exit(f"benchmark.py: --overrides: {err}")
    with _quiet_logging():  # the bundles' StatsHandler would log every step
        if threads:
            torch.set_num_threads(int(threads))
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(str(matmul_precision))
        names = _as_list(bundles)
        selected = [] if names == ["none"] else training_bundles(root, names)
        if sizes == "cpu" and not names:  # every bundle that has the preset
            selected = [b for b in selected if config_path(b, "cpu") is not None]
        mode_list = [m for m in _as_list(modes) or [] if m != "none"]
        unknown = sorted(set(mode_list) - {"pipeline", "model", "loader"})
        if unknown:
            sys.exit(f"benchmark.py: unknown mode(s) {unknown}; expected pipeline, model, loader")
        step_modes = [m for m in mode_list if m != "loader"]
        results: list[BenchResult] = []
        loader_results: list[LoaderResult] = []
        for bundle in selected:
            print(f"[benchmark] {bundle.name} ({sizes})", file=sys.stderr, flush=True)
            if "loader" in mode_list:
                try:
                    loader_results.append(
                        benchmark_loader(
                            bundle,
                            sizes=sizes,
                            samples=samples,
                            passes=passes,
                            overrides=overrides,
                            data_size=data_size,
                        )
                    )
                except Exception as err:  # one failing bundle must not hide the others' numbers
                    traceback.print_exc()
                    loader_results.append(_loader_error_row(bundle.name, sizes, err))
            if profile:
                try:
                    summary = profile_bundle(
                        bundle,
                        profile,
                        sizes=sizes,
                        steps=profile_steps,
                        warmup=warmup,
                        device=device,
                        amp=amp,
                        compile=compile,
                        channels_last=channels_last,
                        overrides=overrides,
                        module_depth=profile_depth,
                        data_size=data_size,
                    )
                    print(f"[benchmark] profile of {bundle.name}: {summary['files']['ops']}", file=sys.stderr)
                except Exception as err:  # one failing bundle must not hide the others' profiles
                    traceback.print_exc()
                    results.append(_error_row(bundle.name, "profile", sizes, device, err))
            if not step_modes:
                continue
            try:
                results += benchmark_bundle(
                    bundle,
                    sizes=sizes,
                    modes=step_modes,
                    steps=steps,
                    warmup=warmup,
                    device=device,
                    amp=amp,
                    compile=compile,
                    channels_last=channels_last,
                    num_workers=num_workers,
                    overrides=overrides,
                    data_size=data_size,
                )
            except Exception as err:  # one failing bundle must not hide the others' numbers
                traceback.print_exc()
                results.append(_error_row(bundle.name, "all", sizes, device, err))
        if anchors:
            anchor_names = list(ANCHORS) if anchors is True else _as_list(anchors)
            for name in anchor_names:
                print(f"[benchmark] anchor {name}", file=sys.stderr, flush=True)
                try:
                    results.append(
                        benchmark_anchor(
                            name,
                            root=root,
                            steps=steps,
                            warmup=warmup,
                            device=device,
                            compile=compile,
                            scale=anchor_scale,
                        )
                    )
                except Exception as err:
                    traceback.print_exc()
                    results.append(_error_row(name, "anchor", "recipe", device, err))
        rows = [asdict(r) for r in results]
        loader_rows = [asdict(r) for r in loader_results]
        tables = [format_table(results, TABLE_COLUMNS)] if rows or not loader_rows else []
        if any(r["mode"] == "anchor" and not r["error"] for r in rows):
            tables.append(format_anchor_table(rows))
        if loader_rows:
            tables.append(format_loader_tables(loader_rows))
        table = "\n\n".join(tables)
        print(table)
        if out:
            options = {
                "device": device,
                "sizes": sizes,
                "bundles": names,
                "steps": steps,
                "warmup": warmup,
                "amp": amp,
                "compile": compile,
                "channels_last": channels_last,
                "num_workers": num_workers,
                "modes": mode_list,
                "samples": samples,
                "passes": passes,
                "data_size": data_size,
                "anchors": anchors,
                "anchor_scale": anchor_scale,
                "overrides": overrides,
                "profile": profile,
                "profile_steps": profile_steps,
                "cudnn_benchmark": cudnn_benchmark,
                "matmul_precision": matmul_precision,
            }
            payload = {
                "machine": machine_info(),
                "options": options,
                "results": rows,
                "loader": loader_rows,
                "table": table,
            }
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(payload, indent=2, default=str))
            print(f"[benchmark] wrote {out}", file=sys.stderr)
        if any(r["error"] for r in rows + loader_rows):
            sys.exit(1)  # numbers for the others are printed and written; the failure is not hidden


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.WARNING)
    fire.Fire(main)
