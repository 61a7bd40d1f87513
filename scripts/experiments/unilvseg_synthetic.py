"""UniLVSeg on the synthetic EchoNet data: segmentation with and without temporal-masking pretraining, at 100% and
10% of the traced training videos. Writes the results table into the segmentation bundle's docs/README.md.

    python scripts/experiments/unilvseg_synthetic.py --root data --out runs/unilvseg_experiment --write_docs

Every run is a real bundle run (``configs/train.yaml`` + ``configs/small.yaml``; evaluation with
``configs/evaluate.yaml``): the numbers in the docs are reproducible by this command.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import fire

from medssl_monai.bundle_tools import write_results_block
from medssl_monai.data.synthetic import make_all
from medssl_monai.demo import BUNDLES_DIR, run_bundle


def _cell(d: dict) -> str:
    return f"{100 * d['estimate']:.1f} ({100 * d['ci_low']:.1f}-{100 * d['ci_high']:.1f})"


def ssl_reconstruction_table(dataset_dir: str, model_path: str, cache_dir: str, seed: int = 0) -> str:
    """Validation reconstruction MSE of the pretrained network against two trivial predictors of the masked clip."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset

    from medssl_monai.bundle_tools import load_state_dict
    from medssl_monai.engines.prepare import MaskedClipPrepareBatch

    bundle = BUNDLES_DIR / "unilvseg_echo_ssl_pretraining"
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "small.yaml")])
    parser.update({"bundle_root": str(bundle), "dataset_dir": dataset_dir, "cache_dir": cache_dir})
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(load_state_dict(model_path))
    loader = DataLoader(
        Dataset(parser.get_parsed_content("validate#datalist"), parser.get_parsed_content("validate#preprocessing")),
        batch_size=2,
    )
    prep = MaskedClipPrepareBatch(mask_ratio=parser.get_parsed_content("mask_ratio"), seed=12345)
    sums = {"pretrained 3D UNet": 0.0, "predict the mean (zeros)": 0.0, "copy the nearest unmasked frame": 0.0}
    n = 0
    with torch.no_grad():
        for batch in loader:
            inputs, target = prep(batch, "cpu")
            # a masked frame is constant at the normalised value of 0; a real echo frame never is (the fan is bright)
            masked = (inputs[:, :1] == inputs[:, :1].amin()).flatten(3).all(-1)[:, 0]  # B x T
            nearest = target.clone()
            for b in range(target.shape[0]):
                keep = (~masked[b]).nonzero().flatten()
                for t in masked[b].nonzero().flatten().tolist():
                    nearest[b, :, t] = target[b, :, keep[(keep - t).abs().argmin()]]
            preds = {
                "pretrained 3D UNet": net(inputs),
                "predict the mean (zeros)": torch.zeros_like(target),
                "copy the nearest unmasked frame": nearest,
            }
            for k, p in preds.items():
                sums[k] += torch.mean((p - target) ** 2).item() * target.shape[0]
            n += target.shape[0]
    rows = [f"| {k} | {v / n:.4f} |" for k, v in sums.items()]
    return "\n".join(
        ["| predictor of the clean clip (VAL split, 60% of frames masked) | MSE |", "| --- | ---: |", *rows]
    )


def main(
    root: str = "data",
    out: str = "runs/unilvseg_experiment",
    seed: int = 0,
    size: str = "small",
    ssl_epochs: int = 20,
    seg_epochs: int = 12,
    fractions: tuple = (1.0, 0.1),
    n_resamples: int = 10000,
    write_docs: bool = False,
) -> str:
    t0 = time.time()
    data = make_all(root, seed=seed, size=size)
    out_dir = Path(out).resolve()
    common = {"dataset_dir": str(data["echonet"]), "cache_dir": str(out_dir / "cache"), "seed": seed}
    common["persistent_workers"] = True  # the published tables: persistent workers (the default before 0.3.0)
    ssl_dir = out_dir / "ssl"
    if not (ssl_dir / "models" / "model.pt").is_file():
        run_bundle(
            "unilvseg_echo_ssl_pretraining",
            ["train.yaml", "small.yaml"],
            epochs=ssl_epochs,
            ckpt_dir=str(ssl_dir / "models"),
            output_dir=str(ssl_dir / "runs"),
            **common,
        )
    rows = []
    for fraction in fractions:
        for init, ckpt in (("random init", None), ("temporal-masking SSL", str(ssl_dir / "models" / "model.pt"))):
            run_dir = out_dir / f"seg_{int(100 * fraction)}pct_{'ssl' if ckpt else 'scratch'}"
            seg = {
                **common,
                "ckpt_dir": str(run_dir / "models"),
                "output_dir": str(run_dir / "runs"),
                "pretrained_ckpt": ckpt,
                "label_fraction": float(fraction),
            }
            if not (run_dir / "eval" / "summary.json").is_file():
                run_bundle("unilvseg_echo_lv_segmentation", ["train.yaml", "small.yaml"], epochs=seg_epochs, **seg)
                run_bundle(
                    "unilvseg_echo_lv_segmentation",
                    ["train.yaml", "small.yaml", "evaluate.yaml"],
                    "eval",
                    eval_dir=str(run_dir / "eval"),
                    n_resamples=n_resamples,
                    **seg,
                )
            s = json.loads((run_dir / "eval" / "summary.json").read_text())
            ef = s.get("ef", {})
            ef_cell = (
                f"{ef['mae']['estimate']:.1f} ({ef['mae']['ci_low']:.1f}-{ef['mae']['ci_high']:.1f})"
                if "mae" in ef
                else "n/a"
            )
            rows.append(
                f"| {int(100 * fraction)}% | {init} | {_cell(s['dice']['overall'])} | {_cell(s['dice']['ED'])} "
                f"| {_cell(s['dice']['ES'])} | {ef_cell} |"
            )
    first = json.loads(next(out_dir.glob("seg_*/eval/summary.json")).read_text())
    n_frames = first["dice"]
    table = "\n".join(
        [
            "| labelled TRAIN videos | initialisation | pooled Dice overall (95% CI) | ED | ES "
            "| EF-from-masks MAE, points (95% CI) |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    note = (
        f"Synthetic EchoNet-format data (`make_all(size='{size}', seed={seed})`), test split "
        f"({n_frames['overall']['frames']} traced frames); `configs/small.yaml` settings; SSL {ssl_epochs} epochs, "
        f"segmentation {seg_epochs} epochs; bootstrap {n_resamples} resamples (true 95% percentile intervals). "
        f"Measured on {platform.machine()} CPU ({platform.processor() or 'unknown'}), {time.time() - t0:.0f} s."
    )
    result = f"{table}\n\n{note}\n"
    print(result)
    ssl_table = ssl_reconstruction_table(
        str(data["echonet"]), str(ssl_dir / "models" / "model.pt"), str(out_dir / "cache"), seed
    )
    print(ssl_table)
    if write_docs:
        machine = note[note.index("Measured") :]
        ssl_note = f"After {ssl_epochs} epochs with `configs/small.yaml` on the synthetic data. {machine}"
        write_results_block(
            BUNDLES_DIR / "unilvseg_echo_ssl_pretraining" / "docs" / "README.md", f"{ssl_table}\n\n{ssl_note}\n"
        )
        write_results_block(BUNDLES_DIR / "unilvseg_echo_lv_segmentation" / "docs" / "README.md", result)
    return result


if __name__ == "__main__":
    fire.Fire(main)
