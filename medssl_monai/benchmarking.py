"""Training-throughput benchmark of the bundles: the real pipeline and the model step alone.

Every training bundle is built from its own configs with :class:`monai.bundle.ConfigParser`
(``train.yaml``, plus ``small.yaml`` for the CPU sizes) and its ``train#trainer`` (MONAI's
``SupervisedTrainer`` with the bundle's network/method, optimizer, ``prepare_batch``, loss, AMP setting and
iteration-level handlers: momentum teachers, per-iteration schedules, loss logging) is stepped by hand:

- ``pipeline``: batches come from ``train#dataloader`` (files -> :class:`~medssl_monai.data.cache.ClipCache`
  -> transforms -> ``DataLoader`` workers -> pinned host memory -> non-blocking copy -> on-device
  normalisation in ``prepare_batch``); the time the host is blocked in ``next(iterator)`` is the data wait.
- ``model``: one batch of the same shapes, its images replaced by random values, already on the device, is
  fed again and again: the step alone (the upper bound the data pipeline has to keep up with).

One step = ``ITERATION_STARTED`` handlers, the trainer's ``_iteration`` (prepare_batch, forward, loss,
backward, optimizer step) and ``ITERATION_COMPLETED`` handlers, exactly as in ``trainer.run()``; epoch-level
handlers (validation, checkpoints, epoch schedules) are not fired. The device is synchronised only at the
start and the end of the timed window, never inside it. FLOPs of one step (forward + backward, matmuls and
convolutions) are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on the eager network.

:data:`ANCHORS` reproduces the reference-style model steps recorded on one H100 (fp32 where the reference trains in
fp32, random inputs) from the same bundles at the recipe sizes, so ratios can be measured on one GPU.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from medssl_monai.bundle_tools import config_path, find_bundles, train_configs

__all__ = [
    "ANCHORS",
    "LOADER_COLUMNS",
    "LOADER_TARGETS_MS",
    "Anchor",
    "BenchResult",
    "LoaderResult",
    "benchmark_anchor",
    "benchmark_bundle",
    "benchmark_loader",
    "build_parser",
    "build_trainer",
    "prebuild_cache",
    "count_step_flops",
    "format_anchor_table",
    "format_loader_tables",
    "format_table",
    "machine_info",
    "random_like_batch",
    "step_host_syncs",
    "time_steps",
    "training_bundles",
]

logger = logging.getLogger(__name__)

#: columns of the markdown table, in order (keys of :class:`BenchResult`)
TABLE_COLUMNS = (
    "bundle",
    "mode",
    "sizes",
    "batch_shape",
    "samples_per_s",
    "step_ms",
    "data_wait_pct",
    "peak_mem_gib",
    "tflops",
    "gflop_per_step",
)


@dataclass
class BenchResult:
    """One measured row: a bundle (or anchor) in one mode.

    ``samples_per_s`` counts the batch dimension of the image (clips, videos or frames, see ``batch_shape``);
    ``data_wait_pct`` is the share of the timed window the host spent blocked in ``next(iterator)``;
    ``peak_mem_gib`` is ``torch.cuda.max_memory_allocated`` on a GPU and the process's peak resident set size
    (``VmHWM``, main process only, DataLoader workers excluded) on a CPU.
    """

    bundle: str
    mode: str
    sizes: str
    device: str
    batch_size: int
    batch_shape: list[int]
    steps: int
    warmup: int
    total_s: float
    step_ms: float
    samples_per_s: float
    data_wait_s: float
    data_wait_pct: float
    peak_mem_gib: float
    peak_mem_kind: str
    flop_per_step: float
    gflop_per_step: float
    tflops: float
    amp: bool
    compile: bool
    channels_last: bool | None
    num_workers: int | None
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, load average, torch/MONAI versions and the GPU name (if any)."""
    import monai

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def training_bundles(root: str | Path = "bundles", names: Sequence[str] | str | None = None) -> list[Path]:
    """Bundle folders under ``root`` with a ``train`` config (optionally only those named in ``names``)."""
    bundles = [b for b in find_bundles(root) if train_configs(b, small=False)]
    if names:
        wanted = [names] if isinstance(names, str) else list(names)
        wanted = [w for n in wanted for w in str(n).split(",") if w]
        by_name = {b.name: b for b in bundles}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise ValueError(f"no training bundle named {missing}; have {sorted(by_name)}")
        bundles = [by_name[w] for w in wanted]
    return bundles


