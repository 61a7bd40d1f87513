"""All four synthetic datasets at once, in named sizes (``tiny`` for tests, ``small`` for the demo default,
``bench`` for throughput benchmarks)."""

from __future__ import annotations

from pathlib import Path

from medssl_monai.data.synthetic.camus import make_camus
from medssl_monai.data.synthetic.echonet import make_echonet
from medssl_monai.data.synthetic.timed_series import make_timed_series
from medssl_monai.data.synthetic.ultrasound import make_frame_folders

__all__ = ["SIZES", "make_all"]

# Keyword arguments of each generator per size. "tiny" keeps each test in a second or two on a 2-core CPU;
# "small" is what the bundles' demos run on; "bench" is large enough that a training epoch at the recipe batch
# sizes spans many iterations (so a timed window does not cross epoch boundaries; docs/synthetic_data.md lists
# the iterations per epoch of each bundle). Larger datasets: call the generators directly.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
        "echonet": {"num_videos": 6, "fps": 25.0, "min_frames": 40, "max_frames": 48},
        "camus": {"num_patients": 3},
        "ultrasound": {"num_videos": 6, "num_frames": (12, 16), "image_size": 64},
        "timed_series": {"num_subjects": 12, "min_visits": 3, "max_visits": 4},
    },
    "small": {
        "echonet": {},
        "camus": {},
        "ultrasound": {},
        "timed_series": {},
    },
    "bench": {
        "echonet": {"num_videos": 1024},  # 717 TRAIN videos; also the 1,024 TVRL array clips
        "camus": {"num_patients": 64},
        "ultrasound": {"num_videos": 1280},  # UCL pretraining: about 1,000 training videos, 32 per step
        "timed_series": {"num_subjects": 1024},
    },
}

_MAKERS = {
    "echonet": make_echonet,
    "camus": make_camus,
    "ultrasound": make_frame_folders,
    "timed_series": make_timed_series,
}


def make_all(root: str | Path, seed: int = 0, size: str = "small", num_workers: int = 1) -> dict[str, Path]:
    """Write ``root/{echonet,camus,ultrasound,timed_series}``; each is skipped if already complete.

    Every dataset is written to a temporary folder, its ``.synthetic.json`` marker last, then renamed into place,
    so a second call with the same ``seed`` and ``size`` rewrites nothing and an interrupted call leaves nothing
    that looks complete. ``num_workers`` processes render the items of each dataset; the files are byte-identical
    for any number of them (each item has its own random stream).

    Returns:
        dataset name -> its folder.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    root = Path(root)
    return {
        name: maker(root / name, seed=seed, num_workers=num_workers, **SIZES[size][name])
        for name, maker in _MAKERS.items()
    }
