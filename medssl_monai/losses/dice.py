"""Sparse Dice loss for weakly supervised LV segmentation from ED/ES tracings only (UniLVSeg/SimLVSeg).

Reference: ``simlvseg/seg_3d/pl_module.py`` (BioMedIA-MBZUAI/SimLVSeg, arXiv 2310.00454): each training sample is a clip
with one traced frame at ``rel_trace_index``; the loss is ``smp.losses.DiceLoss("binary", from_logits=True)`` on that
prediction slice only, which aggregates intersection and cardinality over the whole batch. Here that is
:class:`monai.losses.DiceLoss` with ``sigmoid=True, batch=True`` on the gathered slice. Every other frame gets no
gradient, which is what makes the supervision "sparse".
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from medssl_monai.transforms.superimage import select_super_image_cells

__all__ = ["select_frames", "SparseDiceLoss"]


def select_frames(pred: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather frame ``index[b]`` of each sample: ``B x C x T x H x W`` -> ``B x C x H x W`` (differentiable).

    Args:
        pred: predictions ``B x C x T x H x W``.
        index: ``B`` integer frame indices (tensor, list or array), one per sample.
    """
    if pred.ndim != 5:
        raise ValueError(f"select_frames expects B x C x T x H x W, got shape {tuple(pred.shape)}.")
    b, c, t, h, w = pred.shape
    index = torch.as_tensor(index, device=pred.device).long().reshape(-1)
    if index.numel() != b:
        raise ValueError(f"select_frames needs one frame index per sample ({b}), got {index.numel()}.")
    # gather rather than advanced indexing on the host: no sync, works on channels-last and under torch.compile
    gather_index = index.reshape(b, 1, 1, 1, 1).expand(b, c, 1, h, w)
    return pred.gather(2, gather_index).squeeze(2)


class SparseDiceLoss(nn.Module):
    """Dice loss on the traced frame of each clip only (UniLVSeg's weak supervision).

    Two layouts are accepted by :meth:`forward`:

    * 3D clips: ``pred`` ``B x 1 x T x H x W`` logits, the slice at ``index[b]`` is compared with ``target[b]``;
    * 2D super-images: ``pred`` ``B x 1 x (n*H) x (n*W)`` logits, the grid cell of frame ``index[b]`` (row-major,
      :func:`~medssl_monai.transforms.superimage.super_image_target_slice`) is compared with ``target[b]``; the
      frame size ``H x W`` is read from ``target``.

    Args:
        sigmoid: apply a sigmoid to ``pred`` (the reference's ``from_logits=True``).
        batch: sum intersection and cardinality over the batch before the ratio (the reference's binary smp
            DiceLoss does so), instead of averaging per-sample Dice.
        smooth_nr: added to the numerator. The reference (smp) uses 0 with a 1e-7 clamp on the denominator; MONAI's
            1e-5 defaults make no measurable difference on ~1,000-pixel LV masks and keep an empty target finite.
        smooth_dr: added to the denominator.
    """

    def __init__(self, sigmoid: bool = True, batch: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
        super().__init__()
        self.dice = DiceLoss(sigmoid=sigmoid, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Dice loss between the traced slices of ``pred`` and ``target`` (``B x 1 x H x W`` or ``B x H x W``)."""
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if target.ndim != 4:
            raise ValueError(f"SparseDiceLoss: target must be B x 1 x H x W, got shape {tuple(target.shape)}.")
        if pred.ndim == 5:
            selected = select_frames(pred, index)
        elif pred.ndim == 4:
            selected = select_super_image_cells(pred, index, target.shape[-2], target.shape[-1])
        else:
            raise ValueError(
                f"SparseDiceLoss: pred must be B x 1 x T x H x W or a super-image B x 1 x nH x nW, "
                f"got shape {tuple(pred.shape)}."
            )
        if selected.shape != target.shape:
            raise ValueError(
                f"SparseDiceLoss: traced slice {tuple(selected.shape)} and target {tuple(target.shape)} differ."
            )
        return self.dice(selected, target.to(selected.dtype))