def build_parser(
    bundle: str | Path,
    sizes: str = "small",
    device: str | torch.device | None = None,
    amp: bool | None = None,
    amp_dtype: str | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    num_workers: int | None = None,
    work_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    data_size: str | None = None,
) -> ConfigParser:
    """Parse a bundle's training configs with the benchmark's overrides (see :func:`build_trainer`)."""
    if sizes not in ("recipe", "small", "cpu"):
        raise ValueError(f"sizes must be 'recipe', 'small' or 'cpu', got {sizes!r}")
    bundle = Path(bundle).resolve()
    parser = ConfigParser()
    if sizes == "cpu":  # the CPU preset the representation benchmark trains with (docs/benchmark.md)
        preset = config_path(bundle, "cpu")
        if preset is None:
            raise ValueError(f"{bundle.name} has no configs/cpu.yaml (the 'cpu' sizes need one)")
        parser.read_config([str(config_path(bundle, "train")), str(preset)])
    else:
        parser.read_config(train_configs(bundle, small=sizes == "small"))
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix=f"bench_{bundle.name}_"))
    values: dict[str, Any] = {
        "bundle_root": str(bundle),
        "output_dir": str(work_dir / "runs"),
        "ckpt_dir": str(work_dir / "models"),
    }
    if device is not None:
        values["device"] = f"$torch.device('{torch.device(device)}')"
    if amp is not None:
        values["amp"] = bool(amp)
    if channels_last is not None and "channels_last" in parser.get():
        values["channels_last"] = bool(channels_last)
    if num_workers is not None:
        values["num_workers"] = int(num_workers)
    if compile:
        values["train#trainer#compile"] = True
    if amp_dtype is not None:
        values["train#trainer#amp_kwargs"] = {"dtype": f"$torch.{amp_dtype}"}
    if data_size is not None and "dataset_dir" not in (overrides or {}) and _is_synthetic_default(parser):
        values["dataset_dir#size"] = data_size
    values.update(overrides or {})
    for key, value in values.items():
        parser[key] = value
    parser.parse()
    return parser


def _is_synthetic_default(parser: ConfigParser) -> bool:
    """Whether ``dataset_dir`` is the built-in synthetic dataset (a ``synthetic_dataset``/``_arrays`` call)."""
    value = parser.get().get("dataset_dir")
    target = value.get("_target_", "") if isinstance(value, dict) else ""
    return str(target).rsplit(".", 1)[-1] in ("synthetic_dataset", "synthetic_arrays")


def build_trainer(
    bundle: str | Path,
    sizes: str = "small",
    device: str | torch.device | None = None,
    amp: bool | None = None,
    amp_dtype: str | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    num_workers: int | None = None,
    work_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    data_size: str | None = None,
) -> tuple[ConfigParser, Any]:
    """Parse a bundle's training configs and instantiate ``train#trainer``.

    Args:
        bundle: the bundle folder.
        sizes: ``"recipe"`` (``train.yaml``, the paper sizes), ``"small"`` (plus ``small.yaml``) or ``"cpu"`` (plus
            ``cpu.yaml``, the representation benchmark's CPU preset).
        device: overrides the bundle's ``device``; ``None`` keeps it (CUDA if available).
        amp: overrides ``amp`` (MONAI's trainer autocasts on CUDA only); ``None`` keeps the bundle's.
        amp_dtype: ``"bfloat16"`` or ``"float16"`` for ``train#trainer#amp_kwargs``; ``None`` keeps it.
        compile: ``SupervisedTrainer(compile=True)``: ``torch.compile`` of the network.
        channels_last: overrides the bundle's ``channels_last`` key where it has one.
        num_workers: overrides ``num_workers``.
        work_dir: where the run writes logs and checkpoints (a temporary folder by default).
        overrides: further ``{config id: value}`` overrides.
        data_size: size of the built-in synthetic dataset (``tiny``/``small``/``bench``) when ``dataset_dir`` is
            the bundle's synthetic default and not overridden; ``None`` keeps the default size.

    Returns:
        The parser and the trainer.
    """
    parser = build_parser(
        bundle,
        sizes=sizes,
        device=device,
        amp=amp,
        amp_dtype=amp_dtype,
        compile=compile,
        channels_last=channels_last,
        num_workers=num_workers,
        work_dir=work_dir,
        overrides=overrides,
        data_size=data_size,
    )
    return parser, parser.get_parsed_content("train#trainer")


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_move(v, device) for v in x)
    return x


