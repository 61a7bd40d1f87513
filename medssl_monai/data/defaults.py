"""Where bundles find their data when the user names none: the built-in synthetic datasets.

Every bundle's ``dataset_dir`` defaults to :func:`synthetic_dataset`, which writes the synthetic dataset on
first use (deterministic, a few seconds) and returns its folder. Point ``--dataset_dir`` at a real dataset
(EchoNet-Dynamic, CAMUS, ...) to use that instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_root", "default_num_workers", "synthetic_dataset"]

_MAKERS = {
    "echonet": "make_echonet",
    "camus": "make_camus",
    "ultrasound": "make_frame_folders",
    "timed_series": "make_timed_series",
}


def default_data_root() -> Path:
    """``$MEDSSL_DATA_DIR`` or ``~/.cache/medssl_monai/synthetic``."""
    env = os.environ.get("MEDSSL_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medssl_monai" / "synthetic"


def default_num_workers(size: str) -> int:
    """Processes that write a synthetic dataset of ``size``: every CPU core for ``bench``, else 1.

    ``$MEDSSL_SYNTHETIC_WORKERS`` overrides it. The small sizes take seconds; worker start-up would not pay off.
    """
    env = os.environ.get("MEDSSL_SYNTHETIC_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1) if size == "bench" else 1


def synthetic_dataset(
    kind: str = "echonet",
    root: str | Path | None = None,
    size: str | None = None,
    seed: int = 0,
    num_workers: int | None = None,
) -> str:
    """Folder of the synthetic dataset ``kind`` (one of ``echonet``, ``camus``, ``ultrasound``, ``timed_series``),
    written by :func:`medssl_monai.data.synthetic.make_all` if it is not there yet.

    ``size`` defaults to ``$MEDSSL_SYNTHETIC_SIZE`` or ``"small"`` (the tests set ``tiny``); ``num_workers`` to
    :func:`default_num_workers` (the files do not depend on it).
    """
    size = size or os.environ.get("MEDSSL_SYNTHETIC_SIZE", "small")
    if kind not in _MAKERS:
        raise ValueError(f"unknown synthetic dataset {kind!r}; expected one of {sorted(_MAKERS)}")
    from medssl_monai.data.synthetic import make_all

    out = make_all(
        Path(root) if root is not None else default_data_root() / f"{size}-seed{seed}",
        seed=seed,
        size=size,
        num_workers=default_num_workers(size) if num_workers is None else num_workers,
    )
    return str(out[kind])
