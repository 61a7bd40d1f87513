"""Every method's training loss falls when a tiny model overfits one fixed batch, and does not with a zero lr.

Each test builds the library's own method (or network + prepare_batch + inferer + loss, as the bundle wires them)
at the smallest size the classes allow, trains it with Adam/AdamW on one fixed batch for a few dozen steps and
compares the loss of the first step (before any update) with the mean of the last five. A control run with
``lr=0`` (same seed, so the same masks and draws) shows that the fall comes from the parameter updates and not
from state that moves without them (BatchNorm statistics, EMA teachers, DINO centres, Sinkhorn codes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
from monai.losses import DiceLoss
from tiny_tvrl import tiny_tvrl

from medssl_monai.engines.inferers import TracedFrameInferer
from medssl_monai.engines.prepare import ClipPrepareBatch, MaskedClipPrepareBatch
from medssl_monai.methods.discovr import DISCOVR, VideoMAE
from medssl_monai.methods.tvrl import FRAMEWORKS, TVRLPretraining
from medssl_monai.methods.ucl import UCL
from medssl_monai.networks.resnet import resnet_encoder
from medssl_monai.networks.unet import UniLVSegUNet
from medssl_monai.networks.videovit import VideoViT

Losses = list[dict[str, float]]


def _train(
    step: Callable[[], dict[str, torch.Tensor]],
    params: Iterable[torch.nn.Parameter],
    lr: float,
    steps: int,
    after_step: Callable[[], None] | None = None,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
) -> Losses:
    """Run ``steps`` optimiser steps on ``step()["loss"]``; every step's outputs (before its update) as floats."""
    opt = optimizer([p for p in params if p.requires_grad], lr=lr)
    history: Losses = []
    for _ in range(steps):
        out = step()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if after_step is not None:
            after_step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


def _first(history: Losses, key: str = "loss") -> float:
    """The loss of the untrained model (first step, before its update)."""
    return history[0][key]


def _final(history: Losses, key: str = "loss") -> float:
    """The mean loss of the last five steps (robust to the noise of random masks)."""
    return sum(h[key] for h in history[-5:]) / 5


