"""clip_indices: hand-computed windows, SimLVSeg's centred window, "contains" guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from medssl_monai.transforms.sampling import clip_indices


def _optimum_window_oracle(length: int, period: int, target: int, n_frames: int) -> list[int]:
    """SimLVSeg's ``get_optimum_set_of_frame_indexes`` semantics, simulated step by step as an oracle."""
    window = [target]
    for i in range(length - 1):  # grow alternately: left first
        if i % 2 == 0:
            window = [window[0] - period] + window
        else:
            window = window + [window[-1] + period]
    window = [i for i in window if i < n_frames]  # drop past the end, extend on the left
    while len(window) < length:
        window = [window[0] - period] + window
    kept = [i for i in window if i >= 0]  # drop before the start, extend on the right
    while len(kept) < length:
        kept.append(kept[-1] + period)
    return kept


def test_start_short_video_pads_with_minus_one():
    idx, pos = clip_indices(5, 8, mode="start")
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 1, 2, 3, 4, -1, -1, -1]
    assert pos is None


def test_start_short_video_repeat_pads_with_last_frame():
    idx, _ = clip_indices(5, 8, mode="start", pad_mode="repeat")
    assert idx.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_random_short_video_with_period():
    # 5 frames, 4 samples at period 2: padded to 8 frames (EchoNet), span 7 -> start 0 or 1
    seen = set()
    for seed in range(40):
        idx, _ = clip_indices(5, 4, period=2, mode="random", rng=np.random.RandomState(seed))
        seen.add(tuple(idx.tolist()))
    assert seen == {(0, 2, 4, -1), (1, 3, -1, -1)}


def test_random_long_video_stays_inside_and_covers_all_starts():
    starts = set()
    for seed in range(200):
        idx, _ = clip_indices(12, 4, period=3, mode="random", rng=np.random.RandomState(seed))
        assert (idx >= 0).all() and idx.max() < 12
        assert np.all(np.diff(idx) == 3)
        starts.add(int(idx[0]))
    assert starts == {0, 1, 2}  # span 10 in 12 frames


def test_random_accepts_numpy_generator():
    idx, _ = clip_indices(100, 8, mode="random", rng=np.random.default_rng(0))
    assert len(idx) == 8 and np.all(np.diff(idx) == 1)


def test_center_in_the_middle():
    idx, pos = clip_indices(100, 32, mode="center", frame=50)
    assert idx.tolist() == list(range(34, 66))  # 16 frames on the left, 15 on the right
    assert pos == 16


def test_center_shifted_at_the_borders():
    idx, pos = clip_indices(100, 32, mode="center", frame=3)
    assert idx.tolist() == list(range(0, 32)) and pos == 3
    idx, pos = clip_indices(100, 32, mode="center", frame=98)
    assert idx.tolist() == list(range(68, 100)) and pos == 30


def test_center_with_period_keeps_the_grid_through_the_frame():
    # left 4 periods -> start 91, but the window must end by 99: shifted left 3 periods to 85
    idx, pos = clip_indices(100, 8, period=2, mode="center", frame=99)
    assert idx.tolist() == [85, 87, 89, 91, 93, 95, 97, 99] and pos == 7
    idx, pos = clip_indices(100, 8, period=3, mode="center", frame=4)
    assert idx.tolist() == [1, 4, 7, 10, 13, 16, 19, 22] and pos == 1


def test_center_short_video():
    idx, pos = clip_indices(3, 4, mode="center", frame=1)
    assert idx.tolist() == [0, 1, 2, -1] and pos == 1


def test_center_matches_simlvseg_reference_behaviour():
    for n in range(1, 30):
        for length in (1, 2, 5, 8):
            for period in (1, 2, 3):
                padded = max(n, length * period)  # the reference zero-pads the video first
                for frame in range(n):
                    expected = np.array(_optimum_window_oracle(length, period, frame, padded))
                    expected[expected >= n] = -1
                    idx, pos = clip_indices(n, length, period, mode="center", frame=frame)
                    assert idx.tolist() == expected.tolist(), (n, length, period, frame)
                    assert idx[pos] == frame


@pytest.mark.parametrize("period", [1, 2, 3])
def test_contains_always_holds_the_frame(period):
    for n in (3, 10, 25):
        for frame in range(n):
            for seed in range(15):
                idx, pos = clip_indices(n, 6, period, mode="contains", frame=frame, rng=np.random.RandomState(seed))
                assert pos is not None and idx[pos] == frame
                assert np.all(np.diff(idx[idx >= 0]) == period)


def test_contains_is_uniform_over_the_valid_windows():
    # 10 frames, window of 4, frame 5: starts 2, 3, 4, 5 hold it
    counts: dict[int, int] = {}
    rng = np.random.RandomState(0)
    for _ in range(400):
        idx, pos = clip_indices(10, 4, mode="contains", frame=5, rng=rng)
        counts[int(idx[0])] = counts.get(int(idx[0]), 0) + 1
        assert pos == 5 - idx[0]
    assert set(counts) == {2, 3, 4, 5}
    assert min(counts.values()) > 60  # ~100 each


def test_contains_with_period_only_uses_windows_on_the_frame_grid():
    starts = set()
    for seed in range(100):
        idx, pos = clip_indices(20, 3, period=3, mode="contains", frame=7, rng=np.random.RandomState(seed))
        starts.add(int(idx[0]))
        assert idx[pos] == 7
    assert starts == {1, 4, 7}


def test_all_mode_and_target_position():
    idx, pos = clip_indices(7, 999, period=2, mode="all", frame=4)
    assert idx.tolist() == [0, 2, 4, 6] and pos == 2
    _, pos = clip_indices(7, 0, period=2, mode="all", frame=3)
    assert pos is None


def test_random_reports_target_only_when_inside():
    idx, pos = clip_indices(10, 3, mode="start", frame=2)
    assert pos == 2
    _, pos = clip_indices(10, 3, mode="start", frame=5)
    assert pos is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside"):
        clip_indices(10, 4, mode="center", frame=10)
    with pytest.raises(ValueError, match="frame"):
        clip_indices(10, 4, mode="contains")
    with pytest.raises(ValueError, match="mode"):
        clip_indices(10, 4, mode="middle")
    with pytest.raises(ValueError, match="pad_mode"):
        clip_indices(10, 4, pad_mode="reflect")
    with pytest.raises(ValueError, match="period"):
        clip_indices(10, 4, period=0)
