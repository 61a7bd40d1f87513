"""Embedding projections in TensorBoard: the clip embeddings of a fixed set of videos, every few epochs.

:class:`TensorBoardEmbeddingHandler` embeds a small fixed datalist
(e.g. the validation videos) with the encoder being trained, through the common encoder interface
(:func:`medssl_monai.encoders.wrap_backbone`, the same ``B x C x T x H x W -> B x D`` view the representation
benchmark probes), and writes it with ``SummaryWriter.add_embedding``: TensorBoard's *Projector* tab then shows
PCA / t-SNE / UMAP of the embeddings, coloured by the metadata columns (EF, class, split) with a thumbnail of each
clip's middle frame. Watching normal and abnormal clips separate (or collapse to one point) during SSL
pretraining is the quickest sanity check of a representation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from torch import nn
from torch.nn import functional as F

from medssl_monai.engines.tracking import _writer

__all__ = ["TensorBoardEmbeddingHandler", "clip_thumbnails"]

logger = logging.getLogger(__name__)


def clip_thumbnails(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``B x C x T x H x W`` clips -> ``B x 3 x size x size`` middle frames in ``[0, 1]`` (projector sprites).

    Each thumbnail is min-max scaled on its own, so dark and bright videos are both visible.
    """
    if images.ndim != 5:
        raise ValueError(f"expected B x C x T x H x W clips, got shape {tuple(images.shape)}")
    mid = images[:, :, images.shape[2] // 2].float()
    mid = F.interpolate(mid, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    lo = mid.amin(dim=(1, 2, 3), keepdim=True)
    hi = mid.amax(dim=(1, 2, 3), keepdim=True)
    mid = (mid - lo) / (hi - lo).clamp_min(1e-6)
    c = mid.shape[1]
    return mid.expand(-1, 3, -1, -1) if c == 1 else mid[:, :3]


class TensorBoardEmbeddingHandler:
    """Writes the embeddings of a fixed datalist to TensorBoard's projector every ``epoch_interval`` epochs.

    At ``EPOCH_COMPLETED`` the first ``max_samples`` items of ``datalist`` go through ``transform`` (a
    deterministic loader such as ``LoadClipd(mode="start")``), are batched, and the ``encoder`` maps the
    ``image_key`` clips (plus ``input_keys``, e.g. TVRL's visit ``times``) to ``N x D`` under ``torch.no_grad``
    in eval mode. Every module's train/eval flag is restored afterwards and no global RNG is drawn (items are
    loaded without a ``DataLoader``, whose iterator would draw a seed), so attaching the handler does not change
    the training run or its exact resume. ``metadata_keys`` are read from the datalist items (before the
    transform) and become the projector's label columns.

    A failing item is skipped with a warning and a failing call is logged, never raised: a summary must not stop
    a long run. Attach on rank 0 only (``_disabled_: "@is_not_rank0"``).

    Args:
        encoder: module mapping 8-bit clips ``B x C x T x H x W`` (+ ``input_keys``) to ``B x D``
            (:func:`~medssl_monai.encoders.wrap_backbone` around the live ``network_def``).
        datalist: items to embed (the first ``max_samples``).
        transform: maps an item to a dict holding ``image_key`` as ``C x T x H x W``.
        log_dir: TensorBoard folder (ignored when ``summary_writer`` is given).
        summary_writer: an existing ``SummaryWriter``-like object (``add_embedding``).
        image_key: key of the clip after ``transform``.
        input_keys: encoder keyword -> item key, passed to the encoder batched (``{"times": "times"}``) when the
            transform produced that key.
        metadata_keys: datalist keys written as label columns (missing values become ``""``; a column that is
            empty for every item is left out).
        max_samples: items embedded each time.
        batch_size: clips per encoder call.
        epoch_interval: embed every N epochs (the last epoch is always embedded).
        tag: the projector's tensor name.
        thumbnail_size: sprite size in pixels; 0 writes no thumbnails.
        amp: bf16 autocast on CUDA.
    """

    def __init__(
        self,
        encoder: nn.Module | Callable[..., torch.Tensor],
        datalist: Sequence[Mapping[str, Any]],
        transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        log_dir: str | None = "./runs",
        summary_writer: Any | None = None,
        image_key: str = "image",
        input_keys: Mapping[str, str] | None = None,
        metadata_keys: Sequence[str] = ("video_id",),
        max_samples: int = 256,
        batch_size: int = 16,
        epoch_interval: int = 1,
        tag: str = "embedding",
        thumbnail_size: int = 32,
        amp: bool = False,
    ) -> None:
        self.encoder = encoder
        self.datalist = list(datalist)[: max(0, int(max_samples))]
        self.transform = transform
        self.log_dir = log_dir
        self._given_writer = summary_writer
        self.image_key = image_key
        self.input_keys = dict(input_keys or {})
        self.metadata_keys = list(metadata_keys)
        self.batch_size = max(1, int(batch_size))
        self.epoch_interval = max(1, int(epoch_interval))
        self.tag = tag
        self.thumbnail_size = int(thumbnail_size)
        self.amp = bool(amp)
        self.writer: Any | None = None
        self._owned = False

    def attach(self, engine: Engine) -> None:
        """Registers ``EPOCH_COMPLETED`` and closes an owned writer at ``COMPLETED``."""
        self.writer, self._owned = _writer(self.log_dir, self._given_writer)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _device(self) -> torch.device:
        params = self.encoder.parameters() if isinstance(self.encoder, nn.Module) else iter(())
        p = next(params, None)
        return p.device if p is not None else torch.device("cpu")

    def _load(self) -> tuple[list[dict], list[list[str]]]:
        items, rows = [], []
        for i, item in enumerate(self.datalist):
            try:
                out = self.transform(dict(item))
            except Exception as err:  # a bad file must not stop training: the others are still worth a look
                logger.warning("embedding: skipping item %d (%s): %s", i, item.get(self.image_key, "?"), err)
                continue
            items.append({k: out[k] for k in (self.image_key, *self.input_keys.values()) if k in out})
            rows.append([_text(item.get(k, "")) for k in self.metadata_keys])
        return items, rows

    @torch.no_grad()
    def embed(self) -> tuple[torch.Tensor, list[list[str]], torch.Tensor | None]:
        """Embeddings ``N x D`` (float32, CPU), metadata rows and thumbnails (``None`` when disabled)."""
        items, rows = self._load()
        if not items:
            raise ValueError("no item of the embedding datalist could be loaded")
        modes = {m: m.training for m in self.encoder.modules()} if isinstance(self.encoder, nn.Module) else {}
        device = self._device()
        feats, thumbs = [], []
        try:
            for m in modes:
                m.train(False)
            for start in range(0, len(items), self.batch_size):
                batch = list_data_collate(items[start : start + self.batch_size])
                images = torch.as_tensor(batch[self.image_key])
                kwargs = {k: torch.as_tensor(batch[v]).to(device) for k, v in self.input_keys.items() if v in batch}
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda"):
                    z = self.encoder(images.to(device), **kwargs)
                feats.append(z.float().cpu())
                if self.thumbnail_size > 0:
                    thumbs.append(clip_thumbnails(images, self.thumbnail_size))
        finally:
            for m, mode in modes.items():
                m.train(mode)
        return torch.cat(feats), rows, (torch.cat(thumbs) if thumbs else None)

    def __call__(self, engine: Engine) -> None:
        """Embeds the datalist and writes it with the engine epoch as the projector step."""
        epoch = engine.state.epoch
        last = engine.state.max_epochs is not None and epoch >= engine.state.max_epochs
        if epoch % self.epoch_interval and not last:
            return
        try:
            mat, rows, thumbs = self.embed()
        except Exception as err:
            logger.warning("embedding projection of epoch %d failed: %s", epoch, err)
            return
        # columns no item has (e.g. ``ef`` on a timed series) would only clutter the projector's colour menu
        keep = [j for j in range(len(self.metadata_keys)) if any(r[j] for r in rows)]
        header = [self.metadata_keys[j] for j in keep]
        rows = [[r[j] for j in keep] for r in rows]
        multi = len(header) > 1
        self.writer.add_embedding(
            mat,
            metadata=(rows if multi else [r[0] for r in rows]) if header else None,
            label_img=thumbs,
            global_step=epoch,
            tag=self.tag,
            metadata_header=header if multi else None,
        )
        self.writer.flush()
        logger.info("embedding projection: %d clips x %d dims (epoch %d)", mat.shape[0], mat.shape[1], epoch)

    def close(self, engine: Engine | None = None) -> None:
        """Flushes; closes the writer when this handler created it."""
        if self.writer is not None:
            self.writer.flush()
            if self._owned:
                self.writer.close()


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _text(value.item())
    # the projector's TSV breaks on tabs and newlines
    return str(value).replace("\t", " ").replace("\n", " ")
