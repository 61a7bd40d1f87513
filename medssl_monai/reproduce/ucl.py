"""UCL main experiment: ultrasound video pretraining with intra-video hard negatives and a curriculum (and the same
loss without hard negatives, a MoCo-style baseline) against random init, each fine-tuned to classify frames of
labelled videos with k-fold cross-validation by video; accuracy, sensitivity and specificity of the pooled test
folds with 95% cluster-bootstrap intervals over test videos.

Stages (``A`` = ``random``, ``ucl`` or ``no_hard_negatives``, ``k`` = fold)::

    pretrain_A           ucl_us_ssl_pretraining (on the unlabelled videos; labels never read)
    classify_A_fold<k>   ucl_us_classification (fine-tuning, test fold k held out)
    test_A_fold<k>       ... + evaluate.yaml (frame predictions of fold k)
    pool_A               ... + pool_folds.yaml (the folds pooled: metrics with intervals)

As in the paper (pretraining on GBUSV videos, evaluation on GBCU images), pretraining reads its own video folder
(``--pretrain_dir``; the synthetic data writes a second set with another seed); without one, it reads the labelled
videos with their labels unused, and the plan says so.
"""

from __future__ import annotations

import json

from medssl_monai.reproduce.common import Context, config_values, count_frame_folders, shared_encoder_overrides
from medssl_monai.reproduce.plan import Estimate, PlanError, Stage
from medssl_monai.reproduce.table import Cell, Row, Section, Table

PRETRAIN = "ucl_us_ssl_pretraining"
CLASSIFY = "ucl_us_classification"
FOLDER_OPTIONS = ("pretrain_dir",)
#: forward + backward GFLOP per video sample (anchor, positive, 3 negatives, key: docs/performance.md ResNet-50 at
#: 224 px 57.0 per video; small.yaml ResNet-18/4 at 64 px 1.204 per batch of 8) and per classified frame
GFLOP_PER_VIDEO = {"recipe": 57.0, "cpu": 0.15, "tiny": 0.15}
GFLOP_PER_FRAME = {"recipe": 11.4, "cpu": 0.06, "tiny": 0.06}
ENCODER_KEYS = ("depth", "widen_factor")
ARMS = {
    "random": ("random init", None),
    "ucl": ("UCL (hard negatives + curriculum)", {}),
    # the loss without hard negatives: [positive, other videos' frames], MoCo-style; its warm-up logits [p, n^]
    # need the mixed negative, so no warm-up
    "no_hard_negatives": (
        "UCL loss without hard negatives",
        {"intra_negatives": False, "mixed_negative": False, "cross_negatives": True, "warmup_epochs": 0},
    ),
}
#: the pretraining overrides of each arm (``None``: no pretraining)
PRETRAINING_OVERRIDES = {arm: extra for arm, (_, extra) in ARMS.items()}
COLUMNS = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "AUROC": "auroc"}
DESCRIPTION = (
    "UCL pretraining (hard negatives + curriculum) vs the loss without hard negatives vs random init; frame "
    "classification by k-fold cross-validation, accuracy / sensitivity / specificity with 95% intervals"
)


def prepare(ctx: Context) -> None:
    """The unlabelled pretraining videos: ``--pretrain_dir``, a second synthetic set, or the labelled videos."""
    if "pretrain_videos" in ctx.data:
        return
    if ctx.synthetic:
        from medssl_monai.data.synthetic.suite import SIZES
        from medssl_monai.data.synthetic.ultrasound import make_frame_folders

        size = ctx.preset.synthetic_size
        folder = ctx.data["ultrasound"].parent / "ultrasound_pretrain"
        if not ctx.dry_run:
            make_frame_folders(folder, seed=1000, **SIZES[size]["ultrasound"])
        ctx.data["pretrain_videos"] = folder.resolve()
        ctx.say(f"ucl: pretraining on a second synthetic video set (seed 1000) in {folder}")
    else:
        ctx.data["pretrain_videos"] = ctx.data["ultrasound"]
        ctx.say(
            "ucl: no --pretrain_dir: pretraining reads the labelled videos (their labels unused); the paper pretrains "
            "on a separate unlabelled video set"
        )


