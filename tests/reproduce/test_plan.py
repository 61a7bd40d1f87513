"""The reproduce orchestration without running bundles: stage commands, dry-run decisions from stage records,
dependency invalidation, bad input, the derived DISCOVR label and the table writer (all in-process, no subprocess)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from medssl_monai.engines.run_record import write_json_atomic
from medssl_monai.reproduce.api import apply_settings, build_plan
from medssl_monai.reproduce.discovr import derive_abnormal_labels
from medssl_monai.reproduce.plan import STAGE_FILE, Plan, PlanError, Stage, format_duration, stage_settings
from medssl_monai.reproduce.table import Cell, Row, Section, Table, seed_bootstrap_cell, write_table


@pytest.fixture()
def fake_bundle(tmp_path: Path) -> Path:
    """A bundle whose run writes ``out.txt`` (``value``) or exits 3 (``fail``)."""
    root = tmp_path / "fake_bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.yaml").write_text(
        "bundle_root: .\nvalue: 1\nfail: false\nepochs: 2\nimports: ['$import os', '$import sys']\n"
        'run:\n  - "$sys.exit(3) if @fail else None"\n'
        "  - \"$open(os.path.join(@bundle_root, 'out.txt'), 'w').write(str(@value))\"\n"
    )
    return root


def _stages(bundle: Path, a: dict | None = None, c: dict | None = None) -> list[Stage]:
    kw = {"bundle": str(bundle), "configs": ["train.yaml"], "outputs": ["out.txt"], "trains": False}
    return [
        Stage("a", overrides=a or {}, **kw),
        Stage("b", overrides={"value": 2}, depends_on=["a"], **kw),
        Stage("c", overrides=c or {}, **kw),
    ]


def _finish(plan: Plan) -> None:
    """Mark every stage done as a run would (its stage.json with the settings it ran with, its output)."""
    for s in plan.stages:
        folder = s.folder(plan.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "out.txt").write_text("x")
        settings = stage_settings(s, plan.out)
        write_json_atomic({"status": "done", "settings": settings, "seconds": 12.0}, folder / STAGE_FILE)


def _runs(plan: Plan) -> dict[str, bool]:
    return {d.stage.name: d.run for d in plan.decisions()}


def test_command_is_a_plain_bundle_run(fake_bundle: Path, tmp_path: Path):
    s = _stages(fake_bundle)[1]
    cmd = s.command(tmp_path / "out")
    assert cmd[1:4] == ["-m", "monai.bundle", "run"]
    assert json.loads(cmd[cmd.index("--config_file") + 1]) == [str(fake_bundle / "configs" / "train.yaml")]
    assert cmd[cmd.index("--bundle_root") + 1] == str(tmp_path / "out" / "b")
    assert cmd[cmd.index("--value") + 1] == "2"
    trains = Stage("t", str(fake_bundle), ["train.yaml"])
    with pytest.raises(PlanError, match="multi_gpu_train.yaml"):  # the fake bundle has no multi-GPU config
        trains.command(tmp_path, nproc=2)
    (fake_bundle / "configs" / "multi_gpu_train.yaml").write_text("{}\n")
    multi = trains.command(tmp_path, nproc=2)
    assert multi[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "multi_gpu_train.yaml" in multi[multi.index("--config_file") + 1]


def test_string_overrides_stay_strings(fake_bundle: Path, tmp_path: Path):
    cmd = Stage("s", str(fake_bundle), ["train.yaml"], {"label_key": "True", "p": "/data/x", "n": None}).command(
        tmp_path
    )
    assert cmd[cmd.index("--label_key") + 1] == "'True'"  # fire would read True as a bool
    assert cmd[cmd.index("--p") + 1] == "/data/x"
    assert cmd[cmd.index("--n") + 1] == "None"


def test_skip_rerun_and_dependents(fake_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    plan = Plan(_stages(fake_bundle), out, stream=io.StringIO())
    assert _runs(plan) == {"a": True, "b": True, "c": True}
    _finish(plan)
    assert _runs(plan) == {"a": False, "b": False, "c": False}  # a second run skips every stage
    changed = Plan(_stages(fake_bundle, a={"value": 7}), out, stream=io.StringIO())
    decisions = {d.stage.name: d for d in changed.decisions()}
    assert {k: d.run for k, d in decisions.items()} == {"a": True, "b": True, "c": False}
    assert "value: 1 -> 7" in decisions["a"].reason and decisions["a"].fresh  # its resume.pt is of another run
    assert "depends on a" in decisions["b"].reason
    text = io.StringIO()
    Plan(_stages(fake_bundle, a={"value": 7}), out, stream=text).run(dry_run=True)
    assert "[1/3] RUN  a" in text.getvalue() and "[3/3] skip c" in text.getvalue()
    assert "--resume False" in text.getvalue() and "2 of 3 stages to run" in text.getvalue()
    # more epochs: the stage runs again, resuming (its run record is the same: the bundle continues to 5 epochs)
    more = {d.stage.name: d for d in Plan(_stages(fake_bundle, c={"epochs": 5}), out).decisions()}
    assert {k: d.run for k, d in more.items()} == {"a": False, "b": False, "c": True}
    assert "epochs: 2 -> 5" in more["c"].reason and not more["c"].fresh


def test_unfinished_or_incomplete_stage_runs_again(fake_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    plan = Plan(_stages(fake_bundle), out)
    _finish(plan)
    record = json.loads((out / "c" / STAGE_FILE).read_text())
    write_json_atomic({**record, "status": "failed"}, out / "c" / STAGE_FILE)
    (out / "a" / "out.txt").unlink()
    decisions = {d.stage.name: d for d in plan.decisions()}
    assert "did not finish" in decisions["c"].reason and not decisions["c"].fresh  # continues from resume.pt
    assert "outputs missing: out.txt" in decisions["a"].reason and decisions["b"].run


def test_estimates_use_measured_stages(fake_bundle: Path, tmp_path: Path):
    from medssl_monai.reproduce.plan import Estimate

    stages = _stages(fake_bundle)
    for s in stages:
        s.estimate = Estimate(flop=4e9, samples=10, overhead_s=2.0)
    plan = Plan(stages, tmp_path / "out", gflops=1.0)
    assert plan.estimate(stages[0]) == (6.0, "estimate")
    _finish(plan)  # each took 12 s: (12 - 2) / 10 s per sample
    assert plan.estimate(stages[0]) == (12.0, "measured")
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s" and format_duration(None) == "?"


def test_bad_plans_are_named(fake_bundle: Path, tmp_path: Path):
    with pytest.raises(PlanError, match="'b' depends on 'a'"):
        Plan(_stages(fake_bundle)[1:], tmp_path)
    with pytest.raises(PlanError, match="appears twice"):
        Plan([*_stages(fake_bundle), _stages(fake_bundle)[2]], tmp_path)
    with pytest.raises(PlanError, match="stage name"):
        Stage("a b", str(fake_bundle), ["train.yaml"])
    with pytest.raises(PlanError, match="config file .*nope.yaml"):
        Stage("a", str(fake_bundle), ["nope.yaml"]).config_files()
    with pytest.raises(PlanError, match="matches no stage"):
        apply_settings(_stages(fake_bundle), {"z*": {"value": 1}})
    with pytest.raises(PlanError, match="defines no key"):
        apply_settings(_stages(fake_bundle), {"a": {"valu": 1}})
    assert apply_settings(_stages(fake_bundle), {"[ab]": {"value": 9}})[1].overrides["value"] == 9


def test_paper_plans_dry(tmp_path: Path, tiny_data: dict):
    """Every paper's plan builds on a dataset folder, names its arms, and rejects options it does not take."""
    out = io.StringIO()
    plan, ctx, _ = build_plan("unilvseg", str(tiny_data["echonet"]), "tiny", str(tmp_path / "u"), stream=out)
    names = [s.name for s in plan.stages]
    assert names[:3] == ["pretrain", "seg_random_f100", "test_random_f100"] and not ctx.synthetic
    assert not any(n.startswith("camus") for n in names)  # no --camus_dir: no out-of-distribution stage
    plan, _, _ = build_plan(
        "tvrl", None, "tiny", str(tmp_path / "t"), stream=out, seeds=[0, 1], fractions=[0.5], frameworks=["mae"]
    )
    assert [s.name for s in plan.stages][:3] == [
        "pretrain_echo_mae",
        "probe_echo_random_f50_s0",
        "test_echo_random_f50_s0",
    ]
    assert plan.stage("probe_echo_mae_f50_s1").overrides["stem"] == "patch"
    assert "no --dataset_dir" in out.getvalue()
    with pytest.raises(PlanError, match="--series_dir is not an input of ucl"):
        build_plan("ucl", str(tiny_data["ultrasound"]), "tiny", str(tmp_path / "c"), series_dir=str(tmp_path))
    with pytest.raises(PlanError, match="unknown paper"):
        build_plan("simclr")
    with pytest.raises(PlanError, match="unknown preset"):
        build_plan("ucl", preset="huge")
    with pytest.raises(PlanError, match="not a folder"):
        build_plan("ucl", dataset_dir=str(tmp_path / "missing"))


