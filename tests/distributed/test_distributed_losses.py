"""Losses that need global negatives or statistics: two gloo processes on the CPU == one process, same global batch.

Every rank builds the same global inputs from one seed and feeds its half (rows ``r*n : (r+1)*n``); the parent
computes the single-process reference on the whole batch. Checked: TVRL's NT-Xent (loss and the gradient through
``all_gather_with_grad``), UCL's gathered negative bank (mixed negative), DISCOVR's Sinkhorn codes and swapped
prediction, and the DINO centre (two steps, so the second loss uses the all-reduced centre).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from medssl_monai.losses.contrastive import nt_xent
from medssl_monai.losses.dino import DINOLoss
from medssl_monai.losses.sinkhorn import sinkhorn_knopp, swapped_prediction_loss
from medssl_monai.methods.ucl import UCL

WORLD = 2
N = 4  # samples per rank; the global batch is WORLD * N
K_NEG = 2  # UCL intra-video negatives per sample


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b = WORLD * N
    return {
        "z0": torch.randn(b, 16, generator=g),
        "z1": torch.randn(b, 16, generator=g),
        "scores_a": torch.randn(b, 5, generator=g),
        "scores_b": torch.randn(b, 5, generator=g),
        "student": torch.randn(2, 2, b, 6, generator=g),  # step x view x B x K
        "teacher": torch.randn(2, b, 6, generator=g),  # step x B x K
        "frames": torch.randn(b, 2 + K_NEG, 3, 8, 8, generator=g),
    }


def _ucl() -> UCL:
    torch.manual_seed(0)  # the same weights on every rank and in the parent, as DDP's initial broadcast ensures
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    return UCL(encoder, feature_dim=16, out_dim=8, support_size=2, warmup_epochs=0, shuffle_bn=True).train()


def _dino() -> DINOLoss:
    return DINOLoss(out_dim=6, warmup_teacher_temp_epochs=0, teacher_temp=0.07).train()


def _losses(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every loss on ``x`` (a rank's half or the whole batch) with whatever process group is active."""
    z0, z1 = x["z0"].clone().requires_grad_(), x["z1"].clone().requires_grad_()
    ntx = nt_xent(z0, z1, temperature=0.1)
    ntx.backward()
    dino = _dino()
    dino_losses = [dino(x["student"][s], x["teacher"][s]) for s in range(2)]
    return {
        "ntxent": ntx.detach(),
        "ntxent_grad0": z0.grad,
        "ntxent_grad1": z1.grad,
        "ucl": _ucl()(x["frames"])["loss"].detach(),
        "codes": sinkhorn_knopp(x["scores_a"], epsilon=0.05, iterations=10),
        "swav": swapped_prediction_loss(x["scores_a"], x["scores_b"]),
        "dino_step1": dino_losses[0].detach(),
        "dino_step2": dino_losses[1].detach(),
        "dino_center": dino.center.clone(),
    }


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        sl = slice(rank * N, (rank + 1) * N)
        half = {
            k: (v[:, :, sl] if k == "student" else v[:, sl] if k == "teacher" else v[sl]) for k, v in _inputs().items()
        }
        torch.save(_losses(half), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory) -> tuple[list[dict], dict]:
    tmp: Path = tmp_path_factory.mktemp("ddp_losses")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert not dist.is_initialized()
    return ranks, _losses(_inputs())


def _rank_mean(ranks: list[dict], key: str) -> torch.Tensor:
    # DDP averages the per-rank losses (their gradients), so the global loss is the mean of the rank losses
    return torch.stack([r[key] for r in ranks]).mean()


def test_ntxent_loss_with_gathered_negatives(two_and_one):
    ranks, one = two_and_one
    torch.testing.assert_close(_rank_mean(ranks, "ntxent"), one["ntxent"])
    # each rank's own loss differs from the global one: the negatives really come from the other rank
    assert not torch.allclose(ranks[0]["ntxent"], one["ntxent"])


def test_ntxent_gradient_through_all_gather_with_grad(two_and_one):
    ranks, one = two_and_one
    for key in ("ntxent_grad0", "ntxent_grad1"):
        # rank r's gradient of its own loss, averaged by DDP (/ WORLD), is the slice of the global gradient
        two = torch.cat([r[key] for r in ranks]) / WORLD
        torch.testing.assert_close(two, one[key])


def test_ucl_negative_bank(two_and_one):
    ranks, one = two_and_one
    torch.testing.assert_close(_rank_mean(ranks, "ucl"), one["ucl"], rtol=1e-5, atol=1e-5)


def test_sinkhorn_codes_and_swapped_prediction(two_and_one):
    ranks, one = two_and_one
    torch.testing.assert_close(torch.cat([r["codes"] for r in ranks]), one["codes"])
    torch.testing.assert_close(_rank_mean(ranks, "swav"), one["swav"])


def test_dino_centre(two_and_one):
    ranks, one = two_and_one
    for r in ranks:  # the centre is the same on every rank and equals the one of the whole batch
        torch.testing.assert_close(r["dino_center"], one["dino_center"])
    torch.testing.assert_close(_rank_mean(ranks, "dino_step1"), one["dino_step1"])
    torch.testing.assert_close(_rank_mean(ranks, "dino_step2"), one["dino_step2"])
