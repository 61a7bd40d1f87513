"""TensorBoard embedding projections: what is written, and that training is left exactly as it was."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medssl_monai.encoders import wrap_backbone
from medssl_monai.engines.embeddings import TensorBoardEmbeddingHandler, clip_thumbnails
from medssl_monai.engines.tracking import _writer
from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD


class _TinyVideoNet(nn.Module):
    """B x 1 x T x H x W -> B x 4, with BatchNorm and Dropout so eval/train mode matters."""

    embedding_dim = out_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        z = self.drop(self.bn(self.conv(x.float()))).mean(dim=(2, 3, 4))
        return z if scale is None else z * scale[:, None]


def _datalist(n: int) -> list[dict]:
    return [{"image": i, "video_id": f"v{i}", "ef": 50.0 + i, "scale": float(i + 1)} for i in range(n)]


def _transform(item: dict) -> dict:
    g = torch.Generator().manual_seed(int(item["image"]))  # deterministic clip per item
    clip = (torch.rand(1, 4, 8, 8, generator=g) * 255).to(torch.uint8)
    return {**item, "image": clip, "scale": torch.tensor(item["scale"])}


def _engine(epoch: int, max_epochs: int) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(epoch=epoch, max_epochs=max_epochs))


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_writes_the_projector_files_with_eval_mode_embeddings(tmp_path: Path):
    torch.manual_seed(0)
    net = _TinyVideoNet().train()
    bn_before = net.bn.running_mean.clone()
    handler = TensorBoardEmbeddingHandler(
        net,
        _datalist(5),
        _transform,
        log_dir=str(tmp_path),
        metadata_keys=["video_id", "ef", "label"],  # no item has "label": column dropped
        batch_size=2,
        input_keys={"scale": "scale"},
    )
    handler.writer, handler._owned = _writer(str(tmp_path), None)
    rng = torch.get_rng_state()
    handler(_engine(1, 3))
    handler.close()

    assert torch.equal(torch.get_rng_state(), rng), "the handler must not draw from the global RNG"
    assert net.training and net.bn.training and net.drop.training, "train mode must be restored"
    assert torch.equal(net.bn.running_mean, bn_before), "BatchNorm statistics must not be updated"

    tensors = list(tmp_path.rglob("tensors.tsv"))
    assert len(tensors) == 1 and tensors[0].parent.parent.name == "00001"
    values = np.array(_read_tsv(tensors[0]), dtype=np.float32)
    net.eval()
    with torch.no_grad():
        batch = [_transform(it) for it in _datalist(5)]
        expected = net(torch.stack([b["image"] for b in batch]).float(), torch.stack([b["scale"] for b in batch]))
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-5)
    meta = _read_tsv(tensors[0].with_name("metadata.tsv"))
    assert meta[0] == ["video_id", "ef"] and meta[1] == ["v0", "50"] and len(meta) == 6
    assert tensors[0].with_name("sprite.png").is_file()
    assert (tmp_path / "projector_config.pbtxt").is_file()


def test_skips_bad_items_and_honours_the_interval(tmp_path: Path):
    def flaky(item: dict) -> dict:
        if item["image"] == 2:
            raise OSError("corrupt video")
        return _transform(item)

    handler = TensorBoardEmbeddingHandler(
        _TinyVideoNet(), _datalist(4), flaky, log_dir=str(tmp_path), epoch_interval=2, thumbnail_size=0
    )
    handler.writer, handler._owned = _writer(str(tmp_path), None)
    handler(_engine(1, 3))  # not a multiple of 2, not the last epoch: nothing
    assert not list(tmp_path.rglob("tensors.tsv"))
    handler(_engine(3, 3))  # the last epoch is always written
    handler.close()
    (tensors,) = list(tmp_path.rglob("tensors.tsv"))
    assert tensors.parent.parent.name == "00003"
    assert len(_read_tsv(tensors)) == 3  # item 2 skipped
    assert [r[0] for r in _read_tsv(tensors.with_name("metadata.tsv"))] == ["v0", "v1", "v3"]
    assert not tensors.with_name("sprite.png").exists()


def test_a_failing_encoder_is_logged_not_raised(tmp_path: Path, caplog):
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    handler = TensorBoardEmbeddingHandler(broken, _datalist(2), _transform, log_dir=str(tmp_path))
    handler.writer, handler._owned = _writer(str(tmp_path), None)
    handler(_engine(1, 1))
    handler.close()
    assert "boom" in caplog.text and not list(tmp_path.rglob("tensors.tsv"))


def test_thumbnails_are_middle_frames_scaled_to_unit_range():
    clip = torch.zeros(2, 1, 3, 4, 4)
    clip[0, 0, 1] = torch.arange(16.0).reshape(4, 4)  # the middle frame of clip 0
    clip[1, 0, 1] = 7.0  # a flat frame stays finite
    t = clip_thumbnails(clip, size=4)
    assert t.shape == (2, 3, 4, 4)
    assert float(t[0].min()) == 0.0 and float(t[0].max()) == pytest.approx(1.0)
    assert torch.isfinite(t).all() and float(t[1].abs().max()) == 0.0


def test_wrap_backbone_shares_weights_and_normalises_like_build_encoder():
    net = _TinyVideoNet().eval()
    enc = wrap_backbone("unilvseg", net, in_channels=3, spatial_size=8, num_frames=4)
    assert enc.backbone is net and enc.fixed_frames
    assert torch.allclose(enc.mean.reshape(-1), torch.as_tensor(ECHONET_MEAN, dtype=torch.float32))
    x = torch.full((2, 1, 6, 16, 16), 255, dtype=torch.uint8)  # grey in, 3 channels out
    prepared, idx = enc.preprocess(x)
    assert prepared.shape == (2, 3, 4, 8, 8) and idx.tolist() == [0, 2, 3, 5]
    expected = (1.0 - torch.as_tensor(ECHONET_MEAN)) / torch.as_tensor(ECHONET_STD)
    assert torch.allclose(prepared[0, :, 0, 0, 0], expected.float(), atol=1e-5)
    assert wrap_backbone("ucl", net, in_channels=3).fixed_frames is False
    with pytest.raises(ValueError, match="kind"):
        wrap_backbone("nope", net, in_channels=1)
