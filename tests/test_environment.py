"""The test environment is the locked, tested set of versions (requirements.lock)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_direct_requirement():
    pins = _pins()
    for req_file in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / req_file).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                name = re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0]
                assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} ({req_file}) is not in requirements.lock"


def test_installed_versions_are_the_locked_ones():
    venv = Path(sys.prefix)
    if (venv / ".unlocked").exists():
        pytest.skip("scripts/setup_env.sh fell back to unlocked versions on this Python")
    if not (venv / ".medssl-installed").exists():
        pytest.skip("not the environment scripts/setup_env.sh installs")
    differ = []
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific package this machine does not need
        if installed.split("+")[0] != version:
            differ.append(f"{name}: installed {installed}, locked {version}")
    assert not differ, differ
