"""TVRL main experiment: every pretraining framework (and a random-init encoder), each linear-probed per label
fraction and probe seed, on EF regression from echo videos (MAE) and on progression prediction from irregularly
timed image series (AUROC); mean ± std over seeds as the paper reports, with a 95% bootstrap interval of the
seed mean over the test samples.

Stages (``T`` = task ``echo`` or ``series``, ``A`` = framework or ``random``, ``F`` = label fraction in percent)::

    pretrain_T_<framework>        tvrl_echo_ssl_pretraining (--framework)
    probe_T_A_fF_s<seed>          tvrl_echo_linear_probe (frozen encoder, trained CLS + linear head)
    test_T_A_fF_s<seed>           ... + evaluate.yaml (dense sliding-window test: eval/metrics.json, predictions.csv)
"""

from __future__ import annotations

import csv
from pathlib import Path

from medssl_monai.reproduce.common import (
    Context,
    config_values,
    count_echonet,
    count_series,
    shared_encoder_overrides,
)
from medssl_monai.reproduce.plan import Estimate, PlanError, Stage
from medssl_monai.reproduce.table import Row, Section, Table, seed_bootstrap_cell

PRETRAIN = "tvrl_echo_ssl_pretraining"
PROBE = "tvrl_echo_linear_probe"
FOLDER_OPTIONS = ("series_dir",)
#: forward + backward GFLOP per clip (docs/performance.md: ViT-S + temporal transformer, 8 x 128^2, 147.1 per clip;
#: small.yaml 0.963 per batch of 8 at 4 frames; cpu.yaml 16 frames: about 4x that)
GFLOP_PER_CLIP = {"recipe": 147.1, "cpu": 0.5, "tiny": 0.12}
ENCODER_KEYS = ("num_frames", "period", "spatial_size", "patch_size", "hidden_size", "num_layers", "num_heads")
ENCODER_KEYS += ("temporal_layers",)
TASKS = {
    "echo": {"data": "echonet", "metric": "mae", "column": "EF MAE (points)", "better": "lower is better"},
    "series": {"data": "timed_series", "metric": "auroc", "column": "progression AUROC", "better": "higher is better"},
}
DESCRIPTION = (
    "each pretraining framework (CVRL, LTN, MAE, cSimCLR, cSimCLR-TE, TVRL, TVRL-TE) and a random-init encoder, "
    "linear-probed per label fraction and seed: EF regression (echo videos) and progression prediction (timed series)"
)


def encoder_overrides(framework: str) -> dict:
    """The probe's encoder keys for a framework's checkpoint (random init: a conv-stem encoder without TE)."""
    from medssl_monai.methods.tvrl import TIME_AWARE_FRAMEWORKS

    return {"use_time_embed": framework in TIME_AWARE_FRAMEWORKS, "stem": "patch" if framework == "mae" else "conv"}


def _defaults(ctx: Context) -> dict:
    from medssl_monai.methods.tvrl import FRAMEWORKS

    tiny = ctx.preset.name == "tiny"
    tasks = [t for t in ("echo", "series") if TASKS[t]["data"] in ctx.data]
    return {
        "frameworks": ("tvrl",) if tiny else FRAMEWORKS,
        "tasks": ("echo",) if tiny else tuple(tasks),
        "seeds": (0,) if tiny else (0, 1, 2, 3, 4),
        "fractions": (1.0,) if tiny else (0.01, 1.0),
    }


