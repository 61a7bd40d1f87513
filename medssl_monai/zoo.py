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

The zip travels: it carries the ``medssl_monai`` wheel built from this source tree (``<name>/wheels/``) and an
``INSTALL.md`` (also appended to ``docs/README.md``) with the one ``pip install`` line, so the bundle installs and
runs where only MONAI and PyTorch are (``pip`` fetches the other dependencies the wheel declares).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import Parser
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
    "build_wheel",
    "wheel_metadata",
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
    wheel: str | None = None  # path of the medssl_monai wheel inside the zip


def load_network(
    bundle: str | Path, ckpt_file: str | Path | None = None, config_files: Sequence[str] | None = None
) -> torch.nn.Module:
    """The bundle's ``network_def`` in eval mode, with ``ckpt_file`` loaded.

    Args:
        bundle: the bundle folder.
        ckpt_file: a plain state_dict to load, or None (initial weights).
        config_files: the configs that define ``network_def`` (default: the inference config, else the train one).
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    parser = ConfigParser()
    files = list(config_files or [str(config_path(bundle, "inference") or config_path(bundle, "train"))])
    parser.read_config(files)
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    if ckpt_file is not None:
        try:
            net.load_state_dict(load_state_dict(ckpt_file))
        except RuntimeError as e:
            raise ValueError(
                f"{ckpt_file} does not fit the network_def of {[Path(f).name for f in files]}"
                " (a model trained with small.yaml needs config_files=[inference.yaml, small_inference.yaml]): "
                + str(e).splitlines()[0]
            ) from e
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


_BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "medssl_monai")  # what the wheel is built from


def find_source_tree() -> Path | None:
    """The source tree this ``medssl_monai`` is imported from (editable install or checkout), else None."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "medssl-monai"' in pyproject.read_text():
        return root
    return None


