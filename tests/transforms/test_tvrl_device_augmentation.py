"""TVRL's strong augmentation on the device: each batched op against the worker transform with the same draw
(read back from the worker transform), the parameter sampler's distributions against the worker transforms',
the two-view ``prepare_batch``, the trainer-owned stream, and the bundle's wiring."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd, RandRotated
from scipy import stats

from medssl_monai.engines.sync_guard import assert_no_cuda_sync
from medssl_monai.methods.tvrl import TwoViewPrepareBatch
from medssl_monai.transforms.device import (
    TVRLDeviceAugmentation,
    color_jitter,
    flip,
    gaussian_blur,
    resized_crop,
    rotate,
    sample_tvrl_params,
)
from medssl_monai.transforms.intensity import RandClipColorJitterd, RandClipGaussianBlurd, normalize_clip
from medssl_monai.transforms.spatial import ClipConsistentd
from medssl_monai.transforms.tvrl import (
    AUGMENTATIONS,
    RandClipResizedCropd,
    tvrl_device_augmentation,
    tvrl_strong_augmentation,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _echo_like(t: int = 4, h: int = 112, w: int = 112, seed: int = 0) -> torch.Tensor:
    """``1 x 1 x T x H x W`` grey clip with smooth structure and speckle, like echo frames."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (t, h, w), dtype=np.uint8)
    base = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in noise]).astype(np.float64)
    base = np.clip((base - base.mean()) * 4 + 90 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(base[None, None])


def _diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.cpu().int() - torch.as_tensor(b).cpu().int()).abs()


def _within_one_level(a: torch.Tensor, b: torch.Tensor, fraction: float) -> None:
    d = _diff(a, b)
    assert d.max() <= 1 and (d > 0).float().mean() < fraction, (int(d.max()), float((d > 0).float().mean()))


# ------------------------------------------------------------------------------------ op vs the worker path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_rotate_matches_rand_rotated(device: str, seed: int):
    """Tolerance: within 1 grey level at under 0.5% of the values (interpolation weights rounding)."""
    x = _echo_like(seed=seed)
    rot = RandRotated("image", range_x=math.radians(15), prob=1.0, keep_size=True, padding_mode="zeros")
    worker = ClipConsistentd(rot, keys="image", time_keys="image")
    worker.set_random_state(seed)
    ref = worker({"image": x[0]})["image"]
    out = rotate(x.to(device), torch.tensor([rot.rand_rotate.x], dtype=torch.float64))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    _within_one_level(out[0], ref, 0.005)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,out_size,scale", [((112, 112), 128, (0.08, 1.0)), ((160, 160), 64, (0.5, 1.0))])
def test_resized_crop_matches_rand_clip_resized_cropd(device: str, size: tuple[int, int], out_size: int, scale):
    """Enlarging (echo: boxes of at most 112 to 128) and shrinking (antialiased) boxes, one box per clip.
    Tolerance: within 1 grey level at under 1% of the values (float sums in another order, rounded once)."""
    clips = [_echo_like(h=size[0], w=size[1], seed=s) for s in range(4)]
    worker = RandClipResizedCropd("image", spatial_size=out_size, scale=scale)
    worker.set_random_state(7)
    refs, boxes = [], []
    for clip in clips:
        refs.append(worker({"image": clip[0]})["image"])
        boxes.append(worker.box)
    out = resized_crop(torch.cat(clips).to(device), torch.tensor(boxes), (out_size, out_size))
    assert len(set(boxes)) == 4 and out.shape == (4, 1, 4, out_size, out_size)
    for i in range(4):
        _within_one_level(out[i], refs[i], 0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_flip_matches_rand_flipd(device: str):
    clips = [_echo_like(t=2, h=32, w=32, seed=s) for s in range(8)]
    hf, vf = RandFlipd("image", prob=0.5, spatial_axis=1), RandFlipd("image", prob=0.5, spatial_axis=0)
    worker = ClipConsistentd(Compose([hf, vf]), keys="image", time_keys="image")
    worker.set_random_state(3)
    refs, h, v = [], [], []
    for clip in clips:
        refs.append(worker({"image": clip[0]})["image"])
        h.append(hf._do_transform)
        v.append(vf._do_transform)
    out = flip(torch.cat(clips).to(device), torch.tensor(h), torch.tensor(v))
    assert len({(a, b) for a, b in zip(h, v)}) > 1
    for i in range(8):
        assert torch.equal(out[i].cpu(), refs[i]), i


@pytest.mark.parametrize("device", DEVICES)
def test_brightness_contrast_matches_rand_clip_color_jitterd_exactly(device: str):
    clips = [_echo_like(t=3, h=64, w=64, seed=s) for s in range(6)]
    worker = RandClipColorJitterd("image", brightness=0.8, contrast=0.8, saturation=0.0, hue=0.0, prob=0.8)
    worker.set_random_state(5)
    refs, params = [], []
    for clip in clips:
        refs.append(worker({"image": clip[0]})["image"])
        params.append(dict(worker.params) if worker._do_transform else None)
    draws = {
        "jitter": torch.tensor([p is not None for p in params]),
        "order": torch.tensor([p["order"] if p else [0, 1, 2, 3] for p in params]),
    }
    for k, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)):
        draws[k] = torch.tensor([p[k] if p else neutral for p in params], dtype=torch.float64)
    out = color_jitter(torch.cat(clips).to(device), draws, grey=True)
    for i in range(6):
        assert torch.equal(out[i].cpu(), torch.as_tensor(refs[i])), i


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_blur_matches_rand_clip_gaussian_blurd_exactly(device: str):
    """OpenCV's bit-exact fixed-point blur, reproduced in integers: identical."""
    clips = [_echo_like(t=2, h=48, w=40, seed=s) for s in range(6)]
    worker = RandClipGaussianBlurd("image", kernel_size=3, sigma=(0.1, 2.0), prob=0.5)
    worker.set_random_state(11)
    refs, flags, sigmas = [], [], []
    for clip in clips:
        refs.append(worker({"image": clip[0]})["image"])
        flags.append(worker._do_transform)
        sigmas.append(worker.sigma)
    out = gaussian_blur(torch.cat(clips).to(device), torch.tensor(flags), torch.tensor(sigmas, dtype=torch.float64))
    assert any(flags) and not all(flags)
    for i in range(6):
        assert torch.equal(out[i].cpu(), torch.as_tensor(refs[i])), i


