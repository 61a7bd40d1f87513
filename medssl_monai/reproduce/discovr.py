"""DISCOVR main experiment: DISCOVR pretraining against a video-SSL baseline (VideoMAE, the method it builds on) and a
random-init encoder, each evaluated on normal-vs-abnormal echo videos by zero-shot kNN, linear probing (the
reference's trained head and a logistic probe on the frozen features) and one-class anomaly detection (fit on
normal TRAIN videos only), AUROC with paired bootstrap 95% intervals.

Stages (``A`` = ``random``, ``videomae`` or ``discovr``)::

    pretrain_discovr, pretrain_videomae   discovr_echo_ssl_pretraining (+ videomae.yaml)
    probe_A                               discovr_echo_evaluation (linear probe on the frozen encoder)
    test_A                                ... + evaluate.yaml (kNN, logistic probe, anomaly, trained head on TEST)

The abnormal label: a dataset's own ``labels_csv`` (``--labels_csv``, a 0/1 column ``--label_key``), the
synthetic data's ``SyntheticTruth.csv``, or, for EchoNet-Dynamic (which has none), derived from ``FileList.csv``'s
``EF`` as reduced ejection fraction, EF < 50% (:func:`derive_abnormal_labels`; the evaluation bundle's README).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medssl_monai.reproduce.common import Context, config_values, count_echonet, shared_encoder_overrides
from medssl_monai.reproduce.plan import Estimate, PlanError, Stage
from medssl_monai.reproduce.table import Cell, Row, Section, Table

PRETRAIN = "discovr_echo_ssl_pretraining"
EVALUATE = "discovr_echo_evaluation"
#: forward + backward GFLOP per clip (docs/performance.md: ViT-B, 64 x 112^2, teachers and image branch: 2141.6;
#: small.yaml 0.575 per batch of 4 at 8 frames; cpu.yaml 16 frames: about twice that)
GFLOP_PER_CLIP = {"recipe": 2141.6, "cpu": 0.3, "tiny": 0.15}
ENCODER_KEYS = ("num_frames", "sampling_rate", "spatial_size", "resize_to", "patch_size", "hidden_size", "mlp_dim")
ENCODER_KEYS += ("num_layers", "num_heads", "tubelet_size")
#: the EF cut-off of the derived label: reduced ejection fraction (EchoNet-Dynamic's own HFrEF threshold)
EF_ABNORMAL_BELOW = 50.0
DERIVED_LABELS = "abnormal_from_ef.csv"
ARMS = {"random": "random init", "videomae": "VideoMAE", "discovr": "DISCOVR"}
COLUMNS = {
    "kNN AUROC (zero-shot)": ("knn", "auroc"),
    "linear probe AUROC": ("trained_head", "auroc"),
    "logistic probe AUROC": ("linear_probe", "auroc"),
    "anomaly AUROC": ("anomaly", "auroc"),
}
DESCRIPTION = (
    "DISCOVR vs VideoMAE vs random-init pretraining; normal-vs-abnormal echo videos by zero-shot kNN, linear "
    "probing and one-class anomaly detection (AUROC with 95% intervals)"
)


def derive_abnormal_labels(echonet: Path, out_csv: Path, threshold: float = EF_ABNORMAL_BELOW) -> Path:
    """Write ``FileName,Abnormal,EF`` with ``Abnormal = 1`` where ``EF < threshold`` (EchoNet's ``FileList.csv``).

    Raises:
        PlanError: no ``FileList.csv`` or no ``EF`` column to derive the label from.
    """
    filelist = echonet / "FileList.csv"
    try:
        with open(filelist, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PlanError(f"{filelist}: cannot derive DISCOVR's abnormal label ({e}); pass --labels_csv") from e
    if not rows or "EF" not in rows[0] or "FileName" not in rows[0]:
        raise PlanError(
            f"{filelist}: no FileName/EF columns to derive DISCOVR's abnormal label from; pass --labels_csv FILE "
            "(FileName plus a 0/1 column, --label_key)"
        )
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    bad = []
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "Abnormal", "EF"])
        for r in rows:
            try:
                ef = float(r["EF"])
            except (TypeError, ValueError):
                bad.append(r["FileName"])
                continue
            w.writerow([r["FileName"], int(ef < threshold), r["EF"]])
    if bad:
        raise PlanError(f"{filelist}: EF is not a number for {len(bad)} video(s), e.g. {bad[:3]}; fix or --labels_csv")
    return out_csv


def prepare(ctx: Context) -> None:
    """Decide where the abnormal label comes from and say so (``ctx.options['labels_csv' / 'label_key']``)."""
    echonet = ctx.data["echonet"]
    given = ctx.options.get("labels_csv")
    key = ctx.options.get("label_key") or "Abnormal"
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_file():
            raise PlanError(f"--labels_csv {given}: no such file")
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if "FileName" not in header or key not in header:
            raise PlanError(f"--labels_csv {path}: needs columns FileName and {key!r} (--label_key); has {header}")
        source = f"{path} (column {key})"
    elif (echonet / "SyntheticTruth.csv").is_file() or ctx.synthetic:  # (a dry run has not written it yet)
        path, key = echonet / "SyntheticTruth.csv", "Abnormal"
        source = f"{path} (the synthetic data's truth: reduced EF or an akinetic wall segment)"
    else:
        # also in a dry run: a dataset without EF is an error before anything runs (the file is small)
        path = derive_abnormal_labels(echonet, ctx.out / "labels" / DERIVED_LABELS)
        key = "Abnormal"
        source = (
            f"{path}: derived from FileList.csv, Abnormal = EF < {EF_ABNORMAL_BELOW:g}% (reduced ejection fraction; "
            "bundles/discovr_echo_evaluation/docs/README.md, 'The abnormal label')"
        )
    ctx.options["labels_csv"], ctx.options["label_key"], ctx.options["label_source"] = str(path), key, source
    ctx.say(f"discovr: abnormal label from {source}")


def build_stages(ctx: Context) -> list[Stage]:
    """The plan's stages (see the module docstring)."""
    arms = tuple(ctx.options.get("arms") or (("random", "discovr") if ctx.preset.name == "tiny" else tuple(ARMS)))
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise PlanError(f"discovr: unknown arm(s) {bad}; expected some of {list(ARMS)}")
    echonet = ctx.data["echonet"]
    gflop = GFLOP_PER_CLIP[ctx.preset.name]
    n_train, n_test = count_echonet(echonet, "TRAIN"), count_echonet(echonet, "TEST")
    common = {"dataset_dir": str(echonet), "cache_dir": str(ctx.out / "cache")}
    labels = {"labels_csv": ctx.options["labels_csv"], "label_key": ctx.options["label_key"]}
    stages: list[Stage] = []
    pre_configs = ctx.pretrain_configs()
    for arm in arms:
        if arm == "random":
            continue
        configs = [*pre_configs, "videomae.yaml"] if arm == "videomae" else pre_configs
        ov = ctx.overrides(PRETRAIN, configs, **common)
        epochs = int(ov.get("epochs") or config_values(PRETRAIN, configs, ["epochs"])["epochs"])
        stages.append(
            Stage(
                f"pretrain_{arm}",
                PRETRAIN,
                configs,
                ov,
                outputs=("models/model.pt",),
                estimate=Estimate(flop=epochs * n_train * gflop * 1e9, samples=epochs * n_train),
                label=f"{ARMS[arm]} pretraining",
            )
        )
    probe_configs = ctx.downstream_configs()
    shared = shared_encoder_overrides(PRETRAIN, pre_configs, EVALUATE, probe_configs, ENCODER_KEYS)
    for arm in arms:
        model = None if arm == "random" else ctx.out / f"pretrain_{arm}" / "models" / "model.pt"
        ov = ctx.overrides(
            EVALUATE, probe_configs, **common, **shared, **labels, pretrained_ckpt=str(model) if model else None
        )
        epochs = int(ov.get("epochs") or config_values(EVALUATE, probe_configs, ["epochs"])["epochs"])
        stages.append(
            Stage(
                f"probe_{arm}",
                EVALUATE,
                probe_configs,
                ov,
                depends_on=(f"pretrain_{arm}",) if model else (),
                outputs=("models/model.pt",),
                estimate=Estimate(flop=epochs * n_train * gflop / 3 * 1e9, samples=epochs * n_train),
                label=f"linear probe on the frozen {ARMS[arm]} encoder",
            )
        )
        test_configs = [*probe_configs, "evaluate.yaml"]
        test = ctx.overrides(
            EVALUATE,
            test_configs,
            **common,
            **shared,
            **labels,
            model_path=str(ctx.out / f"probe_{arm}" / "models" / "model.pt"),
            n_resamples=ctx.preset.n_resamples,
        )
        clips = 3 * (n_train + n_test)  # the evaluation's clips per video, TRAIN (fit) and TEST
        stages.append(
            Stage(
                f"test_{arm}",
                EVALUATE,
                test_configs,
                test,
                depends_on=(f"probe_{arm}",),
                outputs=("eval/feature_metrics.json",),
                trains=False,
                estimate=Estimate(flop=clips * gflop / 3 * 1e9, samples=clips),
                label=f"kNN, logistic probe, anomaly detection and the trained head on TEST ({ARMS[arm]})",
            )
        )
    return stages


def build_table(ctx: Context, stages: list[Stage]) -> Table:
    """One row per encoder, AUROC (normal vs abnormal) of each evaluation with its 95% interval."""
    rows = []
    for s in stages:
        if not s.name.startswith("test_"):
            continue
        arm = s.name[len("test_") :]
        metrics = json.loads((ctx.out / s.name / "eval" / "feature_metrics.json").read_text())
        cells = {}
        for column, (task, metric) in COLUMNS.items():
            if task in metrics and metric in metrics[task]:
                cells[column] = Cell.from_ci(metrics[task][metric])
        rows.append(Row(ARMS[arm], cells))
    section = Section(
        "Normal vs abnormal echo videos, TEST split", list(COLUMNS), rows, digits=3, better="AUROC, higher is better"
    )
    notes = [
        f"Abnormal label: {ctx.options.get('label_source')}.",
        "kNN: TRAIN clips vote with their labels (zero-shot, no training); linear probe: the bundle's trained head on "
        "the frozen CLS (the reference's linear probing); logistic probe: sklearn on the frozen features; anomaly: "
        "kNN distance to normal TRAIN clips only. Intervals: paired percentile bootstrap over TEST videos, 95% "
        f"({ctx.preset.n_resamples} resamples).",
        "Published: the DISCOVR paper's numeric tables (six echo datasets) are not in the reference material here; "
        "no published number is shown.",
    ]
    return Table("discovr", "DISCOVR: echo video representations for normal vs abnormal", [section], notes)
