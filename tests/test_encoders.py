"""The one encoder interface: every kind round-trips through ``build_encoder`` from a tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

from medssl_monai.encoders import ENCODER_KINDS, build_encoder, encoder_config

# tiny architectures (config-id overrides on top of train.yaml + small.yaml)
TINY = {
    "unilvseg": {"channels": [[4], [4], [4], [4], [8]], "num_frames": 16, "spatial_size": 32},
    "tvrl": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "spatial_size": 16, "patch_size": 8},
    "ucl": {"widen_factor": 0.0625, "spatial_size": 16},
    "discovr": {"hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2, "spatial_size": 16},
    "videomae": {"hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2, "spatial_size": 16},
}
SMALL = ("train.yaml", "small.yaml")


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_round_trip_from_tiny_checkpoint(kind, tmp_path):
    torch.set_num_threads(1)
    enc = build_encoder(kind, configs=SMALL, seed=1, **TINY[kind])
    # the checkpoint is the bundle's network_def state_dict, as the pretraining bundle writes models/model.pt
    torch.save(enc.backbone.state_dict(), tmp_path / "model.pt")
    again = build_encoder(kind, tmp_path / "model.pt", configs=SMALL, seed=2, **TINY[kind])
    other = build_encoder(kind, configs=SMALL, seed=2, **TINY[kind])  # random init with another seed
    x = torch.randint(0, 256, (2, 3, 8, 24, 24), dtype=torch.uint8)
    with torch.no_grad():
        y, y2, y3 = enc(x), again(x), other(x)
    assert y.shape == (2, enc.embedding_dim) and again.embedding_dim == enc.embedding_dim
    torch.testing.assert_close(y, y2)
    assert not torch.allclose(y, y3)
    # uint8 and float on the 8-bit scale give the same embedding; one grey channel equals three equal channels
    with torch.no_grad():
        torch.testing.assert_close(enc(x.float()), y)
        g = x[:, :1]
        torch.testing.assert_close(enc(g), enc(g.expand(-1, 3, -1, -1, -1)))


def test_method_state_dict_and_bundle_folder(tmp_path):
    enc = build_encoder("tvrl", configs=SMALL, seed=0, **TINY["tvrl"])
    state = {f"encoder.{k}": v for k, v in enc.backbone.state_dict().items()}
    state["head.weight"] = torch.zeros(1)  # method heads are dropped with the prefix
    torch.save({"model": state}, tmp_path / "resumable.pt")
    again = build_encoder("tvrl", tmp_path / "resumable.pt", configs=SMALL, **TINY["tvrl"])
    x = torch.randint(0, 256, (1, 1, 4, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), again(x))
    with pytest.raises(RuntimeError):  # strict: another architecture does not load
        build_encoder("tvrl", tmp_path / "resumable.pt", configs=SMALL, hidden_size=32, num_heads=2)


def test_normalisation_and_preprocessing():
    enc = build_encoder("tvrl", configs=SMALL, seed=0, **TINY["tvrl"])
    x = torch.full((1, 3, 6, 16, 16), 255, dtype=torch.uint8)
    x[:, :, :, :8] = 51
    z, idx = enc.preprocess(x)
    assert idx.tolist() == [0, 2, 3, 5] and z.shape == (1, 1, 4, 16, 16)  # TVRL: grey, at most max_frames (4)
    torch.testing.assert_close(z[0, 0, 0, 0, 0], torch.tensor(0.2))  # [0, 1] scaling only
    torch.testing.assert_close(z[0, 0, 0, -1, 0], torch.tensor(1.0))
    assert enc.preprocess(x[:, :, :3])[1] is None  # shorter clips are kept whole (masked attention handles them)
    dis = build_encoder("discovr", configs=SMALL, seed=0, **TINY["discovr"])
    z, idx = dis.preprocess(torch.zeros(1, 1, 16, 32, 32))
    assert z.shape == (1, 3, 8, 16, 16)  # exactly num_frames (8) evenly spaced frames, resized to 16
    assert idx.tolist() == [0, 2, 4, 6, 9, 11, 13, 15]
    torch.testing.assert_close(z[0, 0, 0, 0, 0], torch.tensor(-0.12741163 / 0.19557191))  # EchoNet statistics


def test_encoder_config_overrides():
    parser = encoder_config("ucl", configs=SMALL, widen_factor=0.5)
    assert parser.get_parsed_content("network_def#widen_factor") == 0.5
    assert parser["pretrained_ckpt"] is None
    with pytest.raises(ValueError):
        encoder_config("nope")