def _options(ctx: Context) -> dict:
    from medssl_monai.methods.tvrl import FRAMEWORKS

    opts = _defaults(ctx)
    for key in opts:
        if ctx.options.get(key) is not None:
            value = ctx.options[key]
            opts[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    bad = [f for f in opts["frameworks"] if f not in FRAMEWORKS]
    if bad:
        raise PlanError(f"tvrl: unknown framework(s) {bad}; expected some of {list(FRAMEWORKS)}")
    for task in opts["tasks"]:
        if task not in TASKS:
            raise PlanError(f"tvrl: unknown task {task!r}; expected echo or series")
        if TASKS[task]["data"] not in ctx.data:
            raise PlanError(f"tvrl: task {task!r} needs {'--series_dir' if task == 'series' else '--dataset_dir'}")
    return opts


def _pct(fraction: float) -> str:
    return f"f{100 * fraction:g}".replace(".", "p")


def _configs(ctx: Context, task: str, pretraining: bool) -> list[str]:
    if task == "echo":
        return ctx.pretrain_configs() if pretraining else ctx.downstream_configs()
    if pretraining and ctx.preset.name == "cpu":
        return ["train.yaml", "timed_series.yaml", "cpu_timed_series.yaml"]
    size = ctx.preset.pretrain_config if pretraining else ctx.preset.downstream_config
    return ["train.yaml", *([size] if size else []), "timed_series.yaml"]


def build_stages(ctx: Context) -> list[Stage]:
    """The plan's stages (see the module docstring)."""
    opts = _options(ctx)
    gflop = GFLOP_PER_CLIP[ctx.preset.name]
    stages: list[Stage] = []
    for task in opts["tasks"]:
        data = ctx.data[TASKS[task]["data"]]
        n_train = count_echonet(data, "TRAIN") if task == "echo" else count_series(data)
        common = {"dataset_dir": str(data), "cache_dir": str(ctx.out / "cache")}
        pre_configs = _configs(ctx, task, True)
        probe_configs = _configs(ctx, task, False)
        shared = shared_encoder_overrides(PRETRAIN, pre_configs, PROBE, probe_configs, ENCODER_KEYS)
        for fw in opts["frameworks"]:
            ov = ctx.overrides(PRETRAIN, pre_configs, **common, framework=fw)
            epochs = int(ov.get("epochs") or config_values(PRETRAIN, pre_configs, ["epochs"])["epochs"])
            stages.append(
                Stage(
                    f"pretrain_{task}_{fw}",
                    PRETRAIN,
                    pre_configs,
                    ov,
                    outputs=("models/model.pt",),
                    estimate=Estimate(flop=epochs * n_train * gflop * 1e9, samples=epochs * n_train),
                    label=f"{fw} pretraining ({task})",
                )
            )
        for arm in ("random", *opts["frameworks"]):
            model = None if arm == "random" else ctx.out / f"pretrain_{task}_{arm}" / "models" / "model.pt"
            encoder = encoder_overrides(arm)
            for fraction in opts["fractions"]:
                for seed in opts["seeds"]:
                    suffix = f"{task}_{arm}_{_pct(fraction)}_s{seed}"
                    ov = ctx.overrides(
                        PROBE,
                        probe_configs,
                        **common,
                        **shared,
                        **encoder,
                        seed=int(seed),
                        label_fraction=float(fraction),
                        pretrained_ckpt=str(model) if model else None,
                    )
                    epochs = int(ov.get("epochs") or config_values(PROBE, probe_configs, ["epochs"])["epochs"])
                    samples = epochs * n_train * fraction
                    stages.append(
                        Stage(
                            f"probe_{suffix}",
                            PROBE,
                            probe_configs,
                            ov,
                            depends_on=(f"pretrain_{task}_{arm}",) if model else (),
                            outputs=("models/model.pt",),
                            estimate=Estimate(flop=samples * gflop / 3 * 1e9, samples=samples),
                            label=f"linear probe of {arm} ({task}, {100 * fraction:g}% labels, seed {seed})",
                        )
                    )
                    test_configs = [*probe_configs, "evaluate.yaml"]
                    test = ctx.overrides(
                        PROBE,
                        test_configs,
                        **{k: v for k, v in ov.items() if k != "pretrained_ckpt"},
                        ckpt_dir=str(ctx.out / f"probe_{suffix}" / "models"),
                    )
                    stages.append(
                        Stage(
                            f"test_{suffix}",
                            PROBE,
                            test_configs,
                            test,
                            depends_on=(f"probe_{suffix}",),
                            outputs=("eval/metrics.json", "eval/predictions.csv"),
                            trains=False,
                            estimate=Estimate(flop=n_train * gflop * 1e9 / 3, samples=n_train / 3),
                            label=f"test of the {arm} probe ({task}, {100 * fraction:g}% labels, seed {seed})",
                        )
                    )
    return stages


def _predictions(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        return {
            r["id"]: (float(r["label"]), float(r["prediction"])) for r in csv.DictReader(f) if r.get("status") == "ok"
        }


def build_table(ctx: Context, stages: list[Stage]) -> Table:
    """Per task and label fraction: one row per encoder, the test metric as mean ± std over seeds with its CI."""
    tests = [s for s in stages if s.name.startswith("test_")]
    sections = []
    for task in dict.fromkeys(s.name.split("_")[1] for s in tests):
        spec = TASKS[task]
        fractions = sorted({float(s.overrides["label_fraction"]) for s in tests if s.name.split("_")[1] == task})
        for fraction in fractions:
            rows = []
            arms = dict.fromkeys(
                s.name.split("_")[2]
                for s in tests
                if s.name.split("_")[1] == task and float(s.overrides["label_fraction"]) == fraction
            )
            for arm in arms:
                runs = [
                    s
                    for s in tests
                    if s.name.split("_")[1] == task
                    and s.name.split("_")[2] == arm
                    and float(s.overrides["label_fraction"]) == fraction
                ]
                per_seed = [_predictions(ctx.out / s.name / "eval" / "predictions.csv") for s in runs]
                ids = sorted(set.intersection(*(set(p) for p in per_seed)))
                truth = [per_seed[0][i][0] for i in ids]
                preds = [[p[i][1] for i in ids] for p in per_seed]
                cell = seed_bootstrap_cell(spec["metric"], truth, preds, ctx.preset.n_resamples)
                name = "random init" if arm == "random" else arm
                rows.append(Row(name, {spec["column"]: cell}, note=f"{len(runs)} seed(s)"))
            sections.append(
                Section(
                    f"{'EF regression, echo videos' if task == 'echo' else 'progression, timed series'}, "
                    f"{100 * fraction:g}% of TRAIN labels",
                    [spec["column"]],
                    rows,
                    digits=3,
                    better=spec["better"],
                )
            )
    notes = [
        "Cells: mean ± std over probe seeds (the paper's format) and, in brackets, a 95% percentile bootstrap "
        f"interval of the seed mean over test samples ({ctx.preset.n_resamples} resamples, the same samples drawn "
        "for every seed).",
        "Published: the TVRL paper's tables (UK Biobank cardiac MRI, longitudinal OCT) are not in the reference "
        "material here, and its datasets are not EchoNet; no published number is shown.",
    ]
    return Table("tvrl", "TVRL: linear probing of pretrained spatio-temporal encoders", sections, notes)
