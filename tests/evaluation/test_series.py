"""medssl_monai.evaluation.series: series embeddings get times / frame masks only where the encoder takes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medssl_monai.evaluation.series import embed_series, relative_times, series_inputs


def _series() -> dict[str, torch.Tensor]:
    """Three hand-made series of 4 steps: full, one padded step, two padded steps (calendar-year times)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 1, 4, 8, 8), generator=g, dtype=torch.uint8)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    times = torch.tensor([[2010.0, 2010.5, 2011.0, 2012.0], [0.0, 2015.0, 2015.25, 2016.0], [0.0, 0.0, 2009.0, 2012.5]])
    image.permute(0, 2, 1, 3, 4)[~mask] = 0  # padded visits are zero images
    return {"image": image, "times": times, "frame_mask": mask}


class _Recorder(nn.Module):
    """Records the keyword inputs of every call; embeds a series as its mean intensity."""

    def __init__(self, kind: str | None = None) -> None:
        super().__init__()
        if kind is not None:
            self.kind = kind
        self.calls: list[dict] = []

    def forward(self, x, times=None, frame_mask=None):
        self.calls.append({"times": times, "frame_mask": frame_mask, "batch": x.shape[0]})
        return x.float().mean(dim=(1, 2, 3, 4))[:, None]


def test_relative_times_start_at_the_first_real_visit():
    s = _series()
    rel = relative_times(s["times"], s["frame_mask"])
    expected = torch.tensor([[0.0, 0.5, 1.0, 2.0], [0.0, 0.0, 0.25, 1.0], [0.0, 0.0, 0.0, 3.5]])
    assert torch.allclose(rel, expected)
    assert torch.equal(relative_times(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 3))


def test_series_inputs_by_kind_and_by_signature():
    def both(x, times, frame_mask):
        return x

    def mask_only(x, frame_mask=None):
        return x

    def kwargs_only(x, **kw):
        return x

    assert series_inputs(lambda v: v) == ()
    assert series_inputs(both) == ("times", "frame_mask")
    assert series_inputs(mask_only) == ("frame_mask",)
    assert series_inputs(kwargs_only) == ()  # **kw names nothing: images only
    assert series_inputs(_Recorder()) == ("times", "frame_mask")  # a module: its forward's signature
    # a kind decides over the signature (ClipEncoder.forward names both for every kind)
    assert series_inputs(_Recorder("tvrl")) == ("times", "frame_mask")
    assert series_inputs(_Recorder("ucl")) == ("frame_mask",)
    for kind in ("unilvseg", "discovr", "videomae"):
        assert series_inputs(_Recorder(kind)) == ()


@pytest.mark.parametrize(
    ("kind", "gets_times", "gets_mask"),
    [("tvrl", True, True), ("ucl", False, True), ("discovr", False, False), ("unilvseg", False, False)],
)
def test_embed_series_passes_times_only_where_taken(kind, gets_times, gets_mask):
    s = _series()
    enc = _Recorder(kind)
    x = embed_series(enc, s, batch_size=2)
    assert x.shape == (3, 1) and x.dtype == np.float32
    assert [c["batch"] for c in enc.calls] == [2, 1]
    for c in enc.calls:
        assert (c["times"] is not None) is gets_times
        assert (c["frame_mask"] is not None) is gets_mask
    if gets_times:  # relative to each series' first real visit, padding 0, in batch order
        got = torch.cat([c["times"] for c in enc.calls])
        assert torch.allclose(got, relative_times(s["times"], s["frame_mask"]))
        raw = _Recorder(kind)
        embed_series(raw, s, batch_size=8, relative=False)
        assert torch.equal(raw.calls[0]["times"], s["times"])
    if gets_mask:
        assert torch.equal(torch.cat([c["frame_mask"] for c in enc.calls]), s["frame_mask"])


def test_embed_series_plain_callable_gets_images_only():
    s = _series()
    seen = []

    def pixels(v):  # a pixel control: any keyword would be a TypeError
        seen.append(v.shape[0])
        return v.float().flatten(1)[:, :5]

    x = embed_series(pixels, s, batch_size=2)
    assert x.shape == (3, 5) and seen == [2, 1]
    # a series without times is fine for an encoder that does not take them
    embed_series(pixels, {"image": s["image"]})
    with pytest.raises(ValueError, match="times"):
        embed_series(_Recorder("tvrl"), {"image": s["image"], "frame_mask": s["frame_mask"]})
    with pytest.raises(ValueError, match="inputs must be among"):
        embed_series(pixels, s, inputs=("time",))
    with pytest.raises(ValueError, match="batch_size"):
        embed_series(pixels, s, batch_size=0)


def _tvrl(use_time_embed: bool):
    from medssl_monai.encoders import wrap_backbone
    from medssl_monai.networks.spatiotemporal import SpatioTemporalEncoder

    torch.manual_seed(0)
    net = SpatioTemporalEncoder(
        in_channels=1,
        img_size=8,
        patch_size=4,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        temporal_layers=1,
        max_frames=4,
        use_time_embed=use_time_embed,
    ).eval()
    return wrap_backbone("tvrl", net, in_channels=1, spatial_size=8, num_frames=4)


def test_tvrl_time_embedding_sees_relative_times():
    from medssl_monai.evaluation.temporal import TemporalFeatures

    s = _series()
    shifted = {**s, "times": torch.where(s["frame_mask"], s["times"] + 7.0, s["times"])}  # another calendar origin
    stretched = {**s, "times": torch.where(s["frame_mask"], s["times"] * 2.0, s["times"])}
    for fn in (_tvrl(True), TemporalFeatures(_tvrl(True)).eval()):
        base = embed_series(fn, s)
        assert np.allclose(base, embed_series(fn, shifted), atol=1e-5)  # only intervals matter
        assert not np.allclose(base, embed_series(fn, stretched), atol=1e-4)  # the intervals are seen
        assert not np.allclose(base, embed_series(fn, s, relative=False), atol=1e-4)
    plain = _tvrl(False)  # no time embedding: the times are passed and ignored
    assert np.allclose(embed_series(plain, s), embed_series(plain, stretched), atol=1e-6)
