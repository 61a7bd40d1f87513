"""Find host-device synchronisations in a training step, on any device (a CPU test included).

A GPU step that reads a device value on the host (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``,
``.cpu()``/``.numpy()``) or runs an op whose output *shape* depends on device values (``nonzero``, boolean-mask
indexing ``x[mask]``/``x[mask] = y``, ``masked_select``, ``unique``, ``repeat_interleave`` without
``output_size``) waits for the device queue to drain: the CPU cannot launch the next kernels meanwhile, and at
small per-kernel work the GPU idles. ``torch.cuda.set_sync_debug_mode("error")`` catches these on a GPU only;
:class:`HostSyncGuard` catches the same operations on a CPU too, by their ATen ops (a ``TorchDispatchMode``) and
by patching the few ``Tensor`` methods that never reach the dispatcher on a CPU tensor.

On a CPU every tensor is a host tensor, so the guard cannot tell a device read from a read of a host-side value
(e.g. augmentation draws made on the host on purpose); ``allow`` names source files whose reads are known to be
host-side: they are recorded as allowed instead of raising.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSync", "HostSyncError", "HostSyncGuard", "assert_no_cuda_sync", "no_host_sync"]

_aten = torch.ops.aten

#: ops that read a device value on the host or size their output from device values
_SYNC_OPS = {
    _aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t), python control flow on a tensor
    _aten.is_nonzero.default,
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.equal.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
}
#: ops that sync only with a boolean index (boolean indexing is a ``nonzero`` inside)
_INDEX_OPS = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}
#: Tensor methods a CPU tensor serves without dispatch (``self`` returned or the memory read directly)
_METHODS = ("cpu", "numpy", "tolist")


class HostSyncError(RuntimeError):
    """A host-device synchronisation inside a guarded region."""


@dataclass(frozen=True)
class HostSync:
    """One synchronising call: the op and the innermost non-torch frame that made it (``file:line in func``)."""

    op: str
    where: str
    allowed: bool


def _has_bool_index(args: Sequence[Any]) -> bool:
    indices = args[1] if len(args) > 1 else None
    if not isinstance(indices, (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _caller() -> str:
    """The innermost frame outside torch and this module (the code that asked for the sync)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or name.endswith("sync_guard.py") or "/contextlib.py" in name:
            continue
        return f"{name}:{frame.lineno} in {frame.name}"
    return "<unknown>"


class HostSyncGuard(TorchDispatchMode):
    """Raise (or record) on every host-device synchronising op run inside the ``with`` block.

    Args:
        raise_on_sync: raise :class:`HostSyncError` at the first sync not in ``allow``; ``False`` only records.
        allow: substrings of source paths whose syncs are recorded as allowed (host-side values on purpose).

    Attributes:
        syncs: every sync seen, in order (:class:`HostSync`).
    """

    def __init__(self, raise_on_sync: bool = True, allow: Sequence[str] = ()) -> None:
        super().__init__()
        self.raise_on_sync = raise_on_sync
        self.allow = tuple(allow)
        self.syncs: list[HostSync] = []
        self._saved: dict[str, Callable | None] = {}

    def _hit(self, op: str) -> None:
        where = _caller()
        allowed = any(a in where for a in self.allow)
        self.syncs.append(HostSync(op, where, allowed))
        if self.raise_on_sync and not allowed:
            raise HostSyncError(f"host-device sync in the step: {op} at {where}")

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _SYNC_OPS or (func in _INDEX_OPS and _has_bool_index(args)):
            self._hit(str(func))
        elif func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self._hit(str(func))
        return func(*args, **kwargs)

    def _patch(self) -> None:
        for name in _METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from the C base class

            def method(t: torch.Tensor, *a: Any, _name: str = name, _orig: Callable = original, **kw: Any) -> Any:
                self._hit(f"Tensor.{_name}")
                return _orig(t, *a, **kw)

            setattr(torch.Tensor, name, method)

    def _unpatch(self) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()

    def __enter__(self) -> HostSyncGuard:
        self._patch()
        try:
            return super().__enter__()
        except BaseException:
            self._unpatch()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._unpatch()


@contextlib.contextmanager
def no_host_sync(raise_on_sync: bool = True, allow: Sequence[str] = ()) -> Iterator[HostSyncGuard]:
    """``with no_host_sync() as guard:`` run a step; raises at a sync (or records them in ``guard.syncs``).

    On a CUDA device, ``torch.cuda.set_sync_debug_mode("error")`` around the same block is the ground truth
    (it also sees device-to-host copies this guard cannot tell from host work on a CPU).
    """
    guard = HostSyncGuard(raise_on_sync=raise_on_sync, allow=allow)
    with guard:
        yield guard


def assert_no_cuda_sync(fn: Callable[[], Any]) -> None:
    """Run ``fn`` once to warm up (first-call allocations may synchronise), then again under
    ``torch.cuda.set_sync_debug_mode("error")``: any host-device synchronisation in it raises."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
