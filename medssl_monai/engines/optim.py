"""Optimiser parameter groups and a per-iteration cosine schedule, as in the VideoMAE-family reference code.

- :func:`weight_decay_groups`: VideoMAE/DISCOVR ``utils/optim_factory.py::get_parameter_groups``: no weight
  decay on 1-D parameters (LayerNorm weights, ``in_proj_bias``), on names ending in ``.bias`` and on the model's
  ``no_weight_decay`` names (``pos_embed``, ``cls_token``, ``mask_token``); frozen parameters are left out.
- :class:`WarmupCosineLR`: ``utils/utils.py::cosine_scheduler``, stepped every iteration: a linear warm-up from 0
  to the base lr (``np.linspace(0, base, warmup_steps)``), then a cosine from the base lr down to ``min_lr`` over
  the remaining steps. MONAI's ``WarmupCosineSchedule`` instead decays to 0 and clamps at ``end_lr``: with
  DISCOVR's base 1.5e-4 and min 1e-4 its lr sits on the floor for 61% of the post-warm-up steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["weight_decay_groups", "reference_cosine", "WarmupCosineLR"]

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def weight_decay_groups(
    module: nn.Module,
    weight_decay: float,
    skip_names: Iterable[str] = NO_DECAY_NAMES,
    match: str = "leaf",
) -> list[dict]:
    """Two AdamW groups, ``decay`` (``weight_decay``) and ``no_decay`` (0), over the trainable parameters.

    Args:
        module: the module whose ``named_parameters`` are grouped (parameters without a gradient are skipped).
        weight_decay: the decay of the ``decay`` group.
        skip_names: parameter names exempt from decay besides biases and 1-D parameters.
        match: ``"leaf"`` compares the last name component (``encoder.cls_token`` matches ``cls_token``: what the
            reference's ``no_weight_decay`` sets out to exempt); ``"full"`` compares the whole dotted name, as
            the reference's ``name in skip_list`` does, so in its pretraining model only the top-level
            ``mask_token`` matches and the encoders' ``cls_token`` are decayed.
    """
    if match not in ("leaf", "full"):
        raise ValueError(f"match must be 'leaf' or 'full', got {match!r}")
    skip = set(skip_names)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = name.rsplit(".", 1)[-1] if match == "leaf" else name
        if p.ndim <= 1 or name.endswith(".bias") or key in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def reference_cosine(
    step: int, base: float, final: float, total_steps: int, warmup_steps: int = 0, start: float = 0.0
) -> float:
    """The lr at step ``step`` of ``cosine_scheduler(base, final, ..., start_warmup_value=start)`` (DISCOVR, per
    iteration), which is also pl_bolts' ``LinearWarmupCosineAnnealingLR`` (TVRL's probe, per epoch).

    Warm-up: ``linspace(start, base, warmup_steps)[step]``; then ``final + (base - final) (1 + cos(pi i / n)) / 2``
    with ``i = step - warmup_steps`` and ``n = total_steps - warmup_steps``. Steps past the end keep ``final``.
    """
    if step < warmup_steps:
        return start + (base - start) * step / max(1, warmup_steps - 1)
    n = max(1, total_steps - warmup_steps)
    i = min(step - warmup_steps, n)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * i / n))


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from ``warmup_start`` x lr, then cosine from each group's initial lr to ``min_lr`` (the
    references' schedules).

    Step ``k`` (an iteration for DISCOVR, ``LrScheduleHandler(epoch_level=False)``; an epoch for TVRL's probe)
    trains with :func:`reference_cosine` ``(k)``. The ratio ``min_lr / lr`` is kept per group, so groups with their
    own lr end at the same fraction of it.

    Args:
        optimizer: the optimizer; its groups' ``lr`` is the base lr.
        warmup_steps: warm-up iterations.
        t_total: total iterations.
        min_lr: the final lr of a group whose lr is ``base_lr`` (the recipe's ``min_lr``, already batch-scaled).
        base_lr: the lr that ``min_lr`` refers to; ``None``: the first group's lr.
        warmup_start: the warm-up's first lr as a fraction of each group's lr (0: DISCOVR's; 0.1: TVRL's probe,
            pl_bolts ``warmup_start_lr = lr / 10``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        t_total: int,
        min_lr: float = 0.0,
        base_lr: float | None = None,
        warmup_start: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)
        self.t_total = int(t_total)
        ref = float(optimizer.param_groups[0]["lr"] if base_lr is None else base_lr)
        self.min_ratio = float(min_lr) / ref if ref > 0 else 0.0
        super().__init__(optimizer, self.lr_lambda, last_epoch)

    def lr_lambda(self, step: int) -> float:
        """The lr multiplier at iteration ``step``."""
        return reference_cosine(step, 1.0, self.min_ratio, self.t_total, self.warmup_steps, self.warmup_start)
