"""What every paper's plan shares: presets, the data folders, config look-ups and the run context."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from medssl_monai.demo import BUNDLES_DIR
from medssl_monai.reproduce.plan import PlanError

__all__ = [
    "PRESETS",
    "Preset",
    "Context",
    "config_values",
    "defined",
    "shared_encoder_overrides",
    "synthetic_data",
]


@dataclass(frozen=True)
class Preset:
    """A size of the experiment.

    Attributes:
        name: ``tiny`` (seconds, for tests), ``cpu`` (the representation benchmark's settings) or ``recipe``
            (the paper's settings).
        pretrain_config: the pretraining bundles' size file (``None``: ``train.yaml`` alone, the recipe).
        downstream_config: the downstream bundles' size file.
        synthetic_size: the synthetic data size used when no ``--dataset_dir`` is given.
        overrides: applied to every stage whose configs define the key (``epochs`` 1 etc. for ``tiny``).
        n_resamples: bootstrap resamples of the evaluations and the table.
        gflops: assumed sustained GFLOP/s per process for the time estimates before anything was measured.
    """

    name: str
    pretrain_config: str | None
    downstream_config: str | None
    synthetic_size: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    n_resamples: int = 10000
    gflops: float = 1.0


#: assumed sustained throughput on one GPU: about 10% of an H100's dense bf16 peak, the order of the recorded
#: UniLVSeg anchor (docs/performance.md: 439 clips/s = 94 TFLOP/s); an estimate, not a measurement
GPU_GFLOPS = 100_000.0
#: assumed sustained throughput of a CPU run (docs/performance.md measured 0.1-2 GFLOP/s on a shared 2-core machine)
CPU_GFLOPS = 1.0

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        "small.yaml",
        "small.yaml",
        "tiny",
        # one short epoch of everything, no loader processes, no extra monitors: seconds per stage
        {
            "epochs": 1,
            "batch_size": 2,
            "num_workers": 0,
            "val_interval": 1,
            "embedding_every": 0,
            "monitor_every": 0,
        },
        n_resamples=200,
        gflops=CPU_GFLOPS,
    ),
    "cpu": Preset("cpu", "cpu.yaml", "small.yaml", "bench", {}, n_resamples=2000, gflops=CPU_GFLOPS),
    "recipe": Preset("recipe", None, None, "bench", {}, n_resamples=10000, gflops=GPU_GFLOPS),
}


def _configs(size_file: str | None, *extra: str) -> list[str]:
    return ["train.yaml", *([size_file] if size_file else []), *extra]


@dataclass
class Context:
    """Everything a paper's plan is built from.

    Attributes:
        paper: ``unilvseg``, ``tvrl``, ``discovr`` or ``ucl``.
        preset: the :class:`Preset`.
        out: the output folder.
        data: dataset kind (``echonet``, ``camus``, ``ultrasound``, ``timed_series``, ``pretrain_videos``, ...)
            -> folder; from the command line or the built-in synthetic data.
        synthetic: whether the data is the built-in synthetic data.
        nproc: processes per training stage.
        options: the paper's own options (seeds, label fractions, arms, ...).
        stream: where messages go.
        dry_run: only the plan is wanted: the synthetic data is not written.
    """

    paper: str
    preset: Preset
    out: Path
    data: dict[str, Path]
    synthetic: bool
    nproc: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    stream: TextIO = sys.stdout
    dry_run: bool = False

    def pretrain_configs(self, *extra: str) -> list[str]:
        """Config files of a pretraining stage at this preset."""
        return _configs(self.preset.pretrain_config, *extra)

    def downstream_configs(self, *extra: str) -> list[str]:
        """Config files of a downstream stage at this preset."""
        return _configs(self.preset.downstream_config, *extra)

    def overrides(self, bundle: str, configs: Sequence[str], **values: Any) -> dict[str, Any]:
        """``values`` plus the preset's overrides that the bundle's configs define (``values`` win)."""
        keys = defined(bundle, tuple(configs))
        out = {k: v for k, v in self.preset.overrides.items() if k in keys}
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise PlanError(f"{bundle} ({', '.join(configs)}) defines no key {unknown}: cannot override it")
        out.update(values)
        return out

    def say(self, text: str) -> None:
        """Print a message line."""
        print(text, file=self.stream, flush=True)


@functools.cache
def _parser(bundle: str, configs: tuple[str, ...]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / bundle / "configs" / c) for c in configs])
    return parser


def defined(bundle: str, configs: tuple[str, ...]) -> set[str]:
    """Top-level keys the configs define."""
    return set(_parser(bundle, tuple(configs)).get())


def config_values(bundle: str, configs: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """The resolved values of ``keys`` (those the configs define) in the bundle's ``configs``."""
    parser = _parser(bundle, tuple(configs))
    return {k: parser.get_parsed_content(k) for k in keys if k in parser.get()}


def shared_encoder_overrides(
    pretrain_bundle: str,
    pretrain_configs: Sequence[str],
    down_bundle: str,
    down_configs: Sequence[str],
    keys: Sequence[str],
) -> dict[str, Any]:
    """The encoder-shape keys of the pretraining configs that the downstream configs set differently.

    A downstream stage must build the encoder the pretraining trained (``cpu.yaml`` pretrains on 16-frame clips,
    the downstream ``small.yaml`` reads 4); these keys carry the pretraining's values over.
    """
    pre = config_values(pretrain_bundle, pretrain_configs, keys)
    down = config_values(down_bundle, down_configs, keys)
    return {k: v for k, v in pre.items() if k in down and down[k] != v}


def synthetic_data(out: Path, size: str, stream: TextIO, write: bool = True) -> dict[str, Path]:
    """The built-in synthetic datasets at ``size`` under ``out/data`` (written once), announced on ``stream``.

    ``write=False`` (a dry run) returns the folders without writing them (the ``bench`` size takes minutes).
    """
    from medssl_monai.data.defaults import default_num_workers
    from medssl_monai.data.synthetic import make_all
    from medssl_monai.data.synthetic.suite import SIZES

    root = (out / "data" / f"synthetic-{size}").resolve()
    print(
        f"no --dataset_dir: running on the built-in synthetic data ({size} size) in {root} -- a demonstration of "
        "the pipeline, not the paper's data; pass --dataset_dir for a real dataset",
        file=stream,
        flush=True,
    )
    if not write:
        return {kind: root / kind for kind in SIZES[size]}
    made = make_all(root, seed=0, size=size, num_workers=default_num_workers(size))
    return {k: Path(v).resolve() for k, v in made.items()}


def count_series(root: Path, split: str = "TRAIN") -> int:
    """Subjects of ``split`` in a timed-series ``series.csv`` (0 when unreadable: only for estimates)."""
    import csv

    try:
        with open(root / "series.csv", newline="") as f:
            return len({r["subject_id"] for r in csv.DictReader(f) if str(r.get("split", "")).upper() == split})
    except (OSError, KeyError):
        return 0


def count_frame_folders(root: Path) -> tuple[int, int]:
    """``(videos, frames)`` of a frame-folder dataset (``Video_*/`` of JPEG frames; the frames extrapolated from
    the first 20 videos; ``(0, 0)`` when unreadable: only for estimates)."""
    videos = [p for p in root.glob("Video_*") if p.is_dir()]
    frames = sum(len(list(v.glob("*.jpg"))) for v in videos[:20])
    return len(videos), (frames * len(videos)) // max(1, min(20, len(videos)))


def count_echonet(root: Path, split: str) -> int:
    """Videos of ``split`` in an EchoNet-format ``FileList.csv`` (0 when unreadable: only for estimates)."""
    import csv

    try:
        with open(root / "FileList.csv", newline="") as f:
            return sum(1 for row in csv.DictReader(f) if str(row.get("Split", "")).upper() == split)
    except OSError:
        return 0
