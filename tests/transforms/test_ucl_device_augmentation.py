"""UCL's random frame crop on the device: the crop against the worker path for the same offsets, the offsets'
distribution, frames of different sizes in one batch, the trainer-owned stream's resume, the bundles' wiring; the
same for the POCUS preset's RandomResizedCrop and flip (boxes and flips against the worker path's)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Randomizable
from scipy import stats

from medssl_monai.engines.sync_guard import assert_no_cuda_sync
from medssl_monai.methods.ucl import FramePrepareBatch, UCLPrepareBatch, normalize_frames
from medssl_monai.transforms.device import (
    FrameCropDeviceAugmentation,
    FrameResizedCropDeviceAugmentation,
    ResizedCropParams,
    crop_frames,
    resized_crop,
    sample_crop_offsets,
    sample_resized_crop_params,
)
from medssl_monai.transforms.frames import FrameResizeCropd, FrameResizedCropd, pad_frames_collate, resize_to

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
UCL_BUNDLES = ["ucl_us_ssl_pretraining", "ucl_us_classification"]


def _frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _worker_crop(x: torch.Tensor, spatial_size: int, resize_to: int, seed: int) -> tuple[torch.Tensor, list]:
    """The worker path's output for ``x`` and the offsets it drew (one per frame, in frame order)."""
    t = FrameResizeCropd(spatial_size=spatial_size, resize_to=resize_to, random_crop=True)
    t.set_random_state(seed)
    drawn, draw = [], t._offsets

    def spy(h: int, w: int) -> tuple[int, int]:
        drawn.append(draw(h, w))
        return drawn[-1]

    t._offsets = spy
    return t({"image": x})["image"], drawn


def _device_item(x: torch.Tensor, spatial_size: int, resize_to: int) -> dict[str, Any]:
    return FrameResizeCropd(spatial_size=spatial_size, resize_to=resize_to, augment_on="device")({"image": x})


# ------------------------------------------------------------------------------------ crop vs the worker path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [(5, 3, 90, 120), (3, 90, 120), (4, 3, 140, 100), (2, 1, 64, 64)],
    ids=["ssl-stack", "classification-frame", "portrait-stack", "no-resize"],
)
def test_crop_matches_the_worker_path_for_the_same_offsets(device: str, shape: tuple[int, ...]):
    """Workers resize only (``augment_on="device"``); the device crop at the worker's offsets is its output."""
    x = _frames(*shape)
    for seed in range(3):
        ref, drawn = _worker_crop(x, 48, 64, seed)
        item = _device_item(x, 48, 64)
        assert item["image_size"].tolist() == list(item["image"].shape[-2:])
        batch = pad_frames_collate([item])
        out = FrameCropDeviceAugmentation(48).apply(batch["image"].to(device), torch.tensor(drawn))
        assert out.device.type == device and out.dtype == torch.uint8
        assert torch.equal(out[0].cpu(), ref), seed


def test_a_batch_of_different_aspect_ratios_is_padded_and_cropped_inside_each_frame():
    """Frames resized to one shorter side keep their aspect ratio: the collate pads them to one batch, each
    sample's own size bounds its offsets (the padding is never cropped), and the crops are the worker path's."""
    xs = [_frames(5, 3, 90, 120, seed=1), _frames(5, 3, 90, 90, seed=2), _frames(5, 3, 150, 90, seed=3)]
    items = [_device_item(x, 48, 64) for x in xs]
    batch = pad_frames_collate(items)
    assert batch["image"].shape == (3, 5, 3, 106, 85) and batch["image_size"].tolist() == [
        [64, 85],
        [64, 64],
        [106, 64],
    ]
    refs, drawn = zip(*(_worker_crop(x, 48, 64, seed) for seed, x in enumerate(xs)))
    aug = FrameCropDeviceAugmentation(48)
    out = aug.apply(batch["image"], torch.tensor([o for d in drawn for o in d]))
    assert all(torch.equal(out[i], refs[i]) for i in range(3))
    bound = aug.max_offsets(batch["image"].shape, batch["image_size"])
    assert bound.tolist() == [[16, 37]] * 5 + [[16, 16]] * 5 + [[58, 16]] * 5
    for _ in range(50):  # drawn crops stay inside each sample's frame
        off = aug.sample(bound)
        assert ((off >= 0) & (off <= bound)).all()
    assert pad_frames_collate(items[1:2])["image"].shape == (1, 5, 3, 64, 64)  # one size: collated unchanged


