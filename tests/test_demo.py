"""The README's main job end to end at the tiny size: every step runs and every picture it names exists."""

from __future__ import annotations

import gc
import re
from pathlib import Path

from medssl_monai.demo import DEMO_SEGMENTATION, demo_schedule, run_demo


def test_demo_schedule_steps_down_for_the_last_quarter() -> None:
    assert demo_schedule(28, 1e-3) == {"epochs": 28, "learning_rate": 1e-3, "lr_milestones": [21, 28]}
    assert demo_schedule(1, 1e-3)["lr_milestones"] == [1, 1]
    assert DEMO_SEGMENTATION["learning_rate"] > 3e-4  # faster than the recipe, on purpose (a few CPU minutes)


def test_demo_runs_end_to_end_and_names_existing_pictures(tmp_path, capsys) -> None:
    summaries = run_demo(
        root=str(tmp_path / "data"),
        size="tiny",
        out_dir=str(tmp_path / "demo"),
        ssl_epochs=1,
        seg_epochs=1,
        compare_random_init=False,
    )
    assert list(summaries) == ["SSL pretrained"]
    s = summaries["SSL pretrained"]
    assert {"overall", "ED", "ES"} <= set(s["dice"]) and "ef" in s
    text = capsys.readouterr().out
    assert "1 epochs, AdamW 0.001" in text and "EF from masks MAE" in text
    eval_dir = tmp_path / "demo" / "seg_pretrained" / "eval"
    for name in ("overlays_worst.png", "overlays_best.png", "dice_histogram.png", "per_video_ef.csv"):
        assert (eval_dir / name).is_file(), name
    assert any((eval_dir / "area_curves").glob("*.png"))
    assert any((tmp_path / "demo" / "inference").glob("*_overlay.avi"))
    for folder in re.findall(r"^  \S[^:]*: (/\S+)/ ", text, flags=re.M):
        assert Path(folder).is_dir(), folder
    # every run's persistent loader workers were shut down by the process that started them (a later forked
    # worker collecting them fails with "can only test a child process")
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    assert not [o for o in gc.get_objects() if isinstance(o, _MultiProcessingDataLoaderIter)]
