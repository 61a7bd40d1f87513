"""Motion-keeping pooling: hand-computed statistics, and every encoder kind's per-time features."""

from __future__ import annotations

import pytest
import torch

from medssl_monai.encoders import build_encoder
from medssl_monai.evaluation.temporal import TemporalFeatures, pool_time, pooled_dim


def test_pool_time_hand_computed():
    # one sample, T = 5, D = 2: column 0 is 1..5, column 1 is constant 7
    x = torch.tensor([[[1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [4.0, 7.0], [5.0, 7.0]]])
    out = pool_time(x, quantiles=(0.0, 0.5, 1.0))
    # [mean (2), std (2), q0 (2), q0.5 (2), q1 (2)]; population std of 1..5 is sqrt(2)
    expected = torch.tensor([[3.0, 7.0, 2.0**0.5, 0.0, 1.0, 7.0, 3.0, 7.0, 5.0, 7.0]])
    torch.testing.assert_close(out, expected)
    assert out.shape[1] == pooled_dim(2, (0.0, 0.5, 1.0))
    # a mask leaves padded steps out: the padded 100 changes nothing
    padded = torch.cat([x, torch.tensor([[[100.0, 100.0]]])], dim=1)
    mask = torch.tensor([[True] * 5 + [False]])
    torch.testing.assert_close(pool_time(padded, (0.0, 0.5, 1.0), mask), expected)


def test_pooling_keeps_motion_that_the_mean_loses():
    # two volume curves with the same mean (60 mL) but a large and a small stroke: mean pooling cannot tell them
    t = torch.linspace(0, 6.283, 50)
    big, small = 60 + 20 * torch.sin(t), 60 + 5 * torch.sin(t)
    x = torch.stack([big, small])[:, :, None]
    pooled = pool_time(x)
    assert torch.allclose(pooled[0, 0], pooled[1, 0], atol=0.5)  # the means agree
    assert pooled[0, 1] > 3 * pooled[1, 1]  # the std (and the quantile range) do not
    assert pooled[0, -1] - pooled[0, 2] > 3 * (pooled[1, -1] - pooled[1, 2])


SMALL = {
    # (overrides, clip frames, feature width): the clip-level feature, then D x (mean, std, 5 quantiles)
    "unilvseg": ({"channels": [[4], [8], [8], [16], [16]], "spatial_size": 32, "num_frames": 16}, 16, 16 + 8 * 7),
    "tvrl": (
        {"spatial_size": 16, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_frames": 8},
        8,
        16 + 16 * 7,
    ),
    "ucl": ({"depth": 18, "widen_factor": 0.125, "spatial_size": 32}, 4, 64 + 64 * 7),
    "discovr": (
        {
            "spatial_size": 32,
            "patch_size": 16,
            "hidden_size": 16,
            "mlp_dim": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_frames": 8,
        },
        8,
        16 + 16 * 7,
    ),
}


@pytest.mark.parametrize("kind", list(SMALL))
def test_temporal_features_of_every_kind(kind):
    overrides, frames, dim = SMALL[kind]
    enc = build_encoder(kind, None, seed=0, **overrides)
    feats = TemporalFeatures(enc).eval()
    x = torch.randint(0, 256, (2, 1, frames, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        out = feats(x)
        clip, seq, _ = feats.sequence(x)
    assert out.shape == (2, dim) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, : clip.shape[1]], clip.float())  # the clip-level feature comes first
    expected_steps = {"unilvseg": frames // 4, "tvrl": frames, "ucl": frames, "discovr": frames // 2}[kind]
    assert seq.shape[:2] == (2, expected_steps)
    if kind == "tvrl":  # the clip-level feature is the encoder's own embedding (the temporal CLS)
        with torch.no_grad():
            torch.testing.assert_close(clip, enc(x))
