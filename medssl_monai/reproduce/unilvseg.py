"""UniLVSeg (SimLVSeg) main experiment: temporal-masking pretraining, weakly supervised 3D segmentation from random
init and from the pretraining at each label fraction, pooled Dice (overall, ED, ES) on the EchoNet-Dynamic TEST
split with 95% bootstrap intervals, and the out-of-distribution test on CAMUS.

Stages (``F`` = label fraction in percent)::

    pretrain                     unilvseg_echo_ssl_pretraining          (temporal masking, MSE)
    seg_random_fF, seg_ssl_fF    unilvseg_echo_lv_segmentation          (ED/ES tracings only)
    test_random_fF, test_ssl_fF  ... + evaluate.yaml                    (pooled Dice, TEST)
    camus_random_fF, ...         ... + evaluate_camus.yaml              (pooled Dice, CAMUS; with --camus_dir
                                                                         or the synthetic data)
"""

from __future__ import annotations

import json
from pathlib import Path

from medssl_monai.reproduce.common import Context, count_echonet, shared_encoder_overrides
from medssl_monai.reproduce.plan import Estimate, Stage
from medssl_monai.reproduce.table import Cell, Row, Section, Table

PRETRAIN = "unilvseg_echo_ssl_pretraining"
SEGMENT = "unilvseg_echo_lv_segmentation"
#: forward + backward GFLOP per 3-channel clip (docs/performance.md: the 3D UNet at 32 x 112 x 112 = 213.8, the
#: small.yaml UNet at 16 x 64 x 64 = 26.9 per batch of 4; cpu.yaml: 32 frames at 48 px, about the same per clip)
GFLOP_PER_CLIP = {"recipe": 213.8, "cpu": 6.7, "tiny": 6.7}
#: SimLVSeg's headline (3D UNet + SSL, 100% labels, EchoNet-Dynamic TEST); its "95% CI" is the 5th-95th percentile
PUBLISHED = {"overall": "93.32 (93.21-93.43)"}
DEFAULT_FRACTIONS = {"tiny": (1.0,), "cpu": (1.0, 0.1), "recipe": (1.0, 0.1)}

DESCRIPTION = (
    "temporal-masking pretraining; weakly supervised 3D UNet segmentation from random init and from the "
    "pretraining at each label fraction; pooled Dice (overall, ED, ES) on the EchoNet TEST split and on CAMUS"
)


def _pct(fraction: float) -> str:
    return f"f{round(100 * fraction):d}"


def build_stages(ctx: Context) -> list[Stage]:
    """The plan's stages (see the module docstring)."""
    echonet = ctx.data["echonet"]
    camus = ctx.data.get("camus")
    fractions = tuple(ctx.options.get("fractions") or DEFAULT_FRACTIONS[ctx.preset.name])
    gflop = GFLOP_PER_CLIP[ctx.preset.name]
    n_train, n_val, n_test = (count_echonet(echonet, s) for s in ("TRAIN", "VAL", "TEST"))
    common = {"dataset_dir": str(echonet), "cache_dir": str(ctx.out / "cache")}

    pre_configs = ctx.pretrain_configs()
    pre = ctx.overrides(PRETRAIN, pre_configs, **common)
    pre_epochs = _epochs(PRETRAIN, pre_configs, pre)
    stages = [
        Stage(
            "pretrain",
            PRETRAIN,
            pre_configs,
            pre,
            outputs=("models/model.pt",),
            estimate=Estimate(
                flop=pre_epochs * (n_train + n_val / 3) * gflop * 1e9, samples=pre_epochs * (n_train + n_val / 3)
            ),
            label="temporal-masking pretraining",
        )
    ]
    model = ctx.out / "pretrain" / "models" / "model.pt"
    seg_configs = ctx.downstream_configs()
    shared = shared_encoder_overrides(PRETRAIN, pre_configs, SEGMENT, seg_configs, ["channels"])
    for fraction in fractions:
        for arm in ("random", "ssl"):
            name = f"seg_{arm}_{_pct(fraction)}"
            seg = ctx.overrides(
                SEGMENT,
                seg_configs,
                **common,
                **shared,
                label_fraction=float(fraction),
                pretrained_ckpt=str(model) if arm == "ssl" else None,
            )
            epochs = _epochs(SEGMENT, seg_configs, seg)
            samples = epochs * (2 * n_train * fraction + 2 * n_val / 3)
            stages.append(
                Stage(
                    name,
                    SEGMENT,
                    seg_configs,
                    seg,
                    depends_on=("pretrain",) if arm == "ssl" else (),
                    outputs=("models/model.pt",),
                    estimate=Estimate(flop=samples * gflop * 1e9, samples=samples),
                    label=f"segmentation, {arm} init, {100 * fraction:g}% of the traced TRAIN videos",
                )
            )
            trained = str(ctx.out / name / "models" / "model.pt")
            test_configs = [*seg_configs, "evaluate.yaml"]
            test = ctx.overrides(
                SEGMENT, test_configs, **common, **shared, model_path=trained, n_resamples=ctx.preset.n_resamples
            )
            stages.append(
                Stage(
                    f"test_{arm}_{_pct(fraction)}",
                    SEGMENT,
                    test_configs,
                    test,
                    depends_on=(name,),
                    outputs=("eval/summary.json",),
                    trains=False,
                    estimate=Estimate(flop=2 * n_test * gflop / 3 * 1e9, samples=2 * n_test),
                    label=f"pooled Dice on TEST ({arm} init, {100 * fraction:g}% labels)",
                )
            )
            if camus is not None:
                camus_configs = [*seg_configs, "evaluate_camus.yaml"]
                ov = ctx.overrides(
                    SEGMENT,
                    camus_configs,
                    **common,
                    **shared,
                    camus_dir=str(camus),
                    model_path=trained,
                    n_resamples=ctx.preset.n_resamples,
                )
                n_camus = max(1, len(list(Path(camus).glob("patient*"))))
                stages.append(
                    Stage(
                        f"camus_{arm}_{_pct(fraction)}",
                        SEGMENT,
                        camus_configs,
                        ov,
                        depends_on=(name,),
                        outputs=("eval/camus/summary.json",),
                        trains=False,
                        estimate=Estimate(flop=4 * n_camus * gflop / 3 * 1e9, samples=4 * n_camus),
                        label=f"pooled Dice on CAMUS, out of distribution ({arm} init, {100 * fraction:g}% labels)",
                    )
                )
    return stages