def test_whole_view_matches_the_worker_chain():
    """The five ops chained as :func:`tvrl_strong_augmentation`, with the worker chain's draws. A 1-level
    difference after the rotation moves through the resize and a jitter factor up to 1.8: tolerance mean
    |diff| < 0.05 grey level, 99% of the values within 1 level, none beyond 3."""
    chain = Compose(tvrl_strong_augmentation("image", 128))
    rot, crop, flips, jitter, blur = chain.transforms
    chain.set_random_state(2)
    aug = tvrl_device_augmentation("strong", 128)
    for seed in range(4):
        x = _echo_like(seed=seed)
        ref = chain({"image": x[0]})["image"]
        hf, vf = flips.transform.transforms
        p = sample_tvrl_params(1, (112, 112), torch.Generator().manual_seed(0))
        p.angle[0] = rot.transform.rand_rotate.x
        p.box[0] = torch.tensor(crop.box)
        p.hflip[0], p.vflip[0] = hf._do_transform, vf._do_transform
        p.jitter[0] = jitter._do_transform
        if jitter._do_transform:
            p.brightness[0], p.contrast[0] = jitter.params["brightness"], jitter.params["contrast"]
            p.order[0] = torch.tensor(jitter.params["order"])
        p.blur[0], p.sigma[0] = blur._do_transform, blur.sigma
        d = _diff(aug.apply(x, p)[0], ref).float()
        assert d.mean() < 0.05 and (d <= 1).float().mean() > 0.99 and d.max() <= 3, (seed, d.mean(), d.max())


# --------------------------------------------------------------------------------------- the parameter sampler


@pytest.mark.parametrize("name", ["strong", "oct"])
def test_sampler_distributions_match_the_worker_transforms(name: str):
    """Kolmogorov-Smirnov (p > 0.001) for angle, box side, box position, jitter factors and sigma; rates of the
    flips, jitter and blur within 0.03 of the worker chain's; 4,000 clips each."""
    n = 4000
    chain = Compose(tvrl_strong_augmentation("image", 128, **AUGMENTATIONS[name]))
    rot, crop, flips, jitter, blur = chain.transforms
    hf, vf = flips.transform.transforms
    chain.set_random_state(0)
    w: dict[str, list] = {k: [] for k in ("angle", "side", "top", "hflip", "vflip", "jitter", "b", "c", "blur", "s")}
    for _ in range(n):  # the draws each worker transform makes per clip
        rot.transform.rand_rotate.randomize(None)
        w["angle"].append(rot.transform.rand_rotate.x)
        crop.randomize(None)
        top, _, side, _ = crop.randomize_box(112, 112)
        w["side"].append(side)
        w["top"].append(top)
        hf.randomize(None)
        vf.randomize(None)
        w["hflip"].append(hf._do_transform)
        w["vflip"].append(vf._do_transform)
        jitter.randomize()
        w["jitter"].append(jitter._do_transform)
        if jitter._do_transform:
            w["b"].append(jitter.params["brightness"])
            w["c"].append(jitter.params["contrast"])
        blur.randomize()
        w["blur"].append(blur._do_transform)
        if blur._do_transform:
            w["s"].append(blur.sigma)
    p = tvrl_device_augmentation(name, 128).sample(n, (112, 112))
    assert torch.equal(p.box[:, 2], p.box[:, 3])  # square boxes
    pairs = {
        "angle": p.angle,
        "side": p.box[:, 2],
        "top": p.box[:, 0],
        "b": p.brightness[p.jitter],
        "c": p.contrast[p.jitter],
        "s": p.sigma[p.blur],
    }
    for key, device_draws in pairs.items():
        assert stats.ks_2samp(w[key], device_draws.numpy()).pvalue > 1e-3, key
    for key, flags in {"hflip": p.hflip, "vflip": p.vflip, "jitter": p.jitter, "blur": p.blur}.items():
        assert abs(np.mean(w[key]) - flags.double().mean().item()) < 0.03, key
    assert sorted(set(p.order[0].tolist())) == [0, 1, 2, 3]


