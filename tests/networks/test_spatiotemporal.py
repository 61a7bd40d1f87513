"""The TVRL spatio-temporal encoder: shapes, key-padding mask, time embedding, TorchScript."""

from __future__ import annotations

import math

import pytest
import torch

from medssl_monai.networks.spatiotemporal import (
    ConvStem,
    FrameViT,
    SpatioTemporalEncoder,
    key_padding_mask,
    sinusoidal_embedding,
)


def _encoder(**kw) -> SpatioTemporalEncoder:
    torch.manual_seed(0)
    args = dict(in_channels=1, img_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, max_frames=4)
    args.update(kw)
    return SpatioTemporalEncoder(dropout_rate=0.0, **args).eval()


def test_sinusoidal_embedding_hand_values():
    t = torch.tensor([0.0, 2.0])
    emb = sinusoidal_embedding(t, 4, max_period=100.0)  # freqs 1 and 100^(-1/2) = 0.1
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(2.0), math.cos(0.2), math.sin(2.0), math.sin(0.2)]])
    torch.testing.assert_close(emb, expected)


def test_conv_stem_tokens_and_default_channels():
    stem = ConvStem(1, 384, 16)
    assert [blk.conv.out_channels for blk in stem.convs] == [48, 96, 192, 384]  # TVRL's ViT-S stem
    assert stem(torch.zeros(2, 1, 128, 128)).shape == (2, 64, 384)  # 8 x 8 tokens
    with pytest.raises(ValueError):
        ConvStem(1, 64, 12)


def test_frame_vit_patch_stem_shapes():
    vit = FrameViT(1, 32, 8, 32, num_layers=1, num_heads=4, stem="patch")
    assert vit.patch_tokens(torch.zeros(3, 1, 32, 32)).shape == (3, 16, 32)
    assert vit(torch.zeros(3, 1, 32, 32)).shape == (3, 32)


def test_dropout_as_the_reference():
    # VideoViT: drop_rate 0.1 in the frame blocks, no pos_drop; the temporal ViT_Backbone: drop_rate 0
    net = SpatioTemporalEncoder(1, 32, 8, 32, 1, 4, max_frames=4)
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.frame_encoder.children())
    frame = {m.p for m in net.frame_encoder.blocks.modules() if isinstance(m, torch.nn.Dropout)}
    temporal = {m.p for m in net.temporal.modules() if isinstance(m, torch.nn.Dropout)}
    assert frame == {0.1} and temporal == {0.0}
    switched = SpatioTemporalEncoder(1, 32, 8, 32, 1, 4, max_frames=4, temporal_dropout_rate=0.1)
    assert {m.p for m in switched.temporal.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


def test_encoder_shapes_and_per_frame_features():
    net = _encoder()
    x = torch.rand(2, 1, 4, 32, 32)
    assert net(x).shape == (2, 32)
    frames = net.encode_frames(x)
    assert frames.shape == (2, 4, 32)
    # frames are encoded independently: frame 1 of the clip = the frame ViT on that frame alone
    torch.testing.assert_close(frames[:, 1], net.frame_encoder(x[:, :, 1]))
    assert net.encode_temporal(frames).shape == (2, 5, 32)


def test_time_embedding_changes_output_when_only_intervals_change():
    net = _encoder(use_time_embed=True)
    x = torch.rand(1, 1, 4, 32, 32)
    regular = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    irregular = torch.tensor([[0.0, 0.3, 2.5, 3.0]])  # same images, same order, other intervals
    with torch.no_grad():
        assert not torch.allclose(net(x, regular), net(x, irregular), atol=1e-5)
        # default times are the frame index
        torch.testing.assert_close(net(x), net(x, regular))
    no_te = _encoder(use_time_embed=False)
    with torch.no_grad():
        torch.testing.assert_close(no_te(x, regular), no_te(x, irregular))


def test_key_padding_mask_hides_padded_frames():
    assert key_padding_mask(torch.tensor([[False, True]])).tolist() == [[[[True, False, True]]]]
    net = _encoder()
    x = torch.rand(1, 1, 4, 32, 32)
    mask = torch.tensor([[False, True, True, True]])
    y = x.clone()
    y[:, :, 0] = torch.rand(1, 1, 32, 32)  # change only the padded frame
    with torch.no_grad():
        torch.testing.assert_close(net(x, frame_mask=mask), net(y, frame_mask=mask))
        assert not torch.allclose(net(x), net(y))


def test_position_embedding_is_added_out_of_place():
    net = _encoder()
    frames = torch.rand(1, 4, 32)
    before = frames.clone()
    net.encode_temporal(frames)
    torch.testing.assert_close(frames, before)  # the reference adds it in place (methods.md quirk 4)


def test_torchscript_trace_matches_eager():
    net = _encoder(use_time_embed=True)
    x = torch.rand(2, 1, 4, 32, 32)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(x), net(x))