def test_crop_frames_is_an_exact_copy_of_the_window():
    x = _frames(6, 2, 20, 30)
    off = torch.tensor([[0, 0], [3, 7], [10, 20], [10, 0], [0, 20], [5, 5]])
    out = crop_frames(x, off, 10)
    for i, (r, c) in enumerate(off.tolist()):
        assert torch.equal(out[i], x[i, :, r : r + 10, c : c + 10])


# ------------------------------------------------------------------------------ the offsets' distribution


def test_offsets_are_uniform_over_the_worker_paths_range():
    """Both paths draw each frame's offset uniformly over ``0..h - s`` and ``0..w - s``: the same support, and
    each value's frequency within 4 standard errors of uniform (20,000 frames)."""
    h, w, s, n = 64, 85, 48, 20_000
    worker = FrameResizeCropd(spatial_size=s, resize_to=h)
    worker.set_random_state(0)
    worker_off = torch.tensor([worker._offsets(h, w) for _ in range(n)])
    device_off = sample_crop_offsets(torch.tensor([[h - s, w - s]]).expand(n, 2), torch.Generator().manual_seed(0))
    for off in (worker_off, device_off):
        for axis, top in ((0, h - s), (1, w - s)):
            counts = Counter(off[:, axis].tolist())
            assert set(counts) == set(range(top + 1)), axis
            p = 1 / (top + 1)
            se = (p * (1 - p) / n) ** 0.5
            assert max(abs(c / n - p) for c in counts.values()) < 4 * se, axis
        assert abs(torch.corrcoef(off.T.double())[0, 1]) < 0.05  # rows and columns drawn independently


def test_every_frame_of_a_stack_gets_its_own_crop_as_in_the_workers():
    """UCL transforms the anchor, the positive and each negative separately: no shared crop within a stack."""
    x = _frames(5, 3, 64, 64)
    _, drawn = _worker_crop(x, 32, 64, 0)
    assert len(drawn) == 5 and len(set(drawn)) > 1
    aug = FrameCropDeviceAugmentation(32)
    batch = torch.stack([x] * 8)
    off = aug.sample(aug.max_offsets(batch.shape)).reshape(8, 5, 2)
    assert off.shape == (8, 5, 2) and all(len({tuple(o) for o in stack.tolist()}) > 1 for stack in off)
    out = aug.apply(batch, off.reshape(-1, 2))
    assert torch.equal(out[3, 2], x[2, :, off[3, 2, 0] : off[3, 2, 0] + 32, off[3, 2, 1] : off[3, 2, 1] + 32])


def test_crops_larger_than_the_frame_and_float_batches_are_rejected():
    aug = FrameCropDeviceAugmentation(48)
    with pytest.raises(ValueError, match="smaller than the crop"):
        aug(_frames(2, 3, 40, 64))
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="augment_on"):
        FrameResizeCropd(augment_on="gpu")


# ----------------------------------------------------------------------------- the trainer-owned generator


def test_prepare_batches_crop_between_the_copy_and_the_normalisation():
    stacks = pad_frames_collate([_device_item(_frames(5, 3, 64, 80, seed=s), 48, 64) for s in range(2)])
    inputs, target, args, kwargs = UCLPrepareBatch(augment=FrameCropDeviceAugmentation(48, seed=1))(stacks)
    expected = FrameCropDeviceAugmentation(48, seed=1)(stacks["image"], stacks["image_size"])
    assert torch.equal(inputs, normalize_frames(expected)) and target is None and args == () and kwargs == {}
    assert UCLPrepareBatch()(stacks)[0].shape == (2, 5, 3, 64, 80)  # no augment: no crop, nothing drawn

    frames = pad_frames_collate([{**_device_item(_frames(3, 90, 70, seed=s), 48, 64), "label": s} for s in range(3)])
    inputs, labels = FramePrepareBatch(augment=FrameCropDeviceAugmentation(48, seed=1))(frames)
    expected = FrameCropDeviceAugmentation(48, seed=1)(frames["image"], frames["image_size"])
    assert torch.equal(inputs, normalize_frames(expected)) and labels.tolist() == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_crop_does_not_synchronise():
    items = [_device_item(_frames(5, 3, 256, 256 + 32 * s, seed=s), 224, 224) for s in range(4)]
    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in pad_frames_collate(items).items()}
    prepare = UCLPrepareBatch(augment=FrameCropDeviceAugmentation(224))
    assert_no_cuda_sync(lambda: prepare(batch, torch.device("cuda"), non_blocking=True))


