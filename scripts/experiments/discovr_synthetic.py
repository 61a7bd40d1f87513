"""DISCOVR on the synthetic EchoNet data: DISCOVR vs plain VideoMAE pretraining vs a random encoder, evaluated on
the clip features by kNN, linear probe and one-class anomaly detection (abnormal hearts), with bootstrap CIs.
Writes the table into the evaluation bundle's docs/README.md.

    python scripts/experiments/discovr_synthetic.py --root data --out runs/discovr_experiment --write_docs

Every run is a real bundle run: pretraining with ``discovr_echo_ssl_pretraining`` (``train.yaml`` +
``small.yaml`` [+ ``videomae.yaml``]), evaluation with ``discovr_echo_evaluation`` (``train.yaml`` + ``small.yaml``
+ ``evaluate.yaml``, ``encoder_only=True``) on the pretraining bundle's ``models/model.pt``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import fire
import torch

from medssl_monai.bundle_tools import write_results_block
from medssl_monai.data.synthetic.echonet import make_echonet
from medssl_monai.demo import BUNDLES_DIR, run_bundle

PRETRAIN = "discovr_echo_ssl_pretraining"
EVALUATE = "discovr_echo_evaluation"


def _random_encoder(path: Path, seed: int) -> None:
    """The ``small.yaml`` encoder with its initial (seeded) weights: the "no pretraining" row."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / PRETRAIN / "configs" / c) for c in ("train.yaml", "small.yaml")])
    set_determinism(seed=seed)
    net = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def main(
    root: str = "data",
    out: str = "runs/discovr_experiment",
    seed: int = 0,
    num_videos: int = 80,
    epochs: int = 30,
    num_workers: int = 1,
    eval_splits: tuple = ("VAL", "TEST"),
    n_resamples: int = 2000,
    write_docs: bool = False,
) -> str:
    t0 = time.time()
    data = make_echonet(Path(root) / f"echonet_discovr_{num_videos}_seed{seed}", num_videos=num_videos, seed=seed)
    out_dir = Path(out).resolve()
    common = {"dataset_dir": str(data), "cache_dir": str(out_dir / "cache"), "seed": seed, "num_workers": num_workers}
    common["persistent_workers"] = True  # the published tables: persistent workers (the default before 0.3.0)
    models = {}
    timings = {}
    for name, extra in (("DISCOVR", []), ("VideoMAE", ["videomae.yaml"])):
        run_dir = out_dir / name.lower()
        model = run_dir / "models" / "model.pt"
        if not model.is_file():
            t = time.time()
            run_bundle(
                PRETRAIN,
                ["train.yaml", "small.yaml", *extra],
                epochs=epochs,
                val_interval=epochs,
                ckpt_dir=str(run_dir / "models"),
                output_dir=str(run_dir / "runs"),
                **common,
            )
            timings[name] = time.time() - t
        models[name] = model
    models["random init"] = out_dir / "random" / "model.pt"
    if not models["random init"].is_file():
        _random_encoder(models["random init"], seed)

    results = {}
    for name, model in models.items():
        eval_dir = out_dir / "eval" / name.lower().replace(" ", "_")
        if not (eval_dir / "feature_metrics.json").is_file():
            run_bundle(
                EVALUATE,
                ["train.yaml", "small.yaml", "evaluate.yaml"],
                "eval",
                model_path=str(model),
                encoder_only=True,
                eval_splits=list(eval_splits),
                eval_dir=str(eval_dir),
                n_resamples=n_resamples,
                ckpt_dir=str(out_dir / "eval" / "unused"),
                **common,
            )
        results[name] = json.loads((eval_dir / "feature_metrics.json").read_text())

    from medssl_monai.evaluation.features import results_table

    counts = next(iter(results.values()))["counts"]
    table = results_table(results)
    note = (
        f"Synthetic EchoNet-format data (`make_echonet(num_videos={num_videos}, seed={seed})`, 30% abnormal hearts: "
        f"reduced EF or an akinetic segment); pretraining on TRAIN for {epochs} epochs with `configs/small.yaml` "
        f"(64-d 2-block ViT, 8 frames every 4th, 64 px, patch 16); features = CLS of the video teacher "
        f"(VideoMAE: the encoder). "
        f"Fit on TRAIN ({counts['fit']} clips, {counts['fit_abnormal']} abnormal; the anomaly model on its "
        f"{counts['fit'] - counts['fit_abnormal']} normal clips only), scored on {'+'.join(eval_splits)} "
        f"({counts['eval']} clips, {counts['eval_abnormal']} abnormal). Estimates with paired percentile bootstrap "
        f"95% intervals ({n_resamples} resamples). Pretraining wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f". Measured on {platform.machine()} CPU ({platform.processor() or 'unknown'}, 2 shared cores), "
        f"{time.time() - t0:.0f} s in all."
    )
    result = f"{table}\n\n{note}\n"
    print(result)
    (out_dir / "results.md").write_text(result)
    if write_docs:
        write_results_block(BUNDLES_DIR / EVALUATE / "docs" / "README.md", result)
    return result


if __name__ == "__main__":
    fire.Fire(main)
