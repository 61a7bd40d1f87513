from __future__ import annotations

import pytest
import torch

from medssl_monai.networks.unet import UniLVSegUNet


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_3d_shape_and_parameter_count() -> None:
    torch.manual_seed(0)
    net = UniLVSegUNet().eval()
    # the reference UNet3D rebuilt from MONAI blocks has exactly this many parameters
    assert _count(net) == 18_832_525
    x = torch.randn(1, 3, 32, 64, 64)
    with torch.no_grad():
        y = net(x)
        feats = net.encoder_features(x)
        emb = net.embed(x)
    assert y.shape == (1, 1, 32, 64, 64)
    assert feats.shape == (1, 256, 2, 4, 4)
    assert emb.shape == (1, 256)
    torch.testing.assert_close(emb, feats.mean(dim=(2, 3, 4)))


def test_2d_super_image_variant() -> None:
    net = UniLVSegUNet(spatial_dims=2, channels=((4, 4), (8, 8), (16,))).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 32, 48))
    assert y.shape == (2, 1, 32, 48)
    assert _count(UniLVSegUNet(spatial_dims=2)) == 6_338_779


def test_custom_plan_channels_last_and_backward() -> None:
    net = UniLVSegUNet(channels=((4,), (8, 8), (16,)), out_channels=2)
    x = torch.randn(2, 3, 4, 8, 12).to(memory_format=torch.channels_last_3d)
    y = net(x)
    assert y.shape == (2, 2, 4, 8, 12)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    "shape, match",
    [((1, 3, 30, 64, 64), "divisible by 16"), ((1, 1, 32, 64, 64), "3 input channels"), ((3, 32, 64, 64), "B x C")],
)
def test_bad_input_raises(shape: tuple[int, ...], match: str) -> None:
    net = UniLVSegUNet()
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(shape))


def test_bad_plan_raises() -> None:
    with pytest.raises(ValueError, match="two non-empty stages"):
        UniLVSegUNet(channels=((16,),))
    with pytest.raises(ValueError, match="spatial_dims"):
        UniLVSegUNet(spatial_dims=1)


def test_channels_last_training_step_matches_contiguous() -> None:
    """The bundles train in channels_last_3d on a GPU (``channels_last`` key): checked here, same loss and gradients."""
    torch.manual_seed(0)
    ref = UniLVSegUNet(channels=((4, 4), (8, 8), (16, 16)))
    fast = UniLVSegUNet(channels=((4, 4), (8, 8), (16, 16)))
    fast.load_state_dict(ref.state_dict())
    fast.to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 3, 8, 16, 16)
    target = (torch.rand(2, 1, 8, 16, 16) > 0.5).float()
    losses = []
    for net, inp in ((ref, x), (fast, x.to(memory_format=torch.channels_last_3d))):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inp), target)
        loss.backward()
        losses.append(loss.detach())
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
