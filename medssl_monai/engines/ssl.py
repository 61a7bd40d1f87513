"""Self-supervised training with MONAI's own ``SupervisedTrainer``.

A pretraining method is an ``nn.Module`` (the *method*) that wraps the bundle's ``network_def`` encoder plus
its heads, teachers and queues, and whose ``forward`` returns a dict with ``"loss"`` (and any other scalar
terms to log). :class:`OutputLoss` hands that loss to ``SupervisedTrainer``, so AMP, gradient scaling,
``torch.compile``, events and handlers all work unchanged; :class:`MomentumTeacherHandler` runs the EMA
teacher update after each optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["OutputLoss", "ema_update", "cosine_schedule", "MomentumTeacherHandler", "SetEpochHandler", "output_scalars"]


class OutputLoss(nn.Module):
    """``loss_function`` for ``SupervisedTrainer`` when the network already computed its loss: ``pred[key]``."""

    def __init__(self, key: str = "loss") -> None:
        super().__init__()
        self.key = key

    def forward(self, pred: dict, target=None) -> torch.Tensor:
        return pred[self.key]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = m * teacher + (1 - m) * student`` over parameters (buffers copied), with fused foreach ops.

    Used for MoCo's key encoder (UCL, m = 0.999) and DINO teachers (DISCOVR, m = 0.996).
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student must have the same parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if len(t_bufs) != len(s_bufs):
        raise ValueError("teacher and student must have the same buffers")
    if t_bufs:  # one multi-tensor copy: a ResNet-50 has about 160 BatchNorm buffers, one kernel launch each otherwise
        torch._foreach_copy_(t_bufs, s_bufs)


def cosine_schedule(
    base: float, final: float, step: int, total_steps: int, warmup_steps: int = 0, warmup_start: float | None = None
) -> float:
    """Linear warm-up from ``warmup_start`` to ``base``, then cosine from ``base`` to ``final`` (DINO/VideoMAE)."""
    if step < warmup_steps:
        start = base if warmup_start is None else warmup_start
        return start + (base - start) * step / max(1, warmup_steps)
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t))


class MomentumTeacherHandler:
    """After every iteration call ``method.update_teacher(momentum)`` (EMA teachers, momentum key encoders).

    Args:
        method: the method module (unwrapped from DDP automatically) with an ``update_teacher(momentum)`` method.
        momentum: a float, or ``callable(iteration, total_iterations) -> float`` for a schedule.
    """

    def __init__(self, method: nn.Module, momentum: float | Callable[[int, int], float] = 0.996) -> None:
        self.method = method.module if hasattr(method, "module") else method
        self.momentum = momentum

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        m = self.momentum
        if callable(m):
            total = engine.state.max_epochs * (engine.state.epoch_length or 1)
            m = m(engine.state.iteration, total)
        self.method.update_teacher(float(m))


class SetEpochHandler:
    """At every epoch start call ``method.set_epoch(engine.state.epoch - 1)`` (0-based; DDP unwrapped).

    Methods whose loss depends on the epoch use it: TVRL's masked-prediction weight schedule, DISCOVR's teacher
    temperature warm-up. Anything else with ``set_epoch`` works too, e.g. a
    :class:`~medssl_monai.data.seeded.SeededSamples` training dataset (it runs before the epoch's DataLoader
    iterator is created).
    """

    def __init__(self, method: nn.Module | Any) -> None:
        self.method = method.module if hasattr(method, "module") else method

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.method.set_epoch(engine.state.epoch - 1)


def output_scalars(output: dict, prefix: str = "") -> dict[str, float]:
    """The scalar terms of a method's output dict, for ``StatsHandler``/``TensorBoardStatsHandler``."""
    pred = output.get("pred", output) if isinstance(output, dict) else output
    return {f"{prefix}{k}": v for k, v in pred.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
