"""DINO self-distillation pieces used by DISCOVR's video and image branches (Mishra et al., arXiv 2506.11777).

- :class:`DINOHead`: MLP ``in -> hidden -> hidden -> bottleneck`` with GELU, L2-normalisation, then a
  weight-normalised linear layer to ``out_dim`` whose gain is fixed at 1 (DINO's ``norm_last_layer=True``):
  each output unit is a unit-norm prototype.
- :func:`teacher_temperature`: linear warm-up of the teacher temperature (0.04 -> 0.07 over 30 epochs) then
  constant. The reference precomputes a table of hard-coded length 400 (runs longer than 400 epochs would index
  past it); here the schedule is a function and stays at the final value.
- :class:`DINOLoss`: ``mean over student views of -sum softmax((t - c) / tau_t) * log_softmax(s / tau_s)``
  with the centre ``c`` updated by EMA (momentum 0.9) of the batch mean of the teacher outputs, all-reduced
  across ranks under DDP. ``center_update="logits"`` (default) averages the raw teacher logits, DINO's
  definition (Caron et al. 2021, ``DINOLoss.update_center``); ``"probs"`` averages the teacher's centred,
  sharpened probabilities, as DISCOVR's ``modeling_pretrain.py`` does (``update_center`` is called after the
  softmax). Probabilities are about ``1/K`` each, so that centre is close to a constant and barely centres.

The head's last layer and the loss run in float32 even under autocast: the teacher at tau 0.04 divides the
logits by 0.04, so bf16 rounding of the cosine logits (about 3 significant digits) moves its softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medssl_monai.distributed import all_reduce_sum, world_size

__all__ = ["DINOHead", "teacher_temperature", "DINOLoss"]


class DINOHead(nn.Module):
    """DINO projection head with a weight-normalised last layer of fixed unit gain.

    Args:
        in_dim: backbone width (768 for ViT-B).
        out_dim: number of DINO prototypes K (reference: 16384).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the last layer (256).
        num_layers: MLP layers (3).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 16384, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(num_layers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight_norm(Linear(bottleneck, out, bias=False)) with weight_g filled with 1 and frozen: the effective
        # weight is the row-normalised direction, so keeping only the direction is the same function
        self.last_layer_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_layer_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_dim`` -> float32 logits ``B x out_dim`` (cosines; the last layer outside autocast)."""
        x = self.mlp(x)
        # float32 even under autocast: the logits are divided by temperatures down to 0.04 before a softmax
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), dim=-1)
            return F.linear(x, F.normalize(self.last_layer_v.float(), dim=1))


def teacher_temperature(
    epoch: int, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07, warmup_epochs: int = 30
) -> float:
    """Teacher temperature at ``epoch`` (0-based): ``linspace(warmup, final, warmup_epochs)[epoch]``, then final."""
    if epoch >= warmup_epochs:
        return float(teacher_temp)
    if warmup_epochs <= 1:
        return float(warmup_teacher_temp)
    return float(warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * epoch / (warmup_epochs - 1))


class DINOLoss(nn.Module):
    """DINO cross-entropy between a teacher and several student views, with teacher centring.

    Args:
        out_dim: head output size K (the centre's size).
        student_temp: student temperature (0.1).
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: the teacher temperature schedule.
        center_momentum: EMA momentum of the centre (0.9).
        center_update: what the centre averages: ``"logits"`` (the raw teacher outputs, DINO) or ``"probs"``
            (the teacher probabilities ``softmax((t - c) / tau_t)``, the DISCOVR reference code).
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        center_update: str = "logits",
    ) -> None:
        super().__init__()
        if center_update not in ("logits", "probs"):
            raise ValueError(f"center_update must be 'logits' or 'probs', got {center_update!r}")
        self.center_update = center_update
        self.student_temp = student_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        """``softmax((t - c) / tau_t(epoch))`` (no gradient)."""
        temp = teacher_temperature(epoch, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs)
        return F.softmax((teacher_out.detach().float() - self.center) / temp, dim=-1)

    def forward(
        self, student_out: torch.Tensor | Sequence[torch.Tensor], teacher_out: torch.Tensor, epoch: int = 0
    ) -> torch.Tensor:
        """Mean over views and samples of the cross-entropy; updates the centre from ``teacher_out`` (training).

        Args:
            student_out: ``V x B x K`` (or a list of ``B x K``), the student views.
            teacher_out: ``B x K``, the teacher output for the same samples.
            epoch: current epoch (0-based), for the teacher temperature.
        """
        students = torch.stack(list(student_out)) if not isinstance(student_out, torch.Tensor) else student_out
        if students.ndim == 2:
            students = students[None]
        q = self.teacher_probs(teacher_out, epoch)
        log_p = F.log_softmax(students.float() / self.student_temp, dim=-1)
        loss = -(q[None] * log_p).sum(-1).mean()
        if self.training:
            self.update_center(teacher_out if self.center_update == "logits" else q)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c = m c + (1 - m) mean(teacher_out)``, the mean taken over the global batch (all ranks).

        ``teacher_out`` is what ``center_update`` names: the raw logits or the teacher probabilities.
        """
        batch_sum = all_reduce_sum(teacher_out.detach().float().sum(0, keepdim=True))
        batch_mean = batch_sum / (teacher_out.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1.0 - self.center_momentum)
