"""``python -m medssl_monai reproduce PAPER --preset tiny --jobs 2`` end to end on the synthetic data, one process per
call (bounded): every stage runs (two at a time), the table is written with 95% intervals, a second run skips every
stage; for TVRL a changed setting re-runs only the stages that depend on it, and a failing stage is named with its
log and resumed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from bounded import run_bounded

pytestmark = pytest.mark.slow
_FIRST: dict[str, Path] = {}


def _reproduce(paper: str, out: Path, *args: str) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "medssl_monai", "reproduce", paper, "--preset", "tiny", "--out", str(out), *args]
    r = run_bounded(cmd, timeout=400)
    return r.returncode, r.stdout, r.stderr


def _first_run(paper: str, tmp_path_factory) -> Path:
    """The paper's tiny plan, run once per test session (its checks live in test_end_to_end)."""
    if paper not in _FIRST:
        out = tmp_path_factory.mktemp(f"reproduce_{paper}")
        rc, stdout, stderr = _reproduce(paper, out, "--jobs", "2")  # the random and SSL arms side by side
        assert rc == 0, f"{stdout[-4000:]}\n{stderr[-4000:]}"
        (out / "first_run.log").write_text(stdout)
        _FIRST[paper] = out
    return _FIRST[paper]


@pytest.mark.parametrize("paper", ["unilvseg", "tvrl", "discovr", "ucl"])
def test_end_to_end(paper: str, tmp_path_factory):
    out = _first_run(paper, tmp_path_factory)
    stdout = (out / "first_run.log").read_text()
    assert "no --dataset_dir: running on the built-in synthetic data" in stdout
    starts = re.findall(r"^\[(\d+)/(\d+)\] (\S+): start .*stage ETA \S+ .*plan ETA", stdout, re.M)
    ends = re.findall(r"^\[\d+/\d+\] (\S+): done in \S+; elapsed \S+, plan ETA", stdout, re.M)
    # two stages at a time: every started stage ends, in whatever order they finish
    assert starts and sorted(s[2] for s in starts) == sorted(ends) and int(starts[-1][0]) == int(starts[-1][1])
    assert re.search(r"^    \S+: epoch 1/1 in ", stdout, re.M)  # the bundles' own per-epoch lines
    for name in ends:
        record = json.loads((out / name / "stage.json").read_text())
        assert record["status"] == "done" and record["command"][1:4] == ["-m", "monai.bundle", "run"]
        assert (out / name / "stage.log").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["paper"] == paper and (out / "table.md").is_file() and (out / "table.png").stat().st_size > 1000
    rows = [r for sec in results["sections"] for r in sec["rows"]]
    assert any(r["name"] == "random init" for r in rows) and len(rows) >= 2  # random init beside SSL
    for row in rows:
        assert row["cells"] and all({"estimate", "ci_low", "ci_high"} <= set(c) for c in row["cells"].values())
    if paper == "unilvseg":
        assert "93.32 (93.21-93.43)" in (out / "table.md").read_text()
        assert any(sec["title"].startswith("CAMUS") for sec in results["sections"])

    rc, again, stderr = _reproduce(paper, out)
    assert rc == 0, stderr[-3000:]
    skipped = re.findall(r"^\[\d+/\d+\] (\S+): skipped \(done, settings unchanged\)", again, re.M)
    assert sorted(skipped) == sorted(ends) and ": start" not in again


def test_changed_setting_and_failing_stage(tmp_path_factory):
    out = _first_run("tvrl", tmp_path_factory)
    # a changed pretraining setting re-runs the pretraining and the stages after it that depend on it (the
    # random-init arm is skipped); a failing stage (a probe given a missing checkpoint) stops the command there,
    # named with its log
    lr = '"pretrain_echo_tvrl": {"learning_rate": 0.002}'
    rc, stdout, stderr = _reproduce(
        "tvrl", out, "--set", "{" + lr + ', "probe_echo_tvrl*": {"pretrained_ckpt": "/nonexistent/model.pt"}}'
    )
    assert rc == 1
    assert re.findall(r"^\[\d+/\d+\] (\S+): start", stdout, re.M) == ["pretrain_echo_tvrl", "probe_echo_tvrl_f100_s0"]
    assert "learning_rate: 0.0005 -> 0.002" in stdout
    assert re.findall(r"^\[\d+/\d+\] (\S+): skipped", stdout, re.M) == [
        "probe_echo_random_f100_s0",
        "test_echo_random_f100_s0",
    ]
    log = out / "probe_echo_tvrl_f100_s0" / "stage.log"
    assert "stage 'probe_echo_tvrl_f100_s0' failed" in stderr and str(log) in stderr and log.is_file()
    # fixed: the next run continues from the failed stage (the pretraining is done with these settings)
    rc, stdout, stderr = _reproduce("tvrl", out, "--set", "{" + lr + "}")
    assert rc == 0, stderr[-3000:]
    started = re.findall(r"^\[\d+/\d+\] (\S+): start", stdout, re.M)
    assert started == ["probe_echo_tvrl_f100_s0", "test_echo_tvrl_f100_s0"]
