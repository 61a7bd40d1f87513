"""albumentations' ``CLAHE`` (OpenCV's algorithm) on a device batch, one clip limit per clip (SimLVSeg).

Grey clips stored as RGB work on OpenCV's LAB lightness of the grey value through two exact lookup tables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from medssl_monai.transforms.device.common import _get, _PerClipParams, _to_device

__all__ = ["clahe"]


@functools.lru_cache(maxsize=1)
def _grey_lab_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit LAB lightness of each grey value (``256``) and the RGB of each neutral lightness (``256 x 3``)."""
    from medssl_monai.transforms.intensity import _grey_lab_luts

    luts = _grey_lab_luts()
    if luts is None:  # an OpenCV whose LAB keeps grey off-neutral: fall back to the identity round trip
        ident = np.arange(256, dtype=np.uint8)
        return torch.from_numpy(ident), torch.from_numpy(np.repeat(ident[:, None], 3, 1))
    to_l, from_l = luts
    return torch.from_numpy(to_l.astype(np.uint8)), torch.from_numpy(np.ascontiguousarray(from_l))


@functools.lru_cache(maxsize=8)
def _residual_table(device: torch.device) -> torch.Tensor:
    """``256 x 256`` ``int32``: row ``r`` has a 1 at the bins where OpenCV's CLAHE puts ``r`` remaining counts."""
    r = torch.arange(256, dtype=torch.int32)[:, None]
    i = torch.arange(256, dtype=torch.int32)[None, :]
    step = (256 // r.clamp(min=1)).clamp(min=1)
    table = ((i % step == 0) & (i // step < r)).to(torch.int32)
    return _to_device(table, device)


def _clahe_frames(frames: torch.Tensor, limits: torch.Tensor, tiles: tuple[int, int]) -> torch.Tensor:
    """OpenCV ``CLAHE.apply`` on ``N x H x W`` integer frames, each with its own integer histogram clip limit.

    ``limits`` are clip limits as given to ``cv2.createCLAHE`` (``N``, ``float64``). OpenCV's algorithm: frames
    whose size is not a multiple of the tile grid are extended (reflect-101, bottom and right) for the
    histograms; per tile a 256-bin histogram, clipped at ``max(int(limit * tile_area / 256), 1)``, the clipped
    count spread evenly with the remainder on every ``256 // remainder``-th bin, its cumulative sum scaled by
    ``255 / tile_area`` and rounded; each pixel interpolates bilinearly between the tables of its four nearest
    tile centres (in ``float32``, as OpenCV).
    """
    n, h, w = frames.shape
    ty_n, tx_n = tiles
    dev = frames.device
    src = frames.long()
    if h % ty_n or w % tx_n:
        ext = F.pad(src[:, None].float(), (0, tx_n - w % tx_n, 0, ty_n - h % ty_n), mode="reflect")[:, 0].long()
    else:
        ext = src
    th, tw = ext.shape[1] // ty_n, ext.shape[2] // tx_n
    ext = ext[:, : th * ty_n, : tw * tx_n]
    area = th * tw
    # histograms: one scatter-add over every pixel into N x tiles x 256 bins
    tile_row = (torch.arange(th * ty_n, device=dev) // th)[:, None]
    tile_col = (torch.arange(tw * tx_n, device=dev) // tw)[None, :]
    bins = ((tile_row * tx_n + tile_col) * 256)[None] + ext
    hist = torch.zeros(n, ty_n * tx_n * 256, dtype=torch.int32, device=dev)
    hist.scatter_add_(1, bins.reshape(n, -1), torch.ones(1, dtype=torch.int32, device=dev).expand(n, bins[0].numel()))
    hist = hist.reshape(n, ty_n * tx_n, 256)
    # clip and redistribute (integer arithmetic as OpenCV)
    limit = (limits * area / 256).to(torch.int64).clamp(min=1).to(torch.int32)[:, None, None]
    clipped = (hist - limit).clamp(min=0).sum(-1, dtype=torch.int32)
    # the remainder's bins (every 256 // r-th, r of them) as one table row per remainder r
    hist = hist.clamp(max=limit) + (clipped // 256)[..., None] + _residual_table(dev)[clipped % 256]
    scale = float(np.float32(255) / np.float32(area))  # OpenCV's float lutScale, as a Python number: no copy
    lut = (hist.cumsum(-1).float() * scale).round().clamp(0, 255).reshape(n, -1)
    # bilinear interpolation between the four nearest tile tables (float32, OpenCV's expressions)

    def axis(size: int, tile: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inv = float(np.float32(1) / np.float32(tile))
        pos = torch.arange(size, dtype=torch.float32, device=dev) * inv - 0.5
        lo = pos.floor()
        frac = pos - lo
        lo = lo.long()
        return lo.clamp(min=0), (lo + 1).clamp(max=count - 1), frac

    y1, y2, ya = axis(h, th, ty_n)
    x1, x2, xa = axis(w, tw, tx_n)
    ya, xa = ya[:, None], xa[None, :]
    ya1, xa1 = 1.0 - ya, 1.0 - xa
    v = src.reshape(n, h, w)

    def look(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        idx = ((ty[:, None] * tx_n + tx[None, :]) * 256)[None] + v
        return torch.gather(lut, 1, idx.reshape(n, -1)).reshape(n, h, w)

    res = (look(y1, x1) * xa1 + look(y1, x2) * xa) * ya1 + (look(y2, x1) * xa1 + look(y2, x2) * xa) * ya
    return res.round().clamp(0, 255).to(torch.uint8)


def clahe(
    x: torch.Tensor,
    params: _PerClipParams | Mapping[str, torch.Tensor],
    tile_grid_size: tuple[int, int] = (8, 8),
    grey: bool = True,
) -> torch.Tensor:
    """albumentations ``CLAHE`` with one clip limit per clip on the clips whose ``clahe`` flag is set.

    Matches :class:`~medssl_monai.transforms.intensity.RandClipCLAHEd` (OpenCV CLAHE on every frame; RGB: on the
    LAB lightness) to within a grey level at a few pixels. Only the flagged clips are computed; the flags must be
    a host tensor (they pick the clips without reading the device).

    Args:
        x: ``uint8`` batch ``B x C x T x H x W``, ``C`` 1, or 3 with equal channels (``grey``).
        params: ``clahe`` (host ``bool``) and ``clip_limit``.
        tile_grid_size: tiles ``(rows, cols)``.
        grey: 3-channel clips are grey stored as RGB (required for ``C == 3``).
    """
    flags = torch.as_tensor(_get(params, "clahe")).cpu()
    idx_host = torch.nonzero(flags).reshape(-1)
    if idx_host.numel() == 0:
        return x
    c = x.shape[1]
    if c == 3 and not grey:
        raise NotImplementedError("CLAHE on the device needs grey clips (1 channel, or 3 equal channels)")
    if c not in (1, 3):
        raise ValueError(f"CLAHE needs 1 or 3 channels, got {c}")
    idx = _to_device(idx_host, x.device)
    limits = _to_device(torch.as_tensor(_get(params, "clip_limit"), dtype=torch.float64).cpu()[idx_host], x.device)
    sub = x.index_select(0, idx)
    b, _, t, h, w = sub.shape
    frames = sub[:, 0].reshape(b * t, h, w)
    if c == 3:  # grey stored as RGB: CLAHE on OpenCV's LAB lightness, exact through two tables
        to_l, from_l = (_to_device(tab, x.device) for tab in _grey_lab_tables())
        frames = to_l[frames.long()]
    out = _clahe_frames(frames, limits.repeat_interleave(t), tuple(tile_grid_size))
    if c == 3:  # LAB -> RGB of a grey lightness is not always exactly grey: one table per channel
        out = from_l[out.long()].reshape(b, t, h, w, 3).permute(0, 4, 1, 2, 3)
    else:
        out = out.reshape(b, 1, t, h, w)
    return x.index_copy(0, idx, out.contiguous())
