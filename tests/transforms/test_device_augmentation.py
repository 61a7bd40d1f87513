"""SimLVSeg's augmentation on the device: each batched op against the worker path with the same draw, the
parameter sampler's distributions, the trainer-owned stream's resume, per-sample window seeding."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, Randomizable, RandRotated, RandSpatialCropd, SpatialPadd

from medssl_monai.data.seeded import SeededSamples, sample_seed
from medssl_monai.engines.prepare import ClipPrepareBatch, MaskedClipPrepareBatch
from medssl_monai.engines.sync_guard import assert_no_cuda_sync
from medssl_monai.transforms.device import (
    DeviceAugmentation,
    clahe,
    color_jitter,
    pad_crop_geometry,
    rotate_pad_crop,
    sample_params,
)
from medssl_monai.transforms.intensity import clahe_frames, color_jitter_frames
from medssl_monai.transforms.spatial import ClipConsistentd

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _echo_like(t: int = 4, h: int = 112, w: int = 112, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """``1 x C x T x H x W`` grey clip (equal channels) with smooth structure and speckle, like echo frames."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (t, h, w), dtype=np.uint8), (0, 0), 3).astype(np.float64)
    base = np.clip((base - base.mean()) * 4 + 90 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.repeat(base[None, None], channels, 1))


def _frames(clip: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(clip.numpy().transpose(1, 2, 3, 0))  # C x T x H x W -> T x H x W x C


def _clip(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))


def _diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.cpu().int() - b.cpu().int()).abs()


# ------------------------------------------------------------------------------------ op vs the worker path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_worker_path_exactly_on_grey_clips(device: str, channels: int):
    x = torch.cat([_echo_like(channels=channels, seed=s) for s in range(6)])
    params = sample_params(6, (112, 112), torch.Generator().manual_seed(1))
    params.jitter[:] = torch.tensor([True, True, True, True, True, False])
    out = color_jitter(x.to(device), params)
    for i in range(6):
        p = params.select([i])
        ref = x[i]
        if bool(p.jitter[0]):
            factors = {k: float(getattr(p, k)[0]) for k in ("brightness", "contrast", "saturation", "hue")}
            ref = _clip(color_jitter_frames(_frames(x[i]), **factors, order=p.order[0].tolist()))
        assert torch.equal(out[i].cpu(), ref), i  # lookup tables in float64, as albumentations' numpy ones