def test_mae_view_is_a_flip_only():
    aug = tvrl_device_augmentation("mae", 32, seed=1)
    x = torch.cat([_echo_like(t=2, h=32, w=32, seed=s) for s in range(8)])
    out = aug(x)
    for i in range(8):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    assert not torch.equal(out, x)


# ----------------------------------------------------------------------------- prepare_batch and the stream


def test_two_view_prepare_batch_augments_each_clip_of_both_views_independently():
    x = torch.cat([_echo_like(t=2, h=48, w=48, seed=s) for s in range(3)])
    batch = {"image": x, "image_2": x.clone(), "times": torch.zeros(3, 2), "times_2": torch.ones(3, 2)}
    prepare = TwoViewPrepareBatch(augment=tvrl_device_augmentation("strong", 32, seed=4))
    image, _, _, extra = prepare(batch)
    expected = tvrl_device_augmentation("strong", 32, seed=4)(torch.cat([x, x]))
    assert torch.equal(image, normalize_clip(expected[:3], 0.0, 1.0))
    assert torch.equal(extra["image_2"], normalize_clip(expected[3:], 0.0, 1.0))
    assert not torch.equal(image, extra["image_2"]) and image.shape == (3, 1, 2, 32, 32)
    assert torch.equal(extra["times_2"], batch["times_2"])
    assert prepare.augment.state_dict() == {"seed": 4, "step": 1}


def test_tvrl_device_augmentation_resumes_its_stream():
    x = torch.cat([_echo_like(t=2, h=48, w=48, seed=s) for s in range(4)])
    aug = tvrl_device_augmentation("strong", 32, seed=3)
    outs = [aug(x) for _ in range(3)]
    resumed = tvrl_device_augmentation("strong", 32, seed=3)
    resumed.load_state_dict({"seed": 3, "step": 1})
    for ref in outs[1:]:
        assert torch.equal(resumed(x), ref)
    assert resumed.state_dict() == aug.state_dict() == {"seed": 3, "step": 3}
    with pytest.raises(TypeError, match="uint8"):
        TVRLDeviceAugmentation(32)(x.float())


def _ref(parser: object, key: str) -> str:
    """A raw config reference, with MONAI's "::" written back as "#"."""
    return str(parser[key]).replace("::", "#")