def _image_tensor(batch: Any) -> torch.Tensor | None:
    """The image of a batch: ``batch["image"]`` if there is one, else the largest tensor."""
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    tensors = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(batch)
    return max(tensors, key=lambda t: t.numel()) if tensors else None


def random_like_batch(batch: Any, device: torch.device, batch_size: int | None = None) -> Any:
    """A batch of the same structure on ``device``: images (tensors with >= 4 dims) random, the rest kept.

    Labels, masks, indices and ids stay real, so losses and samplers see valid values. With ``batch_size``
    every tensor (and list) whose first dimension is the batch is tiled to that size (the anchors need
    larger batches than the synthetic datasets hold).
    """
    image = _image_tensor(batch)
    b0 = int(image.shape[0]) if image is not None else None

    def conv(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            t = x.as_tensor() if hasattr(x, "as_tensor") else x
            if batch_size is not None and b0 and t.ndim >= 1 and t.shape[0] == b0 and batch_size != b0:
                reps = -(-batch_size // b0)
                t = t.repeat(reps, *([1] * (t.ndim - 1)))[:batch_size]
            if t.ndim >= 4:
                if t.dtype == torch.uint8:
                    t = torch.randint(0, 256, t.shape, dtype=torch.uint8)
                elif t.is_floating_point():
                    t = torch.rand(t.shape, dtype=t.dtype) * float(x.max()) if t.numel() else t
            return t.contiguous().to(device)
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, list) and batch_size is not None and b0 and len(x) == b0 and batch_size != b0:
            return [x[i % b0] for i in range(batch_size)]
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x)
        return x

    return conv(batch)


def _step(trainer: Any, batch: Any) -> None:
    """One training iteration as ``trainer.run()`` does it (iteration-level handlers included)."""
    trainer.state.iteration += 1
    trainer.state.batch = batch
    trainer.fire_event(Events.ITERATION_STARTED)
    trainer.state.output = trainer._process_function(trainer, batch)
    trainer.fire_event(Events.ITERATION_COMPLETED)


def _start(trainer: Any) -> None:
    """Enter epoch 1 as ``trainer.run()`` would (``STARTED``/``EPOCH_STARTED`` handlers: samplers, curricula)."""
    trainer.state.epoch = 1
    # an empty loader (anchors: reference batch > synthetic dataset) gives epoch_length 0, which StatsHandler divides by
    trainer.state.epoch_length = max(int(trainer.state.epoch_length or 0), 1)
    trainer.fire_event(Events.STARTED)
    trainer.fire_event(Events.EPOCH_STARTED)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set size) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mem_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "rss_peak"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_peak_process"


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training dataloader yields no batch (dataset smaller than one batch?)")


def count_step_flops(trainer: Any, batch: Any) -> float:
    """FLOPs of one training step (forward + backward) counted by ``FlopCounterMode`` on the eager network."""
    network = trainer.network
    eager = getattr(network, "_orig_mod", network)  # undo torch.compile: the counter needs eager dispatch
    trainer.network = eager
    try:
        with FlopCounterMode(display=False) as counter:
            _step(trainer, batch)
    finally:
        trainer.network = network
    return float(counter.get_total_flops())


#: source files whose host reads are of host tensors by design, so no sync on a GPU either: the device
#: augmentation's draws (made on the host) and MONAI DiceLoss's reduction axes (``torch.arange(...).tolist()``)
HOST_SIDE_SOURCES = ("medssl_monai/transforms/device/", "monai/losses/dice.py")


def step_host_syncs(
    bundle: str | Path,
    sizes: str = "small",
    device: str | None = "cpu",
    overrides: dict[str, Any] | None = None,
    warmup: int = 1,
) -> list[Any]:
    """The host-device syncs of one training step of a bundle (``HostSync`` records, see ``engines.sync_guard``).

    ``train#trainer`` is built with ``log_every`` beyond the run (the loss-logging handlers read the loss, a
    sync by design, only every ``log_every`` iterations) and the fused optimizer the bundles use on a GPU
    (the plain one keeps its step counters on the host). ``warmup`` unguarded steps come first (one-off
    initialisation), then one step (handlers included) runs under the guard in recording mode.
    """
    from medssl_monai.engines.sync_guard import no_host_sync

    values = {"log_every": 10**9, "fused_optimizer": True, "num_workers": 0}
    values.update(overrides or {})
    parser, trainer = build_trainer(bundle, sizes=sizes, device=device, overrides=values)
    dev = torch.device(trainer.state.device)
    _start(trainer)
    batch = random_like_batch(_template_batch(parser), dev)
    for _ in range(warmup):
        _step(trainer, batch)
    with no_host_sync(raise_on_sync=False, allow=HOST_SIDE_SOURCES) as guard:
        _step(trainer, batch)
    return guard.syncs