@pytest.mark.parametrize("size", [(32, 32), (16, 112), (8, 200)])
def test_color_jitter_on_colour_clips_is_within_rounding_of_the_worker_path(size: tuple[int, int]):
    """True colour: OpenCV's 8-bit HSV and ``addWeighted`` are reproduced to within rounding; a 1-level
    difference before the hue step can move a pixel to the next of the 180 hue steps (several levels).
    Tolerance: mean |diff| < 0.1 grey level, 99% of the values within 1 level (measured: 0.003, 99.8%).
    The sizes cover rows that OpenCV's ``HSV2RGB`` finishes in its scalar (rounding) loop, in its SIMD
    (truncating) loop and in both, which differ between OpenCV versions and CPUs (4.10-5.0 vs 4.14/5.1)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (8, 3, 2, *size), dtype=np.uint8))
    params = sample_params(8, size, torch.Generator().manual_seed(2), crop=min(size) - 4)
    params.jitter[:] = True
    out = color_jitter(x, params, grey=False)
    for i in range(8):
        p = params.select([i])
        factors = {k: float(getattr(p, k)[0]) for k in ("brightness", "contrast", "saturation", "hue")}
        ref = _clip(color_jitter_frames(_frames(x[i]), **factors, order=p.order[0].tolist()))
        d = _diff(out[i], ref).float()
        assert d.mean() < 0.1 and (d <= 1).float().mean() > 0.99, (i, d.mean(), d.max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(112, 112), (64, 64), (100, 90)])
@pytest.mark.parametrize("channels", [1, 3])
def test_clahe_matches_opencv(device: str, size: tuple[int, int], channels: int):
    """The worker path is ``cv2.createCLAHE`` per frame (RGB grey: on LAB lightness). Tolerance: at most 1 grey
    level, at under 1% of the pixels (measured: identical on the CPU)."""
    x = torch.cat([_echo_like(t=3, h=size[0], w=size[1], channels=channels, seed=s) for s in range(3)])
    params = {
        "clahe": torch.tensor([True, False, True]),
        "clip_limit": torch.tensor([1.0, 2.0, 3.7], dtype=torch.float64),
    }
    out = clahe(x.to(device), params)
    assert torch.equal(out[1].cpu(), x[1])  # not flagged: untouched
    for i in (0, 2):
        ref = _clip(clahe_frames(_frames(x[i]), float(params["clip_limit"][i])))
        d = _diff(out[i], ref)
        assert d.max() <= 1 and (d > 0).float().mean() < 0.01, (i, d.max(), (d > 0).float().mean())
    if channels == 1:  # and the worker helper is OpenCV itself
        direct = cv2.createCLAHE(clipLimit=3.7, tileGridSize=(8, 8)).apply(x[2, 0, 0].numpy())
        assert _diff(out[2, 0, 0], torch.from_numpy(direct)).max() <= 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_rotate_pad_crop_matches_monai(device: str, seed: int):
    """The worker path's ``RandRotated`` + ``SpatialPadd`` + ``RandSpatialCropd`` (folded clip), read back for its
    angle and crop. Tolerance: frames within 1 grey level at under 0.5% of the values (interpolation weights
    rounding differently), masks (nearest) identical at over 99.5% of the pixels."""
    x = _echo_like(t=4, seed=seed)
    mask = torch.from_numpy((np.random.default_rng(seed).random((1, 1, 112, 112)) > 0.5).astype(np.uint8))
    keys = ["image", "label"]
    rotate = RandRotated(
        keys, range_x=math.radians(20), prob=1.0, keep_size=True, mode=["bilinear", "nearest"], padding_mode="zeros"
    )
    crop = RandSpatialCropd(keys, roi_size=(112, 112), random_size=False)
    worker = ClipConsistentd(Compose([rotate, SpatialPadd(keys, spatial_size=(124, 124)), crop]), keys, ("image",))
    worker.set_random_state(seed)
    ref = worker({"image": x[0], "label": mask[0]})
    slices = crop.cropper._slices
    params = {
        "angle": torch.tensor([rotate.rand_rotate.x], dtype=torch.float64),
        "offset": torch.tensor([[slices[0].start, slices[1].start]]),
    }
    image = rotate_pad_crop(x.to(device), params, crop=112)
    label = rotate_pad_crop(mask.to(device), params, crop=112, mode="nearest")
    d = _diff(image[0], ref["image"])
    assert d.max() <= 1 and (d > 0).float().mean() < 0.005
    assert (label[0].cpu() == ref["label"]).float().mean() > 0.995
    assert image.dtype == label.dtype == torch.uint8 and image.shape == (1, 3, 4, 112, 112)


def test_rotate_pad_crop_without_rotation_is_a_pad_and_a_crop():
    x = _echo_like(t=2, h=64, w=64)
    params = {"angle": torch.zeros(1, dtype=torch.float64), "offset": torch.tensor([[0, 12]])}
    out = rotate_pad_crop(x, params, crop=64)  # pad 76: 6 zero rows/columns before
    padded = torch.nn.functional.pad(x, (6, 6, 6, 6))
    assert torch.equal(out, padded[..., 0:64, 12:76])


# --------------------------------------------------------------------------------------- the parameter sampler


def test_sample_params_distributions_match_the_worker_transforms():
    n = 20000
    p = sample_params(n, (112, 112), torch.Generator().manual_seed(0))
    assert abs(p.jitter.double().mean() - 0.5) < 0.02 and abs(p.clahe.double().mean() - 0.5) < 0.02
    for name, (lo, hi) in {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.8, 1.2)}.items():
        v = getattr(p, name)
        assert lo <= v.min() and v.max() <= hi and abs(v.mean() - 1.0) < 0.01, name
    assert -0.2 <= p.hue.min() and p.hue.max() <= 0.2
    assert 1.0 <= p.clip_limit.min() and p.clip_limit.max() <= 4.0 and abs(p.clip_limit.mean() - 2.5) < 0.03
    deg = torch.rad2deg(p.angle)
    assert -20 <= deg.min() and deg.max() <= 20 and abs(deg.mean()) < 0.5
    assert abs(deg.std() - 40 / math.sqrt(12)) < 0.3  # uniform on [-20, 20]
    counts = torch.bincount(p.offset.reshape(-1), minlength=13)
    assert len(counts) == 13 and (counts.double() / (2 * n) - 1 / 13).abs().max() < 0.01  # 0..12, uniform
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(n, 4))  # a permutation per clip
    assert len({tuple(o) for o in p.order.tolist()}) == 24


def test_pad_crop_geometry_follows_spatial_pad():
    assert pad_crop_geometry(112, 112, 124) == (6, 12)
    assert pad_crop_geometry(111, 112, 124) == (6, 12)  # 13 padded: 6 before, 7 after
    assert pad_crop_geometry(200, 112, 124) == (0, 88)  # larger frames are not padded
    with pytest.raises(ValueError):
        pad_crop_geometry(64, 112, 100)


# ----------------------------------------------------------------------------- the trainer-owned generator


def test_device_augmentation_resumes_its_stream():
    x = torch.cat([_echo_like(t=2, h=64, w=64, seed=s) for s in range(4)])
    mask = (x[:, :1, 0] > 100).to(torch.uint8)
    aug = DeviceAugmentation(crop=64, seed=3)
    outs = [aug(x, mask) for _ in range(3)]
    state = {"seed": 3, "step": 1}  # as resume.pt holds it after the first batch
    resumed = DeviceAugmentation(crop=64, seed=3)
    resumed.load_state_dict(state)
    for ref in outs[1:]:
        image, label = resumed(x, mask)
        assert torch.equal(image, ref[0]) and torch.equal(label, ref[1])
    assert resumed.state_dict() == aug.state_dict() == {"seed": 3, "step": 3}
    assert not torch.equal(outs[0][0], outs[1][0])  # every batch draws anew
    assert outs[0][0].shape == (4, 3, 2, 64, 64) and set(outs[0][1].unique().tolist()) <= {0, 1}


def test_device_augmentation_rejects_normalised_batches():
    with pytest.raises(TypeError, match="uint8"):
        DeviceAugmentation(crop=16)(torch.zeros(1, 3, 2, 16, 16))


def test_prepare_batch_augments_between_the_copy_and_the_normalisation():
    x = torch.cat([_echo_like(t=2, h=64, w=64, seed=s) for s in range(2)])
    batch = {"image": x, "label": (x[:, :1, 0] > 100).to(torch.uint8), "target_index": torch.tensor([0, 1])}
    aug = DeviceAugmentation(crop=48, seed=0)
    inputs, targets, _, kwargs = ClipPrepareBatch(index_key="target_index", augment=aug)(batch)
    expected_image, expected_label = DeviceAugmentation(crop=48, seed=0)(x, batch["label"])
    plain = ClipPrepareBatch(index_key="target_index")
    assert torch.equal(inputs, plain({**batch, "image": expected_image})[0])
    assert torch.equal(targets, expected_label.float()) and kwargs["index"].tolist() == [0, 1]
    assert plain(batch)[0].shape == (2, 3, 2, 64, 64)  # no augment: no crop, nothing drawn
    masked_in, masked_target = MaskedClipPrepareBatch(augment=DeviceAugmentation(crop=48))(batch)
    assert masked_in.shape == masked_target.shape[:1] + (3, 2, 48, 48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_augmentation_does_not_synchronise():
    x = torch.cat([_echo_like(t=8, seed=s) for s in range(4)]).pin_memory()
    mask = (x[:, :1, 0] > 100).to(torch.uint8).pin_memory()
    aug = DeviceAugmentation(crop=112)
    prepare = ClipPrepareBatch(augment=aug)
    assert_no_cuda_sync(lambda: prepare({"image": x, "label": mask}, torch.device("cuda"), non_blocking=True))


# -------------------------------------------------------------------------------------- per-sample windows


class _Draw(Randomizable):
    """A random transform: returns one draw of its random state."""

    def randomize(self, data: object = None) -> None:
        """Draws happen in ``__call__``."""

    def __call__(self, item: int) -> tuple[int, int]:
        return item, int(self.R.randint(1 << 30))


def _epoch(loader: DataLoader, dataset: SeededSamples, epoch: int) -> list:
    dataset.set_epoch(epoch)
    return sorted(tuple(pair) for batch in loader for pair in zip(*[t.tolist() for t in batch]))


def test_seeded_samples_draw_the_same_with_persistent_workers_as_after_a_restart():
    dataset = SeededSamples(Dataset(list(range(12)), transform=_Draw()), seed=5)
    persistent = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2, persistent_workers=True)
    epochs = [_epoch(persistent, dataset, e) for e in range(3)]
    fresh = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2)  # a resumed run's new workers
    assert _epoch(fresh, dataset, 2) == epochs[2]
    assert epochs[2] == [dataset[i] for i in range(12)]  # the main process draws the same (epoch 2 set)
    assert epochs[0] != epochs[1]  # a new window every epoch
    assert len({d for _, d in epochs[0]}) == 12  # and a different one per sample
    assert sample_seed(5, 2, 4) != sample_seed(5, 2, 5) != sample_seed(5, 3, 5)


def test_presets_leave_the_augmentation_to_the_device_when_asked():
    from medssl_monai.transforms.intensity import RandClipCLAHEd, RandClipColorJitterd
    from medssl_monai.transforms.monailabel import monailabel_train_transforms
    from medssl_monai.transforms.presets import ssl_clip_transforms, unilvseg_train_transforms

    def names(chain: Compose) -> set[str]:
        return {type(t).__name__ for t in chain.transforms}

    augmenting = {RandClipColorJitterd.__name__, RandClipCLAHEd.__name__, ClipConsistentd.__name__}
    for make, kwargs in [
        (unilvseg_train_transforms, {"cache": False}),
        (ssl_clip_transforms, {"cache": False}),
        (monailabel_train_transforms, {}),
    ]:
        assert augmenting <= names(make(**kwargs))  # the default: in the workers, as before
        assert not augmenting & names(make(**kwargs, augment_on="device"))  # load only: no jitter, no crop
        with pytest.raises(ValueError, match="augment_on"):
            make(**kwargs, augment_on="gpu")


def test_prepare_batch_leaves_a_class_label_alone():
    """A probe's class label is not a mask: ``augment_label=False`` augments the clip only."""
    x = torch.cat([_echo_like(t=2, h=64, w=64, seed=s) for s in range(2)])
    batch = {"image": x, "label": torch.tensor([0, 1])}
    prepare = ClipPrepareBatch(augment=DeviceAugmentation(crop=48, seed=0), augment_label=False)
    inputs, targets, _, _ = prepare(batch)
    expected, _ = DeviceAugmentation(crop=48, seed=0)(x)
    assert torch.equal(inputs, ClipPrepareBatch()({**batch, "image": expected})[0])
    assert targets.tolist() == [0, 1]


