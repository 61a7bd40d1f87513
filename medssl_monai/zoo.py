"""Package a bundle as a MONAI-Model-Zoo-style zip, check it, and export TorchScript and ONNX.

::

    python -m medssl_monai package bundles/unilvseg_echo_lv_segmentation --out dist/
    python -m medssl_monai package bundles/tvrl_echo_ssl_pretraining --out dist/ --allow_untrained

writes ``dist/<name>_v<version>.zip`` laid out as the zoo expects (``<name>/configs``, ``<name>/docs``,
``<name>/LICENSE``, ``<name>/large_files.yml``, ``<name>/models`` for the files under the size limit). The zoo
keeps weights out of its repository beyond 25 MB: every model file is listed in ``large_files.yml`` with its
path and md5 hash (the format ``python -m monai.bundle download_large_files`` reads), and a file over
``max_file_mb`` is left out of the zip and put in ``<out>/<name>_v<version>_large_files/`` (publish it at
``url_prefix``). The checks are those of
:mod:`medssl_monai.bundle_tools` (layout, version/changelog, metadata schema, ``verify_net_in_out``); the
TorchScript export is ``monai.bundle.ckpt_export`` and the ONNX export ``torch.onnx.export`` (dynamo exporter,
then the legacy one), each compared with the eager network on a random input of the declared shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medssl_monai.bundle_tools import (
    check_layout,
    config_path,
    export_torchscript,
    load_state_dict,
    network_input_shape,
    verify_metadata,
    verify_net,
)

__all__ = [
    "ZOO_MAX_FILE_MB",
    "PackageReport",
    "load_network",
    "export_onnx",
    "compare_outputs",
    "package_bundle",
]

logger = logging.getLogger(__name__)

ZOO_MAX_FILE_MB = 25.0  # the model zoo refuses files over 25 MB in its repository (large_files.yml instead)
_SKIP_DIRS = {"models", "runs", "eval", "__pycache__", ".ipynb_checkpoints"}


@dataclass
class PackageReport:
    """What :func:`package_bundle` did: the zip, the exports, their max |export - eager| and what was skipped."""

    zip_path: Path
    name: str
    version: str
    trained: bool
    exports: dict[str, str] = field(default_factory=dict)  # format -> path inside the zip, or "large_files.yml"
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # format -> reason
    onnx_exporter: str | None = None  # "dynamo" or "legacy"
    large_files_dir: Path | None = None  # where the files left out of the zip were put, for publication
    large_files: list[dict] = field(default_factory=list)


def load_network(bundle: str | Path, ckpt_file: str | Path | None = None) -> torch.nn.Module:
    """The bundle's ``network_def`` (inference config, else train config) in eval mode, with ``ckpt_file`` loaded."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    parser = ConfigParser()
    parser.read_config(str(config_path(bundle, "inference") or config_path(bundle, "train")))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    if ckpt_file is not None:
        net.load_state_dict(load_state_dict(ckpt_file))
    return net.eval()


