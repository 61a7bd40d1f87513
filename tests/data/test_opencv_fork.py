"""OpenCV in forked DataLoader workers: no deadlock after the training process itself ran OpenCV.

OpenCV's thread pool is not fork-safe: once a parallel call in the parent has started the pool's threads,
``cv2.setNumThreads`` in a forked child waits forever. The training process runs OpenCV itself (the device
CLAHE's lookup tables, a user's own code), then forks validation workers that decode videos.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest
from bounded import run_bounded

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch

    from medssl_monai.data.video import read_video

    path = sys.argv[1]  # written by the test: this process runs no OpenCV before the call under test
    if sys.argv[2] == "device_clahe":  # what the trainer's first augmented batch runs in the parent
        from medssl_monai.transforms.device.clahe import _grey_lab_tables

        _grey_lab_tables()
    else:  # a user's (or a test's) own OpenCV call on a large image, before the library is asked for cv2
        import cv2

        cv2.GaussianBlur(np.random.rand(2000, 2000).astype(np.float32), (0, 0), 5)

    class Videos(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(read_video(path)).float().mean()

    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(Videos(), batch_size=2, num_workers=2, multiprocessing_context=ctx)
    print("batches", len(list(loader)), flush=True)
    """
)


@pytest.mark.parametrize("parent_call", ["device_clahe", "user_opencv"])
def test_forked_workers_decode_after_the_parent_ran_opencv(parent_call: str, tmp_path: Path):
    import numpy as np

    from medssl_monai.data.video import write_video

    write_video(tmp_path / "v.avi", np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8))
    out = run_bounded([sys.executable, "-c", SCRIPT, str(tmp_path / "v.avi"), parent_call], timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batches 2" in out.stdout


def test_only_medssl_monai_opencv_imports_cv2():
    """Every module takes OpenCV from ``import_cv2`` (configured once per process tree), never ``import cv2``."""
    offenders = []
    for path in (ROOT / "medssl_monai").rglob("*.py"):
        if path.name == "opencv.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "cv2" or n.startswith("cv2.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"import cv2 outside medssl_monai/opencv.py: {offenders}"