def test_discovr_label_derived_from_ef(tmp_path: Path, tiny_data: dict):
    """EchoNet-Dynamic has no abnormal label: the plan derives EF < 50% and says so; no EF column is an error."""
    import shutil

    echonet = tmp_path / "echonet"
    shutil.copytree(tiny_data["echonet"], echonet, ignore=shutil.ignore_patterns("SyntheticTruth.csv", ".synthetic*"))
    out = io.StringIO()
    plan, ctx, _ = build_plan("discovr", str(echonet), "tiny", str(tmp_path / "d"), stream=out)
    labels = Path(ctx.options["labels_csv"])
    assert labels.name == "abnormal_from_ef.csv" and "EF < 50%" in out.getvalue()
    rows = labels.read_text().splitlines()
    assert rows[0] == "FileName,Abnormal,EF"
    assert all(r.split(",")[1] == str(int(float(r.split(",")[2]) < 50)) for r in rows[1:])
    assert plan.stage("test_discovr").overrides["labels_csv"] == str(labels)
    (echonet / "FileList.csv").write_text("FileName,Split\nx,TRAIN\n")
    with pytest.raises(PlanError, match="no FileName/EF columns"):
        derive_abnormal_labels(echonet, tmp_path / "l.csv")


def test_table_files(tmp_path: Path):
    cell = seed_bootstrap_cell("mae", [1.0, 2.0, 3.0, 4.0], [[1.5, 2.0, 2.5, 4.0], [1.0, 2.5, 3.0, 5.0]], 200)
    assert cell.std is not None and cell.ci_low <= cell.estimate <= cell.ci_high
    auc = seed_bootstrap_cell("auroc", [0, 1, 0, 1, 1, 0], [[0.1, 0.9, 0.2, 0.8, 0.7, 0.4]], 100)
    assert auc.estimate == 1.0
    table = Table(
        "x",
        "A table",
        [
            Section(
                "s",
                ["Dice"],
                [
                    Row("random init", {"Dice": Cell(0.9, 0.88, 0.92, scale=100)}),
                    Row("SSL", {"Dice": Cell(0.93, 0.92, 0.94, scale=100)}, {"Dice": "93.32 (93.21-93.43)"}),
                ],
                digits=2,
            )
        ],
    )
    files = write_table(table, tmp_path)
    md = files["table.md"].read_text()
    assert "| SSL | 93.00 (92.00-94.00) | Dice: 93.32 (93.21-93.43) |" in md
    assert json.loads(files["results.json"].read_text())["sections"][0]["rows"][0]["cells"]["Dice"]["ci_low"] == 0.88
    assert files["table.png"].stat().st_size > 1000
    assert Cell(math.nan).text() == "n/a"