# bundles whose training augmentation runs on the device by default (the worker chain stays as augment_on: workers)
DEVICE_AUGMENTED = [
    "unilvseg_echo_ssl_pretraining",
    "unilvseg_echo_lv_segmentation",
    "discovr_echo_ssl_pretraining",
    "discovr_echo_evaluation",
    "discovr_echo_lv_segmentation",
]


@pytest.mark.parametrize("bundle", DEVICE_AUGMENTED)
def test_bundle_device_augmentation_draws_as_its_worker_chain(bundle: str):
    """A bundle's ``train#augmentation`` has the distributions of its ``augment_on: workers`` chain (rotation
    range, pad, crop, jitter ranges and probability, CLAHE limit, tiles and probability), the trainer uses it,
    ``resume.pt`` saves it, and the workers then only load a per-sample seeded window."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from medssl_monai.bundle_tools import config_path
    from medssl_monai.transforms.intensity import RandClipCLAHEd, RandClipColorJitterd

    root = Path(__file__).resolve().parents[2] / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(config_path(root, "train")))
    parser["cache_dir"] = None
    assert parser["augment_on"] == "device"
    aug = parser.get_parsed_content("train#augmentation")

    def ref(key: str) -> str:  # a raw reference, with MONAI's "::" written back as "#"
        return str(parser[key]).replace("::", "#")

    trainer_prepare = ref("train#trainer#prepare_batch")  # the trainer's (validation keeps an unaugmented one)
    assert parser.get_parsed_content(trainer_prepare.lstrip("@")).augment is aug
    assert "'@train#augmentation'" in ref("train#resume_handler#save_dict")
    assert "'@train#seeded_dataset'" in ref("train#dataloader#dataset")
    assert "'method': '@train#seeded_dataset'" in ref("train#handlers")

    def chain_of(preprocessing):  # the segmentation bundle's TracedOrDatastore: EchoNet items take `traced`
        return getattr(preprocessing, "traced", preprocessing)

    device_chain = chain_of(parser.get_parsed_content("train#preprocessing"))
    assert not {RandClipColorJitterd, RandClipCLAHEd, ClipConsistentd} & {type(t) for t in device_chain.transforms}

    parser["augment_on"] = "workers"
    chain = {type(t): t for t in chain_of(parser.get_parsed_content("train#preprocessing", lazy=False)).transforms}
    jitter, clahe_t, spatial = chain[RandClipColorJitterd], chain[RandClipCLAHEd], chain[ClipConsistentd]
    for name in ("brightness", "contrast", "saturation", "hue"):
        assert aug.ranges[name] == getattr(jitter, name), name
    assert aug.jitter_prob == jitter.prob and aug.clahe_prob == clahe_t.prob
    assert aug.ranges["clip_limit"] == clahe_t.clip_limit and aug.tile_grid_size == clahe_t.tile_grid_size
    rotate, pad, crop = spatial.transform.transforms
    assert math.isclose(math.radians(aug.rotate_degrees), rotate.rand_rotate.range_x[1])
    assert tuple(pad.padder.spatial_size) == (aug.pad, aug.pad)
    assert tuple(crop.cropper.roi_size) == (aug.crop, aug.crop)


def test_sample_seed_takes_tuple_indices() -> None:
    """UCL's sampler yields ``(video, [frames])`` indices: each gets its own seed, stable across index types."""
    import numpy as np

    assert sample_seed(0, 1, 5) == sample_seed(0, 1, np.int64(5)) == sample_seed(0, 1, torch.tensor(5))
    assert sample_seed(0, 1, (5, [1, 2, 3])) == sample_seed(0, 1, (5, (1, 2, 3)))
    seeds = {sample_seed(0, 1, (5, [1, 2, 3])), sample_seed(0, 1, (5, [1, 2, 4])), sample_seed(0, 2, (5, [1, 2, 3]))}
    assert len(seeds | {sample_seed(0, 1, 5), sample_seed(0, 1, (5,))}) == 5
