"""Checks every bundle must pass (the model-zoo CI, offline): metadata, version/changelog, net in/out, export.

Used by ``tests/bundles/test_bundles.py`` over every folder under ``bundles/`` and by the packaging command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "SCHEMA_FILE",
    "find_bundles",
    "config_path",
    "train_configs",
    "check_layout",
    "verify_metadata",
    "network_input_shape",
    "verify_net",
    "export_torchscript",
    "load_state_dict",
    "write_results_block",
]

SCHEMA_FILE = Path(__file__).resolve().parent / "resources" / "meta_schema_20240725.json"
REQUIRED_FILES = ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE")


def find_bundles(root: str | Path = "bundles") -> list[Path]:
    """Every bundle folder under ``root`` (a folder with ``configs/metadata.json``)."""
    return sorted(p for p in Path(root).iterdir() if (p / "configs" / "metadata.json").is_file())


def config_path(bundle: str | Path, name: str) -> Path | None:
    """``configs/<name>.yaml`` or ``.json`` of a bundle, or ``None``."""
    for ext in (".yaml", ".json"):
        p = Path(bundle) / "configs" / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def train_configs(bundle: str | Path, small: bool = True) -> list[str]:
    """The train config, plus the CPU ``small`` override when present and asked for."""
    files = [config_path(bundle, "train")]
    if small and config_path(bundle, "small"):
        files.append(config_path(bundle, "small"))
    return [str(f) for f in files if f is not None]


def check_layout(bundle: str | Path) -> list[str]:
    """Missing conventional files and version/changelog problems, as readable lines (empty = fine)."""
    bundle = Path(bundle)
    problems = [f"missing {rel}" for rel in REQUIRED_FILES if not (bundle / rel).is_file()]
    if config_path(bundle, "inference") is None:  # the model zoo's CI looks for one in every bundle
        problems.append("missing configs/inference.yaml")
    if config_path(bundle, "train") and not config_path(bundle, "multi_gpu_train"):
        problems.append("has a train config but no multi_gpu_train config")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if meta.get("version") not in (meta.get("changelog") or {}):
        problems.append(f"version {meta.get('version')!r} has no changelog entry")
    return problems


def verify_metadata(bundle: str | Path) -> None:
    """``monai.bundle.verify_metadata`` against the schema shipped with this package (no download).

    Raises:
        ValueError: naming the bundle and the schema violation.
    """
    from monai.bundle import verify_metadata as _verify

    bundle = Path(bundle)
    try:
        _verify(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA_FILE), create_dir=False)
    except Exception as e:  # monai raises ValidationError wrapped in ValueError or jsonschema's own
        raise ValueError(f"{bundle.name}: metadata does not validate: {e}") from e


def network_input_shape(bundle: str | Path, n: int = 1) -> list[int]:
    """``[1, C, *spatial]`` of the network input declared in the metadata, with ``n`` for the size variable."""
    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    spec = next(iter(meta["network_data_format"]["inputs"].values()))
    spatial = [int(eval(str(s), {"n": n, "p": n})) if not isinstance(s, int) else s for s in spec["spatial_shape"]]
    return [1, int(spec["num_channels"]), *spatial]


def _net_config(bundle: Path) -> list[str]:
    cfg = config_path(bundle, "inference") or config_path(bundle, "train")
    return [str(cfg)]


def verify_net(bundle: str | Path, n: int = 1, config_files: Sequence[str] | None = None, **override) -> None:
    """``monai.bundle.verify_net_in_out network_def`` with the bundle's inference (or train) config."""
    from monai.bundle import verify_net_in_out

    bundle = Path(bundle)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=list(config_files or _net_config(bundle)),
        device="cpu",
        n=n,
        bundle_root=str(bundle),
        **override,
    )


def export_torchscript(
    bundle: str | Path,
    ckpt_file: str | Path,
    filepath: str | Path,
    input_shape: Sequence[int] | None = None,
    config_files: Sequence[str] | None = None,
    **override,
) -> Path:
    """``monai.bundle.ckpt_export network_def`` (traced) from a plain state_dict checkpoint; returns the ``.ts``."""
    from monai.bundle import ckpt_export

    bundle = Path(bundle)
    ckpt_export(
        net_id="network_def",
        filepath=str(filepath),
        ckpt_file=str(ckpt_file),
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=list(config_files or _net_config(bundle)),
        key_in_ckpt="",
        use_trace=True,
        input_shape=list(input_shape or network_input_shape(bundle)),
        bundle_root=str(bundle),
        **override,
    )
    return Path(filepath)


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A plain state_dict from ``path``, loaded with ``weights_only=True`` (no code runs from the file)."""
    return torch.load(path, map_location=map_location, weights_only=True)


RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results_block(readme: str | Path, content: str) -> Path:
    """Replace the text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in a bundle README
    (appending the block if the markers are missing), so experiment scripts keep docs and measurements in step."""
    import re

    readme = Path(readme)
    text = readme.read_text()
    block = f"{RESULTS_BEGIN}\n{content.rstrip()}\n{RESULTS_END}"
    pattern = re.compile(re.escape(RESULTS_BEGIN) + ".*?" + re.escape(RESULTS_END), re.S)
    readme.write_text(pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n")
    return readme