def test_bundle_device_augmentation_draws_as_its_worker_chain():
    """The TVRL pretraining bundle: ``train#augmentation`` has its worker chain's ranges (default and timed
    series), the trainer's ``prepare_batch`` uses it, ``resume.pt`` saves it, the workers only load a per-sample
    seeded window and persist."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from medssl_monai.bundle_tools import config_path

    root = Path(__file__).resolve().parents[2] / "bundles" / "tvrl_echo_ssl_pretraining"
    for extra, name in (([], "strong"), (["timed_series"], "oct")):
        parser = ConfigParser()
        parser.read_config([str(config_path(root, "train"))] + [str(root / "configs" / f"{e}.yaml") for e in extra])
        parser["cache_dir"] = None
        assert parser["augment_on"] == "device" and parser["persistent_workers"] is True
        aug = parser.get_parsed_content("train#augmentation")
        assert aug.kwargs == tvrl_device_augmentation(name, 128).kwargs
        assert parser.get_parsed_content("train#prepare_batch").augment is aug
        assert "'@train#augmentation'" in _ref(parser, "train#resume_handler#save_dict")
        assert "'@train#seeded_dataset'" in _ref(parser, "train#dataloader#dataset")
        assert "'method': '@train#seeded_dataset'" in _ref(parser, "train#handlers")
        assert not any(
            isinstance(t, ClipConsistentd) for t in parser.get_parsed_content("train#preprocessing").transforms
        )
        parser["augment_on"] = "workers"
        assert parser.get_parsed_content("train#prepare_batch", lazy=False).augment is None
        chain = parser.get_parsed_content("train#preprocessing", lazy=False).transforms
        assert sum(isinstance(t, RandClipGaussianBlurd) for t in chain) == 2  # both views, in the workers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tvrl_device_augmentation_does_not_synchronise():
    x = torch.cat([_echo_like(seed=s) for s in range(4)]).pin_memory()
    batch = {"image": x, "image_2": x.clone().pin_memory()}
    prepare = TwoViewPrepareBatch(augment=tvrl_device_augmentation("strong", 128))
    assert_no_cuda_sync(lambda: prepare(batch, torch.device("cuda"), non_blocking=True))


# ------------------------------------------------------------------------------------------------ the probe


def test_probe_view_matches_its_worker_chain():
    """TVRL's finetune augmentation (resized crop, h-flip, jitter) on the device equals the probe's worker chain for
    the same draws: mean |diff| < 0.05 grey level, 99% of the values within 1 level."""
    from medssl_monai.transforms.tvrl import tvrl_probe_augmentation, tvrl_probe_device_augmentation

    chain = Compose(tvrl_probe_augmentation("image", 128))
    crop, flip, jitter = chain.transforms
    chain.set_random_state(3)
    aug = tvrl_probe_device_augmentation(128)
    for seed in range(4):
        x = _echo_like(seed=seed)
        ref = chain({"image": x[0]})["image"]
        p = sample_tvrl_params(1, (112, 112), torch.Generator().manual_seed(0))
        p.box[0] = torch.tensor(crop.box)
        p.hflip[0], p.vflip[0] = flip.transform._do_transform, False
        p.jitter[0] = jitter._do_transform
        p.brightness[0], p.contrast[0] = jitter.params["brightness"], jitter.params["contrast"]
        p.order[0] = torch.tensor(jitter.params["order"])
        p.blur[0] = False
        d = _diff(aug.apply(x, p)[0], ref).float()
        assert d.mean() < 0.05 and (d <= 1).float().mean() > 0.99, (seed, d.mean(), d.max())


def test_probe_sampler_draws_as_the_worker_chain():
    """Rates and ranges of the probe's device draws: crop area 0.9-1 of the frame, h-flip 0.3, no v-flip or blur,
    jitter always with factors in 0.8-1.2."""
    from medssl_monai.transforms.tvrl import tvrl_probe_device_augmentation

    aug = tvrl_probe_device_augmentation(128)
    p = sample_tvrl_params(4000, (112, 112), torch.Generator().manual_seed(0), **aug.kwargs)
    h, w = p.box[:, 2].float(), p.box[:, 3].float()  # boxes are (top, left, h, w)
    assert torch.equal(h, w)  # square, as the worker chain's ratio (1, 1)
    area = h * w / 112**2
    assert area.min() >= 0.9 - 0.02 and area.max() <= 1.0
    assert abs(p.hflip.float().mean().item() - 0.3) < 0.03 and not p.vflip.any() and not p.blur.any()
    assert p.jitter.all()
    for f in (p.brightness, p.contrast):
        assert 0.8 - 1e-6 <= f.min() and f.max() <= 1.2 + 1e-6


def test_probe_bundle_augments_on_the_device_in_the_trainer_only(tiny_data):
    """The probe bundle: the trainer's prepare_batch augments with ``train#augmentation`` (saved in resume.pt) before
    the [0, 1] scaling, validation's does not, the workers only load; ``augment_on: workers`` restores the chain."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[2] / "bundles" / "tvrl_echo_linear_probe"
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.yaml"), str(root / "configs" / "small.yaml")])
    parser.update({"dataset_dir": str(tiny_data["echonet"]), "num_workers": 0, "cache_dir": None})
    assert parser["augment_on"] == "device"
    aug = parser.get_parsed_content("train#augmentation")
    trainer_pb = parser.get_parsed_content("train#augmented_prepare_batch")
    assert trainer_pb.clip_augment is aug and parser.get_parsed_content("train#prepare_batch").clip_augment is None
    assert "'@train#augmentation'" in _ref(parser, "train#resume_handler#save_dict")
    assert _ref(parser, "train#trainer#prepare_batch") == "@train#augmented_prepare_batch"
    chain = parser.get_parsed_content("train#preprocessing").transforms
    assert not any(type(t).__name__ in ("RandClipResizedCropd", "RandClipColorJitterd") for t in chain)
    clip = torch.randint(0, 256, (2, 1, 4, 40, 40), dtype=torch.uint8)
    x, _, _, _ = trainer_pb({"image": clip}, "cpu")
    step = aug.step
    aug.step -= 1  # replay the same draw by hand: augment, then scale to [0, 1]
    expected = aug(clip).float() / 255.0
    assert aug.step == step
    torch.testing.assert_close(x, expected)
    parser["augment_on"] = "workers"
    chain = parser.get_parsed_content("train#preprocessing", lazy=False).transforms
    assert any(type(t).__name__ == "RandClipColorJitterd" for t in chain)