# --------------------------------------------------------------------------------------------- the bundles


def _parser(bundle: str, *extra: str) -> ConfigParser:
    configs = ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml"), *(str(configs / e) for e in extra)])
    parser["cache_dir"] = None
    return parser


def _ref(parser: ConfigParser, key: str) -> str:
    """A raw config reference, with MONAI's "::" written back as "#"."""
    return str(parser[key]).replace("::", "#")


def _resize_crop(parser: ConfigParser, section: str, lazy: bool = True) -> FrameResizeCropd:
    chain = parser.get_parsed_content(f"{section}#preprocessing", lazy=lazy).transforms
    return next(t for t in chain if isinstance(t, FrameResizeCropd))


@pytest.mark.parametrize("bundle", UCL_BUNDLES)
def test_bundle_crops_on_the_device_in_the_trainer_only(bundle: str):
    """The trainer's prepare_batch crops with ``train#augmentation`` (the worker crop's size, saved in
    resume.pt), validation's does not, the workers only resize; ``augment_on: workers`` restores the old path."""
    parser = _parser(bundle)
    assert parser["augment_on"] == "device"
    aug = parser.get_parsed_content("train#augmentation")
    assert isinstance(aug, FrameCropDeviceAugmentation)
    assert _ref(parser, "train#trainer#prepare_batch") == "@train#augmented_prepare_batch"
    assert parser.get_parsed_content("train#augmented_prepare_batch").augment is aug
    assert parser.get_parsed_content("train#prepare_batch").augment is None
    assert _ref(parser, "validate#evaluator#prepare_batch") == "@train#prepare_batch"
    assert "'augmentation': '@train#augmentation'" in _ref(parser, "train#resume_handler#save_dict")
    assert parser.get_parsed_content("train#dataloader#collate_fn") is pad_frames_collate
    worker = _resize_crop(parser, "train")
    assert worker.augment_on == "device" and worker.random_crop and aug.spatial_size == worker.spatial_size
    val = _resize_crop(parser, "validate")
    assert not val.random_crop  # validation: the centre crop in the workers, unchanged

    parser["augment_on"] = "workers"
    assert parser.get_parsed_content("train#augmented_prepare_batch", lazy=False).augment is None
    assert _resize_crop(parser, "train", lazy=False).augment_on == "workers"


# -------------------------------------------------------- the POCUS preset: RandomResizedCrop and a flip


class _FlipSpy:
    """A worker transform's ``RandomState`` that records the uniforms of its flip draws (``rand``)."""

    def __init__(self, state: np.random.RandomState) -> None:
        self.state, self.flips = state, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)

    def rand(self, *args: int) -> Any:
        self.flips.append(self.state.rand(*args))
        return self.flips[-1]


def _worker_resized_crop(x: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, ResizedCropParams]:
    """The worker path's output for ``x`` and the boxes and flips it drew (one per frame, in frame order)."""
    t = FrameResizedCropd(spatial_size=size, random=True)
    t.set_random_state(seed)
    boxes, draw = [], t._box

    def spy(h: int, w: int) -> tuple[int, int, int, int]:
        boxes.append(draw(h, w))
        return boxes[-1]

    t._box, t.R = spy, _FlipSpy(t.R)
    out = t({"image": x})["image"]
    return out, ResizedCropParams(box=torch.tensor(boxes), hflip=torch.tensor(t.R.flips) < t.flip_prob)


