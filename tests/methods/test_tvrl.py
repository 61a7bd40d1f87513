"""TVRL's six frameworks: each loss on hand-made inputs, the loss-weight schedule, masked-frame targets, LTN, MAE."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_tvrl import TINY_HEADS, tiny_tvrl

from medssl_monai.engines.ssl import SetEpochHandler
from medssl_monai.losses.contrastive import nt_xent
from medssl_monai.methods.tvrl import (
    FRAMEWORKS,
    TIME_AWARE_FRAMEWORKS,
    LatentTimeNavigation,
    TVRLPretraining,
    TwoViewPrepareBatch,
    bernoulli_frame_mask,
    norm_pix_mse,
    patchify,
    random_token_mask,
    tube_mask,
)
from medssl_monai.networks.spatiotemporal import SpatioTemporalEncoder, TimeEmbedding


def _method(framework: str, **kw) -> TVRLPretraining:
    return tiny_tvrl(framework, **kw)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_framework_gives_a_finite_differentiable_loss(framework):
    m = _method(framework, mlm_start_epoch=0)
    x, x2 = torch.rand(3, 1, 4, 16, 16), torch.rand(3, 1, 4, 16, 16)
    out = m(x, x2, times=torch.arange(4.0).expand(3, 4), times_2=torch.arange(4.0).expand(3, 4) + 2)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.encoder.frame_encoder.cls_token.grad is not None


def test_contrastive_frameworks_are_nt_xent_of_the_heads():
    m = _method("csimclr").eval()
    x, x2 = torch.rand(3, 1, 4, 16, 16), torch.rand(3, 1, 4, 16, 16)
    with torch.no_grad():
        expected = nt_xent(m.head(m.encoder(x)), m.head(m.encoder(x2)), 0.1)
        torch.testing.assert_close(m(x, x2)["loss"], expected)


def test_framework_and_encoder_must_agree():
    enc = SpatioTemporalEncoder(1, 16, 8, 16, 1, 2, temporal_layers=1, max_frames=4, use_time_embed=False)
    with pytest.raises(ValueError, match="use_time_embed"):
        TVRLPretraining(enc, "csimclr_te", **TINY_HEADS)
    with pytest.raises(ValueError, match="patch"):
        TVRLPretraining(enc, "mae", **TINY_HEADS)
    with pytest.raises(ValueError, match="use_time_embed"):
        TVRLPretraining(enc, "tvrl_te", **TINY_HEADS)
    with pytest.raises(ValueError):
        TVRLPretraining(enc, "simclr", **TINY_HEADS)
    te = SpatioTemporalEncoder(1, 16, 8, 16, 1, 2, temporal_layers=1, max_frames=4, use_time_embed=True)
    for framework in ("csimclr", "tvrl"):
        with pytest.raises(ValueError, match="_te"):
            TVRLPretraining(te, framework, **TINY_HEADS)


def test_tvrl_defaults_follow_the_reference_run():
    # the reference's scripts/cardiac.sh: TVRL (mlm) with use_time_embed=False; the -TE variant is tvrl_te
    assert TIME_AWARE_FRAMEWORKS == ("csimclr_te", "tvrl_te")
    m = _method("tvrl")
    assert m.framework == "tvrl" and not m.encoder.temporal.use_time_embed
    assert _method("tvrl_te").encoder.temporal.use_time_embed
    # w = 0.5 once the 0-based epoch exceeds 100 (``current_epoch > 100``), 0 up to epoch 100
    m.set_epoch(100)
    assert m.current_mlm_weight() == 0.0
    m.set_epoch(101)
    assert m.current_mlm_weight() == 0.5


def test_tvrl_loss_weight_schedule():
    m = _method("tvrl", mlm_weight=0.5, mlm_start_epoch=2)
    x, x2 = torch.rand(4, 1, 4, 16, 16), torch.rand(4, 1, 4, 16, 16)
    torch.manual_seed(1)
    before = m(x, x2)
    assert before["mlm_weight"].item() == 0.0
    torch.testing.assert_close(before["loss"], before["contrastive"])  # w = 0 before the start epoch

    class _Engine:
        class state:
            epoch = 3  # 1-based: epoch index 2

    SetEpochHandler(m)(_Engine)
    assert m.epoch == 2 and m.current_mlm_weight() == 0.5
    torch.manual_seed(1)
    after = m(x, x2)
    torch.testing.assert_close(after["loss"], 0.5 * after["contrastive"] + 0.5 * after["mlm"])


def test_masked_frame_targets_are_the_unmasked_features():
    m = _method("tvrl")
    x = torch.rand(2, 1, 4, 16, 16)
    frames = m.encoder.encode_frames(x)
    masked = torch.tensor([[False, True, False, False], [True, False, False, True]])
    times, valid = torch.arange(4.0).expand(2, 4), torch.ones(2, 4, dtype=torch.bool)
    pred, target = m.masked_feature_prediction(frames, times, valid, masked)
    # the target is the true frame feature (not mask_token + pos_embed, the reference's in-place corruption)
    torch.testing.assert_close(target, frames.detach())
    assert not target.requires_grad
    assert not torch.allclose(target[masked], m.mask_token.expand(2, 4, -1)[masked])
    assert pred.shape == frames.shape
    # the prediction input hides the masked frames: changing a masked frame's feature does not change pred
    frames2 = frames.detach().clone()
    frames2[masked] += 5.0
    pred2, _ = m.masked_feature_prediction(frames2, times, valid, masked)
    torch.testing.assert_close(pred, pred2)


def test_bernoulli_frame_mask_respects_padding_and_keeps_a_frame():
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = bernoulli_frame_mask(valid, 0.5, g)
        assert not (m & ~valid).any()
        assert (valid & ~m).any(1).all()
    full = bernoulli_frame_mask(valid, 1.0)  # everything drawn: the last valid frame stays visible
    assert full.tolist() == [[False, True, True, False], [True, True, True, False]]


def test_ltn_orthonormal_directions_and_hand_made_shift():
    ltn = LatentTimeNavigation(hidden_size=8, num_directions=3, mlp_hidden=16)
    q = ltn.basis()
    torch.testing.assert_close(q.T @ q, torch.eye(3), atol=1e-5, rtol=0)
    # with the MLP's last layer set to output a = [1, 0, 0], z moves by exactly the first basis vector
    torch.nn.init.zeros_(ltn.mlp[2].weight)
    with torch.no_grad():
        ltn.mlp[2].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    z = torch.randn(2, 8)
    torch.testing.assert_close(ltn(z, torch.tensor([0.0, 3.0])), z + q[:, 0])


def test_ltn_embeds_the_offset_with_a_learnable_time_embedding():
    # the reference's SimCLR LTN: TimeEmbedding(in_dim, learnable=True), sinusoid -> Linear-SiLU-Linear
    ltn = LatentTimeNavigation(hidden_size=8, num_directions=3, mlp_hidden=16)
    assert isinstance(ltn.time_embed, TimeEmbedding) and ltn.time_embed.max_period == 100.0
    z, dt = torch.randn(2, 8), torch.tensor([1.0, -3.0])
    a = ltn.mlp(torch.cat([z, ltn.time_embed(dt.abs())], -1))
    torch.testing.assert_close(ltn(z, dt), z + a @ ltn.basis().T)
    ltn(z, dt).sum().backward()
    assert ltn.time_embed.mlp[0].weight.grad is not None


def test_ltn_uses_the_time_offset():
    m = _method("ltn").eval()
    x, x2 = torch.rand(3, 1, 4, 16, 16), torch.rand(3, 1, 4, 16, 16)
    t = torch.arange(4.0).expand(3, 4)
    with torch.no_grad():
        assert not torch.allclose(m(x, x2, times=t, times_2=t)["loss"], m(x, x2, times=t, times_2=t + 7)["loss"])


def test_mae_tube_mask_patchify_and_norm_pix_loss():
    visible, masked = tube_mask(2, 10, 0.9, torch.device("cpu"))
    assert visible.shape == (2, 1) and masked.sum(1).tolist() == [9, 9]
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 1, 4, 4)  # B C T H W, 2 channels
    p = patchify(x, 2)
    assert p.shape == (1, 1, 4, 8)
    # patch 0 holds rows 0-1, cols 0-1 of both channels, channel last: (r, c, ch)
    assert p[0, 0, 0].tolist() == [0.0, 16.0, 1.0, 17.0, 4.0, 20.0, 5.0, 21.0]
    target = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])  # 1 x 1 x 2 patches x 2 values
    pred = torch.zeros_like(target)
    mask = torch.tensor([[[True, False]]])
    # patch 0 normalised: mean 2, unbiased var 2 -> (-1/sqrt(2), 1/sqrt(2)); squared values 1/(2+eps), mean 1/(2+eps)
    assert math.isclose(norm_pix_mse(pred, target, mask).item(), 1.0 / (2.0 + 1e-6), rel_tol=1e-6)
    assert math.isclose(norm_pix_mse(pred, target, mask, norm_pix=False).item(), 5.0, rel_tol=1e-6)


def test_two_view_prepare_batch():
    batch = {
        "image": torch.full((2, 1, 4, 8, 8), 255, dtype=torch.uint8),
        "image_2": torch.zeros((2, 1, 4, 8, 8), dtype=torch.uint8),
        "times": torch.zeros(2, 4),
        "times_2": torch.ones(2, 4),
        "frame_mask": torch.ones(2, 4, dtype=torch.bool),
        "frame_mask_2": torch.ones(2, 4, dtype=torch.bool),
    }
    x, y, args, kw = TwoViewPrepareBatch()(batch, "cpu")
    assert y is None and args == ()
    assert x.dtype == torch.float32 and x.max().item() == 1.0 and kw["image_2"].max().item() == 0.0
    assert sorted(kw) == ["frame_mask", "frame_mask_2", "image_2", "times", "times_2"]
    torch.testing.assert_close(kw["times_2"], torch.ones(2, 4))


def test_mae_random_token_mask_is_the_reference_masking():
    # mae_helper.py masking_fn: shuffle all T*P tokens, keep round(L * (1 - 0.9)) per sample
    g = torch.Generator().manual_seed(0)
    masked = random_token_mask(64, 8, 64, 0.9, torch.device("cpu"), g)
    assert masked.shape == (64, 8, 64)
    assert ((~masked).flatten(1).sum(1) == round(8 * 64 * 0.1)).all()  # 51 of 512 visible
    per_frame = (~masked).sum(2)
    assert per_frame.min() < per_frame.max()  # not a tube: frames keep different numbers of patches
    assert not (masked == masked[:, :1]).all()
    assert (~random_token_mask(2, 2, 4, 0.99, torch.device("cpu"))).flatten(1).sum(1).tolist() == [1, 1]


def test_mae_default_is_random_masking_and_masked_pixels_do_not_leak():
    m = _method("mae").eval()
    assert m.mae_mask_type == "random"
    x = torch.rand(2, 1, 4, 16, 16)
    preds = []
    m.decoder.register_forward_hook(lambda mod, args, out: preds.append(out.detach()))
    torch.manual_seed(3)
    masked = random_token_mask(2, 4, 4, 0.9, torch.device("cpu"))  # the draw _mae makes after manual_seed(3)
    assert ((~masked).sum(2) == 0).any()  # some frame keeps no patch at all: the CLS alone
    torch.manual_seed(3)
    loss = m(x)["loss"]
    assert torch.isfinite(loss)
    # change only the masked patches' pixels: with the same mask the prediction is unchanged
    pix = masked.reshape(2, 4, 2, 2).repeat_interleave(8, 2).repeat_interleave(8, 3)[:, None]
    x2 = torch.where(pix, torch.rand_like(x), x)
    torch.manual_seed(3)
    m(x2)
    torch.testing.assert_close(preds[0], preds[1])
    tube = _method("mae", mae_mask_type="tube")
    tube(x)["loss"].backward()
    assert tube.encoder.frame_encoder.cls_token.grad is not None
