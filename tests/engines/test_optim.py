"""Weight-decay parameter groups and the per-iteration cosine schedule of the VideoMAE/DISCOVR reference code."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from medssl_monai.engines.optim import WarmupCosineLR, reference_cosine, weight_decay_groups


def _cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs):
    """The reference's ``utils.cosine_scheduler`` (start_warmup_value 0), restated for the comparison."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(0, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * iters / len(iters)))
    return np.concatenate((warmup, cos))


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4), requires_grad=False)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.attn = nn.MultiheadAttention(4, 2)


def test_weight_decay_groups_exempt_biases_norms_and_tokens():
    outer = nn.Module()
    outer.encoder = _Toy()
    groups = weight_decay_groups(outer, 0.05)
    names = {id(p): n for n, p in outer.named_parameters()}
    decay = sorted(names[id(p)] for p in groups[0]["params"])
    no_decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert decay == ["encoder.attn.in_proj_weight", "encoder.attn.out_proj.weight", "encoder.proj.weight"]
    assert no_decay == [
        "encoder.attn.in_proj_bias",
        "encoder.attn.out_proj.bias",
        "encoder.cls_token",
        "encoder.mask_token",
        "encoder.norm.bias",
        "encoder.norm.weight",
        "encoder.proj.bias",
    ]  # the frozen pos_embed is in neither group
    # the reference compares full names: nested cls_token/mask_token are decayed there
    full = weight_decay_groups(outer, 0.05, match="full")
    assert {names[id(p)] for p in full[0]["params"]} >= {"encoder.cls_token", "encoder.mask_token"}


def test_schedule_matches_the_reference_cosine_scheduler():
    base, final, epochs, steps, warmup = 1.5e-4, 1e-4, 6, 5, 2
    expected = _cosine_scheduler(base, final, epochs, steps, warmup)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [], "weight_decay": 0.0}], lr=base)
    sched = WarmupCosineLR(opt, warmup_steps=warmup * steps, t_total=epochs * steps, min_lr=final)
    got = []
    for _ in range(epochs * steps):
        got.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == got[-1]
        opt.step()
        sched.step()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    # not MONAI's floored cosine: half-way through the decay the lr is (base + min) / 2, not min
    assert abs(reference_cosine(15, base, final, 20, 10) - (base + final) / 2) < 1e-15
    assert reference_cosine(25, base, final, 20, 10) == final