def _within_one_level(out: torch.Tensor, ref: torch.Tensor, fraction: float) -> None:
    diff = (out.int() - ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < fraction, (int(diff.max()), float((diff > 0).float().mean()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 90, 120), (4, 3, 70, 50)], ids=["frame", "stack"])
def test_resized_crop_and_flip_match_the_worker_path(device: str, shape: tuple[int, ...]):
    """Workers resize to ``s x s`` only (``augment_on="device"``); the device crop, resize and flip with the worker's
    boxes and flips is the worker's output within one grey level at under 1% of the values (the same antialiased
    bilinear weights; the float sums run in another order and are rounded once)."""
    x = _frames(*shape)
    resize_only = FrameResizedCropd(spatial_size=64, augment_on="device")
    flips = []
    for seed in range(4):
        ref, params = _worker_resized_crop(x, 64, seed)
        item = resize_only({"image": x})
        assert torch.equal(item["image"], resize_to(x, (64, 64)))  # nothing drawn in the workers
        batch = pad_frames_collate([item])
        out = FrameResizedCropDeviceAugmentation(64).apply(batch["image"].to(device), params)
        assert out.device.type == device and out.dtype == torch.uint8 and out.shape == (1, *ref.shape)
        _within_one_level(out[0].cpu(), ref, 0.01)
        flips += params.hflip.tolist()
    assert set(flips) == {True, False}


@pytest.mark.parametrize(
    "frame,size,sides",
    [(64, 64, (0.2, 1.0)), (96, 48, (1.0, 2.0)), (160, 40, (2.0, 4.0))],
    ids=["enlarge", "shrink-up-to-2x", "shrink-beyond-2x"],
)
def test_resized_crop_of_frames_against_resize_to(frame: int, size: int, sides: tuple[float, float]):
    """One box per frame (each frame a one-frame clip) against the workers' ``resize_to`` of the cropped box:
    within one grey level at under 1% of the values, enlarging and shrinking (antialiased)."""
    g = torch.Generator().manual_seed(0)
    n = 24
    x = torch.randint(0, 256, (n, 3, frame, frame), dtype=torch.uint8, generator=g)
    side = (size * (sides[0] + (sides[1] - sides[0]) * torch.rand(n, 2, generator=g))).long().clamp(1, frame)
    corner = (torch.rand(n, 2, generator=g) * (frame - side + 1)).long()
    box = torch.cat([corner, side], 1)
    out = resized_crop(x[:, :, None], box, (size, size))[:, :, 0]
    ref = torch.stack(
        [resize_to(x[i, :, t : t + h, c : c + w], (size, size)) for i, (t, c, h, w) in enumerate(box.tolist())]
    )
    assert out.dtype == torch.uint8 and out.shape == ref.shape
    _within_one_level(out, ref, 0.01)


class _Replay:
    """A ``RandomState`` stand-in that hands ``FrameResizedCropd._box`` the device sampler's uniforms, by kind.

    Frame ``i``'s ``uniform`` calls take ``area[i, 0], aspect[i, 0], area[i, 1], ...``, its ``randint`` calls
    ``position[i, 0]`` then ``position[i, 1]``, as ``U(lo, hi) = lo + (hi - lo) u`` and ``floor(u n)``.
    """

    def __init__(self, area: torch.Tensor, aspect: torch.Tensor, position: torch.Tensor) -> None:
        self.uniforms = [iter(torch.stack([a, r], 1).reshape(-1).tolist()) for a, r in zip(area, aspect)]
        self.positions = [iter(p.tolist()) for p in position]
        self.frame = 0

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(self.uniforms[self.frame])

    def randint(self, lo: int, hi: int) -> int:
        return lo + int(np.floor(next(self.positions[self.frame]) * (hi - lo)))