def _params_moved(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Whether any trainable parameter of ``module`` differs from its snapshot ``before``."""
    return any(not torch.equal(p.detach(), before[n]) for n, p in module.named_parameters() if p.requires_grad)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter of ``module``."""
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ---------------------------------------------------------------------------------------------------- UniLVSeg


def _beating_disk(batch: int = 2, frames: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``uint8`` RGB clip batch ``B x 3 x T x H x W`` of a bright disk whose radius changes over time, and its
    masks ``B x 1 x T x H x W``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clips, masks = [], []
    for i in range(batch):
        radius = 3 + 2 * torch.sin(torch.arange(frames) * 0.8 + i)
        dist = ((yy - size / 2 - i) ** 2 + (xx - size / 2 + i) ** 2).float().sqrt()
        m = dist[None] < radius[:, None, None]
        masks.append(m)
        clips.append((40 + 180 * m.float()).to(torch.uint8))
    image = torch.stack(clips)[:, None].expand(batch, 3, frames, size, size).contiguous()
    return image, torch.stack(masks)[:, None]


def _unet() -> UniLVSegUNet:
    """The UniLVSeg residual UNet with two one-unit stages of 4 and 8 channels."""
    torch.manual_seed(0)
    return UniLVSegUNet(spatial_dims=3, in_channels=3, out_channels=1, channels=((4,), (8,)))


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_unilvseg_temporal_masking_mse_overfits(lr: float) -> None:
    """UniLVSeg pretext (MaskedClipPrepareBatch + UNet + MSE): the loss falls below 0.3x its start; frozen, it stays."""
    net = _unet()
    image, _ = _beating_disk()
    batch = {"image": image, "video_id": ["a", "b"]}
    prepare = MaskedClipPrepareBatch(mask_ratio=0.5, seed=0)  # seeded: the same frames masked every step
    loss_fn = torch.nn.MSELoss()

    def step() -> dict[str, torch.Tensor]:
        inputs, targets = prepare(batch, "cpu")[:2]
        return {"loss": loss_fn(net(inputs), targets)}

    inputs, targets = prepare(batch, "cpu")[:2]
    assert not torch.equal(inputs[:, :1], targets)  # some frames are really masked in the input
    history = _train(step, net.parameters(), lr, steps=30)
    if lr > 0:
        assert _final(history) < 0.3 * _first(history)
    else:
        assert _final(history) == pytest.approx(_first(history), rel=1e-3)


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_unilvseg_sparse_traced_frame_dice_overfits(lr: float) -> None:
    """UniLVSeg segmentation (ClipPrepareBatch index + TracedFrameInferer + batch Dice): the Dice loss on the traced
    frames falls below 0.3x its start; frozen, it stays."""
    net = _unet()
    image, masks = _beating_disk()
    traced = torch.tensor([2, 5])
    label = masks[torch.arange(2), :, traced].to(torch.uint8)  # B x 1 x H x W: the traced frames' masks only
    batch = {"image": image, "label": label, "traced": traced}
    prepare = ClipPrepareBatch(label_key="label", index_key="traced")
    inferer = TracedFrameInferer()
    loss_fn = DiceLoss(sigmoid=True, batch=True)  # the bundle's loss

    def step() -> dict[str, torch.Tensor]:
        inputs, targets, args, kwargs = prepare(batch, "cpu")
        pred = inferer(inputs, net, *args, **kwargs)
        assert pred.shape == targets.shape == (2, 1, 16, 16)
        return {"loss": loss_fn(pred, targets)}

    history = _train(step, net.parameters(), lr, steps=30)
    if lr > 0:
        assert _final(history) < 0.3 * _first(history)
    else:
        assert _final(history) == pytest.approx(_first(history), rel=1e-3)


# ---------------------------------------------------------------------------------------------------------- UCL


@pytest.mark.parametrize("lr", [1e-3, 0.0])
def test_ucl_overfits(lr: float) -> None:
    """UCL (ResNet-18 at width 1/8, intra-video and mixed negatives, EMA key encoder updated every step): the loss
    falls below 0.3x its start; frozen, it stays (the key encoder is then an EMA of an unchanged copy)."""
    torch.manual_seed(0)
    method = UCL(resnet_encoder(18, widen_factor=0.125), out_dim=8, support_size=2, warmup_epochs=0)
    frames = torch.randn(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # B x [a, p, n1, n2] x C x H x W
    before = _snapshot(method.encoder)
    history = _train(lambda: method(frames), method.parameters(), lr, steps=15, after_step=method.update_teacher)
    if lr > 0:
        assert _final(history) < 0.3 * _first(history)
        assert _params_moved(method.encoder, before)
    else:
        assert _final(history) == pytest.approx(_first(history), rel=1e-3)


# --------------------------------------------------------------------------------------------------------- TVRL


def _tvrl(framework: str, decoder_size: int = 16) -> TVRLPretraining:
    """One TVRL framework around a 1-layer, 16-wide spatio-temporal encoder on 4 frames of 16 x 16."""
    # mlm_start_epoch=0: the tvrl framework's masked-feature loss counts from the first step
    return tiny_tvrl(framework, mae_decoder_size=decoder_size, mlm_start_epoch=0, gather_distributed=False)


def _template_clips(batch: int, channels: int, frames: int = 4, size: int = 16) -> torch.Tensor:
    """``B x C x T x H x W``: one fixed random clip under a different gain and offset per sample; per-patch
    normalised pixel targets are then learnable (they are the same for every sample), random pixels are not."""
    template = torch.randn(channels, frames, size, size, generator=torch.Generator().manual_seed(1))
    return torch.stack([template * (1 + 0.5 * i) + i for i in range(batch)])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_tvrl_framework_overfits(framework: str) -> None:
    """Each TVRL framework overfits one batch and a zero-lr run does not: contrastive losses fall below 0.3x their
    start; MAE below 0.5x and under 0.5 (predicting the patch mean scores ~1); for the frameworks with masked
    frame-feature prediction, the contrastive part falls below 0.6x under the default weight 0.5, and the negative
    cosine, trained alone (weight 1, a stationary target), by 0.3 to under -0.4."""
    mae = framework == "mae"
    with_mlm = "mlm" in _tvrl(framework)(*[torch.rand(2, 1, 4, 16, 16)] * 2)
    if mae:
        x = x2 = _template_clips(2, 1)
        plan = {"trained": (3e-3, 80, None), "frozen": (0.0, 80, None)}
    elif with_mlm:
        plan = {"trained": (2e-3, 60, None), "mlm_only": (3e-3, 40, 1.0), "frozen": (0.0, 40, None)}
    else:
        plan = {"trained": (1e-3, 40, None), "frozen": (0.0, 40, None)}
    if not mae:
        g = torch.Generator().manual_seed(1)
        x, x2 = torch.rand(4, 1, 4, 16, 16, generator=g), torch.rand(4, 1, 4, 16, 16, generator=g)
    times = torch.arange(4.0).expand(x.shape[0], 4)
    runs = {}
    for name, (lr, steps, mlm_weight) in plan.items():
        method = _tvrl(framework, decoder_size=32 if mae else 16)
        if mlm_weight is not None:
            method.mlm_weight = mlm_weight
        before = _snapshot(method.encoder)
        torch.manual_seed(2)  # the same masks in every run

        def step(method: TVRLPretraining = method) -> dict[str, torch.Tensor]:
            return method(x, x2, times=times, times_2=times + 3)

        runs[name] = _train(step, method.parameters(), lr, steps)
        assert _params_moved(method.encoder, before) == (lr > 0)
    trained, frozen = runs["trained"], runs["frozen"]
    if with_mlm:  # (1 - w) contrastive + w NegCos(pred, target) on the masked frames (NegCos in [-1, 1])
        assert _final(trained, "contrastive") < 0.6 * _first(trained, "contrastive")
        mlm_only = runs["mlm_only"]
        assert _final(mlm_only, "mlm") < min(_first(mlm_only, "mlm") - 0.3, -0.4)
        assert _final(frozen, "contrastive") > 0.8 * _first(frozen, "contrastive")
        assert _final(frozen, "mlm") > _first(frozen, "mlm") - 0.2
    elif mae:
        assert _final(trained) < min(0.5 * _first(trained), 0.5)
        assert _final(frozen) > 0.9 * _first(frozen)
    else:
        assert _final(trained) < 0.3 * _first(trained)
        assert _final(frozen) == pytest.approx(_first(frozen), rel=1e-3)


# ------------------------------------------------------------------------------------------------------ DISCOVR

_VIT = {
    "img_size": 16,
    "num_frames": 4,
    "patch_size": 8,
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 1,
    "num_heads": 2,
}


def test_discovr_overfits() -> None:
    """DISCOVR (tiny ViT, DINO heads and prototypes, EMA teachers at 0.996 every step): the cluster-distillation loss
    falls below 0.6x its start while a zero-lr run's does not, and the total loss ends below 0.9x the zero-lr run's.

    The total is not compared with its own start: the DINO terms start artificially low (the teachers are copies of
    the students and the centres are zero) and rise for a few steps as the centres move, with or without learning.
    """
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    runs = {}
    for lr in (3e-3, 0.0):
        torch.manual_seed(0)
        method = DISCOVR(
            VideoViT(**_VIT),
            decoder_dim=8,
            decoder_depth=1,
            decoder_num_heads=2,
            dino_out_dim=32,
            dino_hidden_dim=16,
            dino_bottleneck_dim=8,
            num_prototypes=6,
            num_local_views=2,
            num_image_views=2,
            global_mask_ratio=0.5,
            local_mask_ratio=0.5,
            image_mask_ratio=0.5,
        )
        before = _snapshot(method.encoder)
        runs[lr] = _train(
            lambda method=method: method(x),
            method.parameters(),
            lr,
            steps=40,
            after_step=method.update_teacher,
            optimizer=torch.optim.AdamW,
        )
        assert _params_moved(method.encoder, before) == (lr > 0)
    trained, frozen = runs[3e-3], runs[0.0]
    assert _first(trained) == pytest.approx(_first(frozen))  # same model, same masks
    assert _final(trained, "loss_cluster") < 0.6 * _first(trained, "loss_cluster")
    assert _final(frozen, "loss_cluster") > 0.8 * _first(frozen, "loss_cluster")
    assert _final(trained) < 0.9 * _final(frozen)


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_videomae_overfits(lr: float) -> None:
    """DISCOVR's VideoMAE-only variant: the norm-pixel MSE falls below 0.5x its start and under 0.5 (predicting the
    tubelet mean scores ~1); with a zero lr it stays above 0.9x its start."""
    torch.manual_seed(0)
    method = VideoMAE(VideoViT(**_VIT), decoder_dim=32, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5)
    x = _template_clips(2, 3)
    before = _snapshot(method.encoder)
    torch.manual_seed(2)
    history = _train(lambda: method(x), method.parameters(), lr, steps=60, optimizer=torch.optim.AdamW)
    if lr > 0:
        assert _final(history) < min(0.5 * _first(history), 0.5)
        assert _params_moved(method.encoder, before)
    else:
        assert _final(history) > 0.9 * _first(history)