def _epochs(bundle: str, configs: list[str], overrides: dict) -> int:
    from medssl_monai.reproduce.common import config_values

    return int(overrides.get("epochs") or config_values(bundle, configs, ["epochs"])["epochs"])


def _dice_cells(summary: dict, key: str = "dice") -> dict[str, Cell]:
    dice = summary.get(key, {})
    return {
        col: Cell.from_ci(dice.get(part), scale=100.0, n=(dice.get(part) or {}).get("frames"))
        for col, part in (("Dice overall", "overall"), ("Dice ED", "ED"), ("Dice ES", "ES"))
        if part in dice
    }


def build_table(ctx: Context, stages: list[Stage]) -> Table:
    """Pooled Dice (in %) per test set, label fraction and initialisation."""
    names = {s.name for s in stages}
    fractions = sorted(
        {float(s.overrides["label_fraction"]) for s in stages if s.name.startswith("seg_")}, reverse=True
    )
    sections = []
    for test_set, prefix, folder, key in (
        ("EchoNet-Dynamic TEST", "test", "eval/summary.json", "dice"),
        ("CAMUS (out of distribution)", "camus", "eval/camus/summary.json", "camus_dice"),
    ):
        for fraction in fractions:
            rows = []
            for arm, label in (("random", "random init"), ("ssl", "temporal-masking SSL")):
                name = f"{prefix}_{arm}_{_pct(fraction)}"
                if name not in names:
                    continue
                summary = json.loads((ctx.out / name / folder).read_text())
                cells = _dice_cells(summary, key)
                pub = {}
                if prefix == "test" and arm == "ssl" and fraction == 1.0:
                    pub = {"Dice overall": PUBLISHED["overall"]}
                rows.append(Row(label, cells, pub))
            if rows:
                sections.append(
                    Section(
                        f"{test_set}, {100 * fraction:g}% of the traced TRAIN videos",
                        ["Dice overall", "Dice ED", "Dice ES"],
                        rows,
                        digits=2,
                        better="pooled Dice in %, higher is better",
                    )
                )
    notes = [
        "Pooled Dice = 2 sum|P and T| / (sum|P| + sum|T|) over the traced frames; intervals: percentile bootstrap "
        f"over frames, 95% ({ctx.preset.n_resamples} resamples).",
        "Published: SimLVSeg (arXiv 2310.00454), 3D UNet + temporal-masking SSL, 100% labels, EchoNet-Dynamic TEST. "
        "Its '95% CI' is the 5th-95th percentile of the bootstrap (a 90% interval, inherited from EchoNet); ours is "
        "the 2.5th-97.5th. ED/ES and CAMUS numbers of the paper are not in the reference material here.",
    ]
    return Table("unilvseg", "UniLVSeg (SimLVSeg): weakly supervised LV segmentation", sections, notes)
