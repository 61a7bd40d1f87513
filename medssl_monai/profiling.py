"""Where a bundle's training step spends its time: ``torch.profiler`` tables, a Chrome trace, a precision census.

:func:`profile_bundle` builds ``train#trainer`` like :mod:`medssl_monai.benchmarking` (``model`` mode: one
random batch of the loader's shapes, already on the device), runs ``warmup`` untimed steps, then profiles
``steps`` steps and writes into ``out_dir``:

- ``<bundle>.ops.txt``: ``key_averages()`` by op/kernel, sorted by self device time (CUDA) or self CPU time,
  the top ``row_limit`` rows;
- ``<bundle>.modules.md``: the same window by module: a ``record_function`` range around the forward of every
  module down to ``module_depth`` below the network (``DISCOVR.encoder``, ``DISCOVR.encoder.blocks``; rows of
  depth 2 nest inside their depth-1 parent), inclusive times; the backward shows up as autograd ops in the op table;
- ``<bundle>.precision.md``: matmul/convolution/attention FLOPs of one step by module (forward; the backward in
  one ``(backward)`` group), op and input dtype: what runs in fp32 under autocast. On a CPU the step runs under
  ``torch.autocast("cpu", dtype=bfloat16)`` (MONAI's trainer autocasts on CUDA only) so the census shows which
  ops autocast would leave in fp32; on CUDA the trainer's own AMP setting is used;
- ``<bundle>.trace.json``: the Chrome trace (``chrome://tracing`` or https://ui.perfetto.dev);
- ``<bundle>.json``: all rows, plus on CUDA the host syncs of the profiled steps
  (``torch.cuda.set_sync_debug_mode("warn")``, one warning per sync, recorded with its source line).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

from medssl_monai.benchmarking import _start, _step, _sync, _template_batch, build_trainer, random_like_batch

__all__ = ["module_ranges", "precision_census", "profile_bundle", "format_rows"]

MODULE_PREFIX = "module::"


def _network(trainer: Any) -> nn.Module:
    net = trainer.network
    net = getattr(net, "_orig_mod", net)  # torch.compile
    return getattr(net, "module", net)  # DDP


def _truncate(name: str, depth: int) -> str:
    """``DISCOVR.encoder.blocks.0.linear1`` -> ``DISCOVR.encoder.blocks`` at depth 2 (the root is depth 0)."""
    return ".".join(name.split(".")[: depth + 1])


@contextlib.contextmanager
def module_ranges(network: nn.Module, depth: int = 2) -> Iterator[None]:
    """A profiler range ``module::<name>`` around the forward of every module group ``depth`` levels below ``network``.

    Deeper modules count towards their ancestor at ``depth`` (``encoder.blocks`` holds every block), also when a
    method calls them directly (``encoder.blocks[i](x)`` without ``encoder.forward``); ranges of one group do not
    nest, so a row's time is inclusive and counted once.
    """
    root = type(network).__name__
    handles = []
    stack: list[tuple[str, Any]] = []

    def pre(label: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if stack and stack[-1][0] == label:  # inside the same group already
                stack.append((label, None))
                return
            rf = record_function(MODULE_PREFIX + label)
            rf.__enter__()
            stack.append((label, rf))

        return hook

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if stack:
            rf = stack.pop()[1]
            if rf is not None:
                rf.__exit__(None, None, None)

    for name, module in network.named_modules():
        label = _truncate(f"{root}.{name}" if name else root, depth)
        handles.append(module.register_forward_pre_hook(pre(label)))
        handles.append(module.register_forward_hook(post, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:
            rf = stack.pop()[1]
            if rf is not None:
                rf.__exit__(None, None, None)


class _Census(TorchDispatchMode):
    """FLOPs of every counted op (matmuls, convolutions, SDPA) by module (to a depth), op, dtype and pass."""

    def __init__(self, tracker: ModuleTracker, depth: int) -> None:
        super().__init__()
        self.tracker = tracker
        self.depth = depth
        self.rows: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])

    def _module(self) -> str:
        if self.tracker.is_bw:  # ModuleTracker can leave a module active for later backward ops: no attribution
            return "(backward)"
        names = [p for p in self.tracker.parents if p != "Global"]
        if not names:
            return "(outside modules)"
        return _truncate(max(names, key=lambda p: (p.count("."), p)), self.depth)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            dtype = str(tensors[0].dtype).replace("torch.", "") if tensors else "?"
            where = "backward" if self.tracker.is_bw else "forward"
            key = (self._module(), str(packet).replace("aten.", ""), dtype, where)
            row = self.rows[key]
            row[0] += 1
            row[1] += float(flops)
        return out


def precision_census(
    trainer: Any, batch: Any, depth: int = 2, cpu_autocast: str | None = "bfloat16"
) -> list[dict[str, Any]]:
    """One training step's counted FLOPs by module, op, input dtype and pass (largest first).

    Args:
        trainer: the bundle's ``train#trainer``.
        batch: a batch on the trainer's device.
        depth: module depth below the network for the attribution.
        cpu_autocast: on a CPU device, run the step under ``torch.autocast("cpu", dtype=...)`` (the GPU's AMP
            policy, approximately); ``None`` runs it as the trainer does.
    """
    device = torch.device(trainer.state.device)
    ctx = contextlib.ExitStack()
    if device.type == "cpu" and cpu_autocast:
        ctx.enter_context(torch.autocast("cpu", dtype=getattr(torch, cpu_autocast)))
        # the eval-mode fast path of nn.TransformerEncoderLayer (frozen probe encoders) checks CUDA autocast only
        # and fails on CPU autocast's mixed dtypes; under CUDA autocast it is off anyway
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        ctx.callback(torch.backends.mha.set_fastpath_enabled, fastpath)
    tracker = ModuleTracker()
    network = _network(trainer)
    root = type(network).__name__
    known = getattr(tracker, "_known_modules", None)
    if known is not None:  # full dotted names, also for submodules a method calls directly (encoder.blocks[i])
        for name, module in network.named_modules():
            known[module] = f"{root}.{name}" if name else root
    census = _Census(tracker, depth)
    with tracker, ctx, census:
        _step(trainer, batch)
    total = sum(v[1] for v in census.rows.values()) or 1.0
    rows = [
        {
            "module": m,
            "op": op,
            "dtype": dt,
            "pass": ps,
            "calls": int(c),
            "gflop": round(f / 1e9, 4),
            "pct": round(100 * f / total, 2),
        }
        for (m, op, dt, ps), (c, f) in census.rows.items()
    ]
    return sorted(rows, key=lambda r: -r["gflop"])


def _event_rows(events: Any, device: bool, modules: bool, row_limit: int) -> list[dict[str, Any]]:
    rows = []
    for e in events:
        is_module = e.key.startswith(MODULE_PREFIX)
        if is_module != modules:
            continue
        rows.append(
            {
                "name": e.key[len(MODULE_PREFIX) :] if modules else e.key,
                "calls": int(e.count),
                "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
                "cpu_total_ms": round(e.cpu_time_total / 1e3, 3),
                "self_device_ms": round(getattr(e, "self_device_time_total", 0.0) / 1e3, 3),
                "device_total_ms": round(getattr(e, "device_time_total", 0.0) / 1e3, 3),
            }
        )
    if modules:
        key = "device_total_ms" if device else "cpu_total_ms"
    else:
        key = "self_device_ms" if device else "self_cpu_ms"
    return sorted(rows, key=lambda r: -r[key])[:row_limit]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of a list of flat dicts (the keys of the first row as columns)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def profile_bundle(
    bundle: str | Path,
    out_dir: str | Path,
    sizes: str = "small",
    steps: int = 3,
    warmup: int = 2,
    device: str | None = None,
    amp: bool | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    overrides: dict[str, Any] | None = None,
    row_limit: int = 20,
    module_depth: int = 2,
    cpu_autocast: str | None = "bfloat16",
    data_size: str | None = None,
) -> dict[str, Any]:
    """Profile a bundle's model step and write the tables and the trace into ``out_dir`` (see the module docstring).

    Returns:
        The summary written to ``<bundle>.json`` (rows, file paths, the step's batch shape).
    """
    bundle = Path(bundle)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = {"log_every": 10**9, **(overrides or {})}  # the loss logging reads the loss (a sync) every N steps
    parser, trainer = build_trainer(
        bundle,
        sizes=sizes,
        device=device,
        amp=amp,
        compile=compile,
        channels_last=channels_last,
        num_workers=0,
        overrides=values,
        data_size=data_size,
    )
    dev = torch.device(trainer.state.device)
    _start(trainer)
    batch = random_like_batch(_template_batch(parser), dev)
    for _ in range(warmup):
        _step(trainer, batch)
    _sync(dev)
    on_cuda = dev.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    syncs: list[str] = []
    with contextlib.ExitStack() as stack:
        prof = stack.enter_context(torch.profiler.profile(activities=activities, record_shapes=True))
        stack.enter_context(module_ranges(_network(trainer), module_depth))
        if on_cuda:
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            stack.callback(torch.cuda.set_sync_debug_mode, "default")
        for i in range(steps):
            with record_function(f"train_step_{i}"):
                _step(trainer, batch)
        if on_cuda:  # before the closing synchronize, which would count as a sync itself
            torch.cuda.set_sync_debug_mode("default")
        _sync(dev)
        if on_cuda:
            syncs = [
                f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
                for w in caught
                if "synchroniz" in str(w.message).lower()
            ]
    name = bundle.name
    sort_by = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    events = prof.key_averages()
    files = {
        "ops": out / f"{name}.ops.txt",
        "modules": out / f"{name}.modules.md",
        "precision": out / f"{name}.precision.md",
        "trace": out / f"{name}.trace.json",
        "summary": out / f"{name}.json",
    }
    files["ops"].write_text(events.table(sort_by=sort_by, row_limit=row_limit) + "\n")
    ops = _event_rows(events, on_cuda, modules=False, row_limit=row_limit)
    modules = _event_rows(events, on_cuda, modules=True, row_limit=row_limit)
    files["modules"].write_text(format_rows(modules) + "\n")
    prof.export_chrome_trace(str(files["trace"]))
    try:
        precision = precision_census(trainer, batch, module_depth, cpu_autocast)
        precision_error = None
    except Exception as err:  # a census failure (an op without a CPU bf16 kernel) must not lose the profile
        precision, precision_error = [], f"{type(err).__name__}: {err}"
    files["precision"].write_text(format_rows(precision[:row_limit]) + "\n")
    image = batch.get("image") if isinstance(batch, dict) else None
    summary = {
        "bundle": name,
        "sizes": sizes,
        "device": str(dev),
        "amp": bool(trainer.amp),
        "steps": steps,
        "warmup": warmup,
        "sort_by": sort_by,
        "batch_shape": list(image.shape) if isinstance(image, torch.Tensor) else None,
        "ops": ops,
        "modules": modules,
        "precision": precision,
        "precision_autocast": cpu_autocast if dev.type == "cpu" else ("trainer amp" if trainer.amp else None),
        "precision_error": precision_error,
        "cuda_syncs": syncs,
        "files": {k: str(v) for k, v in files.items()},
    }
    files["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return summary
