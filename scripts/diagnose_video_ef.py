"""Check a trained UniLVSeg model's whole-video masks frame by frame, in several precisions and memory formats.

Runs :func:`medssl_monai.evaluation.ef_diagnostics.diagnose_video_ef` on the test split through the bundle's own
video path and prints one row per variant: EF MAE and bias (predicted masks, and the true masks through the same
EF code), Dice on the traced frames inside the whole-video prediction, Dice on every other frame (synthetic data:
the true mask of every frame is re-rendered), and the share of mask pixels that differ from fp32/contiguous.

Usage (from the repository root; configs as the model was trained)::

    python scripts/diagnose_video_ef.py --bundle_root bundles/unilvseg_echo_lv_segmentation \\
        --configs train.yaml --model_path runs/x/models/model.pt --dataset_dir /data/synthetic/echonet \\
        --device cuda --out runs/x/ef_diagnostics
    # a small.yaml model on the CPU, the first 4 test videos, two variants (spaces in names written as _)
    python scripts/diagnose_video_ef.py --configs "train.yaml small.yaml" --max_videos 4 \
        --variants "fp32 bf16_net-cl_in-cl" ...
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from medssl_monai.bundle_tools import load_state_dict
from medssl_monai.evaluation.ef_diagnostics import (
    DEFAULT_VARIANTS,
    diagnose_video_ef,
    markdown_table,
    summarise_variants,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle_root", default="bundles/unilvseg_echo_lv_segmentation")
    ap.add_argument("--configs", default="train.yaml", help="space-separated configs, as trained (evaluate.yaml added)")
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--split", default="TEST")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max_videos", type=int, default=0, help="0: every video of the split")
    ap.add_argument(
        "--variants",
        default="",
        help="space-separated names (default: all): " + ", ".join(v.name.replace(" ", "_") for v in DEFAULT_VARIANTS),
    )
    ap.add_argument("--out", default="ef_diagnostics")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    root = Path(args.bundle_root).resolve()
    files = [str(root / "configs" / c) for c in args.configs.split()] + [str(root / "configs" / "evaluate.yaml")]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(
        {"bundle_root": str(root), "dataset_dir": args.dataset_dir, "eval_split": args.split, "num_workers": 0}
    )
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_state_dict(args.model_path))
    datalist = parser.get_parsed_content("evaluate#video_datalist")
    if args.max_videos:
        datalist = datalist[: args.max_videos]
        parser["evaluate#video_dataset#data"] = datalist
    dataset = parser.get_parsed_content("evaluate#video_dataset")
    inferer = parser.get_parsed_content("evaluate#video_inferer")
    names = [n.replace("_", " ") for n in args.variants.split()] if args.variants else None
    variants = [v for v in DEFAULT_VARIANTS if names is None or v.name in names]
    if not variants:
        ap.error(f"no known variant in {args.variants!r}")

    df = diagnose_video_ef(network, dataset, datalist, inferer, args.device, variants, args.dataset_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "per_video.csv", index=False)
    summary = summarise_variants(df)
    summary.to_csv(out / "summary.csv", index=False)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})")
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
