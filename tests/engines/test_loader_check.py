"""check_loader_nonempty: a training loader with no batch stops the run with the sizes and the fixing override."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from medssl_monai.engines.loader_check import EmptyLoaderError, check_loader_nonempty, loader_sizes


def _loader(n: int, batch_size: int = 4, drop_last: bool = True, **kwargs) -> DataLoader:
    return DataLoader(list(range(n)), batch_size=batch_size, drop_last=drop_last, **kwargs)


def test_a_loader_with_batches_passes_and_counts_them():
    assert check_loader_nonempty(_loader(9)) == 2
    assert check_loader_nonempty(_loader(3, drop_last=False)) == 1  # a partial batch is still a batch


def test_fewer_samples_than_one_batch_with_drop_last_names_sizes_and_override():
    with pytest.raises(EmptyLoaderError, match=r"has 3 samples, fewer than one batch \(batch size 4.*--batch_size 3"):
        check_loader_nonempty(_loader(3), dataset_dir="/data/echo")
    with pytest.raises(EmptyLoaderError, match=r"--dataset_dir at a larger dataset \(/data/echo\)"):
        check_loader_nonempty(_loader(3), dataset_dir="/data/echo")


def test_empty_dataset_names_the_data_override_and_the_filters():
    expected = r"empty \(0 samples, batch size 4\).*--dataset_dir.*--label_fraction 0.1"
    with pytest.raises(EmptyLoaderError, match=expected):
        check_loader_nonempty(_loader(0, drop_last=False), filters={"label_fraction": 0.1})


def test_distributed_sampler_share_is_what_counts():
    loader = _loader(6, sampler=DistributedSampler(list(range(6)), num_replicas=4, rank=0, shuffle=False))
    assert loader_sizes(loader) | {} == {
        "samples": 6, "per_rank": 2, "ranks": 4, "batch_size": 4, "drop_last": True, "batches": 0,
    }
    with pytest.raises(EmptyLoaderError, match=r"6 samples; 2 per rank on 4 ranks.*--batch_size 2"):
        check_loader_nonempty(loader)


def test_iterable_datasets_are_not_checked():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([torch.zeros(1)])

    assert check_loader_nonempty(DataLoader(Stream(), batch_size=4)) is None


@pytest.mark.parametrize(
    "program", ["/x/site-packages/monai/bundle/__main__.py", "/w/medssl_monai/__main__.py", "/venv/bin/medssl"]
)
def test_command_lines_get_a_message_and_exit_status_2(monkeypatch, capsys, program: str):
    monkeypatch.setattr(sys, "argv", [program, "run"])
    with pytest.raises(SystemExit) as info:
        check_loader_nonempty(_loader(3))
    assert info.value.code == 2
    assert "error: the training loader yields no batch" in capsys.readouterr().err


def test_dataset_form_checks_before_the_loader_exists():
    # bundles pass the dataset and the loader's settings: torch's RandomSampler rejects an empty dataset at
    # DataLoader construction, before a check on the loader could run
    assert check_loader_nonempty(list(range(9)), 4, drop_last=True) == 2
    assert check_loader_nonempty(list(range(3)), 4) == 1
    with pytest.raises(EmptyLoaderError, match=r"has 3 samples, fewer than one batch \(batch size 4.*--batch_size 3"):
        check_loader_nonempty(list(range(3)), 4, drop_last=True)
    with pytest.raises(EmptyLoaderError, match=r"empty \(0 samples, batch size 0\)"):
        check_loader_nonempty([], 0)  # a batch size derived from the data: min(batch_size, len(data))
    share = DistributedSampler(list(range(6)), num_replicas=4, rank=1, shuffle=False)
    with pytest.raises(EmptyLoaderError, match=r"2 per rank on 4 ranks.*--batch_size 2"):
        check_loader_nonempty(list(range(6)), 4, drop_last=True, sampler=share)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        check_loader_nonempty(list(range(3)), None)