@pytest.mark.parametrize(
    "frame_size,scale,ratio",
    [((64, 64), (0.8, 1.0), (0.8, 1.25)), ((64, 64), (0.08, 1.0), (0.75, 4 / 3)), ((40, 64), (0.8, 1.0), (0.8, 1.25))],
    ids=["pocus", "torchvision-default", "fallback"],
)
def test_device_boxes_are_the_worker_rule_on_the_same_uniforms(frame_size, scale, ratio):
    """The device sampler draws its uniforms up front (ten tries of area and aspect, then the position, then the
    flip); handing the same uniforms to the worker's ``_box`` one by one gives the same box for every frame, the
    fallback (no try fits: the centred whole frame clamped to the ratio range) included."""
    n, seed = 2000, 5
    params = sample_resized_crop_params(n, frame_size, torch.Generator().manual_seed(seed), scale, ratio, 0.5)
    g = torch.Generator().manual_seed(seed)  # the same stream, read as the sampler reads it
    area, aspect = (torch.rand(n * 10, generator=g, dtype=torch.float64).reshape(n, 10) for _ in range(2))
    position = torch.rand(n, 2, generator=g, dtype=torch.float64)
    flip_u = torch.rand(n, generator=g, dtype=torch.float64)
    worker = FrameResizedCropd(spatial_size=64, scale=scale, ratio=ratio)
    worker.R = replay = _Replay(area, aspect, position)
    boxes = []
    for i in range(n):
        replay.frame = i
        boxes.append(worker._box(*frame_size))
    assert params.box.tolist() == [list(b) for b in boxes]
    assert torch.equal(params.hflip, flip_u < 0.5)
    if frame_size == (40, 64):  # no try fits a 40 x 64 frame: every box is the fallback (40 x 50, centred)
        assert params.box.tolist() == [[0, 7, 40, 50]] * n
    else:  # boxes of many sizes and places
        assert len(set(boxes)) > n // 2 and len({b[2:] for b in boxes}) > 50


