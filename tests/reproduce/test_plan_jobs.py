"""``Plan.run(jobs=N)``: stages side by side, with stub stages (tiny Python processes that sleep, write their start
and end times and ``out.txt``, or fail) in place of bundle runs; the run records come from a fake bundle's config."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from medssl_monai.reproduce.plan import STAGE_FILE, Plan, Stage, StageFailed

#: argv: folder, seconds to sleep, exit status; prints an ignite-like epoch line, writes times.json (and out.txt)
_STUB = """
import json, sys, time, pathlib
folder, sleep, rc = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
start = time.time()
time.sleep(sleep)
print("Epoch[1] Complete. Time taken: 00:00:00.100", flush=True)
(folder / "times.json").write_text(json.dumps({"start": start, "end": time.time()}))
if rc:
    sys.exit(rc)
(folder / "out.txt").write_text("x")
"""


@dataclass
class StubStage(Stage):
    """A stage whose command is the stub above instead of ``python -m monai.bundle run``."""

    sleep: float = 0.2
    rc: int = 0

    def command(self, out: Path, nproc: int = 1, fresh: bool = False, python: str | None = None) -> list[str]:
        return [sys.executable, "-c", _STUB, str(self.folder(out)), str(self.sleep), str(self.rc)]


@pytest.fixture()
def fake_bundle(tmp_path: Path) -> Path:
    root = tmp_path / "fake_bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.yaml").write_text("bundle_root: .\nvalue: 1\nepochs: 2\n")
    return root


def _stub(bundle: Path, name: str, sleep: float, depends_on: Sequence[str] = (), rc: int = 0) -> StubStage:
    return StubStage(
        name,
        str(bundle),
        ["train.yaml"],
        {"value": name},
        depends_on=depends_on,
        outputs=["out.txt"],
        trains=False,
        sleep=sleep,
        rc=rc,
    )


def _times(out: Path) -> dict[str, dict[str, float]]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/times.json")}


def _whole_lines(text: str) -> list[str]:
    """The progress lines, each checked to be whole (a stage line or an indented bundle line)."""
    lines = text.splitlines()
    for line in lines:
        assert re.fullmatch(
            r"\[\d/\d\] \w+: (start|done|skipped) .*|    \w+: epoch 1/2 in 0\.1 s, stage ETA \w+", line
        ), line
    return lines


def test_two_jobs_overlap_and_wait_for_dependencies(fake_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    stages = [_stub(fake_bundle, "a", 1.5), _stub(fake_bundle, "b", 0.1, ["a"]), _stub(fake_bundle, "c", 0.8)]
    text = io.StringIO()
    Plan(stages, out, stream=text).run(jobs=2)
    t = _times(out)
    assert t["c"]["start"] < t["a"]["end"]  # c did not wait for a: the two ran side by side
    assert t["b"]["start"] >= t["a"]["end"]  # b reads a's outputs: it started only after a had finished
    lines = _whole_lines(text.getvalue())
    starts = [line.split(":")[0] for line in lines if ": start (" in line]
    assert starts == ["[1/3] a", "[3/3] c", "[2/3] b"]  # c took the free slot while b waited for a
    assert sum(": done in " in line for line in lines) == 3 and "plan ETA" in lines[0]
    assert all(json.loads((out / s / STAGE_FILE).read_text())["status"] == "done" for s in "abc")

    again = io.StringIO()  # the same plan again: every stage is skipped, none runs
    Plan(stages, out, stream=again).run(jobs=2)
    assert _times(out) == t
    assert again.getvalue().splitlines() == [
        f"[{k}/3] {s}: skipped (done, settings unchanged)" for k, s in enumerate("abc", 1)
    ]


def test_failure_lets_running_stages_finish_and_starts_no_other(fake_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    stages = [
        _stub(fake_bundle, "a", 0.1, rc=3),
        _stub(fake_bundle, "b", 1.0),
        _stub(fake_bundle, "c", 0.1),
        _stub(fake_bundle, "d", 0.1, ["a"]),
    ]
    text = io.StringIO()
    with pytest.raises(StageFailed, match=r"stage 'a' failed \(exit status 3\)") as err:
        Plan(stages, out, stream=text).run(jobs=2)
    assert err.value.stage == "a" and err.value.log == out / "a" / "stage.log" and err.value.log.is_file()
    assert json.loads((out / "a" / STAGE_FILE).read_text())["status"] == "failed"
    assert json.loads((out / "b" / STAGE_FILE).read_text())["status"] == "done"  # the running one finished
    assert not (out / "c").exists() and not (out / "d").exists()  # nothing started after the failure
    assert "[2/4] b: done in" in text.getvalue() and "[3/4] c" not in text.getvalue()


def test_one_job_runs_in_plan_order(fake_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    stages = [_stub(fake_bundle, "a", 0.1), _stub(fake_bundle, "b", 0.1, ["a"]), _stub(fake_bundle, "c", 0.1)]
    text = io.StringIO()
    Plan(stages, out, stream=text).run()  # jobs=1: one stage after another, as a sequence
    t = _times(out)
    assert t["a"]["end"] <= t["b"]["start"] and t["b"]["end"] <= t["c"]["start"]
    lines = [line for line in _whole_lines(text.getvalue()) if line.startswith("[")]
    assert [line.split(" (")[0].split(" in ")[0].split(";")[0] for line in lines] == [
        "[1/3] a: start",
        "[1/3] a: done",
        "[2/3] b: start",
        "[2/3] b: done",
        "[3/3] c: start",
        "[3/3] c: done",
    ]
    # the plan ETA is the sum of the stages still to run (FLOP estimates: 10 s overhead each)
    assert "plan ETA 30s, elapsed" in lines[0] and "plan ETA 20s" in lines[1]
    with pytest.raises(Exception, match="jobs must be at least 1"):
        Plan(stages, out).run(jobs=0)
