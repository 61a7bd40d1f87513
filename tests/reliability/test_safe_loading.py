"""Safe loading and writing: plain state_dicts loaded with ``weights_only=True``, atomic writes, key checks."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl_monai.config_checks import check_overrides
from medssl_monai.engines.checkpoint import atomic_torch_save, load_rng_state_dict, rng_state_dict

ROOT = Path(__file__).resolve().parents[2]


def test_every_torch_load_in_the_library_is_weights_only():
    offenders = []
    for path in (ROOT / "medssl_monai").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find("\n\n", m.start())]
            if "weights_only=True" not in call.split(")\n")[0] + call[:400]:
                offenders.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}")
    assert offenders == []


def test_rng_states_round_trip_through_weights_only_load(tmp_path: Path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    atomic_torch_save({"rng": rng_state_dict()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_rng_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1)) == expected


def test_weights_only_refuses_pickled_objects(tmp_path: Path):
    torch.save({"x": Path("/tmp")}, tmp_path / "evil.pt")  # an arbitrary class: needs code to unpickle
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(tmp_path / "evil.pt", weights_only=True)


def test_unknown_override_key_names_it_and_suggests_the_closest(tmp_path: Path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 3\nbatch_size: 2\ntrain: {x: 1}\n")
    check_overrides(cfg, {"epochs": 1, "train#x": 2})
    with pytest.raises(KeyError, match="'epochz'.*did you mean 'epochs'"):
        check_overrides(cfg, {"epochz": 3})
    with pytest.raises(KeyError, match="'zzz'"):
        check_overrides(cfg, ["zzz"])