def build_wheel(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """Build the ``medssl_monai`` wheel offline (no build isolation, no index) into ``out_dir``.

    The build inputs are copied to a temporary folder first, so the source tree gets no ``build/`` or
    ``*.egg-info``. ``pip wheel`` is used, else the ``build`` module.

    Args:
        out_dir: where the wheel goes.
        source: the project folder (default: :func:`find_source_tree`).

    Returns:
        The wheel's path.

    Raises:
        FileNotFoundError: no source tree (``medssl_monai`` installed from a wheel: pass that wheel instead).
        RuntimeError: the build failed (with the builder's output) or no builder is installed.
    """
    source = Path(source) if source is not None else find_source_tree()
    if source is None or not (source / "pyproject.toml").is_file():
        raise FileNotFoundError("medssl_monai is not imported from its source tree: give the path of a built wheel")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        src.mkdir()
        for name in _BUILD_INPUTS:
            if (source / name).is_dir():
                shutil.copytree(source / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif (source / name).is_file():
                shutil.copy2(source / name, src / name)
        if importlib.util.find_spec("pip") is not None:
            cmd = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)]
        elif importlib.util.find_spec("build") is not None:
            cmd = ["-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)]
        else:
            raise RuntimeError("building the medssl_monai wheel needs pip or the build module")
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
        wheels = sorted(dist.glob("medssl_monai-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"wheel build failed ({' '.join(cmd[:3])}): {(proc.stdout + proc.stderr)[-2000:]}")
        return Path(shutil.copy2(wheels[0], out_dir / wheels[0].name))


def wheel_metadata(wheel: str | Path) -> dict:
    """``name``, ``version`` and ``requires`` (``Requires-Dist`` without extras) of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    requires = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return {
        "name": meta["Name"],
        "version": meta["Version"],
        "requires_python": meta.get("Requires-Python", ""),
        "requires": requires,
    }


def _install_text(name: str, version: str, wheel: str | None, run_configs: list[str], trained: bool) -> str:
    """The install section of the packaged bundle (``INSTALL.md`` and the end of ``docs/README.md``)."""
    lines = [f"## Install (`{name}` v{version})", ""]
    if wheel:
        meta = wheel_metadata(wheel)
        rel = f"wheels/{Path(wheel).name}"
        lines += [
            f"This bundle runs on the `medssl_monai` library, shipped in this folder as `{rel}`. With Python "
            f"{meta['requires_python']} (MONAI and PyTorch installed or not), from this folder:",
            "",
            "```bash",
            f"pip install {rel}",
            "```",
            "",
            "pip installs the library's dependencies declared in the wheel (from PyPI; offline, install them "
            "first, e.g. `pip install --no-index --find-links <folder of wheels> ...`):",
            "",
            *[f"- `{r}`" for r in meta["requires"]],
            "",
        ]
    else:
        lines += ["Install the `medssl_monai` library first (`pip install medssl-monai`).", ""]
    cfg = run_configs[0] if len(run_configs) == 1 else '"[' + ",".join(f"'{c}'" for c in run_configs) + ']"'
    lines += [
        "Then run the inference (outputs in `eval/inference` unless `--output_dir` is given):",
        "",
        "```bash",
        f"python -m monai.bundle run --config_file {cfg} --bundle_root . --dataset_dir <your data>",
        "```",
        "",
        "`models/model.pt` holds "
        + ("the trained weights" if trained else "untrained (initial) weights")
        + "; `large_files.yml` lists every model file with its md5. Files not in this zip are fetched with "
        "`python -m monai.bundle download_large_files --bundle_path .` (from the `url` of each entry).",
        "",
    ]
    return "\n".join(lines)


def _check(bundle: Path, n: int, config_files: Sequence[str] | None = None) -> dict:
    problems = check_layout(bundle)
    if problems:
        raise ValueError(f"{bundle.name}: " + "; ".join(problems))
    verify_metadata(bundle)
    verify_net(bundle, n=n, config_files=config_files)
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
    config_files: Sequence[str] | None = None,
    weights_url: str = "",
    wheel: bool | str | Path = True,
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
        config_files: the configs defining ``network_def``, relative to the bundle (default: the inference
            config; a model trained with ``small.yaml``: ``configs/inference.yaml``, ``configs/small_inference.yaml``).
        weights_url: the ``url`` of ``models/model.pt`` in ``large_files.yml`` (wins over ``url_prefix``).
        wheel: ``True``: build the ``medssl_monai`` wheel from this source tree and ship it in ``wheels/``; a path:
            ship that wheel; ``False``: no wheel.

    Returns:
        A :class:`PackageReport`.
    """
    bundle = Path(bundle).resolve()
    rel_configs = [
        Path(f).resolve().relative_to(bundle).as_posix() if Path(f).is_absolute() else str(f)
        for f in config_files or []
    ]
    configs = [str(bundle / f) for f in rel_configs] or None
    meta = _check(bundle, n, configs)
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
        net = load_network(bundle, ckpt if trained else None, configs)
        if trained:
            shutil.copy2(ckpt, models / "model.pt")
        else:
            logger.warning("%s: no models/model.pt, packaging untrained weights", name)
            torch.save(net.state_dict(), models / "model.pt")
        shape = network_input_shape(bundle, n=n)
        x = torch.rand(shape)

        export_torchscript(bundle, models / "model.pt", models / "model.ts", input_shape=shape, config_files=configs)
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
            if weights_url and e["path"] == "models/model.pt":
                e["url"] = weights_url
        for e in report.large_files:
            report.exports[Path(e["path"]).suffix.lstrip(".")] = e["path"] if e["in_zip"] else "large_files.yml"
        _write_large_files(stage / "large_files.yml", report.large_files)
        whl = _add_wheel(stage, wheel, meta)
        report.wheel = f"wheels/{whl.name}" if whl else None
        run_configs = rel_configs or [config_path(bundle, "inference").relative_to(bundle).as_posix()]
        install = _install_text(name, version, str(whl) if whl else None, run_configs, trained)
        (stage / "INSTALL.md").write_text(install.replace("## Install", "# Install", 1))
        readme = stage / "docs" / "README.md"
        if readme.is_file():
            readme.write_text(readme.read_text().rstrip("\n") + "\n\n" + install)

        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(stage.rglob("*")):
                if f.is_file():
                    # weights barely compress: store them (fast); deflate the text files
                    kind = zipfile.ZIP_STORED if f.parent == models else zipfile.ZIP_DEFLATED
                    zf.write(f, f.relative_to(stage.parent).as_posix(), compress_type=kind)
    logger.info("%s: wrote %s", name, zip_path)
    return report


def _add_wheel(stage: Path, wheel: bool | str | Path, meta: dict) -> Path | None:
    """Put the ``medssl_monai`` wheel (built, or the one given) in ``stage/wheels``; warn on a version mismatch."""
    if wheel is False:
        return None
    wheels = stage / "wheels"
    if wheel is True:
        whl = build_wheel(wheels)
    else:
        wheels.mkdir(parents=True, exist_ok=True)
        whl = Path(shutil.copy2(wheel, wheels / Path(wheel).name))
    wanted = meta.get("required_packages_version", {}).get("medssl-monai")
    got = wheel_metadata(whl)["version"]
    if wanted and wanted != got:
        logger.warning("metadata requires medssl-monai %s, the shipped wheel is %s", wanted, got)
    return whl


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
