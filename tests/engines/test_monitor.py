"""Online representation monitoring: collapse, effective rank and kNN scores, on hand-made embeddings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from medssl_monai.engines.monitor import RepresentationMonitor, collapse_std, knn_cv_score, rankme


def test_collapse_std_and_rankme_on_hand_cases():
    same = np.tile([[1.0, 2.0, 3.0]], (10, 1))
    assert collapse_std(same) == pytest.approx(0.0, abs=1e-12)
    assert rankme(same) == pytest.approx(1.0, abs=1e-3)
    eye = np.eye(8)
    assert rankme(eye) == pytest.approx(8.0, rel=1e-4)  # eight equal singular values
    # +-e_i for i < 4 in 4 dims: each normalised coordinate is +-1 on 2 of 8 rows, else 0: std sqrt(1/4) = 0.5
    pm = np.concatenate([np.eye(4), -np.eye(4)])
    assert collapse_std(pm) == pytest.approx(0.5 * 2.0)  # times sqrt(D) = 2
    spread = np.random.default_rng(0).normal(size=(4000, 64))
    assert collapse_std(spread) == pytest.approx(1.0, abs=0.02)


def test_knn_score_sees_a_planted_label_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 40)
    noise = rng.normal(size=(80, 16))
    planted = noise.copy()
    planted[:, 0] += 6 * y  # the label along one direction
    metric, auroc = knn_cv_score(planted, y)
    assert metric == "auroc" and auroc > 0.95
    assert abs(knn_cv_score(noise, y)[1] - 0.5) < 0.2
    ef = rng.uniform(20, 70, 80)
    angle = np.deg2rad(ef)  # cosine neighbours see directions: EF as an angle, plus a little noise
    regressed = np.concatenate([10 * np.stack([np.cos(angle), np.sin(angle)], 1), 0.1 * noise], 1)
    metric, r2 = knn_cv_score(regressed, ef)
    assert metric == "r2" and r2 > 0.8
    assert np.isnan(knn_cv_score(noise, np.zeros(80))[1])  # one class: no AUROC
    three = np.arange(90) % 3  # three classes, each along its own direction: one-vs-rest macro AUROC
    separated = rng.normal(size=(90, 16))
    separated[np.arange(90), three] += 8
    assert knn_cv_score(separated, three, categorical=True)[1] > 0.95


class _Planted(torch.nn.Module):
    """Embeds a clip as ``[mean intensity, noise...]``: informative about a label coded in the intensity."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.constant = constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.constant:
            return torch.ones(x.shape[0], 8) + self.w
        m = x.float().mean((1, 2, 3, 4))[:, None]
        g = torch.Generator().manual_seed(int(x.float().sum()) % 1000)  # fixed per clip, not the global RNG
        return torch.cat([m - 127.5, 10 * torch.randn(x.shape[0], 7, generator=g)], 1)


def _items(n: int = 40) -> list[dict]:
    items = []
    for i in range(n):
        abnormal = i % 2
        level = 180 if abnormal else 60
        items.append(
            {
                "image": np.full((1, 2, 4, 4), level + i % 5, np.uint8),
                "Abnormal": bool(abnormal),
                "ef": 30.0 + (1 - abnormal) * 30 + i % 5,
                "view": "A4C" if abnormal else "PLAX",  # a class name: a categorical label
            }
        )
    return items


def _monitor(encoder: torch.nn.Module, tmp_path, **kw) -> RepresentationMonitor:
    return RepresentationMonitor(
        encoder=encoder,
        datalist=_items(),
        transform=lambda item: {"image": torch.as_tensor(item["image"])},
        labels={"Abnormal": "Abnormal", "ef": "ef", "reduced_ef": lambda item: item["ef"] < 50, "view": "view"},
        log_dir=str(tmp_path),
        **kw,
    )


def test_a_constant_encoder_is_flagged_as_collapsed(tmp_path, caplog):
    monitor = _monitor(_Planted(constant=True), tmp_path, monitor_every=1)
    engine = Engine(lambda e, b: None)
    monitor.attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run([0], max_epochs=1)
    assert monitor.collapsed and monitor.history[-1]["rankme"] == pytest.approx(1.0, abs=1e-3)
    assert "COLLAPSED" in caplog.text


def test_an_informative_encoder_scores_high_every_monitor_step(tmp_path):
    monitor = _monitor(_Planted(), tmp_path, monitor_every=5)
    engine = Engine(lambda e, b: None)
    monitor.attach(engine)
    state = torch.get_rng_state()
    engine.run(range(10), max_epochs=2)
    assert torch.equal(state, torch.get_rng_state())  # no global random draw: the run is unchanged
    assert [r["iteration"] for r in monitor.history] == [5, 10, 15, 20]
    last = monitor.history[-1]
    assert not monitor.collapsed
    assert last["knn_auroc_Abnormal"] > 0.95 and last["knn_r2_ef"] > 0.8 and last["knn_auroc_reduced_ef"] > 0.95
    assert last["knn_auroc_view"] > 0.95
    assert all(0.0 < r["seconds"] < 60.0 for r in monitor.history)  # its own cost, for the time budget
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_the_monitor_history_survives_a_resume(tmp_path):
    monitor = _monitor(_Planted(), tmp_path, monitor_every=5)
    engine = Engine(lambda e, b: None)
    monitor.attach(engine)
    engine.run(range(10), max_epochs=1)
    torch.save(monitor.state_dict(), tmp_path / "m.pt")
    resumed = _monitor(_Planted(), tmp_path, monitor_every=5)
    resumed.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert resumed.history == monitor.history
    assert resumed.history[-1]["knn_auroc_Abnormal"] > 0.95


def test_the_monitor_writes_its_history_as_json(tmp_path):
    """``<log_dir>/monitor.json`` holds every row it logged, rewritten at each step; a resumed run starts from the
    restored rows (the benchmark reads the file from another process)."""
    from medssl_monai.engines.monitor import HISTORY_FILE, read_history

    path = tmp_path / HISTORY_FILE
    path.write_text('{"history": [{"iteration": 99.0}]}')  # a file of an earlier run in the same folder
    monitor = _monitor(_Planted(), tmp_path, monitor_every=5)
    engine = Engine(lambda e, b: None)
    seen = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(len(read_history(path))))
    monitor.attach(engine)
    engine.run(range(10), max_epochs=1)
    assert seen[0] == 0  # replaced when the run started: never the earlier run's rows
    assert seen[5:] == [1] * 5  # rewritten at the step at iteration 5
    rows = read_history(path)
    assert rows == monitor.history and [r["iteration"] for r in rows] == [5, 10]
    assert all(r["seconds"] > 0 and "rankme" in r for r in rows)

    resumed = _monitor(_Planted(), tmp_path, monitor_every=5)
    resumed.load_state_dict(monitor.state_dict())
    engine = Engine(lambda e, b: None)
    resumed.attach(engine)
    engine.run(range(10), max_epochs=1)
    assert [r["iteration"] for r in read_history(path)] == [5, 10, 5, 10]  # restored rows, then this run's
    assert read_history(tmp_path / "missing.json") == []
    off = _monitor(_Planted(), tmp_path / "off", monitor_every=5, history_file=None)
    engine = Engine(lambda e, b: None)
    off.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert len(off.history) == 1 and not (tmp_path / "off" / HISTORY_FILE).exists()
