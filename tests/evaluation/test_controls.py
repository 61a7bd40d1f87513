"""Positive controls: the oracle's volumes and features, the pixel rows, the supervised hook, the broken-protocol
guard of the table writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medssl_monai.evaluation.benchmark import benchmark_table
from medssl_monai.evaluation.clips import layout_indices
from medssl_monai.evaluation.controls import (
    BrokenProtocolError,
    check_positive_control,
    dark_area_features,
    edv_esv_features,
    lv_volume_curves,
    oracle_features,
    std_map_features,
    train_supervised,
    train_supervised_rows,
    write_lv_volumes,
)


def test_positive_control_thresholds():
    check_positive_control(0.9, 0.95)  # the floors themselves pass
    with pytest.raises(BrokenProtocolError, match="the protocol is broken.*EF R2 0.890 < 0.9"):
        check_positive_control(0.89, 1.0)
    with pytest.raises(BrokenProtocolError, match="abnormal AUROC 0.940 < 0.95"):
        check_positive_control(0.99, 0.94)
    with pytest.raises(BrokenProtocolError):
        check_positive_control(float("nan"), 1.0)


def _cell(v: float) -> dict:
    return {"estimate": v, "ci_low": v - 0.01, "ci_high": v + 0.01}


COLUMNS = (("ef", "r2", "EF R2", True), ("abnormal_lin", "auroc", "abnormal AUROC", True))


def test_table_writer_refuses_a_broken_protocol():
    enc = {"ef": {"r2": _cell(0.1)}, "abnormal_lin": {"auroc": _cell(0.6)}}
    ok = {"oracle": {"ef": {"r2": _cell(0.95)}, "abnormal_lin": {"auroc": _cell(1.0)}}, "enc": enc}
    table = benchmark_table(ok, COLUMNS, oracle_row="oracle")
    assert "| oracle | 0.950 [0.940, 0.960] | 1.000 [0.990, 1.010] |" in table  # single-fit cells: no +- std
    low = {**ok, "oracle": {"ef": {"r2": _cell(0.85)}, "abnormal_lin": {"auroc": _cell(1.0)}}}
    with pytest.raises(BrokenProtocolError, match="the protocol is broken"):
        benchmark_table(low, COLUMNS, oracle_row="oracle")
    low_auroc = {**ok, "oracle": {"ef": {"r2": _cell(0.99)}, "abnormal_lin": {"auroc": _cell(0.9)}}}
    with pytest.raises(BrokenProtocolError, match="abnormal AUROC"):
        benchmark_table(low_auroc, COLUMNS, oracle_row="oracle")
    with pytest.raises(BrokenProtocolError, match="no oracle row"):
        benchmark_table({"enc": enc}, COLUMNS, oracle_row="oracle")
    assert benchmark_table({"enc": enc}, COLUMNS).count("\n") == 3  # without an oracle row asked for: no check


def test_lv_volume_curves_match_the_filelist(tiny_data):
    root = tiny_data["echonet"]
    curves = lv_volume_curves(root)
    files = pd.read_csv(root / "FileList.csv")
    truth = pd.read_csv(root / "SyntheticTruth.csv")
    assert set(curves) == set(files["FileName"])
    for f, t in zip(files.itertuples(), truth.itertuples()):
        vol = curves[f.FileName]
        assert len(vol) == f.NumberOfFrames
        # the oracle's per-frame volume is the FileList's EDV / ESV at the traced frames, and its extremes
        assert vol[t.TracedED] == pytest.approx(f.EDV, rel=1e-12) and vol[t.TracedES] == pytest.approx(f.ESV)
        assert vol.max() == pytest.approx(f.EDV, rel=0.03) and vol.min() == pytest.approx(f.ESV, rel=0.03)


def test_lv_volumes_sidecar_round_trip(tmp_path):
    curves = {"0XA": np.array([100.0, 80.0, 60.0]), "0XB": np.array([50.0, 40.0])}
    write_lv_volumes(curves, tmp_path / "LVVolumes.csv")
    back = lv_volume_curves(tmp_path)  # a dataset shipping LVVolumes.csv
    assert set(back) == {"0XA", "0XB"}
    np.testing.assert_array_equal(back["0XA"], curves["0XA"])
    assert lv_volume_curves(tmp_path / "missing") is None  # no sidecar, no synthetic marker: not available


def test_oracle_features_hand_computed():
    vol = np.array([100.0, 90.0, 70.0, 40.0, 60.0, 100.0])
    f = oracle_features(vol, np.array([[0, 2, 4]]), quantiles=(0.0, 1.0))
    v = np.array([100.0, 70.0, 60.0])
    # [mean V, mean log V, std V, std log V, min V, min log V, max V, max log V]
    expected = [v.mean(), np.log(v).mean(), v.std(), np.log(v).std(), 60.0, np.log(60.0), 100.0, np.log(100.0)]
    np.testing.assert_allclose(f[0], expected, rtol=1e-12)
    # EF from the extremes of a clip spanning the beat: 1 - min / max
    full = oracle_features(vol, np.arange(6)[None], quantiles=(0.0, 1.0))[0]
    assert 1 - full[4] / full[6] == pytest.approx(0.6)
    edv_esv = edv_esv_features([{"edv": 100.0, "esv": 40.0}])
    np.testing.assert_allclose(edv_esv, [[100.0, 40.0, 0.4]])


def test_pixel_features_hand_computed():
    # 2 frames of 28 x 28: a 2 x 2 block (one cell of the 14 x 14 map) flips 0 <-> 255, everything else is 128
    clip = torch.full((1, 1, 2, 28, 28), 128, dtype=torch.uint8)
    clip[0, 0, 0, :2, :2] = 0
    clip[0, 0, 1, :2, :2] = 255
    std = std_map_features(clip, grid=14)
    assert std.shape == (1, 196)
    assert std[0, 0] == pytest.approx(0.5)  # values 0 and 1: population std 0.5
    assert torch.all(std[0, 1:] == 0)
    # dark area: a 10 x 10 fan of grey 0.5 with a dark 4 x 4 square in frame 0 and a 2 x 2 one in frame 1
    clip = torch.zeros((1, 1, 2, 12, 12), dtype=torch.uint8)
    clip[..., 1:11, 1:11] = 128
    clip[0, 0, 0, 4:8, 4:8] = 1  # non-black: still inside the fan
    clip[0, 0, 1, 5:7, 5:7] = 1
    dark = dark_area_features(clip, thresholds=(0.2,), quantiles=(0.0, 1.0))
    # after the 3 x 3 mean filter a square pixel stays below 0.2 unless it is a corner (4 dark + 5 grey
    # neighbours: 5 x 0.5 / 9 = 0.28); an edge pixel sees 3 grey (0.17). Frame 0: 16 - 4 corners = 12 of the 100
    # fan pixels; frame 1: the 2 x 2 square is all corners, none. Curve [0.12, 0]:
    np.testing.assert_allclose(dark[0].numpy(), [0.06, 0.06, 0.0, 0.12], atol=1e-7)  # mean, std, min, max


class _Toy(torch.nn.Module):
    """A ClipEncoder-shaped toy: per-frame mean grey through a linear layer, as the UCL branch of TemporalFeatures."""

    def __init__(self) -> None:
        super().__init__()
        from medssl_monai.encoders import wrap_backbone

        backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
        backbone(torch.zeros(1, 3, 4, 4))
        backbone.out_features = 3
        self.enc = wrap_backbone("ucl", backbone, in_channels=3, spatial_size=4)


def test_train_supervised_learns_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (40, 1, 4, 4, 4), dtype=torch.uint8, generator=gen)
    ef = clips.float().mean(dim=(1, 2, 3, 4)).numpy()  # EF a function of the brightness
    abnormal = (ef < np.median(ef)).astype(int)

    def run():
        torch.manual_seed(5)
        enc = _Toy().enc
        losses = train_supervised(enc, clips, ef, abnormal, steps=60, batch_size=8, learning_rate=0.05, seed=1)
        return enc, losses

    enc, losses = run()
    assert not enc.training and len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    _, again = run()
    assert losses == again  # the same seed, the same batches and head
    with pytest.raises(ValueError, match="steps"):
        train_supervised(enc, clips, ef, abnormal, steps=0, batch_size=8)


def test_layout_indices_hand_computed():
    # 3 clips of 4 frames every 2nd frame (span 7) over 13 frames: starts 0, 3, 6
    np.testing.assert_array_equal(layout_indices(13, 4, 2, 3), [[0, 2, 4, 6], [3, 5, 7, 9], [6, 8, 10, 12]])
    # a video shorter than the span: one start, the last frame repeated
    np.testing.assert_array_equal(layout_indices(5, 4, 2, 2), [[0, 2, 4, 4], [0, 2, 4, 4]])


def test_supervised_rows_in_processes_match_one_process():
    """Two rows trained by two spawned one-thread workers: the weights, losses and order of this process at one
    thread; the weights come back into fresh encoders that really were trained."""
    import functools

    from medssl_monai.encoders import build_encoder

    make = functools.partial(  # picklable: the worker rebuilds the same random init
        build_encoder, "tvrl", None, configs=("train.yaml", "small.yaml"), seed=0
    )
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (12, 1, 4, 32, 32), dtype=torch.uint8, generator=gen)
    ef = clips.float().mean(dim=(1, 2, 3, 4)).numpy()
    abnormal = (ef < np.median(ef)).astype(int)
    tasks = {
        row: (make, dict(clips=clips, ef=ef, abnormal=abnormal, steps=3, batch_size=4, learning_rate=1e-2, seed=s))
        for row, s in (("b_supervised", 1), ("a_supervised", 2))
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same summation order
    try:
        serial = train_supervised_rows(tasks, jobs=1)
    finally:
        torch.set_num_threads(threads)
    parallel = train_supervised_rows(tasks, jobs=2)
    assert list(serial) == list(parallel) == list(tasks)
    untrained = make().state_dict()
    for row in tasks:
        (enc, losses, seconds), (enc_p, losses_p, _) = serial[row], parallel[row]
        assert len(losses) == 3 and losses == losses_p and seconds > 0
        assert not enc_p.training
        a, b = enc.state_dict(), enc_p.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{row}: {k}")
        assert any(not torch.equal(a[k], untrained[k]) for k in a if a[k].is_floating_point())
    assert serial["a_supervised"][1] != serial["b_supervised"][1]  # the seed draws other batches
