from __future__ import annotations

import pytest
import torch

from medssl_monai.evaluation.sliding import sliding_window_video


def _frame_index_video(t: int, b: int = 2, h: int = 4, w: int = 6) -> torch.Tensor:
    return torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1).expand(b, 1, t, h, w).contiguous()


@pytest.mark.parametrize("t", [5, 16, 37, 64])
def test_constant_blend_of_ones_is_ones(t: int) -> None:
    video = torch.randn(1, 3, t, 4, 6)
    seen: list[tuple[int, ...]] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return torch.ones(x.shape[0], 1, *x.shape[2:])

    out = sliding_window_video(video, predictor, window=16, overlap=0.5, mode="constant", sw_batch_size=2)
    assert out.shape == (1, 1, t, 4, 6)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=0)
    assert all(s[2:] == (16, 4, 6) for s in seen)  # every window is exactly `window` frames (short videos padded)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("t", [7, 32, 45, 100])
def test_every_frame_covered_and_values_preserved(mode: str, t: int) -> None:
    video = _frame_index_video(t)
    covered: set[int] = set()

    def identity(x: torch.Tensor) -> torch.Tensor:
        covered.update(int(v) for v in x[:, 0, :, 0, 0].flatten().tolist())
        return x.clone()

    out = sliding_window_video(video, identity, window=16, overlap=0.5, mode=mode)
    # a blend is a weighted average of the windows' predictions for each frame: the frame index comes back
    torch.testing.assert_close(out, video, rtol=0, atol=1e-4)
    assert set(range(t)) <= covered


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="B x C x T x H x W"):
        sliding_window_video(torch.zeros(1, 8, 4, 4), lambda x: x)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_video(torch.zeros(1, 1, 8, 4, 4), lambda x: x, overlap=1.0)


def test_short_video_is_padded_at_the_end_with_pad_value() -> None:
    video = torch.randn(1, 3, 10, 4, 4)
    seen: list[torch.Tensor] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x[:, :1] * 2

    pad = [-0.5, -0.6, -0.7]
    out = sliding_window_video(video, predictor, window=16, pad_value=pad)
    assert out.shape == (1, 1, 10, 4, 4)
    torch.testing.assert_close(out, video[:, :1] * 2)
    (x,) = seen
    torch.testing.assert_close(x[:, :, :10], video)  # the real frames first, then the padding
    for ch, v in enumerate(pad):
        assert torch.all(x[:, ch, 10:] == v)
    with pytest.raises(ValueError, match="pad_value"):
        sliding_window_video(video, predictor, window=16, pad_value=[0.0, 1.0])


@pytest.mark.parametrize("t", [9, 40, 67])
def test_period_runs_interleaved_sequences(t: int) -> None:
    video = _frame_index_video(t, b=1)
    windows: list[list[int]] = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        windows.extend(x[:, 0, :, 0, 0].round().long().tolist())
        return x.clone()

    out = sliding_window_video(video, identity, window=8, overlap=0.5, mode="constant", period=2, pad_value=-1.0)
    torch.testing.assert_close(out, video, rtol=0, atol=1e-4)
    for win in windows:  # every window holds frames `period` apart (or the end padding), as the training clips
        real = [f for f in win if f >= 0]
        assert len(win) == 8 and all(b - a == 2 for a, b in zip(real, real[1:]))
        assert len({f % 2 for f in real}) == 1
    with pytest.raises(ValueError, match="period"):
        sliding_window_video(video, identity, period=0)
