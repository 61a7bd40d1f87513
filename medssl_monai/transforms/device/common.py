"""What the device augmentations share: per-clip parameter records, sync-free host-to-device copies of small
tensors and constants, and the trainer-owned random stream.

Nothing in this package reads a device value on the host: the draws are made on the host with a CPU
``torch.Generator``, copied once per batch (pinned, ``non_blocking``), and constants are copied once per device.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch

__all__ = ["SeededStream", "device_constant"]


class _PerClipParams:
    """A dataclass of per-clip parameter tensors, the clip on the first axis of every field."""

    def __len__(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])

    def select(self, index: Sequence[int] | torch.Tensor):
        """The parameters of the clips ``index`` (tests compare one clip at a time)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return type(self)(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a host-device sync (pinned, asynchronous copy on CUDA)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _get(params: _PerClipParams | Mapping[str, torch.Tensor], key: str) -> Any:
    return params[key] if isinstance(params, Mapping) else getattr(params, key)


def _stream_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)]).generate_state(1)[0])


class SeededStream:
    """The trainer-owned random stream of a device augmentation: one CPU generator, reseeded for every batch.

    Batch ``step`` draws from a generator seeded with ``(seed, step, rank)``, so the state is the step counter:
    :meth:`state_dict` goes into ``resume.pt``, and a resumed run (every DDP rank with its own stream) continues
    with the uninterrupted run's draws, whatever the DataLoader workers did.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.step = 0
        self.generator = torch.Generator()

    def next_generator(self) -> torch.Generator:
        """The generator seeded for the next batch (advances the step counter)."""
        from medssl_monai.distributed import rank

        self.generator.manual_seed(_stream_seed(self.seed, self.step, rank()))
        self.step += 1
        return self.generator

    def state_dict(self) -> dict[str, int]:
        """``seed`` and ``step``: the generator's stream is a function of them (and the rank)."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream at the saved step (the configured seed is kept)."""
        self.step = int(state["step"])


@functools.lru_cache(maxsize=64)
def device_constant(
    values: tuple[float, ...], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``values`` (float64 on the host, then cast to ``dtype``) as a ``shape`` tensor on ``device``, built once.

    A copy from pageable host memory in every step is a host-device synchronisation; the cached tensor is copied
    once per ``(values, shape, dtype, device)``. Callers must not modify it in place.
    """
    with torch.inference_mode(False):  # usable by autograd even when first built under inference mode
        t = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(shape)
        return _to_device(t, device)
