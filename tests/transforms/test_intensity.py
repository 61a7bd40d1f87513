"""Colour jitter, CLAHE and blur with one draw per clip; normalize_clip by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from medssl_monai.methods.ucl import normalize_frames
from medssl_monai.transforms.device import device_constant
from medssl_monai.transforms.intensity import (
    ECHONET_MEAN,
    ECHONET_STD,
    NormalizeClipd,
    RandClipCLAHEd,
    RandClipColorJitterd,
    RandClipGaussianBlurd,
    clahe_frames,
    color_jitter_frames,
    normalize_clip,
)


def _identical_frames_clip(t: int = 5, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    frame = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, 1, h, w), dtype=np.uint8))
    return frame.repeat(1, t, 1, 1)


def _assert_frames_identical(clip: torch.Tensor) -> None:
    for i in range(1, clip.shape[1]):
        assert torch.equal(clip[:, i], clip[:, 0])


# ----------------------------------------------------------------------------------------------- normalisation


def test_normalize_clip_hand_values():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).repeat(2, 1, 1, 1)  # C=2, T=1, 1 x 3
    y = normalize_clip(x, mean=(0.5, 0.2), std=(0.25, 0.1))
    assert y.dtype == torch.float32
    assert y[0, 0, 0].tolist() == pytest.approx([-2.0, -1.2, 2.0], abs=1e-6)  # (v/255 - 0.5) / 0.25
    assert y[1, 0, 0].tolist() == pytest.approx([-2.0, 0.0, 8.0], abs=1e-6)  # (v/255 - 0.2) / 0.1


def test_normalize_clip_batch_and_echonet_defaults():
    x = torch.zeros(2, 3, 4, 5, 5, dtype=torch.uint8)
    x[1] = 255
    y = normalize_clip(x)
    assert tuple(y.shape) == (2, 3, 4, 5, 5)
    for c in range(3):
        assert float(y[0, c, 0, 0, 0]) == pytest.approx(-ECHONET_MEAN[c] / ECHONET_STD[c], rel=1e-6)
        assert float(y[1, c, 3, 4, 4]) == pytest.approx((1 - ECHONET_MEAN[c]) / ECHONET_STD[c], rel=1e-6)
    assert float(y[0, 0, 0, 0, 0]) == pytest.approx(-0.6514828, rel=1e-6)  # -0.12741163 / 0.19557191


def test_normalize_clip_scales_and_errors():
    x = torch.full((1, 1, 1, 1), 0.75)
    assert float(normalize_clip(x, 0.5, 0.25, scale=1.0)) == pytest.approx(1.0)  # float already on [0, 1]
    assert float(normalize_clip(torch.full((1, 1, 1, 1), 191.25), 0.5, 0.25)) == pytest.approx(1.0)  # 0..255 float
    with pytest.raises(ValueError, match="3 values but the clip has 1"):
        normalize_clip(torch.zeros(1, 2, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="C x T x H x W"):
        normalize_clip(torch.zeros(2, 2, 2))


def test_normalisation_constants_are_built_once_per_device_and_dtype():
    """The constants stay on the device (a host copy in every step would synchronise a CUDA step): the second
    call reuses them, including when the first call ran under inference mode and the next one needs autograd."""
    device_constant.cache_clear()
    x = torch.randint(0, 256, (2, 3, 2, 4, 4), dtype=torch.uint8)
    with torch.inference_mode():  # e.g. a validation pass before the first training step
        normalize_clip(x)
        normalize_frames(x.transpose(1, 2))
    built = device_constant.cache_info().misses
    assert built == 4  # scale/std and -mean/std; UCL's mean and std
    xf = x.float().requires_grad_()
    y = normalize_clip(xf)  # saves the cached scale for backward: it must not be an inference tensor
    y.sum().backward()
    frames = normalize_frames(x.transpose(1, 2))
    assert device_constant.cache_info().misses == built
    mean, std = (torch.tensor(v, dtype=torch.float64).reshape(3, 1, 1, 1) for v in (ECHONET_MEAN, ECHONET_STD))
    assert torch.allclose(y.detach().double(), (x.double() / 255 - mean) / std, rtol=0, atol=1e-5)
    assert torch.allclose(xf.grad.double(), (1 / (255 * std)).expand_as(xf), rtol=1e-6, atol=0)
    imagenet = normalize_frames(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert imagenet.flatten().tolist() == pytest.approx([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert frames.shape == (2, 2, 3, 4, 4)
    normalize_clip(x, dtype=torch.float16)  # another dtype: its own constants
    assert device_constant.cache_info().misses == built + 2


def test_normalize_clipd():
    d = NormalizeClipd(keys="image", mean=0.5, std=0.5)({"image": torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)})
    assert torch.allclose(d["image"], torch.ones(1, 2, 2, 2))


# ------------------------------------------------------------------------------------------------ colour jitter


def test_brightness_hand_values_uint8():
    frames = np.array([100, 101, 200], np.uint8).reshape(1, 1, 3, 1)
    out = color_jitter_frames(frames, brightness=1.5, contrast=1, saturation=1, hue=0, order=[0, 1, 2, 3])
    assert out.ravel().tolist() == [150, 151, 255]  # 151.5 truncates (albumentations LUT), 300 clips


def test_contrast_uses_each_frames_own_mean():
    frames = np.zeros((2, 1, 2, 1), np.uint8)
    frames[0, 0] = [[100], [200]]  # mean 150
    frames[1, 0] = [[50], [50]]  # mean 50
    out = color_jitter_frames(frames, brightness=1, contrast=0.5, saturation=1, hue=0, order=[1, 0, 2, 3])
    assert out[0].ravel().tolist() == [125, 175]  # 0.5 * v + 0.5 * 150
    assert out[1].ravel().tolist() == [50, 50]


def test_jitter_float_path_keeps_the_8bit_scale():
    frames = np.array([60.0, 200.0], np.float32).reshape(1, 1, 2, 1)
    out = color_jitter_frames(frames, brightness=2, contrast=1, saturation=1, hue=0, order=[0, 1, 2, 3])
    assert out.dtype == np.float32 and out.ravel().tolist() == [120.0, 255.0]


def test_jitter_one_draw_per_clip():
    clip = _identical_frames_clip()
    t = RandClipColorJitterd(keys="image", prob=1.0)
    changed = 0
    for seed in range(6):
        out = t.set_random_state(seed)({"image": clip})["image"]
        assert out.dtype == torch.uint8 and out.shape == clip.shape
        _assert_frames_identical(out)
        changed += not torch.equal(out, clip)
    assert changed == 6


def test_jitter_grey_clip_stays_grey_and_prob_zero_is_identity():
    grey = _identical_frames_clip()[:1].repeat(3, 1, 1, 1)
    out = RandClipColorJitterd(keys="image", prob=1.0).set_random_state(2)({"image": grey})["image"]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # saturation and hue do nothing to grey
    clip = _identical_frames_clip()
    assert RandClipColorJitterd(keys="image", prob=0.0)({"image": clip})["image"] is clip


def test_jitter_reproducible_and_factor_ranges():
    clip = _identical_frames_clip()
    t = RandClipColorJitterd(keys="image", prob=1.0)
    a = t.set_random_state(4)({"image": clip})["image"]
    p = dict(t.params)
    b = t.set_random_state(4)({"image": clip})["image"]
    assert torch.equal(a, b) and t.params == p
    assert 0.8 <= p["brightness"] <= 1.2 and -0.2 <= p["hue"] <= 0.2 and sorted(p["order"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        RandClipColorJitterd(hue=0.7)


# ------------------------------------------------------------------------------------------------------- CLAHE


def test_clahe_one_draw_per_clip_and_fast_grey_path_exact():
    frame = np.random.default_rng(1).integers(0, 120, (32, 32), dtype=np.uint8)
    grey_rgb = np.repeat(np.repeat(frame[None, :, :, None], 3, axis=-1), 4, axis=0)  # 4 identical frames
    out = clahe_frames(grey_rgb, clip_limit=3.0)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
    lab = cv2.cvtColor(grey_rgb[0], cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    expected = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)  # albumentations' RGB path
    for t in range(4):
        np.testing.assert_array_equal(out[t], expected)
    one = clahe_frames(grey_rgb[..., :1], clip_limit=3.0)  # 1-channel clips: CLAHE directly
    np.testing.assert_array_equal(one[2, ..., 0], clahe.apply(frame))


def test_rand_clahe_transform():
    clip = _identical_frames_clip(h=32, w=32)
    t = RandClipCLAHEd(keys="image", prob=1.0)
    out = t.set_random_state(0)({"image": clip})["image"]
    assert out.dtype == torch.uint8 and 1.0 <= t.limit <= 4.0
    _assert_frames_identical(out)
    assert not torch.equal(out, clip)
    with pytest.raises(TypeError, match="uint8"):
        t({"image": clip.float()})


# -------------------------------------------------------------------------------------------------------- blur


def test_gaussian_blur_one_sigma_per_clip():
    clip = torch.zeros(1, 3, 9, 9, dtype=torch.uint8)
    clip[0, :, 4, 4] = 255
    t = RandClipGaussianBlurd(keys="image", prob=1.0).set_random_state(0)
    out = t({"image": clip})["image"]
    assert out.dtype == torch.uint8 and 0.1 <= t.sigma <= 2.0
    _assert_frames_identical(out)
    k = cv2.getGaussianKernel(3, t.sigma)
    expected = np.rint(255 * (k @ k.T))
    np.testing.assert_allclose(out[0, 0, 3:6, 3:6].numpy(), expected, atol=1)
    assert int(out[0, 0].sum()) == pytest.approx(255, abs=5)
