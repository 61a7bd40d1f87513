"""The library installs from a clean checkout, and a packaged bundle installs and runs in a fresh environment.

Nothing is downloaded: the fresh virtual environment sees the third-party packages of the test environment through
a folder of links that leaves out ``medssl_monai`` (its editable install, ``.pth`` files and dist-info), so the
``medssl_monai`` it imports is the one installed from the wheel inside the zip.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch
import yaml
from bounded import run_bounded

from medssl_monai.zoo import load_network, package_bundle, wheel_metadata

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "ucl_us_classification"  # the cheapest inference: a small ResNet frame classifier
SMALL = ["configs/inference.yaml", "configs/small_inference.yaml"]

#: top-level module -> distribution, where the names differ
DIST_OF = {
    "cv2": "opencv-python-headless",
    "ignite": "pytorch-ignite",
    "itk": "itk-io",  # itk-io pulls itk-core, which holds the itk package
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
}
OPTIONAL = {"onnxruntime": "export"}  # imported only by the ONNX export, declared as an extra

needs_pip = pytest.mark.skipif(importlib.util.find_spec("pip") is None, reason="pip is not installed")


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    proc = run_bounded(cmd, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}


def _third_party_imports(package: Path) -> set[str]:
    mods = set()
    for f in package.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "medssl_monai"}


def _dist_name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.lower().replace("_", "-")


@needs_pip
def test_pip_install_from_a_clean_checkout(tmp_path: Path):
    """``pip install .`` of ``git archive HEAD`` installs every module, the schema, and the full dependency list."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    src, target = tmp_path / "src", tmp_path / "target"
    _run(["git", "archive", "-o", str(tmp_path / "head.tar"), "HEAD"], cwd=ROOT)
    with tarfile.open(tmp_path / "head.tar") as tf:
        tf.extractall(src, filter="data")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-compile",
          "--target", str(target), str(src)])  # fmt: skip

    shipped = {p.relative_to(src).as_posix() for p in (src / "medssl_monai").rglob("*") if p.is_file()}
    installed = {p.relative_to(target).as_posix() for p in (target / "medssl_monai").rglob("*") if p.is_file()}
    assert shipped and shipped <= installed, f"not installed: {sorted(shipped - installed)}"
    assert "medssl_monai/resources/meta_schema_20240725.json" in installed

    (meta_file,) = target.glob("medssl_monai-*.dist-info/METADATA")
    meta = Parser().parsestr(meta_file.read_text())
    requires = meta.get_all("Requires-Dist")
    runtime = {_dist_name(r) for r in requires if "extra ==" not in r}
    assert {"torch", "monai", "scipy", "itk-io", "nibabel", "jsonschema"} <= runtime
    missing = {m: DIST_OF.get(m, m) for m in _third_party_imports(src / "medssl_monai") if m not in OPTIONAL}
    assert {m: d for m, d in missing.items() if d not in runtime} == {}, "imported but not declared"
    for module, extra in OPTIONAL.items():
        assert any(_dist_name(r) == module and f'extra == "{extra}"' in r for r in requires), module
    assert meta["Name"] == "medssl-monai" and (target / "medssl_monai" / "cli.py").is_file()


@needs_pip
def test_packaged_bundle_installs_and_runs_in_a_fresh_venv(tiny_data, tmp_path: Path):
    """The zip carries the wheel and the install line; unpacked outside the repository, pip installs the wheel
    into a fresh virtual environment and that environment runs the inference config on the packaged weights."""
    bundle = tmp_path / "src" / BUNDLE
    shutil.copytree(ROOT / "bundles" / BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    net = load_network(bundle, None, [str(bundle / c) for c in SMALL])
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    url = "https://example.org/ucl/model.pt"
    report = package_bundle(bundle, tmp_path / "dist", onnx=False, config_files=SMALL, weights_url=url)
    assert report.trained and report.wheel and report.wheel.startswith("wheels/medssl_monai-")

    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(report.zip_path) as zf:
        zf.extractall(unpacked)
    root = unpacked / BUNDLE
    wheel = root / report.wheel
    line = f"pip install {report.wheel}"
    assert line in (root / "INSTALL.md").read_text() and line in (root / "docs" / "README.md").read_text()
    assert "scipy>=" in (root / "INSTALL.md").read_text()
    assert wheel_metadata(wheel)["name"] == "medssl-monai"
    entries = {e["path"]: e for e in yaml.safe_load((root / "large_files.yml").read_text())["large_files"]}
    model_md5 = hashlib.md5((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert entries["models/model.pt"] == {"path": "models/model.pt", "url": url, "hash_val": model_md5,
                                          "hash_type": "md5"}  # fmt: skip
    assert hashlib.md5((root / "models" / "model.pt").read_bytes()).hexdigest() == model_md5

    # a fresh venv; the test environment's third-party packages through links, medssl_monai left out
    venv, view = tmp_path / "venv", tmp_path / "site"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    view.mkdir()
    site = Path(torch.__file__).resolve().parents[1]
    for entry in site.iterdir():
        name = entry.name
        if not (name.startswith(("medssl_monai", "__editable__")) or name.endswith(".pth") or name == "__pycache__"):
            (view / name).symlink_to(entry)
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (fresh_site / "deps.pth").write_text(f"{view}\n")
    env = _clean_env()
    probe = [str(python), "-c", "import importlib.util as u; print(u.find_spec('medssl_monai'))"]
    assert _run(probe, cwd=tmp_path, env=env).strip() == "None"

    # the install line of INSTALL.md (offline: every dependency must already be there)
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", report.wheel], root, env)
    where = _run([str(python), "-c", "import medssl_monai; print(medssl_monai.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.strip()).resolve().is_relative_to(fresh_site.resolve()), where
    assert not Path(where.strip()).resolve().is_relative_to(ROOT)

    out = tmp_path / "out"
    config = "[" + ",".join(f"'{c}'" for c in SMALL) + "]"
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", ".",
           "--dataset_dir", str(tiny_data["ultrasound"]), "--output_dir", str(out), "--num_workers", "0",
           "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    _run(cmd, cwd=root, env=env)
    lines = (out / "video_predictions.csv").read_text().splitlines()
    assert lines[0].startswith("video_id") and len(lines) > 1
