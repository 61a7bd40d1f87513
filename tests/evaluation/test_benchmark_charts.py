"""The benchmark's figures: the forest plot of paired differences and the monitor curves."""

from __future__ import annotations

import pytest

from medssl_monai.evaluation.benchmark import claims_chart, monitor_chart


def _claim(metric: str, up: bool, diff: float, ci: list[float]) -> dict:
    return {
        "method": "m",
        "metric": metric,
        "higher_is_better": up,
        "diff": diff,
        "diff_ci95": ci,
        "ssl_row": "m_ssl",
        "baseline_row": "m_random",
    }


def test_claims_chart_writes_a_png_and_refuses_nothing_to_plot(tmp_path):
    out = claims_chart(
        [_claim("ef_r2", True, 0.2, [0.1, 0.3]), _claim("ef_mae", False, -1.0, [-2, 0.5])], tmp_path / "c.png"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no claims"):
        claims_chart([], tmp_path / "d.png")


def test_monitor_chart_draws_every_run_with_history(tmp_path):
    hist = [{"iteration": float(i), "knn_r2_ef": 0.1 * i, "std": 0.5, "rankme": 3.0} for i in (10, 20)]
    out = monitor_chart({"a_ssl": hist, "b_ssl": []}, tmp_path / "m.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no monitor history"):
        monitor_chart({"b_ssl": []}, tmp_path / "n.png")
