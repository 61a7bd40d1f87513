"""Command-line interface, built with ``fire``.

::

    python -m medssl_monai synth --root data            # write every synthetic dataset
    python -m medssl_monai synth --root data/bench --size bench --workers 16 --arrays   # the benchmark-sized set
    python -m medssl_monai cache --root data/echonet    # decode every video once into the clip cache
    python -m medssl_monai inspect data/echonet         # summarise a dataset folder, a video or a datalist
    python -m medssl_monai demo                         # the README's main job
    python -m medssl_monai reproduce unilvseg --dataset_dir /data/EchoNet-Dynamic   # a paper's main table
    python -m medssl_monai package bundles/<name> --out dist/   # zoo zip + TorchScript/ONNX export (docs/zoo.md)
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["CLI", "main", "detect_dataset", "load_datalist"]

logger = logging.getLogger("medssl_monai")


def detect_dataset(root: str | Path) -> str:
    """Which reader a folder needs: ``echonet``, ``camus``, ``frame_folders``, ``timed_series`` or ``arrays``."""
    root = Path(root)
    if (root / "FileList.csv").is_file():
        return "echonet"
    if any(root.glob("patient*/Info_*.cfg")):
        return "camus"
    if (root / "series.csv").is_file():
        return "timed_series"
    if any(p.is_dir() for p in root.glob("Video_*")):
        return "frame_folders"
    if any(root.glob("*.npy")):
        return "arrays"
    raise ValueError(
        f"{root}: not a dataset folder this library can read (no FileList.csv, patient*/Info_*.cfg, "
        "series.csv, Video_* folders or *.npy)"
    )


def load_datalist(root: str | Path, kind: str | None = None, **kwargs) -> list[dict]:
    """The datalist of a dataset folder with the matching reader."""
    root = Path(root).resolve()  # the readers resolve relative side files against the dataset root
    kind = kind or detect_dataset(root)
    if kind == "echonet":
        from medssl_monai.data.echonet import load_echonet_datalist

        labels = root / "SyntheticTruth.csv"
        kwargs.setdefault("labels_csv", labels if labels.is_file() else None)
        return load_echonet_datalist(root, **kwargs)
    if kind == "camus":
        from medssl_monai.data.camus import load_camus_datalist

        return load_camus_datalist(root, **kwargs)
    if kind == "frame_folders":
        from medssl_monai.data.frame_folders import load_frame_folder_datalist

        labels = root / "labels.csv"
        kwargs.setdefault("labels_csv", labels if labels.is_file() else None)
        return load_frame_folder_datalist(root, **kwargs)
    if kind == "timed_series":
        from medssl_monai.data.timed_series import load_timed_series_datalist

        return load_timed_series_datalist(root / "series.csv", **kwargs)
    if kind == "arrays":
        from medssl_monai.data.arrays import load_array_datalist

        return load_array_datalist(root, **kwargs)
    raise ValueError(f"unknown dataset kind {kind!r}")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class CLI:
    """medssl-monai: synthetic data, the clip cache, dataset inspection and the demo."""

    def synth(
        self, root: str = "data", seed: int = 0, size: str = "small", workers: int | None = None, arrays: bool = False
    ) -> dict:
        """Write every synthetic dataset (EchoNet, CAMUS, ultrasound frame folders, timed series) under ``root``.

        ``size``: ``tiny``, ``small`` or ``bench``; ``--workers``: processes (default: every core for ``bench``, else
        1; the files are the same for any number); ``--arrays``: also TVRL's array clips (``root/arrays_50x64``).
        """
        from medssl_monai.data.defaults import default_num_workers
        from medssl_monai.data.synthetic import make_all, make_arrays

        _setup_logging()
        workers = default_num_workers(size) if workers is None else int(workers)
        out = make_all(root, seed=seed, size=size, num_workers=workers)
        if arrays:
            out["arrays"] = make_arrays(Path(root) / "arrays_50x64", out["echonet"], num_workers=workers)
        return {k: str(v) for k, v in out.items()}

    def cache(self, root: str = "data/echonet", cache_dir: str | None = None, num_workers: int = 2) -> dict:
        """Decode every clip source of a dataset folder once into the clip cache."""
        from medssl_monai.data.cache import ClipCache

        _setup_logging()
        items = load_datalist(root)
        sources = sorted({it["image"] for it in items if isinstance(it["image"], str)})
        report = ClipCache(cache_dir).build(sources, num_workers=num_workers)
        for path, err in report["failed"].items():
            logger.warning("cache: skipped %s (%s)", path, err)
        return {"built": report["built"], "cached": report["cached"], "failed": len(report["failed"])}

    def inspect(self, path: str, kind: str | None = None) -> dict:
        """Summarise a dataset folder (reader, items, splits, labels) or a single clip source."""
        from collections import Counter

        _setup_logging("WARNING")
        p = Path(path)
        if p.is_dir():
            try:
                items = load_datalist(p, kind=kind)
            except ValueError:
                items = None
            if items is not None:
                return {
                    "reader": kind or detect_dataset(p),
                    "items": len(items),
                    "splits": dict(Counter(str(it.get("split")) for it in items)),
                    "keys": sorted(items[0]) if items else [],
                    "first": {k: v for k, v in (items[0] if items else {}).items() if k not in ("tracings", "label")},
                }
        from medssl_monai.data.sources import decode_frames

        frames = decode_frames(p)
        return {
            "source": str(p),
            "frames": frames.shape[0],
            "shape_THWC": list(frames.shape),
            "dtype": str(frames.dtype),
            "mean_intensity": float(frames.mean()),
        }

    def run(self, config_file: str | list[str], overrides: str | dict | None = None, **override) -> None:
        """``monai.bundle run`` with a check first: an override key the configs do not define is an error
        (MONAI would silently add it, so ``--epochz 3`` would train with the default epochs).

        ``python -m medssl_monai run --config_file configs/train.yaml --bundle_root . --epochs 2``

        ``--overrides`` takes several at once, as a YAML or JSON mapping or ``key=value`` pairs
        (``--overrides '{dataset_dir: /data/EchoNet-Dynamic, epochs: 2}'``); a ``--key`` flag wins over it.

        ``--tracking mlflow`` uses :func:`~medssl_monai.engines.tracking.mlflow_settings` (MONAI's defaults, fixed
        for our non-decollated trainers) instead of MONAI's own, which cannot log our training loss.
        """
        from monai.bundle import run as bundle_run

        from medssl_monai.config_checks import check_overrides, parse_overrides, tracking_keys

        override = {**parse_overrides(overrides), **override}
        files = [config_file] if isinstance(config_file, str) else list(config_file)
        check_overrides(files, override, allowed=tracking_keys(override["tracking"]) if "tracking" in override else ())
        if override.get("tracking") == "mlflow":
            from medssl_monai.engines.tracking import mlflow_settings

            override["tracking"] = mlflow_settings()
        bundle_run(config_file=files, **override)

    def demo(
        self,
        root: str = "data",
        seed: int = 0,
        size: str = "small",
        out_dir: str = "runs/demo",
        ssl_epochs: int | None = None,
        seg_epochs: int | None = None,
        seg_lr: float | None = None,
        compare_random_init: bool = False,
        log_level: str = "WARNING",
    ) -> None:
        """The README's main job on the synthetic data (see :mod:`medssl_monai.demo`)."""
        from medssl_monai.demo import run_demo

        _setup_logging(log_level)
        run_demo(
            root=root,
            seed=seed,
            size=size,
            out_dir=out_dir,
            ssl_epochs=ssl_epochs,
            seg_epochs=seg_epochs,
            seg_lr=seg_lr,
            compare_random_init=compare_random_init,
        )

    def reproduce(
        self,
        paper: str,
        dataset_dir: str | None = None,
        preset: str | None = None,
        out: str | None = None,
        nproc_per_node: int = 1,
        dry_run: bool = False,
        camus_dir: str | None = None,
        series_dir: str | None = None,
        pretrain_dir: str | None = None,
        labels_csv: str | None = None,
        label_key: str | None = None,
        seeds: int | list[int] | None = None,
        fractions: float | list[float] | None = None,
        arms: str | list[str] | None = None,
        frameworks: str | list[str] | None = None,
        tasks: str | list[str] | None = None,
        folds: int | list[int] | None = None,
        set: str | dict | None = None,
        jobs: int = 1,
    ) -> None:
        """A paper's main experiment as stages of bundle runs, then its table (``DIR/table.md``, ``results.json``,
        ``table.png``); see README "Reproduce a paper".

        ``PAPER``: unilvseg, tvrl, discovr or ucl. ``--dataset_dir`` (without it: the built-in synthetic data, said
        so), ``--preset tiny|cpu|recipe`` (default: recipe with a GPU, else cpu), ``--out DIR`` (default
        ``runs/reproduce/<paper>-<preset>``), ``--nproc_per_node N`` (each training stage under torchrun),
        ``--dry_run`` (the plan: every stage, its command and estimated time), ``--jobs N`` (up to N stages at a
        time, each once the stages it depends on have finished; default 1). UniLVSeg: ``--camus_dir``; TVRL:
        ``--series_dir``, ``--frameworks``, ``--tasks``, ``--seeds``, ``--fractions``; DISCOVR: ``--labels_csv``,
        ``--label_key``, ``--arms``; UCL: ``--pretrain_dir``, ``--arms``, ``--folds``. ``--set '{"pretrain*":
        {"learning_rate": 2e-4}}'``: bundle keys of the stages matching a name pattern. A second run skips finished
        stages whose settings are unchanged; a failed stage is named with its log, and the next run continues there.
        """
        import sys

        from medssl_monai.config_checks import parse_overrides
        from medssl_monai.reproduce import PlanError, StageFailed, reproduce

        _setup_logging("WARNING")
        options = {
            k: v
            for k, v in {
                "labels_csv": labels_csv,
                "label_key": label_key,
                "seeds": seeds,
                "fractions": fractions,
                "arms": arms,
                "frameworks": frameworks,
                "tasks": tasks,
                "folds": folds,
            }.items()
            if v is not None
        }
        try:
            settings = parse_overrides(set) if set is not None else None
        except ValueError as e:
            print(f"error: --set: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        try:
            reproduce(
                str(paper),
                dataset_dir=dataset_dir,
                preset=preset,
                out=out,
                nproc_per_node=int(nproc_per_node),
                dry_run=bool(dry_run),
                camus_dir=camus_dir,
                series_dir=series_dir,
                pretrain_dir=pretrain_dir,
                settings=settings,
                jobs=int(jobs),
                **options,
            )
        except PlanError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except StageFailed as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def package(
        self,
        bundle: str,
        out: str = "dist",
        allow_untrained: bool = False,
        onnx: bool = True,
        max_file_mb: float = 25.0,
        url_prefix: str = "",
        weights_url: str = "",
        config_file: str | list[str] | None = None,
        wheel: bool | str = True,
        log_level: str = "INFO",
    ) -> dict:
        """Check a bundle and write ``<out>/<name>_v<version>.zip`` with TorchScript/ONNX exports (docs/zoo.md).

        The zip carries the ``medssl_monai`` wheel (``--wheel False``: none; ``--wheel <file>``: that one) and an
        ``INSTALL.md`` with its ``pip install`` line. ``--weights_url``: the URL of ``models/model.pt`` in
        ``large_files.yml``; ``--config_file``: the configs defining ``network_def`` for a model trained with
        ``small.yaml`` (``"['configs/inference.yaml','configs/small_inference.yaml']"``).
        """
        from medssl_monai.zoo import package_bundle

        _setup_logging(log_level)
        r = package_bundle(
            bundle,
            out,
            allow_untrained=allow_untrained,
            onnx=onnx,
            max_file_mb=max_file_mb,
            url_prefix=url_prefix,
            weights_url=weights_url,
            config_files=[config_file] if isinstance(config_file, str) else config_file,
            wheel=wheel,
        )
        return {
            "zip": str(r.zip_path),
            "wheel": r.wheel,
            "trained": r.trained,
            "exports": r.exports,
            "onnx_exporter": r.onnx_exporter,
            "max_abs_diff": r.max_abs_diff,
            "skipped": r.skipped,
            "large_files_dir": str(r.large_files_dir) if r.large_files_dir else None,
        }


def main() -> None:
    import fire

    fire.Fire(CLI)
