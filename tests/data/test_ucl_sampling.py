"""UCL frame sampling: bands of the reference at every curriculum epoch, the compounding curriculum, sharding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medssl_monai.data.ucl_sampling import (
    IndexedFrameDataset,
    UCLFrameSampler,
    curriculum_band,
    holdout_split,
    negative_candidates,
    sample_ucl_indices,
    split_videos,
)


def test_curriculum_band_hand_computed():
    # before the start epoch: the initial band
    assert curriculum_band(0) == (0.2, 0.4)
    assert curriculum_band(29) == (0.2, 0.4)
    # epoch 30: factor cos(0) -> 1; epoch 31 compounds 1 * 0.5 (1 + cos(pi / 30))
    assert curriculum_band(30) == pytest.approx((0.2, 0.4))
    f31 = 0.5 * (1 + math.cos(math.pi / 30))
    f32 = 0.5 * (1 + math.cos(2 * math.pi / 30))
    assert curriculum_band(31) == pytest.approx((0.2 * f31, 0.4 * f31))
    assert curriculum_band(32) == pytest.approx((0.2 * f31 * f32, 0.4 * f31 * f32))
    # clipping and switching the curriculum off
    assert curriculum_band(59, cosine_clipping=True) == pytest.approx((0.03, 0.07))
    assert curriculum_band(59, cosine_curriculum=False) == (0.03, 0.07)  # the step table
    assert curriculum_band(59, cosine_curriculum=False, step_curriculum=[]) == (0.2, 0.4)


def test_negative_candidates_reference_formula():
    # N = 50, a = 20, (0.2, 0.4): left [max(0,min(20-20, 14)), max(0,min(20-10, 16))) = [0, 10);
    # right [min(50, max(30, 24)), min(50, max(40, 26))) = [30, 40)
    np.testing.assert_array_equal(negative_candidates(50, 20, 0.2, 0.4), np.r_[0:10, 30:40])
    # a narrow band is widened to the margins [a-6, a-4) U [a+4, a+6)
    np.testing.assert_array_equal(negative_candidates(50, 20, 0.01, 0.02), np.r_[14:16, 24:26])


@pytest.mark.parametrize("epoch", list(range(0, 60, 3)) + [59])
@pytest.mark.parametrize("n", [12, 16, 40, 80])
def test_sampled_indices_respect_bands_at_every_epoch(epoch, n):
    lo, hi = curriculum_band(epoch)
    rng = np.random.default_rng(epoch * 100 + n)
    for _ in range(200):
        idx = sample_ucl_indices(n, rng, lo, hi, num_negatives=3)
        a, p, negs = idx[0], idx[1], idx[2:]
        assert math.ceil(0.2 * n) <= a < math.ceil(0.5 * n)
        assert 1 <= abs(p - a) <= 3 and 0 <= p < n
        left = range(max(0, min(a - int(hi * n), a - 6)), max(0, min(a - int(lo * n), a - 4)))
        right = range(min(n, max(a + int(lo * n), a + 4)), min(n, max(a + math.ceil(hi * n), a + 6)))
        for m in negs:
            assert m in left or m in right
            assert abs(m - a) >= 4  # never the positive window


def test_sampler_uses_the_epoch_it_is_told():
    lengths = [80] * 6
    s = UCLFrameSampler(lengths, start_epoch=2, max_epochs=6, shuffle=False, seed=1)
    s.set_epoch(0)
    early = [d for _, d in s]
    s.set_epoch(5)
    late = [d for _, d in s]
    lo, hi = s.band()
    assert (lo, hi) == pytest.approx(curriculum_band(5, start_epoch=2, max_epochs=6))
    dist = lambda draws: np.mean([abs(n - d[0]) for d in draws for n in d[2:]])  # noqa: E731
    assert dist(late) < dist(early)  # harder negatives: closer to the anchor
    # the same epoch gives the same draws; a fixed sampler ignores the epoch
    s.set_epoch(5)
    assert [d for _, d in s] == late
    f = UCLFrameSampler(lengths, fixed=True, shuffle=False)
    first = list(f)
    f.set_epoch(40)
    assert list(f) == first


def test_sampler_shards_like_distributed_sampler():
    shards = [list(UCLFrameSampler([20] * 5, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    seen = {i for s in shards for i, _ in s}
    assert seen == set(range(5))
    assert len(UCLFrameSampler([20] * 5, num_replicas=2, rank=0, drop_last=True)) == 2


def test_indexed_dataset_passes_indices():
    ds = IndexedFrameDataset([{"image": "a"}, {"image": "b"}], transform=None)
    assert ds[(1, [3, 4])] == {"image": "b", "frame_indices": [3, 4]}
    assert ds[0] == {"image": "a"}


def test_splits_are_by_video_and_stratified():
    data = [{"video_id": f"v{i}", "label": i % 3} for i in range(24)]
    tests = []
    for fold in range(4):
        s = split_videos(data, num_folds=4, fold=fold, val_fraction=0.2, seed=0)
        ids = [{d["video_id"] for d in s[k]} for k in ("train", "val", "test")]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert sum(map(len, ids)) == 24
        assert sorted(d["label"] for d in s["test"]) == [0, 0, 1, 1, 2, 2]
        assert {d["label"] for d in s["val"]} == {0, 1, 2}
        tests.extend(ids[2])
    assert sorted(tests) == sorted(d["video_id"] for d in data)  # every video is tested exactly once
    train, val = holdout_split(data, 0.1, seed=0, min_val=2)
    assert len(val) == 2 and len(train) == 22