def test_device_draws_have_the_worker_distribution():
    """Independent streams, the preset's ranges on a 64 x 64 frame: Kolmogorov-Smirnov (p > 0.001) for box
    height, width, area, top and left, and the flip rate within 4 standard errors of 0.5, for both paths."""
    n, h, w = 4000, 64, 64
    worker = FrameResizedCropd(spatial_size=64)
    worker.set_random_state(0)
    ref = torch.tensor([worker._box(h, w) for _ in range(n)], dtype=torch.float64)
    ref_flips = torch.tensor([worker.R.rand() < 0.5 for _ in range(n)])
    aug = FrameResizedCropDeviceAugmentation(64, seed=1)
    params = [aug.sample(500, (h, w)) for _ in range(n // 500)]
    box = torch.cat([p.box for p in params]).double()
    flips = torch.cat([p.hflip for p in params])
    for name, a, b in (
        ("height", ref[:, 2], box[:, 2]),
        ("width", ref[:, 3], box[:, 3]),
        ("area", ref[:, 2] * ref[:, 3], box[:, 2] * box[:, 3]),
        ("top", ref[:, 0], box[:, 0]),
        ("left", ref[:, 1], box[:, 1]),
    ):
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name
    se = (0.25 / n) ** 0.5
    assert abs(ref_flips.double().mean() - 0.5) < 4 * se and abs(flips.double().mean() - 0.5) < 4 * se
    assert ((box[:, 2] * box[:, 3] >= 0.8 * h * w * 0.95) & (box[:, 2] <= h) & (box[:, 3] <= w)).all()


@pytest.mark.parametrize(
    ("make", "shape", "out"),
    [
        (lambda: FrameCropDeviceAugmentation(48, seed=3), (4, 5, 3, 64, 80), (4, 5, 3, 48, 48)),
        (lambda: FrameResizedCropDeviceAugmentation(48, seed=3), (4, 3, 48, 48), (4, 3, 48, 48)),
    ],
    ids=["crop", "resized_crop"],
)
def test_stream_round_trips_through_state_dict(make, shape, out):
    """``resume.pt`` holds the step: a resumed run draws the crops (boxes, flips) the uninterrupted run draws next."""
    x = _frames(*shape)
    aug = make()
    outs = [aug(x) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict({"seed": 3, "step": 1})  # as resume.pt holds it after the first batch
    for ref in outs[1:]:
        assert torch.equal(resumed(x), ref)
    assert resumed.state_dict() == aug.state_dict() == {"seed": 3, "step": 3}
    assert not torch.equal(outs[0], outs[1])  # every batch draws anew
    assert outs[0].shape == out


def test_resized_crop_prepare_batch_and_errors():
    """Between the copy and the POCUS normalisation, the label untouched; float batches, mixed frame sizes and an
    unknown ``augment_on`` are rejected."""
    frames = pad_frames_collate([{"image": _frames(3, 40, 40, seed=s), "label": s} for s in range(3)])
    pocus = {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    inputs, labels = FramePrepareBatch(**pocus, augment=FrameResizedCropDeviceAugmentation(40, seed=2))(frames)
    expected = FrameResizedCropDeviceAugmentation(40, seed=2)(frames["image"])
    assert torch.equal(inputs, normalize_frames(expected, **pocus)) and labels.tolist() == [0, 1, 2]
    aug = FrameResizedCropDeviceAugmentation(40)
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.zeros(2, 3, 40, 40))
    with pytest.raises(ValueError, match="different sizes"):
        aug(_frames(2, 3, 40, 40), torch.tensor([[40, 40], [40, 32]]))
    assert aug(_frames(2, 3, 40, 40), torch.tensor([[40, 40], [40, 40]])).shape == (2, 3, 40, 40)
    with pytest.raises(ValueError, match="augment_on"):
        FrameResizedCropd(augment_on="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_resized_crop_does_not_synchronise():
    batch = {"image": _frames(8, 3, 224, 224).pin_memory()}
    prepare = FramePrepareBatch(label_key=None, augment=FrameResizedCropDeviceAugmentation(224))
    assert_no_cuda_sync(lambda: prepare(batch, torch.device("cuda"), non_blocking=True))


def test_pocus_recipe_crops_and_flips_on_the_device_in_the_trainer_only():
    """The trainer's prepare_batch crops and flips with ``train#augmentation`` (the worker transform's ranges,
    saved in resume.pt) and normalises with POCUS's statistics; validation's does neither; the workers' chain draws
    nothing; ``augment_on: workers`` restores the worker crop and flip."""
    parser = _parser("ucl_us_classification", "pocus.yaml")
    assert parser["augment_on"] == "device"
    aug = parser.get_parsed_content("train#augmentation")
    assert isinstance(aug, FrameResizedCropDeviceAugmentation)
    assert _ref(parser, "train#trainer#prepare_batch") == "@train#augmented_prepare_batch"
    trainer_prepare = parser.get_parsed_content("train#augmented_prepare_batch")
    assert trainer_prepare.augment is aug
    assert trainer_prepare.mean == (0.5,) * 3 and trainer_prepare.std == (0.25,) * 3
    plain = parser.get_parsed_content("train#prepare_batch")
    assert plain.augment is None and plain.mean == (0.5,) * 3 and plain.std == (0.25,) * 3
    assert _ref(parser, "validate#evaluator#prepare_batch") == "@train#prepare_batch"
    assert "'augmentation': '@train#augmentation'" in _ref(parser, "train#resume_handler#save_dict")

    chain = parser.get_parsed_content("train#preprocessing").transforms
    worker = chain[1]
    assert [t for t in chain if isinstance(t, Randomizable)] == [worker] and isinstance(worker, FrameResizedCropd)
    assert worker.augment_on == "device" and worker.random
    assert (aug.spatial_size, aug.scale, aug.ratio, aug.flip_prob) == (224, (0.8, 1.0), (0.8, 1.25), 0.5)
    assert (worker.size, worker.scale, worker.ratio, worker.flip_prob) == ((224, 224), aug.scale, aug.ratio, 0.5)
    x = _frames(3, 150, 200)
    worker.set_random_state(0)
    before = worker.R.get_state()[1].copy()
    assert torch.equal(worker({"image": x})["image"], resize_to(x, (224, 224)))
    assert np.array_equal(worker.R.get_state()[1], before)  # the workers drew nothing
    assert not parser.get_parsed_content("validate#preprocessing#transforms#1").random

    parser["augment_on"] = "workers"
    assert parser.get_parsed_content("train#augmented_prepare_batch", lazy=False).augment is None
    worker = parser.get_parsed_content("train#preprocessing", lazy=False).transforms[1]
    assert worker.augment_on == "workers" and worker.random and worker.scale == (0.8, 1.0)
