"""Frozen embeddings of irregularly timed image series (TVRL's longitudinal setting).

A series batch is the dict of :func:`~medssl_monai.evaluation.clips.load_series`: ``image`` (``N x C x T x H x W``
``uint8``, left-padded with zero images), ``times`` (``N x T`` acquisition times, e.g. calendar years) and
``frame_mask`` (``N x T`` bool, ``True`` = a real visit). :func:`embed_series` runs an encoder over it in batches
and hands it the visit times and the frame mask only where the encoder takes them (:func:`series_inputs`):

========================================== ============================================================
encoder                                    series inputs passed beside the images
========================================== ============================================================
``kind`` ``"tvrl"`` (a :class:`~medssl_    ``times`` and ``frame_mask`` (the temporal transformer's time
monai.encoders.ClipEncoder` or a           embedding, when it has one, and its key-padding mask)
:class:`~.temporal.TemporalFeatures`)
``kind`` ``"ucl"``                         ``frame_mask`` (padded frames left out of the mean over time)
any other ``kind``                         nothing (fixed-length clip models: padding is part of the clip)
a callable without ``kind``                the keyword parameters ``times`` / ``frame_mask`` its signature
                                           names (pixel controls: none)
========================================== ============================================================

Times are made relative to each series' first real visit (padding 0) by default, as the TVRL bundles train and
probe (``relative_time``: years since the first visit of the view, :class:`~medssl_monai.transforms.tvrl.
RelativeTimesd`): calendar years (2008-2020 in the synthetic set) would put the time embedding's sinusoids far
outside the range it was trained on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["SERIES_INPUTS", "KIND_SERIES_INPUTS", "series_inputs", "relative_times", "embed_series"]

#: the optional inputs a series encoder can take, in the keyword names of ``ClipEncoder.forward``
SERIES_INPUTS: tuple[str, ...] = ("times", "frame_mask")
#: encoder kind -> the series inputs it uses (kinds not listed use none)
KIND_SERIES_INPUTS: dict[str, tuple[str, ...]] = {"tvrl": ("times", "frame_mask"), "ucl": ("frame_mask",)}


def series_inputs(encoder: Callable[..., torch.Tensor]) -> tuple[str, ...]:
    """Which of :data:`SERIES_INPUTS` ``encoder`` takes: by its ``kind`` where it has one (a ``ClipEncoder`` or
    ``TemporalFeatures``), else by the parameter names of its signature (``forward`` for a module)."""
    kind = getattr(encoder, "kind", None)
    if isinstance(kind, str):
        return KIND_SERIES_INPUTS.get(kind, ())
    target = encoder.forward if isinstance(encoder, nn.Module) else encoder
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature: images only
        return ()
    usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n in SERIES_INPUTS if n in params and params[n].kind in usable)


def relative_times(times: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """``N x T`` times minus each row's first real visit (``frame_mask`` True); padded steps 0 (rows without a real
    visit are all 0). The batched :class:`~medssl_monai.transforms.tvrl.RelativeTimesd`."""
    t = torch.as_tensor(times, dtype=torch.float32)
    valid = torch.as_tensor(frame_mask, dtype=torch.bool, device=t.device)
    if t.shape != valid.shape or t.ndim != 2:
        raise ValueError(f"times and frame_mask must both be N x T, got {tuple(t.shape)} and {tuple(valid.shape)}")
    first = valid.float().argmax(dim=1, keepdim=True)  # index of the first True (0 when none)
    origin = t.gather(1, first)
    return torch.where(valid, t - origin, torch.zeros_like(t))


def _device_of(encoder: Any) -> torch.device:
    if isinstance(encoder, nn.Module):
        p = next(encoder.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def embed_series(
    encoder: Callable[..., torch.Tensor],
    series: Mapping[str, torch.Tensor],
    batch_size: int = 64,
    relative: bool = True,
    inputs: Sequence[str] | None = None,
) -> np.ndarray:
    """Embed every series of ``series`` with ``encoder``: ``N x D`` ``float32`` features.

    Args:
        encoder: ``f(images B x C x T x H x W, [times=B x T], [frame_mask=B x T]) -> B x D`` on 8-bit images: a
            :class:`~medssl_monai.encoders.ClipEncoder`, a :class:`~.temporal.TemporalFeatures` or any callable
            (put it in eval mode first; nothing here changes its mode).
        series: ``{"image", "times", "frame_mask"}`` as :func:`~medssl_monai.evaluation.clips.load_series`
            returns (``times`` / ``frame_mask`` may be absent when the encoder takes neither).
        batch_size: series per forward pass.
        relative: pass times relative to each series' first real visit (:func:`relative_times`), as the TVRL
            bundles train; ``False`` passes them as stored.
        inputs: the series inputs to pass (a subset of :data:`SERIES_INPUTS`); ``None``: :func:`series_inputs`.

    Raises:
        ValueError: ``batch_size < 1``, an unknown input name, or an input the series lacks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = tuple(series_inputs(encoder) if inputs is None else inputs)
    unknown = [n for n in names if n not in SERIES_INPUTS]
    if unknown:
        raise ValueError(f"inputs must be among {SERIES_INPUTS}, got {unknown}")
    needed = set(names) | ({"frame_mask"} if "times" in names and relative else set())  # the origin is per mask
    missing = sorted(n for n in needed if n not in series)
    if missing:
        raise ValueError(f"the encoder takes {list(names)} but the series have no {missing}")
    images = series["image"]
    extra: dict[str, torch.Tensor] = {}
    if "times" in names:
        t = torch.as_tensor(series["times"], dtype=torch.float32)
        extra["times"] = relative_times(t, series["frame_mask"]) if relative else t
    if "frame_mask" in names:
        extra["frame_mask"] = torch.as_tensor(series["frame_mask"], dtype=torch.bool)
    device = _device_of(encoder)
    out = []
    for i in range(0, len(images), batch_size):
        kw = {k: v[i : i + batch_size].to(device) for k, v in extra.items()}
        y = encoder(images[i : i + batch_size].to(device), **kw)
        out.append(torch.as_tensor(y).detach().float().cpu())
    if not out:
        raise ValueError("no series to embed")
    return torch.cat(out).numpy()
