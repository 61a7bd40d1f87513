"""Mixed precision in MONAI's trainers: a loss scaler only where the autocast dtype needs one.

MONAI's ``Trainer.run`` creates ``torch.cuda.amp.GradScaler()`` whenever ``amp=True``, whatever
``amp_kwargs["dtype"]`` is. Loss scaling exists for float16, whose small exponent range lets gradients
underflow; bfloat16 has float32's exponent range, so under bf16 autocast the scaler only costs: a multiply of the
loss, a non-finite check over every gradient and, with an optimizer that has no fused AMP support, a host read of
``found_inf`` (``.item()``, a host-device sync) in every ``scaler.step``.

:class:`GradScalerHandler` (one entry in a bundle's ``train#handlers``) replaces that scaler at ``STARTED`` by
:func:`grad_scaler`'s: a *disabled* ``GradScaler`` under bf16 (its ``scale`` returns the loss, ``step`` calls
``optimizer.step()``, ``update`` does nothing) and an enabled one under fp16. Disabled rather than ``None``:
``SupervisedTrainer._iteration`` autocasts only when ``engine.scaler is not None``, so ``None`` would turn
autocast off.

The scaler is not in ``resume.pt`` (nor in MONAI's checkpoints): bf16 has no scaler state, and an fp16 run
resumes with a fresh scale that recalibrates in a few steps, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["autocast_dtype", "needs_grad_scaler", "grad_scaler", "GradScalerHandler"]


def autocast_dtype(amp_kwargs: Mapping[str, Any] | None) -> torch.dtype:
    """The dtype ``torch.autocast("cuda", **amp_kwargs)`` runs in: ``amp_kwargs["dtype"]``, else float16.

    A string (``"bfloat16"`` or ``"torch.bfloat16"``) names a ``torch`` dtype.
    """
    dtype = (amp_kwargs or {}).get("dtype")
    if dtype is None:
        return torch.float16  # torch.autocast's default on CUDA
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"amp_kwargs['dtype'] must be a torch dtype, got {(amp_kwargs or {}).get('dtype')!r}")
    return dtype


def needs_grad_scaler(amp: bool, amp_kwargs: Mapping[str, Any] | None) -> bool:
    """Whether a trainer with ``amp`` and ``amp_kwargs`` needs loss scaling: AMP on and a float16 autocast."""
    return bool(amp) and autocast_dtype(amp_kwargs) == torch.float16


def grad_scaler(amp: bool, amp_kwargs: Mapping[str, Any] | None) -> torch.amp.GradScaler | None:
    """The scaler for MONAI's ``SupervisedTrainer``: ``None`` without AMP, enabled for fp16, disabled otherwise."""
    if not amp:
        return None
    return torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(amp, amp_kwargs))


class GradScalerHandler:
    """Trainer handler: at ``STARTED``, the trainer's loss scaler is :func:`grad_scaler`'s (none active under bf16).

    ``STARTED`` fires inside ``Engine.run``, after MONAI's ``Trainer.run`` has made its scaler and before the first
    iteration. Under fp16 a scaler the trainer already has is kept; one is made only where there is none (a step
    driven without ``run()``, as ``medssl_monai.benchmarking`` does).
    """

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (MONAI calls this for every entry of ``train_handlers``)."""
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        amp, amp_kwargs = bool(getattr(engine, "amp", False)), getattr(engine, "amp_kwargs", None)
        current = getattr(engine, "scaler", None)
        if needs_grad_scaler(amp, amp_kwargs) and current is not None:
            return  # MONAI's own fp16 scaler
        engine.scaler = grad_scaler(amp, amp_kwargs)