def export_onnx(net: torch.nn.Module, example: torch.Tensor, filepath: str | Path, opset_version: int = 18) -> str:
    """``torch.onnx.export`` with a dynamic batch axis: the dynamo exporter first, the legacy one if it fails.

    Returns:
        ``"dynamo"`` or ``"legacy"``, the exporter that worked.

    Raises:
        RuntimeError: with both exporters' errors when the network cannot be exported.
    """
    filepath = Path(filepath)
    errors = []
    for dynamo in (True, False):
        try:
            kwargs: dict = {"input_names": ["input"], "output_names": ["output"], "opset_version": opset_version}
            if dynamo:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
            else:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            with torch.no_grad():
                torch.onnx.export(net, (example,), str(filepath), dynamo=dynamo, external_data=False, **kwargs)
            return "dynamo" if dynamo else "legacy"
        except Exception as e:  # exporter errors are many and version dependent; report them together
            errors.append(f"{'dynamo' if dynamo else 'legacy'}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            filepath.unlink(missing_ok=True)
    raise RuntimeError("; ".join(errors))


def compare_outputs(reference: torch.nn.Module, fmt: str, path: str | Path, x: torch.Tensor) -> float:
    """Max |export(x) - eager(x)| for a TorchScript (``"torchscript"``) or ONNX (``"onnx"``, onnxruntime) file."""
    with torch.no_grad():
        expected = reference(x).float()
    if fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(path), map_location="cpu").eval()(x).float()
    elif fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]).float()
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    if got.shape != expected.shape:
        raise AssertionError(f"{fmt} output shape {tuple(got.shape)} != eager {tuple(expected.shape)}")
    return float((got - expected).abs().max())


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(bundle: Path, n: int) -> dict:
    problems = check_layout(bundle)
    if problems:
        raise ValueError(f"{bundle.name}: " + "; ".join(problems))
    verify_metadata(bundle)
    verify_net(bundle, n=n)
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def package_bundle(
    bundle: str | Path,
    out_dir: str | Path = "dist",
    allow_untrained: bool = False,
    onnx: bool = True,
    max_file_mb: float = ZOO_MAX_FILE_MB,
    url_prefix: str = "",
    n: int = 2,
    atol: float = 1e-4,
) -> PackageReport:
    """Check ``bundle``, export its network and write ``<out_dir>/<name>_v<version>.zip``.

    Args:
        bundle: the bundle folder.
        out_dir: where the zip goes.
        allow_untrained: without ``models/model.pt``, package freshly initialised weights (else an error).
        onnx: also export ONNX (skipped, with the reason in the report, when the network cannot be exported).
        max_file_mb: model files larger than this stay out of the zip, listed in ``large_files.yml`` only.
        url_prefix: where the large files will be published (``url`` of each ``large_files.yml`` entry is
            ``url_prefix/<name>/<path>``; empty: to be filled in at publication).
        n: the value of the size variable ``n`` of the metadata's input shape for the checks and the exports.
        atol: the largest |export - eager| accepted; larger raises ``AssertionError``.

    Returns:
        A :class:`PackageReport`.
    """
    bundle = Path(bundle).resolve()
    meta = _check(bundle, n)
    name, version = bundle.name, str(meta["version"])
    ckpt = bundle / "models" / "model.pt"
    trained = ckpt.is_file()
    if not trained and not allow_untrained:
        raise FileNotFoundError(f"{ckpt} not found: train the bundle first, or pass allow_untrained=True")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{name}_v{version}.zip"
    report = PackageReport(zip_path=zip_path, name=name, version=version, trained=trained)

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        shutil.copytree(bundle, stage, ignore=lambda d, names: [x for x in names if x in _SKIP_DIRS])
        models = stage / "models"
        models.mkdir()
        net = load_network(bundle, ckpt if trained else None)
        if trained:
            shutil.copy2(ckpt, models / "model.pt")
        else:
            logger.warning("%s: no models/model.pt, packaging untrained weights", name)
            torch.save(net.state_dict(), models / "model.pt")
        shape = network_input_shape(bundle, n=n)
        x = torch.rand(shape)

        export_torchscript(bundle, models / "model.pt", models / "model.ts", input_shape=shape)
        report.max_abs_diff["torchscript"] = compare_outputs(net, "torchscript", models / "model.ts", x)
        if onnx:
            try:
                # a batch of 2 to trace: torch.export specialises size-1 axes, which would pin the batch axis
                report.onnx_exporter = export_onnx(net, torch.rand([2, *shape[1:]]), models / "model.onnx")
                report.max_abs_diff["onnx"] = compare_outputs(net, "onnx", models / "model.onnx", x)
            except (RuntimeError, ImportError) as e:
                report.skipped["onnx"] = str(e)
                logger.warning("%s: ONNX export skipped: %s", name, e)
        else:
            report.skipped["onnx"] = "not asked for (onnx=False)"
        for fmt, diff in report.max_abs_diff.items():
            if diff > atol:
                raise AssertionError(f"{name}: {fmt} export differs from the eager network by {diff:.3g} > {atol}")

        large_dir = out_dir / f"{name}_v{version}_large_files"
        shutil.rmtree(large_dir, ignore_errors=True)
        report.large_files, moved = _split_large_files(models, large_dir, name, max_file_mb, url_prefix)
        report.large_files_dir = large_dir if moved else None
        for e in report.large_files:
            report.exports[Path(e["path"]).suffix.lstrip(".")] = e["path"] if e["in_zip"] else "large_files.yml"
        _write_large_files(stage / "large_files.yml", report.large_files)

        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(stage.rglob("*")):
                if f.is_file():
                    # weights barely compress: store them (fast); deflate the text files
                    kind = zipfile.ZIP_STORED if f.parent == models else zipfile.ZIP_DEFLATED
                    zf.write(f, f.relative_to(stage.parent).as_posix(), compress_type=kind)
    logger.info("%s: wrote %s", name, zip_path)
    return report


def _split_large_files(
    models: Path, large_dir: Path, name: str, max_file_mb: float, url_prefix: str = ""
) -> tuple[list[dict], bool]:
    """``large_files.yml`` entries (path, url, md5) for every file in ``models``; moves those over the limit.

    Returns:
        The entries (with ``size_bytes`` and ``in_zip``) and whether any file was moved to ``large_dir/models``.
    """
    entries, moved = [], False
    for f in sorted(models.iterdir()):
        rel = f"models/{f.name}"
        size = f.stat().st_size
        entry = {
            "path": rel,
            "url": f"{url_prefix.rstrip('/')}/{name}/{rel}" if url_prefix else "",
            "hash_val": _md5(f),
            "hash_type": "md5",
            "size_bytes": size,
            "in_zip": size <= max_file_mb * 1024**2,
        }
        if not entry["in_zip"]:
            # the zoo's size rule: referenced by path + hash, not shipped; kept beside the zip for upload
            (large_dir / "models").mkdir(parents=True, exist_ok=True)
            shutil.move(f, large_dir / rel)
            moved = True
        entries.append(entry)
    return entries, moved


def _write_large_files(path: Path, entries: list[dict]) -> None:
    import yaml

    # download_url takes url, filepath, hash_val, hash_type only: keep the other fields out of the file
    keep = ("path", "url", "hash_val", "hash_type")
    path.write_text(yaml.safe_dump({"large_files": [{k: e[k] for k in keep} for e in entries]}, sort_keys=False))