def time_steps(trainer: Any, batches: Iterator[Any], device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Steady-state timing: ``warmup`` untimed steps, then ``steps`` timed ones (one sync at each end).

    Returns ``total_s``, ``data_wait_s`` (host time blocked in ``next(batches)`` inside the window),
    ``samples`` (images' batch dimensions summed over the timed steps) and the last batch.
    """
    batch = None
    for _ in range(warmup):
        batch = next(batches)
        _step(trainer, batch)
    _sync(device)
    wait, samples = 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        image = _image_tensor(batch)
        samples += int(image.shape[0]) if image is not None else 0  # the last batch of an epoch can be short
        _step(trainer, batch)
    _sync(device)
    total = time.perf_counter() - start
    return {"total_s": total, "data_wait_s": wait, "batch": batch, "samples": samples}


def _result(
    name: str, mode: str, sizes: str, device: torch.device, timing: dict, flops: float, steps: int, **kw: Any
) -> BenchResult:
    image = _image_tensor(timing["batch"])
    shape = list(image.shape) if image is not None else []
    bsz = shape[0] if shape else 0
    total = timing["total_s"]
    peak, kind = _peak_mem_gib(device)
    return BenchResult(
        bundle=name,
        mode=mode,
        sizes=sizes,
        device=str(device),
        batch_size=bsz,
        batch_shape=shape,
        steps=steps,
        total_s=round(total, 4),
        step_ms=round(1000 * total / steps, 2),
        samples_per_s=round(timing["samples"] / total, 2),
        data_wait_s=round(timing["data_wait_s"], 4),
        data_wait_pct=round(100 * timing["data_wait_s"] / total, 1),
        peak_mem_gib=round(peak, 3),
        peak_mem_kind=kind,
        flop_per_step=flops,
        gflop_per_step=round(flops / 1e9, 3),
        tflops=round(flops * steps / total / 1e12, 4),
        **kw,
    )


def benchmark_bundle(
    bundle: str | Path,
    sizes: str = "small",
    modes: Sequence[str] = ("pipeline", "model"),
    steps: int = 10,
    warmup: int = 3,
    device: str | None = None,
    amp: bool | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    num_workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    data_size: str | None = None,
) -> list[BenchResult]:
    """Benchmark one bundle in each of ``modes`` (``pipeline``: real data; ``model``: the step alone).

    ``data_size`` (see :func:`build_trainer`) defaults to ``bench`` for the ``pipeline`` mode at the recipe sizes,
    so that an epoch spans many steps. Before a ``pipeline`` timing the decoded-clip cache of the training sources
    is built with every core (:func:`prebuild_cache`): the timed steps then see the steady state of a run after its
    first epoch, not video decoding.
    """
    bundle = Path(bundle)
    if data_size is None and sizes == "recipe" and "pipeline" in modes:
        data_size = "bench"
    parser, trainer = build_trainer(
        bundle,
        sizes=sizes,
        device=device,
        amp=amp,
        compile=compile,
        channels_last=channels_last,
        num_workers=num_workers,
        overrides=overrides,
        data_size=data_size,
    )
    cache_report = prebuild_cache(parser) if "pipeline" in modes else None
    dev = torch.device(trainer.state.device)
    common = {
        "warmup": warmup,
        "amp": bool(trainer.amp),
        "compile": bool(compile),
        "channels_last": parser.get_parsed_content("channels_last") if "channels_last" in parser.get() else None,
        "num_workers": int(parser.get_parsed_content("num_workers")),
    }
    _start(trainer)
    loader = parser.get_parsed_content("train#dataloader")
    try:
        iters_per_epoch: int | None = len(loader)
    except TypeError:  # an iterable loader without a length
        iters_per_epoch = None
    if "pipeline" in modes and iters_per_epoch is not None and iters_per_epoch < 1 + warmup + steps:
        logger.warning(
            "%s: an epoch is %d iterations, fewer than the %d the pipeline mode steps: the timed window crosses "
            "epoch boundaries (worker restarts included)",
            bundle.name,
            iters_per_epoch,
            1 + warmup + steps,
        )
    batches = _cycle(loader)
    results: list[BenchResult] = []
    template = next(batches)
    flops = count_step_flops(trainer, random_like_batch(template, dev))
    for mode in modes:
        gc.collect()
        _reset_peak(dev)
        if mode == "pipeline":
            timing = time_steps(trainer, batches, dev, steps, warmup)
        elif mode == "model":
            fixed = random_like_batch(template, dev)
            timing = time_steps(trainer, _repeat(fixed), dev, steps, warmup)
        else:
            raise ValueError(f"unknown mode {mode!r}; expected 'pipeline' or 'model'")
        row = _result(bundle.name, mode, sizes, dev, timing, flops, steps, **common)
        row.options = {"iters_per_epoch": iters_per_epoch, "data_size": data_size, "cache": cache_report}
        results.append(row)
    del batches, loader, trainer, parser
    gc.collect()
    return results


#: per-sample CPU budgets (ms on one core) the loader mode reports against; other bundles have none
LOADER_TARGETS_MS: dict[str, float] = {
    "unilvseg_echo_lv_segmentation": 2.0,  # one 3 x 32 x 112 x 112 segmentation clip
    "discovr_echo_ssl_pretraining": 4.0,  # one 64-frame clip
}

#: columns of the loader summary table (keys of :class:`LoaderResult`)
LOADER_COLUMNS = (
    "bundle",
    "sizes",
    "sample_shape",
    "ms_per_sample",
    "cpu_ms_per_sample",
    "samples_per_s_per_worker",
    "target_ms",
    "meets_target",
)


@dataclass
class LoaderResult:
    """CPU cost of one training sample of a bundle: ``train#dataset[i]`` on one core, and of each transform.

    ``ms_per_sample`` is wall time, ``cpu_ms_per_sample`` the process's CPU time (less sensitive to other jobs on a
    shared machine; ``samples_per_s_per_worker`` is its inverse and ``meets_target`` compares it with
    ``target_ms``). ``transforms`` holds one row per transform of
    ``train#preprocessing`` in order (``depth`` > 0: inside a wrapper such as ``ClipConsistentd``, already counted
    in the wrapper's row), plus an ``overhead`` row (the dataset and ``Compose`` around the transforms).
    """

    bundle: str
    sizes: str
    samples: int
    passes: int
    sample_shape: list[int]
    sample_dtype: str
    ms_per_sample: float
    cpu_ms_per_sample: float
    samples_per_s_per_worker: float
    target_ms: float | None
    meets_target: bool | None
    transforms: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _transform_units(transform: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, int, Any]]:
    """``(name, depth, transform)`` of every transform in the chain, in call order.

    A plain ``Compose`` is flattened (it only calls its children in turn); ``OneOf``/``RandomOrder``/``SomeOf`` are
    one unit (their children do not all run). A wrapper with a ``transform`` attribute (``ClipConsistentd``) is a
    unit and its inner transforms follow it one level deeper. A ``TracedOrDatastore`` stands for its ``traced``
    chain (the benchmark feeds EchoNet items; the dispatch costs nothing), flattened like a ``Compose``.
    """
    from monai.transforms import Compose

    from medssl_monai.transforms.monailabel import TracedOrDatastore

    if type(transform) is Compose:
        return [u for child in transform.transforms for u in _transform_units(child, prefix, depth)]
    if isinstance(transform, TracedOrDatastore):  # a free dispatch: the EchoNet items benchmarked take `traced`
        return _transform_units(transform.traced, prefix, depth)
    name = prefix + getattr(type(transform), "__name__", repr(transform))
    inner = getattr(transform, "transform", None)
    children = _transform_units(inner, name + " > ", depth + 1) if callable(inner) else []
    return [(name, depth, transform), *children]


@contextlib.contextmanager
def _timed(units: list[tuple[str, int, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Time every unit's ``__call__`` (wall and CPU) by swapping its class for a timing subclass.

    The subclass keeps ``isinstance`` checks (``Randomizable``, ``LazyTrait``, ``CacheDataset``'s split at the first
    random transform) and every attribute, so the chain runs exactly as untimed. Units whose class cannot be
    swapped (functions, builtins) get no row.
    """
    rows: list[dict[str, Any]] = []
    swapped: list[tuple[Any, type]] = []
    seen: set[int] = set()
    for name, depth, obj in units:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        row = {"name": name, "depth": depth, "calls": 0, "wall_s": 0.0, "cpu_s": 0.0}
        cls = type(obj)

        def __call__(self: Any, *args: Any, _cls: type = cls, _row: dict = row, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return _cls.__call__(self, *args, **kwargs)
            finally:
                _row["wall_s"] += time.perf_counter() - w0
                _row["cpu_s"] += time.process_time() - c0
                _row["calls"] += 1

        try:
            obj.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
        except TypeError:
            continue
        swapped.append((obj, cls))
        rows.append(row)
    try:
        yield rows
    finally:
        for obj, cls in swapped:
            obj.__class__ = cls


def _unwrap_dataset(dataset: Any) -> Any:
    """The dataset holding the transform chain: through ``SkipBadSamples`` (and similar ``.dataset`` wrappers)."""
    while getattr(dataset, "transform", None) is None and getattr(dataset, "dataset", None) is not None:
        dataset = dataset.dataset
    return dataset


def _sample_indices(parser: ConfigParser, dataset: Any, samples: int) -> list[Any]:
    """The first ``samples`` indices of ``train#sampler`` (UCL's ``(video, frames)``), or indices spread over the
    dataset when the bundle has no sampler (a fixed, reproducible set of items)."""
    sampler = parser.get_parsed_content("train#sampler") if "sampler" in parser.get("train", {}) else None
    if sampler is not None:
        out: list[Any] = []
        while len(out) < samples:
            before = len(out)
            out += list(itertools.islice(iter(sampler), samples - len(out)))
            if len(out) == before:
                raise RuntimeError("train#sampler yields no index")
        return out
    n = len(dataset)
    if n == 0:
        raise RuntimeError("train#dataset is empty")
    return [int(i) for i in np.linspace(0, n - 1, samples).round()] if n >= samples else [i % n for i in range(samples)]


def benchmark_loader(
    bundle: str | Path,
    sizes: str = "recipe",
    samples: int = 32,
    passes: int = 1,
    overrides: dict[str, Any] | None = None,
    data_size: str | None = None,
) -> LoaderResult:
    """CPU cost per training sample on one core: ``train#dataset[i]`` timed in this process, and per transform.

    This is what one ``DataLoader`` worker spends per sample: torch (and OpenCV) are limited to one thread while
    timing. ``passes`` untimed passes over the same indices come first, so the decoded-clip cache is built and the
    page cache is warm (the steady state of a training run after its first epoch); then one timed pass.

    Args:
        bundle: the bundle folder.
        sizes: ``recipe`` (``train.yaml``) or ``small`` (plus ``small.yaml``).
        samples: samples timed.
        passes: untimed warm-up passes over the same samples.
        overrides: further config overrides.
        data_size: synthetic dataset size (see :func:`build_trainer`); ``None``: the bundle's default.
    """
    from monai.utils import set_determinism

    bundle = Path(bundle)
    parser = build_parser(bundle, sizes=sizes, device="cpu", num_workers=0, overrides=overrides, data_size=data_size)
    dataset = parser.get_parsed_content("train#dataset")
    chain = getattr(_unwrap_dataset(dataset), "transform", None)
    units = _transform_units(chain) if chain is not None else []
    indices = _sample_indices(parser, dataset, samples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenCV runs one thread per process already (medssl_monai.opencv)
    set_determinism(seed=0)  # the same random draws (crops, windows) every run
    try:
        for _ in range(passes):
            for i in indices:
                sample = dataset[i]
        with _timed(units) as rows:
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            for i in indices:
                sample = dataset[i]
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
        set_determinism(seed=None)
    image = _image_tensor(sample)
    n = len(indices)
    top = [r for r in rows if r["depth"] == 0]
    overhead = {
        "name": "overhead (dataset, Compose)",
        "depth": 0,
        "calls": n,
        "wall_s": max(wall - sum(r["wall_s"] for r in top), 0.0),
        "cpu_s": max(cpu - sum(r["cpu_s"] for r in top), 0.0),
    }
    transforms = [
        {
            "name": r["name"],
            "depth": r["depth"],
            "calls_per_sample": round(r["calls"] / n, 3),
            "ms_per_sample": round(1000 * r["wall_s"] / n, 3),
            "cpu_ms_per_sample": round(1000 * r["cpu_s"] / n, 3),
            "pct": round(100 * r["wall_s"] / wall, 1) if wall else 0.0,
        }
        for r in [*rows, overhead]
    ]
    ms = 1000 * wall / n
    target = LOADER_TARGETS_MS.get(bundle.name)
    return LoaderResult(
        bundle=bundle.name,
        sizes=sizes,
        samples=n,
        passes=passes,
        sample_shape=list(image.shape) if image is not None else [],
        sample_dtype=str(image.dtype).replace("torch.", "") if image is not None else "",
        ms_per_sample=round(ms, 3),
        cpu_ms_per_sample=round(1000 * cpu / n, 3),
        samples_per_s_per_worker=round(n / cpu, 1) if cpu else 0.0,
        target_ms=target,
        # judged on CPU time: what a worker on a core of its own spends; wall time also counts other jobs' turns
        meets_target=None if target is None else bool(1000 * cpu / n <= target),
        transforms=transforms,
    )


def format_loader_tables(results: Sequence[LoaderResult | dict]) -> str:
    """Two markdown tables: per bundle (ms and samples/s per worker against the target) and per transform."""
    rows = [asdict(r) if isinstance(r, LoaderResult) else dict(r) for r in results]
    for r in rows:
        if r.get("error"):
            r["bundle"] = f"{r['bundle']} (error: {r['error']})"
    shapes = [" ".join(["x".join(map(str, r["sample_shape"])), r["sample_dtype"]]).strip() for r in rows]
    summary = format_table([{**r, "sample_shape": shape} for r, shape in zip(rows, shapes)], LOADER_COLUMNS)
    lines = [
        "| bundle | transform | calls/sample | ms/sample | cpu ms/sample | % of sample |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for t in r.get("transforms") or []:
            name = "&nbsp;&nbsp;" * 2 * t["depth"] + ("↳ " if t["depth"] else "") + t["name"].rsplit(" > ", 1)[-1]
            lines.append(
                f"| {r['bundle']} | {name} | {t['calls_per_sample']} | {t['ms_per_sample']} "
                f"| {t['cpu_ms_per_sample']} | {t['pct']} |"
            )
    return summary + "\n\n" + "\n".join(lines)


def prebuild_cache(parser: ConfigParser, num_workers: int | None = None) -> dict[str, int] | None:
    """Decode every training source (``train#datalist`` items whose ``image`` is a path) into the clip cache.

    Only for bundles with a ``cache_dir`` key (their loaders read through :class:`~medssl_monai.data.cache.ClipCache`);
    ``num_workers`` defaults to every core. Returns the counts (``built``, ``cached``, ``failed``) or ``None``.
    """
    from medssl_monai.data.cache import ClipCache

    if "cache_dir" not in parser.get():
        return None
    items = parser.get_parsed_content("train#datalist")
    sources = sorted({it["image"] for it in items if isinstance(it, dict) and isinstance(it.get("image"), str)})
    if not sources:
        return None
    cache = ClipCache(parser.get_parsed_content("cache_dir"))
    report = cache.build(sources, num_workers=num_workers or os.cpu_count() or 1, progress=False)
    return {"built": report["built"], "cached": report["cached"], "failed": len(report["failed"])}


def _repeat(batch: Any) -> Iterator[Any]:
    while True:
        yield batch


@dataclass(frozen=True)
class Anchor:
    """A reference-style model step (one H100, model step only, random inputs): the bundle rows' anchor.

    ``overrides`` set the bundle's recipe to the reference's shapes; ``batch_size`` tiles the random batch
    (the synthetic datasets can hold fewer samples than one reference batch); ``reference`` is the recorded
    anchor throughput (samples/s on one H100) and ``target`` the end-to-end H100 goal.
    """

    name: str
    bundle: str
    batch_size: int
    amp: bool
    amp_dtype: str | None
    overrides: dict[str, Any]
    reference: float
    target: float
    unit: str


#: the four recorded anchors, each mapped to the bundle whose step it is
ANCHORS: dict[str, Anchor] = {
    "unilvseg_3d_unet": Anchor(
        name="unilvseg_3d_unet",
        bundle="unilvseg_echo_lv_segmentation",
        batch_size=16,
        amp=False,
        amp_dtype=None,
        overrides={"batch_size": 16, "num_frames": 32, "spatial_size": 112, "channels_last": False},
        reference=439.0,
        target=1000.0,
        unit="clips/s",
    ),
    "ucl_resnet50": Anchor(
        name="ucl_resnet50",
        bundle="ucl_us_ssl_pretraining",
        batch_size=32,
        amp=False,
        amp_dtype=None,
        overrides={"batch_size": 32, "depth": 50, "widen_factor": 1.0},
        reference=204.0,
        target=750.0,
        unit="videos/s",
    ),
    "tvrl_vit_s": Anchor(
        name="tvrl_vit_s",
        bundle="tvrl_echo_ssl_pretraining",
        batch_size=128,
        amp=True,
        amp_dtype="float16",
        overrides={"batch_size": 128},
        reference=863.0,
        target=900.0,
        unit="clips/s",
    ),
    "discovr_vit_b": Anchor(
        name="discovr_vit_b",
        bundle="discovr_echo_ssl_pretraining",
        batch_size=16,
        amp=True,
        amp_dtype="bfloat16",
        overrides={"batch_size": 16},
        reference=78.0,
        target=100.0,
        unit="clips/s",
    ),
}


def _template_batch(parser: ConfigParser) -> Any:
    """One batch of ``train#dataloader``; if the dataset is smaller than one batch (``drop_last`` with a
    synthetic dataset and a reference batch size), a batch of 2 from ``train#dataset`` with the same collate."""
    loader = parser.get_parsed_content("train#dataloader")
    for batch in loader:
        return batch
    small = torch.utils.data.DataLoader(
        parser.get_parsed_content("train#dataset"), batch_size=2, shuffle=False, collate_fn=loader.collate_fn
    )
    return next(iter(small))


def benchmark_anchor(
    anchor: Anchor | str,
    root: str | Path = "bundles",
    steps: int = 10,
    warmup: int = 3,
    device: str | None = None,
    compile: bool = False,
    scale: float = 1.0,
) -> BenchResult:
    """The reference-style model step of an anchor (recipe sizes, random inputs, the anchor's precision).

    ``scale`` < 1 shrinks the batch (for a CPU smoke run); the GPU comparison uses ``scale=1``.
    """
    anchor = ANCHORS[anchor] if isinstance(anchor, str) else anchor
    overrides = dict(anchor.overrides)
    batch_size = max(1, round(anchor.batch_size * scale))
    parser, trainer = build_trainer(
        Path(root) / anchor.bundle,
        sizes="recipe",
        device=device,
        amp=anchor.amp,
        amp_dtype=anchor.amp_dtype,
        compile=compile,
        num_workers=0,
        overrides=overrides,
    )
    dev = torch.device(trainer.state.device)
    _start(trainer)
    fixed = random_like_batch(_template_batch(parser), dev, batch_size=batch_size)
    flops = count_step_flops(trainer, fixed)
    gc.collect()
    _reset_peak(dev)
    timing = time_steps(trainer, _repeat(fixed), dev, steps, warmup)
    result = _result(
        anchor.name,
        "anchor",
        "recipe",
        dev,
        timing,
        flops,
        steps,
        warmup=warmup,
        amp=bool(trainer.amp),
        compile=bool(compile),
        channels_last=False,
        num_workers=0,
    )
    result.options = {
        "bundle": anchor.bundle,
        "reference_samples_per_s": anchor.reference,
        "target_samples_per_s": anchor.target,
        "unit": anchor.unit,
        "ratio_to_reference": round(result.samples_per_s / anchor.reference, 3),
        "amp_dtype": anchor.amp_dtype,
        "scale": scale,
    }
    return result


def format_table(results: Sequence[BenchResult | dict], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A markdown table of the results (``x`` joins shapes; errors are shown in the ``mode`` column)."""
    rows = [asdict(r) if isinstance(r, BenchResult) else dict(r) for r in results]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col == "batch_shape" and isinstance(value, (list, tuple)):
                value = "x".join(str(v) for v in value)
            if col == "mode" and row.get("error"):
                value = f"{value} (error: {row['error']})"
            cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_anchor_table(results: Sequence[BenchResult | dict]) -> str:
    """A markdown table of the anchor rows: measured samples/s against the recorded H100 anchor and target."""
    rows = [asdict(r) if isinstance(r, BenchResult) else dict(r) for r in results]
    lines = [
        "| anchor | samples/s | reference (H100) | ratio | target (H100, end to end) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("mode") != "anchor" or r.get("error"):
            continue
        o = r["options"]
        lines.append(
            f"| {r['bundle']} | {r['samples_per_s']} | {o['reference_samples_per_s']} {o['unit']} "
            f"| {o['ratio_to_reference']} | {o['target_samples_per_s']} {o['unit']} |"
        )
    return "\n".join(lines)
