"""Where bundles find their data when the user names none: the built-in synthetic datasets.

Every bundle's ``dataset_dir`` defaults to :func:`synthetic_dataset`, which writes the synthetic dataset on
first use (deterministic, a few seconds) and returns its folder. Point ``--dataset_dir`` at a real dataset
(EchoNet-Dynamic, CAMUS, ...) to use that instead. A run on the built-in data logs one WARNING naming it and its
folder (:func:`warn_synthetic`, once per folder and process), so a forgotten ``--dataset_dir`` is not silent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["default_data_root", "default_num_workers", "synthetic_dataset", "warn_synthetic"]

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()  # folders already announced in this process

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
    warn: bool = True,
) -> str:
    """Folder of the synthetic dataset ``kind`` (one of ``echonet``, ``camus``, ``ultrasound``, ``timed_series``),
    written by :func:`medssl_monai.data.synthetic.make_all` if it is not there yet.

    ``size`` defaults to ``$MEDSSL_SYNTHETIC_SIZE`` or ``"small"`` (the tests set ``tiny``); ``num_workers`` to
    :func:`default_num_workers` (the files do not depend on it). ``warn``: log :func:`warn_synthetic` (a bundle's
    default ``dataset_dir``; off for a caller that builds on it and warns itself).
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
    if warn:
        warn_synthetic(kind, out[kind])
    return str(out[kind])


def warn_synthetic(kind: str, folder: str | Path) -> None:
    """Log one WARNING (per ``folder`` and process) that a run uses the built-in synthetic ``kind`` data there."""
    key = str(Path(folder).resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    logger.warning(
        f"using the built-in synthetic {kind} dataset in {folder} (no --dataset_dir given): a demonstration, not real "
        "data; pass --dataset_dir to train, evaluate or infer on a real dataset"
    )
