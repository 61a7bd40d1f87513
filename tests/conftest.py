"""Shared fixtures: tiny synthetic datasets and isolated cache/data folders for every test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each test process takes its share of the cores (torch threads), not all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
    """Keep caches and default synthetic data of the test session out of the user's home."""
    base = tmp_path_factory.mktemp("medssl_env")
    old = {k: os.environ.get(k) for k in ("MEDSSL_CACHE_DIR", "MEDSSL_DATA_DIR", "MEDSSL_SYNTHETIC_SIZE")}
    os.environ["MEDSSL_CACHE_DIR"] = str(base / "cache")
    os.environ["MEDSSL_DATA_DIR"] = str(base / "data")
    os.environ["MEDSSL_SYNTHETIC_SIZE"] = "tiny"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Every synthetic dataset at the ``tiny`` size, written once per test session."""
    from medssl_monai.data.synthetic import make_all

    return make_all(tmp_path_factory.mktemp("synthetic"), seed=0, size="tiny")