def build_stages(ctx: Context) -> list[Stage]:
    """The plan's stages (see the module docstring)."""
    arms = tuple(ctx.options.get("arms") or (("random", "ucl") if ctx.preset.name == "tiny" else tuple(ARMS)))
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise PlanError(f"ucl: unknown arm(s) {bad}; expected some of {list(ARMS)}")
    labelled, unlabelled = ctx.data["ultrasound"], ctx.data["pretrain_videos"]
    cls_configs = ctx.downstream_configs()
    num_folds = int(config_values(CLASSIFY, cls_configs, ["num_folds"])["num_folds"])
    folds = ctx.options.get("folds")
    folds = tuple(folds if isinstance(folds, (list, tuple)) else [folds]) if folds is not None else None
    folds = folds or ((0,) if ctx.preset.name == "tiny" else tuple(range(num_folds)))
    if any(not 0 <= int(k) < num_folds for k in folds):
        raise PlanError(f"ucl: folds {folds} outside 0..{num_folds - 1} (num_folds {num_folds})")
    n_pre, _ = count_frame_folders(unlabelled)
    n_videos, n_frames = count_frame_folders(labelled)
    cache = {"cache_dir": str(ctx.out / "cache")}
    pre_configs = ctx.pretrain_configs()
    shared = shared_encoder_overrides(PRETRAIN, pre_configs, CLASSIFY, cls_configs, ENCODER_KEYS)
    stages: list[Stage] = []
    for arm in arms:
        extra = ARMS[arm][1]
        if extra is None:
            continue
        ov = ctx.overrides(PRETRAIN, pre_configs, dataset_dir=str(unlabelled), **cache, **extra)
        epochs = int(ov.get("epochs") or config_values(PRETRAIN, pre_configs, ["epochs"])["epochs"])
        stages.append(
            Stage(
                f"pretrain_{arm}",
                PRETRAIN,
                pre_configs,
                ov,
                outputs=("models/model.pt",),
                estimate=Estimate(flop=epochs * n_pre * GFLOP_PER_VIDEO[ctx.preset.name] * 1e9, samples=epochs * n_pre),
                label=f"{ARMS[arm][0]} pretraining",
            )
        )
    gflop = GFLOP_PER_FRAME[ctx.preset.name]
    for arm in arms:
        model = None if ARMS[arm][1] is None else ctx.out / f"pretrain_{arm}" / "models" / "model.pt"
        tests = []
        for fold in folds:
            fold_keys = {"fold": int(fold), "num_folds": num_folds}
            ov = ctx.overrides(
                CLASSIFY,
                cls_configs,
                dataset_dir=str(labelled),
                **cache,
                **shared,
                **fold_keys,
                pretrained_ckpt=str(model) if model else None,
            )
            epochs = int(ov.get("epochs") or config_values(CLASSIFY, cls_configs, ["epochs"])["epochs"])
            frames = n_frames * (num_folds - 1) / num_folds
            stages.append(
                Stage(
                    f"classify_{arm}_fold{fold}",
                    CLASSIFY,
                    cls_configs,
                    ov,
                    depends_on=(f"pretrain_{arm}",) if model else (),
                    outputs=("models/model.pt",),
                    estimate=Estimate(flop=epochs * frames * gflop * 1e9, samples=epochs * frames),
                    label=f"fine-tuning from {ARMS[arm][0]}, test fold {fold} of {num_folds}",
                )
            )
            test_configs = [*cls_configs, "evaluate.yaml"]
            test = ctx.overrides(
                CLASSIFY,
                test_configs,
                dataset_dir=str(labelled),
                **cache,
                **shared,
                **fold_keys,
                model_path=str(ctx.out / f"classify_{arm}_fold{fold}" / "models" / "model.pt"),
                n_resamples=0,  # the intervals come from the pooled folds
            )
            stages.append(
                Stage(
                    f"test_{arm}_fold{fold}",
                    CLASSIFY,
                    test_configs,
                    test,
                    depends_on=(f"classify_{arm}_fold{fold}",),
                    outputs=("eval/frame_predictions.csv",),
                    trains=False,
                    estimate=Estimate(flop=n_frames / num_folds * gflop / 3 * 1e9, samples=n_frames / num_folds),
                    label=f"test fold {fold} ({ARMS[arm][0]})",
                )
            )
            tests.append(f"test_{arm}_fold{fold}")
        pool_configs = [*cls_configs, "pool_folds.yaml"]
        pool = ctx.overrides(
            CLASSIFY,
            pool_configs,
            dataset_dir=str(labelled),
            num_folds=num_folds,
            fold_roots=[str(ctx.out / t) for t in tests],
            pooled_dir=str(ctx.out / f"pool_{arm}" / "pooled"),
            n_resamples=ctx.preset.n_resamples,
        )
        stages.append(
            Stage(
                f"pool_{arm}",
                CLASSIFY,
                pool_configs,
                pool,
                depends_on=tuple(tests),
                outputs=("pooled/metrics.json",),
                trains=False,
                estimate=Estimate(overhead_s=15.0),
                label=f"test folds {list(folds)} pooled ({ARMS[arm][0]})",
            )
        )
    return stages


def build_table(ctx: Context, stages: list[Stage]) -> Table:
    """One row per arm: frame-level metrics of the pooled test folds with 95% intervals (video-level below)."""
    sections = []
    for level in ("frame", "video"):
        rows = []
        for s in stages:
            if not s.name.startswith("pool_"):
                continue
            arm = s.name[len("pool_") :]
            metrics = json.loads((ctx.out / s.name / "pooled" / "metrics.json").read_text())
            part = metrics.get(level, {})
            cells = {c: Cell.from_ci(part.get(m), n=part.get("n")) for c, m in COLUMNS.items() if m in part}
            rows.append(Row(ARMS[arm][0], cells))
        sections.append(
            Section(f"{level}-level classification, test folds pooled", list(COLUMNS), rows, better="higher is better")
        )
    notes = [
        "Binary metrics: the positive classes of the bundle (`positive_classes`) against the rest, as the paper's "
        "malignant vs rest; intervals: cluster bootstrap over test videos, 95% "
        f"({ctx.preset.n_resamples} resamples).",
        "Published: the UCL paper reports +2-6% accuracy over the best baseline for gallbladder malignancy (GBUSV "
        "pretraining, GBCU test); its table values are not in the reference material here, so no cell is shown.",
    ]
    return Table("ucl", "UCL: ultrasound video pretraining for frame classification", sections, notes)
